"""The message path as plain functions: what a worker sends, what the server makes of it.

The MPI loops (psgd.server.loop, psgd.workers.loop) and the in-process tests call exactly
these, so an algorithm or a compressor can be checked end to end without MPI::

    worker:  n = worker_step(alg, uplink, ws, grad, j, seq, rng, out)   # bytes in out[:n]
    server:  msg = decode_message(alg, uplink, out[:n], j, seq)          # a Received message
             alg.server_apply(ss, [msg, ...], prox)                      # in worker order

A received message is decoded when it is applied, straight into the vector that needs it
(``msg.add_to(out, w)`` is one fused decode-and-accumulate pass, no d-sized temporary),
and in worker order, so the result never depends on arrival order.

``seq`` is the worker's message count: it keys the shared-seed compressors' streams and
MARINA's exact-round coin on both ends, so neither travels.
"""

from __future__ import annotations

import numpy as np

from .compressors import get_compressor
from .errors import WireFormatError

#: how an algorithm's exact rounds travel (MARINA's full gradients)
EXACT = {"name": "identity", "dtype": "float64"}
#: the stand-in worker index of the stream that all workers share at a step (no worker has it)
CORRELATED = 2**32


class Uplink:
    """How worker messages are coded: the run's compressor (or exact float64 on an
    algorithm's full rounds), the shared-seed keys, and the algorithm's message scale."""

    def __init__(self, compressor, alg, streams, d: int, shard: int = 0):
        self.compressor = compressor
        self.shard = shard
        self.exact = get_compressor(EXACT) if alg.sends_full else None
        self.scale = alg.hyper.message_scale
        self.streams = streams
        self.d = d

    def max_nbytes(self) -> int:
        """The largest message any round can produce (receive buffers are this big)."""
        n = self.compressor.max_nbytes(self.d)
        return n if self.exact is None else max(n, self.exact.max_nbytes(self.d))

    def codec(self, full: bool):
        return self.exact if full else self.compressor

    def key(self, codec, j: int, seq: int):
        """The (seed, worker, seq) stream shared-seed compressors use on both ends.

        A correlated compressor (perm_k) needs one stream for all workers at a step, the
        same on every worker and the server: (seed, CORRELATED, seq), plus the worker index."""
        if not codec.shared_randomness:
            return None
        if getattr(codec, "correlated", False):
            return codec.worker_key(self.streams.shared_key(CORRELATED, seq, self.shard), j)
        return self.streams.shared_key(j, seq, self.shard)

    def scaled(self, y: np.ndarray) -> np.ndarray:
        """The one place the algorithm's message scale is applied (worker and server alike)."""
        if self.scale != 1.0:
            y *= self.scale
        return y

    def decode_add(self, payload, out: np.ndarray, weight: float, j: int, seq: int,
                   full: bool) -> None:
        """out += weight * (the scaled decoded message), in one pass (raises WireFormatError)."""
        codec = self.codec(full)
        codec.decode_add(payload, out, weight * self.scale, key=self.key(codec, j, seq))


class Received:
    """Worker j's ``seq``-th message as the server holds it until an update applies it."""

    __slots__ = ("worker", "seq", "full", "payload", "uplink")

    def __init__(self, uplink: Uplink, payload, worker: int, seq: int, full: bool):
        self.uplink = uplink
        self.payload = np.array(payload, dtype=np.uint8)  # a copy: the receive buffer is reused
        self.worker, self.seq, self.full = worker, seq, full

    def add_to(self, out: np.ndarray, weight: float = 1.0) -> None:
        """out += weight * message (raises WireFormatError for bytes encode did not produce)."""
        self.uplink.decode_add(self.payload, out, weight, self.worker, self.seq, self.full)

    def write_to(self, out: np.ndarray) -> None:
        out.fill(0.0)
        self.add_to(out)

    @property
    def y(self) -> np.ndarray:
        """The decoded message as a new vector."""
        out = np.empty(self.uplink.d)
        self.write_to(out)
        return out


def worker_step(alg, uplink: Uplink, ws, grad, j: int, seq: int, rng, out: np.ndarray) -> int:
    """Gradient -> the algorithm's vector -> bytes in ``out``; return their number."""
    return worker_step_sharded(alg, [uplink], [slice(None)], ws, grad, j, seq, rng, [out])[0]


def worker_step_sharded(alg, uplinks, ranges, ws, grad, j, seq, rng, outs) -> list:
    """The same, one message per key range (``ranges``: slices of the vector), each in its
    ``outs`` buffer with its own codec header; return the messages' sizes.

    The code goes straight into the send buffer. An algorithm that keeps a memory in step
    with the server (DIANA's shift, EF's error) also needs the decoded message: it is decoded
    from that buffer straight into the memory when that only moves by a multiple of it
    (``alg.memory_step``: DIANA, the same ``decode_add`` the server runs on its copy), else
    into one reused work vector (zeros plus ``decode_add``, which is what ``decode``
    computes, so the values are the same), with no d-sized temporaries a step.
    """
    full = alg.full_message(seq)
    v = alg.worker_vector(ws, grad, full)
    memory = alg.memory_step(ws) if alg.needs_decoded else None
    y = alg.work("decoded", v.size) if alg.needs_decoded and memory is None else None
    sizes = []
    for uplink, part, out in zip(uplinks, ranges, outs):
        codec = uplink.codec(full)
        key = uplink.key(codec, j, seq)
        n = codec.encode_into(v[part], rng, out, key=key)
        sizes.append(n)
        if memory is not None:  # memory += weight * y, as the server's Received.add_to does
            mem, weight = memory
            uplink.decode_add(out[:n], mem[part], weight, j, seq, full)
        elif y is not None:
            decoded = y[part]
            decoded.fill(0.0)
            codec.decode_add(out[:n], decoded, 1.0, key=key)
            uplink.scaled(decoded)
    if y is not None:
        alg.worker_update(ws, v, y)
    return sizes


