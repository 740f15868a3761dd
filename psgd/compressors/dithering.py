"""``random_dithering``: QSGD / DIANA p-quantization with s levels and blocks (papers.md §A.5-A.7).

Each block of ``block_size`` coordinates (null: the whole vector) is scaled by its
norm t (``norm``: "2" or "inf") and every coordinate is rounded at random to one of
the s+1 levels ``{0, t/s, ..., t}``, keeping its sign, so that E C(x) = x. With
``levels: 1`` and ``norm: inf`` this is TernGrad; with ``norm: 2`` it is 1-bit QSGD
and DIANA's 2-quantization.

Notes
-----
Payload (after the 8-byte codec header), ``encoding: dense``: ``nblocks`` float32
block scales (little-endian), then the symbols of all d coordinates as one stream:
for s = 1, 5 trits per byte (1.6 bits/coordinate); for s > 1,
``1 + ceil(log2(s+1))`` bits per coordinate (sign bit, then the level, LSB-first).
The exact rounding, random numbers and bit layout are defined in
:mod:`psgd.kernels_ref`; the payload length is fixed by (d, block_size, levels).

``encoding: elias`` (QSGD's code; papers.md §A.0): the same levels and signs (one seed
gives the same C(x) under both encodings), sent sparsely: the ``nblocks`` float32
scales, then one MSB-first bit stream ``omega(nnz + 1)`` followed, for every nonzero
coordinate in index order, by ``omega(gap to the previous nonzero, 1 for index 0)``,
a sign bit and ``omega(level)``, zero-padded to a byte (omega = Elias omega). A message
is exactly ``64 + 32 nblocks + 8 ceil(S / 8)`` bits with ``S = omega(nnz + 1) +
sum_i (omega(gap_i) + 1 + omega(level_i))`` (details: :mod:`psgd.kernels_ref`,
"Elias-omega random dithering"). With ``levels`` = sqrt(d) (one block, norm 2) that is
about 2.8 bits per coordinate (QSGD Cor. 3.3; measured 2.76 at d = 10^6).
"""

from __future__ import annotations

import math

import numpy as np

from .. import kernels
from ..validation import Choice, Int, Nullable
from .base import Compressor, register_compressor, resolve_block_size, wire_error

_NORM_CODES = {"2": kernels.NORM_2, "inf": kernels.NORM_INF}


