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
from psgd.metrics import peak_rss_mb
from psgd.server.ssp import StalenessGate

COUNTERS = ("bytes_up", "bytes_down", "messages_up", "messages_down", "payload_up", "payload_down")


def _epoch_shares(ctx):
    """The epochs one message of each worker is worth (its samples over the dataset's)."""
    batch, m = ctx.cfg["algorithm"]["batch_size"], ctx.ps.n_samples
    if batch is None or not m:
        return np.asarray(ctx.ps.weights, dtype=np.float64)  # a full pass over f_i
    return np.minimum(batch / m, ctx.ps.weights)


class Server:
    """One server: of the whole vector, or (``run.servers`` > 1) of one key range.

    With several servers, server 0 coordinates: it logs (gathering the other ranges at
    logging steps), decides when the run ends and tells the others (END), and sums their
    counters (TALLY) into the summary. Each server runs its own receive queue and SSP gate
    over its own range.
    """

    def __init__(self, link, ctx, metrics, stop_requests=(), peers=None):
        self.link = link
        self.ctx = ctx
        self.metrics = metrics
        self.peers = peers                   # PeerLink of a sharded run, else None
        self.shard = 0 if ctx.shard is None else ctx.shard.index
        self.ended = None                    # a non-coordinator: the END it was sent
        self.gather_step = None              # a non-coordinator: the step server 0 wants
        self.checkpoint_ask = None           # a non-coordinator: (checkpoint, what it waits for:
        #                                      its range's step, or async every worker's round)
        self.broadcast_nbytes = 0            # the size of the last broadcast model message
        self.sent_nbytes = np.zeros(ctx.n, dtype=np.int64)  # of each worker's last model message
        self.tallies = {}                    # the coordinator: every other server's counters
        self.stop_requests = stop_requests  # filled by the signal handler
        self.n = ctx.n
        self.d = ctx.d
        self.timeout = ctx.cfg["run"]["timeout_s"]
        self.state = ctx.alg.server_init(ctx.x0)
        self.gate = StalenessGate(self.n, ctx.tau)
        self.down_rng = ctx.streams.downlink(self.shard)
        # the model each worker knows (compressed downlink): one shared mirror when
        # synchronous, since every worker gets the same bytes; one per worker otherwise
        self.mirrors = ctx.downlink.mirrors(ctx.x0, 1 if ctx.alg.synchronous else self.n)
        # a multi-round compressor's side of each step (None for the others): it applies
        # the update and writes the model messages in place of the algorithm and downlink
        self.rounds = steps.rounds_for(ctx)
        self.seq_in = np.zeros(self.n, dtype=np.int64)       # next expected GRAD seq per worker
        self.seq_out = np.zeros(self.n, dtype=np.int64)
        self.queued = {}                                     # worker -> (version, Received)
        self.counters = Counter()  # COUNTERS: all bytes, payload bytes, messages per direction
        self.epochs = 0.0          # samples the applied gradients saw / dataset size
        self.epoch_share = _epoch_shares(ctx)
        self.failure = None        # why the run failed, when it did
        self.staleness = Counter()
        self.timers = Counter()    # wait, decode, apply, encode, send (seconds)

    # -- main loop -------------------------------------------------------------------

    def run(self, resume_step=None):
        """Serve until the iteration budget, the target, or a stop signal; return the status."""
        if self.peers is not None and self.shard != 0:
            return self._run_range(resume_step)
        run = self.ctx.cfg["run"]
        iterations, every = run["iterations"], run["checkpoint_every"]
        self.t_start = time.perf_counter()
        self.wall_segments = []  # earlier segments' wall time up to their checkpoint
        saved = None if resume_step is None else self._restore(resume_step)
        for j in range(self.n):
            self.link.post_recv(j)
        self._first_models(saved)
        self.metrics.log(self, force=resume_step is None)  # a resumed run logged its start already
        status = "max_iterations"
        while self.state.step < iterations:
            if self.stop_requests and self.rounds is not None:
                status, self.failure = "failed", (f"stopped by signal {self.stop_requests[0]}; "
                                                  f"compressor {self.ctx.compressor.name} writes "
                                                  f"no checkpoints")
                break
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
            if self.rounds is not None and self.rounds.inner:
                self._send_round()  # a reply within the step: its answers come next
                continue
            batch = self._update()
            verdict = self.metrics.check(self)  # the target and divergence, every update
            logged = self.metrics.log(self, force=self.state.step >= iterations or bool(verdict))
            if verdict is None and logged is not None:
                verdict = self.metrics.check_record(logged)
            if verdict is not None:
                status, self.failure = verdict
                break
            if self.state.step >= iterations:
                break  # no model for a gradient nobody would apply
            if every and self.state.step % every == 0:
                self._checkpoint()
            self._send_models(batch)
        self.metrics.log(self, force=True)
        self.final_x = self.model()
        if self.peers is not None:
            self._end_ranges(status)
        self._shutdown()
        return status

    # -- sharded servers -------------------------------------------------------------

    def model(self) -> np.ndarray:
        """The whole model: this server's, or (sharded coordinator) gathered from all."""
        if self.peers is None:
            return self.state.x
        x = np.empty(self.ctx.ps.d)
        sh = self.ctx.shards
        x[sh[0].lo:sh[0].hi] = self.state.x
        for s in self.peers.peers:
            self.peers.send(s, wire.GATHER, self.state.step, b"")
        got, tallies = {}, {}

        def collect(s, header, payload):  # each server answers with its range, then its tally
            if header.kind == wire.SHARD:
                got[s] = payload
            elif header.kind == wire.TALLY:
                tallies[s] = json.loads(payload.tobytes())

        # wait for this gather's tallies too, not an earlier gather's (the counters must be
        # as of the model they are logged with)
        self._await_peers(collect, lambda: len(got) == len(tallies) == len(sh) - 1,
                          "the model ranges of servers")
        self.tallies.update(tallies)
        for s, payload in got.items():
            x[sh[s].lo:sh[s].hi] = np.frombuffer(payload.tobytes(), dtype=np.float64)
        return x

    def total_counters(self) -> Counter:
        """Every server's counters (the others' as of their last tally)."""
        total = Counter(self.counters)
        for t in self.tallies.values():
            total.update(t["counters"])
        return total

    def _await_peers(self, handle, until, what):
        backoff = Backoff()
        end = time.monotonic() + self.timeout + 30
        while not until():
            msgs = self.peers.poll()
            for s, header, payload in msgs:
                handle(s, header, payload)
            if not msgs:
                if time.monotonic() > end:
                    raise RunError(f"server {self.shard}: no answer within {self.timeout + 30:.0f} "
                                   f"s waiting for {what}")
                backoff.wait()

    def _end_ranges(self, status):
        """The coordinator: tell every other server the run is over and collect its counters."""
        for s in self.peers.peers:
            self.peers.send(s, wire.END, self.state.step, json.dumps({"status": status}).encode())

        final = {}

        def tally(s, header, payload):
            if header.kind == wire.TALLY:
                self.tallies[s] = final[s] = json.loads(payload.tobytes())

        self._await_peers(tally, lambda: len(final) == len(self.peers.peers),
                          "the counters of servers")
        self.peers.close()

    def _serve_peers(self):
        """A non-coordinator: answer server 0 (a range of the model, the end of the run)."""
        for _, header, payload in self.peers.poll():
            if header.kind == wire.GATHER:
                self.gather_step = header.version
            elif header.kind == wire.CKPT:  # sync: {"step": s}; async: {"rounds": [r_j]}
                ask = json.loads(payload.tobytes())
                self.checkpoint_ask = (header.version, ask.get("step", ask.get("rounds")))
            elif header.kind == wire.END:
                self.ended = json.loads(payload.tobytes())
        self._answer_gather()

    def _answer_gather(self):
        # synchronous: the range at the coordinator's step (this server may be one behind);
        # asynchronous: whatever this range's model is now
        if self.gather_step is None:
            return
        if self.ctx.alg.synchronous and self.state.step < self.gather_step:
            return
        self.peers.send(0, wire.SHARD, self.state.step, self.state.x.view(np.uint8))
        self.peers.send(0, wire.TALLY, self.state.step, json.dumps(self.tally()).encode())
        self.gather_step = None

    def _run_range(self, resume_step=None):
        """The loop of server s > 0: serve its range until server 0 ends the run."""
        iterations = self.ctx.cfg["run"]["iterations"]
        self.t_start = time.perf_counter()
        self.wall_segments = []
        for j in range(self.n):
            self.link.post_recv(j)
        if resume_step is None:
            self._send_models(list(range(self.n)))
        elif self.ctx.alg.synchronous:  # the model message of the cut, as it was sent before
            self._resend_saved_model(self._restore(resume_step))
        else:
            self._first_models(self._restore(resume_step))
        while self.ended is None:
            if self.ctx.alg.synchronous and self.state.step >= iterations:
                self._await_end()
                break
            t0 = time.perf_counter()
            self._poll(self._receive_gradient, until=lambda: self.ended is not None
                       or self._range_checkpoint_due()
                       or self.gate.may_update(self.state.step, len(self.queued)))
            self.timers["wait"] += time.perf_counter() - t0 - self._decode_s
            if self._range_checkpoint_due():
                self._range_checkpoint()
                continue
            if self.ended is not None:
                break
            batch = self._update()
            if not np.isfinite(np.dot(self.state.x, self.state.x)):
                raise RunError(f"server {self.shard}: its range of the model holds NaN or Inf "
                               f"after step {self.state.step}; try a smaller algorithm.stepsize")
            self._answer_gather()
            if not (self.ctx.alg.synchronous and self.state.step >= iterations):
                self._send_models(batch)
        self._shutdown()  # (first, so that the workers' goodbyes are in the counts)
        self.peers.send(0, wire.TALLY, self.state.step, json.dumps(self.tally()).encode())
        self.peers.close()
        return self.ended["status"]

    def _await_end(self):
        """Serve server 0's requests until it ends the run."""
        backoff = Backoff()
        end = time.monotonic() + 2 * self.timeout + 60
        while self.ended is None:
            self._serve_peers()
            if self._range_checkpoint_due():  # a stop signal's cut can be at the last step
                self._range_checkpoint()
            if self.ended is None:
                if time.monotonic() > end:
                    raise RunError(f"server {self.shard}: server 0 did not end the run within "
                                   f"{2 * self.timeout + 60:.0f} s of this range's last step")
                backoff.wait()

    def tally(self) -> dict:
        """This server's counters, as the summary reports them per range."""
        return {"server": self.shard, "counters": {k: self.counters[k] for k in COUNTERS},
                "staleness_hist": {str(k): v for k, v in sorted(self.staleness.items())},
                "timers": dict(self.timers), "step": self.state.step,
                "peak_rss_mb": peak_rss_mb()}

    def _poll(self, handle, until, deadline_s=None, late=None):
        """Service arrivals with ``handle(j)`` until ``until()`` holds.

        Without a deadline a computing worker silent for ``run.timeout_s`` ends the job;
        with one, ``late()`` names what did not arrive within ``deadline_s``.
        """
        self._decode_s = 0.0
        backoff = Backoff()
        end = None if deadline_s is None else time.monotonic() + deadline_s
        while not until():
            if self.peers is not None and self.shard != 0 and self.ended is None:
                self._serve_peers()  # (the main loop's ``until`` watches for the END)
                if self.ended is not None and until():
                    return
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
            self._count_received(j)
        try:
            header, payload = wire.parse(buf, nbytes, sender=self.link.name(j))
            if header.kind not in kinds:
                raise WireFormatError(f"{self.link.name(j)} sent a {wire.KIND_NAMES[header.kind]} "
                                      f"message while {' or '.join(wire.KIND_NAMES[k] for k in kinds)}"
                                      f" was expected")
        except WireFormatError as exc:
            raise RunError(f"bad message from {self.link.name(j)}: {exc}") from None
        return header, payload

    def _count_received(self, j):
        self.counters["bytes_up"] += self.link.received(j)[1]
        self.counters["messages_up"] += 1

    def _receive_gradient(self, j, acks=None):
        """Validate and decode worker j's message, queue it, and re-post the receive. With
        ``acks`` (an asynchronous sharded checkpoint) its ACK is accepted too: acks[j] is then
        the worker's round, the gradients it has sent every server."""
        t0 = time.perf_counter()
        header, payload = self._parse(j, (wire.GRAD,) if acks is None else (wire.GRAD, wire.ACK),
                                      count=False)
        if header.kind == wire.ACK:
            acks[j] = int(header.seq)
            self.link.post_recv(j)
            return
        self._count_received(j)
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
        self.seq_in[j] += 1
        framing = self.ctx.uplink.codec(msg.full).header_nbytes
        self.counters["payload_up"] += max(payload.size - framing, 0)
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
            self.epochs += self.epoch_share[j]
            batch.append(msg)
        self.queued.clear()
        try:  # messages are decoded here, straight into the aggregate, in worker order
            (self.rounds or self.ctx.alg).server_apply(self.state, batch, self.ctx.prox)
        except WireFormatError as exc:
            j = getattr(exc, "worker", None)
            raise RunError(f"bad message from "
                           f"{self.link.name(self._decoding(batch) if j is None else j)}: "
                           f"{exc}") from None
        self.timers["apply"] += time.perf_counter() - t0
        return [msg.worker for msg in batch]

    def _decoding(self, batch):
        """The worker whose message failed to decode (re-decoded one by one to find it)."""
        for msg in batch:
            try:
                msg.y
            except WireFormatError:
                return msg.worker
        return batch[0].worker

    # -- sending -----------------------------------------------------------------------

    def _send_models(self, workers):
        """Send the current model to ``workers``: encoded once and broadcast (the same bytes
        to every worker) when synchronous, encoded against each worker's mirror otherwise."""
        if not workers:
            return
        if self.ctx.alg.synchronous:
            self._broadcast_model(workers)
        else:
            for j in workers:
                self._send_model(j)

    def _send_model(self, j):
        t0 = time.perf_counter()
        buf = self.link.send_buffer(j)
        mirror = None if self.mirrors is None else self.mirrors[j]
        n = self.ctx.downlink.encode(self.state.x, mirror, self.down_rng, buf[wire.HEADER_NBYTES:])
        t1 = time.perf_counter()
        self.timers["encode"] += t1 - t0
        nbytes = wire.pack_header(buf, wire.MODEL, j, self.state.step, self.seq_out[j], n)
        self._send(j, nbytes)
        self.sent_nbytes[j] = nbytes  # (an asynchronous sharded checkpoint may send it again)
        self.counters["payload_down"] += n - self.ctx.downlink.compressor.header_nbytes
        self.gate.sent(j, self.state.step, time.monotonic())
        self.timers["send"] += time.perf_counter() - t1

    def _broadcast_model(self, workers):
        seq = int(self.seq_out[workers[0]])
        if len(workers) != self.n or (self.seq_out[workers] != seq).any():
            # a synchronous run sends every model to every worker, so all sequences agree
            raise RunError(f"internal error: a broadcast to workers {workers} at sequence "
                           f"numbers {self.seq_out[workers].tolist()}")
        t0 = time.perf_counter()
        buf = self.link.shared_buffer()
        mirror = None if self.mirrors is None else self.mirrors[0]
        n = (self.rounds or self.ctx.downlink).encode(self.state.x, mirror, self.down_rng,
                                                      buf[wire.HEADER_NBYTES:])
        nbytes = wire.pack_header(buf, wire.MODEL, wire.BROADCAST, self.state.step, seq, n)
        self.broadcast_nbytes = nbytes  # (a range server's checkpoint saves these bytes)
        t1 = time.perf_counter()
        self.timers["encode"] += t1 - t0
        now = time.monotonic()
        for j in workers:
            self.link.send_shared(j, nbytes)
            self._count_down(j, nbytes)
            self.counters["payload_down"] += n - self.ctx.downlink.compressor.header_nbytes
            self.gate.sent(j, self.state.step, now)
        self.timers["send"] += time.perf_counter() - t1

    def _send_round(self):
        """A multi-round compressor's reply to the round every worker has just sent: the
        same bytes to all (kind ROUND, the step's version), counted as downlink traffic."""
        t0 = time.perf_counter()
        batch = [self.queued[j][1] for j in sorted(self.queued)]
        self.queued.clear()
        try:
            reply = self.rounds.reduce(batch)
        except WireFormatError as exc:
            raise RunError(f"bad message from {self.link.name(exc.worker)}: {exc}") from None
        buf = self.link.shared_buffer()
        buf[wire.HEADER_NBYTES:wire.HEADER_NBYTES + reply.size] = reply
        seq = int(self.seq_out[0])
        nbytes = wire.pack_header(buf, wire.ROUND, wire.BROADCAST, self.state.step, seq,
                                  reply.size)
        t1 = time.perf_counter()
        self.timers["apply"] += t1 - t0
        now = time.monotonic()
        for j in range(self.n):  # every worker owes one answer to it, on this step's model
            self.link.send_shared(j, nbytes)
            self._count_down(j, nbytes)
            self.counters["payload_down"] += reply.size - self.ctx.compressor.header_nbytes
            self.gate.sent(j, self.state.step, now)
        self.timers["send"] += time.perf_counter() - t1

    def _send(self, j, nbytes, count=True):
        self.link.send(j, nbytes)
        if count:  # control messages (CKPT) are not optimization traffic and keep the sequence
            self._count_down(j, nbytes)

    def _count_down(self, j, nbytes):
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
        if self.peers is not None and not self.ctx.alg.synchronous:
            return self._checkpoint_frozen()
        k = self.state.step
        self._poll(self._receive_gradient, until=lambda: not self.gate.any_computing())
        self._make_step_dir(k)
        if self.peers is not None:
            self._checkpoint_ranges(k)
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
        self._commit(k, self._state_arrays())

    def _make_step_dir(self, k):
        out = self.ctx.cfg["output"]["dir"]
        try:
            os.makedirs(checkpoint.step_dir(out, k), exist_ok=True)
        except OSError as exc:
            raise checkpoint.write_error(out, k, exc) from None

    def _commit(self, k, arrays):
        """Server 0's own file, then the commit: every other file of checkpoint k is written."""
        out = self.ctx.cfg["output"]["dir"]
        try:
            checkpoint.save_arrays(checkpoint.rank_file(out, k), arrays)
            checkpoint.commit(out, k)
        except OSError as exc:
            raise checkpoint.write_error(out, k, exc) from None
        print(f"checkpoint: step {k} written to {checkpoint.step_dir(out, k)}", flush=True)

    def _checkpoint_frozen(self):
        """Asynchronous sharded servers: a consistent cut without draining the pipeline.

        Quiescing one server can deadlock here (its workers wait for another server's
        range, whose gate waits for them), so the workers stop instead: CKPT freezes each
        worker (it computes nothing until GO), it writes its state after its last gradient
        and answers with its round r_j, the gradients it has sent every server. Each server
        then waits for those gradients and writes its state together with the model messages
        it sent beyond them (the frozen workers drop such ranges unapplied; on resume they
        are sent again, byte for byte). Then server 0 commits and sends GO.
        """
        k = self.state.step
        self._make_step_dir(k)
        # a worker still computing may not have applied the last model sent to it; CKPT will
        # reuse its send buffer, so keep those bytes
        last = {j: self._last_model(j) for j in range(self.n) if self.gate.computing[j]}
        for j in range(self.n):
            self._send_control(j, wire.CKPT, count=False)
        rounds = {}
        self._poll(lambda j: self._receive_gradient(j, rounds),
                   until=lambda: len(rounds) == self.n, deadline_s=self.timeout + 30,
                   late=lambda: f"checkpoint at step {k}: no acknowledgement from workers "
                                f"{sorted(set(range(self.n)) - rounds.keys())}")
        rounds = [rounds[j] for j in range(self.n)]
        if (self.seq_in != rounds).any():  # (each gradient came before its worker's ACK)
            raise RunError(f"internal error: checkpoint at step {k}: gradients received "
                           f"{self.seq_in.tolist()}, workers' rounds {rounds}")
        arrays = {**self._state_arrays(), **self._inflight(rounds, last.get)}
        self._ask_ranges(k, {"rounds": rounds}, f"(step {k})")
        self._commit(k, arrays)
        for j in range(self.n):
            self._send_control(j, wire.GO, count=False)

    def _inflight(self, rounds, sent_bytes) -> dict:
        """The model messages this server sent beyond the workers' rounds of a frozen cut:
        workers that have not computed on them (their files do not count them)."""
        ahead = [j for j in range(self.n) if self.seq_out[j] == rounds[j] + 1]
        payloads = [sent_bytes(j) for j in ahead]
        if any(p is None for p in payloads) or (self.seq_out > np.asarray(rounds) + 1).any():
            raise RunError(f"internal error: server {self.shard}: models sent {self.seq_out.tolist()}"
                           f" beyond the workers' rounds {list(rounds)}")
        return {"inflight_workers": np.array(ahead, dtype=np.int64),
                "inflight_sizes": np.array([p.size for p in payloads], dtype=np.int64),
                "inflight_payloads": np.concatenate(payloads + [np.zeros(0, np.uint8)])}

    def _checkpoint_ranges(self, k):
        """Sharded (sync): every other server writes its file at the step the cut has for
        it, then acknowledges. Server 0 is at step k with either no gradient queued (a
        periodic checkpoint: the others reach k) or all n of step k + 1 (a stop signal after
        models k went out: the others may have applied them and sent models k + 1)."""
        target = k + (1 if self.queued else 0)
        self._ask_ranges(k, {"step": target}, f"(step {target} of their ranges)")

    def _ask_ranges(self, k, ask: dict, which: str):
        """Ask every other server for its file of checkpoint k (``ask``: what it waits for
        first) and wait until each has acknowledged it."""
        for s in self.peers.peers:
            self.peers.send(s, wire.CKPT, k, json.dumps(ask).encode())
        acked = set()

        def ack(s, header, payload):
            if header.kind == wire.ACK and header.version == k:
                acked.add(s)

        self._await_peers(ack, lambda: len(acked) == len(self.peers.peers),
                          f"the checkpoint files of servers {which}")

    def _last_model(self, j) -> np.ndarray:
        """A copy of the model message last sent to worker j (asynchronous: its own buffer)."""
        return self.link.send_buffer(j)[:self.sent_nbytes[j]].copy()

    def _range_checkpoint_due(self) -> bool:
        if self.checkpoint_ask is None:
            return False
        if self.ctx.alg.synchronous:
            return self.state.step >= self.checkpoint_ask[1]
        return bool((self.seq_in == self.checkpoint_ask[1]).all())  # every round's gradient in

    def _range_checkpoint(self):
        """A server s > 0: its file of server 0's checkpoint k, once its range is at the
        cut's step and its models of that step have gone out (their bytes are saved, to be
        sent again on resume), then ACK. Asynchronous: once every worker's gradient of its
        round is in, with the models it sent beyond those rounds (server 0's docstring)."""
        k, step = self.checkpoint_ask
        if not self.ctx.alg.synchronous:
            self._save_range_file(k, {**self._state_arrays(),
                                      **self._inflight(step, self._last_model)})
            return
        if self.state.step != step:
            raise RunError(f"server {self.shard}: asked for checkpoint {k} at step {step} of its "
                           f"range, but it is at step {self.state.step}")
        buf, nbytes = self.link.shared_buffer(), self.broadcast_nbytes
        self._save_range_file(k, {**self._state_arrays(), "sent_model": buf[:nbytes].copy()})

    def _save_range_file(self, k, arrays):
        out = self.ctx.cfg["output"]["dir"]
        try:
            checkpoint.save_arrays(checkpoint.rank_file(out, k, "server", self.shard), arrays)
        except OSError as exc:
            raise checkpoint.write_error(out, k, exc, f"server {self.shard}: ") from None
        self.checkpoint_ask = None
        self.peers.send(0, wire.ACK, k, b"")

    def _resend_saved_model(self, arrays):
        """After a resume: the model message of the cut again, byte for byte, to every
        worker (counted when it first went; the workers expect its sequence number)."""
        saved = arrays["sent_model"]
        buf = self.link.shared_buffer()
        buf[:saved.size] = saved
        now = time.monotonic()
        for j in range(self.n):
            self.link.send_shared(j, saved.size)
            self.gate.sent(j, self.state.step, now)

    def _first_models(self, saved=None):
        """The models of a start, or of a resume (``saved``: the checkpoint's arrays): the
        messages in flight at an asynchronous sharded cut again, byte for byte (counted when
        they first went), then the model to every other worker whose gradient is not queued."""
        again = set()
        if saved is not None and "inflight_workers" in saved:
            ends = np.cumsum(saved["inflight_sizes"])
            now = time.monotonic()
            for j, end, size in zip(saved["inflight_workers"], ends, saved["inflight_sizes"]):
                j = int(j)
                buf = self.link.send_buffer(j)
                buf[:size] = saved["inflight_payloads"][end - size:end]
                self.link.send(j, int(size))
                self.sent_nbytes[j] = size
                self.gate.sent(j, int(self.gate.sent_version[j]), now)
                again.add(j)
        self._send_models([j for j in range(self.n) if j not in self.queued and j not in again])

    def _state_arrays(self) -> dict:
        queued = sorted(self.queued)
        position, metrics_bytes = ({}, b"") if self.metrics is None else self.metrics.position()
        return {
            **checkpoint.state_arrays(self.state, "alg."),
            "counters": np.array([self.counters[k] for k in COUNTERS], dtype=np.int64),
            "epochs": np.array(self.epochs),
            "wall_segments": np.array(self.wall_segments + [time.perf_counter() - self.t_start]),
            "staleness": np.array(sorted(self.staleness.items()), dtype=np.int64).reshape(-1, 2),
            "seq_in": self.seq_in, "seq_out": self.seq_out,
            "sent_version": self.gate.sent_version,
            "queued_workers": np.array(queued, dtype=np.int64),
            "queued_versions": np.array([self.queued[j][0] for j in queued], dtype=np.int64),
            "queued_seqs": np.array([self.queued[j][1].seq for j in queued], dtype=np.int64),
            "queued_sizes": np.array([self.queued[j][1].payload.size for j in queued], np.int64),
            "queued_payloads": np.concatenate([self.queued[j][1].payload for j in queued]
                                              + [np.zeros(0, np.uint8)]),
            "mirrors": self.mirrors,
            "down_rng": checkpoint.rng_state(self.down_rng),
            "metrics": np.array(json.dumps(position)),
            # metrics.jsonl as it was at the cut: a resumed run continues exactly these bytes
            "metrics_bytes": np.frombuffer(metrics_bytes, dtype=np.uint8),
        }

    def _restore(self, step) -> dict:
        out = self.ctx.cfg["output"]["dir"]
        a = checkpoint.load_arrays(checkpoint.rank_file(out, step, "server", self.shard))
        checkpoint.restore_state(self.state, a, "alg.")
        self.counters.update(dict(zip(COUNTERS, (int(v) for v in a["counters"]))))
        self.epochs = float(a["epochs"])
        self.wall_segments = [float(v) for v in a["wall_segments"]]
        self.staleness.update({int(k): int(v) for k, v in a["staleness"]})
        self.seq_in, self.seq_out = a["seq_in"], a["seq_out"]
        self.gate.sent_version[:] = a["sent_version"]
        ends = np.cumsum(a["queued_sizes"])
        for j, v, seq, end, size in zip(a["queued_workers"], a["queued_versions"],
                                        a["queued_seqs"], ends, a["queued_sizes"]):
            msg = steps.decode_message(self.ctx.alg, self.ctx.uplink,
                                       a["queued_payloads"][end - size:end], int(j), int(seq))
            self.queued[int(j)] = (int(v), msg)
        if "mirrors" in a:
            self.mirrors = a["mirrors"]
        checkpoint.set_rng_state(self.down_rng, a["down_rng"])
        if self.metrics is not None:  # (server 0's; the other servers keep no metrics)
            self.metrics.restore(json.loads(str(a["metrics"])), a["metrics_bytes"].tobytes())
        return a

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
