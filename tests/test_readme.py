"""Every command the README shows is run as written: here, by another named test, or by CI.

The README's shell blocks and inline `psgd ...` / `mpiexec ...` commands are read from the
README itself, so a command added there without a test that runs it fails this file.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from psgd import mpiexec

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()

#: commands run here exactly as written (in a scratch copy of the checkout's configs)
RUN_HERE = {
    "mpiexec -n 5 psgd run configs/quickstart.yaml",
    "export PSGD_DATA=$PWD/../shared/data",
    "mpiexec -n 5 psgd run configs/diana_mushrooms.yaml",
    "psgd list",
    "psgd list data",
    "psgd list run",
}

#: commands run as written somewhere else, and where; or, for a site's own cluster, why not
RUN_ELSEWHERE = {
    'pip install ".[mpich,test]"': ".ci/run (README command 2, exactly)",
    'pip install ".[mpich]"': ".ci/run installs the superset .[mpich,test] (command 2); "
                              "test_cli_discovery checks the mpich extra holds matplotlib",
    "pytest": ".ci/run (README command 2, exactly)",
    "psgd bench network --rate 100mbit,1gbit,10gbit --dims 1000000 --workers 4 --predict":
        "test_bench_network.py::test_readme_command_as_written (marked full: about 25 min)",
    "psgd bench runtime --servers 1,2,4": "test_bench_runtime.py (the same flags, a small d)",
    "psgd bench codecs": "test_bench_codecs.py (the same command at small sizes; minutes as written)",
    "psgd bench frontier": "test_bench_frontier.py (the same command at small sizes)",
    # a command's name in the prose; its forms are run by these tests
    "psgd run": "test_mpi_runs.py, test_run_outcomes.py and the runs here",
    "psgd validate": "test_validate_command.py",
    "psgd plot": "test_plot.py (on real run directories)",
    "psgd report": "test_report.py (on real run directories)",
    "psgd sweep": "test_sweep.py (a 2 x 2 grid and its resume)",
    "psgd bench network": "test_bench_network.py (a tiny grid end to end)",
    "psgd reproduce diana-fig2": "test_reproduce.py (its --quick form)",
    "psgd reproduce diana-fig4": "test_reproduce_fig4.py (its --quick form)",
    "mpiexec -n 5 psgd run configs/mlp_digits.yaml":
        "test_workloads.py::test_diana_ternary_matches_sgd_accuracy_at_over_10x_fewer_uplink_bits "
        "(this config, DIANA and SGD; marked slow)",
    "mpiexec -n 5 psgd run configs/cnn_digits.yaml":
        "test_cnn.py::test_cnn_digits_config_diana_ternary_matches_sgd_at_over_30x_fewer_uplink_"
        "bits (this config, DIANA and SGD; under -m full)",
    "psgd reproduce diana-table3": "test_reproduce.py (its --quick form)",
    "psgd reproduce diana-fig5": "test_reproduce.py (its --quick form)",
    "psgd reproduce albasyoni": "test_reproduce.py (its --quick form)",
    "psgd reproduce khirirat": "test_reproduce.py (its --quick form)",
    "psgd reproduce flynn": "test_reproduce.py (its --quick form)",
    "module load openmpi": "a site's own module system: not on this machine",
    "env MPICC=$(which mpicc) pip install --no-binary=mpi4py mpi4py":
        "needs a site MPI's mpicc: not on this machine",
    'pip install ".[plot]"': "the plot extra: a subset of what .ci/run installs",
    "srun -n 17 psgd run configs/diana_mushrooms.yaml":
        "test_slurm.py runs psgd under a real srun (with fewer ranks: 2 cores here)",
}


def shell_blocks(text):
    """The lines of every ```bash block, continuation-free, comments removed."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            lines += [cmd.strip() for cmd in line.split(" && ") if cmd.strip()]
    return lines


def inline_commands(text):
    """`psgd ...` and `mpiexec ...` in backticks, without placeholders (CONFIG, [--x], ...)."""
    found = []
    for cmd in re.findall(r"`((?:psgd|mpiexec) [^`]*)`", text):
        cmd = " ".join(cmd.split())  # (a command wrapped over two lines of the README)
        if re.search(r"\[|\.\.\.|\b[A-Z]{2,}\b|\b[A-Z]\b", cmd):
            continue  # a synopsis or placeholders (N, S+n, CONFIG), checked against --help
        found.append(cmd)
    return found


def test_every_readme_command_is_accounted_for():
    shown = set(shell_blocks(README)) | set(inline_commands(README))
    unaccounted = sorted(shown - RUN_HERE - set(RUN_ELSEWHERE))
    assert not unaccounted, f"README commands that no test runs: {unaccounted}"
    stale = sorted((RUN_HERE | set(RUN_ELSEWHERE)) - shown)
    assert not stale, f"listed here but no longer in the README: {stale}"


def test_the_tests_named_as_running_them_exist():
    for cmd, where in RUN_ELSEWHERE.items():
        m = re.match(r"(test_\w+\.py)(?:::(\w+))?", where)
        if m:
            text = (REPO / "tests" / m.group(1)).read_text()
            assert m.group(2) is None or f"def {m.group(2)}(" in text, (cmd, where)


def test_ci_runs_readme_command_2_exactly():
    command_2 = 'pip install ".[mpich,test]" && pytest'
    assert f"```bash\n{command_2}\n```" in README
    ci = (REPO / ".ci" / "run").read_text()
    assert [ln for ln in ci.splitlines() if ln.strip() == command_2], ci


def test_synopsis_options_exist():
    """Every option of the README's synopsis block is one the command accepts."""
    synopsis = re.search(r"## Running\n\n```\n(.*?)```", README, re.S).group(1)
    for line in synopsis.splitlines():
        words = line.split("#")[0].split()
        sub = [w for w in words[:4] if w in ("run", "validate", "list", "bench")][:1]
        if not sub:
            continue
        helptext = subprocess.run([sys.executable, "-m", "psgd", sub[0], "--help"],
                                  capture_output=True, text=True, timeout=60).stdout
        for opt in re.findall(r"(--?[a-z][\w-]*)", line):
            assert opt in helptext, (line, opt)


def scratch_checkout(tmp_path):
    """A directory laid out like a checkout (configs/, and ../shared/data beside it when the
    data exists), so the README's relative paths mean what they mean in a checkout."""
    root = tmp_path / "checkout"
    shutil.copytree(REPO / "configs", root / "configs")
    data = REPO.parent / "shared" / "data"
    if not data.is_dir() and os.environ.get("PSGD_DATA"):
        data = Path(os.environ["PSGD_DATA"])
    if data.is_dir():
        (tmp_path / "shared").mkdir()
        (tmp_path / "shared" / "data").symlink_to(data.resolve())
    return root


def run_as_written(lines, cwd, timeout):
    """The README's lines in one bash, with psgd and mpiexec from this environment first on
    PATH (as after README command 1 in a venv)."""
    env = dict(os.environ)
    env.pop("PSGD_DATA", None)  # the README's export must be what finds the data
    env["PATH"] = os.pathsep.join([str(Path(mpiexec.path()).parent), str(Path(sys.executable).parent),
                                   env["PATH"]])
    return subprocess.run(["bash", "-euc", "\n".join(lines)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.mpi
def test_quick_start_as_written(tmp_path):
    root = scratch_checkout(tmp_path)
    proc = run_as_written(["mpiexec -n 5 psgd run configs/quickstart.yaml"], root, 300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "converged" in proc.stdout and (root / "runs" / "quickstart" / "summary.json").exists()


@pytest.mark.mpi
def test_data_section_as_written(tmp_path):
    block = re.search(r"```bash\n(export PSGD_DATA=.*?)```", README, re.S).group(1)
    root = scratch_checkout(tmp_path)
    if not (tmp_path / "shared" / "data" / "mushrooms").exists():
        pytest.skip("the README's example reads ../shared/data/mushrooms, which is not here")
    proc = run_as_written(block.strip().splitlines(), root, 600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (root / "runs" / "diana_mushrooms" / "summary.json").exists()


@pytest.mark.parametrize("cmd", ["psgd list", "psgd list data", "psgd list run", "psgd bench"])
def test_listing_commands_as_written(tmp_path, cmd):
    proc = run_as_written([cmd], tmp_path, 120)
    assert proc.returncode == 0 and proc.stdout.strip(), proc.stderr


def test_python_example_as_written():
    code = re.search(r"```python\n(.*?)```", README, re.S).group(1)
    prelude = "import numpy as np\nrng = np.random.default_rng(0)\nx = rng.standard_normal(100)\n"
    proc = subprocess.run([sys.executable, "-c", prelude + code + "\nassert y.shape == x.shape\n"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
