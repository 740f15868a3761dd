"""``srht_sketch``: the subsampled randomized Hadamard transform sketch (a fast Haar stand-in).

Same contract as the dense sketches of :mod:`psgd.compressors.sketches` (blocks, ``k`` or
``ratio``, the shared-seed ``key`` or a seed in the payload, the same wire format: K
float32 values), but ``S`` is never formed. A block of length d_b is zero-padded to
n_b = 2^ceil(log2 d_b) and

    S = sqrt(n_b / k_b) P H D   (restricted to the first d_b columns)

with D = diag of n_b random signs, H the orthonormal n_b x n_b Walsh-Hadamard matrix and P
k_b rows of the identity at a uniform k_b-subset I of {0..n_b-1}. Encode is ``y = (H_u D
x)[I] / sqrt(k_b)`` (H_u = sqrt(n_b) H, the +-1 Hadamard matrix, applied by the fast
transform in n_b log2 n_b additions); decode is ``S^T y = (D H_u P^T y / sqrt(k_b))[:d_b]``.
E[P^T P] = (k_b/n_b) I gives E[S^T S] = I: unbiased.

Variance (exact for every x, from E over I alone; derivation in :meth:`omega`)::

    omega_b = (n_b (k_b - 1) + d_b (n_b - k_b)) / (k_b (n_b - 1)) - 1

which is n_b/k_b - 1 = Haar's d_b/k_b - 1 when d_b is a power of two, and at most about
twice it otherwise (use power-of-two blocks).

Smoothness moment (papers.md §B.5), for d_b = n_b, with q = n(k-1)/(k(n-1)) and
r = (n-k)/(k(n-1))::

    M_S(L) = E[(S^T S) L (S^T S)] = (q + 2r) L + r tr(L) I - 2r Diag(L)

against Haar's c1 L + c2 tr(L) I (c1 = d(dk+d-2)/(k(d-1)(d+2)) ~ 1 + 1/k,
c2 = d(d-k)/(k(d-1)(d+2)) ~ 1/k). Exactly,

    M_SRHT(L) - M_Haar(L) = 2r (2L + tr(L) I) / (n + 2) - 2r Diag(L),

so lambda_S(SRHT) <= lambda_S(Haar) + 2r (2 ||L|| + tr L) / (n + 2) (at most 2r ||L|| ~
2 ||L|| / k, and O(||L|| / (k n)) for a low effective rank tr L / ||L||), and the -2r Diag(L) term lowers it where L's top eigenvectors
weigh on coordinates with large L_ii (a diagonal L: below Haar's). tests/test_srht_sketch.py
checks the formula by Monte Carlo.

Random stream (documented so that any implementation can reproduce it)
----------------------------------------------------------------------
``gen = numpy.random.Generator(numpy.random.PCG64(seed))``; for every block in order,
``gen.random((2, n_b))`` (drawn in chunks of blocks: the same stream): row 0 gives the
signs (D_j = -1 where u < 0.5, else +1), row 1 the subset (the indices of the k_b smallest,
in increasing order, which is also the order in which the values travel). The transform is
the iterative radix-2 one, stages h = 1, 2, 4, ..., each pair (a, b) -> (a + b, a - b) in
float64, so every implementation rounds alike.

Cost per encode or decode: n_b log2 n_b additions and 2 n_b uniforms per block, i.e.
O(d log b) for blocks of b, against O(k_b d) for the dense Gaussian and Haar sketches
(plus O(b k_b^2) per block for Haar's QR).
"""

from __future__ import annotations

import math

import numpy as np

from .base import register_compressor
from .sketches import CHUNK_ENTRIES, _Sketch


def padded_length(d_b: int) -> int:
    """n_b: the smallest power of two >= d_b."""
    return 1 << max(0, (d_b - 1).bit_length())


def fwht(z: np.ndarray) -> None:
    """In place, along the last axis (a power of two): the unnormalized Walsh-Hadamard
    transform, stages h = 1, 2, 4, ..., each pair (a, b) -> (a + b, a - b)."""
    m, n = z.shape
    h = 1
    while h < n:
        v = z.reshape(m, n // (2 * h), 2, h)
        a, b = v[:, :, 0, :], v[:, :, 1, :]
        t = a - b
        a += b
        b[...] = t
        h *= 2


@register_compressor
class SrhtSketch(_Sketch):
    """S = sqrt(n_b/k_b) P H D (random signs, Hadamard, k_b of n_b = 2^ceil(log2 d_b) rows): O(d log d)."""

    name = "srht_sketch"
    # 29, the end of the 20-29 range of sparse_dithering, spherical and the sketches
    codec_id = 29
    examples = (
        # power-of-two blocks, where omega equals Haar's d_b/k_b - 1
        {"ratio": 1 / 8, "block_size": 4096}, {"ratio": 1 / 16, "block_size": 4096},
        {"ratio": 1 / 4, "block_size": 64}, {"ratio": 1 / 8, "block_size": 65536},
        {"k": 3}, {"k": 3, "block_size": 16},
        {"ratio": 1 / 4, "block_size": 100},        # padded blocks: 100 -> 128
    )

    @staticmethod
    def _omega_block(db, kb):
        """E||S^T S x||^2 = (n/k)^2 sum_{i < d} E v_i^2 with v = D H P^T P z, z = H D x~:
        E[P^T P z z^T P^T P] = p2 z z^T + (p1 - p2) Diag(z^2), p1 = k/n,
        p2 = k(k-1)/(n(n-1)), and (H Diag(z^2) H)_ii = ||x||^2 / n, so the sum is
        (n/k)^2 (p2 + (p1 - p2) d/n) ||x||^2 for every x."""
        n = padded_length(db)
        if n == 1:
            return 0.0
        return (n * (kb - 1) + db * (n - kb)) / (kb * (n - 1)) - 1.0

    def _chunks(self, nblk, db, kb):  # 2 n_b uniforms and n_b transform values per block
        step = max(1, CHUNK_ENTRIES // (3 * padded_length(db)))
        return range(0, nblk, step), step

    @staticmethod
    def _draw(gen, m, db, kb):
        """(signs (m, n_b), subset indices (m, k_b)) for m blocks, from the stream above."""
        n = padded_length(db)
        u = gen.random((m, 2, n))
        signs = np.where(u[:, 0, :] < 0.5, -1.0, 1.0)
        if kb == n:
            idx = np.broadcast_to(np.arange(n), (m, n))
        else:
            idx = np.sort(np.argpartition(u[:, 1, :], kb - 1, axis=1)[:, :kb], axis=1)
        return signs, idx

    def _sketch(self, gen, xs, db, kb):
        m = xs.shape[0]
        signs, idx = self._draw(gen, m, db, kb)
        z = np.zeros((m, signs.shape[1]))
        z[:, :db] = xs
        z *= signs
        fwht(z)
        return np.take_along_axis(z, idx, axis=1) / math.sqrt(kb)

    def _sketch_t(self, gen, ys, db, kb):
        m = ys.shape[0]
        signs, idx = self._draw(gen, m, db, kb)
        z = np.zeros((m, signs.shape[1]))
        np.put_along_axis(z, idx, ys / math.sqrt(kb), axis=1)
        fwht(z)
        z *= signs
        return z[:, :db]


__all__ = ["SrhtSketch", "fwht", "padded_length"]
