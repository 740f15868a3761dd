"""psgd plot on run directories from real mpiexec runs: images produced, lines equal to the
metrics, labels from what differs, and one-line errors for what a run lacks."""

import json
import subprocess
import sys

import pytest
import yaml

from psgd import plot, sweep
from psgd.results import Run, labels

pytestmark = pytest.mark.mpi

CFG = {"seed": 3, "problem": {"name": "logistic", "l2": 0.01},
       "data": {"source": "synthetic", "n_samples": 800, "n_features": 30},
       "algorithm": {"name": "dqgd", "stepsize": "theory"},
       "compressor": {"name": "random_dithering", "levels": 1, "norm": "2"},
       "run": {"iterations": 60, "log_every": 10, "timeout_s": 60}}


def real_run(base, name, cfg, *sets):
    """One real ``mpiexec -n 3 psgd run`` into base/name (module-scoped fixtures share it)."""
    path = base / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    cmd = [sweep.mpiexec(), "-n", "3", sys.executable, "-m", "psgd", "run", str(path),
           "--out", str(base / name), *(w for s in sets for w in ("--set", s))]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=base)
    assert r.returncode == 0, r.stdout + r.stderr
    return base / name


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("runs")
    return (real_run(base, "dqgd", CFG),
            real_run(base, "diana", CFG, "algorithm.name=diana", "compressor.norm=inf"))


def psgd(*args):
    return subprocess.run([sys.executable, "-m", "psgd", *args], capture_output=True, text=True,
                          timeout=120)


MAGIC = {".png": b"\x89PNG", ".pdf": b"%PDF", ".svg": b"<?xml"}


def test_plot_every_axis_and_format(two_runs, tmp_path):
    for x, y, ext in [("step", "subopt", ".png"), ("bits", "rel_subopt", ".svg"),
                      ("epoch", "grad_norm", ".pdf"), ("time", "loss", ".png"),
                      ("bits_up", "subopt", ".png")]:
        fig = tmp_path / f"{x}-{y}{ext}"
        r = psgd("plot", *map(str, two_runs), "--x", x, "--y", y, "--out", str(fig))
        assert r.returncode == 0, r.stderr
        data = fig.read_bytes()
        assert data.startswith(MAGIC[ext]) and len(data) > 5000, (x, y, len(data))


def test_lines_are_the_metrics(two_runs, tmp_path):
    runs = [Run(p) for p in two_runs]
    assert labels(runs) == ["algorithm=dqgd, norm=2", "algorithm=diana, norm=inf, alpha=theory"]
    import matplotlib.pyplot as plt

    seen = []
    orig = plt.Figure.savefig

    def grab(fig, *a, **k):
        seen.append(fig.axes[0])
        return orig(fig, *a, **k)

    plt.Figure.savefig = grab
    try:
        plot.figure(runs, "bits", "subopt", tmp_path / "f.png")
    finally:
        plt.Figure.savefig = orig
    ax = seen[0]
    assert ax.get_yscale() == "log" and ax.get_xscale() == "linear"
    for line, path in zip(ax.get_lines(), two_runs):
        recs = [json.loads(l) for l in (path / "metrics.jsonl").read_text().splitlines()]
        xs, ys = line.get_data()
        want = [(r["bits_up"] + r["bits_down"], r["subopt"]) for r in recs if r["subopt"] > 0]
        assert list(zip(xs, ys)) == want
    assert [t.get_text() for t in ax.get_legend().get_texts()] == labels(runs)


def test_missing_metric_names_run_and_what_it_has(two_runs, tmp_path):
    # test_accuracy needs a test set, which these runs do not have
    r = psgd("plot", *map(str, two_runs), "--y", "test_accuracy", "--out", str(tmp_path / "f.png"))
    assert r.returncode == 2
    line = r.stderr.strip()
    assert len(line.splitlines()) == 1, line
    assert str(two_runs[0]) in line and "no metric 'test_accuracy'" in line, line
    assert "subopt" in line, line
    assert not (tmp_path / "f.png").exists()


@pytest.mark.parametrize("args, message", [
    (["--x", "iterations"], "--x: got 'iterations'; allowed: step"),
    (["--y", "accuracy"], "--y: got 'accuracy'; allowed: subopt"),
    (["--out", "f.jpg"], "allowed: a file name ending in .png"),
])
def test_bad_arguments(tmp_path, args, message):
    r = psgd("plot", str(tmp_path), *args)
    assert r.returncode == 2 and message in r.stderr, r.stderr


def test_not_a_run_directory(tmp_path):
    r = psgd("plot", str(tmp_path), "--out", str(tmp_path / "f.png"))
    assert r.returncode == 2 and "no metrics.jsonl" in r.stderr, r.stderr
