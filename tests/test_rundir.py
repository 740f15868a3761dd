"""Run directories: one owner at a time, an identity that --resume checks, outputs that are
whole or absent. Real MPI runs, real signals, a real full disk (a small tmpfs).

Each test first does what used to go wrong (issue 12) and then checks exit code, the one
line, and that nothing was lost: the previous results and checkpoint byte-identical."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from psgd import checkpoint, mpiexec, rundir
from psgd.errors import RunError

pytestmark = pytest.mark.mpi

REPO = Path(__file__).resolve().parents[1]
CFG = {
    "seed": 7,
    "problem": {"name": "logistic", "l2": 0.05},
    "data": {"source": "synthetic", "n_samples": 400, "n_features": 30},
    "algorithm": {"name": "diana"},
    "compressor": {"name": "random_dithering", "levels": 1, "norm": "2", "block_size": 10},
    "run": {"iterations": 60, "log_every": 10, "checkpoint_every": 25, "timeout_s": 30},
}



def start(tmp_path, out, *extra, n=3, cfg=CFG):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    cmd = [mpiexec.path(), "-n", str(n), sys.executable, "-m", "psgd", "run", str(path),
           "--out", str(out), *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    return subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, env=env)


def finish(proc, timeout=240):
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("psgd run did not finish in time (hang?)")
    return proc.returncode, out, err


def run(tmp_path, out, *extra, **kw):
    return finish(start(tmp_path, out, *extra, **kw))


def errors(err):
    return [l for l in err.splitlines() if l.startswith("psgd:")]


def snapshot(out: Path) -> dict:
    """Every file under ``out`` (but the lock) and its bytes."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name != rundir.LOCK}


def records(out: Path):
    raw = (out / "metrics.jsonl").read_bytes()
    assert b"\0" not in raw, "metrics.jsonl holds NUL bytes"
    return [json.loads(l) for l in raw.decode().splitlines()]


def without_time(recs):
    return [{k: v for k, v in r.items() if k != "time_s"} for r in recs]


def test_a_fresh_run_into_old_results_is_refused_until_overwrite(tmp_path):
    out = tmp_path / "old"
    code, _, err = run(tmp_path, out)
    assert code == 0, err
    before = snapshot(out)
    old_id = json.loads((out / "run.json").read_text())["run_id"]
    # used to overwrite metrics.jsonl and mix with the old checkpoint (a later --resume then
    # resumed the old run and left NUL bytes in metrics.jsonl)
    code, _, err = run(tmp_path, out, "--set", "seed=8")
    assert code == 2, err
    assert errors(err) == [f"psgd: error: output.dir: {out} holds the results of run {old_id}, "
                           f"started {json.loads(before['run.json'])['created']} (run.json, "
                           f"metrics.jsonl, summary.json, model.npy, checkpoints); allowed: "
                           f"--resume to continue it, --overwrite to replace it, or another "
                           f"--out"], err
    assert snapshot(out) == before  # nothing touched
    (out / "notes.txt").write_text("the user's own file")
    code, stdout, err = run(tmp_path, out, "--set", "seed=8", "--overwrite")
    assert code == 0, err
    assert "--overwrite: removed the previous run's outputs" in stdout
    ident = json.loads((out / "run.json").read_text())
    assert ident["run_id"] != old_id
    assert (out / "notes.txt").read_text() == "the user's own file"  # not psgd's: kept
    assert yaml.safe_load((out / "config.yaml").read_text())["seed"] == 8
    # and --resume now continues the new run, with whole records
    code, _, err = run(tmp_path, out, "--set", "seed=8", "--resume", "--set", "run.iterations=80")
    assert code == 0, err
    assert [r["step"] for r in records(out)] == list(range(0, 81, 10))


def test_resume_after_metrics_were_deleted_restores_them_exactly(tmp_path):
    ref = tmp_path / "ref"
    code, _, err = run(tmp_path, ref, "--set", "run.iterations=100")
    assert code == 0, err
    out = tmp_path / "cut"
    code, _, err = run(tmp_path, out)
    assert code == 0, err
    (out / "metrics.jsonl").unlink()  # used to give a file that starts with NUL bytes
    code, _, err = run(tmp_path, out, "--resume", "--set", "run.iterations=100")
    assert code == 0, err
    assert without_time(records(out)) == without_time(records(ref))


def test_resume_with_another_number_of_ranks_is_refused_before_launch(tmp_path):
    out = tmp_path / "three"
    code, _, err = run(tmp_path, out)
    assert code == 0, err
    before = snapshot(out)
    code, _, err = run(tmp_path, out, "--resume", n=4)  # used to be an IndexError after launch
    assert code == 2, err
    assert errors(err) == [f"psgd: error: --resume: the run in {out} has 2 workers (mpiexec -n "
                           f"3), this launch has 3 (-n 4); allowed: the same number of ranks"]
    assert "Traceback" not in err
    assert snapshot(out) == before


