"""``top_k``: keep the k largest-magnitude coordinates (biased; papers.md §A.4).

``C(x) = sum_{i in S} x_i e_i`` with S the k coordinates of largest |x_i| (ties go to
the lowest index, so the selection is a function of x). Everything dropped is
smaller than everything kept, hence ``||C(x) - x||^2 <= (1 - k/d) ||x||^2`` on every
input: ``delta(d) = 1 - k/d``, attained by vectors of equal magnitudes. Exactly one
of ``k`` (``k_eff = min(k, d)``) and ``ratio`` (``k_eff = min(d, max(1, ceil(ratio d)))``).
There is no ``block_size``: a global selection never has a larger error than a
per-block one with the same k, and the wire format would be the same.

Notes
-----
Payload (after the 8-byte codec header)::

    k little-endian float32 values x_i, in increasing index order
    k LEB128 varints of the index gaps g_0 = i_0, g_e = i_e - i_{e-1} - 1

so a message is exactly ``64 + 32 k + 8 * sum_e ceil(max(1, bitlen(g_e)) / 7)`` bits
(varints over Elias-gamma: byte-aligned, about as short for gaps below 2^7 (8 vs
1-13 bits) and decoded without a bit reader; at k = d/100 about 9-10 bits an index
on Gaussian data). Selection (:func:`psgd.kernels.topk_indices`) is O(d): a strided
sample guesses a threshold, one screened pass collects the candidates and a radix
select on the bit patterns of |x| finishes; no sort. For float64 input the values
are rounded to float32, which adds at most ``2^-48 sum_{i in S} x_i^2`` to the error.
"""

from __future__ import annotations

import numpy as np

from .. import kernels
from ..validation import Int, Nullable, Real
from .base import Compressor, check_positive_int_or_ratio, register_compressor, wire_error
from .rand_k import add_values, decode_gap_indices, gather_values, k_of


@register_compressor
class TopK(Compressor):
    """Keep the k largest |x_i| (biased, delta = 1 - k/d); values plus varint index gaps."""

    name = "top_k"
    codec_id = 11
    unbiased = False
    examples = (
        {"ratio": 0.01}, {"ratio": 1 / 16}, {"ratio": 1 / 8}, {"ratio": 1 / 4}, {"ratio": 1 / 2},
        {"k": 3}, {"ratio": 0.1},
    )
    params = {
        "k": Nullable(Int(1), doc="coordinates kept (min(k, d))"),
        "ratio": Nullable(Real(0.0, 1.0, closed="right"), doc="k = ceil(ratio * d)"),
    }

    def _check_params(self):
        check_positive_int_or_ratio(self)

    def k_of(self, d: int) -> int:
        return k_of(self.k, self.ratio, d)

    def _encode(self, x, rng, key):
        k = self.k_of(x.size)
        try:
            idx = kernels.topk_indices(x, k)
        except ValueError:
            raise ValueError(f"{self.name}: x holds NaN or Inf") from None
        values = gather_values(self.name, x, idx)
        gaps = np.empty(kernels.gaps_nbytes(idx), dtype=np.uint8)
        kernels.gaps_encode(idx, gaps)
        return np.concatenate([values, gaps])

    def _decode_add(self, payload, d, out, weight, key):
        k = self.k_of(d)
        if payload.size < 5 * k:
            raise wire_error(self.name, f"payload of {payload.size} bytes is shorter than the "
                                        f"{5 * k} that {k} values and indices need at least")
        idx = decode_gap_indices(self.name, payload[4 * k:], k, d, 4 * k)
        add_values(self.name, idx, payload[:4 * k], 1.0, out, weight)

    def _max_payload_nbytes(self, d):
        return 9 * self.k_of(d)

    def delta(self, d):
        """1 - k/d (for float32 input; float64 input adds the float32 rounding of kept values)."""
        return 1.0 - self.k_of(d) / d if d else 0.0
