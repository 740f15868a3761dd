"""The compiled kernels (psgd._dither) against their NumPy twins (psgd.kernels_ref).

Encode payloads must agree byte for byte, decodes value for value (bitshuffle's
pattern: odd lengths 0..17, random large lengths, every dtype). Every quantizer
build this CPU can run (baseline x86-64 and, where present, x86-64-v4) is checked.
"""

import itertools
import os

import numpy as np
import pytest

from psgd import kernels, kernels_ref as ref

BLOCK_SIZES = [1, 2, 3, 7, 25, None]
LEVELS = [1, 2, 3, 7, 15, 255]
NORMS = [ref.NORM_2, ref.NORM_INF]
DTYPES = [np.float32, np.float64]

needs_ext = pytest.mark.skipif(not kernels.HAVE_CYTHON, reason="compiled kernels not built")


def test_extension_built_when_required():
    """CI sets PSGD_WITH_CYTHON=1: then the compiled kernels must be what psgd uses."""
    if os.environ.get("PSGD_WITH_CYTHON") != "1":
        pytest.skip("PSGD_WITH_CYTHON is not 1")
    assert kernels.HAVE_CYTHON, "PSGD_WITH_CYTHON=1 but psgd._dither did not import"
    assert kernels.dither_encode.__module__ == "psgd._dither"


def test_same_names_either_way():
    for name in kernels.KERNELS:
        assert callable(getattr(kernels, name)) and callable(getattr(ref, name))


@needs_ext
def test_constants_agree():
    from psgd import _dither
    for name in ["NORM_2", "NORM_INF", "MAX_LEVELS", "ERR_OK", "ERR_SCALE", "ERR_TRIT",
                 "ERR_LEVEL", "ERR_SIGN", "ERR_PADDING"]:
        assert getattr(_dither, name) == getattr(ref, name), name


def test_splitmix_reference_values():
    """u_0 with seed 0 is the first output of standard SplitMix64 (0xE220A8397B1DCDAF)."""
    u = ref.splitmix_uniform(0, 0, 3)
    assert u[0] == (0xE220A8397B1DCDAF >> 11) * 2.0**-53

    def scalar(seed, i):  # the docstring's definition, in Python integers
        m = 2**64 - 1
        z = (seed + (i + 1) * 0x9E3779B97F4A7C15) & m
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
        z ^= z >> 31
        return (z >> 11) * 2.0**-53

    seed = 2**64 - 12345
    u = ref.splitmix_uniform(seed, 10, 20)
    assert [scalar(seed, i) for i in range(10, 20)] == list(u)


def _isas():
    if not kernels.HAVE_CYTHON:
        return []
    from psgd import _dither
    return _dither._isa_variants()


@pytest.fixture(params=_isas() or ["none"])
def ext(request):
    """The extension with one quantizer build selected (restored afterwards)."""
    if request.param == "none":
        pytest.skip("compiled kernels not built")
    from psgd import _dither
    default = _dither._isa_variants()[-1]
    _dither._use_isa(request.param)
    yield _dither
    _dither._use_isa(default)


def _vector(rng, d, dtype):
    x = rng.standard_normal(d) * rng.choice([1e-3, 1.0, 1e3], size=d)
    x[rng.random(d) < 0.1] = 0.0           # exact zeros and equal magnitudes exercise edges
    if d > 3:
        x[1] = -x[0]
    return x.astype(dtype)


def _payload_len(d, bs, levels):
    return 4 * ref.nblocks(d, bs) + ref.symbols_nbytes(d, levels)


def _check_case(ext, rng, x, bs, levels, norm, weight=0.75):
    d = x.size
    b = bs or max(d, 1)
    s_ext = ext.block_scales(x, b, norm)
    s_ref = ref.block_scales(x, b, norm)
    assert s_ext.dtype == np.float32 and s_ext.tobytes() == s_ref.tobytes()
    seed = int(rng.integers(0, 2**64, dtype=np.uint64))
    p_ext = np.empty(_payload_len(d, b, levels), np.uint8)
    p_ref = np.full_like(p_ext, 0xAA)
    if not np.isfinite(s_ref).all():              # a norm beyond float32: both refuse
        for k, p in [(ext, p_ext), (ref, p_ref)]:
            with pytest.raises(ValueError):
                k.dither_encode(x, s_ref, b, levels, seed, p)
        return
    ext.dither_encode(x, s_ext, b, levels, seed, p_ext)
    ref.dither_encode(x, s_ref, b, levels, seed, p_ref)
    assert p_ext.tobytes() == p_ref.tobytes(), (d, bs, levels, norm, x.dtype)
    for out_dtype in DTYPES:
        o_ext = rng.standard_normal(d).astype(out_dtype)
        o_ref = o_ext.copy()
        assert ext.dither_decode_add(p_ext, d, b, levels, o_ext, weight) == (ref.ERR_OK, -1)
        assert ref.dither_decode_add(p_ref, d, b, levels, o_ref, weight) == (ref.ERR_OK, -1)
        assert o_ext.tobytes() == o_ref.tobytes(), (d, bs, levels, norm, x.dtype, out_dtype)


