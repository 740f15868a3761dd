"""Random linear sketches (Flynn, Johnstone, Yoo): ``gaussian_sketch``, ``haar_sketch``,
``coordinate_sketch``.

The worker sends ``y = S x`` (k float32 numbers per block); the server decodes
``S^T y = S^T S x``. ``S`` is a random k x d_b matrix scaled so that E[S^T S] = I,
hence all three are unbiased. Both ends build the same ``S`` from a shared seed:
the runtime passes ``key`` (``shared_randomness = True``); without a key, ``encode``
draws a seed from ``rng`` and ships it in the payload.

Blocks
------
The vector is cut into blocks of ``block_size`` (null: one block); the last block
may be shorter. Block b of length d_b gets its own matrix of size k_b x d_b with
``k_b = min(k, d_b)`` (param ``k``) or ``k_b = min(d_b, max(1, ceil(ratio * d_b)))``
(param ``ratio``). K = sum_b k_b values travel.

* ``gaussian_sketch``: S = G / sqrt(k_b), G_ij ~ N(0, 1).          omega_b = (d_b + 1) / k_b
* ``haar_sketch``: S = sqrt(d_b / k_b) Q^T, Q the d_b x k_b factor of the QR decomposition
  of a Gaussian d_b x k_b matrix with column signs fixed by sign(diag R) (Mezzadri), i.e.
  the first k_b columns of a Haar orthogonal matrix. Only d_b x k_b is ever formed.
  omega_b = d_b / k_b - 1
* ``coordinate_sketch``: S = sqrt(d_b / k_b) [e_i^T]_{i in I}, I a uniform k_b-subset of the
  block (the indices of the k_b smallest of d_b uniforms); values travel in increasing
  index order.                                                       omega_b = d_b / k_b - 1

``omega(d)`` is the largest omega_b over the (at most two) block lengths.

Random stream (documented so that any implementation can reproduce it)
----------------------------------------------------------------------
``gen = numpy.random.Generator(numpy.random.PCG64(seed))``, seed = key or the payload
seed (uint64). Gaussian: ``gen.standard_normal`` of shape (n_full, k, block) for the
full blocks in block order, then (k_last, d_last) for a short last block. Haar: the
same with shapes (n_full, block, k) and (d_last, k_last). Coordinate: ``gen.random``
of shape (n_full, block), then (d_last,). Draws are made in chunks of blocks
(the stream is the same as one big draw), so memory stays bounded.

Wire format (after the 8-byte codec header)
-------------------------------------------
keyed (runtime):   K little-endian float32 values y (block order)          32 K bits
standalone:        uint64 seed (LE), then the K float32 values             64 + 32 K bits

The two lengths differ for any d, so the decoder tells them apart; a keyed payload
decoded without a key is a WireFormatError. A message is ``64 + 32 K`` (+ 64) bits.

Memory and time per encode or decode (d values, blocks of b, sketch size k_b ~ r b):
Gaussian and Haar draw k_b b normals per block, i.e. about r b d in total (time
O(r b d), plus O(b k_b^2) per block for the Haar QR); at most about 2^21 matrix
entries (16 MB) are held at once. Coordinate draws d uniforms. Use blocks: with one
block of d = 10^6 a dense sketch would need r d^2 numbers.
"""

from __future__ import annotations

import math

import numpy as np

from ..validation import Int, Nullable, Real
from .base import (
    Compressor, check_positive_int_or_ratio, register_compressor, resolve_block_size, wire_error)

#: at most this many matrix entries are generated at once
CHUNK_ENTRIES = 2**21