@register_compressor
class RandomDithering(Compressor):
    """Random dithering with ``levels`` levels per block (unbiased).

    Parameters: ``levels`` (s >= 1), ``norm`` ("2" or "inf"), ``block_size``
    (null = one block) and ``encoding`` ("dense": fixed length; "elias": Elias-omega
    coded nonzeros, variable length).
    """

    name = "random_dithering"
    codec_id = 2
    unbiased = True
    examples = (
        # the frontier's curve (norm 2, one block, dense), levels 4 with blocks as in QSGD
        {"levels": 1}, {"levels": 2}, {"levels": 4, "block_size": 4096}, {"levels": 8},
        {"levels": 16},
        {"levels": 1, "norm": "inf"},                       # TernGrad
        {"levels": 5, "block_size": 16},                    # short blocks, b = 4 bits
        {"levels": 3, "encoding": "elias"},
        {"levels": 1, "norm": "inf", "block_size": 8, "encoding": "elias"},
        # s = round(sqrt(d)) at d = 10^7, QSGD's Corollary 3.3 regime for the Elias code
        {"levels": 3162, "encoding": "elias"},
    )
    params = {
        "levels": Int(1, kernels.MAX_LEVELS, default=1,
                      doc="s, the number of nonzero levels; symbols must fit in 32 bits"),
        "norm": Choice("2", "inf", default="2"),
        "block_size": Nullable(Int(1), default=None),
        "encoding": Choice("dense", "elias", default="dense"),
    }

    # -- codec ------------------------------------------------------------------

    def _encode(self, x, rng, key):
        if self.encoding == "elias":
            return self._encode_elias(x, rng)
        return self._encode_dense(x, rng)

    def _decode_add(self, payload, d, out, weight, key):
        if self.encoding == "elias":
            self._decode_add_elias(payload, d, out, weight)
        else:
            self._decode_add_dense(payload, d, out, weight)

    def _payload_nbytes(self, d):
        return self._dense_nbytes(d) if self.encoding == "dense" else None

    def _max_payload_nbytes(self, d):
        if self.encoding == "elias":
            return kernels.elias_max_nbytes(d, resolve_block_size(self.block_size, d), self.levels)
        return self._dense_nbytes(d)

    # -- dense encoding -----------------------------------------------------------

    def _dense_nbytes(self, d):
        bs = resolve_block_size(self.block_size, d)
        return 4 * kernels.nblocks(d, bs) + kernels.symbols_nbytes(d, self.levels)

    def _encode_into(self, x, rng, key, out):
        if self.encoding == "elias":
            raise TypeError("elias has no fixed length")  # never called: base checks the length
        self._encode_dense(x, rng, out)

    def _encode_dense(self, x, rng, payload=None):
        d = x.size
        bs = resolve_block_size(self.block_size, d)
        scales = kernels.block_scales(x, bs, _NORM_CODES[self.norm])
        if not np.isfinite(scales).all():
            raise ValueError(f"{self.name}: x holds NaN or Inf, or a block's {self.norm}-norm "
                             "overflows float32")
        # One seed per message; the kernel derives every coordinate's uniform from it.
        seed = int(rng.integers(0, 2**64, dtype=np.uint64))
        if payload is None:
            payload = np.empty(self._dense_nbytes(d), dtype=np.uint8)
        kernels.dither_encode(x, scales, bs, self.levels, seed, payload)
        return payload

    def _decode_add_dense(self, payload, d, out, weight):
        bs = resolve_block_size(self.block_size, d)
        code, where = kernels.dither_decode_add(np.ascontiguousarray(payload), d, bs,
                                                self.levels, out, weight)
        if code != kernels.ERR_OK:
            raise wire_error(self.name, self._describe_error(code, where, payload, d, bs))

    def _describe_error(self, code, where, payload, d, bs):
        if code == kernels.ERR_SCALE:
            value = payload[4 * where:4 * where + 4].view("<f4")[0]
            return f"scale of block {where} is {value!r}; expected a finite float32 >= 0"
        if code == kernels.ERR_TRIT:
            byte = payload[4 * kernels.nblocks(d, bs) + where]
            return f"trit byte {where} is {byte}; expected < 243"
        if code == kernels.ERR_LEVEL:
            return f"coordinate {where} has a level above levels={self.levels}"
        if code == kernels.ERR_SIGN:
            return f"coordinate {where} has level 0 with its sign bit set"
        if code == kernels.ERR_PADDING:
            return "padding after the last symbol is not zero"
        return f"payload rejected (kernel error code {code} at {where})"

    # -- Elias-omega encoding -------------------------------------------------------

    def _encode_elias(self, x, rng):
        d = x.size
        bs = resolve_block_size(self.block_size, d)
        scales = kernels.block_scales(x, bs, _NORM_CODES[self.norm])
        if not np.isfinite(scales).all():
            raise ValueError(f"{self.name}: x holds NaN or Inf, or a block's {self.norm}-norm "
                             "overflows float32")
        seed = int(rng.integers(0, 2**64, dtype=np.uint64))
        buf = np.empty(kernels.elias_max_nbytes(d, bs, self.levels), dtype=np.uint8)
        n = kernels.elias_encode(x, scales, bs, self.levels, seed, buf)
        return buf[:n]

    def _decode_add_elias(self, payload, d, out, weight):
        bs = resolve_block_size(self.block_size, d)
        code, where = kernels.elias_decode_add(np.ascontiguousarray(payload), d, bs,
                                               self.levels, out, weight)
        if code == kernels.ERR_OK:
            return
        messages = {
            kernels.ERR_SCALE: f"scale of block {where} is negative, NaN or Inf",
            kernels.ERR_STREAM: f"the Elias-omega stream ends inside the code at bit {where}",
            kernels.ERR_RANGE: f"the Elias-omega code at bit {where} is out of range (a count "
                               f"above d, an index past d - 1 or a level above {self.levels})",
            kernels.ERR_ZERO_BLOCK: f"coordinate {where} is nonzero in a block whose scale is 0",
            kernels.ERR_TRAILING: f"the stream ends at byte {where} but the payload goes on",
            kernels.ERR_PADDING: "padding bits after the last code are not zero"}
        raise wire_error(self.name, messages.get(code, f"payload rejected (kernel error code "
                                                       f"{code} at {where})"))

    # -- theory -------------------------------------------------------------------

    def omega(self, d):
        """Worst-case variance factor for blocks of d~ = min(block_size or d, d) coordinates.

        * s = 1, norm 2: sqrt(d~) - 1; s = 1, norm inf: (sqrt(d~) - 1) / 2. These are
          DIANA (arXiv 1901.09269) Lemma 2, omega = 1/alpha_p(d~) - 1, attained by the
          uniform vector (norm 2) and by (1, t, ..., t), t = 1/(1 + sqrt(d~)) (norm inf).
        * s > 1, either norm: min(d~/(4 s^2), sqrt(d~)/s), the QSGD Lemma 3.1 bound with
          the per-coordinate variance capped at t^2/(4 s^2) (papers.md §A.5).

        Rounding the scale up to float32 can raise the variance by a relative ~2^-23.
        """
        dt = min(self.block_size or d, d)
        if dt <= 0:
            return 0.0
        s = self.levels
        if s == 1:
            w = math.sqrt(dt) - 1.0
            return w if self.norm == "2" else w / 2.0
        return min(dt / (4.0 * s * s), math.sqrt(dt) / s)