def test_twins_small_lengths(ext):
    rng = np.random.default_rng(20240601)
    for d, bs, levels, norm, dtype in itertools.product(range(18), BLOCK_SIZES, LEVELS, NORMS, DTYPES):
        _check_case(ext, rng, _vector(rng, d, dtype), bs, levels, norm)


@pytest.mark.parametrize("d", [100_003, 65_537])
def test_twins_large_lengths(ext, d):
    rng = np.random.default_rng(d)
    for bs, levels, norm, dtype in [(None, 1, ref.NORM_2, np.float32), (7, 1, ref.NORM_INF, np.float64),
                                    (1280, 1, ref.NORM_2, np.float64), (25, 3, ref.NORM_2, np.float32),
                                    (None, 255, ref.NORM_INF, np.float32), (999, 15, ref.NORM_2, np.float64),
                                    (None, ref.MAX_LEVELS, ref.NORM_2, np.float64)]:
        _check_case(ext, rng, _vector(rng, d, dtype), bs, levels, norm, weight=-1.5)


def test_twins_special_values(ext):
    rng = np.random.default_rng(7)
    big = np.float32(np.finfo(np.float32).max)
    cases = [np.zeros(13), np.full(11, -0.0), np.array([1e-45, -1e-45, 0.0], np.float32),
             np.array([5e-324, 1e-310, -1e-300]), np.array([big, -big, big], np.float32),
             np.full(9, 2.0**-149, np.float32), np.array([1.0, 1.0, 1.0, 1.0]),
             np.array([3.0, -4.0]), np.array([1e30, -1e-30, 7.0])]
    for x, bs, levels, norm in itertools.product(cases, [1, 3, None], [1, 2, 7], NORMS):
        _check_case(ext, rng, x, bs, levels, norm)


def test_block_scales_non_finite(ext):
    for x in [np.array([1.0, np.nan, 2.0]), np.array([np.inf, 1.0], np.float32),
              np.array([1e200, 1e200]), np.array([3.5e38, 1.0])]:
        for norm in NORMS:
            np.testing.assert_array_equal(ext.block_scales(x, 2, norm), ref.block_scales(x, 2, norm))
    assert np.isinf(ext.block_scales(np.array([1e200]), 1, ref.NORM_2))[0]


def test_block_scales_2_norm_fast_sum_gives_the_sequential_result(ext):
    """The compiled 2-norm sums in lanes and falls back to the index-order sum only where
    the float32 result is in doubt: both paths must give the twin's (cumsum) bytes.
    Exact squares (64 ones: sqrt = 8 exactly) sit on a float32 boundary and take the
    fallback; near-boundary sums, mixed magnitudes and non-finite values too."""
    rng = np.random.default_rng(11)
    cases = [np.ones(64), np.ones(64 * 1024, np.float32), np.full(100, 0.3, np.float32),
             np.concatenate([np.full(63, 1e-8), [1e8]]), np.r_[np.ones(99), np.nan],
             np.r_[np.ones(70, np.float32), np.inf], np.full(200, 1e200)]
    for n in (64, 65, 1000, 4097):                  # sums just off a float32 square
        f = np.float32(rng.uniform(1, 2)) ** 2
        cases.append(np.full(n, np.sqrt(float(f) / n)) * (1 + 2.0**-52 * rng.integers(-8, 9, n)))
    cases += [rng.standard_normal(n).astype(dt) * 10.0 ** rng.integers(-20, 20)
              for n in (64, 100, 3000) for dt in DTYPES for _ in range(20)]
    for x in cases:
        for bs in (x.size, 64, 1000):
            assert ext.block_scales(x, bs, ref.NORM_2).tobytes() == \
                ref.block_scales(x, bs, ref.NORM_2).tobytes(), (x[:3], x.size, x.dtype, bs)


