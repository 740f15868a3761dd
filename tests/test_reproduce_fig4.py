"""psgd reproduce diana-fig4 --quick: real 8-worker runs on the digits network; the report's
table and verdict are recomputed here from each run's metrics.jsonl and summary.json."""

import json
import subprocess
import sys

import pytest
import yaml

from psgd.reproduce import diana_fig4

pytest.importorskip("sklearn", reason="data.source digits needs scikit-learn")


def _last(path):
    return json.loads((path / "metrics.jsonl").read_text().splitlines()[-1])


def test_variants_cover_the_grid():
    full = diana_fig4.variants(quick=False)
    # 5 compressed methods x 3 blocks x 2 momenta + SGD x 2 momenta
    assert len(full) == 32 and len({v.name for v in full}) == 32
    assert all(v.ranks == 9 for v in full)
    table = {v.name: {"train_loss": 1.0, "test_accuracy": 0.9} for v in full}
    assert diana_fig4.verdict_of(table) == (True, [])
    table["qsgd4-b32-m0"] = {"train_loss": 0.5, "test_accuracy": 0.9}
    holds, fails = diana_fig4.verdict_of(table)
    assert not holds and ("sgd-m0", "qsgd4-b32-m0") in fails


def test_spread_variants_rerun_one_setting_under_new_seeds():
    full, quick = diana_fig4.spread_variants(False), diana_fig4.spread_variants(True)
    assert len(full) == 6 * len(diana_fig4.SPREAD_SEEDS) and len(quick) == 3 * 2
    grid = {v.name: v for v in diana_fig4.variants(False)}
    for v in full:
        base, seed = v.name.rsplit("-s", 1)
        # the grid's run with only the seed changed
        assert v.sets == [*grid[base].sets, f"seed={seed}"] and int(seed) != 0
    table = {"diana-b128-m0.9": {"train_loss": 1.0, "test_accuracy": 0.9}}
    seeded = {"diana-b128-m0.9-s1": {"train_loss": 2.0, "test_accuracy": 0.8},
              "diana-b128-m0.9-s2": {"train_loss": 3.0, "test_accuracy": 0.7}}
    got = diana_fig4.spread_of(table, seeded)["diana-b128-m0.9"]
    assert got["train_loss"] == 2.0 and abs(got["train_loss_sd"] - 1.0) < 1e-12
    assert abs(got["test_accuracy"] - 0.8) < 1e-12 and got["seeds"] == [0, 1, 2]


@pytest.mark.mpi
@pytest.mark.slow
def test_diana_fig4_quick(tmp_path):
    out = tmp_path / "fig4"
    r = subprocess.run([sys.executable, "-m", "psgd", "reproduce", "diana-fig4", "--quick",
                        "--out", str(out)], capture_output=True, text=True, timeout=600,
                       cwd=tmp_path)  # outside the checkout: the installed psgd runs
    assert r.returncode == 0, r.stdout + r.stderr
    result = json.loads((out / "result.json").read_text())
    table = {}
    for v in diana_fig4.variants(quick=True):
        run = out / "runs" / v.name
        last, summary = _last(run), json.loads((run / "summary.json").read_text())
        table[v.name] = {"train_loss": last["loss"], "test_accuracy": last["test_accuracy"]}
        assert result["runs"][v.name]["train_loss"] == last["loss"]
        assert result["runs"][v.name]["bits_up"] == summary["bits_up_total"]
        assert summary["n_workers"] == 8
    seeded = {}
    for v in diana_fig4.spread_variants(quick=True):
        last = _last(out / "runs" / v.name)
        seeded[v.name] = {"train_loss": last["loss"], "test_accuracy": last["test_accuracy"]}
        assert yaml.safe_load((out / "runs" / v.name / "config.yaml").read_text())["seed"] \
            == int(v.name.rsplit("-s", 1)[1])
    # a seed changes the run: the seed spread is not zero
    assert len({t["test_accuracy"] for n, t in seeded.items() if n.startswith("diana")}
               | {table["diana-b128-m0.9"]["test_accuracy"]}) > 1
    spread = diana_fig4.spread_of(table, seeded)
    assert set(result["spread"]) == {"diana-b128-m0.9", "qsgd8-b128-m0.9", "sgd-m0.9"}
    for name, t in spread.items():
        for key in ("train_loss", "test_accuracy", "test_accuracy_sd"):
            assert abs(result["spread"][name][key] - t[key]) < 1e-12
    # the headline, recomputed: the verdict follows the measured numbers (grid and seed means)
    holds, _ = diana_fig4.verdict_of(table)
    mean_holds, _ = diana_fig4.verdict_of(spread)
    assert (result["holds"], result["mean_holds"]) == (holds, mean_holds)
    verdict = ("holds" if holds and mean_holds else "partly" if holds or mean_holds
               else "does not hold")
    text = (out / "REPORT.md").read_text()
    assert f"## Verdict: {verdict}" in text and "seeds 0, 1, 2" in text
    # every network learned, and the compressed methods sent far fewer bits up than SGD
    assert min(t["test_accuracy"] for t in table.values()) > 0.5
    sgd = result["runs"]["sgd-m0.9"]["bits_up"]
    assert result["runs"]["diana-b128-m0.9"]["bits_up"] < sgd / 10
