"""``threshold``: keep the coordinates with ``|x_i| >= lambda`` (hard thresholding; biased).

``C(x) = sum_{|x_i| >= lambda} x_i e_i`` (Strom 2015; the selection rule of DGC and of
threshold-based sparsifiers in GRACE). Its error is what falls below the threshold:

    ||C(x) - x||^2 = sum_{|x_i| < lambda} x_i^2 <= min(1, d lambda^2 / ||x||^2) ||x||^2,

a data-dependent contraction ``delta(x)`` (:meth:`Threshold.delta_of`): for a vector with
every coordinate below lambda nothing is sent and the error is all of ||x||^2. So no
delta < 1 holds for every x and ``delta(d) = 1``: algorithms whose step sizes need a
contraction (ef, ef21) and a compressed downlink refuse it at ``psgd validate`` with the
one-line message they give rounding ("delta = 1, which is no contraction"). It is meant
for plain use where the threshold is tuned to the gradients' scale (and as what top_k
approximates without a sort). The message size is data dependent too.

Notes
-----
Payload: k (the number of kept coordinates) as a little-endian uint32, the k values as
little-endian float32 in increasing index order, then the k index gaps as LEB128 varints
(as top_k: :mod:`psgd.kernels_ref._sparsify`, "Index coding"):
``64 + 32 + 32 k + 8 sum_e ceil(max(1, bitlen(g_e)) / 7)`` bits. Decoding checks k <= d,
the length, every varint and index, that every value is finite and at least lambda in
magnitude (what encode sends). When that would be longer than d float32 values, the dense
form goes instead: the count 2^32 - 1, then all d values as float32 (0 where dropped), so a
message never exceeds ``64 + 32 + 32 d`` bits. NaN or Inf in x is a ValueError.
"""

from __future__ import annotations

import numpy as np

from .. import kernels
from ..validation import Real
from .base import Compressor, register_compressor, wire_error
from .rand_k import add_values, decode_gap_indices, gather_values

#: the count field of the dense form (d float32 values, zero where dropped)
DENSE = 2**32 - 1


@register_compressor
class Threshold(Compressor):
    """Keep |x_i| >= threshold (biased; data-dependent contraction, delta(d) = 1)."""

    name = "threshold"
    codec_id = 34
    unbiased = False
    # the contract tests and the frontier feed standard Gaussian vectors
    examples = ({"threshold": 1.0}, {"threshold": 0.1}, {"threshold": 2.0}, {"threshold": 1e-6})
    params = {"threshold": Real(0.0, None, closed="neither", required=True,
                                doc="lambda: coordinates with |x_i| >= lambda are sent")}

    def _encode(self, x, rng, key):
        a = np.abs(x)
        if not np.isfinite(a).all():
            raise ValueError(f"{self.name}: x holds NaN or Inf")
        idx = np.flatnonzero(a >= self.threshold).astype(np.int64)
        values = gather_values(self.name, x, idx)
        gaps = np.empty(kernels.gaps_nbytes(idx), dtype=np.uint8)
        kernels.gaps_encode(idx, gaps)
        if 4 * idx.size + gaps.size > 4 * x.size:         # the dense form is shorter
            dense = np.zeros(x.size, dtype="<f4")
            dense[idx] = values.view("<f4")
            return np.concatenate([np.array([DENSE], "<u4").view(np.uint8), dense.view(np.uint8)])
        head = np.array([idx.size], dtype="<u4").view(np.uint8)
        return np.concatenate([head, values, gaps])

    def _decode_add(self, payload, d, out, weight, key):
        if payload.size < 4:
            raise wire_error(self.name, f"payload of {payload.size} bytes has no 4-byte count")
        k = int(np.frombuffer(payload[:4].tobytes(), dtype="<u4")[0])
        if k == DENSE:
            self._decode_dense(payload, d, out, weight)
            return
        if k > d:
            raise wire_error(self.name, f"the message claims {k} kept coordinates, more than d={d}")
        if payload.size < 4 + 5 * k:
            raise wire_error(self.name, f"payload of {payload.size} bytes is shorter than the "
                                        f"{4 + 5 * k} that {k} values and indices need at least")
        values = payload[4:4 + 4 * k]
        idx = decode_gap_indices(self.name, payload[4 + 4 * k:], k, d, 4 + 4 * k)
        self._check_kept(np.frombuffer(values.tobytes(), dtype="<f4"), zeros_ok=False)
        add_values(self.name, idx, values, 1.0, out, weight)

    def _decode_dense(self, payload, d, out, weight):
        if payload.size != 4 + 4 * d:
            raise wire_error(self.name, f"dense payload is {payload.size} bytes, expected {4 + 4 * d}")
        v = np.frombuffer(payload[4:].tobytes(), dtype="<f4")
        if not np.isfinite(v).all():
            raise wire_error(self.name, "payload holds NaN or Inf")
        self._check_kept(v, zeros_ok=True)
        scaled = v.astype(out.dtype)
        scaled *= weight
        out += scaled

    def _check_kept(self, v, zeros_ok):
        """Every value sent is at least lambda in magnitude (up to its float32 rounding)."""
        with np.errstate(invalid="ignore"):
            small = np.abs(v) < self.threshold * (1 - 2.0**-23)
        if zeros_ok:
            small &= v != 0
        if small.any():
            raise wire_error(self.name, f"value {int(np.argmax(small))} is below the threshold "
                                        f"{self.threshold:g}, which encode never sends")

    def _max_payload_nbytes(self, d):
        return 4 + 4 * d

    def delta(self, d):
        """1: a vector below the threshold everywhere is not sent at all (see delta_of)."""
        return 1.0

    def delta_of(self, x) -> float:
        """The contraction this x gets: sum_{|x_i| < lambda} x_i^2 / ||x||^2 (0 for x = 0)."""
        x = np.asarray(x, dtype=np.float64)
        total = float(x @ x)
        return float((x[np.abs(x) < self.threshold] ** 2).sum() / total) if total else 0.0