class _Sketch(Compressor):
    unbiased = True
    shared_randomness = True
    # decoding regenerates a k x d matrix: O(k d) work from a 4k-byte payload, so an
    # untrusted header may claim at most this d (pass d= for longer vectors)
    max_unchecked_dim = 2**16
    params = {
        "k": Nullable(Int(1), doc="sketch size per block"),
        "ratio": Nullable(Real(0.0, 1.0, closed="right"), doc="k_b = ceil(ratio * d_b)"),
        "block_size": Nullable(Int(1), doc="null: one block"),
    }

    def _check_params(self):
        check_positive_int_or_ratio(self)

    # -- geometry -------------------------------------------------------------------

    def sketch_k(self, d_b: int) -> int:
        """k_b for a block of length d_b >= 1."""
        if self.k is not None:
            return min(self.k, d_b)
        return min(d_b, max(1, math.ceil(self.ratio * d_b - 1e-9)))

    def _layout(self, d: int):
        """[(n_blocks, d_b, k_b)] for the full blocks and the short last block."""
        if d == 0:
            return []
        bs = resolve_block_size(self.block_size, d)
        out = []
        if d // bs:
            out.append((d // bs, bs, self.sketch_k(bs)))
        if d % bs:
            out.append((1, d % bs, self.sketch_k(d % bs)))
        return out

    def sketch_size(self, d: int) -> int:
        """K: how many float32 values travel for a vector of length d."""
        return sum(n * k for n, _, k in self._layout(d))

    def omega(self, d: int) -> float:
        return max((self._omega_block(db, kb) for _, db, kb in self._layout(d)), default=0.0)

    def _max_payload_nbytes(self, d):
        return 8 + 4 * self.sketch_size(d)

    # -- the problem-dependent constant (Flynn et al.; papers.md B.5) -------------------

    def smoothness_norm(self, L: np.ndarray) -> float:
        """lambda_S = lambda_max(E[(S^T S) L (S^T S)]) for a d x d smoothness matrix L >= 0.

        The step 1/lambda_S replaces omega's worst case 1/(L (1 + omega)); lambda_S / ||L||
        is the iteration penalty of compressing (papers.md B.5 [D]).
        """
        return float(np.linalg.eigvalsh(self.smoothness_moment(L))[-1])

    def smoothness_moment(self, L: np.ndarray) -> np.ndarray:
        """E[(S^T S) L (S^T S)], exact.

        With blocks, S^T S is block diagonal with independent unbiased blocks, so the
        off-diagonal blocks of the moment are L's own and each diagonal block is that
        block's moment (:meth:`_moment_block`; checked by Monte Carlo in the tests).
        """
        L = np.asarray(L, dtype=np.float64)
        M = L.copy()
        lo = 0
        for n, db, kb in self._layout(L.shape[0]):
            for _ in range(n):
                sl = slice(lo, lo + db)
                M[sl, sl] = L[sl, sl] if kb == db else self._moment_block(L[sl, sl], db, kb)
                lo += db
        return M

    # -- codec ----------------------------------------------------------------------

    def _encode(self, x, rng, key):
        d = x.size
        if key is None:
            seed = int(rng.integers(0, 2**64, dtype=np.uint64))
            head = np.array([seed], dtype="<u8").tobytes()
        else:
            seed, head = int(key) & (2**64 - 1), b""
        xd = x.astype(np.float64, copy=False)
        gen = np.random.Generator(np.random.PCG64(seed))
        ys, start = [], 0
        for nblk, db, kb in self._layout(d):
            xs = xd[start:start + nblk * db].reshape(nblk, db)
            ys.append(self._apply(gen, xs, db, kb).ravel())
            start += nblk * db
        y = np.concatenate(ys) if ys else np.zeros(0)
        with np.errstate(over="ignore", invalid="ignore"):
            y32 = y.astype("<f4")
        if not np.isfinite(y32).all():
            raise ValueError(f"{self.name}: x holds NaN/Inf or its sketch overflows float32")
        return head + y32.tobytes()

    def _decode_add(self, payload, d, out, weight, key):
        K = self.sketch_size(d)
        if payload.size == 4 * K + 8:
            seed = int(payload[:8].view("<u8")[0])
            values = payload[8:]
        elif payload.size == 4 * K:
            if key is None:
                raise wire_error(self.name, "message was encoded with the runtime's shared key; "
                                            "decode needs key=")
            seed, values = int(key) & (2**64 - 1), payload
        else:
            raise wire_error(self.name, f"payload is {payload.size} bytes; expected {4 * K} (keyed) "
                                        f"or {4 * K + 8} (with seed) for d={d}")
        v32 = values.view("<f4")
        if not np.isfinite(v32).all():
            raise wire_error(self.name, "sketch values hold NaN or Inf")
        y = v32.astype(np.float64)
        gen = np.random.Generator(np.random.PCG64(seed))
        start = pos = 0
        for nblk, db, kb in self._layout(d):
            ys = y[pos:pos + nblk * kb].reshape(nblk, kb)
            z = self._apply_t(gen, ys, db, kb).ravel()
            out[start:start + nblk * db] += (weight * z).astype(out.dtype, copy=False)
            start += nblk * db
            pos += nblk * kb

    # chunked over blocks: same stream as one draw, bounded memory
    def _chunks(self, nblk, db, kb):
        step = max(1, CHUNK_ENTRIES // max(1, db * kb))
        return range(0, nblk, step), step

    def _apply(self, gen, xs, db, kb):
        nblk = xs.shape[0]
        out = np.empty((nblk, kb))
        starts, step = self._chunks(nblk, db, kb)
        for c in starts:  # chunks of blocks, not blocks
            sl = slice(c, min(nblk, c + step))
            out[sl] = self._sketch(gen, xs[sl], db, kb)
        return out

    def _apply_t(self, gen, ys, db, kb):
        nblk = ys.shape[0]
        out = np.empty((nblk, db))
        starts, step = self._chunks(nblk, db, kb)
        for c in starts:
            sl = slice(c, min(nblk, c + step))
            out[sl] = self._sketch_t(gen, ys[sl], db, kb)
        return out


@register_compressor
class GaussianSketch(_Sketch):
    """S = G / sqrt(k): y = S x (k float32 per block); decode S^T y. omega = (d_b + 1)/k_b."""

    name = "gaussian_sketch"
    codec_id = 22
    examples = (
        # 64-blocks: O(k_b d) work, so they also run at d = 10^7; at the frontier's d = 64
        # they are one block
        {"ratio": 1 / 8, "block_size": 64}, {"ratio": 1 / 16, "block_size": 64},
        {"ratio": 1 / 4, "block_size": 64}, {"ratio": 1 / 2, "block_size": 64},
        {"k": 3}, {"k": 3, "block_size": 16},
    )

    @staticmethod
    def _omega_block(db, kb):
        return (db + 1) / kb

    @staticmethod
    def _moment_block(L, db, kb):
        # E[G^T G L G^T G]/k^2 for Gaussian G: (k+1)/k L + tr(L)/k I
        return (kb + 1) / kb * L + np.trace(L) / kb * np.eye(db)

    def _sketch(self, gen, xs, db, kb):
        G = gen.standard_normal((xs.shape[0], kb, db))
        return np.matmul(G, xs[:, :, None])[:, :, 0] / math.sqrt(kb)

    def _sketch_t(self, gen, ys, db, kb):
        G = gen.standard_normal((ys.shape[0], kb, db))
        return np.matmul(ys[:, None, :], G)[:, 0, :] / math.sqrt(kb)


def haar_columns(gen: np.random.Generator, n: int, db: int, kb: int) -> np.ndarray:
    """n independent d_b x k_b matrices with orthonormal columns, Haar distributed."""
    Q, R = np.linalg.qr(gen.standard_normal((n, db, kb)))
    s = np.sign(np.diagonal(R, axis1=1, axis2=2))
    s[s == 0] = 1.0
    return Q * s[:, None, :]


@register_compressor
class HaarSketch(_Sketch):
    """S = sqrt(d_b/k_b) Q^T with Q Haar (d_b x k_b); omega = d_b/k_b - 1."""

    name = "haar_sketch"
    codec_id = 23
    examples = (
        # 64-blocks: O(k_b d) work, so they also run at d = 10^7; at the frontier's d = 64
        # they are one block
        {"ratio": 1 / 8, "block_size": 64}, {"ratio": 1 / 16, "block_size": 64},
        {"ratio": 1 / 4, "block_size": 64}, {"ratio": 1 / 2, "block_size": 64},
        {"k": 2}, {"k": 3, "block_size": 16},
    )

    @staticmethod
    def _omega_block(db, kb):
        return db / kb - 1.0

    @staticmethod
    def _moment_block(L, db, kb):
        # (d/k)^2 E[P L P] for P a uniform rank-k projection: c1 L + c2 tr(L) I
        c1 = db * (db * kb + db - 2) / (kb * (db - 1) * (db + 2))
        c2 = db * (db - kb) / (kb * (db - 1) * (db + 2))
        return c1 * L + c2 * np.trace(L) * np.eye(db)

    def _sketch(self, gen, xs, db, kb):
        Q = haar_columns(gen, xs.shape[0], db, kb)
        return math.sqrt(db / kb) * np.matmul(xs[:, None, :], Q)[:, 0, :]

    def _sketch_t(self, gen, ys, db, kb):
        Q = haar_columns(gen, ys.shape[0], db, kb)
        return math.sqrt(db / kb) * np.matmul(Q, ys[:, :, None])[:, :, 0]


@register_compressor
class CoordinateSketch(_Sketch):
    """S = sqrt(d_b/k_b) rows e_i^T for a uniform k_b-subset; omega = d_b/k_b - 1."""

    name = "coordinate_sketch"
    codec_id = 24
    examples = (
        {"ratio": 0.01}, {"ratio": 1 / 16}, {"ratio": 1 / 8}, {"ratio": 1 / 4}, {"ratio": 1 / 2},
        {"k": 2}, {"ratio": 0.25, "block_size": 16},
    )

    @staticmethod
    def _omega_block(db, kb):
        return db / kb - 1.0

    @staticmethod
    def _moment_block(L, db, kb):
        # (d/k)^2 E[D L D] for D a uniform k-subset's 0/1 diagonal: a L + b Diag(L)
        a = db * (kb - 1) / (kb * (db - 1))
        b = db * (db - kb) / (kb * (db - 1))
        return a * L + b * np.diag(np.diag(L))

    @staticmethod
    def _subsets(gen, n, db, kb):
        u = gen.random((n, db))
        if kb == db:
            return np.broadcast_to(np.arange(db), (n, db))
        return np.sort(np.argpartition(u, kb - 1, axis=1)[:, :kb], axis=1)

    def _chunks(self, nblk, db, kb):  # only d_b uniforms per block
        step = max(1, CHUNK_ENTRIES // max(1, db))
        return range(0, nblk, step), step

    def _sketch(self, gen, xs, db, kb):
        idx = self._subsets(gen, xs.shape[0], db, kb)
        return math.sqrt(db / kb) * np.take_along_axis(xs, idx, axis=1)

    def _sketch_t(self, gen, ys, db, kb):
        idx = self._subsets(gen, ys.shape[0], db, kb)
        out = np.zeros((ys.shape[0], db))
        np.put_along_axis(out, idx, math.sqrt(db / kb) * ys, axis=1)
        return out


__all__ = ["GaussianSketch", "HaarSketch", "CoordinateSketch", "haar_columns"]
