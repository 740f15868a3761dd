"""Start-up has a deadline: every rank is in the job within ``run.timeout_s`` of its start.

Two guards, because a rank that never arrives can hang the others in two places:

- :class:`Watchdog`, started before ``MPI_Init``: MPI_Init waits for every rank of the job
  (the process manager's fence), so a rank stopped or lost before it hangs the others
  inside MPI, holding the GIL (mpi4py does not release it there), where no Python
  thread or deadline can run. The watchdog is therefore a forked process: it prints one
  line and kills its rank, and the process manager then ends the job.
- :func:`barrier`, right after MPI_Init: every rank says hello to rank 0 and waits for its
  go, all non-blocking, so rank 0 can name the ranks that did not arrive.

Rank 0 gives up first, rank 1 :data:`GRACE` seconds later, the others after that: normally
only rank 0 speaks, and a worker speaks only when rank 0 itself is the one missing. The
deadlines count from when the launcher started each process (:func:`started_at`), not from
when psgd's code first ran: on a loaded machine the ranks' imports can differ by more than
GRACE, and a rank that started late would then speak after the job had already ended.
The staggered deadlines only make rank 0 (or 1) the likely speaker; on a loaded machine two
watchdogs can still fire before the process manager has ended the job (the first rank's
kill takes seconds to reach the others). So a watchdog speaks only when it is the first of
its job on this node to claim a marker file (:func:`first_to_speak`): one line per node.
"""

from __future__ import annotations

import glob
import os
import select
import signal
import sys
import tempfile
import time

import numpy as np

from .errors import RunError

TAG_START = 13  # beside transport's TAG_UP/TAG_DOWN: only during start-up
#: how much longer than rank 0 the next ranks wait before they speak
GRACE = 5.0


def rank_from_env() -> str:
    """This process's rank as the launcher told it (before MPI_Init can), or '?'."""
    for key in ("PMI_RANK", "PMIX_RANK", "OMPI_COMM_WORLD_RANK", "SLURM_PROCID"):
        if os.environ.get(key, "").isdigit():
            return os.environ[key]
    return "?"


#: a process older than this when psgd starts ran other code first (a user's script, a
#: notebook): its deadlines count from now, as they would without a start time
MAX_STARTUP_AGE_S = 120.0


def started_at() -> float:
    """When the launcher started this process, on the time.monotonic() clock: the kernel
    records a process's start in clock ticks since boot (/proc/self/stat, field 22). Where
    that cannot be read, or is more than MAX_STARTUP_AGE_S ago, now."""
    now = time.monotonic()
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()  # (the name may hold spaces)
        start = int(fields[19]) / os.sysconf("SC_CLK_TCK")
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - start
    except (OSError, ValueError, IndexError, AttributeError):
        return now
    return now - age if 0.0 <= age <= MAX_STARTUP_AGE_S else now


def deadline_s(rank, timeout_s: float) -> float:
    """Seconds after its start at which ``rank`` gives up waiting for the others."""
    r = int(rank) if str(rank).isdigit() else 2
    return timeout_s + GRACE * min(r, 2)


def job_key() -> str:
    """What the ranks of one job on one node share before MPI_Init: the launcher's job id
    where it exports one, else their parent (Hydra's proxy, slurmstepd, prted) by pid and
    start time (a pid alone is reused)."""
    for key in ("PMIX_NAMESPACE", "SLURM_JOB_ID"):
        if os.environ.get(key):
            return f"{os.environ[key]}.{os.environ.get('SLURM_STEP_ID', '')}"
    ppid = os.getppid()
    try:
        with open(f"/proc/{ppid}/stat") as f:
            start = f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        start = "?"
    return f"{ppid}.{start}"


#: markers older than this are from jobs long gone (nobody else removes them)
MARKER_MAX_AGE_S = 86400.0


