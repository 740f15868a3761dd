"""psgd sweep: a real 2 x 2 grid under mpiexec, resume (finished points skipped, a removed
point rerun), bad input, and slurm/sweep.sbatch reading the same points (psgd.sweep)."""

import json
import os
import subprocess
import tempfile
import sys
from pathlib import Path

import pytest
import yaml

from psgd import sweep

REPO = Path(__file__).resolve().parents[1]
SWEEP_SBATCH = REPO / "slurm" / "sweep.sbatch"

BASE = {"seed": 1, "problem": {"name": "logistic", "l2": 0.01},
        "data": {"source": "synthetic", "n_samples": 600, "n_features": 20},
        "algorithm": {"name": "dqgd", "stepsize": "theory"},
        "compressor": {"name": "random_dithering", "levels": 1, "norm": "2"},
        "run": {"iterations": 40, "log_every": 10, "timeout_s": 60}}
GRID = ["--grid", "compressor.norm=2,inf", "--grid", "compressor.levels=1,2"]


def psgd(*args, timeout=300):
    # run outside the checkout, so `python -m psgd` imports the installed package (with its
    # compiled kernels), not the source tree
    return subprocess.run([sys.executable, "-m", "psgd", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=tempfile.gettempdir())


@pytest.fixture
def cfg(tmp_path):
    path = tmp_path / "base.yaml"
    path.write_text(yaml.safe_dump(BASE))
    return path


def _mtimes(out):
    return {i: (out / str(i) / "summary.json").stat().st_mtime_ns for i in range(4)}


@pytest.mark.mpi
@pytest.mark.slow
def test_grid_2x2_runs_and_resumes(cfg, tmp_path):
    out = tmp_path / "sw"
    r = psgd("sweep", str(cfg), *GRID, "--jobs", "2", "--ranks", "3", "--out", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    expected = [("2", 1), ("2", 2), ("inf", 1), ("inf", 2)]   # row-major: first grid slowest
    for i, (norm, levels) in enumerate(expected):
        c = yaml.safe_load((out / str(i) / "config.yaml").read_text())
        assert (c["compressor"]["norm"], c["compressor"]["levels"]) == (norm, levels), i
        s = json.loads((out / str(i) / "summary.json").read_text())
        assert s["iterations"] == 40 and s["n_workers"] == 2
    table = r.stdout.splitlines()[-5:]
    assert table[0].split()[:3] == ["point", "settings", "state"], r.stdout
    assert [ln.split()[0] for ln in table[1:]] == ["0", "1", "2", "3"]
    assert all(" ran " in ln for ln in table[1:]), r.stdout
    assert len({ln.split()[-3] for ln in table[1:]}) == 4   # final_subopt: 4 different runs
    assert (out / "sweep.txt").is_file()

    # resume: nothing left to do, nothing rewritten
    before = _mtimes(out)
    r = psgd("sweep", str(cfg), *GRID, "--jobs", "2", "--ranks", "3", "--out", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "4 finished already, running 0" in r.stdout
    assert _mtimes(out) == before
    assert r.stdout.count(" skipped ") == 4

    # a removed point is rerun, and only it
    import shutil

    shutil.rmtree(out / "2")
    r = psgd("sweep", str(cfg), *GRID, "--ranks", "3", "--out", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "3 finished already, running 1" in r.stdout
    after = _mtimes(out)
    assert {i: after[i] for i in (0, 1, 3)} == {i: before[i] for i in (0, 1, 3)}
    assert json.loads((out / "2" / "summary.json").read_text())["iterations"] == 40

    # the same directory with other points is refused (indices would match the wrong runs)
    r = psgd("sweep", str(cfg), "--grid", "compressor.levels=3,4", "--out", str(out))
    assert r.returncode == 2 and "holds a different sweep" in r.stderr, r.stderr


@pytest.mark.parametrize("args, message", [
    (["--grid", "compressor.levels"], "expected key.path=v1,v2"),
    (["--grid", "compressor.levels=1,,2"], "empty value"),
    (["--grid", "a=1", "--grid", "a=2"], "given twice"),
    (["--grid", "compressor.levels=1,0"], "point 1"),           # validated before any run
    (["--grid", "compressor.levels=1", "--jobs", "0"], "--jobs: got 0"),
    (["--grid", "compressor.levels=1", "--ranks", "1"], "--ranks: got 1"),
    ([], "--grid KEY=V1,V2"),
])
def test_bad_input_is_one_line_exit_2(cfg, tmp_path, args, message):
    r = psgd("sweep", str(cfg), *args, "--out", str(tmp_path / "o"), timeout=60)
    assert r.returncode == 2, r.stdout + r.stderr
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "o" / "0").exists()


def test_values_with_commas_and_bare_settings():
    assert sweep.split_values("1,{0: 0.1, 1: 0.2},'a,b'") == ["1", "{0: 0.1, 1: 0.2}", "'a,b'"]
    assert sweep.grid_points(["a=1,2", "b=x"]) == [["--set", "a=1", "--set", "b=x"],
                                                   ["--set", "a=2", "--set", "b=x"]]
    assert sweep.line_args("a=1 --set b=2 'c={0: 1}'") == ["--set", "a=1", "--set", "b=2",
                                                           "--set", "c={0: 1}"]


def test_sbatch_reads_points_through_psgd_sweep(tmp_path):
    """slurm/sweep.sbatch (dry run, no SLURM needed) gives array task i exactly the options
    and directory psgd sweep gives point i: both read the file with psgd.sweep."""
    points_file = tmp_path / "grid.txt"
    points = sweep.grid_points(["compressor.levels=1,2", "run.worker_delay={0: 0.01},{}"])
    points_file.write_text("# comment\n\n" + "".join(sweep.format_line(p) + "\n" for p in points))
    env = dict(os.environ, PSGD_SBATCH_DRYRUN="1", PSGD_LAUNCHER="mpiexec",
               PSGD_SLURM_DIR=str(REPO / "slurm"), PSGD_PYTHON=sys.executable,
               PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    for i, p in enumerate(points):
        r = subprocess.run(["bash", str(SWEEP_SBATCH), str(REPO / "configs" / "quickstart.yaml"),
                            str(points_file), "--out", str(tmp_path / "base")],
                           env={**env, "SLURM_ARRAY_TASK_ID": str(i)}, capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        running = [ln for ln in r.stderr.splitlines() if "running:" in ln][0]
        import shlex

        words = shlex.split(running.split("running:", 1)[1])
        run_at = words.index("run")
        assert words[run_at + 2:] == p + ["--out", str(sweep.point_dir(tmp_path / "base", i))]
    r = subprocess.run(["bash", str(SWEEP_SBATCH), "configs/quickstart.yaml", str(points_file)],
                       env={**env, "SLURM_ARRAY_TASK_ID": "4"}, capture_output=True, text=True,
                       timeout=60, cwd=REPO)
    assert r.returncode == 2 and "has only 4 settings (use --array=0-3)" in r.stderr, r.stderr
