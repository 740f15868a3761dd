"""A rank killed by a signal is named by the surviving side (real MPI, a real kill -9).

A real ``mpiexec -n 5 psgd run`` as the README writes it (no wrapper); once it has written a
checkpoint, the test SIGKILLs worker 2 (rank 3) or the server. It used to end with only
mpiexec's banner: hydra SIGKILLs every other rank at once, so no rank could say anything.
Now each rank's supervising parent (psgd.supervise) names its dead child in one line, the
job ends non-zero well before the timeout, the job's /dev/shm/mpich_shm_* segments are
gone, and the run directory's checkpoint is intact: --resume finishes the run.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import yaml

from psgd import checkpoint, mpiexec

pytestmark = pytest.mark.mpi

TIMEOUT = 90

CONFIG = {
    "seed": 7,
    "problem": {"name": "logistic", "l2": 0.05},
    "data": {"source": "synthetic", "n_samples": 400, "n_features": 20},
    "algorithm": {"name": "diana"},
    "compressor": {"name": "random_dithering", "levels": 1, "norm": "2", "block_size": 10},
    # a straggler keeps the run going long enough to be killed mid-way
    "run": {"iterations": 100000, "log_every": 50, "checkpoint_every": 50, "timeout_s": 30,
            "worker_delay": {0: 0.002}},
}


def _environ(pid):
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            return dict(kv.split(b"=", 1) for kv in fh.read().split(b"\0") if b"=" in kv)
    except OSError:
        return {}


def _parent(pid):
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[1])
    except OSError:
        return None


def _descendants(root):
    kids = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            kids.setdefault(_parent(int(name)), []).append(int(name))
    out, todo = [], [root]
    while todo:
        for k in kids.get(todo.pop(), []):
            out.append(k)
            todo.append(k)
    return out


def rank_pid(root, rank):
    """The pid of MPI rank ``rank`` under mpiexec ``root``, or None while not unique: the
    process with that PMI_RANK (under psgd's supervisor, the child of the one that has it)."""
    mine = [p for p in _descendants(root) if _environ(p).get(b"PMI_RANK") == str(rank).encode()]
    found = [p for p in mine if _parent(p) in mine] or mine
    return found[0] if len(found) == 1 else None


def segments(pid):
    from psgd.launch import own_shm_segments

    return own_shm_segments(pid)


def _start(tmp_path, *extra, iterations=None):
    cfg = tmp_path / "cfg.yaml"
    run = dict(CONFIG["run"], **({"iterations": iterations} if iterations else {}))
    cfg.write_text(yaml.safe_dump(dict(CONFIG, run=run)))
    cmd = [mpiexec.path(), "-n", "5", sys.executable, "-m", "psgd", "run", str(cfg),
           "--out", str(tmp_path / "out"), *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    return subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, start_new_session=True)


def _rank_once_checkpointed(proc, out, rank):
    """The pid of ``rank`` once the run has checkpointed step 100 (by then every rank is in
    its loop); fails the test if the run ends first or the rank is not found."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / "checkpoints").exists() and (checkpoint.latest(str(out)) or 0) >= 100:
            victim = rank_pid(proc.pid, rank)
            if victim:
                return victim
        time.sleep(0.05)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail(f"the run ended, or rank {rank} was not found, before a checkpoint")


def _finish(proc, what):
    try:
        return proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{what}: the job did not end within {TIMEOUT} s (hang?)\n{out}\n{err}")


@pytest.mark.parametrize("rank,role", [(3, "worker 2"), (0, "server")])
def test_a_rank_killed_by_sigkill_is_named_and_the_checkpoint_survives(tmp_path, rank, role):
    if mpiexec.path() is None:
        pytest.skip("mpiexec not found")
    out = tmp_path / "out"
    proc = _start(tmp_path)
    victim = _rank_once_checkpointed(proc, out, rank)
    shm = segments(victim)
    assert shm, f"rank {rank} has no MPICH shared-memory segment (not MPICH on one node?)"
    os.kill(victim, signal.SIGKILL)
    t_kill = time.monotonic()
    stdout, stderr = _finish(proc, "after kill -9")
    took = time.monotonic() - t_kill

    assert proc.returncode != 0, stdout + stderr
    lines = [l for l in stderr.splitlines() if l.startswith("psgd:")]
    assert len(lines) == 1, stderr
    assert re.match(rf"psgd: error: {role} \(rank {rank}, pid {victim}\) was killed by signal 9 "
                    rf"\(SIGKILL\); ending the job; the checkpoint at step \d+ in .*out is kept "
                    rf"\(--resume continues from it\)$", lines[0]), lines[0]
    assert "Traceback" not in stderr, stderr
    assert took < CONFIG["run"]["timeout_s"], took  # the death, not some deadline, ended it
    # (the kill often comes within a second of MPI_Init: the rank told its parent the names)
    assert not [s for s in shm if os.path.exists(s)], "the killed job left its shared memory"

    # nothing lost: the checkpoint the line names is whole, and --resume finishes the run
    named = int(re.search(r"at step (\d+)", lines[0]).group(1))
    # the surviving ranks may finish one more checkpoint before the job is torn down (the
    # dead worker's last gradient can complete a step): every one kept is whole
    step = checkpoint.latest(str(out))
    assert named <= step <= named + CONFIG["run"]["checkpoint_every"], (named, step)
    for r in range(5):
        role_j = ("server", 0) if r == 0 else ("worker", r - 1)
        assert checkpoint.verify(str(out), sorted({named, step}), *role_j) == [None] * len({named, step}), r
    resumed = _start(tmp_path, "--resume", iterations=step + 100)
    stdout, stderr = _finish(resumed, "--resume after the kill")
    assert resumed.returncode == 0, stdout + stderr
    assert f"resuming from the checkpoint at step {step}" in stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["iterations"] == step + 100
    steps = [json.loads(l)["step"] for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == step + 100  # no duplicated records


def test_a_signal_to_the_whole_group_is_not_reported_as_a_killed_rank(tmp_path):
    """SIGUSR2 to a rank and its parent alike (what a launcher's group-wide signal does):
    the launcher or the user sent it and knows; no 'was killed' line may claim otherwise."""
    if mpiexec.path() is None:
        pytest.skip("mpiexec not found")
    out = tmp_path / "out"
    proc = _start(tmp_path)
    victim = _rank_once_checkpointed(proc, out, 3)
    parent = _parent(victim)
    assert _environ(parent).get(b"PMI_RANK") == b"3"  # its supervisor, not mpiexec's proxy
    os.kill(parent, signal.SIGUSR2)
    os.kill(victim, signal.SIGUSR2)
    stdout, stderr = _finish(proc, "after a group-wide SIGUSR2")
    assert proc.returncode != 0, stdout + stderr
    assert "was killed" not in stderr, stderr
