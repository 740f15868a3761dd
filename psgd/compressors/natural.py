"""``natural`` and ``natural_dithering`` (Horvath et al., natural compression; papers.md §A.8-A.9).

``natural``: every coordinate t is rounded at random to one of the two powers of two
around it, ``2^floor(log2|t|)`` or ``2^ceil(log2|t|)``, with the probabilities that make
it unbiased, keeping its sign. The relative variance of one coordinate is at most 1/8
(attained at |t| = (4/3) 2^a), so ``omega = 1/8``.

``natural_dithering``: per block (``block_size``; null = one block) with scale
t = ||x_b||_p (``norm`` "2" or "inf"), the coordinates |x_j|/t in [0, 1] are rounded at
random to the adjacent levels of {0, 2^(1-s), ..., 1/2, 1} (s = ``levels``), keeping
the sign; unbiased. ``omega(d) = 1/8 + d~^(1/r) 2^(1-s) min(1, d~^(1/r) 2^(1-s))`` with
r = min(p, 2) = 2 for both norms and d~ the largest block length (papers.md §A.9):
the 1/8 is natural compression of the coordinates above 2^(1-s); the rest bounds the
coordinates below it by ``t 2^(1-s) ||x_b||_1 <= 2^(1-s) sqrt(d~) ||x_b||^2`` and by
``d~ (2^(1-s) t)^2 / 4``.

Notes
-----
``natural`` payload: d exponent-code bytes, then d sign bits (LSB-first, zero-padded):
exactly ``64 + 8 (d + ceil(d/8))`` bits, i.e. 9 bits per coordinate (1 sign + 8
exponent). Code c > 0 means ``2^(c - 127)``, c = 0 means zero:

* float32 input: c = the exponent field E of x, plus 1 with probability
  mantissa / 2^23 (so exact powers of two are sent exactly);
* zero (either sign) sends c = 0 with sign bit 0;
* subnormals (|t| < 2^-126) go to 0 or 2^-126 with probability |t| / 2^-126: unbiased,
  but their relative variance is not bounded by 1/8 (the absolute variance is at most
  2^-254 per coordinate): ``omega = 1/8`` holds for vectors of normal floats;
* the largest exponent (|t| in [2^127, 2^128)) may round up to c = 255, which stands
  for 2^128 (beyond float32: adding it into a float32 ``out`` gives inf);
* float64 input is handled the same way on its own exponent; |t| >= 2^128 (and NaN
  or Inf) is a ValueError.

``natural_dithering`` payload: ``nblocks`` float32 scales (the norm rounded UP to
float32, :func:`psgd.kernels.block_scales`), then ``b = 1 + ceil(log2(s + 1))`` bits per
coordinate, the code ``sign + 2 l`` with level index l in 0..s (0: zero, l: 2^(l-s)),
LSB-first: exactly ``64 + 32 nblocks + 8 ceil(d b / 8)`` bits.

``levels`` goes up to 255 (:data:`psgd.kernels.NATDITHER_MAX_LEVELS`): the nonzero levels
2^(1-s), ..., 1 then reach 2^-254, the ratio of the smallest normal float32 to the largest,
so with s = 255 no normal float32 coordinate falls below the lowest nonzero level of any
float32 scale; more levels would only add levels no float32 ratio can reach. s <= 127 are
8-bit codes (b <= 8; the former limit of 127 was a lookup-table size and a one-byte
code, not a numerical bound); 128 <= s <= 255 use 9-bit codes in the same layout, so the
existing level counts' bytes are unchanged (the golden files check it). (papers.md quotes
``d (1 + ceil(log2 s))``; with the zero level there are s + 1 level values, hence
``ceil(log2(s + 1))``.) Rounding details: :mod:`psgd.kernels_ref`.
"""

from __future__ import annotations

import math

import numpy as np

from .. import kernels
from ..validation import Choice, Int, Nullable
from .base import Compressor, check_kernel, register_compressor, resolve_block_size, wire_error

_NORM_CODES = {"2": kernels.NORM_2, "inf": kernels.NORM_INF}


def _seed(rng) -> int:
    return int(rng.integers(0, 2**64, dtype=np.uint64))


