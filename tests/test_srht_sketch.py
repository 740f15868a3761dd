"""srht_sketch: the fast transform, its omega (exact for every x) and its smoothness moment
M_S(L) = E[(S^T S) L (S^T S)] against Haar's (papers.md §B.5), by Monte Carlo.

The codec contract (round trip, exact bits, unbiasedness, corrupted input), the golden files
and the fuzzer cover srht_sketch through its ``examples``; this file checks what is particular
to it.
"""

import math

import numpy as np
import pytest

from psgd.compressors import get_compressor
from psgd.compressors import srht
from psgd.compressors.srht import SrhtSketch, fwht, padded_length


def _hadamard(n):
    H = np.ones((1, 1))
    while H.shape[0] < n:
        H = np.block([[H, H], [H, -H]])
    return H


def test_fwht_is_the_sylvester_hadamard_matrix():
    for n in (1, 2, 8, 64):
        z = np.eye(n)
        fwht(z)
        np.testing.assert_array_equal(z, _hadamard(n))
    z = np.random.default_rng(0).standard_normal((3, 32))
    w = z.copy()
    fwht(w)
    fwht(w)
    np.testing.assert_allclose(w, 32 * z, rtol=1e-12)     # H_u^2 = n I


def test_padded_length():
    assert [padded_length(d) for d in (1, 2, 3, 4, 5, 100, 128, 129)] == [1, 2, 4, 4, 8, 128, 128, 256]


def _sts(gen_seed, c, d, m):
    """m matrices S^T S (d x d, one block) built from the documented stream, as the codec does."""
    k = c.sketch_k(d)
    n = padded_length(d)
    signs, idx = SrhtSketch._draw(np.random.Generator(np.random.PCG64(gen_seed)), m, d, k)
    H = _hadamard(n) / math.sqrt(n)
    S = math.sqrt(n / k) * np.take_along_axis(H[None, :, :] * signs[:, None, :],
                                              idx[:, :, None], axis=1)[:, :, :d]
    return np.einsum("mki,mkj->mij", S, S)


def test_the_codec_applies_the_documented_matrix():
    c = get_compressor({"name": "srht_sketch", "k": 3})
    for d in (8, 11):
        x = np.random.default_rng(d).standard_normal(d)
        A = _sts(99, c, d, 1)[0]
        np.testing.assert_allclose(c.decode(c.encode(x, None, key=99), key=99), A @ x,
                                   rtol=1e-5, atol=1e-5 * np.abs(A @ x).max())


@pytest.mark.parametrize("d, k", [(16, 4), (16, 1), (12, 3), (5, 2), (1, 1)])
def test_omega_is_exact_for_every_x(d, k):
    """E||S^T S x - x||^2 = omega ||x||^2 for each x (not only the worst one): Monte Carlo
    over 20000 draws, for a Gaussian x and a basis vector."""
    c = get_compressor({"name": "srht_sketch", "k": k})
    A = _sts(7, c, d, 20000)
    for x in (np.random.default_rng(1).standard_normal(d), np.eye(1, d, d - 1).ravel()):
        e = np.einsum("mij,j->mi", A, x) - x
        r = (e ** 2).sum(axis=1) / (x @ x)
        assert r.mean() == pytest.approx(c.omega(d), abs=5 * r.std() / math.sqrt(r.size) + 1e-9)
        y = e + x                                             # unbiased, coordinate-wise
        se = y.std(axis=0) / math.sqrt(y.shape[0])
        assert (np.abs(y.mean(axis=0) - x) <= 5 * se + 1e-12).all()


def test_omega_equals_haars_on_power_of_two_blocks_and_pays_for_padding():
    haar = get_compressor({"name": "haar_sketch", "ratio": 1 / 8, "block_size": 4096})
    fast = get_compressor({"name": "srht_sketch", "ratio": 1 / 8, "block_size": 4096})
    assert fast.omega(2**20) == pytest.approx(haar.omega(2**20)) == pytest.approx(7.0)
    padded = get_compressor({"name": "srht_sketch", "k": 25}).omega(100)   # n_b = 128
    assert get_compressor({"name": "haar_sketch", "k": 25}).omega(100) == pytest.approx(3.0)
    assert padded == pytest.approx((128 * 24 + 100 * 103) / (25 * 127) - 1)
    assert 3.0 < padded < 128 / 25 - 1


