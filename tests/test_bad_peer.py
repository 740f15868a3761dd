"""A worker that sends a bad message ends the job, and the error names it (real MPI).

``mpiexec -n 3`` runs a script in which ranks 0 and 2 run ``psgd run`` normally and rank 1
impersonates worker 0: it takes part in the setup handshake, receives the first model, then
sends a bad message on TAG_UP and waits. The server must turn that into a RunError naming
"worker 0 (rank 1)", the launcher must print it and call MPI Abort, and mpiexec must exit
non-zero well before the subprocess timeout.

Rank 0 also copies its stderr to a file, so the test can tell "the server never said it" from
"mpiexec lost the line": MPICH's hydra can drop a rank's last stderr line when that rank calls
MPI_Abort right after writing it (reproduced without psgd: print + flush + Abort lost the line
in 1 of 40 runs here, a 0.2 s pause in 0 of 40). The launcher now pauses 0.5 s before Abort
(8c10953); should the line still be lost, the test warns and retries (at most 3 runs).
"""

import os
import warnings
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from psgd import mpiexec

pytestmark = pytest.mark.mpi

TIMEOUT = 60

CONFIG = {
    "seed": 1,
    "problem": {"name": "logistic", "l2": 0.05},
    "data": {"source": "synthetic", "n_samples": 200, "n_features": 10},
    "algorithm": {"name": "diana"},
    "compressor": {"name": "random_dithering", "levels": 1, "norm": "inf"},
    "run": {"iterations": 2000, "log_every": 100, "timeout_s": 20},
}

SCRIPT = textwrap.dedent('''
    """Ranks 0 and 2: psgd run. Rank 1: a worker that sends one bad message (mode argv[3])."""
    import sys
    import time

    from mpi4py import MPI

    cfg, out, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    comm = MPI.COMM_WORLD


    class Tee:
        """sys.stderr that also writes a copy to a file."""

        def __init__(self, *streams):
            self.streams = streams

        def write(self, text):
            for s in self.streams:
                s.write(text)
            return len(text)

        def flush(self):
            for s in self.streams:
                s.flush()

        def __getattr__(self, name):
            return getattr(self.streams[0], name)


    if comm.Get_rank() != 1:
        if comm.Get_rank() == 0:
            sys.stderr = Tee(sys.stderr, open(out + ".rank0.stderr", "w"))
        from psgd.cli import main
        sys.exit(main(["run", cfg, "--out", out]))

    import struct

    import numpy as np

    from psgd import wire
    from psgd.comm import allreduce_max
    from psgd.transport import TAG_DOWN, TAG_UP
    from psgd.compressors import get_compressor

    from psgd.launch import own_shm_segments
    from psgd.startup import barrier

    barrier(comm, time.monotonic() + 120, 120)           # the launcher's start-up barrier
    with open(out + ".shm", "w") as fh:                  # this job's shared memory, for the test
        fh.write(" ".join(own_shm_segments()))
    # the launcher's setup handshake: loading agreed, rank 0's constants, the context agreed
    allreduce_max(comm, 0, 600, "loading the problem on all ranks")
    comm.bcast(None, root=0)
    allreduce_max(comm, 0, 600, "setup on all ranks")
    buf = np.empty(1 << 20, np.uint8)
    req = comm.Irecv([buf, MPI.BYTE], source=0, tag=TAG_DOWN)
    status = MPI.Status()
    deadline = time.monotonic() + 120
    while not req.Test(status):
        if time.monotonic() > deadline:
            print("impostor: no model from the server", file=sys.stderr, flush=True)
            sys.exit(7)
        time.sleep(0.005)
    header, payload = wire.parse(buf, status.Get_count(MPI.BYTE), sender="the server")
    assert header.kind == wire.MODEL and header.worker in (0, wire.BROADCAST), header
    d = struct.unpack_from("<I", bytes(payload[:8]), 4)[0]   # the model's codec header
    rng = np.random.default_rng(0)
    comp = get_compressor({"name": "random_dithering", "levels": 1, "norm": "inf"})
    if mode == "garbage":            # random bytes, shorter than the server's receive buffer
        msg = rng.integers(0, 256, 40, dtype=np.uint8)
    elif mode == "codec_header":     # a valid envelope around a codec buffer whose d is off by one
        code = comp.encode(rng.standard_normal(d), rng)
        struct.pack_into("<I", code, 4, d + 1)
        msg = wire.message(wire.GRAD, 0, header.version, 0, code)
    elif mode == "codec_payload":    # valid envelope and codec header; a trit byte >= 243
        code = comp.encode(rng.standard_normal(d), rng)
        code[-1] = 0xFF
        msg = wire.message(wire.GRAD, 0, header.version, 0, code)
    elif mode == "oversized":        # longer than any message the server can expect
        msg = rng.integers(0, 256, 4096, dtype=np.uint8)
    elif mode == "second_gradient":  # a valid gradient, then another before any new model
        first = wire.message(wire.GRAD, 0, header.version, 0, comp.encode(rng.standard_normal(d), rng))
        comm.Isend([first, MPI.BYTE], dest=0, tag=TAG_UP).Wait()
        msg = wire.message(wire.GRAD, 0, header.version, 1, comp.encode(rng.standard_normal(d), rng))
    else:
        raise SystemExit(f"unknown mode {mode}")
    comm.Isend([msg, MPI.BYTE], dest=0, tag=TAG_UP)
    print(f"impostor: sent {msg.size} bad bytes ({mode})", file=sys.stderr, flush=True)
    time.sleep(120)                  # the server's Abort ends this process
    sys.exit(8)
''')



