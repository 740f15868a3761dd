"""``cast``: every coordinate as a 16-bit float (fp16 or bf16), 16 bits per coordinate.

The format (``format``) has m mantissa bits (fp16: 10, bf16: 7). ``rounding: nearest``
is IEEE round-to-nearest-even (what ``x.astype(np.float16)`` does): deterministic and
biased, with ``|C(x)_i - x_i| <= 2^(-m-1) |x_i|`` for coordinates in the format's normal
range, hence ``delta = 2^(-2m-2)`` (fp16: 2^-22, bf16: 2^-16). ``rounding: stochastic``
rounds |x_i| up to the next format value with probability (distance to the lower one) /
(spacing), keeping the sign: unbiased (exactly, for float32 input), with per-coordinate
variance ``f (1 - f) ulp^2 <= ulp^2 / 4 <= 2^(-2m-2) x_i^2``, hence ``omega = 2^(-2m-2)``.

Both bounds hold for vectors whose nonzero coordinates are at least the format's smallest
normal value (fp16: 2^-14 ~ 6.1e-5, bf16: 2^-126). Below it the spacing is fixed
(fp16: 2^-24) and the error is bounded in absolute terms only: at most half (nearest)
or all (stochastic, as variance ulp^2 / 4) of 2^(emin - m) per coordinate. fp16 gradients
with many coordinates below 6e-5 lose them (the reason mixed-precision training scales
the loss); bf16 keeps float32's range and has no such problem.

Notes
-----
Payload: d little-endian uint16 codes (IEEE binary16 or bfloat16 bit patterns), exactly
``64 + 16 d`` bits. Coordinates with |x_i| above the format's largest finite value
(fp16: 65504), NaN and Inf are a ValueError (so no rounding overflows). Decoding
rejects Inf/NaN patterns (exponent field all ones). Rounding details and the random
stream: :mod:`psgd.kernels_ref._lowbit`.
"""

from __future__ import annotations

import numpy as np

from .. import kernels
from ..validation import Choice
from .base import Compressor, check_kernel, register_compressor, wire_error

_FORMATS = {"fp16": kernels.CAST_FP16, "bf16": kernels.CAST_BF16}


@register_compressor
class Cast(Compressor):
    """Every coordinate as fp16 or bf16 (16 bits), rounded to nearest or stochastically."""

    name = "cast"
    codec_id = 30
    examples = (
        {"format": "bf16", "rounding": "stochastic"}, {"format": "fp16", "rounding": "stochastic"},
        {"format": "fp16"}, {"format": "bf16"},
    )
    params = {
        "format": Choice("fp16", "bf16", default="bf16",
                         doc="fp16: IEEE half (10-bit mantissa, |x| <= 65504); bf16: bfloat16 "
                             "(7-bit mantissa, float32's range)"),
        "rounding": Choice("nearest", "stochastic", default="nearest",
                           doc="nearest: deterministic, biased (delta); stochastic: unbiased (omega)"),
    }

    # unbiasedness depends on the rounding: an instance attribute, set from the config
    unbiased = False

    def _check_params(self):
        self.unbiased = self.rounding == "stochastic"

    def _mantissa_bits(self) -> int:
        return kernels.CAST_FORMATS[_FORMATS[self.format]][0]

    def _encode(self, x, rng, key):
        out = np.empty(2 * x.size, dtype=np.uint8)
        self._encode_into(x, rng, key, out)
        return out

    def _encode_into(self, x, rng, key, out):
        """Fixed length: write the payload straight into ``out`` (the runtime's send buffer)."""
        stochastic = self.rounding == "stochastic"
        seed = int(rng.integers(0, 2**64, dtype=np.uint64)) if stochastic else 0
        try:
            kernels.cast_encode(x, _FORMATS[self.format], stochastic, seed, out)
        except ValueError:
            top = kernels.CAST_FORMATS[_FORMATS[self.format]][2]
            raise ValueError(f"{self.name}: x holds NaN or Inf, or |x_i| > {top:.6g}, the largest "
                             f"{self.format} value") from None

    def _decode_add(self, payload, d, out, weight, key):
        code, where = kernels.cast_decode_add(np.ascontiguousarray(payload), d,
                                              _FORMATS[self.format], out, weight)
        if code == kernels.ERR_VALUE:
            raise wire_error(self.name, f"coordinate {where} is an Inf or NaN {self.format} code")
        check_kernel(self.name, code, where)

    def _payload_nbytes(self, d):
        return 2 * d

    def _max_payload_nbytes(self, d):
        return 2 * d

    def omega(self, d):
        """2^(-2m-2) for stochastic rounding (normal-range coordinates; module docstring)."""
        if not self.unbiased:
            return super().omega(d)
        return 2.0 ** (-2 * self._mantissa_bits() - 2)

    def delta(self, d):
        """2^(-2m-2) for rounding to nearest (normal-range coordinates; module docstring)."""
        if self.unbiased:
            return super().delta(d)
        return 2.0 ** (-2 * self._mantissa_bits() - 2)
