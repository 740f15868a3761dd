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

    An algorithm that keeps a memory in step with the server (DIANA's shift, EF's error)
    needs the decoded message: encode and decode once. Otherwise the code goes straight
    into the send buffer with no decode and no temporary.
    """
    full = alg.full_message(seq)
    v = alg.worker_vector(ws, grad, full)
    y = np.empty_like(v) if alg.needs_decoded else None
    sizes = []
    for uplink, part, out in zip(uplinks, ranges, outs):
        codec = uplink.codec(full)
        key = uplink.key(codec, j, seq)
        if y is None:
            sizes.append(codec.encode_into(v[part], rng, out, key=key))
            continue
        buf, decoded = codec.encode_decode(v[part], rng, key=key)
        y[part] = uplink.scaled(decoded)
        out[:buf.size] = buf
        sizes.append(buf.size)
    if y is not None:
        alg.worker_update(ws, v, y)
    return sizes


def decode_message(alg, uplink: Uplink, payload, j: int, seq: int) -> Received:
    """Worker j's ``seq``-th message as the server applies it (decoded when applied)."""
    return Received(uplink, payload, j, seq, alg.full_message(seq))
