"""``rand_k``: unbiased random sparsification (papers.md §A.2).

``C(x) = (d/k) sum_{i in S} x_i e_i`` with S a uniformly random k-subset of the d
coordinates: E C(x) = x and E||C(x) - x||^2 = (d/k - 1) ||x||^2 exactly, so
``omega(d) = d/k - 1``. Exactly one of ``k`` (``k_eff = min(k, d)``) and ``ratio``
(``k_eff = min(d, max(1, ceil(ratio * d)))``) is set.

Notes
-----
The subset comes from a 64-bit seed through the counter-based SplitMix64 stream of
:func:`psgd.kernels_ref.randk_indices` (Lemire draws with rejection, first k distinct,
complement when k > d/2): an exactly uniform k-subset, in O(k + d/64) time.

* With a shared ``key`` (the runtime derives it from (seed, worker, step) and passes
  the same one to ``encode`` and ``decode``; ``shared_randomness = True``) the seed
  is the key and only the values travel::

      k little-endian float32 x_i, in increasing index order        32 k bits

* With ``send_indices: true``, or when ``key`` is None (standalone use; the seed is
  then one draw from ``rng`` and never travels), the indices follow the values as
  LEB128 varints of the gaps (``g_0 = i_0``, ``g_e = i_e - i_{e-1} - 1``; see
  :mod:`psgd.kernels_ref`, "Index coding")::

      32 k + 8 * sum_e ceil(max(1, bitlen(g_e)) / 7) bits

  For a uniform k-subset every gap has ``P(g >= t) = C(d - t, k) / C(d, k)``, so the
  expected size is ``32 k + 8 k (1 + sum_{b=1..4} C(d - 128^b, k) / C(d, k))`` bits
  (:meth:`RandK.expected_payload_bits`); about 10.2 bits per index at k = d/100.

The decoder expects the form its own configuration and key imply (values only iff a
key is given and ``send_indices`` is false), so a truncated message is always an
error; a values-only message decoded without the key is a WireFormatError that says
so. Decoding adds ``weight * (d/k) * float64(x_i)`` at every index.
"""

from __future__ import annotations

import math

import numpy as np

from .. import kernels
from ..validation import Bool, Int, Nullable, Real
from .base import Compressor, check_positive_int_or_ratio, register_compressor, wire_error

_GAP_ERRORS = {
    kernels.ERR_VARINT: "the index varint at payload byte {} is truncated, longer than 5 bytes "
                        "or >= 2^32",
    kernels.ERR_NONCANONICAL: "the index varint at payload byte {} has a redundant zero high byte",
    kernels.ERR_INDEX: "index number {} points past the end of the vector",
    kernels.ERR_TRAILING: "the index varints end at payload byte {} but the payload goes on",
}


def k_of(k, ratio, d: int) -> int:
    """The number of kept coordinates for length d (``k`` or ``ratio``, one of them None)."""
    if d <= 0:
        return 0
    if k is not None:
        return min(int(k), d)
    return min(d, max(1, math.ceil(ratio * d - 1e-9)))


def decode_gap_indices(name: str, buf: np.ndarray, k: int, d: int, offset: int) -> np.ndarray:
    """The k sorted indices coded as gap varints in buf (WireFormatError if malformed)."""
    idx = np.empty(k, dtype=np.int64)
    code, where = kernels.gaps_decode(np.ascontiguousarray(buf), d, idx)
    if code != kernels.ERR_OK:
        if code not in _GAP_ERRORS:
            raise wire_error(name, f"indices rejected (kernel error {code} at {where})")
        raise wire_error(name, _GAP_ERRORS[code].format(where if code == kernels.ERR_INDEX
                                                        else where + offset))
    return idx


def carried_indices(name: str, payload: np.ndarray, k: int, d: int) -> np.ndarray:
    """The indices of a message that carries them (k float32 values, then their gap
    varints); WireFormatError for a shared-key message or one too short for them."""
    if payload.size == 4 * k and k:
        raise wire_error(name, "the message carries no indices (shared-key form); "
                               "decode it with the key it was encoded with")
    if payload.size < 5 * k:
        raise wire_error(name, f"payload of {payload.size} bytes is shorter than the "
                               f"{5 * k} that {k} values and indices need at least")
    return decode_gap_indices(name, payload[4 * k:], k, d, 4 * k)


