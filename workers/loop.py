"""The worker process: local data, gradients, compression, send/receive.

Loop: receive a model (or STOP) -> gradient of f_i at it -> :func:`psgd.steps.worker_step`
(the algorithm's vector, encoded into the send buffer) -> send. The receive for the next
model is posted before the gradient is computed so the server's send completes without
buffering. On STOP the worker answers BYE, completes every request and returns.
"""

from __future__ import annotations

import os
import time

import numpy as np

from psgd import checkpoint, steps, wire
from psgd.errors import RunError, WireFormatError


class Worker:
    def __init__(self, link, ctx, index: int):
        self.link = link
        self.ctx = ctx
        self.j = index
        self.d = ctx.d
        self.objective = ctx.ps.local(index)
        self.state = ctx.alg.worker_init(self.d)
        self.rng, self.batch_rng = ctx.streams.worker(index)
        self.delay = float(ctx.cfg["run"]["worker_delay"].get(index, 0.0))
        self.batch_size = ctx.cfg["algorithm"]["batch_size"]
        self.x = ctx.x0.astype(np.float64).copy()  # the model as this worker knows it
        self.seq_in = 0
        self.seq_out = 0
        self.deadline = self.reply_deadline(ctx.cfg)
        self.first_deadline = max(self.deadline, 600.0)

    @staticmethod
    def reply_deadline(cfg) -> float:
        """How long a worker waits for the server. A held-back fast worker may legitimately
        wait for the slowest one, and the first model waits for the server's setup (f* to
        high accuracy): be generous."""
        return 2 * cfg["run"]["timeout_s"] + 30

    def run(self):
        self.link.post_recv()
        deadline = self.first_deadline
        while self.handle(*self.link.wait_recv(deadline)):
            deadline = self.deadline
        self._send(wire.BYE, 0)
        self.link.close()

    def handle(self, buf, nbytes) -> bool:
        """Act on one message from the server; False once it said STOP."""
        header, payload = self._parse(buf, nbytes)
        if header.kind == wire.STOP:
            return False
        if header.kind == wire.CKPT:
            self._checkpoint(header.version)
            self.link.post_recv()
            return True
        try:
            self.x = self.ctx.downlink.apply(payload, self.x)
        except WireFormatError as exc:
            raise RunError(f"worker {self.j}: bad model message from the server: {exc}") from None
        self.link.post_recv()
        self._send_gradient(header.version)
        return True

    # -- receiving -------------------------------------------------------------------

    def _parse(self, buf, nbytes):
        try:
            header, payload = wire.parse(buf, nbytes, sender="the server")
            to_me = header.worker == self.j or (header.kind == wire.MODEL
                                                and header.worker == wire.BROADCAST)
            if header.kind not in (wire.MODEL, wire.STOP, wire.CKPT) or not to_me \
                    or header.seq != self.seq_in:
                raise WireFormatError(f"unexpected {wire.KIND_NAMES[header.kind]} message "
                                      f"(worker {header.worker}, seq {header.seq}; expected "
                                      f"worker {self.j}, seq {self.seq_in})")
        except WireFormatError as exc:
            raise RunError(f"worker {self.j}: bad message from the server: {exc}") from None
        if header.kind != wire.CKPT:  # checkpoint control does not advance the sequence
            self.seq_in += 1
        return header, payload

    # -- checkpoints -----------------------------------------------------------------

    def _state_path(self, step):
        return os.path.join(checkpoint.step_dir(self.ctx.cfg["output"]["dir"], step),
                            f"worker-{self.j}.npz")

    def _checkpoint(self, step):
        """Write this worker's state for the server's checkpoint ``step``, then ACK."""
        try:
            checkpoint.save_arrays(self._state_path(step), {
                **checkpoint.state_arrays(self.state, "alg."), "x": self.x,
                "seq": np.array([self.seq_in, self.seq_out]),
                "rng": checkpoint.rng_state(self.rng),
                "batch_rng": checkpoint.rng_state(self.batch_rng)})
        except OSError as exc:
            raise checkpoint.write_error(self.ctx.cfg["output"]["dir"], step, exc,
                                         f"worker {self.j}: ") from None
        self._send(wire.ACK, step, advance=False)

    def restore(self, step):
        a = checkpoint.load_arrays(self._state_path(step))
        checkpoint.restore_state(self.state, a, "alg.")
        self.x = a["x"]
        self.seq_in, self.seq_out = (int(v) for v in a["seq"])
        checkpoint.set_rng_state(self.rng, a["rng"])
        checkpoint.set_rng_state(self.batch_rng, a["batch_rng"])

    # -- sending ---------------------------------------------------------------------

    def _send_gradient(self, version):
        if self.delay:
            time.sleep(self.delay)
        if self.batch_size is None:
            g = self.objective.grad(self.x)
        else:
            g = self.objective.stochastic_grad(self.x, self.batch_size, self.batch_rng)
        if not np.all(np.isfinite(g)):
            raise RunError(f"worker {self.j}: the gradient at its step {self.seq_out} "
                           f"(model version {version}) contains NaN or Inf")
        buf = self.link.send_buffer()
        n = steps.worker_step(self.ctx.alg, self.ctx.uplink, self.state, g, self.j, self.seq_out,
                              self.rng, buf[wire.HEADER_NBYTES:])
        self.link.send(wire.pack_header(buf, wire.GRAD, self.j, version, self.seq_out, n))
        self.seq_out += 1

    def _send(self, kind, version, advance=True):
        buf = self.link.send_buffer()
        self.link.send(wire.pack_into(buf, kind, self.j, version, self.seq_out, b""))
        if advance:  # a checkpoint ACK does not advance the sequence
            self.seq_out += 1