@register_compressor
class Natural(Compressor):
    """Natural compression: random rounding to a power of two, 9 bits per coordinate."""

    name = "natural"
    codec_id = 13
    unbiased = True
    examples = ({},)
    params = {}

    def _encode(self, x, rng, key):
        out = np.empty(kernels.natural_nbytes(x.size), dtype=np.uint8)
        self._encode_into(x, rng, key, out)
        return out

    def _encode_into(self, x, rng, key, out):
        """Fixed length: write the payload straight into ``out`` (the runtime's send buffer)."""
        try:
            kernels.natural_encode(x, _seed(rng), out)
        except ValueError:
            raise ValueError(f"{self.name}: x holds NaN or Inf, or |x_i| >= 2^128") from None

    def _decode_add(self, payload, d, out, weight, key):
        with np.errstate(over="ignore"):      # 2^128 into float32 is inf, as documented
            code, where = kernels.natural_decode_add(np.ascontiguousarray(payload), d, out, weight)
        if code == kernels.ERR_SIGN:
            raise wire_error(self.name, f"coordinate {where} is zero with its sign bit set")
        if code == kernels.ERR_PADDING:
            raise wire_error(self.name, "padding bits after the last sign are not zero")
        check_kernel(self.name, code, where)

    def _payload_nbytes(self, d):
        return kernels.natural_nbytes(d)

    def _max_payload_nbytes(self, d):
        return kernels.natural_nbytes(d)

    def omega(self, d):
        """1/8 (for vectors of normal floats; see the module Notes on subnormals)."""
        return 0.125


@register_compressor
class NaturalDithering(Compressor):
    """Natural dithering: levels {0, 2^(1-s), ..., 1} of the block norm (unbiased)."""

    name = "natural_dithering"
    codec_id = 14
    unbiased = True
    examples = (
        {"levels": 8, "block_size": 1024}, {"levels": 2}, {"levels": 4},
        {"levels": 3, "norm": "inf"}, {"levels": 8, "block_size": 32},
        {"levels": 255, "block_size": 64}, {"levels": 128, "norm": "inf"},
    )
    params = {
        "levels": Int(1, kernels.NATDITHER_MAX_LEVELS, default=8,
                      doc="s: the levels are 0 and 2^(1-s), ..., 1/2, 1"),
        "norm": Choice("2", "inf", default="2"),
        "block_size": Nullable(Int(1), default=None),
    }

    def _nbytes(self, d):
        return kernels.natdither_nbytes(d, resolve_block_size(self.block_size, d), self.levels)

    def _encode(self, x, rng, key):
        out = np.empty(self._nbytes(x.size), dtype=np.uint8)
        self._encode_into(x, rng, key, out)
        return out

    def _encode_into(self, x, rng, key, out):
        """Fixed length: write the payload straight into ``out`` (the runtime's send buffer)."""
        bs = resolve_block_size(self.block_size, x.size)
        scales = kernels.block_scales(x, bs, _NORM_CODES[self.norm])
        if not np.isfinite(scales).all():
            raise ValueError(f"{self.name}: x holds NaN or Inf, or a block's {self.norm}-norm "
                             "overflows float32")
        kernels.natdither_encode(x, scales, bs, self.levels, _seed(rng), out)

    def _decode_add(self, payload, d, out, weight, key):
        bs = resolve_block_size(self.block_size, d)
        code, where = kernels.natdither_decode_add(np.ascontiguousarray(payload), d, bs,
                                                   self.levels, out, weight)
        messages = {kernels.ERR_SCALE: f"scale of block {where} is negative, NaN or Inf",
                    kernels.ERR_LEVEL: f"coordinate {where} has a level above levels={self.levels}",
                    kernels.ERR_SIGN: f"coordinate {where} has level 0 with its sign bit set",
                    kernels.ERR_PADDING: "padding bits after the last symbol are not zero"}
        check_kernel(self.name, code, where, messages)

    def _payload_nbytes(self, d):
        return self._nbytes(d)

    def _max_payload_nbytes(self, d):
        return self._nbytes(d)

    def omega(self, d):
        """1/8 + sqrt(d~) 2^(1-s) min(1, sqrt(d~) 2^(1-s)) (r = min(p, 2) = 2 for p in {2, inf})."""
        dt = min(self.block_size or d, d)
        if dt <= 0:
            return 0.0
        a = math.sqrt(dt) * 2.0 ** (1 - self.levels)
        return 0.125 + a * min(1.0, a)
