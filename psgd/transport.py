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
TAG_PEER = 13   # server <-> server (GATHER, SHARD, END, TALLY)


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
    """The server's side: one posted receive per worker, a send buffer per worker, and
    (synchronous runs) one shared buffer whose same bytes go to every worker."""

    def __init__(self, comm, roles: Roles, up_nbytes: int, down_nbytes: int, timeout_s: float,
                 shared_nbytes: int = 0):
        from mpi4py import MPI

        self._MPI = MPI
        self.comm = comm
        self.roles = roles
        self.n = roles.n_workers
        self.up_nbytes = up_nbytes
        self.timeout = timeout_s
        self.recv_bufs = [np.empty(up_nbytes, np.uint8) for _ in range(self.n)]
        self.send_bufs = [np.empty(down_nbytes, np.uint8) for _ in range(self.n)]
        self.shared = np.empty(shared_nbytes, np.uint8)
        self.recv_reqs = [MPI.REQUEST_NULL] * self.n
        self.send_reqs = [MPI.REQUEST_NULL] * self.n
        self.shared_reqs = [MPI.REQUEST_NULL] * self.n
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
        """Worker j's send buffer, once its previous sends have completed."""
        from .comm import wait

        wait(self.send_reqs[j], self.timeout, f"the send to {self.name(j)}")
        wait(self.shared_reqs[j], self.timeout, f"the send to {self.name(j)}")  # keep order
        return self.send_bufs[j]

    def send(self, j: int, nbytes: int) -> None:
        self.send_reqs[j] = self.comm.Isend([self.send_bufs[j][:nbytes], self._MPI.BYTE],
                                            dest=self.roles.worker_rank(j), tag=TAG_DOWN)

    def shared_buffer(self) -> np.ndarray:
        """The shared buffer, once every send of its previous contents has completed."""
        from .comm import wait

        for j in range(self.n):
            wait(self.shared_reqs[j], self.timeout, f"the model send to {self.name(j)}")
            wait(self.send_reqs[j], self.timeout, f"the send to {self.name(j)}")  # keep order
        return self.shared

    def send_shared(self, j: int, nbytes: int) -> None:
        """Send the shared buffer's first ``nbytes`` to worker j (the same bytes for all)."""
        self.shared_reqs[j] = self.comm.Isend([self.shared[:nbytes], self._MPI.BYTE],
                                              dest=self.roles.worker_rank(j), tag=TAG_DOWN)

    def close(self) -> None:
        """Complete every send and cancel every receive still posted."""
        from .comm import cancel_all, wait

        for j in range(self.n):
            wait(self.send_reqs[j], self.timeout, f"the last send to {self.name(j)}")
            wait(self.shared_reqs[j], self.timeout, f"the last send to {self.name(j)}")
        cancel_all(self.recv_reqs)


class WorkerLink:
    """A worker's side: one receive buffer from its server, one send buffer to it."""

    def __init__(self, comm, roles: Roles, j: int, up_nbytes: int, down_nbytes: int,
                 deadline_s: float, server: int = 0):
        from mpi4py import MPI

        self._MPI = MPI
        self.comm = comm
        self.j = j
        self.server = roles.server_rank(server)
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

    def test(self) -> bool:
        """Whether the posted receive has completed (its bytes: :meth:`received`)."""
        return self.recv_req.Test(self.status)

    def received(self):
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


class PeerLink:
    """Server-to-server messages of a sharded run: the coordinator (server 0) talks to
    every other server, each other server only to the coordinator."""

    def __init__(self, comm, roles: Roles, me: int, max_nbytes: int, timeout_s: float):
        from mpi4py import MPI

        self._MPI = MPI
        self.comm = comm
        self.roles = roles
        self.timeout = timeout_s
        others = [s for s in range(len(roles.servers)) if s != me]
        self.peers = others if me == 0 else [0]
        self.recv = {s: np.empty(max_nbytes, np.uint8) for s in self.peers}
        self.reqs = {s: MPI.REQUEST_NULL for s in self.peers}
        self.status = {s: MPI.Status() for s in self.peers}
        self.send_buf = np.empty(max_nbytes, np.uint8)
        for s in self.peers:
            self._post(s)

    def _post(self, s):
        self.reqs[s] = self.comm.Irecv([self.recv[s], self._MPI.BYTE],
                                       source=self.roles.server_rank(s), tag=TAG_PEER)

    def send(self, s: int, kind: int, version: int, payload) -> None:
        """Send one message to server s and wait until its buffer is free again."""
        from . import wire
        from .comm import wait

        n = wire.pack_into(self.send_buf, kind, s, version, 0, payload)
        req = self.comm.Isend([self.send_buf[:n], self._MPI.BYTE],
                              dest=self.roles.server_rank(s), tag=TAG_PEER)
        wait(req, self.timeout, f"the message to server {s}")

    def poll(self) -> list:
        """[(server, header, payload copy)] of every message that has arrived."""
        from . import wire

        out = []
        for s in self.peers:
            if self.reqs[s].Test(self.status[s]):
                nbytes = self.status[s].Get_count(self._MPI.BYTE)
                try:
                    header, payload = wire.parse(self.recv[s], nbytes, sender=f"server {s}")
                except Exception as exc:
                    raise RunError(f"bad message from server {s}: {exc}") from None
                out.append((s, header, payload.copy()))
                self._post(s)
        return out

    def close(self) -> None:
        from .comm import cancel_all

        cancel_all(list(self.reqs.values()))
