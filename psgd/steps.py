"""The message path as plain functions: what a worker sends, what the server makes of it.

The MPI loops (psgd.server.loop, psgd.workers.loop) and the in-process tests call exactly
these, so an algorithm or a compressor can be checked end to end without MPI::

    worker:  n = worker_step(alg, uplink, ws, grad, j, seq, rng, out)   # bytes in out[:n]
    server:  msg = decode_message(alg, uplink, out[:n], j, seq)          # a Message
             alg.server_apply(ss, [msg, ...], prox)                      # in worker order

``seq`` is the worker's message count: it keys the shared-seed compressors' streams and
MARINA's exact-round coin on both ends, so neither travels.
"""

from __future__ import annotations

import numpy as np

from .algorithms import Message
from .compressors import get_compressor

#: how an algorithm's exact rounds travel (MARINA's full gradients)
EXACT = {"name": "identity", "dtype": "float64"}


class Uplink:
    """How worker messages are coded: the run's compressor (or exact float64 on an
    algorithm's full rounds), the shared-seed keys, and the algorithm's message scale."""

    def __init__(self, compressor, alg, streams, d: int):
        self.compressor = compressor
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
        """The (seed, worker, seq) stream shared-seed compressors use on both ends."""
        return self.streams.shared_key(j, seq) if codec.shared_randomness else None

    def scaled(self, y: np.ndarray) -> np.ndarray:
        """The one place the algorithm's message scale is applied (worker and server alike)."""
        if self.scale != 1.0:
            y *= self.scale
        return y


def worker_step(alg, uplink: Uplink, ws, grad, j: int, seq: int, rng, out: np.ndarray) -> int:
    """Gradient -> the algorithm's vector -> bytes in ``out``; return their number.

    An algorithm that keeps a memory in step with the server (DIANA's shift, EF's error)
    needs the decoded message: encode and decode once. Otherwise the code goes straight
    into ``out`` (the send buffer) with no decode and no temporary.
    """
    full = alg.full_message(seq)
    v = alg.worker_vector(ws, grad, full)
    codec = uplink.codec(full)
    key = uplink.key(codec, j, seq)
    if not alg.needs_decoded:
        return codec.encode_into(v, rng, out, key=key)
    buf, y = codec.encode_decode(v, rng, key=key)
    alg.worker_update(ws, v, uplink.scaled(y))
    out[:buf.size] = buf
    return buf.size


def decode_message(alg, uplink: Uplink, payload, j: int, seq: int) -> Message:
    """Worker j's ``seq``-th message as the server applies it (raises WireFormatError)."""
    full = alg.full_message(seq)
    codec = uplink.codec(full)
    y = codec.decode(payload, key=uplink.key(codec, j, seq), d=uplink.d)
    return Message(j, uplink.scaled(y), full)