def _run(tmp_path, mode):
    """Run the job in ``tmp_path``; ranks write ``out/`` and rank 0 ``out.rank0.stderr``."""
    cfg = tmp_path / "cfg.yaml"
    config = CONFIG
    if mode == "second_gradient":  # worker 1 is slow: worker 0's first gradient stays queued
        config = dict(CONFIG, run=dict(CONFIG["run"], worker_delay={1: 3.0}))
    cfg.write_text(yaml.safe_dump(config))
    script = tmp_path / "impostor.py"
    script.write_text(SCRIPT)
    cmd = [mpiexec.path(), "-n", "3", sys.executable, str(script), str(cfg), str(tmp_path / "out"), mode]
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    try:
        return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT, env=env)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the job did not end within {TIMEOUT} s after a bad message (hang?)\n"
                    f"stdout: {exc.stdout}\nstderr: {exc.stderr}")


@pytest.mark.parametrize("mode,why", [
    ("garbage", "bad magic"),
    ("codec_header", "message has d="),
    ("codec_payload", "trit byte"),
    ("oversized", "MPI could not receive it"),
    ("second_gradient", "a second gradient (its step 1) before it was sent a new model"),
])
def test_a_bad_message_from_a_worker_ends_the_job_naming_it(tmp_path, mode, why):
    if mpiexec.path() is None:
        pytest.skip("mpiexec not found")
    expected = "psgd: error on rank 0 (server): bad message from worker 0 (rank 1)"
    for attempt in range(3):
        run_dir = tmp_path / f"attempt{attempt}"
        run_dir.mkdir()
        res = _run(run_dir, mode)
        assert "impostor: sent" in res.stderr, res.stdout + res.stderr
        assert res.returncode != 0, res.stdout + res.stderr
        assert not (run_dir / "out" / "summary.json").exists()
        copy = run_dir / "out.rank0.stderr"
        said = copy.read_text() if copy.exists() else ""
        assert expected in said and why in said, f"rank 0 wrote:\n{said}\nmpiexec stderr:\n{res.stderr}"
        assert len([l for l in said.splitlines() if l.startswith("psgd:")]) == 1, said
        _assert_shm_removed(run_dir / "out.shm")
        if expected in res.stderr:
            break
        # the server said it, mpiexec lost it (hydra + MPI_Abort, see the module docstring)
        warnings.warn(f"attempt {attempt}: rank 0 wrote {expected!r} but mpiexec's stderr lost it")
    assert expected in res.stderr and why in res.stderr, res.stderr


