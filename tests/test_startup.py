"""Start-up has a deadline: a rank stopped (a real SIGSTOP) during start-up ends the job
within run.timeout_s with one line, instead of hanging every other rank (it used to: checked
to 700 s). Before MPI_Init completes nobody can tell which rank is missing, so the line says
MPI_Init is waiting; after it, rank 0 names the ranks that did not reach the barrier."""

import os
import subprocess
import sys
import textwrap
import time

import pytest
import yaml

from psgd import mpiexec
from psgd.startup import GRACE

pytestmark = pytest.mark.mpi

TIMEOUT_S = 5
CONFIG = {
    "seed": 1,
    "problem": {"name": "logistic", "l2": 0.05},
    "data": {"source": "synthetic", "n_samples": 200, "n_features": 10},
    "algorithm": {"name": "diana"},
    "compressor": {"name": "random_dithering", "levels": 1, "norm": "inf"},
    "run": {"iterations": 50, "log_every": 10, "timeout_s": TIMEOUT_S},
}

# Rank WHO stops itself with SIGSTOP, before or after MPI_Init; the others run psgd. Rank
# SLOW first sleeps longer than GRACE, as a slow import on a loaded machine can take.
SCRIPT = textwrap.dedent('''
    import os
    import signal
    import sys
    import time

    cfg, out, who, when, slow, grace = sys.argv[1:7]
    if os.environ.get("PMI_RANK") == slow:
        time.sleep(float(grace) + 2)
    if os.environ.get("PMI_RANK") == who:
        if when == "after":
            from mpi4py import MPI  # noqa: F401  (MPI_Init)
        os.kill(os.getpid(), signal.SIGSTOP)
    from psgd.cli import main
    sys.exit(main(["run", cfg, "--out", out]))
''')



@pytest.mark.parametrize("who,when,expected,slow", [
    ("2", "before", "psgd: error on rank 0: start-up did not complete within run.timeout_s = 5 s"
                    ": MPI_Init is still waiting for a rank", "-"),
    ("0", "before", "psgd: error on rank 1: start-up did not complete within run.timeout_s = 5 s",
     "-"),
    # rank 1's code starts after rank 2's deadline would have, counted from rank 2's code: the
    # deadlines count from the launch, so rank 1 still speaks first and alone (a CI failure)
    ("0", "before", "psgd: error on rank 1: start-up did not complete within run.timeout_s = 5 s",
     "1"),
    ("2", "after", "psgd: error on rank 0: start-up: rank 2 did not reach the start-up barrier "
                   "within run.timeout_s = 5 s", "-"),
    ("0", "after", "psgd: error on rank 1: start-up: the server (rank 0) did not reach the "
                   "start-up barrier", "-"),
])
def test_a_rank_stopped_during_startup_ends_the_job_with_one_line(tmp_path, who, when, expected,
                                                                  slow):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(CONFIG))
    script = tmp_path / "stop.py"
    script.write_text(SCRIPT)
    cmd = [mpiexec.path(), "-n", "3", sys.executable, str(script), str(cfg), str(tmp_path / "out"),
           who, when, slow, str(GRACE)]
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    limit = 120  # Python start-up alone takes many seconds on a loaded 2-core machine
    t0 = time.monotonic()
    try:
        res = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=limit,
                             env=env, start_new_session=True)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"a rank stopped {when} MPI_Init hung the job for {limit} s\n"
                    f"stderr: {exc.stderr}")
    took = time.monotonic() - t0
    assert res.returncode != 0, res.stderr
    lines = [l for l in res.stderr.splitlines() if l.startswith("psgd:")]
    assert len(lines) == 1 and lines[0].startswith(expected), res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    assert took > TIMEOUT_S, took  # the deadline, not some other failure, ended it
    assert not (tmp_path / "out" / "run.json").exists()  # nothing was started


def test_the_deadline_counts_from_each_rank_s_start():
    # a process asked 1.5 s after its start says it is 1.5 s old (the kernel's start time);
    # one older than MAX_STARTUP_AGE_S ran other code first: its deadlines count from now
    ages = subprocess.run([sys.executable, "-c", "import time; time.sleep(1.5); "
                           "from psgd import startup; "
                           "print(time.monotonic() - startup.started_at()); "
                           "startup.MAX_STARTUP_AGE_S = 1.0; "
                           "print(time.monotonic() - startup.started_at())"],
                          capture_output=True, text=True, check=True, timeout=60).stdout.split()
    assert 1.5 <= float(ages[0]) < 30 and float(ages[1]) < 0.5, ages

    from psgd.startup import deadline_s

    assert deadline_s("0", 5) == 5
    assert deadline_s("1", 5) == 5 + GRACE
    assert deadline_s("7", 5) == deadline_s("?", 5) == 5 + 2 * GRACE


def test_only_the_first_watchdog_of_a_job_speaks(tmp_path):
    # two watchdogs firing within the process manager's tear-down used to print two lines
    # under load; the marker lets the first of a job speak and no other, per job
    from psgd import startup

    assert startup.first_to_speak("job.1", str(tmp_path))
    assert not startup.first_to_speak("job.1", str(tmp_path))
    assert startup.first_to_speak("job.2", str(tmp_path))  # another job speaks for itself
    stale = tmp_path / "psgd-startup-gone.7"
    stale.write_text("")
    os.utime(stale, (0, 0))
    startup.first_to_speak("job.3", str(tmp_path))
    assert not stale.exists()  # markers of jobs long gone are removed
    # the ranks of one job share the key (their parent), another launch does not
    keys = [subprocess.run([sys.executable, "-c", "from psgd.startup import job_key; "
                            "print(job_key())"], capture_output=True, text=True, check=True,
                           env={k: v for k, v in os.environ.items()
                                if k not in ("PMIX_NAMESPACE", "SLURM_JOB_ID")}).stdout
            for _ in range(2)]
    assert keys[0] == keys[1] and keys[0].split(".")[0] == str(os.getpid())


def test_the_ranks_of_one_job_give_their_watchdogs_one_key(tmp_path):
    # each rank runs under its own supervising parent: a key taken from the rank's parent
    # would differ per rank and let every rank speak (seen in a fresh-machine run)
    script = tmp_path / "keys.py"
    script.write_text("import os, time\nfrom psgd import launch\n"
                      "w = launch.guard_start(time.monotonic(), 600)\n"
                      "os.write(1, f'key {w.key}\\n'.encode())\nw.cancel()\n")
    keys = set()
    for _ in range(2):
        res = subprocess.run([mpiexec.path(), "-n", "3", sys.executable, str(script)],
                             capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert res.returncode == 0, res.stderr
        lines = [l for l in res.stdout.splitlines() if l.startswith("key ")]
        assert len(lines) == 3 and len(set(lines)) == 1, res.stdout
        keys |= set(lines)
    assert len(keys) == 2  # and the next job has its own
