"""``psgd bench frontier`` (psgd.bench_frontier.main): a quick run writes the table, JSON and PNG."""

import json

import pytest

from psgd import bench_frontier


def test_frontier_small(tmp_path, capsys):
    out, js = tmp_path / "f.png", tmp_path / "f.json"
    pytest.importorskip("matplotlib")
    code = bench_frontier.main(["--dim", "16", "--trials", "2", "--only",
                                "sparse_dithering,spherical,haar_sketch,no_such",
                                "--out", str(out), "--json", str(js)])
    assert code == 0
    text = capsys.readouterr().out
    assert "bits/coord" in text and "ACA bits" in text and "spherical" in text
    rows = json.loads(js.read_text())["rows"]
    assert {r["compressor"] for r in rows} == {"sparse_dithering", "spherical", "haar_sketch"}
    for r in rows:
        # no compressor beats the uncertainty principle: alpha >= 4^(-bits/coord)
        assert r["alpha"] >= r["alpha_min_UP"]
    assert out.stat().st_size > 1000


def test_frontier_bad_args():
    assert bench_frontier.main(["--dim", "1"]) == 2
