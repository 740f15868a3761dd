"""Polite waiting on MPI requests, shared by the links of the server and the workers.

Every wait here polls with ``Test`` and sleeps with a growing back-off instead of
blocking in MPI. On an oversubscribed node (5 ranks on 2 cores is the quick start)
a blocking MPICH wait spins a whole core and starves the ranks doing real work.
Every wait also has a deadline, so nothing can hang.
"""

from __future__ import annotations

import time

from .errors import RunError


class Backoff:
    """Spin briefly, then sleep 20 us doubling up to 1 ms (the mpi4py.futures idea)."""

    def __init__(self, spins=50, start=2e-5, cap=1e-3):
        self.spins, self.start, self.cap = spins, start, cap
        self.reset()

    def reset(self):
        self.count = 0
        self.delay = self.start

    def wait(self):
        self.count += 1
        if self.count <= self.spins:
            return
        time.sleep(self.delay)
        self.delay = min(self.delay * 2, self.cap)


def wait(request, deadline_s: float, what: str, status=None) -> None:
    """Wait for one request, or raise RunError naming ``what`` after ``deadline_s`` seconds."""
    backoff = Backoff()
    end = time.monotonic() + deadline_s
    while not request.Test(status):
        if time.monotonic() > end:
            raise RunError(f"timed out after {deadline_s:.0f} s waiting for {what}")
        backoff.wait()


def cancel_all(requests) -> None:
    """Cancel and complete every still-pending request (receives we no longer want)."""
    from mpi4py import MPI

    for req in requests:
        if req is not None and req != MPI.REQUEST_NULL:
            if not req.Test():
                req.Cancel()
                req.Wait()


def allreduce_max(comm, value: int, deadline_s: float, what: str) -> int:
    """A non-blocking MAX all-reduce of one int, waited for politely (setup handshakes)."""
    import numpy as np
    from mpi4py import MPI

    send = np.array([value], dtype=np.int64)
    recv = np.zeros(1, dtype=np.int64)
    wait(comm.Iallreduce(send, recv, op=MPI.MAX), deadline_s, what)
    return int(recv[0])