def _moment_srht(L, n, k):
    q = n * (k - 1) / (k * (n - 1))
    r = (n - k) / (k * (n - 1))
    return (q + 2 * r) * L + r * np.trace(L) * np.eye(n) - 2 * r * np.diag(np.diag(L))


def _moment_haar(L, d, k):
    c1 = d * (d * k + d - 2) / (k * (d - 1) * (d + 2))
    c2 = d * (d - k) / (k * (d - 1) * (d + 2))
    return c1 * L + c2 * np.trace(L) * np.eye(d)


def test_smoothness_moment_against_haar():
    """M_S(L) by Monte Carlo matches the closed form of the srht module docstring, for a
    generic, a diagonal (coordinate-aligned) and a Hadamard-aligned L. The exact difference
    from Haar is M_SRHT - M_Haar = 2r (2L + tr(L) I) / (n + 2) - 2r Diag(L): lambda_S is at
    most Haar's plus 2r (2 ||L|| + tr L) / (n + 2), and below Haar's for the diagonal L."""
    d, k, m = 8, 2, 40000
    c = get_compressor({"name": "srht_sketch", "k": k})
    A = _sts(3, c, d, m)
    gen = np.random.default_rng(4)
    B = gen.standard_normal((d, d))
    H = _hadamard(d) / math.sqrt(d)
    Ls = {"generic": B @ B.T, "diagonal": np.diag(2.0 ** -np.arange(d)),
          "hadamard": H @ np.diag(2.0 ** -np.arange(d)) @ H}
    for name, L in Ls.items():
        M = np.einsum("mij,jk,mkl->il", A, L, A) / m
        expect = _moment_srht(L, d, k)
        err = np.abs(M - expect).max() / np.abs(expect).max()
        assert err < 0.05, (name, err)
        r = (d - k) / (k * (d - 1))
        np.testing.assert_allclose(expect - _moment_haar(L, d, k),
                                   2 * r * (2 * L + np.trace(L) * np.eye(d)) / (d + 2)
                                   - 2 * r * np.diag(np.diag(L)), atol=1e-12)
        lam_srht = np.linalg.eigvalsh(expect)[-1]
        lam_haar = np.linalg.eigvalsh(_moment_haar(L, d, k))[-1]
        top = np.linalg.eigvalsh(L)[-1]
        assert lam_srht <= lam_haar + 2 * r * (2 * top + np.trace(L)) / (d + 2) + 1e-12, name
        if name == "diagonal":
            assert lam_srht < lam_haar, (lam_srht, lam_haar)


def test_stream_is_chunk_invariant(monkeypatch):
    x = np.random.default_rng(0).standard_normal(70)
    c = get_compressor({"name": "srht_sketch", "k": 3, "block_size": 6})
    a = c.decode(c.encode(x, None, key=3), key=3)
    monkeypatch.setattr(srht, "CHUNK_ENTRIES", 1)
    assert np.array_equal(c.decode(c.encode(x, None, key=3), key=3), a)


def test_bits_exact_and_the_key_decides():
    rng = np.random.default_rng(9)
    c = get_compressor({"name": "srht_sketch", "ratio": 0.25, "block_size": 16})
    for d in (1, 10, 29, 100):
        x = rng.standard_normal(d)
        K = c.sketch_size(d)
        assert 8 * len(c.encode(x, rng, key=1)) == 64 + 32 * K
        assert 8 * len(c.encode(x, rng)) == 64 + 64 + 32 * K
    x = rng.standard_normal(40)
    assert np.array_equal(c.encode(x, np.random.default_rng(1), key=5),
                          c.encode(x, np.random.default_rng(2), key=5))
    assert not np.array_equal(c.encode(x, None, key=5), c.encode(x, None, key=6))
