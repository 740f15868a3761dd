"""``rounding``: the deterministic epsilon-compressor ``Q(v) = Delta * round(v / Delta)``.

Khirirat et al. (paper 1, papers.md §A.13) work with compressors whose error is
bounded in absolute terms, ``||Q(v) - v|| <= epsilon`` for every v. Uniform rounding
to the grid ``Delta Z`` (``resolution`` = Delta > 0) has ``|Q(v)_i - v_i| <= Delta / 2``,
hence ``epsilon(d) = sqrt(d) Delta / 2`` (:meth:`Rounding.epsilon`). It is deterministic
and biased (``unbiased = False``). It is no contraction: a coordinate with
``|v_i| <= Delta / 2`` rounds to 0 (error |v_i|) and any other has error
``<= Delta / 2 < |v_i|``, so ``||Q(v) - v||^2 <= ||v||^2`` and this is tight
(v_i = Delta / 2 rounds to 0 with ties to even): ``delta(d) = 1``. Use ``epsilon``,
not ``delta``, to reason about it; error feedback with a delta = 1 compressor has no
contraction to work with.

Notes
-----
``q_i = rint(v_i / Delta)`` (float64, ties to even), which must satisfy
``|q_i| <= 2^31 - 1`` (else ValueError: choose a larger ``resolution``). Zig-zag codes
``c_i = 2 q_i`` (q >= 0) or ``-2 q_i - 1`` (q < 0). Per block (``block_size``; null =
one block) the width ``w_b = bitlen(max_{i in b} c_i)`` in 0..32. Payload: ``nblocks``
width bytes, then every c_i in its block's width, LSB-first, zero-padded to a byte:

    64 + 8 nblocks + 8 ceil(sum_b d_b w_b / 8) bits   (exact; computed from x)

(a fixed width per block rather than zig-zag varints: a varint costs at least 8 bits a
coordinate, while typical gradients need far fewer; a block of zeros costs 0 bits).
Smaller blocks adapt the width to local magnitudes at 8 bits a block. Decoding adds
``weight * (Delta * q_i)``.
"""

from __future__ import annotations

import math

import numpy as np

from .. import kernels
from ..validation import Int, Nullable, Real
from .base import Compressor, check_kernel, register_compressor, resolve_block_size


@register_compressor
class Rounding(Compressor):
    """Deterministic rounding to the grid resolution * Z (epsilon-compressor; biased)."""

    name = "rounding"
    codec_id = 15
    unbiased = False
    # absolute grid steps; the frontier and the tests feed it standard Gaussian vectors
    examples = (
        {"resolution": 0.01, "block_size": 256},
        {"resolution": 1.0}, {"resolution": 0.5}, {"resolution": 0.25}, {"resolution": 0.1},
        {"resolution": 0.01},
        {"resolution": 0.5, "block_size": 16},
    )
    params = {
        "resolution": Real(0.0, None, closed="neither", required=True, doc="the grid step Delta"),
        "block_size": Nullable(Int(1), default=None),
    }

    def _encode(self, x, rng, key):
        d = x.size
        bs = resolve_block_size(self.block_size, d)
        try:
            widths = kernels.rounding_widths(x, bs, self.resolution)
        except ValueError:
            raise ValueError(f"{self.name}: x holds NaN or Inf, or |x_i| / resolution exceeds "
                             f"2^31 - 1 (resolution={self.resolution!r}); use a larger resolution") from None
        out = np.empty(self.nbytes_for_widths(widths, d), dtype=np.uint8)
        kernels.rounding_encode(x, widths, bs, self.resolution, out)
        return out

    def nbytes_for_widths(self, widths: np.ndarray, d: int) -> int:
        """Payload bytes for these block widths: nblocks + ceil(sum_b d_b w_b / 8)."""
        bs = resolve_block_size(self.block_size, d)
        nb = widths.size
        bits = int(widths.astype(np.int64).sum()) * bs
        if nb:
            bits -= int(widths[-1]) * (nb * bs - d)       # the last block may be short
        return nb + -(-bits // 8)

    def _decode_add(self, payload, d, out, weight, key):
        bs = resolve_block_size(self.block_size, d)
        code, where = kernels.rounding_decode_add(np.ascontiguousarray(payload), d, bs,
                                                  self.resolution, out, weight)
        messages = {
            kernels.ERR_WIDTH: f"block {where} has a width byte above 32 or not equal to the bit "
                               "length of its largest code",
            kernels.ERR_SIZE: f"the width bytes imply a payload of {where} bytes, got {payload.size}",
            kernels.ERR_CODE: f"coordinate {where} has the code 2^32 - 1, which encode never writes",
            kernels.ERR_PADDING: "padding bits after the last code are not zero"}
        check_kernel(self.name, code, where, messages)

    def _max_payload_nbytes(self, d):
        nb = kernels.nblocks(d, resolve_block_size(self.block_size, d)) if d else 0
        return nb + -(-32 * d // 8)

    def epsilon(self, d):
        """sqrt(d) * resolution / 2: ||Q(v) - v|| <= epsilon for every v of length d."""
        return math.sqrt(d) * self.resolution / 2.0

    def delta(self, d):
        """1: ||Q(v) - v||^2 <= ||v||^2, tight; rounding is no contraction (see epsilon)."""
        return 1.0
