"""Theory checks for sparse_dithering, spherical and the linear sketches (papers.md §A.10-A.14,
§C, §E checks 1, 5, 6, 7, 13): round trips, unbiasedness by Monte Carlo with a confidence
bound, empirical omega <= omega, ||C(x)-x||^2 <= delta ||x||^2 on every draw, exact bit
counts, the paper's bit bounds, kernel/twin agreement and corrupted buffers.
"""

import math

import numpy as np
import pytest

from psgd import kernels, kernels_ref as ref
from psgd.compressors import get_compressor
from psgd.compressors.base import HEADER_NBYTES
from psgd.compressors.sketches import CoordinateSketch, GaussianSketch, HaarSketch, haar_columns
from psgd.compressors.spherical import (cap_probability, expected_rice_bits, log2_cap_probability)
from psgd.errors import ConfigError, WireFormatError

SD_DET = {"name": "sparse_dithering", "variant": "deterministic", "nu": 0.1}
SD_RAND = {"name": "sparse_dithering", "variant": "randomized", "omega": 0.25}
CONFIGS = [
    SD_DET,
    {**SD_DET, "nu": 0.5, "block_size": 7},
    SD_RAND,
    {**SD_RAND, "omega": 2.0, "block_size": 5},
    {"name": "spherical", "alpha": 0.2, "block_size": 5},
    {"name": "spherical", "alpha": 0.5, "block_size": 3},
    {"name": "gaussian_sketch", "k": 3},
    {"name": "gaussian_sketch", "ratio": 0.5, "block_size": 4},
    {"name": "haar_sketch", "k": 3},
    {"name": "haar_sketch", "ratio": 0.3, "block_size": 7},
    {"name": "coordinate_sketch", "k": 2},
    {"name": "coordinate_sketch", "ratio": 0.5, "block_size": 3},
]
IDS = [",".join(f"{k}={v}" for k, v in c.items() if k != "name") and
       c["name"] + "(" + ",".join(f"{k}={v}" for k, v in c.items() if k != "name") + ")"
       for c in CONFIGS]
UNBIASED = [c for c in CONFIGS if get_compressor(c).unbiased]
BIASED = [c for c in CONFIGS if not get_compressor(c).unbiased]


