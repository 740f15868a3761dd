"""Checkpoints: SIGKILL at random steps + --resume == an uninterrupted run; SIGTERM checkpoints."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

from psgd import checkpoint, mpiexec

pytestmark = pytest.mark.mpi

CFG = {
    "seed": 7,
    "problem": {"name": "logistic", "l2": 0.05},
    "data": {"source": "synthetic", "n_samples": 800, "n_features": 40},
    "algorithm": {"name": "diana"},
    "compressor": {"name": "random_dithering", "levels": 1, "norm": "2", "block_size": 10},
    "run": {"iterations": 400, "log_every": 10, "checkpoint_every": 25, "timeout_s": 30},
}



#: sharded servers (sync): each server writes its file of the cut; with a compressed downlink,
#: so that the servers' mirrors and the workers' must agree after a resume
SHARDED = {"servers": 2, "downlink": {"compressor": {"name": "random_dithering", "levels": 4,
                                                     "norm": "inf", "block_size": 10}}}


#: asynchronous sharded servers (tau = 0 would be the synchronous algorithm and its code): the
#: frozen cut, per-worker models and mirrors; the iterates depend on timing, so a resume is
#: checked for what must hold, not for the uninterrupted run's bits
ASYNC = {"mode": "async", "max_staleness": 2}


def start(tmp_path, out, *extra, delay=0.0, n=4, servers=1, mode="sync"):
    run = dict(CFG["run"], worker_delay={0: delay} if delay else {}, **(
        SHARDED if servers > 1 else {}), **(ASYNC if mode == "async" else {}))
    cfg = dict(CFG, run=run)
    n += servers - 1
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    cmd = [mpiexec.path(), "-n", str(n), sys.executable, "-m", "psgd", "run", str(path),
           "--out", str(out), *extra]
    return subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def finish(proc, timeout=120):
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("psgd run did not finish in time (hang?)")
    return proc.returncode, out, err


def _logged_steps(out) -> int:
    """How many whole records metrics.jsonl holds now (0 before it exists)."""
    try:
        return (out / "metrics.jsonl").read_text().count("\n")
    except FileNotFoundError:
        return 0


def summary(out):
    return json.loads((out / "summary.json").read_text())


@pytest.fixture
def clean_shm():
    """SIGKILLed MPICH ranks leave their /dev/shm segments behind: remove the new ones."""
    from pathlib import Path

    shm = Path("/dev/shm")
    before = set(shm.glob("mpich_shm_*")) if shm.is_dir() else set()
    yield
    for path in (set(shm.glob("mpich_shm_*")) if shm.is_dir() else set()) - before:
        path.unlink(missing_ok=True)


@pytest.mark.parametrize("servers,mode", [(1, "sync"), (2, "sync"), (2, "async")])
def test_sigkill_at_random_steps_then_resume_matches_uninterrupted(tmp_path, clean_shm, servers,
                                                                   mode):
    ref_out = tmp_path / "ref"
    code, _, err = finish(start(tmp_path, ref_out, servers=servers, mode=mode))
    assert code == 0, err
    ref = summary(ref_out)

    out = tmp_path / "killed"
    rng = np.random.default_rng(0)
    kill_points = sorted(rng.choice(np.arange(1, 15), size=3, replace=False) * 25)
    resumed = False
    for point in kill_points:
        # a straggler keeps the run slow enough to be caught mid-way
        proc = start(tmp_path, out, *(["--resume"] if resumed else []), delay=0.004,
                     servers=servers, mode=mode)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            step = checkpoint.latest(str(out)) if (out / "checkpoints").exists() else None
            if step is not None and step >= point:
                break
            time.sleep(0.02)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        resumed = checkpoint.latest(str(out)) is not None
        assert resumed
    code, stdout, err = finish(start(tmp_path, out, "--resume", servers=servers, mode=mode))
    assert code == 0, err
    assert "resuming from the checkpoint at step" in stdout
    if servers > 1:
        last = checkpoint.step_dir(str(out), checkpoint.latest(str(out)))
        assert sorted(os.listdir(last)) == ["server-1.npz", "server.npz", "worker-0.npz",
                                            "worker-1.npz", "worker-2.npz"]
    got = summary(out)
    if mode == "async":  # the frozen cut: each server's file knows the models it had in flight
        assert all("inflight_workers" in np.load(os.path.join(last, name)).files
                   for name in ("server.npz", "server-1.npz"))
        assert got["iterations"] == ref["iterations"] and got["status"] == "max_iterations"
        assert all(r["staleness_max"] <= 2 for r in got["shards"])
        assert got["final_subopt"] < 1e-6 and ref["final_subopt"] < 1e-6  # from 0.2: converging
        return
    assert got["final_loss"] == ref["final_loss"]
    assert got["bits_up_total"] == ref["bits_up_total"]
    assert got["bits_down_total"] == ref["bits_down_total"]
    assert np.array_equal(np.load(out / "model.npy"), np.load(ref_out / "model.npy"))
    steps = [json.loads(l)["step"] for l in (out / "metrics.jsonl").read_text().splitlines()]
    ref_steps = [json.loads(l)["step"] for l in (ref_out / "metrics.jsonl").read_text().splitlines()]
    assert steps == ref_steps  # no duplicated or lost records across the kills


@pytest.mark.parametrize("servers,mode", [(1, "sync"), (2, "sync"), (2, "async")])
def test_sigterm_checkpoints_within_5s_exits_3_and_resume_completes(tmp_path, servers, mode):
    out = tmp_path / "term"
    proc = start(tmp_path, out, "--set", "run.iterations=100000", "--set", "run.checkpoint_every=100000",
                 delay=0.002, servers=servers, mode=mode)
    deadline = time.monotonic() + 60
    # mid-run: a step after the first was logged (the step-0 record is written before any
    # gradient has arrived, so a stop right after it would checkpoint step 0)
    while _logged_steps(out) < 2:
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    t0 = time.monotonic()
    os.killpg(proc.pid, signal.SIGTERM)
    code, stdout, err = finish(proc, timeout=30)
    took = time.monotonic() - t0
    assert code == 3, (code, err)
    assert took < 5, f"checkpoint-and-stop took {took:.1f} s"
    step = checkpoint.latest(str(out))
    assert step is not None and step > 0
    assert not (out / "summary.json").exists()
    code, stdout, err = finish(start(tmp_path, out, "--resume", "--set", f"run.iterations={step + 50}",
                                     "--set", "run.checkpoint_every=100000", servers=servers,
                                     mode=mode))
    assert code == 0, err
    assert summary(out)["iterations"] == step + 50


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    code, _, err = finish(start(tmp_path, tmp_path / "empty", "--resume"))
    assert code == 2
    assert "--resume: no checkpoint" in err


def test_resume_with_changed_algorithm_is_refused(tmp_path):
    out = tmp_path / "a"
    code, _, err = finish(start(tmp_path, out, "--set", "run.iterations=50"))
    assert code == 0, err
    code, _, err = finish(start(tmp_path, out, "--resume", "--set", "algorithm.name=dqgd"))
    assert code == 2 and "section algorithm differs" in err


def test_failed_checkpoint_write_keeps_the_previous_one(tmp_path):
    out = tmp_path / "full"
    code, _, err = finish(start(tmp_path, out, "--set", "run.iterations=60"))
    assert code == 0, err
    assert checkpoint.latest(str(out)) == 50
    # the next checkpoint cannot be created (a file is in the way, as good as a full disk)
    (out / "checkpoints" / "step-000000100").write_text("in the way")
    code, _, err = finish(start(tmp_path, out, "--resume", "--set", "run.iterations=200"))
    assert code == 1
    assert "checkpoint at step 100 could not be written" in err and "(step 75) is intact" in err
    assert checkpoint.latest(str(out)) == 75
    assert "alg.x" in checkpoint.load_arrays(str(out / "checkpoints" / "step-000000075" / "server.npz"))


def test_atomic_write_failure_leaves_old_file(tmp_path, monkeypatch):
    path = tmp_path / "x.npz"
    checkpoint.save_arrays(str(path), {"a": np.arange(3)})

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError):
        checkpoint.save_arrays(str(path), {"a": np.arange(5)})
    assert list(checkpoint.load_arrays(str(path))["a"]) == [0, 1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.npz"]


@pytest.fixture
def small_disk(tmpfs):
    """A 2 MiB tmpfs: a real disk that can be filled."""
    return tmpfs("2m")


def test_full_disk_during_checkpoint_keeps_the_previous_one(tmp_path, small_disk):
    out = small_disk / "run"
    proc = start(tmp_path, out, "--set", "run.iterations=100000", "--set", "run.log_every=1000000",
                 delay=0.003)
    deadline = time.monotonic() + 60
    while not ((out / "checkpoints" / "latest.json").exists() and checkpoint.latest(str(out)) >= 25):
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    with open(small_disk / "filler", "wb") as fh:  # take every remaining block
        try:
            while True:
                fh.write(b"\0" * 65536)
                fh.flush()
        except OSError:
            pass
    code, _, err = finish(proc, timeout=60)
    assert code == 1, err
    assert "could not be written" in err, err
    line = next(l for l in err.splitlines() if "could not be written" in l)
    kept = checkpoint.latest(str(out))
    assert "No space left on device" in line and f"(step {kept}) is intact" in line
    assert "alg.x" in checkpoint.load_arrays(str(checkpoint.step_dir(str(out), kept) + "/server.npz"))
    (small_disk / "filler").unlink()
    code, _, err = finish(start(tmp_path, out, "--resume", "--set", f"run.iterations={kept + 30}"))
    assert code == 0, err
    assert summary(out)["iterations"] == kept + 30


def _errors(err):
    return [l for l in err.splitlines() if l.startswith("psgd:")]


def _tree(out):
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name != ".psgd.lock"}


def test_the_last_two_checkpoints_are_kept_and_each_file_knows_what_it_is(tmp_path):
    out = tmp_path / "two"
    code, _, err = finish(start(tmp_path, out, "--set", "run.iterations=110", n=3))
    assert code == 0, err
    assert sorted(p.name for p in (out / "checkpoints").glob("step-*")) == \
        ["step-000000075", "step-000000100"]
    assert checkpoint.candidates(str(out)) == [100, 75]
    run_id = json.loads((out / "run.json").read_text())["run_id"]
    with np.load(out / "checkpoints" / "step-000000100" / "worker-1.npz") as z:
        meta = json.loads(str(z["_meta"]))
    assert (meta["run_id"], meta["step"], meta["worker"]) == (run_id, 100, 1)
    assert len(meta["sha256"]) == 64


@pytest.mark.parametrize("damage,file,why", [
    ("flip", "worker-1.npz", "is damaged (Bad CRC-32"),
    ("truncate", "server.npz", "is damaged (File is not a zip file)"),
    ("swap", "worker-0.npz", "holds worker 1's state, not worker 0's (files swapped or renamed?)"),
])
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, damage, file, why):
    ref = tmp_path / "ref"
    code, _, err = finish(start(tmp_path, ref, "--set", "run.iterations=150", n=3))
    assert code == 0, err
    out = tmp_path / "cut"
    code, _, err = finish(start(tmp_path, out, "--set", "run.iterations=110", n=3))
    assert code == 0, err
    latest = out / "checkpoints" / "step-000000100"
    if damage == "flip":  # one bit of the array data
        path = latest / file
        raw = bytearray(path.read_bytes())
        raw[len(raw) // 2] ^= 0x10
        path.write_bytes(bytes(raw))
    elif damage == "truncate":
        path = latest / file
        path.write_bytes(path.read_bytes()[:1000])
    else:
        a, b = latest / "worker-0.npz", latest / "worker-1.npz"
        tmp = latest / "x"
        a.rename(tmp)
        b.rename(a)
        tmp.rename(b)
    # used to be a BadZipFile traceback without the file's name (and swapped files were
    # accepted and gave a wrong model)
    code, stdout, err = finish(start(tmp_path, out, "--resume", "--set", "run.iterations=150",
                                     n=3))
    assert code == 0, err
    expected = [(file, why)]
    if damage == "swap":  # each worker finds the other's state in its file
        expected.append(("worker-1.npz", "holds worker 0's state, not worker 1's"))
    lines = sorted(_errors(err))
    assert len(lines) == len(expected), err
    for line, (name, text) in zip(lines, sorted(expected)):
        assert line.startswith(f"psgd: checkpoint file {latest / name} {text}"), err
        assert line.endswith("; resuming from the previous checkpoint (step 75) instead"), err
    assert "resuming from the checkpoint at step 75" in stdout
    # nothing lost: the same model and bits as the uninterrupted run
    assert np.array_equal(np.load(out / "model.npy"), np.load(ref / "model.npy"))
    assert summary(out)["bits_up_total"] == summary(ref)["bits_up_total"]


def test_no_intact_checkpoint_is_one_line_naming_the_file_and_touches_nothing(tmp_path):
    out = tmp_path / "bad"
    code, _, err = finish(start(tmp_path, out, "--set", "run.iterations=60", n=3))
    assert code == 0, err
    for step in ("step-000000025", "step-000000050"):
        path = out / "checkpoints" / step / "server.npz"
        path.write_bytes(path.read_bytes()[:500])
    before = _tree(out)
    code, _, err = finish(start(tmp_path, out, "--resume", "--set", "run.iterations=100", n=3))
    assert code == 2, err
    assert _errors(err) == [
        f"psgd: error: --resume: checkpoint file {out}/checkpoints/step-000000050/server.npz is "
        f"damaged (File is not a zip file); no earlier complete checkpoint is left",
        f"psgd: error: --resume: checkpoint file {out}/checkpoints/step-000000025/server.npz is "
        f"damaged (File is not a zip file); no earlier complete checkpoint is left"], err
    assert "Traceback" not in err
    assert _tree(out) == before