def test_a_second_run_is_refused_naming_the_holder_and_a_dead_one_s_lock_is_taken_over(tmp_path):
    out = tmp_path / "busy"
    slow = dict(CFG, run=dict(CFG["run"], iterations=100000, worker_delay={0: 0.005}))
    first = start(tmp_path, out, cfg=slow)
    deadline = time.monotonic() + 120
    while not (out / "checkpoints" / checkpoint.LATEST).exists():  # under way
        assert time.monotonic() < deadline and first.poll() is None, first.communicate()
        time.sleep(0.1)
    holder = json.loads((out / "run.json").read_text())
    before = {k: v for k, v in snapshot(out).items() if k in ("run.json", "config.yaml")}
    # used to interleave with (or silently overwrite) the running one
    code, _, err = run(tmp_path, out, "--resume", cfg=slow)
    assert code == 2, err
    assert errors(err) == [f"psgd: error: output.dir: {out} is in use by another psgd run "
                           f"(host {holder['host']}, pid {holder['pid']}, started "
                           f"{holder['started']}); wait for it to end, or choose another --out"]
    assert {k: v for k, v in snapshot(out).items() if k in before} == before
    assert first.poll() is None  # the holder runs on
    os.killpg(first.pid, signal.SIGKILL)  # dies holding the lock
    first.wait(timeout=30)
    end = checkpoint.latest(str(out)) + 30
    code, stdout, err = run(tmp_path, out, "--resume", "--set", f"run.iterations={end}")
    assert code == 0, err
    assert (f"psgd: note: took over the lock of {out} left by a run that is no longer running "
            f"(host {holder['host']}, pid {holder['pid']}, started {holder['started']})") in err
    assert json.loads((out / "summary.json").read_text())["iterations"] == end


@pytest.fixture
def small_disk(tmpfs):
    """A 16 MiB tmpfs: a real disk that can be filled."""
    return tmpfs("16m")


def fill(disk: Path, leave: int) -> Path:
    """Take every free block of ``disk`` but ``leave`` bytes."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(b"\0" * 4096)
        except OSError:
            pass
    os.truncate(filler, max(0, filler.stat().st_size - leave))
    return filler


def test_full_disk_while_writing_the_final_model_keeps_the_previous_results(tmp_path, small_disk):
    out = small_disk / "run"
    big = dict(CFG, data={"source": "synthetic", "n_samples": 60, "n_features": 6000},
               run=dict(CFG["run"], iterations=50))
    code, _, err = run(tmp_path, out, cfg=big)
    assert code == 0, err
    before = snapshot(out)  # model.npy (48 kB) and summary.json at step 50, checkpoint 25
    fill(small_disk, leave=32 * 1024)  # room for run.json and metrics, not for the model
    code, _, err = run(tmp_path, out, "--resume", "--set", "run.iterations=60",
                       "--set", "run.checkpoint_every=1000", cfg=big)
    # used to leave a truncated model.npy and a 13-15 line traceback
    assert code == 1, err
    assert errors(err) == [f"psgd: error on rank 0 (server): cannot write {out}/model.npy (No "
                           f"space left on device); {out} keeps its previous model.npy and "
                           f"summary.json; the checkpoint at step 25 is intact (--resume "
                           f"continues from it)"], err
    assert "Traceback" not in err
    after = snapshot(out)
    for name in ("model.npy", "summary.json", "checkpoints/latest.json"):
        assert after[name] == before[name], name
    assert {k for k in after if k.startswith("checkpoints/")} == \
        {k for k in before if k.startswith("checkpoints/")}
    assert all(after[k] == before[k] for k in before if k.startswith("checkpoints/"))
    assert not [k for k in after if ".tmp" in k]  # no half-written file left
    (small_disk / "filler").unlink()
    code, _, err = run(tmp_path, out, "--resume", "--set", "run.iterations=60", cfg=big)
    assert code == 0, err
    assert json.loads((out / "summary.json").read_text())["iterations"] == 60


def test_a_record_cut_by_a_full_disk_is_cut_off_again(small_disk):
    path = small_disk / "metrics.jsonl"
    f = rundir.AppendFile(str(path), truncate=True)
    record = '{"step": 1, "pad": "' + "x" * 3000 + '"}\n'
    written = 0
    with pytest.raises(RunError) as info:
        for _ in range(10000):
            f.write(record)
            written += 1
    assert str(info.value).startswith(f"cannot write {path} (No space left on device); it keeps "
                                      f"its {written * len(record)} bytes of complete records")
    assert path.read_text() == record * written
    f.close()


# -- slurm/psgd.sbatch's decisions (dry run: no SLURM needed) ------------------------------

def sbatch_command(tmp_path, out: Path, *args, restarts=0, job="42"):
    env = dict(os.environ, PSGD_SBATCH_DRYRUN="1", PSGD_LAUNCHER="srun",
               PSGD_CMD=f"{sys.executable} -m psgd", SLURM_JOB_ID=job,
               SLURM_RESTART_COUNT=str(restarts))
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(CFG))
    res = subprocess.run(["bash", str(REPO / "slurm" / "psgd.sbatch"), str(cfg), "--out",
                          str(out), *args], capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 0, res.stderr
    line = next(l for l in res.stderr.splitlines() if "running:" in l)
    return line.split()


def test_sbatch_resumes_only_its_own_run_and_never_repeats_overwrite(tmp_path):
    out = tmp_path / "job"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "latest.json").write_text('{"step": 25}')
    (out / "run.json").write_text(json.dumps({"run_id": "a", "slurm_job_id": "42"}, indent=2))
    # a fresh submission into an old folder passes no --resume: psgd refuses it clearly
    words = sbatch_command(tmp_path, out)
    assert "--resume" not in words and "--overwrite" not in words
    # the requeued job resumes its own run, and drops the user's --overwrite
    words = sbatch_command(tmp_path, out, "--overwrite", restarts=1)
    assert "--resume" in words and "--overwrite" not in words
    # a requeue without a checkpoint starts its own run over
    (out / "checkpoints" / "latest.json").unlink()
    words = sbatch_command(tmp_path, out, restarts=1)
    assert "--overwrite" in words and "--resume" not in words
    # another job's run is never resumed or overwritten by a requeue
    (out / "checkpoints" / "latest.json").write_text('{"step": 25}')
    words = sbatch_command(tmp_path, out, restarts=1, job="43")
    assert "--resume" not in words and "--overwrite" not in words