def test_block_scales_round_up():
    """t32 >= the float64 norm, hence |x_j| <= t32 for every coordinate."""
    rng = np.random.default_rng(3)
    for _ in range(200):
        x = rng.standard_normal(rng.integers(1, 40)) * 10.0 ** rng.integers(-30, 30)
        t2 = kernels.block_scales(x, x.size, ref.NORM_2)[0]
        ti = kernels.block_scales(x, x.size, ref.NORM_INF)[0]
        assert float(t2) >= np.sqrt(np.cumsum(x * x)[-1]) and float(ti) >= np.abs(x).max()
        assert np.nextafter(t2, np.float32(0)) < np.sqrt(np.cumsum(x * x)[-1])  # tightest


def test_decode_validation_agrees(ext):
    """On arbitrary bytes both report the same first error and leave out untouched."""
    rng = np.random.default_rng(11)
    for _ in range(3000):
        d = int(rng.integers(0, 40))
        bs = int(rng.choice([1, 3, 8, max(d, 1)]))
        levels = int(rng.choice([1, 2, 3, 4, 7, 8, 255]))
        n = _payload_len(d, bs, levels)
        nb = ref.nblocks(d, bs)
        p = rng.integers(0, 256, n).astype(np.uint8)
        if rng.random() < 0.7 and nb:            # mostly sane scales, so symbols get checked
            p[:4 * nb] = np.frombuffer(rng.random(nb).astype("<f4").tobytes(), np.uint8)
        if rng.random() < 0.5 and n > 4 * nb:    # mostly small symbols, so most pass
            p[4 * nb:] &= np.uint8(rng.choice([0x00, 0x11, 0x55, 0xFF]))
        out_dtype = DTYPES[int(rng.integers(2))]
        o_ext = rng.standard_normal(d).astype(out_dtype)
        o_ref, before = o_ext.copy(), o_ext.copy()
        r_ext = ext.dither_decode_add(p, d, bs, levels, o_ext, 2.0)
        r_ref = ref.dither_decode_add(p, d, bs, levels, o_ref, 2.0)
        assert r_ext == r_ref, (d, bs, levels, p)
        assert o_ext.tobytes() == o_ref.tobytes()
        if r_ext[0] != ref.ERR_OK:
            assert o_ext.tobytes() == before.tobytes()


@pytest.mark.parametrize("impl", ["ext", "ref"])
def test_bad_arguments_raise(impl):
    if impl == "ext" and not kernels.HAVE_CYTHON:
        pytest.skip("compiled kernels not built")
    k = kernels if impl == "ext" else ref
    x = np.ones(10)
    sc = k.block_scales(x, 4, ref.NORM_2)
    with pytest.raises(ValueError):
        k.block_scales(x, 0, ref.NORM_2)
    with pytest.raises(ValueError):
        k.block_scales(x, 4, 7)
    with pytest.raises(ValueError):               # payload one byte short
        k.dither_encode(x, sc, 4, 1, 0, np.empty(_payload_len(10, 4, 1) - 1, np.uint8))
    with pytest.raises(ValueError):
        k.dither_encode(x, sc[:2], 4, 1, 0, np.empty(_payload_len(10, 4, 1), np.uint8))
    with pytest.raises(ValueError):
        k.dither_encode(x, np.array([1, np.nan, 1], np.float32), 4, 1, 0,
                        np.empty(_payload_len(10, 4, 1), np.uint8))
    with pytest.raises(ValueError):
        k.dither_encode(x, sc, 4, 0, 0, np.empty(_payload_len(10, 4, 1), np.uint8))
    with pytest.raises(ValueError):
        k.dither_decode_add(np.zeros(_payload_len(10, 4, 3), np.uint8), 10, 4, 3, np.zeros(9), 1.0)
    with pytest.raises(ValueError):
        k.dither_decode_add(np.zeros(3, np.uint8), 10, 4, 3, np.zeros(10), 1.0)


def test_payload_sizes():
    assert ref.symbol_bits(1) == 2 and ref.symbol_bits(2) == 3 and ref.symbol_bits(3) == 3
    assert ref.symbol_bits(4) == 4 and ref.symbol_bits(255) == 9 and ref.symbol_bits(ref.MAX_LEVELS) == 32
    assert ref.symbols_nbytes(0, 1) == 0 and ref.symbols_nbytes(5, 1) == 1 and ref.symbols_nbytes(6, 1) == 2
    assert ref.symbols_nbytes(3, 3) == 2 and ref.symbols_nbytes(8, 3) == 3