def add_values(name: str, idx: np.ndarray, values: np.ndarray, scale: float, out: np.ndarray,
               weight: float) -> None:
    """out[idx] += weight * (scale * float32 values), after checking every value is finite."""
    code, where = kernels.sparse_add(idx, np.ascontiguousarray(values), scale, out, weight)
    if code != kernels.ERR_OK:
        raise wire_error(name, f"value {where} is NaN or Inf")


def gather_values(name: str, x: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """x[idx] as little-endian float32 bytes; ValueError if one is not finite in float32."""
    with np.errstate(over="ignore", invalid="ignore"):
        v = x[idx].astype("<f4")
    if not np.isfinite(v).all():
        raise ValueError(f"{name}: x holds NaN or Inf, or a kept value overflows float32")
    return v.view(np.uint8)


@register_compressor
class RandK(Compressor):
    """Keep k uniformly random coordinates, scaled by d/k (unbiased, omega = d/k - 1)."""

    name = "rand_k"
    codec_id = 10
    unbiased = True
    shared_randomness = True
    examples = (
        {"ratio": 0.01}, {"ratio": 1 / 16}, {"ratio": 1 / 8}, {"ratio": 1 / 4}, {"ratio": 1 / 2},
        {"k": 5}, {"ratio": 0.1, "send_indices": True},
    )
    params = {
        "k": Nullable(Int(1), doc="coordinates kept (min(k, d))"),
        "ratio": Nullable(Real(0.0, 1.0, closed="right"), doc="k = ceil(ratio * d)"),
        "send_indices": Bool(default=False, doc="send the indices even when a key is shared"),
    }

    def _check_params(self):
        check_positive_int_or_ratio(self)

    def k_of(self, d: int) -> int:
        return k_of(self.k, self.ratio, d)

    # -- codec ------------------------------------------------------------------

    def _encode(self, x, rng, key):
        d = x.size
        k = self.k_of(d)
        seed = int(rng.integers(0, 2**64, dtype=np.uint64)) if key is None else int(key) % 2**64
        idx = kernels.randk_indices(seed, d, k)
        values = gather_values(self.name, x, idx)
        if key is not None and not self.send_indices:
            return values
        gaps = np.empty(kernels.gaps_nbytes(idx), dtype=np.uint8)
        kernels.gaps_encode(idx, gaps)
        return np.concatenate([values, gaps])

    def _decode_add(self, payload, d, out, weight, key):
        k = self.k_of(d)
        if key is not None and not self.send_indices:       # shared-key form: values only
            if payload.size != 4 * k:
                raise wire_error(self.name, f"payload is {payload.size} bytes, expected {4 * k} "
                                            f"(k={k} float32 values; the indices come from the key)")
            idx = kernels.randk_indices(int(key) % 2**64, d, k)
        else:
            idx = carried_indices(self.name, payload, k, d)
        add_values(self.name, idx, payload[:4 * k], d / k if k else 0.0, out, weight)

    def _max_payload_nbytes(self, d):
        return 9 * self.k_of(d)          # 4 bytes per value + a varint of at most 5 bytes

    # -- theory -------------------------------------------------------------------

    def omega(self, d):
        """d/k - 1, attained by every x (the variance is exactly omega ||x||^2)."""
        k = self.k_of(d)
        return d / k - 1.0 if k else 0.0

    def expected_payload_bits(self, d: int, indices: bool = True) -> float:
        """32 k, plus the expected gap varints when the indices travel (module Notes)."""
        k = self.k_of(d)
        bits = 32.0 * k
        if indices and k:
            def log_comb(n, r):
                return math.lgamma(n + 1) - math.lgamma(r + 1) - math.lgamma(n - r + 1)
            tail = sum(math.exp(log_comb(d - 128**b, k) - log_comb(d, k))
                       for b in range(1, 5) if d - 128**b >= k)
            bits += 8.0 * k * (1.0 + tail)
        return bits
