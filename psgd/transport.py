"""Who talks to whom: the rank/role map and the MPI links of servers and workers.

:class:`Roles` is the one place that knows which ranks serve and which work; nothing else
does rank arithmetic. The links own the MPI requests and buffers (uppercase buffer API,
preallocated, never pickle) and the polite waiting of :mod:`psgd.comm`; the server and
worker loops see only "post a receive", "what has arrived", "send these bytes". A link
with the same methods and no MPI drives the server in-process in the tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import RunError

TAG_UP = 11     # worker -> server (GRAD, BYE, ACK)
TAG_DOWN = 12   # server -> worker (MODEL, STOP, CKPT)


@dataclass(frozen=True)
class Roles:
    """Which ranks are servers and which are workers (workers are numbered 0..n-1)."""

    servers: tuple
    workers: tuple

    @classmethod
    def layout(cls, size: int, n_servers: int = 1) -> "Roles":
        """Servers on the first ``n_servers`` ranks, workers on the rest."""
        return cls(tuple(range(n_servers)), tuple(range(n_servers, size)))

    @property
    def n_workers(self) -> int:
        return len(self.workers)

    def worker_rank(self, j: int) -> int:
        return self.workers[j]

    def server_rank(self, s: int = 0) -> int:
        return self.servers[s]

    def of(self, rank: int):
        """("server", s) or ("worker", j) for ``rank``."""
        if rank in self.servers:
            return "server", self.servers.index(rank)
        return "worker", self.workers.index(rank)

    def worker_name(self, j: int) -> str:
        return f"worker {j} (rank {self.workers[j]})"

    def name(self, rank: int) -> str:
        role, i = self.of(rank)
        return f"server {i}" if role == "server" and len(self.servers) > 1 else (
            "server" if role == "server" else f"worker {i}")


class ServerLink:
    """The server's side: one posted receive per worker, one send buffer per worker."""

    def __init__(self, comm, roles: Roles, up_nbytes: int, down_nbytes: int, timeout_s: float):
        from mpi4py import MPI

        self._MPI = MPI
        self.comm = comm
        self.roles = roles
        self.n = roles.n_workers
        self.up_nbytes = up_nbytes
        self.timeout = timeout_s
        self.recv_bufs = [np.empty(up_nbytes, np.uint8) for _ in range(self.n)]
        self.send_bufs = [np.empty(down_nbytes, np.uint8) for _ in range(self.n)]
        self.recv_reqs = [MPI.REQUEST_NULL] * self.n
        self.send_reqs = [MPI.REQUEST_NULL] * self.n
        self.statuses = [MPI.Status() for _ in range(self.n)]

    def name(self, j: int) -> str:
        return self.roles.worker_name(j)

    def post_recv(self, j: int) -> None:
        self.recv_reqs[j] = self.comm.Irecv([self.recv_bufs[j], self._MPI.BYTE],
                                            source=self.roles.worker_rank(j), tag=TAG_UP)

    def completed(self) -> list:
        """Workers whose posted receive has completed (their bytes: :meth:`received`)."""
        MPI = self._MPI
        done = []
        for j, req in enumerate(self.recv_reqs):
            if req == MPI.REQUEST_NULL:
                continue
            try:
                if req.Test(self.statuses[j]):
                    done.append(j)
            except MPI.Exception as exc:  # e.g. MPI_ERR_TRUNCATE: longer than any valid message
                raise RunError(f"bad message from {self.name(j)}: MPI could not receive it into "
                               f"the {self.up_nbytes}-byte buffer that holds the largest valid "
                               f"message ({exc.Get_error_string().splitlines()[0]})") from None
        return done

    def received(self, j: int):
        """(buffer, nbytes) of worker j's completed receive."""
        return self.recv_bufs[j], self.statuses[j].Get_count(self._MPI.BYTE)

    def send_buffer(self, j: int) -> np.ndarray:
        """Worker j's send buffer, once its previous send has completed."""
        from .comm import wait

        wait(self.send_reqs[j], self.timeout, f"the send to {self.name(j)}")
        return self.send_bufs[j]

    def send(self, j: int, nbytes: int) -> None:
        self.send_reqs[j] = self.comm.Isend([self.send_bufs[j][:nbytes], self._MPI.BYTE],
                                            dest=self.roles.worker_rank(j), tag=TAG_DOWN)

    def close(self) -> None:
        """Complete every send and cancel every receive still posted."""
        from .comm import cancel_all, wait

        for j in range(self.n):
            wait(self.send_reqs[j], self.timeout, f"the last send to {self.name(j)}")
        cancel_all(self.recv_reqs)


class WorkerLink:
    """A worker's side: one receive buffer from its server, one send buffer to it."""

    def __init__(self, comm, roles: Roles, j: int, up_nbytes: int, down_nbytes: int,
                 deadline_s: float):
        from mpi4py import MPI

        self._MPI = MPI
        self.comm = comm
        self.j = j
        self.server = roles.server_rank()
        self.deadline = deadline_s
        self.recv_buf = np.empty(down_nbytes, np.uint8)
        self.send_buf = np.empty(up_nbytes, np.uint8)
        self.send_req = MPI.REQUEST_NULL
        self.recv_req = MPI.REQUEST_NULL
        self.status = MPI.Status()

    def post_recv(self) -> None:
        self.recv_req = self.comm.Irecv([self.recv_buf, self._MPI.BYTE], source=self.server,
                                        tag=TAG_DOWN)

    def wait_recv(self, deadline_s: float):
        """(buffer, nbytes) of the posted receive, or RunError after ``deadline_s``."""
        from .comm import wait

        try:
            wait(self.recv_req, deadline_s, f"a message from the server (worker {self.j})",
                 self.status)
        except self._MPI.Exception as exc:  # MPI_ERR_TRUNCATE: longer than any valid message
            raise RunError(f"worker {self.j}: bad message from the server (rank {self.server}): "
                           f"MPI could not receive it into the {self.recv_buf.size}-byte buffer "
                           f"that holds the largest valid message "
                           f"({exc.Get_error_string().splitlines()[0]})") from None
        return self.recv_buf, self.status.Get_count(self._MPI.BYTE)

    def send_buffer(self) -> np.ndarray:
        from .comm import wait

        wait(self.send_req, self.deadline, f"the previous send of worker {self.j}")
        return self.send_buf

    def send(self, nbytes: int) -> None:
        self.send_req = self.comm.Isend([self.send_buf[:nbytes], self._MPI.BYTE],
                                        dest=self.server, tag=TAG_UP)

    def close(self) -> None:
        from .comm import wait

        wait(self.send_req, self.deadline, f"the goodbye of worker {self.j}")
