"""``sign``: scaled sign compression, one bit per coordinate (biased).

Per block b of d_b coordinates (``block_size``; null = one block):
``C(x)_b = (||x_b||_1 / d_b) sign(x_b)``. Expanding the square with s_j x_j = |x_j|,

    ||C(x)_b - x_b||^2 = ||x_b||^2 - ||x_b||_1^2 / d_b <= (1 - 1/d_b) ||x_b||^2,

because ||x_b||_1 >= ||x_b||_2. Hence ``delta(d) = 1 - 1/d~`` with d~ the largest block
length, attained by a block with one nonzero (x = e_1). The l1 scale is the one that
minimizes the error for the given signs, which is what makes this a contraction for
every x (the unscaled sign is not). The per-coordinate sign is the IEEE sign bit, so
a zero coordinate decodes to +scale (or -scale for -0.0): the error formula holds
either way since it only uses s_j x_j = |x_j|.

Notes
-----
Payload: ``nblocks`` little-endian float32 scales ``m_b = ||x_b||_1 / d_b`` (summed in
float64, rounded to nearest float32; the exact summation order is in
:mod:`psgd.kernels_ref`), then one sign bit per coordinate, LSB-first, 1 = negative,
zero-padded to a byte. A message is exactly ``64 + 32 nblocks + 8 ceil(d / 8)`` bits.
Rounding the scale to float32 raises the error by at most ``d_b m_b^2 2^-48 <=
2^-48 ||x_b||^2``: ``||C(x) - x||^2 <= (delta + 2^-48) ||x||^2`` on every input.
"""

from __future__ import annotations

import numpy as np

from .. import kernels
from ..validation import Int, Nullable
from .base import Compressor, check_kernel, register_compressor, resolve_block_size, wire_error


@register_compressor
class Sign(Compressor):
    """Scaled sign per block: 1 bit per coordinate + one float32 scale per block."""

    name = "sign"
    codec_id = 12
    unbiased = False
    examples = ({}, {"block_size": 16})
    params = {"block_size": Nullable(Int(1), default=None, doc="null: one block")}

    def _encode(self, x, rng, key):
        out = np.empty(self._payload_nbytes(x.size), dtype=np.uint8)
        self._encode_into(x, rng, key, out)
        return out

    def _encode_into(self, x, rng, key, out):
        """Fixed length: write the payload straight into ``out`` (the runtime's send buffer)."""
        bs = resolve_block_size(self.block_size, x.size)
        try:
            kernels.sign_encode(x, bs, out)
        except ValueError:
            raise ValueError(f"{self.name}: x holds NaN or Inf, or a block's mean |x| "
                             "overflows float32") from None

    def _decode_add(self, payload, d, out, weight, key):
        bs = resolve_block_size(self.block_size, d)
        code, where = kernels.sign_decode_add(np.ascontiguousarray(payload), d, bs, out, weight)
        if code == kernels.ERR_SCALE:
            raise wire_error(self.name, f"scale of block {where} is negative, NaN or Inf")
        if code == kernels.ERR_PADDING:
            raise wire_error(self.name, "padding bits after the last sign are not zero")
        check_kernel(self.name, code, where)

    def _payload_nbytes(self, d):
        return kernels.sign_nbytes(d, resolve_block_size(self.block_size, d))

    def _max_payload_nbytes(self, d):
        return self._payload_nbytes(d)

    def delta(self, d):
        """1 - 1/d~, d~ = the largest block length (module docstring)."""
        dt = min(self.block_size or d, d)
        return 1.0 - 1.0 / dt if dt > 0 else 0.0
