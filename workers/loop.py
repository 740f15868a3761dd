"""The worker process (ranks 1..n): local data, gradients, compression, send/receive.

Loop: receive a model (or STOP) -> gradient of f_i at it -> the algorithm's vector
-> encode -> Isend one uint8 buffer. The receive for the next model is posted
before the gradient is computed so the server's send completes without buffering.
On STOP the worker answers BYE, completes every request and returns.
"""

from __future__ import annotations

import os
import time

import numpy as np
from mpi4py import MPI

from psgd import checkpoint, wire
from psgd.comm import SERVER, TAG_DOWN, TAG_UP, wait
from psgd.errors import RunError, WireFormatError


class Worker:
    def __init__(self, comm, ctx, index: int):
        self.comm = comm
        self.ctx = ctx
        self.j = index
        self.d = ctx.d
        self.objective = ctx.ps.local(index)
        self.state = ctx.alg.worker_init(self.d)
        self.rng, self.batch_rng = ctx.worker_rngs(index)
        self.delay = float(ctx.cfg["run"]["worker_delay"].get(index, 0.0))
        self.batch_size = ctx.cfg["algorithm"]["batch_size"]
        self.recv_buf = np.empty(wire.HEADER_NBYTES + ctx.downlink.max_nbytes(self.d), np.uint8)
        self.send_buf = np.empty(wire.HEADER_NBYTES + ctx.compressor.max_nbytes(self.d), np.uint8)
        self.send_req = MPI.REQUEST_NULL
        self.x = ctx.x0.astype(np.float64).copy()  # the model as this worker knows it
        self.seq_in = 0
        self.seq_out = 0
        # A held-back fast worker may legitimately wait for the slowest one, and the
        # first model waits for the server's setup (f* to high accuracy): be generous.
        self.deadline = 2 * ctx.cfg["run"]["timeout_s"] + 30
        self.first_deadline = max(self.deadline, 600.0)

    def run(self):
        status = MPI.Status()
        req = self._post_recv()
        deadline = self.first_deadline
        while True:
            wait(req, deadline, f"a message from the server (worker {self.j})", status)
            deadline = self.deadline
            header, payload = self._parse(status)
            if header.kind == wire.STOP:
                break
            if header.kind == wire.CKPT:
                self._checkpoint(header.version)
                req = self._post_recv()
                continue
            self._apply_model(payload)
            req = self._post_recv()
            self._send_gradient(header.version)
        self._send(wire.BYE, 0, b"")
        wait(self.send_req, self.deadline, f"the goodbye of worker {self.j}")

    # -- receiving -------------------------------------------------------------------

    def _post_recv(self):
        return self.comm.Irecv([self.recv_buf, MPI.BYTE], source=SERVER, tag=TAG_DOWN)

    def _parse(self, status):
        nbytes = status.Get_count(MPI.BYTE)
        try:
            header, payload = wire.parse(self.recv_buf, nbytes, sender="the server")
            if header.kind not in (wire.MODEL, wire.STOP, wire.CKPT) or header.worker != self.j \
                    or header.seq != self.seq_in:
                raise WireFormatError(f"unexpected {wire.KIND_NAMES[header.kind]} message "
                                      f"(worker {header.worker}, seq {header.seq}; expected "
                                      f"worker {self.j}, seq {self.seq_in})")
        except WireFormatError as exc:
            raise RunError(f"worker {self.j}: bad message from the server: {exc}") from None
        if header.kind != wire.CKPT:  # checkpoint control does not advance the sequence
            self.seq_in += 1
        return header, payload

    def _apply_model(self, payload):
        down = self.ctx.downlink
        if self.ctx.downlink_is_identity:
            self.x = down.decode(payload, d=self.d)
        else:
            down.decode_add(payload, self.x, self.ctx.downlink_scale)

    # -- checkpoints -----------------------------------------------------------------

    def _state_path(self, step):
        return os.path.join(checkpoint.step_dir(self.ctx.cfg["output"]["dir"], step),
                            f"worker-{self.j}.npz")

    def _checkpoint(self, step):
        """Write this worker's state for the server's checkpoint ``step``, then ACK."""
        try:
            checkpoint.save_arrays(self._state_path(step), {
                "memory": self.state.memory, "x": self.x,
                "seq": np.array([self.seq_in, self.seq_out]),
                "rng": checkpoint.rng_state(self.rng), "batch_rng": checkpoint.rng_state(self.batch_rng)})
        except OSError as exc:
            raise checkpoint.write_error(self.ctx.cfg["output"]["dir"], step, exc,
                                         f"worker {self.j}: ") from None
        wait(self.send_req, self.deadline, f"the previous send of worker {self.j}")
        n = wire.pack_into(self.send_buf, wire.ACK, self.j, step, self.seq_out, b"")
        self.send_req = self.comm.Isend([self.send_buf[:n], MPI.BYTE], dest=SERVER, tag=TAG_UP)

    def restore(self, step):
        a = checkpoint.load_arrays(self._state_path(step))
        if "memory" in a:
            self.state.memory = a["memory"]
        self.x = a["x"]
        self.seq_in, self.seq_out = (int(v) for v in a["seq"])
        checkpoint.set_rng_state(self.rng, a["rng"])
        checkpoint.set_rng_state(self.batch_rng, a["batch_rng"])

    # -- sending ---------------------------------------------------------------------

    def _send_gradient(self, version):
        ctx = self.ctx
        if self.delay:
            time.sleep(self.delay)
        if self.batch_size is None:
            g = self.objective.grad(self.x)
        else:
            g = self.objective.stochastic_grad(self.x, self.batch_size, self.batch_rng)
        if not np.all(np.isfinite(g)):
            raise RunError(f"worker {self.j}: the gradient at its step {self.seq_out} "
                           f"(model version {version}) contains NaN or Inf")
        v = ctx.alg.worker_vector(self.state, g)
        key = ctx.shared_key(self.j, self.seq_out)
        wait(self.send_req, self.deadline, f"the previous send of worker {self.j}")
        body = self.send_buf[wire.HEADER_NBYTES:]
        if ctx.alg.memory is None:  # no memory to update: encode in place, no decode
            n = ctx.compressor.encode_into(v, self.rng, body, key=key)
        else:
            buf, y = ctx.compressor.encode_decode(v, self.rng, key=key)
            if ctx.hyper.message_scale != 1.0:
                y *= ctx.hyper.message_scale
            ctx.alg.worker_update(self.state, v, y)
            n = buf.size
            body[:n] = buf
        self._isend(wire.pack_header(self.send_buf, wire.GRAD, self.j, version, self.seq_out, n))

    def _send(self, kind, version, payload):
        wait(self.send_req, self.deadline, f"the previous send of worker {self.j}")
        self._isend(wire.pack_into(self.send_buf, kind, self.j, version, self.seq_out, payload))

    def _isend(self, n):
        self.send_req = self.comm.Isend([self.send_buf[:n], MPI.BYTE], dest=SERVER, tag=TAG_UP)
        self.seq_out += 1