def first_to_speak(key: str, folder: str | None = None) -> bool:
    """True for the first caller of a job (``key``: :func:`job_key`) on this node: it
    creates the job's marker file atomically (O_EXCL); every later caller gets False."""
    folder = folder or ("/dev/shm" if os.access("/dev/shm", os.W_OK) else tempfile.gettempdir())
    name = "psgd-startup-" + "".join(c if c.isalnum() or c in ".-_" else "_"
                                     for c in key)
    for old in glob.glob(os.path.join(folder, "psgd-startup-*")):
        try:
            if time.time() - os.path.getmtime(old) > MARKER_MAX_AGE_S:
                os.unlink(old)
        except OSError:
            pass
    try:
        os.close(os.open(os.path.join(folder, name), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    except OSError:  # no writable folder: speak (two lines beat none)
        return True
    return True


class Watchdog:
    """Kills this process with one line unless :meth:`cancel` is called within ``seconds``.

    ``key`` is the job's :func:`job_key` (only the first watchdog of a job speaks).
    ``on_fire(pid)`` runs in the watchdog before the kill (it removes the rank's shared
    memory). The watchdog also ends, silently, when this process ends.
    """

    def __init__(self, seconds: float, timeout_s: float, key: str, on_fire=None):
        read, self.write = os.pipe()
        parent, self.key = os.getpid(), key
        self.pid = os.fork()
        if self.pid == 0:  # the watchdog: only select, print and kill from here on
            code = 0
            try:
                os.close(self.write)
                ready, _, _ = select.select([read], [], [], max(seconds, 0.0))
                if not ready:  # neither cancelled nor ended: the rank is stuck in MPI_Init
                    if first_to_speak(key):
                        print(f"psgd: error on rank {rank_from_env()}: start-up did not "
                              f"complete within run.timeout_s = {timeout_s:g} s: MPI_Init is "
                              f"still waiting for a rank that is stopped, crashed or was never "
                              f"started; ending the job", file=sys.stderr, flush=True)
                    if on_fire is not None:
                        on_fire(parent)
                    os.kill(parent, signal.SIGKILL)
            except BaseException:  # noqa: BLE001 - a watchdog must never run the rank's code
                code = 1
            os._exit(code)
        os.close(read)

    def cancel(self):
        if self.write is not None:
            os.write(self.write, b"ok")
            os.close(self.write)
            self.write = None
            os.waitpid(self.pid, 0)


def barrier(comm, end: float, timeout_s: float) -> None:
    """Every rank meets rank 0 by ``end`` (time.monotonic()), or RunError naming who is late."""
    from mpi4py import MPI

    from .comm import Backoff

    rank, size = comm.Get_rank(), comm.Get_size()
    byte = np.zeros(1, np.uint8)
    if rank == 0:
        bufs = [np.zeros(1, np.uint8) for _ in range(size)]
        reqs = {r: comm.Irecv([bufs[r], MPI.BYTE], source=r, tag=TAG_START)
                for r in range(1, size)}
        _wait_all(reqs, end, Backoff(), lambda late: RunError(
            f"start-up: {_ranks(late)} did not reach the start-up barrier within "
            f"run.timeout_s = {timeout_s:g} s (stopped, crashed or never started); "
            f"ending the job"))
        sends = {r: comm.Isend([byte, MPI.BYTE], dest=r, tag=TAG_START) for r in range(1, size)}
        _wait_all(sends, end + GRACE, Backoff(), lambda late: RunError(
            f"start-up: the go to {_ranks(late)} did not complete"))
        return
    hello = comm.Isend([byte, MPI.BYTE], dest=0, tag=TAG_START)
    go = comm.Irecv([np.zeros(1, np.uint8), MPI.BYTE], source=0, tag=TAG_START)
    _wait_all({0: go}, end, Backoff(), lambda late: RunError(
        f"start-up: the server (rank 0) did not reach the start-up barrier within "
        f"run.timeout_s = {timeout_s:g} s (+{GRACE:g} s); ending the job"))
    _wait_all({0: hello}, end + GRACE, Backoff(), lambda late: RunError(
        "start-up: the hello to rank 0 did not complete"))


def _wait_all(reqs: dict, end: float, backoff, error) -> None:
    pending = dict(reqs)
    while pending:
        for r in [r for r, req in pending.items() if req.Test()]:
            del pending[r]
        if not pending:
            return
        if time.monotonic() > end:
            raise error(sorted(pending))
        backoff.wait()


def _ranks(ranks) -> str:
    return ("rank " if len(ranks) == 1 else "ranks ") + ", ".join(map(str, ranks))