def _assert_shm_removed(record: Path):
    """The aborting launcher removed the MPICH segments of its job (the impostor wrote their
    names): an MPI_Abort used to leave a 3 MB /dev/shm/mpich_shm_* behind every time."""
    names = [n for n in record.read_text().split() if n]
    assert names, "the impostor saw no MPICH shared-memory segment (not MPICH on one node?)"
    left = [n for n in names if os.path.exists(n)]
    assert not left, f"the aborted job left its shared memory behind: {left}"


FAKE_SERVER = textwrap.dedent('''
    """Ranks 1 and 2: psgd run. Rank 0: a server that sends worker 0 one bad MODEL (argv[3])."""
    import sys
    import time

    from mpi4py import MPI

    cfg, out, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    comm = MPI.COMM_WORLD

    if comm.Get_rank() != 0:
        if comm.Get_rank() == 1:
            log = open(out + ".rank1.stderr", "w")
            real = sys.stderr

            class Tee:
                def write(self, text):
                    real.write(text)
                    log.write(text)
                    return len(text)

                def flush(self):
                    real.flush()
                    log.flush()

                def __getattr__(self, name):
                    return getattr(real, name)

            sys.stderr = Tee()
        from psgd.cli import main
        sys.exit(main(["run", cfg, "--out", out]))

    import numpy as np

    from psgd import wire
    from psgd.comm import allreduce_max
    from psgd.startup import barrier
    from psgd.transport import TAG_DOWN

    from psgd import config, problems
    from psgd.launch import _shareable

    barrier(comm, time.monotonic() + 120, 120)
    # the launcher's setup handshake, as server 0 makes it: loading agreed, the constants
    # of the whole problem broadcast, the context agreed
    allreduce_max(comm, 0, 600, "loading the problem on all ranks")
    resolved = config.load(cfg)
    whole = problems.make_problem(resolved["problem"], resolved["data"], resolved["seed"],
                                  comm.Get_size() - 1)
    comm.bcast(_shareable(problems.constants(whole)), root=0)
    allreduce_max(comm, 0, 600, "setup on all ranks")
    rng = np.random.default_rng(0)
    if mode == "oversized":          # far longer than the largest model message
        msg = rng.integers(0, 256, 1 << 20, dtype=np.uint8)
    elif mode == "garbage":          # shorter than the buffer, but no psgd message
        msg = rng.integers(0, 256, 40, dtype=np.uint8)
    else:
        raise SystemExit(f"unknown mode {mode}")
    comm.Isend([msg, MPI.BYTE], dest=1, tag=TAG_DOWN)
    print(f"fake server: sent {msg.size} bad bytes ({mode})", file=sys.stderr, flush=True)
    time.sleep(120)                  # the worker's Abort ends this process
    sys.exit(8)
''')


@pytest.mark.parametrize("mode,why", [
    ("oversized", "MPI could not receive it"),
    ("garbage", "bad magic"),
])
def test_a_bad_model_message_ends_the_job_naming_the_server(tmp_path, mode, why):
    """A MODEL message a worker cannot take is one line naming the sender (an oversized one
    used to be a 31-line MPI traceback), and the job ends well before the timeout."""
    if mpiexec.path() is None:
        pytest.skip("mpiexec not found")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(CONFIG))
    script = tmp_path / "fake_server.py"
    script.write_text(FAKE_SERVER)
    cmd = [mpiexec.path(), "-n", "3", sys.executable, str(script), str(cfg), str(tmp_path / "out"),
           mode]
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    try:
        res = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True,
                             timeout=TIMEOUT, env=env)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the job did not end within {TIMEOUT} s after a bad model (hang?)\n"
                    f"stderr: {exc.stderr}")
    assert "fake server: sent" in res.stderr, res.stderr
    assert res.returncode != 0, res.stderr
    said = (tmp_path / "out.rank1.stderr").read_text()
    lines = [l for l in said.splitlines() if l.strip()]
    assert len(lines) == 1, said  # one line, no traceback
    assert "psgd: error on rank 1 (worker 0): worker 0: bad message from the server" in lines[0]
    assert why in lines[0], said
