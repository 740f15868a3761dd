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
from psgd.compressors.base import all_finite
from psgd.errors import RunError, WireFormatError


SERVER_KINDS = (wire.MODEL, wire.ROUND, wire.STOP, wire.CKPT)


def parse_server_message(buf, nbytes, j: int, seq: int, sender: str, kinds=SERVER_KINDS):
    """(header, payload) of a message from a server to worker j, which expects sequence
    number ``seq``; anything else is a RunError naming the sender."""
    try:
        header, payload = wire.parse(buf, nbytes, sender=sender)
        to_me = header.worker == j or (header.kind in (wire.MODEL, wire.ROUND)
                                       and header.worker == wire.BROADCAST)
        if header.kind not in kinds or not to_me \
                or header.seq != seq:
            raise WireFormatError(f"unexpected {wire.KIND_NAMES[header.kind]} message "
                                  f"(worker {header.worker}, seq {header.seq}; expected "
                                  f"worker {j}, seq {seq})")
    except WireFormatError as exc:
        raise RunError(f"worker {j}: bad message from {sender}: {exc}") from None
    return header, payload


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
        self._grad = np.empty(self.d)  # the reused full gradient (untouched until used)
        # a multi-round compressor's side of each step (None for the others)
        self.rounds = steps.rounds_for(ctx)
        self.downlink = self.rounds or ctx.downlink
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
        if header.kind == wire.ROUND:
            self._answer_round(header.version, payload)
            return True
        try:
            self.x = self.downlink.apply(payload, self.x)
        except WireFormatError as exc:
            raise RunError(f"worker {self.j}: bad model message from the server: {exc}") from None
        self.link.post_recv()
        self._send_gradient(header.version)
        return True

    def _answer_round(self, version, payload):
        """A multi-round compressor's reply within a step: send the next round's message."""
        if self.rounds is None:
            raise RunError(f"worker {self.j}: bad message from the server: a ROUND message, "
                           f"but this run's compressor has one round")
        self.link.post_recv()
        buf = self.link.send_buffer()
        try:
            n = self.rounds.answer(self.state, payload, buf[wire.HEADER_NBYTES:])
        except WireFormatError as exc:
            raise RunError(f"worker {self.j}: bad message from the server: {exc}") from None
        self.link.send(wire.pack_header(buf, wire.GRAD, self.j, version, self.seq_out, n))
        self.seq_out += 1

    # -- receiving -------------------------------------------------------------------

    def _parse(self, buf, nbytes):
        header, payload = parse_server_message(buf, nbytes, self.j, self.seq_in, "the server")
        if header.kind != wire.CKPT:  # checkpoint control does not advance the sequence
            self.seq_in += 1
        return header, payload

    # -- checkpoints -----------------------------------------------------------------

    def _state_path(self, step):
        return os.path.join(checkpoint.step_dir(self.ctx.cfg["output"]["dir"], step),
                            f"worker-{self.j}.npz")

    def _checkpoint(self, step):
        self._write_checkpoint(step, {"seq": np.array([self.seq_in, self.seq_out])})

    def _write_checkpoint(self, step, sequences):
        """Write this worker's state for the server's checkpoint ``step``, then ACK (to
        server 0)."""
        try:
            checkpoint.save_arrays(self._state_path(step), {
                **checkpoint.state_arrays(self.state, "alg."), "x": self.x, **sequences,
                "rng": checkpoint.rng_state(self.rng),
                "batch_rng": checkpoint.rng_state(self.batch_rng)})
        except OSError as exc:
            raise checkpoint.write_error(self.ctx.cfg["output"]["dir"], step, exc,
                                         f"worker {self.j}: ") from None
        self._ack(step)

    def _ack(self, step):
        self._send(wire.ACK, step, advance=False)

    def restore(self, step):
        a = self._read_checkpoint(step)
        self.seq_in, self.seq_out = (int(v) for v in a["seq"])

    def _read_checkpoint(self, step) -> dict:
        a = checkpoint.load_arrays(self._state_path(step))
        checkpoint.restore_state(self.state, a, "alg.")
        self.x = a["x"]
        checkpoint.set_rng_state(self.rng, a["rng"])
        checkpoint.set_rng_state(self.batch_rng, a["batch_rng"])
        return a

    # -- sending ---------------------------------------------------------------------

    def _gradient(self, version):
        if self.delay:
            time.sleep(self.delay)
        with np.errstate(over="ignore", invalid="ignore"):  # reported just below, in one line
            if self.batch_size is None:
                g = self.objective.grad_into(self.x, self._grad)
            else:
                g = self.objective.stochastic_grad(self.x, self.batch_size, self.batch_rng)
        if not all_finite(g):
            raise RunError(f"worker {self.j}: the gradient at its step {self.gradients_sent} "
                           f"(model version {version}) contains NaN or Inf")
        return g

    @property
    def gradients_sent(self) -> int:
        return self.seq_out

    def _send_gradient(self, version):
        g = self._gradient(version)
        buf = self.link.send_buffer()
        if self.rounds is not None:
            n = self.rounds.first(self.state, g, buf[wire.HEADER_NBYTES:])
        else:
            n = steps.worker_step(self.ctx.alg, self.ctx.uplink, self.state, g, self.j,
                                  self.seq_out, self.rng, buf[wire.HEADER_NBYTES:])
        self.link.send(wire.pack_header(buf, wire.GRAD, self.j, version, self.seq_out, n))
        self.seq_out += 1

    def _send(self, kind, version, advance=True):
        buf = self.link.send_buffer()
        self.link.send(wire.pack_into(buf, kind, self.j, version, self.seq_out, b""))
        if advance:  # a checkpoint ACK does not advance the sequence
            self.seq_out += 1


