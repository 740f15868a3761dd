"""``psgd bench network`` end to end on a real emulated network (namespaces, veth, tbf, MPI
over TCP): the table's structure, the shaped bandwidth, and that every namespace is gone
afterwards, also after a failing run and after Ctrl-C."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.mpi

NOT_ROOT = os.geteuid() != 0
NO_TOOLS = shutil.which("ip") is None or shutil.which("tc") is None
needs_emulation = pytest.mark.skipif(
    NOT_ROOT or NO_TOOLS, reason="psgd bench network needs root and ip/tc (network namespaces)")

BENCH = [sys.executable, "-m", "psgd", "bench", "network"]
TINY = ["--dims", "10000", "--workers", "2", "--rate", "50mbit,200mbit", "--stepsizes", "theory",
        "--steps", "4"]


def _interruptible():
    """Ctrl-C as in a terminal: a suite started in the background (``pytest &``, nohup) runs
    with SIGINT ignored, and an ignored SIGINT is inherited across exec, so Python in the
    benchmark would never raise KeyboardInterrupt. Restore the default in the child."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _run(cmd, timeout, cwd):
    """subprocess.run, except that a timeout interrupts the benchmark (SIGINT, as Ctrl-C
    would) so it removes its namespaces, instead of SIGKILL, which would leak them."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=cwd, start_new_session=True, preexec_fn=_interruptible)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        raise AssertionError(f"no end within {timeout} s: {err[-1000:]}") from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _namespaces(prefix):
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                         timeout=30).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(prefix)]


def _prefix(stdout):
    m = re.search(r"namespaces (psgd[0-9a-f]+)0\.\.", stdout)
    assert m, stdout[:500]
    return m.group(1)


@needs_emulation
def test_tiny_grid_end_to_end(tmp_path):
    methods = "allreduce-f64,gd,diana-natural+natural"
    proc = _run(BENCH + TINY + ["--methods", methods, "--predict", "--out", str(tmp_path)],
                timeout=400, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    prefix = _prefix(proc.stdout)
    assert _namespaces(prefix) == []
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert prefix not in links

    res = json.loads((tmp_path / "network.json").read_text())
    assert res["netns_prefix"] == prefix and res["workers"] == 2
    # calibration: a large message through a shaped link moves at the shaping rate (+-25 %)
    cal = {c["rate_bps"]: c["bandwidth_bps"] for c in res["calibration"]}
    assert set(cal) == {None, 50e6, 200e6}
    for rate in (50e6, 200e6):
        assert 0.75 * rate <= cal[rate] <= 1.25 * rate, (rate, cal[rate])
    assert cal[None] > 2 * 200e6  # unshaped is far faster: the shaper is what limits

    (entry,) = res["dims"]
    assert entry["d"] == 10000
    rows = entry["rows"]
    assert [(r["method"], r["rate_bps"]) for r in rows] == [
        (m, rate) for m in methods.split(",") for rate in (None, 50e6, 200e6)]
    for r in rows:
        assert r["s_per_step"] > 0 and r["iterations"] > 0
        assert r["t_eps_s"] == pytest.approx(r["iterations"] * r["s_per_step"])
        assert r["pred_s_per_step"] > 0
    by = {(r["method"], r["rate_bps"]): r for r in rows}
    # the same GD iterates: psgd's uncompressed server and Allreduce GD need the same count
    assert by[("gd", None)]["iterations"] == by[("allreduce-f64", None)]["iterations"]
    # counted bits: float64 model down, float64 gradient up, natural: 9 bits a coordinate
    assert by[("gd", 50e6)]["bits_up_worker"] >= 64 * 10000
    nat = by[("diana-natural+natural", 50e6)]
    assert 9 * 10000 <= nat["bits_up_worker"] < 12 * 10000
    assert 9 * 10000 <= nat["bits_down_worker"] < 12 * 10000
    # the shaper slows uncompressed GD: 2 x 80 kB through the server's 50 Mbit/s NIC a step
    assert by[("gd", 50e6)]["s_per_step"] > 2 * 2 * 64 * 10000 / 50e6 * 0.7
    assert by[("allreduce-f64", 50e6)]["vs_allreduce_f64"] == 1.0
    assert set(by[("gd", 50e6)]["server_ms"]) == {"wait", "decode", "apply", "encode", "send"}

    table = (tmp_path / "table.txt").read_text()
    for word in ("calibration", "s/step", "t_eps s", "ratio", "pred s", "no netem",
                 "projection on paper", "best psgd at 50mbit"):
        assert word in table, word
    assert (tmp_path / "network.png").stat().st_size > 10000
    assert len(res["projection"]["rows"]) == 3 * 4 * 4

    # --from-json renders the same measured table again without running anything
    again = subprocess.run(BENCH + ["--from-json", str(tmp_path / "network.json"), "--predict"],
                           capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    measured = [ln for ln in table.splitlines() if ln.startswith("gd ")]
    assert measured and all(ln[:110] in again.stdout for ln in measured)


@pytest.mark.full
@needs_emulation
def test_readme_command_as_written(tmp_path):
    """The README's command (about 25 minutes on 2 cores): every method has a row at every
    rate and the emulated network is gone afterwards."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    cmd = "psgd bench network --rate 100mbit,1gbit,10gbit --dims 1000000 --workers 4 --predict"
    assert f"```bash\n{cmd}\n```" in readme
    proc = _run(["bash", "-c", cmd], timeout=5400, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _namespaces(_prefix(proc.stdout)) == []
    res = json.loads((tmp_path / "runs" / "bench_network" / "network.json").read_text())
    rows = res["dims"][0]["rows"]
    assert {r["rate_bps"] for r in rows} == {None, 100e6, 1e9, 10e9}
    assert {"allreduce-f64", "allreduce-f32", "gd"} <= {r["method"] for r in rows}


@needs_emulation
def test_sharded_servers_run_on_their_own_nodes(tmp_path):
    proc = _run(BENCH + ["--dims", "10000", "--workers", "2", "--rate", "50mbit", "--stepsizes",
                         "1", "--steps", "4", "--methods", "gd", "--servers", "1,2", "--out",
                         str(tmp_path)], timeout=400, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _namespaces(_prefix(proc.stdout)) == []
    res = json.loads((tmp_path / "network.json").read_text())
    by = {(r["method"], r["rate_bps"]): r for r in res["dims"][0]["rows"]}
    assert set(by) == {(m, rate) for m in ("gd", "gd@S2") for rate in (None, 50e6)}
    one, two = by[("gd", 50e6)], by[("gd@S2", 50e6)]
    assert two["servers"] == 2 and one["servers"] == 1
    assert two["iterations"] == one["iterations"] and two["stepsize"] == one["stepsize"]
    # every server's bits: the same float64 vectors, one header more per message
    assert 0 < two["bits_up_worker"] - one["bits_up_worker"] <= 8 * 64
    assert 0 < two["bits_down_worker"] - one["bits_down_worker"] <= 8 * 64


@needs_emulation
def test_failed_run_removes_the_network(tmp_path):
    # a real run-time failure: a step of 5/L makes GD diverge until a NaN ends the psgd run
    bad = tmp_path / "diverges.yaml"
    bad.write_text("algorithm: {name: gd, stepsize: 5.0}\ncompressor: {name: identity}\n")
    proc = _run(BENCH + TINY + ["--methods", "", "--configs", str(bad), "--out", str(tmp_path)],
                timeout=300, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "diverges" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert _namespaces(_prefix(proc.stdout)) == []


@needs_emulation
def test_ctrl_c_removes_the_network(tmp_path):
    proc = subprocess.Popen(BENCH + TINY + ["--methods", "gd", "--out", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=tmp_path, start_new_session=True, preexec_fn=_interruptible)
    try:
        first = proc.stdout.readline()
        if not first:  # it ended before making the network: show why
            raise AssertionError(proc.communicate(timeout=60)[1][-2000:])
        prefix = _prefix(first)
        assert len(_namespaces(prefix)) == 4  # 3 nodes + the bridge's
        time.sleep(3)  # inside the calibration's MPI jobs by now
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    assert _namespaces(prefix) == []


def test_bad_arguments_exit_2(tmp_path):
    for bad in (["--rate", "fast"], ["--methods", "nope"], ["--workers", "1"],
                ["--servers", "2"]):
        proc = subprocess.run(BENCH + bad, capture_output=True, text=True, timeout=60,
                              cwd=tmp_path)
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


@pytest.mark.skipif(NOT_ROOT or shutil.which("setpriv") is None,
                    reason="needs root and setpriv to run the check as an unprivileged user")
def test_not_root_exits_2_with_the_reason(tmp_path):
    os.chmod(tmp_path, 0o777)
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    probe = subprocess.run(nobody + [sys.executable, "-c", "import psgd"], capture_output=True,
                           timeout=60, cwd=tmp_path)
    if probe.returncode != 0:  # e.g. a virtual environment in a private (0700) directory
        pytest.skip("an unprivileged user cannot import psgd from this environment")
    proc = subprocess.run(nobody + BENCH + ["--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "needs root" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
