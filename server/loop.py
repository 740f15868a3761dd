"""The server process: receive queue, staleness control, updates, replies, checkpoints.

The server sees its workers through a link (:class:`psgd.transport.ServerLink` under MPI;
the tests give it an in-process one): one receive is always posted per worker, into a
buffer of the largest valid message, and the loop services whichever completes.
Staleness is enforced by the stale-synchronous gate of :mod:`psgd.server.ssp`; an
update applies every queued message at once, in worker order, so results never depend
on arrival order. What a message means is decided by :mod:`psgd.steps` (decode) and the
algorithm (apply); this module only schedules.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter

import numpy as np

from psgd import checkpoint, steps, wire
from psgd.comm import Backoff
from psgd.errors import RunError, WireFormatError
from psgd.server.ssp import StalenessGate

COUNTERS = ("bytes_up", "bytes_down", "messages_up", "messages_down")


class Server:
    def __init__(self, link, ctx, metrics, stop_requests=()):
        self.link = link
        self.ctx = ctx
        self.metrics = metrics
        self.stop_requests = stop_requests  # filled by the signal handler
        self.n = ctx.n
        self.d = ctx.d
        self.timeout = ctx.cfg["run"]["timeout_s"]
        self.state = ctx.alg.server_init(ctx.x0)
        self.gate = StalenessGate(self.n, ctx.tau)
        self.down_rng = ctx.streams.downlink()
        self.mirrors = ctx.downlink.mirrors(ctx.x0, self.n)  # what each worker believes x is
        self.seq_in = np.zeros(self.n, dtype=np.int64)       # next expected GRAD seq per worker
        self.seq_out = np.zeros(self.n, dtype=np.int64)
        self.queued = {}                                     # worker -> (version, Message)
        self.counters = Counter()  # bytes_up, bytes_down, messages_up, messages_down
        self.staleness = Counter()
        self.timers = Counter()    # wait, decode, apply, encode, send (seconds)

    # -- main loop -------------------------------------------------------------------

    def run(self, resume_step=None):
        """Serve until the iteration budget, the target, or a stop signal; return the status."""
        run = self.ctx.cfg["run"]
        iterations, target, every = run["iterations"], run["target"], run["checkpoint_every"]
        if resume_step is not None:
            self._restore(resume_step)
        for j in range(self.n):
            self.link.post_recv(j)
        for j in range(self.n):
            if j not in self.queued:
                self._send_model(j)
        self.metrics.log(self, force=resume_step is None)  # a resumed run logged its start already
        status = "max_iterations"
        while self.state.step < iterations:
            if self.stop_requests:
                self._checkpoint()
                status = "interrupted"
                break
            # (a resumed run may start with a full queue, so the gate comes first)
            t0 = time.perf_counter()
            self._poll(self._receive_gradient, until=lambda: self.stop_requests or
                       self.gate.may_update(self.state.step, len(self.queued)))
            self.timers["wait"] += time.perf_counter() - t0 - self._decode_s
            if self.stop_requests:
                continue
            batch = self._update()
            logged = self.metrics.log(self, force=self.state.step >= iterations)
            if target is not None and logged is not None and logged["subopt"] is not None \
                    and logged["subopt"] <= target:
                status = "converged"
                break
            if self.state.step >= iterations:
                break  # no model for a gradient nobody would apply
            if every and self.state.step % every == 0:
                self._checkpoint()
            for j in batch:
                self._send_model(j)
        self.metrics.log(self, force=True)
        self._shutdown()
        return status

    def _poll(self, handle, until, deadline_s=None, late=None):
        """Service arrivals with ``handle(j)`` until ``until()`` holds.

        Without a deadline a computing worker silent for ``run.timeout_s`` ends the job;
        with one, ``late()`` names what did not arrive within ``deadline_s``.
        """
        self._decode_s = 0.0
        backoff = Backoff()
        end = None if deadline_s is None else time.monotonic() + deadline_s
        while not until():
            done = self.link.completed()
            if not done:
                if end is None:
                    self._check_silence()
                elif time.monotonic() > end:
                    raise RunError(late())
                backoff.wait()
                continue
            backoff.reset()
            for j in done:
                handle(j)

    # -- receiving ---------------------------------------------------------------------

    def _parse(self, j, kinds, count=True):
        """Worker j's completed message: (header, payload), or RunError naming the worker."""
        buf, nbytes = self.link.received(j)
        if count:
            self.counters["bytes_up"] += nbytes
            self.counters["messages_up"] += 1
        try:
            header, payload = wire.parse(buf, nbytes, sender=self.link.name(j))
            if header.kind not in kinds:
                raise WireFormatError(f"{self.link.name(j)} sent a {wire.KIND_NAMES[header.kind]} "
                                      f"message while {' or '.join(wire.KIND_NAMES[k] for k in kinds)}"
                                      f" was expected")
        except WireFormatError as exc:
            raise RunError(f"bad message from {self.link.name(j)}: {exc}") from None
        return header, payload

    def _receive_gradient(self, j):
        """Validate and decode worker j's message, queue it, and re-post the receive."""
        t0 = time.perf_counter()
        header, payload = self._parse(j, (wire.GRAD,))
        if not self.gate.computing[j]:  # one gradient per model sent: a second is an impostor's
            raise RunError(f"bad message from {self.link.name(j)}: a second gradient (its step "
                           f"{header.seq}) before it was sent a new model; a worker owes one "
                           f"gradient per model")
        try:
            self._check_header(j, header)
            msg = steps.decode_message(self.ctx.alg, self.ctx.uplink, payload,
                                       j, int(self.seq_in[j]))
        except WireFormatError as exc:
            raise RunError(f"bad message from {self.link.name(j)}: {exc}") from None
        if not np.isfinite(msg.y).all():
            raise RunError(f"{self.link.name(j)} sent a non-finite (NaN or Inf) gradient message "
                           f"at its step {header.seq} (model version {header.version})")
        self.seq_in[j] += 1
        self.queued[j] = (header.version, msg)
        self.gate.arrived(j)
        self.link.post_recv(j)
        spent = time.perf_counter() - t0
        self.timers["decode"] += spent
        self._decode_s += spent

    def _check_header(self, j, header):
        if header.worker != j:
            raise WireFormatError(f"header names worker {header.worker}")
        if header.seq != self.seq_in[j]:
            raise WireFormatError(f"sequence number {header.seq}, expected {self.seq_in[j]}")
        if header.version != self.gate.sent_version[j]:
            raise WireFormatError(f"gradient computed at model version {header.version}, but the "
                                  f"worker was sent version {self.gate.sent_version[j]}")

    def _check_silence(self):
        now = time.monotonic()
        j = self.gate.silent(now, self.timeout)
        if j is not None:
            raise RunError(f"{self.link.name(j)} has been silent for "
                           f"{now - self.gate.sent_at[j]:.1f} s (run.timeout_s = {self.timeout:g}); "
                           f"ending the job")

    # -- updating ----------------------------------------------------------------------

    def _update(self):
        t0 = time.perf_counter()
        k = self.state.step
        batch = []
        for j in sorted(self.queued):
            version, msg = self.queued[j]
            stale = self.gate.staleness(version, k)
            if stale > self.gate.tau:  # cannot happen by construction; checked anyway
                raise RunError(f"internal error: staleness {stale} > tau={self.gate.tau} "
                               f"for worker {j}")
            self.staleness[int(stale)] += 1
            batch.append(msg)
        self.queued.clear()
        self.ctx.alg.server_apply(self.state, batch, self.ctx.prox)
        self.timers["apply"] += time.perf_counter() - t0
        return [msg.worker for msg in batch]

    # -- sending -----------------------------------------------------------------------

    def _send_model(self, j):
        t0 = time.perf_counter()
        buf = self.link.send_buffer(j)
        mirror = None if self.mirrors is None else self.mirrors[j]
        n = self.ctx.downlink.encode(self.state.x, mirror, self.down_rng, buf[wire.HEADER_NBYTES:])
        t1 = time.perf_counter()
        self.timers["encode"] += t1 - t0
        self._send(j, wire.pack_header(buf, wire.MODEL, j, self.state.step, self.seq_out[j], n))
        self.gate.sent(j, self.state.step, time.monotonic())
        self.timers["send"] += time.perf_counter() - t1

    def _send(self, j, nbytes, count=True):
        self.link.send(j, nbytes)
        if count:  # control messages (CKPT) are not optimization traffic and keep the sequence
            self.seq_out[j] += 1
            self.counters["bytes_down"] += nbytes
            self.counters["messages_down"] += 1

    def _send_control(self, j, kind, count=True):
        buf = self.link.send_buffer(j)
        self._send(j, wire.pack_into(buf, kind, j, self.state.step, self.seq_out[j], b""), count)

    # -- checkpoints -------------------------------------------------------------------

    def _checkpoint(self):
        """Write a consistent checkpoint of every rank and commit it (see psgd.checkpoint).

        First hold every reply until each computing worker has reported (nothing in
        flight), then CKPT -> ACK with every worker, then the server's own file and the commit.
        """
        out = self.ctx.cfg["output"]["dir"]
        k = self.state.step
        self._poll(self._receive_gradient, until=lambda: not self.gate.any_computing())
        try:
            os.makedirs(checkpoint.step_dir(out, k), exist_ok=True)
        except OSError as exc:
            raise checkpoint.write_error(out, k, exc) from None
        for j in range(self.n):
            self._send_control(j, wire.CKPT, count=False)
        acked = set()

        def ack(j):
            header, _ = self._parse(j, (wire.ACK,), count=False)
            acked.add(j)
            self.link.post_recv(j)

        self._poll(ack, until=lambda: len(acked) == self.n, deadline_s=self.timeout + 30,
                   late=lambda: f"checkpoint at step {k}: no acknowledgement from workers "
                                f"{sorted(set(range(self.n)) - acked)}")
        try:
            checkpoint.save_arrays(os.path.join(checkpoint.step_dir(out, k), "server.npz"),
                                   self._state_arrays())
            checkpoint.commit(out, k)
        except OSError as exc:
            raise checkpoint.write_error(out, k, exc) from None
        print(f"checkpoint: step {k} written to {checkpoint.step_dir(out, k)}", flush=True)

    def _state_arrays(self) -> dict:
        queued = sorted(self.queued)
        position, metrics_bytes = self.metrics.position()
        return {
            **checkpoint.state_arrays(self.state, "alg."),
            "counters": np.array([self.counters[k] for k in COUNTERS], dtype=np.int64),
            "staleness": np.array(sorted(self.staleness.items()), dtype=np.int64).reshape(-1, 2),
            "seq_in": self.seq_in, "seq_out": self.seq_out,
            "sent_version": self.gate.sent_version,
            "queued_workers": np.array(queued, dtype=np.int64),
            "queued_versions": np.array([self.queued[j][0] for j in queued], dtype=np.int64),
            "queued_messages": (np.array([self.queued[j][1].y for j in queued]) if queued
                                else np.zeros((0, self.d))),
            "queued_full": np.array([self.queued[j][1].full for j in queued], dtype=bool),
            "mirrors": self.mirrors,
            "down_rng": checkpoint.rng_state(self.down_rng),
            "metrics": np.array(json.dumps(position)),
            # metrics.jsonl as it was at the cut: a resumed run continues exactly these bytes
            "metrics_bytes": np.frombuffer(metrics_bytes, dtype=np.uint8),
        }

    def _restore(self, step):
        from psgd.algorithms import Message

        out = self.ctx.cfg["output"]["dir"]
        a = checkpoint.load_arrays(os.path.join(checkpoint.step_dir(out, step), "server.npz"))
        checkpoint.restore_state(self.state, a, "alg.")
        self.counters.update(dict(zip(COUNTERS, (int(v) for v in a["counters"]))))
        self.staleness.update({int(k): int(v) for k, v in a["staleness"]})
        self.seq_in, self.seq_out = a["seq_in"], a["seq_out"]
        self.gate.sent_version[:] = a["sent_version"]
        for j, v, y, full in zip(a["queued_workers"], a["queued_versions"], a["queued_messages"],
                                 a["queued_full"]):
            self.queued[int(j)] = (int(v), Message(int(j), y, bool(full)))
        if "mirrors" in a:
            self.mirrors = a["mirrors"]
        checkpoint.set_rng_state(self.down_rng, a["down_rng"])
        self.metrics.restore(json.loads(str(a["metrics"])), a["metrics_bytes"].tobytes())

    # -- shutdown ----------------------------------------------------------------------

    def _shutdown(self):
        """Tell every worker to stop, drain until each says BYE, complete every request."""
        for j in range(self.n):
            self._send_control(j, wire.STOP)
        pending = set(range(self.n))

        def goodbye(j):
            header, _ = self._parse(j, (wire.BYE, wire.GRAD))
            if header.kind == wire.BYE:
                pending.discard(j)  # the worker sends nothing after BYE
            else:
                self.link.post_recv(j)  # a gradient that was in flight at STOP: dropped

        self._poll(goodbye, until=lambda: not pending, deadline_s=self.timeout + 10,
                   late=lambda: f"no goodbye from {', '.join(self.link.name(j) for j in sorted(pending))}"
                                f" within {self.timeout + 10:.0f} s of STOP")
        self.link.close()
