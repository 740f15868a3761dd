"""``psgd bench runtime`` runs end to end on a tiny grid (speed is the benchmark's job, not ours)."""

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.mpi


def test_runtime_bench_tiny_grid(tmp_path):
    out = tmp_path / "rows.json"
    proc = subprocess.run([sys.executable, "-m", "psgd", "bench", "runtime", "--workers", "1,2",
                           "--dims", "1000", "--budget", "20000", "--repeats", "3", "--json", str(out)],
                          capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(out.read_text())
    assert [(r["n"], r["mode"]) for r in rows] == [(1, "sync"), (1, "async"), (2, "sync"), (2, "async")]
    for r in rows:
        assert r["steps_per_s"] > 0 and r["allreduce_steps_per_s"] > 0
        assert len(r["steps_per_s_runs"]) == 3  # the table shows the median of the repeats
        assert r["steps_per_s"] == sorted(r["steps_per_s_runs"])[1]
        # the ternary code: 32-byte envelope + 8-byte codec header + one scale + ceil(1000/5)
        assert r["bits_up_per_step"] >= 8 * (32 + 8 + 4 + 200)
    assert "allred/s" in proc.stdout and "pass" in proc.stdout


def test_runtime_bench_reports_every_server(tmp_path):
    out = tmp_path / "rows.json"
    proc = subprocess.run([sys.executable, "-m", "psgd", "bench", "runtime", "--workers", "2",
                           "--dims", "1000", "--budget", "20000", "--repeats", "1", "--modes",
                           "sync", "--servers", "1,2", "--downlinks", "exact,ternary",
                           "--json", str(out)],
                          capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(out.read_text())
    assert [(r["downlink"], r["servers"]) for r in rows] == [
        ("exact", 1), ("exact", 2), ("ternary", 1), ("ternary", 2)]
    assert "s1_apply_ms" in rows[1] and "s1_apply_ms" not in rows[0]
    # the ranges' messages: each worker sends one per server, each with its own headers
    assert rows[1]["bits_up_per_step"] > rows[0]["bits_up_per_step"]
    # exact: 64 bits a coordinate to each of the 2 workers; ternary: under 2 (and more
    # than the ceil(log2 3^5)/5 = 1.6 bits of its trits)
    assert rows[0]["bits_down_per_step"] >= 2 * 64 * 1000
    assert 2 * 1.6 * 1000 < rows[2]["bits_down_per_step"] < 2 * 2 * 1000 + 2 * 8 * 64


@pytest.mark.parametrize("bad", [["--modes", "fast"], ["--repeats", "0"],
                                 ["--downlinks", "float32"]])
def test_runtime_bench_rejects_bad_arguments(tmp_path, bad):
    proc = subprocess.run([sys.executable, "-m", "psgd", "bench", "runtime", *bad],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