def decode_message(alg, uplink: Uplink, payload, j: int, seq: int) -> Received:
    """Worker j's ``seq``-th message as the server applies it (decoded when applied)."""
    return Received(uplink, payload, j, seq, alg.full_message(seq))


class Rounds:
    """One rank's side of a multi-round compressor's steps (``codec.rounds`` > 1: powersgd).

    A step is R rounds. In each, every worker sends one message (envelope kind GRAD, the
    same model version, its next sequence number); after every round but the last the
    server reduces the n messages, in worker order, into one reply that goes to every
    worker (kind ROUND), which the workers answer. The last round's reduction is the step's
    aggregate ``sum_i w_i y_i`` of the workers' decoded messages y_i in factored form: the
    server applies it (``alg.apply_total``) and sends those same bytes as the model message,
    and every worker rebuilds the aggregate from them and replays the same update on its
    own copy of the server state. So the model never travels, every rank computes the same
    model from the same bytes, and the codec's memory (``state``: powersgd's warm start)
    is the same everywhere.

    The loops call :meth:`first` (a worker's gradient), :meth:`answer` (a ROUND reply),
    :meth:`reduce` (the server: an inner round's reply), :meth:`server_apply` (the last
    round) and :meth:`encode` / :meth:`apply` in place of the downlink's. Only synchronous
    runs with one server and no checkpoints use it (config validation refuses the rest).
    """

    def __init__(self, codec, alg, d: int, seed: int, prox):
        self.codec, self.alg, self.d, self._prox = codec, alg, d, prox
        self.state = codec.round_state(d, seed)
        self.round = 0          # of the step under way
        self.v = None           # a worker: the algorithm's vector of the step under way
        self.final = None       # the server: its last reduction (the next model message)
        self.replica = None     # a worker: its copy of the server state

    @property
    def inner(self) -> bool:
        """Whether the round whose messages are arriving has a reply before the update."""
        return self.round < self.codec.rounds - 1

    # -- worker ----------------------------------------------------------------------

    def first(self, ws, grad, out: np.ndarray) -> int:
        """A worker's first message of a step, for its gradient, into ``out``."""
        self.v = self.alg.worker_vector(ws, grad)
        self.round = 0
        return self._put(self.codec.worker_round(self.state, 0, self.v, None, self.d), out)

    def answer(self, ws, reply, out: np.ndarray) -> int:
        """A worker's message answering the server's reply; after the last, its memory moves
        by its own decoded message (raises WireFormatError for a bad reply)."""
        if self.v is None or not self.inner:
            raise WireFormatError("a ROUND message when no round was awaited")
        self.round += 1
        buf = self.codec.worker_round(self.state, self.round, self.v, reply, self.d)
        if not self.inner:
            self.alg.worker_update(ws, self.v, self.codec.worker_decoded(self.state, buf, self.d))
            self.v = None
        return self._put(buf, out)

    def apply(self, payload, x: np.ndarray) -> np.ndarray:
        """A worker's model after the server's model message: the first (header only) is
        the start x0, every later one the aggregate to replay (raises WireFormatError)."""
        if self.replica is None:
            self.codec.read_factors(payload, self.d, 0)
            self.replica = self.alg.server_init(x)
            return self.replica.x
        total = self.codec.final_total(self.state, payload, self.d)
        self.alg.apply_total(self.replica, total, self._prox)
        return self.replica.x

    # -- server ----------------------------------------------------------------------

    def reduce(self, batch) -> np.ndarray:
        """The server's reply to the round of ``batch`` (every worker's message, in worker
        order). A malformed message raises WireFormatError with its ``worker`` set."""
        values = []
        for msg in batch:
            try:
                values.append(self.codec.round_values(self.round, msg.payload, self.d))
            except WireFormatError as exc:
                exc.worker = msg.worker
                raise
        reply = self.codec.server_round(self.state, self.round, values,
                                        self.alg.weights[[m.worker for m in batch]], self.d)
        self.round += 1
        return reply

    def server_apply(self, ss, batch, prox) -> None:
        """The last round: its reduction is the aggregate; apply it as every worker will."""
        self.final = self.reduce(batch)
        self.round = 0
        self.alg.apply_total(ss, self.codec.final_total(self.state, self.final, self.d), prox)

    def encode(self, x, mirror, rng, out: np.ndarray) -> int:
        """The model message (the downlink's signature): the last reduction, or at the start
        no payload (every rank builds x0 itself)."""
        buf = self.codec.framed(np.zeros(0, np.uint8), self.d) if self.final is None \
            else self.final
        return self._put(buf, out)

    @staticmethod
    def _put(buf, out) -> int:
        out[:buf.size] = buf
        return buf.size


def rounds_for(ctx):
    """A fresh :class:`Rounds` for one rank of the run, or None for one-round compressors."""
    codec = ctx.uplink.compressor
    return None if codec.rounds == 1 else Rounds(codec, ctx.alg, ctx.d, ctx.cfg["seed"], ctx.prox)
