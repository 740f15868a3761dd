"""``minmax``: per-bucket min-max quantization to 2^b levels, stochastic rounding (unbiased).

As CGX (and Bagua's 8-bit compressor) pack it: per bucket of ``bucket_size`` coordinates
the minimum lo and maximum hi travel as float32, and every coordinate as a b-bit index
n into the grid ``lo + n Delta``, ``Delta = (hi - lo) / (2^b - 1)``, rounded at random to
one of its two neighbours with the probabilities that make it unbiased. Each coordinate's
variance is at most ``Delta^2 / 4``, and ``(hi - lo)^2 <= 2 (lo^2 + hi^2) <= 2 ||x_b||^2``
(lo and hi are coordinates of the bucket; float32 rounding aside), so

    E||C(x) - x||^2 <= d~ / (2 (2^b - 1)^2) ||x||^2,   omega(d) = d~ / (2 (2^b - 1)^2)

with d~ the largest bucket length (attained up to the two end points when b = 1 and the
bucket is {-a, a, 0, ..., 0}). So small buckets are what make few bits work: b = 8 with
d~ = 1024 gives omega = 0.0079; b = 2 needs d~ <= 18 for omega <= 1.

Notes
-----
Payload: ``nbuckets`` pairs (lo, hi) of little-endian float32 (lo rounded down, hi up, so
every coordinate lies inside), then every index in b bits, LSB-first, zero-padded to a
byte: exactly ``64 + 64 nbuckets + 8 ceil(d b / 8)`` bits. A bucket whose coordinates are
all equal sends lo = hi and zero indices. |x_i| beyond float32, NaN and Inf are a
ValueError. Decoding rejects a pair that is not finite or has lo > hi, and non-zero
padding; every b-bit index is a valid level. Details: :mod:`psgd.kernels_ref._lowbit`.
"""

from __future__ import annotations

import numpy as np

from .. import kernels
from ..validation import Int
from .base import Compressor, check_kernel, register_compressor


def _seed(rng) -> int:
    return int(rng.integers(0, 2**64, dtype=np.uint64))


@register_compressor
class MinMax(Compressor):
    """Per-bucket min and max (float32) and b-bit stochastic levels between them (unbiased)."""

    name = "minmax"
    codec_id = 31
    unbiased = True
    examples = (
        {"bits": 8, "bucket_size": 1024}, {"bits": 4, "bucket_size": 128}, {"bits": 1, "bucket_size": 4},
        {"bits": 2, "bucket_size": 16}, {"bits": 3, "bucket_size": 7},
    )
    params = {
        "bits": Int(1, kernels.MINMAX_MAX_BITS, default=8, doc="b: 2^b levels per bucket"),
        "bucket_size": Int(1, default=1024, doc="coordinates per (min, max) pair"),
    }

    def _bucket(self, d):
        return min(self.bucket_size, max(d, 1))

    def _nbytes(self, d):
        return kernels.minmax_nbytes(d, self._bucket(d), self.bits)

    def _encode(self, x, rng, key):
        out = np.empty(self._nbytes(x.size), dtype=np.uint8)
        self._encode_into(x, rng, key, out)
        return out

    def _encode_into(self, x, rng, key, out):
        """Fixed length: write the payload straight into ``out`` (the runtime's send buffer)."""
        try:
            kernels.minmax_encode(x, self._bucket(x.size), self.bits, _seed(rng), out)
        except ValueError:
            raise ValueError(f"{self.name}: x holds NaN or Inf, or |x_i| exceeds float32") from None

    def _decode_add(self, payload, d, out, weight, key):
        code, where = kernels.minmax_decode_add(np.ascontiguousarray(payload), d, self._bucket(d),
                                                self.bits, out, weight)
        messages = {kernels.ERR_SCALE: f"bucket {where} has a min or max that is NaN or Inf, "
                                       "or min > max",
                    kernels.ERR_PADDING: "padding bits after the last index are not zero"}
        check_kernel(self.name, code, where, messages)

    def _payload_nbytes(self, d):
        return self._nbytes(d)

    def _max_payload_nbytes(self, d):
        return self._nbytes(d)

    def omega(self, d):
        """d~ / (2 (2^b - 1)^2), d~ = the largest bucket length (module docstring)."""
        dt = min(self.bucket_size, d)
        return dt / (2.0 * ((1 << self.bits) - 1) ** 2) if dt > 0 else 0.0
