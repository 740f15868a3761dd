"""A whole psgd job in one process: the real Server and Worker loops over in-process links.

No MPI: messages are byte buffers moved between the links, and a seeded scheduler decides
when each one arrives, so the server's scheduling (the SSP gate, batching, the checkpoint
quiesce, shutdown) can be driven through any arrival order, reproducibly. Everything
else is the code ``psgd run`` runs: the same envelope, codecs, steps and checkpoints.

    job = InProcessJob(ctx, out_dir, seed=3, speeds=[1.0, 0.2, 1.0])
    status = job.run()             # "max_iterations" | "converged" | "interrupted"
    job.server.state.x             # the final model
"""

from __future__ import annotations

import io
import os
from collections import deque

import numpy as np

from . import checkpoint, wire
from .metrics import Metrics


class _ServerLink:
    """The server's side: what the scheduler delivers is what ``completed`` reports."""

    def __init__(self, job, up_nbytes, down_nbytes):
        self.job = job
        self.n = job.n
        self.recv_bufs = [np.empty(up_nbytes, np.uint8) for _ in range(self.n)]
        self.send_bufs = [np.empty(down_nbytes, np.uint8) for _ in range(self.n)]
        self.shared = np.empty(down_nbytes, np.uint8)
        self.nbytes = [0] * self.n
        self.posted = [False] * self.n

    def name(self, j):
        return f"worker {j} (in-process)"

    def post_recv(self, j):
        self.posted[j] = True

    def completed(self):
        return self.job.advance()

    def received(self, j):
        return self.recv_bufs[j], self.nbytes[j]

    def send_buffer(self, j):
        return self.send_bufs[j]

    def send(self, j, nbytes):
        self.job.to_worker[j].append(self.send_bufs[j][:nbytes].copy())

    def shared_buffer(self):
        return self.shared

    def send_shared(self, j, nbytes):
        self.job.to_worker[j].append(self.shared[:nbytes].copy())

    def close(self):
        pass


class _WorkerLink:
    def __init__(self, job, j, up_nbytes):
        self.job, self.j = job, j
        self.send_buf = np.empty(up_nbytes, np.uint8)
        self.posted = False

    def post_recv(self):
        self.posted = True

    def send_buffer(self):
        return self.send_buf

    def send(self, nbytes):
        self.job.to_server[self.j].append(self.send_buf[:nbytes].copy())

    def close(self):
        pass


class InProcessJob:
    """One server and ``ctx.n`` workers in this process.

    ``speeds[j]`` is the probability that worker j acts on its next server message in a
    scheduling round (1 = always; a small value makes a straggler); ``deliver`` is the
    probability that a waiting worker message reaches the server in a round.
    """

    def __init__(self, ctx, out_dir, *, seed=0, speeds=None, deliver=0.7, resume_step=None,
                 stop_after=None):
        from .server.loop import Server
        from .workers.loop import Worker

        self.n = ctx.n
        self.rng = np.random.default_rng(seed)
        self.speeds = np.ones(self.n) if speeds is None else np.asarray(speeds, dtype=float)
        self.deliver = deliver
        self.to_worker = [deque() for _ in range(self.n)]
        self.to_server = [deque() for _ in range(self.n)]
        self.stopped = [False] * self.n
        self.stop_requests = []
        self.stop_after = stop_after  # request a stop (as SIGTERM would) at this step
        self.applied = []             # (server step, worker, version) of every applied message
        up = wire.HEADER_NBYTES + ctx.uplink.max_nbytes()
        down = wire.HEADER_NBYTES + ctx.downlink.max_nbytes()
        self.log = io.StringIO()
        metrics = Metrics(ctx, out_dir, stream=self.log, resume=resume_step is not None)
        self.server = Server(_ServerLink(self, up, down), ctx, metrics, self.stop_requests)
        self.workers = [Worker(_WorkerLink(self, j, up), ctx, j) for j in range(self.n)]
        for w in self.workers:  # as Worker.run does first
            w.link.post_recv()
        self.grad_version = {}  # worker -> the model version of its latest delivered gradient
        self._watch_applies(ctx)
        self.resume_step = resume_step
        if resume_step is not None:
            for w in self.workers:
                w.restore(resume_step)
            saved = checkpoint.load_arrays(
                os.path.join(checkpoint.step_dir(out_dir, resume_step), "server.npz"))
            for j, v in zip(saved["queued_workers"], saved["queued_versions"]):
                self.grad_version[int(j)] = int(v)  # gradients queued at the cut

    def _watch_applies(self, ctx):
        """Record the staleness of every applied message independently of the server's count."""
        apply = ctx.alg.server_apply

        def recorded(ss, batch, prox):
            for msg in batch:
                self.applied.append((ss.step, msg.worker, self.grad_version[msg.worker]))
            return apply(ss, batch, prox)

        ctx.alg.server_apply = recorded  # this job's own algorithm object: the runs never share it

    def run(self):
        status = self.server.run(self.resume_step)
        self.server.metrics.close()
        return status

    def advance(self):
        """One scheduling round; return the workers whose message reached the server."""
        if self.stop_after is not None and self.server.state.step >= self.stop_after \
                and not self.stop_requests:
            self.stop_requests.append("stop")
        for j in self.rng.permutation(self.n):
            w = self.workers[j]
            if self.to_worker[j] and w.link.posted and self.rng.random() < self.speeds[j]:
                w.link.posted = False
                msg = self.to_worker[j].popleft()
                if not w.handle(msg, msg.size):
                    w._send(wire.BYE, 0)
                    self.stopped[j] = True
        link = self.server.link
        done = []
        for j in self.rng.permutation(self.n):
            if link.posted[j] and self.to_server[j] and self.rng.random() < self.deliver:
                msg = self.to_server[j].popleft()
                link.recv_bufs[j][:msg.size] = msg
                link.nbytes[j] = msg.size
                link.posted[j] = False
                header, _ = wire.parse(msg, msg.size, sender="test")
                if header.kind == wire.GRAD:
                    self.grad_version[j] = header.version
                done.append(int(j))
        return done
