"""The server process (rank 0): receive queue, staleness control, updates, replies.

One ``Irecv`` is always posted per worker, into a preallocated buffer of the
compressor's maximum message size (so variable-length codes need no size in
advance); the loop services whichever completes. Staleness is enforced
stale-synchronously (Petuum Bosen's SSP):

* every worker is either *computing* on the model version it was last sent, or
  *waiting* (its message has arrived and is queued);
* an update applies every queued message at once (in worker order, so results
  never depend on arrival order) and is allowed only if afterwards no computing
  worker is more than ``tau`` versions behind: ``k + 1 - v_j <= tau``;
* only the workers whose messages were applied get the new model, so a fast worker
  is held back (no reply) while a slow one is too far behind.

Hence every applied message has staleness ``k - v <= tau``, and ``tau = 0`` is the
synchronous algorithm exactly (an update needs every worker's fresh message).
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter

import numpy as np
from mpi4py import MPI

from psgd import checkpoint, wire
from psgd.comm import TAG_DOWN, TAG_UP, Backoff, cancel_all, wait
from psgd.errors import RunError, WireFormatError


COUNTERS = ("bytes_up", "bytes_down", "messages_up", "messages_down")


class Server:
    def __init__(self, comm, ctx, metrics, stop_requests=()):
        self.comm = comm
        self.ctx = ctx
        self.metrics = metrics
        self.stop_requests = stop_requests  # filled by the signal handler
        self.n = comm.Get_size() - 1
        self.d = ctx.d
        self.tau = ctx.cfg["run"]["max_staleness"] if ctx.cfg["run"]["mode"] == "async" else 0
        self.timeout = ctx.cfg["run"]["timeout_s"]
        self.state = ctx.alg.server_init(ctx.x0)
        self.up_nbytes = wire.HEADER_NBYTES + ctx.compressor.max_nbytes(self.d)
        self.down_nbytes = wire.HEADER_NBYTES + ctx.downlink.max_nbytes(self.d)
        self.recv_bufs = [np.empty(self.up_nbytes, np.uint8) for _ in range(self.n)]
        self.send_bufs = [np.empty(self.down_nbytes, np.uint8) for _ in range(self.n)]
        self.recv_reqs = [MPI.REQUEST_NULL] * self.n
        self.send_reqs = [MPI.REQUEST_NULL] * self.n
        self.statuses = [MPI.Status() for _ in range(self.n)]
        # per-worker bookkeeping
        self.sent_version = np.zeros(self.n, dtype=np.int64)   # v_j: model version j computes on
        self.sent_at = np.zeros(self.n)                         # when j was sent its model
        self.computing = np.zeros(self.n, dtype=bool)
        self.seq_in = np.zeros(self.n, dtype=np.int64)          # next expected GRAD seq per worker
        self.seq_out = np.zeros(self.n, dtype=np.int64)
        self.queued = {}                                        # worker -> (version, y)
        # downlink memory: what each worker believes the model is (compressed downlink only)
        self.mirror = None if ctx.downlink_is_identity else np.tile(ctx.x0, (self.n, 1))
        self.counters = Counter()  # bytes_up, bytes_down, messages_up, messages_down
        self.staleness = Counter()
        self.timers = Counter()    # wait, decode, apply, encode, send (seconds)

    # -- main loop -------------------------------------------------------------------

    def run(self, resume_step=None):
        """Serve until the iteration budget, the target, or a stop signal; return the status."""
        ctx = self.ctx
        iterations = ctx.cfg["run"]["iterations"]
        target = ctx.cfg["run"]["target"]
        every = ctx.cfg["run"]["checkpoint_every"]
        if resume_step is not None:
            self._restore(resume_step)
        for j in range(self.n):
            self._post_recv(j)
        for j in range(self.n):
            if j not in self.queued:
                self._send_model(j)
        self.metrics.log(self, force=resume_step is None)  # a resumed run logged its start already
        status = "max_iterations"
        backoff = Backoff()
        while self.state.step < iterations:
            if self.stop_requests:
                self._checkpoint()
                status = "interrupted"
                break
            if not self._may_update():
                # (a resumed run may start with a full queue, so the gate comes first)
                t0 = time.perf_counter()
                done = self._completed()
                if not done:
                    self._check_silence()
                    backoff.wait()
                self.timers["wait"] += time.perf_counter() - t0  # polling and back-off sleep
                if not done:
                    continue
                backoff.reset()
                for j in done:
                    self._receive(j)
                continue
            batch = self._update()
            logged = self.metrics.log(self, force=self.state.step >= iterations)
            if target is not None and logged is not None and logged["subopt"] <= target:
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

    def _completed(self):
        """Indices of workers whose posted receive has completed (status in self.statuses)."""
        done = []
        for j, req in enumerate(self.recv_reqs):
            if req == MPI.REQUEST_NULL:
                continue
            try:
                if req.Test(self.statuses[j]):
                    done.append(j)
            except MPI.Exception as exc:  # e.g. MPI_ERR_TRUNCATE: longer than any valid message
                raise RunError(f"bad message from {self._sender(j)}: MPI could not receive it into "
                               f"the {self.up_nbytes}-byte buffer that holds the largest valid "
                               f"message ({exc.Get_error_string().splitlines()[0]})") from None
        return done

    # -- receiving ---------------------------------------------------------------------

    def _post_recv(self, j):
        self.recv_reqs[j] = self.comm.Irecv([self.recv_bufs[j], MPI.BYTE], source=j + 1, tag=TAG_UP)

    def _sender(self, j):
        return f"worker {j} (rank {j + 1})"

    def _receive(self, j):
        """Validate and decode worker j's message, queue it, and re-post the receive."""
        t0 = time.perf_counter()
        nbytes = self.statuses[j].Get_count(MPI.BYTE)
        self.counters["bytes_up"] += nbytes
        self.counters["messages_up"] += 1
        try:
            header, payload = wire.parse(self.recv_bufs[j], nbytes, sender=self._sender(j))
            if header.kind != wire.GRAD:
                raise WireFormatError(f"{self._sender(j)} sent a {wire.KIND_NAMES[header.kind]} "
                                      f"message while a gradient was expected")
            self._check_header(j, header)
            y = self.ctx.decode_message(payload, self.seq_in[j], j)
        except WireFormatError as exc:
            raise RunError(f"bad message from {self._sender(j)}: {exc}") from None
        if not np.isfinite(y).all():
            raise RunError(f"{self._sender(j)} sent a non-finite (NaN or Inf) gradient message "
                           f"at its step {header.seq} (model version {header.version})")
        self.seq_in[j] += 1
        self.queued[j] = (header.version, y)
        self.computing[j] = False
        self._post_recv(j)
        self.timers["decode"] += time.perf_counter() - t0

    def _check_header(self, j, header):
        if header.worker != j:
            raise WireFormatError(f"header names worker {header.worker}")
        if header.seq != self.seq_in[j]:
            raise WireFormatError(f"sequence number {header.seq}, expected {self.seq_in[j]}")
        if header.version != self.sent_version[j]:
            raise WireFormatError(f"gradient computed at model version {header.version}, but the "
                                  f"worker was sent version {self.sent_version[j]}")

    def _check_silence(self):
        now = time.monotonic()
        late = np.flatnonzero(self.computing & (now - self.sent_at > self.timeout))
        if late.size:
            j = int(late[0])
            raise RunError(f"{self._sender(j)} has been silent for {now - self.sent_at[j]:.1f} s "
                           f"(run.timeout_s = {self.timeout:g}); ending the job")

    # -- updating ----------------------------------------------------------------------

    def _may_update(self):
        """SSP gate: apply the queue only if no computing worker would exceed tau."""
        if not self.queued:
            return False
        k = self.state.step
        behind = self.sent_version[self.computing]
        return behind.size == 0 or (k + 1 - behind.min()) <= self.tau

    def _update(self):
        t0 = time.perf_counter()
        k = self.state.step
        batch = []
        for j in sorted(self.queued):
            version, y = self.queued[j]
            stale = k - version
            if stale > self.tau:  # cannot happen by construction; checked anyway
                raise RunError(f"internal error: staleness {stale} > tau={self.tau} for worker {j}")
            self.staleness[int(stale)] += 1
            batch.append((j, y))
        self.queued.clear()
        self.ctx.alg.server_apply(self.state, batch, self.ctx.prox)
        self.timers["apply"] += time.perf_counter() - t0
        return [j for j, _ in batch]

    # -- sending -----------------------------------------------------------------------

    def _send_model(self, j):
        t0 = time.perf_counter()
        # the previous send to j completed long ago (j answered it), but make sure
        wait(self.send_reqs[j], self.timeout, f"the model send to {self._sender(j)}")
        x, buf = self.state.x, self.send_bufs[j]
        if self.mirror is None:  # the model itself, encoded straight into the send buffer
            n = self.ctx.downlink.encode_into(x, self.ctx.down_rng, buf[wire.HEADER_NBYTES:])
        else:
            payload, y = self.ctx.downlink.encode_decode(x - self.mirror[j], self.ctx.down_rng)
            self.mirror[j] += self.ctx.downlink_scale * y
            n = payload.size
            buf[wire.HEADER_NBYTES:wire.HEADER_NBYTES + n] = payload
        t1 = time.perf_counter()
        self.timers["encode"] += t1 - t0
        self._isend(j, wire.pack_header(buf, wire.MODEL, j, self.state.step, self.seq_out[j], n))
        self.sent_version[j] = self.state.step
        self.sent_at[j] = time.monotonic()
        self.computing[j] = True
        self.timers["send"] += time.perf_counter() - t1

    def _isend(self, j, n):
        self.send_reqs[j] = self.comm.Isend([self.send_bufs[j][:n], MPI.BYTE], dest=j + 1, tag=TAG_DOWN)
        self.seq_out[j] += 1
        self.counters["bytes_down"] += n
        self.counters["messages_down"] += 1

    # -- checkpoints -------------------------------------------------------------------

    def _quiesce(self):
        """Hold every reply until each computing worker has reported: nothing in flight."""
        backoff = Backoff()
        while self.computing.any():
            done = self._completed()
            if not done:
                self._check_silence()
                backoff.wait()
                continue
            for j in done:
                self._receive(j)

    def _checkpoint(self):
        """Write a consistent checkpoint of every rank and commit it (see psgd.checkpoint)."""
        out = self.ctx.cfg["output"]["dir"]
        k = self.state.step
        self._quiesce()
        try:
            os.makedirs(checkpoint.step_dir(out, k), exist_ok=True)
        except OSError as exc:
            raise checkpoint.write_error(self.ctx.cfg["output"]["dir"], k, exc) from None
        for j in range(self.n):   # control messages: not counted as optimization traffic
            wait(self.send_reqs[j], self.timeout, f"the model send to {self._sender(j)}")
            n = wire.pack_into(self.send_bufs[j], wire.CKPT, j, k, self.seq_out[j], b"")
            self.send_reqs[j] = self.comm.Isend([self.send_bufs[j][:n], MPI.BYTE], dest=j + 1,
                                                tag=TAG_DOWN)
        acked = set()
        deadline = time.monotonic() + self.timeout + 30
        backoff = Backoff()
        while len(acked) < self.n:
            done = self._completed()
            if not done:
                if time.monotonic() > deadline:
                    raise RunError(f"checkpoint at step {k}: no acknowledgement from workers "
                                   f"{sorted(set(range(self.n)) - acked)}")
                backoff.wait()
                continue
            for j in done:
                nbytes = self.statuses[j].Get_count(MPI.BYTE)
                try:
                    header, _ = wire.parse(self.recv_bufs[j], nbytes, sender=self._sender(j))
                except WireFormatError as exc:
                    raise RunError(f"bad message from {self._sender(j)}: {exc}") from None
                if header.kind != wire.ACK:
                    raise RunError(f"{self._sender(j)} sent {wire.KIND_NAMES[header.kind]} "
                                   f"during checkpoint {k}")
                acked.add(j)
                self._post_recv(j)
        try:
            checkpoint.save_arrays(os.path.join(checkpoint.step_dir(out, k), "server.npz"),
                                   self._state_arrays())
            checkpoint.commit(out, k)
        except OSError as exc:
            raise checkpoint.write_error(self.ctx.cfg["output"]["dir"], k, exc) from None
        print(f"checkpoint: step {k} written to {checkpoint.step_dir(out, k)}", flush=True)

    def _state_arrays(self) -> dict:
        ss = self.state
        queued = sorted(self.queued)
        m = self.metrics
        return {
            "step": np.array(ss.step), "x": ss.x, "entries": ss.entries, "entries_sum": ss.entries_sum,
            "shifts": ss.shifts, "velocity": ss.velocity,
            "counters": np.array([self.counters[k] for k in COUNTERS], dtype=np.int64),
            "staleness": np.array(sorted(self.staleness.items()), dtype=np.int64).reshape(-1, 2),
            "seq_in": self.seq_in, "seq_out": self.seq_out, "sent_version": self.sent_version,
            "queued_workers": np.array(queued, dtype=np.int64),
            "queued_versions": np.array([self.queued[j][0] for j in queued], dtype=np.int64),
            "queued_messages": (np.array([self.queued[j][1] for j in queued]) if queued
                                else np.zeros((0, self.d))),
            "mirror": self.mirror,
            "down_rng": checkpoint.rng_state(self.ctx.down_rng),
            "metrics": np.array(json.dumps(m.position())),
        }

    def _restore(self, step):
        out = self.ctx.cfg["output"]["dir"]
        a = checkpoint.load_arrays(os.path.join(checkpoint.step_dir(out, step), "server.npz"))
        ss = self.state
        ss.step = int(a["step"])
        ss.x = a["x"]
        for name in ("entries", "entries_sum", "shifts", "velocity"):
            if name in a:
                setattr(ss, name, a[name])
        self.counters.update(dict(zip(COUNTERS, (int(v) for v in a["counters"]))))
        self.staleness.update({int(k): int(v) for k, v in a["staleness"]})
        self.seq_in, self.seq_out, self.sent_version = a["seq_in"], a["seq_out"], a["sent_version"]
        for j, v, y in zip(a["queued_workers"], a["queued_versions"], a["queued_messages"]):
            self.queued[int(j)] = (int(v), y)
        if "mirror" in a:
            self.mirror = a["mirror"]
        checkpoint.set_rng_state(self.ctx.down_rng, a["down_rng"])
        self.metrics.restore(json.loads(str(a["metrics"])))

    # -- shutdown ----------------------------------------------------------------------

    def _shutdown(self):
        """Tell every worker to stop, drain until each says BYE, complete every request."""
        for j in range(self.n):
            wait(self.send_reqs[j], self.timeout, f"the model send to {self._sender(j)}")
            n = wire.pack_into(self.send_bufs[j], wire.STOP, j, self.state.step, self.seq_out[j], b"")
            self._isend(j, n)
        pending = set(range(self.n))
        deadline = time.monotonic() + self.timeout + 10
        backoff = Backoff()
        while pending:
            done = self._completed()
            if not done:
                if time.monotonic() > deadline:
                    names = ", ".join(self._sender(j) for j in sorted(pending))
                    raise RunError(f"no goodbye from {names} within {self.timeout + 10:.0f} s of STOP")
                backoff.wait()
                continue
            for j in done:
                nbytes = self.statuses[j].Get_count(MPI.BYTE)
                self.counters["bytes_up"] += nbytes
                self.counters["messages_up"] += 1
                try:
                    header, _ = wire.parse(self.recv_bufs[j], nbytes, sender=self._sender(j))
                except WireFormatError as exc:
                    raise RunError(f"bad message from {self._sender(j)}: {exc}") from None
                if header.kind == wire.BYE:
                    pending.discard(j)  # the worker sends nothing after BYE
                else:
                    self._post_recv(j)  # a gradient that was in flight at STOP: dropped
        for j in range(self.n):
            wait(self.send_reqs[j], self.timeout, f"the STOP send to {self._sender(j)}")
        cancel_all(self.recv_reqs)
