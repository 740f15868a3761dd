"""``bernoulli``: the lazy compressor: send the whole vector with probability p, scaled 1/p.

``C(x) = x / p`` with probability p, else 0. Unbiased, and

    E||C(x) - x||^2 = p (1/p - 1)^2 ||x||^2 + (1 - p) ||x||^2 = (1/p - 1) ||x||^2,

so ``omega = 1/p - 1`` exactly, for every x: the same variance as rand_k with k = p d,
at the same expected cost, but each round is all or nothing (what the "lazy"
aggregation and MARINA-style probabilistic rounds exploit). The coin comes from the
encoder's generator and never travels: the message says which way it fell.

Notes
-----
Payload: nothing (a message of the 8-byte codec header only: 64 bits) or the d values as
little-endian float32 (``64 + 32 d`` bits); the decoder tells them apart by length and
adds ``weight * float64(value) / p``. Expected size ``64 + 32 p d`` bits. A header-only
message is a valid one, so a message cut to its header is indistinguishable from a
skipped round (the envelope's length field, :mod:`psgd.wire`, catches such a cut in
transit); every other truncation is an error. Values that overflow float32, NaN and Inf
are a ValueError (encode) or a WireFormatError (decode).
"""

from __future__ import annotations

import numpy as np

from ..validation import Real
from .base import Compressor, register_compressor, wire_error


@register_compressor
class Bernoulli(Compressor):
    """All coordinates with probability p (scaled 1/p), else a header-only message."""

    name = "bernoulli"
    codec_id = 32
    unbiased = True
    header_only_valid = True
    examples = ({"p": 0.5}, {"p": 0.1}, {"p": 1.0}, {"p": 0.9})
    params = {"p": Real(0.0, 1.0, closed="right", required=True,
                        doc="probability of sending (omega = 1/p - 1)")}

    def _encode(self, x, rng, key):
        # always draw, so the generator advances the same way whatever the outcome
        if rng.random() >= self.p:
            return np.empty(0, dtype=np.uint8)
        with np.errstate(over="ignore", invalid="ignore"):
            values = x.astype("<f4")
        if not np.isfinite(values).all():
            raise ValueError(f"{self.name}: x holds NaN or Inf, or a value overflows float32")
        return values.view(np.uint8)

    def _decode_add(self, payload, d, out, weight, key):
        if payload.size == 0:
            return
        if payload.size != 4 * d:
            raise wire_error(self.name, f"payload is {payload.size} bytes, expected 0 (not sent) "
                                        f"or {4 * d} (d float32 values)")
        values = np.frombuffer(payload, dtype="<f4", count=d)
        if not np.isfinite(values).all():
            raise wire_error(self.name, "payload holds NaN or Inf")
        scaled = values.astype(out.dtype)        # scale in out's precision, not float32
        scaled *= weight / self.p
        out += scaled

    def _max_payload_nbytes(self, d):
        return 4 * d

    def omega(self, d):
        """1/p - 1, attained by every x."""
        return 1.0 / self.p - 1.0

    def expected_payload_bits(self, d: int) -> float:
        return 32.0 * self.p * d
