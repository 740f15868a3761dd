"""psgd under a real single-node SLURM: slurm/psgd.sbatch, the sweep array job, and the
time-limit path (SIGUSR1 -> checkpoint -> exit 3 -> requeue -> resume).

The cluster (slurmctld + slurmd + munge) is brought up once per module by
tests/slurm_cluster.py in a temp dir, installing the Debian packages if needed.  Without
root / apt-get / the packages every test here skips with the reason.  Jobs run the psgd
installed next to the Python running pytest (its bin dir goes first on the job's PATH).
Run just these with:  python -m pytest -m slurm tests/test_slurm.py
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[1]
SBATCH = REPO / "slurm" / "psgd.sbatch"
SWEEP = REPO / "slurm" / "sweep.sbatch"
EXAMPLE_SWEEP = REPO / "slurm" / "example-sweep.txt"
QUICKSTART = REPO / "configs" / "quickstart.yaml"
PSGD = Path(sys.executable).parent / "psgd"

# importlib import mode keeps tests/ off sys.path: load the helper by path.
_spec = importlib.util.spec_from_file_location("slurm_cluster", Path(__file__).with_name("slurm_cluster.py"))
slurm_cluster = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("slurm_cluster", slurm_cluster)
_spec.loader.exec_module(slurm_cluster)


@pytest.fixture(scope="module")
def cluster():
    if not sys.platform.startswith("linux"):
        pytest.skip("the SLURM tests need Linux")
    if os.environ.get("PSGD_TEST_SLURM", "1") == "0":
        pytest.skip("PSGD_TEST_SLURM=0")
    if not PSGD.exists():
        pytest.skip(f"psgd is not installed next to {sys.executable} (pip install .)")
    for f in (SBATCH, SWEEP, QUICKSTART):
        if not f.exists():
            pytest.skip(f"{f.relative_to(REPO)} does not exist yet")
    c = slurm_cluster.SlurmCluster(cpus=8)
    try:
        c.start()
    except slurm_cluster.SlurmUnavailable as exc:
        c.stop()
        pytest.skip(f"no SLURM here: {exc}")
    except BaseException:
        c.stop()
        raise
    try:
        yield c
    finally:
        c.stop()
        print(f"\nSLURM test cluster timings (s): "
              + ", ".join(f"{k} {v:.1f}" for k, v in c.timings.items()))


@pytest.fixture
def workdir(tmp_path):
    """The submit directory: job logs and the default runs/ dir land here, not in the repo."""
    return tmp_path


def _log(workdir: Path, name: str) -> str:
    p = workdir / name
    return p.read_text(errors="replace") if p.exists() else f"(no {name})"


def _check_summary(out: Path, iterations: int) -> dict:
    summary = json.loads((out / "summary.json").read_text())
    assert summary["iterations"] == iterations
    assert summary["status"] in ("max_iterations", "converged")
    assert math.isfinite(summary["final_subopt"]) and summary["final_subopt"] >= -1e-9
    assert summary["bits_up_total"] > 0
    assert (out / "config.yaml").exists()
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert lines and json.loads(lines[-1])["step"] == iterations
    return summary


def test_psgd_job(cluster, workdir):
    """sbatch --wait slurm/psgd.sbatch CONFIG --set ... completes and writes a summary."""
    t0 = time.monotonic()
    jobid = cluster.sbatch(["--wait", "--export=ALL", str(SBATCH), str(QUICKSTART),
                            "--set", "run.iterations=100"], cwd=workdir, timeout=100)
    cluster.timings["one job"] = time.monotonic() - t0
    info = cluster.job(jobid)
    log = _log(workdir, f"psgd-{jobid}.out")
    assert (info.get("JobState"), info.get("ExitCode")) == ("COMPLETED", "0:0"), log
    out = workdir / "runs" / f"psgd-{jobid}"   # the default output dir
    summary = _check_summary(out, 100)
    assert summary["n_workers"] == 4, summary   # --ntasks=5: 1 server + 4 workers
    assert "srun" in log and "done:" in log, log


def _sweep_settings(path: Path) -> list[list[str]]:
    return [shlex.split(line) for line in path.read_text().splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def test_sweep_array(cluster, workdir):
    """The example sweep as a 3-task array job: one run dir per line, each with its override."""
    import yaml

    settings = _sweep_settings(EXAMPLE_SWEEP)
    assert len(settings) == 3
    # 3 ranks (server + 2 workers) per run instead of the script's 5: two runs fit on the
    # test node (8 CPUs) at once and the 2-core machine has fewer processes to start.
    jobid = cluster.sbatch(["--export=ALL", "--ntasks=3", f"--array=0-{len(settings) - 1}",
                            str(SWEEP), str(QUICKSTART), str(EXAMPLE_SWEEP),
                            "--set", "run.iterations=60"],
                           cwd=workdir, timeout=30)
    recs = cluster.wait_jobs(jobid, timeout=120)   # polls every 0.5 s (sbatch --wait: 8 s)
    logs = "\n".join(_log(workdir, f"psgd-sweep-{jobid}_{i}.out") for i in range(len(settings)))
    assert len(recs) == len(settings), (recs, logs)
    for rec in recs:
        assert (rec.get("JobState"), rec.get("ExitCode")) == ("COMPLETED", "0:0"), logs
    base = workdir / "runs" / f"psgd-sweep-{jobid}"
    omegas = set()
    for i, words in enumerate(settings):
        out = base / str(i)
        summary = _check_summary(out, 60)
        omegas.add(summary["omega"])
        cfg = yaml.safe_load((out / "config.yaml").read_text())
        for w in words:
            if w == "--set":
                continue
            key, value = w.split("=", 1)
            node = cfg
            for part in key.split("."):
                node = node[part]
            assert node == yaml.safe_load(value), (i, key, node, value)
    assert len(omegas) == len(settings), omegas   # the settings really differ


def _psgd_resume_help() -> str:
    """'' when `psgd run --help` offers --resume, else what it said instead."""
    try:
        r = subprocess.run([str(PSGD), "run", "--help"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"psgd run --help failed: {exc}"
    if "--resume" in r.stdout:
        return ""
    return f"rc={r.returncode}: {(r.stdout + r.stderr).strip()[-300:]}"


def _metrics_step(out: Path) -> int:
    try:
        lines = (out / "metrics.jsonl").read_text().splitlines()
        return max((json.loads(l)["step"] for l in lines if l.strip()), default=-1)
    except (OSError, ValueError, KeyError):
        return -1


def test_usr1_checkpoint_requeue_resume(cluster, workdir):
    """What happens 120 s before the time limit (--signal=B:USR1@120), triggered by hand:
    the batch shell gets USR1, the run checkpoints and exits 3, the job requeues itself and
    the requeued run resumes from the checkpoint and completes."""
    why = _psgd_resume_help()
    if why:
        pytest.skip(f"psgd run --help does not mention --resume yet (no checkpoints): {why}")
    iterations = 400
    jobid = cluster.sbatch(["--export=ALL", "--ntasks=3", str(SBATCH), str(QUICKSTART),
                            "--set", f"run.iterations={iterations}",
                            "--set", "run.worker_delay={0: 0.02}",   # ~20 ms per step
                            "--set", "run.target=null", "--set", "run.log_every=10"],
                           cwd=workdir, timeout=30)
    out = workdir / "runs" / f"psgd-{jobid}"
    logname = f"psgd-{jobid}.out"
    deadline = time.monotonic() + 60
    while _metrics_step(out) < 20:   # the run is under way
        assert time.monotonic() < deadline, (cluster.queue(), _log(workdir, logname))
        assert cluster.job(jobid).get("JobState") in ("PENDING", "RUNNING", "CONFIGURING"), \
            _log(workdir, logname)
        time.sleep(0.3)
    r = cluster.run(["scancel", "--batch", "--signal=USR1", jobid], timeout=10)
    assert r.returncode == 0, r.stderr

    # The script requeues the job itself.  SLURM holds a requeued job (BeginTime) for
    # AuthInfo=cred_expire seconds: 15 s on the test cluster (120 s by default).
    deadline = time.monotonic() + 60
    while True:
        info = cluster.job(jobid)
        if int(info.get("Restarts", "0")) >= 1:
            break
        assert info.get("JobState") in ("RUNNING", "COMPLETING", "PENDING", "REQUEUED"), \
            (info, _log(workdir, logname))
        assert time.monotonic() < deadline, (info, _log(workdir, logname))
        time.sleep(0.3)
    ckpt = json.loads((out / "checkpoints" / "latest.json").read_text())
    assert 0 < ckpt["step"] < iterations, ckpt

    # Wait for the requeued run to finish; fail early if it resumed but makes no progress.
    done = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")
    deadline = time.monotonic() + cluster.cred_expire + 60
    resumed_at = None
    while True:
        info = cluster.job(jobid)
        if info.get("JobState") in done:
            break
        assert time.monotonic() < deadline, (info, _log(workdir, logname))
        if resumed_at is None and "resuming from the checkpoint" in _log(workdir, logname):
            resumed_at = time.monotonic()
        if resumed_at is not None and time.monotonic() - resumed_at > 30:
            assert _metrics_step(out) > ckpt["step"], \
                (f"the resumed run made no progress past step {ckpt['step']} in 30 s",
                 _log(workdir, logname))
        time.sleep(0.5)
    log = _log(workdir, logname)
    assert (info.get("JobState"), info.get("ExitCode"), info.get("Restarts")) == \
        ("COMPLETED", "0:0", "1"), (info, log)
    assert "run exited with status 3" in log and "requeueing job" in log, log
    assert "--resume" in log and f"resuming from the checkpoint at step {ckpt['step']}" in log, log
    _check_summary(out, iterations)