class ShardedWorker(Worker):
    """A worker of a run with S servers (``run.servers``), one per key range.

    It sends each gradient as S messages, one per range, each to that range's server, and
    computes the next gradient once every server has sent its range of the model: the
    model is assembled from the servers' ranges. Per server, the exchange is the S = 1
    protocol (its own sequence numbers, versions, STOP and BYE).
    """

    def __init__(self, links, ctx, index: int):
        super().__init__(links[0], ctx, index)
        self.links = links
        self.ranges = [slice(sh.lo, sh.hi) for sh in ctx.shards]
        self.seq_in = [0] * len(links)
        self.seq_out = [0] * len(links)
        # each server's arrived range, kept until the others' come: one reused buffer per
        # server (a fresh copy a step costs its page zeroing at d = 10^7)
        self._holds = [np.empty(link.recv_buf.size, np.uint8) for link in links]

    @property
    def gradients_sent(self) -> int:
        return self.seq_out[0]

    def run(self):
        from psgd.comm import Backoff

        for link in self.links:
            link.post_recv()
        everyone = set(range(len(self.links)))
        # the ranges of the next model, applied only once all have arrived: until then this
        # worker's state is the one after its last gradient, the state a checkpoint saves.
        # (Each arrived range is copied out so that its link can receive again: a server
        # may send STOP before the others' ranges come.)
        live, arrived = set(everyone), {}
        # asynchronous: a checkpoint freezes this worker until GO (server 0's), so that its
        # round is the one its file saves while the servers write theirs
        frozen = False
        deadline, since, backoff = self.first_deadline, time.monotonic(), Backoff()
        while live:
            new = [s for s in sorted(live) if self.links[s].test()]
            if not new:
                if time.monotonic() - since > deadline:
                    raise RunError(f"worker {self.j}: timed out after {deadline:.0f} s waiting "
                                   f"for servers {sorted(live - arrived.keys())}")
                backoff.wait()
                continue
            backoff.reset()
            since, deadline = time.monotonic(), self.deadline
            for s in new:
                header, payload = self._parse_from(s, *self.links[s].received())
                if header.kind == wire.STOP:
                    live.discard(s)
                    arrived.clear()  # the run is over: no model will be completed
                    self._send_to(s, wire.BYE, 0)
                    continue  # (that server sends nothing more)
                if header.kind == wire.CKPT:
                    self._checkpoint_sharded(header.version, arrived)
                    frozen = not self.ctx.alg.synchronous
                elif header.kind == wire.GO:
                    frozen = False
                elif live == everyone:
                    held = self._holds[s][:payload.size]
                    np.copyto(held, payload)
                    arrived[s] = (header.version, held)
                # (a model after another server's STOP is dropped)
                self.links[s].post_recv()
            if live == everyone and arrived.keys() == everyone and not frozen:
                for r, (_, payload) in arrived.items():
                    try:
                        self.ctx.downlinks[r].apply(payload, self.x[self.ranges[r]])
                    except WireFormatError as exc:
                        raise RunError(f"worker {self.j}: bad model message from server {r}: "
                                       f"{exc}") from None
                versions = {r: v for r, (v, _) in arrived.items()}
                arrived = {}
                self._send_gradients(versions)
        for link in self.links:
            link.close()

    def _checkpoint_sharded(self, step, arrived):
        """This worker's file of a sharded checkpoint: the state after its last gradient
        (the ranges that have arrived since are not applied; their servers send them again
        on resume, with the sequence numbers saved here)."""
        seq_in = [n - (s in arrived) for s, n in enumerate(self.seq_in)]
        self._write_checkpoint(step, {"seq_in": np.array(seq_in),
                                      "seq_out": np.array(self.seq_out)})

    def restore(self, step):
        a = self._read_checkpoint(step)
        self.seq_in = [int(v) for v in a["seq_in"]]
        self.seq_out = [int(v) for v in a["seq_out"]]

    def _parse_from(self, s, buf, nbytes):
        header, payload = parse_server_message(buf, nbytes, self.j, self.seq_in[s], f"server {s}",
                                               SERVER_KINDS + ((wire.GO,) if s == 0 else ()))
        if header.kind not in (wire.CKPT, wire.GO):  # (control: the sequence stays)
            self.seq_in[s] += 1
        return header, payload

    def _send_gradients(self, versions):
        g = self._gradient(versions[0])
        bufs = [link.send_buffer() for link in self.links]
        sizes = steps.worker_step_sharded(
            self.ctx.alg, self.ctx.uplinks, self.ranges, self.state, g, self.j,
            self.gradients_sent, self.rng, [b[wire.HEADER_NBYTES:] for b in bufs])
        for s, (link, buf, n) in enumerate(zip(self.links, bufs, sizes)):
            link.send(wire.pack_header(buf, wire.GRAD, self.j, versions[s], self.seq_out[s], n))
            self.seq_out[s] += 1

    def _ack(self, step):  # to server 0, which runs the checkpoint (the sequence stays)
        buf = self.links[0].send_buffer()
        self.links[0].send(wire.pack_into(buf, wire.ACK, self.j, step, self.seq_out[0], b""))

    def _send_to(self, s, kind, version):
        buf = self.links[s].send_buffer()
        self.links[s].send(wire.pack_into(buf, kind, self.j, version, self.seq_out[s], b""))
        self.seq_out[s] += 1
