"""A rank killed by a signal is named: every rank runs under a thin supervising parent.

Why a parent: a process killed by SIGKILL runs no code, and when any rank of a job dies,
MPICH's hydra (and srun with --kill-on-bad-exit) SIGKILLs every other rank at once, so no
surviving rank gets to run code either, and all the user saw was mpiexec's banner. Only
the dead rank's parent learns how it died (waitpid) and is not itself killed, so
:func:`start` forks right before MPI_Init: the child goes on to be the rank; the parent
waits for it, says in one line which rank died of which signal, removes the job's MPICH
shared memory (which the dead rank can no longer do), and exits 1, which ends the job.
This lives in psgd's own processes, so it works under a plain ``mpiexec -n 5 psgd run``
as users type it, and under srun, with no wrapper.

The parent stays out of the way otherwise:

- It survives every signal that can be caught, only noting it: hydra and slurmstepd
  deliver signals to each rank's process group (or to every process of the step), so the
  rank still gets SIGTERM/SIGUSR1 exactly once, as before, and the parent lives exactly as
  long as it. A rank that dies of a signal its parent got too was ended by the launcher
  or the user (a job-wide SIGTERM, Ctrl-C), who already know: the parent stays silent.
- If the parent is SIGKILLed itself (hydra's clean-up), the kernel kills the rank too
  (PR_SET_PDEATHSIG), so nothing is orphaned. Then nobody speaks: the rank that died
  first is the one named.
- A rank that ends itself on purpose (the start-up watchdog kills it after saying why,
  MPI_Abort after its line) calls :func:`said_why` first, so the parent stays silent.
- A normal exit passes the rank's exit code through unchanged.

The segments to remove must be known before the rank dies (a dead process has no maps):
the rank tells its parent their names as soon as MPI_Init has made them
(:func:`tell_segments`), and the parent re-reads the rank's maps every POLL_S for any made
later. (Polling alone missed a rank killed within a second of MPI_Init.)
"""

from __future__ import annotations

import ctypes
import os
import select
import signal
import sys

#: the write end of the pipe to the parent, in the rank (None when not supervised)
_channel = None
PR_SET_PDEATHSIG = 1
SAID = b"s\n"
SEGMENT = b"m "  # + a segment's path + newline
#: what the parent survives: each of these reaches the rank itself (module docstring)
SURVIVED = (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGUSR1,
           signal.SIGUSR2, signal.SIGPIPE, signal.SIGALRM, signal.SIGXCPU)
#: how often the parent re-reads which shared-memory segments its rank has mapped
POLL_S = 1.0


def supported() -> bool:
    """Linux (prctl, /proc) with a process launcher above us (a singleton run has no peers)."""
    from .startup import rank_from_env

    return sys.platform.startswith("linux") and hasattr(os, "fork") and rank_from_env() != "?"


def start(rank: int, n_servers: int = 1, out_dir: str | None = None) -> None:
    """Fork: the child returns and becomes the rank; the parent supervises it and exits.

    ``rank`` (as the launcher told it) and ``n_servers`` give the parent the rank's role
    (servers come first); ``out_dir`` lets its line say which checkpoint survives. Call
    before MPI_Init (forking an MPI process is not allowed) and only where
    :func:`supported`.
    """
    global _channel
    read, write = os.pipe()
    for stream in (sys.stdout, sys.stderr):  # else the buffered text would be written twice
        stream.flush()
    parent = os.getpid()
    child = os.fork()
    if child == 0:
        os.close(read)
        _die_with(parent)
        _channel = write
        return
    os.close(write)
    code = 1
    try:
        code = _supervise(child, read, rank, n_servers, out_dir)
    finally:
        os._exit(code)  # never run the rank's code (or its atexit handlers) here


def said_why() -> None:
    """The rank is about to end itself after printing why: its parent must not add a line."""
    _tell(SAID)


def tell_segments() -> None:
    """The rank's MPICH shared-memory segments, for its parent to remove if the rank dies:
    call right after MPI_Init."""
    from .launch import own_shm_segments

    _tell(b"".join(SEGMENT + name.encode() + b"\n" for name in own_shm_segments()))


def _tell(message: bytes) -> None:
    if _channel is not None and message:
        try:
            os.write(_channel, message)  # (short writes to a pipe are atomic)
        except OSError:
            pass  # the parent is gone: nobody left to tell


def _die_with(parent: int) -> None:
    """The kernel SIGKILLs this process when its parent dies (it checks the parent, too)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return  # no prctl: the rank then outlives a killed parent, as it did unsupervised
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _supervise(child: int, channel: int, rank: int, n_servers: int, out_dir) -> int:
    from .launch import own_shm_segments, remove_segments

    delivered = set()  # signals sent to the parent too: the whole group's, not a kill
    for sig in SURVIVED:
        signal.signal(sig, lambda signum, frame: delivered.add(signum))
    os.set_blocking(channel, False)  # a grandchild (the watchdog) may hold its write end
    try:
        pidfd = os.pidfd_open(child)
    except (AttributeError, OSError):
        pidfd = None  # an old kernel: poll instead
    said, segments, pending = False, [], b""

    def note(names):
        segments.extend(s for s in names if s not in segments)

    while True:
        watch = [channel] + ([pidfd] if pidfd is not None else [])
        ready, _, _ = select.select(watch, [], [], POLL_S if pidfd is not None else 0.2)
        if channel in ready:
            pending, told_said, told = _read(channel, pending)
            said = said or told_said
            note(told)
        pid, status = os.waitpid(child, os.WNOHANG)
        if pid:
            break
        # the names must be read while the rank lives: a dead process has no maps
        note(own_shm_segments(child))
    _, told_said, told = _read(channel, pending)
    said = said or told_said
    note(told)
    if not os.WIFSIGNALED(status):
        return os.waitstatus_to_exitcode(status)
    remove_segments(segments)
    if not said and os.WTERMSIG(status) not in delivered:
        print(killed_line(rank, n_servers, child, os.WTERMSIG(status), out_dir),
              file=sys.stderr, flush=True)
    return 1


def _read(channel: int, pending: bytes):
    """What the pipe holds now, after ``pending`` (an unfinished line from the last read):
    (the new unfinished line, whether the rank said why it is ending, segment names)."""
    data = pending
    try:
        while chunk := os.read(channel, 4096):
            data += chunk
    except BlockingIOError:
        pass  # nothing more for now
    *lines, rest = data.split(b"\n")
    said = any(line + b"\n" == SAID for line in lines)
    names = [line[len(SEGMENT):].decode(errors="replace") for line in lines
             if line.startswith(SEGMENT)]
    return rest, said, names


def killed_line(rank: int, n_servers: int, pid: int, signum: int, out_dir=None) -> str:
    """The one line: which rank (role, pid) died of which signal, and what survives."""
    role = f"server {rank}" if rank < n_servers else f"worker {rank - n_servers}"
    if n_servers == 1 and rank == 0:
        role = "server"
    try:
        name = signal.Signals(signum).name
    except ValueError:
        name = "unknown signal"
    line = (f"psgd: error: {role} (rank {rank}, pid {pid}) was killed by signal {signum} "
            f"({name}); ending the job")
    step = _latest_checkpoint(out_dir)
    if step is not None:
        line += f"; the checkpoint at step {step} in {out_dir} is kept (--resume continues from it)"
    return line


def _latest_checkpoint(out_dir):
    if not out_dir:
        return None
    from . import checkpoint

    try:
        return checkpoint.latest(out_dir)
    except Exception:  # noqa: BLE001 - the line must be printed whatever the directory holds
        return None