def _vectors(d, rng):
    """Typical and awkward inputs: Gaussian, one-hot, constant, sparse, tiny, huge, float32."""
    g = rng.standard_normal(d)
    out = [g, np.eye(1, d, d // 2).ravel(), np.full(d, -0.7), g * (rng.random(d) < 0.2),
           g * 1e-30, g * 1e30, g.astype(np.float32)]
    return [v for v in out if v.size == d]


# -- construction -----------------------------------------------------------------------

def test_registered_with_codec_ids_20_to_29():
    from psgd.compressors import compressor_classes
    ours = {n: c for n, c in compressor_classes().items()
            if n in {"sparse_dithering", "spherical", "gaussian_sketch", "haar_sketch",
                     "coordinate_sketch"}}
    assert len(ours) == 5
    ids = [c.codec_id for c in ours.values()]
    assert len(set(ids)) == 5 and all(20 <= i <= 29 for i in ids)
    assert all(c.shared_randomness for n, c in ours.items() if n != "sparse_dithering")


@pytest.mark.parametrize("cfg, fragment", [
    ({"name": "sparse_dithering"}, "compressor.nu: missing"),
    ({"name": "sparse_dithering", "variant": "randomized"}, "compressor.omega: missing"),
    ({"name": "sparse_dithering", "nu": 0.1, "omega": 1.0}, "compressor.omega: not used"),
    ({"name": "sparse_dithering", "nu": 1.5}, "compressor.nu: got 1.5"),
    ({"name": "spherical", "alpha": 0.2}, "compressor.block_size: missing"),
    ({"name": "spherical", "alpha": 0.2, "block_size": 64}, "-log2 P = 77.3"),
    ({"name": "haar_sketch"}, "exactly one of k and ratio"),
    ({"name": "gaussian_sketch", "k": 2, "ratio": 0.5}, "exactly one of k and ratio"),
])
def test_bad_configs(cfg, fragment):
    with pytest.raises(ConfigError, match=None) as info:
        get_compressor(cfg)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_omega_and_delta():
    assert get_compressor(SD_DET).delta(100) == 0.1
    assert not get_compressor(SD_DET).unbiased and get_compressor(SD_RAND).unbiased
    assert get_compressor(SD_RAND).omega(100) == 0.25
    assert get_compressor({"name": "spherical", "alpha": 0.3, "block_size": 4}).delta(9) == 0.3
    # papers.md §E.1: Gaussian (d+1)/k, Haar and coordinate d/k - 1
    assert GaussianSketch(k=10).omega(100) == pytest.approx(10.1)
    assert HaarSketch(k=10).omega(100) == pytest.approx(9.0)
    assert CoordinateSketch(ratio=0.1).omega(100) == pytest.approx(9.0)
    # blocks: the worst block; a short last block gets k_b = min(k, d_b)
    assert HaarSketch(k=3, block_size=6).omega(14) == pytest.approx(1.0)
    assert HaarSketch(k=3, block_size=6).sketch_size(14) == 3 + 3 + 2


# -- round trips ------------------------------------------------------------------------

@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_round_trip(cfg):
    c = get_compressor(cfg)
    rng = np.random.default_rng(1)
    for d in [0, 1, 2, 5, 13]:
        x = rng.standard_normal(d)
        for key in ([None, 2**64 - 3] if c.shared_randomness else [None]):
            buf = c.encode(x, rng, key=key)
            assert buf.dtype == np.uint8 and len(buf) <= c.max_nbytes(d)
            y = c.decode(buf, key=key, d=d)
            assert y.shape == (d,) and np.isfinite(y).all()
            for dt in (np.float32, np.float64):
                out = np.ones(d, dtype=dt)
                c.decode_add(buf, out, -0.5, key=key)
                np.testing.assert_allclose(out, 1 - 0.5 * y, rtol=1e-6, atol=1e-6)
            buf2, y2 = c.encode_decode(x, np.random.default_rng(5), key=key)
            assert np.array_equal(c.decode(buf2, key=key), y2)


def test_sketches_and_spherical_are_seed_reproducible():
    x = np.random.default_rng(0).standard_normal(20)
    for cfg in CONFIGS:
        c = get_compressor(cfg)
        if not c.shared_randomness:
            continue
        a = c.encode(x, np.random.default_rng(1), key=7)
        b = c.encode(x, np.random.default_rng(2), key=7)
        assert np.array_equal(a, b), cfg  # the key alone decides
        assert len(c.encode(x, np.random.default_rng(1))) == len(a) + 8  # standalone: seed inside
        with pytest.raises(WireFormatError, match="needs key"):
            c.decode(a)


def test_sketch_stream_is_chunk_invariant(monkeypatch):
    from psgd.compressors import sketches
    x = np.random.default_rng(0).standard_normal(40)
    for cls in (GaussianSketch, HaarSketch, CoordinateSketch):
        c = cls(k=3, block_size=5)
        a = c.decode(c.encode(x, None, key=3), key=3)
        monkeypatch.setattr(sketches, "CHUNK_ENTRIES", 1)
        assert np.array_equal(c.decode(c.encode(x, None, key=3), key=3), a)
        monkeypatch.undo()


# -- unbiasedness and variance -----------------------------------------------------------

def _draws(c, x, n, rng, key_base=None):
    """n decoded draws as an (n, d) array (one encode per draw; keys differ per draw)."""
    out = np.empty((n, x.size))
    for i in range(n):
        key = None if not c.shared_randomness else 1000003 * i + 17
        out[i] = c.decode(c.encode(x, rng, key=key), key=key)
    return out


@pytest.mark.parametrize("cfg", UNBIASED, ids=lambda c: c["name"])
def test_unbiased_and_variance_within_omega(cfg):
    c = get_compressor(cfg)
    rng = np.random.default_rng(2)
    d, n = 10, 1000
    for x in [rng.standard_normal(d), np.eye(1, d, 3).ravel()]:
        y = _draws(c, x, n, rng)
        # unbiased: every coordinate's mean within 5 standard errors (+ float32 rounding)
        se = y.std(axis=0) / math.sqrt(n)
        assert (np.abs(y.mean(axis=0) - x) <= 5 * se + 1e-6 * np.abs(x).max()).all()
        # variance: E||C(x)-x||^2 / ||x||^2 <= omega, one-sided 5-sigma
        r = ((y - x) ** 2).sum(axis=1) / (x ** 2).sum()
        assert r.mean() - 5 * r.std() / math.sqrt(n) <= c.omega(d) * (1 + 1e-6)  # + float32 values
        if cfg["name"] != "sparse_dithering" and cfg.get("block_size") is None:
            # one block: the variance does not depend on x and is exactly omega
            assert r.mean() == pytest.approx(c.omega(d), rel=6 * r.std() / math.sqrt(n) / c.omega(d) + 1e-6)


def test_randomized_sparse_dithering_worst_case():
    """omega = 1/9, x constant: |u_i|/h = 1.5 for every i, so each level is 1 or 2 with
    probability 1/2 and the variance attains omega (up to the float32 gamma)."""
    c = get_compressor({**SD_RAND, "omega": 1 / 9})
    d, n = 16, 1500
    y = _draws(c, np.ones(d), n, np.random.default_rng(3))
    r = ((y - 1) ** 2).sum(axis=1) / d
    assert np.abs(y.mean(axis=0) - 1).max() <= 5 * y.std(axis=0).max() / math.sqrt(n)
    # each level is 1 or 2 with probability ~1/2: the variance attains omega (float32 gamma
    # rounded down keeps it just below)
    assert (1 / 9) * (1 - 1e-6) <= r.mean() <= 1 / 9


def test_sketch_matrices_unbiased_and_moments():
    """E[S^T S] = I and papers.md §B.5 / §E.13: E[(S^T S) L (S^T S)] = c1 L + c2 tr(L) I
    (Haar, Gaussian) or c1 L + c2 Diag(L) (coordinate), by Monte Carlo at d = 6, k = 2."""
    d, k, n = 6, 2, 20000
    gen = np.random.default_rng(4)
    A = gen.standard_normal((d, d))
    L = A @ A.T
    G = gen.standard_normal((n, k, d)) / math.sqrt(k)
    Q = haar_columns(gen, n, d, k)
    idx = CoordinateSketch._subsets(gen, n, d, k)
    S_coord = np.zeros((n, k, d))
    np.put_along_axis(S_coord, idx[:, :, None], math.sqrt(d / k), axis=2)
    mats = {
        "gaussian": np.einsum("nki,nkj->nij", G, G),
        "haar": (d / k) * np.einsum("nik,njk->nij", Q, Q),
        "coordinate": np.einsum("nki,nkj->nij", S_coord, S_coord),
    }
    c1h = d * (d * k + d - 2) / (k * (d - 1) * (d + 2))
    c2h = d * (d - k) / (k * (d - 1) * (d + 2))
    expect = {
        "gaussian": (k + 1) / k * L + np.trace(L) / k * np.eye(d),
        "haar": c1h * L + c2h * np.trace(L) * np.eye(d),
        "coordinate": d * (k - 1) / (k * (d - 1)) * L + d * (d - k) / (k * (d - 1)) * np.diag(np.diag(L)),
    }
    for name, AA in mats.items():
        np.testing.assert_allclose(AA.mean(axis=0), np.eye(d), atol=0.05 * d / k, err_msg=name)
        M = np.einsum("nij,jk,nkl->il", AA, L, AA) / n
        err = np.abs(M - expect[name]).max() / np.abs(expect[name]).max()
        assert err < 0.06, (name, err)
    # the §E.13 numbers for the Haar and rand-k coefficient formulas
    c1 = lambda d, k: d * (d * k + d - 2) / (k * (d - 1) * (d + 2))  # noqa: E731
    c2 = lambda d, k: d * (d - k) / (k * (d - 1) * (d + 2))  # noqa: E731
    assert (round(c1(1000, 10), 5), round(c2(1000, 10), 6)) == (1.09870, 0.098901)
    assert (round(c1(100, 10), 5), round(c2(100, 10), 6)) == (1.08734, 0.089127)
    assert round(1000 * 9 / (10 * 999), 5) == 0.9009 and round(1000 * 990 / (10 * 999), 4) == 99.0991


@pytest.mark.parametrize("cfg", BIASED, ids=lambda c: c["name"])
def test_biased_bound_on_every_draw(cfg):
    c = get_compressor(cfg)
    rng = np.random.default_rng(5)
    for d in [1, 3, 16, 50]:
        for x in _vectors(d, rng):
            for _ in range(10 if cfg["name"] == "spherical" else 3):
                y = c.decode(c.encode(x, rng), d=d)
                x64 = x.astype(np.float64)
                assert ((y - x64) ** 2).sum() <= c.delta(d) * (x64 ** 2).sum(), (d, x[:3])


@pytest.mark.parametrize("nu", [0.1, 1 / 9, 0.25, 1 / 25, 0.5])
def test_deterministic_sparse_dithering_adversarial(nu):
    """Inputs on the rounding ties |u_i| = (2k-1) h, where the bound is tight in exact
    arithmetic; the float32 gamma must not push the error over nu ||x||^2."""
    c = get_compressor({**SD_DET, "nu": nu})
    rng = np.random.default_rng(6)
    for d in [4, 9, 25, 100]:
        h = math.sqrt(nu / d)
        for k in range(1, 5):
            x = np.full(d, (2 * k - 1) * h) * rng.choice([-1, 1], d)
            for scale in [1.0, 3.7e-5, 1.2e20]:
                y = c.decode(c.encode(x * scale, rng))
                assert ((y - x * scale) ** 2).sum() <= nu * ((x * scale) ** 2).sum()
        x = np.ones(d)  # |u_i|/(2h) = 1/(2 sqrt nu): a half-integer for nu = 1/9, 1/25
        y = c.decode(c.encode(x, rng))
        assert ((y - x) ** 2).sum() <= nu * d


def test_tiny_blocks_are_flushed_to_zero():
    c = get_compressor(SD_DET)
    x = np.full(4, 1e-45)  # gamma would be below float32's normal range
    assert (c.decode(c.encode(x, None)) == 0).all()


# -- bits on the wire --------------------------------------------------------------------

def _sd_K(c, buf, d):
    """The level sum K recomputed from the decoded vector and the sent gammas."""
    bs = c.block_size or max(d, 1)
    nb = -(-d // bs)
    gam = np.frombuffer(buf[HEADER_NBYTES:HEADER_NBYTES + 4 * nb].tobytes(), "<f4").astype(np.float64)
    y = c.decode(buf)
    G = np.repeat(gam, bs)[:d]
    return int(np.round(np.abs(y[G > 0]) / G[G > 0]).sum())


@pytest.mark.parametrize("cfg", [c for c in CONFIGS if c["name"] == "sparse_dithering"],
                         ids=lambda c: c["variant"])
def test_sparse_dithering_bits_exact(cfg):
    c = get_compressor(cfg)
    rng = np.random.default_rng(7)
    for d in [1, 7, 64, 333]:
        for x in _vectors(d, rng):
            buf = c.encode(x, rng)
            assert 8 * len(buf) == c.message_bits(d, _sd_K(c, buf, d))
            assert len(buf) <= c.max_nbytes(d)


def test_sparse_dithering_paper_bounds():
    """§E.7: deterministic bits <= 30 + ceil(log2 d) + 3.35 d at nu = 0.1 (Gaussian inputs);
    randomized mean bits <= (log2 3 + 1/(2 sqrt omega)) d + log2 d + 30. Payload bits,
    i.e. without psgd's 8-byte codec header (which carries d)."""
    rng = np.random.default_rng(8)
    det, ran = get_compressor(SD_DET), get_compressor(SD_RAND)
    for d in [100, 1000]:
        worst = max(8 * (len(det.encode(rng.standard_normal(d), rng)) - HEADER_NBYTES)
                    for _ in range(20))
        assert worst <= 30 + math.ceil(math.log2(d)) + 3.35 * d
        mean = np.mean([8 * (len(ran.encode(rng.standard_normal(d), rng)) - HEADER_NBYTES)
                        for _ in range(20)])
        assert mean <= ran.paper_bits_bound(d)
    # randomized worst case |u_i| = 1/sqrt(d): within (1.6 - log2 3) d + 9 bits of the bound
    x = np.ones(1000)
    mean = np.mean([8 * (len(ran.encode(x, rng)) - HEADER_NBYTES) for _ in range(10)])
    assert mean <= ran.paper_bits_bound(1000) + (1.6 - math.log2(3)) * 1000 + 9
    # the documented adversarial case of the trit code: every k = 2 costs 1.6 d + 2 d
    d = 1000
    x = np.full(d, 3.2 * math.sqrt(0.1 / d))
    bits = 8 * (len(det.encode(x, rng)) - HEADER_NBYTES)
    assert bits == 32 + 8 * (d // 5) + 2 * d


def test_sketch_bits_exact():
    rng = np.random.default_rng(9)
    for cfg in CONFIGS:
        c = get_compressor(cfg)
        if "sketch" not in cfg["name"]:
            continue
        for d in [1, 10, 29]:
            x = rng.standard_normal(d)
            K = c.sketch_size(d)
            assert 8 * len(c.encode(x, rng, key=1)) == 64 + 32 * K
            assert 8 * len(c.encode(x, rng)) == 64 + 64 + 32 * K


def test_spherical_expected_trials_and_bits():
    """§E.5/§E.6: E[T] = 1/P(0.2, 5) = 123.99; mean Rice bits < -log2 P + 3."""
    assert 1 / cap_probability(0.2, 5) == pytest.approx(123.99, abs=0.01)
    assert -log2_cap_probability(0.1, 10) == pytest.approx(17.84, abs=0.01)
    assert -log2_cap_probability(0.1, 100) == pytest.approx(169.0, abs=0.1)
    # log-space branch agrees with betainc where both work, and is finite far beyond
    from scipy import special
    for d in [50, 200]:
        direct = math.log2(0.5 * special.betainc((d - 1) / 2, 0.5, 0.3))
        assert log2_cap_probability(0.3, d) == pytest.approx(direct, rel=1e-9)
    assert math.isfinite(log2_cap_probability(0.1, 10**6))
    n = 3000
    x = np.random.default_rng(10).standard_normal(5 * n)
    T, _ = kernels.sphere_search(x, 5, 1 - 0.2 + 1e-10, 11, 10**6, 10**6)
    T = T.astype(np.float64)
    assert abs(T.mean() - 123.99) <= 5 * T.std() / math.sqrt(n)
    c = get_compressor({"name": "spherical", "alpha": 0.2, "block_size": 5})
    stats = c.block_stats(5)
    assert stats["expected_code_bits"] < -stats["log2P"] + 3
    buf = c.encode(x, None, key=11)
    code_bits = 8 * (len(buf) - HEADER_NBYTES - 1 - 4 * n)
    assert code_bits / n == pytest.approx(stats["expected_code_bits"], rel=0.03)
    assert code_bits / n < -stats["log2P"] + 3
    b = stats["rice"]  # exact: remainders + unary quotients, padded to a byte
    total = int((b + 1 + ((T.astype(np.int64) - 1) >> b)).sum())
    assert code_bits == 8 * -(-total // 8)


# -- kernels against twins ---------------------------------------------------------------

needs_ext = pytest.mark.skipif(not kernels.HAVE_CYTHON_SPARSE_SPHERE,
                               reason="compiled kernels not built")


def test_extension_built_when_required():
    import os
    if os.environ.get("PSGD_WITH_CYTHON") != "1":
        pytest.skip("PSGD_WITH_CYTHON is not 1")
    assert kernels.HAVE_CYTHON_SPARSE_SPHERE
    assert kernels.sd_encode.__module__ == "psgd._sparse_sphere"


@needs_ext
def test_constants_agree_with_twins():
    from psgd import _sparse_sphere as ext
    for name in ["ERR_OK", "ERR_SCALE", "ERR_TRIT", "ERR_LEVEL", "ERR_PADDING", "ERR_ZERO_BLOCK",
                 "ERR_LENGTH", "SD_DETERMINISTIC", "SD_RANDOMIZED", "SD_MAX_LEVEL", "TWO_PI"]:
        assert getattr(ext, name) == getattr(ref, name), name


@needs_ext
def test_sparse_dithering_kernels_match_twins():
    from psgd import _sparse_sphere as ext
    rng = np.random.default_rng(11)
    for d in list(range(18)) + [200]:
        for bs in [1, 3, 7, 1000]:
            bs = min(bs, max(d, 1))
            for variant, param in [(0, 0.1), (1, 0.25), (1, 3.0)]:
                c = [ref.sd_block_constant(b, variant, param) for b in (bs, d % bs or bs)]
                km = [ref.sd_kmax(b, variant, param) for b in (bs, d % bs or bs)]
                for dt in (np.float32, np.float64):
                    x = (rng.standard_normal(d) * (rng.random(d) < 0.7)).astype(dt)
                    a = ref.sd_encode(x, bs, *c, variant, 99)
                    assert np.array_equal(a, ext.sd_encode(x, bs, *c, variant, 99))
                    for odt in (np.float32, np.float64):
                        o1, o2 = np.ones(d, odt), np.ones(d, odt)
                        assert ref.sd_decode_add(a, d, bs, *km, o1, 0.5) == \
                            ext.sd_decode_add(a, d, bs, *km, o2, 0.5)
                        assert np.array_equal(o1, o2)
                    # corrupted payloads: same verdict, same untouched/updated out
                    for _ in range(4):
                        bad = a.copy()
                        if bad.size:
                            bad[rng.integers(bad.size)] ^= np.uint8(1 << rng.integers(8))
                        bad = bad[:rng.integers(bad.size + 2)] if rng.random() < 0.5 else bad
                        o1, o2 = np.zeros(d), np.zeros(d)
                        assert ref.sd_decode_add(bad, d, bs, *km, o1, 1.0) == \
                            ext.sd_decode_add(bad, d, bs, *km, o2, 1.0)
                        assert np.array_equal(o1, o2)


@needs_ext
def test_sphere_search_kernel_matches_twin():
    from psgd import _sparse_sphere as ext
    rng = np.random.default_rng(12)
    for d, bs, alpha in [(0, 3, 0.2), (1, 1, 0.2), (20, 5, 0.2), (17, 4, 0.3), (12, 12, 0.6)]:
        for dt in (np.float32, np.float64):
            x = rng.standard_normal(d).astype(dt)
            if d > 4:
                x[:4] = 0  # a zero block
            a = ref.sphere_search(x, bs, 1 - alpha + 1e-10, 5, 10**5, 10**5)
            b = ext.sphere_search(x, bs, 1 - alpha + 1e-10, 5, 10**5, 10**5)
            assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    x = rng.standard_normal(8)
    T, _ = ext.sphere_search(x, 8, 1 - 0.05, 5, 3, 3)  # cap reached: T = 0
    assert (T == 0).all() and (ref.sphere_search(x, 8, 1 - 0.05, 5, 3, 3)[0] == 0).all()


def test_sphere_points_reference_values():
    """Box-Muller on the documented counters, in Python floats."""
    def u(seed, i):
        m = 2**64 - 1
        z = (seed + (i + 1) * 0x9E3779B97F4A7C15) & m
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
        z ^= z >> 31
        return z
    seed = 123
    sb = u(seed, 1 - 1 + 0)  # block 0: mix64(seed + 1 * GAMMA)
    assert int(ref.sphere_block_seeds(seed, [0])[0]) == sb
    t, db = 3, 4
    z = ref.sphere_points(np.uint64(sb), np.array([t]), db)[0]
    for j in range(db):
        m = (t - 1) * db + j
        u1 = (u(sb, 2 * m) >> 11) * 2.0**-53
        u2 = (u(sb, 2 * m + 1) >> 11) * 2.0**-53
        assert z[j] == pytest.approx(math.sqrt(-2 * math.log(1 - u1)) * math.cos(2 * math.pi * u2),
                                     rel=1e-14)


# -- corrupted buffers -------------------------------------------------------------------

@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_corrupted_buffers_raise_wire_format_error(cfg):
    c = get_compressor(cfg)
    rng = np.random.default_rng(13)
    d = 11
    for key in ([None, 5] if c.shared_randomness else [None]):
        buf = c.encode(rng.standard_normal(d), rng, key=key)
        for n in range(len(buf)):  # every truncation
            with pytest.raises(WireFormatError):
                c.decode(buf[:n], key=key, d=d)
        with pytest.raises(WireFormatError):
            c.decode(np.concatenate([buf, [0]]).astype(np.uint8), key=key, d=d)
        for _ in range(100):  # random damage: a valid message or a WireFormatError, nothing else
            bad = buf.copy()
            for i in rng.integers(HEADER_NBYTES, len(buf), size=rng.integers(1, 4)):
                bad[i] = rng.integers(256)
            try:
                y = c.decode(bad, key=key, d=d)
            except WireFormatError:
                continue
            assert y.shape == (d,)
