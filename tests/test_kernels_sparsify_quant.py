"""Compiled kernels psgd._sparsify / psgd._quant against their NumPy twins (psgd.kernels_ref).

Encodes must agree byte for byte, decodes value for value and error for error, on
lengths 0..17, large odd lengths and special values, for every quantizer build this
CPU can run (baseline x86-64 and, where present, x86-64-v4).
"""

import itertools
import os

import numpy as np
import pytest

from psgd import kernels, kernels_ref as ref

DTYPES = [np.float32, np.float64]
needs_ext = pytest.mark.skipif(not kernels.HAVE_CYTHON_SPARSIFY_QUANT, reason="kernels not built")


def test_extension_built_when_required():
    if os.environ.get("PSGD_WITH_CYTHON") != "1":
        pytest.skip("PSGD_WITH_CYTHON is not 1")
    assert kernels.HAVE_CYTHON_SPARSIFY_QUANT
    assert kernels.topk_indices.__module__ == "psgd._sparsify"
    assert kernels.sign_encode.__module__ == "psgd._quant"


def test_same_names_either_way():
    for name in kernels.KERNELS_SPARSIFY + kernels.KERNELS_QUANT:
        assert callable(getattr(kernels, name)) and callable(getattr(ref, name))


@needs_ext
def test_constants_agree():
    from psgd import _quant, _sparsify
    for mod, names in [(_sparsify, ["ERR_OK", "ERR_VALUE", "ERR_VARINT", "ERR_NONCANONICAL",
                                    "ERR_INDEX", "ERR_TRAILING", "MAX_DIM"]),
                       (_quant, ["ERR_WIDTH", "ERR_CODE", "ERR_SIZE", "ROUNDING_MAX_Q"])]:
        for name in names:
            assert getattr(mod, name) == getattr(ref, name), name


def test_use_twins_switches_and_restores():
    before = kernels.topk_indices
    with kernels.use_twins():
        assert kernels.topk_indices is ref.topk_indices
        assert kernels.dither_encode is ref.dither_encode       # every KERNELS* tuple
    assert kernels.topk_indices is before


def test_splitmix64_reference_values():
    """Standard SplitMix64 from state 0 starts 0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4."""
    assert [int(v) for v in ref.splitmix64(0, 0, 2)] == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4]


def _quant_isas():
    if not kernels.HAVE_CYTHON_SPARSIFY_QUANT:
        return ["none"]
    from psgd import _quant
    return _quant._isa_variants()


def _sparsify_isas():
    if not kernels.HAVE_CYTHON_SPARSIFY_QUANT:
        return ["none"]
    from psgd import _sparsify
    return _sparsify._isa_variants()


@pytest.fixture(params=_sparsify_isas())
def sparsify(request):
    """psgd._sparsify with one screening-pass build selected (restored afterwards)."""
    if request.param == "none":
        pytest.skip("compiled kernels not built")
    from psgd import _sparsify
    default = _sparsify._isa_variants()[-1]
    _sparsify._use_isa(request.param)
    yield _sparsify
    _sparsify._use_isa(default)


@pytest.fixture(params=_quant_isas())
def quant(request):
    """psgd._quant with one quantizer build selected (restored afterwards)."""
    if request.param == "none":
        pytest.skip("compiled kernels not built")
    from psgd import _quant
    default = _quant._isa_variants()[-1]
    _quant._use_isa(request.param)
    yield _quant
    _quant._use_isa(default)


def _vector(rng, d, dtype):
    x = rng.standard_normal(d) * rng.choice([1e-3, 1.0, 1e3], size=d)
    x[rng.random(d) < 0.15] = 0.0
    if d > 3:
        x[1] = -x[0]             # equal magnitudes (top_k ties)
        x[2] = -0.0
    return x.astype(dtype)


SPECIAL = [np.array([1e-45, -1e-45, 0.0, -0.0, 1.1754942e-38, 1.1754944e-38], np.float32),
           np.array([3.4e38, -3.3e38, 1.7e38, 2.0**127, 2.0**127 * 1.5], np.float32),
           np.array([5e-324, -1e-310, 2.0**-126, 2.0**-127, 1e-300, 3e38, 2.0**128 * 0.999]),
           np.array([1.0, 2.0, 4.0, -0.5, 0.75, 4 / 3], np.float32), np.ones(9), np.zeros(11),
           np.array([np.inf, 1.0]), np.array([np.nan], np.float32), np.array([2.0**128]),
           np.array([1e300, 1.0]), np.array([1.0, np.nan, 2.0])]


# -- sparsify --------------------------------------------------------------------------

def _seed(rng):
    return int(rng.integers(0, 2**64, dtype=np.uint64))


def _check_sparse(mod, rng, x):
    d = x.size
    for k in sorted({0, 1, d // 100, d // 3, d // 2, (d + 1) // 2, d - 1, d} & set(range(d + 1))):
        seed = _seed(rng)
        a, b = mod.randk_indices(seed, d, k), ref.randk_indices(seed, d, k)
        assert a.dtype == np.int64 and a.tolist() == b.tolist(), (d, k, seed)
        assert a.size == k and np.all(np.diff(a) > 0)
        if not np.isfinite(x).all():
            for m in (mod, ref):
                with pytest.raises(ValueError):
                    m.topk_indices(x, k)
            continue
        a, b = mod.topk_indices(x, k), ref.topk_indices(x, k)
        assert a.tolist() == b.tolist(), (d, k, x.dtype)
        n = mod.gaps_nbytes(a)
        assert n == ref.gaps_nbytes(a)
        g1, g2 = np.empty(n, np.uint8), np.full(n, 0xAA, np.uint8)
        mod.gaps_encode(a, g1)
        ref.gaps_encode(a, g2)
        assert g1.tobytes() == g2.tobytes()
        i1, i2 = np.empty(k, np.int64), np.empty(k, np.int64)
        assert mod.gaps_decode(g1, d, i1) == (0, -1)
        assert ref.gaps_decode(g1, d, i2) == (0, -1)
        assert i1.tolist() == i2.tolist() == a.tolist()
        vals = np.frombuffer(rng.standard_normal(k).astype("<f4").tobytes(), np.uint8)
        for out_dtype in DTYPES:
            o1 = rng.standard_normal(d).astype(out_dtype)
            o2 = o1.copy()
            assert mod.sparse_add(a, vals, d / max(k, 1), o1, -0.75) == (0, -1)
            assert ref.sparse_add(a, vals, d / max(k, 1), o2, -0.75) == (0, -1)
            assert o1.tobytes() == o2.tobytes()


def test_sparsify_small_lengths(sparsify):
    ext = sparsify
    rng = np.random.default_rng(1)
    for d, dtype in itertools.product(range(18), DTYPES):
        _check_sparse(ext, rng, _vector(rng, d, dtype))
    for x in SPECIAL:
        _check_sparse(ext, rng, x)


@pytest.mark.parametrize("d", [100_003, 70_001])
def test_sparsify_large_lengths(sparsify, d):
    ext = sparsify
    rng = np.random.default_rng(d)
    for dtype in DTYPES:
        _check_sparse(ext, rng, _vector(rng, d, dtype))
    # the sampled-threshold path and its fallback: heavy ties, a spike, sorted data
    for x in [np.round(rng.standard_normal(d) * 2) / 2, np.r_[np.zeros(d - 5), np.ones(5)],
              np.sort(rng.random(d)).astype(np.float32), np.tile([1.0, -1.0, 0.5], d // 3)]:
        for k in [1, 5, 6, d // 100, d // 3]:
            assert ext.topk_indices(x, k).tolist() == ref.topk_indices(x, k).tolist(), k


def test_gaps_decode_fuzz(sparsify):
    """On arbitrary bytes both report the same first error (and the same indices if valid)."""
    ext = sparsify
    rng = np.random.default_rng(2)
    for _ in range(4000):
        n, k = int(rng.integers(0, 14)), int(rng.integers(0, 6))
        d = int(rng.choice([1, 5, 300, 2**32 - 1]))
        buf = rng.integers(0, 256, n).astype(np.uint8)
        if rng.random() < 0.6:
            buf &= np.uint8(rng.choice([0x7F, 0x83, 0x0F, 0x81]))
        i1, i2 = np.zeros(k, np.int64), np.zeros(k, np.int64)
        r1, r2 = ext.gaps_decode(buf, d, i1), ref.gaps_decode(buf, d, i2)
        assert r1 == r2, (buf, k, d)
        if r1[0] == ref.ERR_OK:
            assert i1.tolist() == i2.tolist()


def test_sparse_add_rejects_non_finite(sparsify):
    ext = sparsify
    idx = np.array([0, 2, 3], np.int64)
    vals = np.frombuffer(np.array([1.0, np.inf, np.nan], "<f4").tobytes(), np.uint8)
    for m in (ext, ref):
        out = np.zeros(4)
        assert m.sparse_add(idx, vals, 1.0, out, 1.0) == (ref.ERR_VALUE, 1)
        assert not out.any()


@pytest.mark.parametrize("impl", ["ext", "ref"])
def test_sparsify_bad_arguments(impl):
    if impl == "ext" and not kernels.HAVE_CYTHON_SPARSIFY_QUANT:
        pytest.skip("compiled kernels not built")
    k = kernels if impl == "ext" else ref
    with pytest.raises(ValueError):
        k.randk_indices(0, 5, 6)
    with pytest.raises(ValueError):
        k.randk_indices(0, 2**32, 1)
    with pytest.raises(ValueError):
        k.topk_indices(np.ones(3), 4)
    with pytest.raises(ValueError):
        k.gaps_nbytes(np.array([3, 3], np.int64))
    with pytest.raises(ValueError):
        k.gaps_encode(np.array([1, 5], np.int64), np.empty(1, np.uint8))
    with pytest.raises(ValueError):
        k.sparse_add(np.array([5], np.int64), np.zeros(4, np.uint8), 1.0, np.zeros(5), 1.0)


# -- dense quantizers ----------------------------------------------------------------

def _both_encode(mod, fn, x, args, n):
    """Run fn of the kernel and of the twin; (payload_kernel, payload_twin) or None if both refuse."""
    a, b = np.empty(n, np.uint8), np.full(n, 0xAA, np.uint8)
    try:
        getattr(ref, fn)(x, *args, b)
    except ValueError:
        with pytest.raises(ValueError):
            getattr(mod, fn)(x, *args, a)
        return None
    getattr(mod, fn)(x, *args, a)
    assert a.tobytes() == b.tobytes(), (fn, x.dtype, x.size, args)
    return a


def _both_decode(mod, fn, payload, args, d, rng, weight):
    for out_dtype in DTYPES:
        o1 = rng.standard_normal(d).astype(out_dtype)
        o2, before = o1.copy(), o1.copy()
        with np.errstate(over="ignore"):
            r1 = getattr(mod, fn)(payload, d, *args, o1, weight)
            r2 = getattr(ref, fn)(payload, d, *args, o2, weight)
        assert r1 == r2, (fn, d, args, r1, r2)
        assert o1.tobytes() == o2.tobytes(), (fn, d, args)
        if r1[0] != ref.ERR_OK:
            assert o1.tobytes() == before.tobytes()
    return r1


def _check_quant(mod, rng, x, bs, levels=(1, 2, 3, 8, 127, 128, 255), resolutions=(1e-30, 1e-3, 0.5, 7.0)):
    d = x.size
    b = bs or max(d, 1)
    p = _both_encode(mod, "sign_encode", x, (b,), ref.sign_nbytes(d, b))
    if p is not None:
        assert _both_decode(mod, "sign_decode_add", p, (b,), d, rng, -0.7) == (0, -1)
    p = _both_encode(mod, "natural_encode", x, (_seed(rng),), ref.natural_nbytes(d))
    if p is not None:
        assert _both_decode(mod, "natural_decode_add", p, (), d, rng, 1.5) == (0, -1)
    for norm in (ref.NORM_2, ref.NORM_INF):
        sc = ref.block_scales(x, b, norm)
        if not np.isfinite(sc).all():
            continue
        for s in levels:
            p = _both_encode(mod, "natdither_encode", x, (sc, b, s, _seed(rng)),
                             ref.natdither_nbytes(d, b, s))
            assert _both_decode(mod, "natdither_decode_add", p, (b, s), d, rng, 0.5) == (0, -1)
    for res in resolutions:
        try:
            w = ref.rounding_widths(x, b, res)
        except ValueError:
            with pytest.raises(ValueError):
                mod.rounding_widths(x, b, res)
            continue
        assert mod.rounding_widths(x, b, res).tobytes() == w.tobytes()
        bits = int(np.repeat(w.astype(np.int64), b)[:d].sum())
        p = _both_encode(mod, "rounding_encode", x, (w, b, res), w.size + -(-bits // 8))
        assert _both_decode(mod, "rounding_decode_add", p, (b, res), d, rng, 0.5) == (0, -1)


def test_quant_small_lengths(quant):
    ext = quant
    rng = np.random.default_rng(3)
    for d, dtype, bs in itertools.product(range(18), DTYPES, [1, 3, 8, None]):
        _check_quant(ext, rng, _vector(rng, d, dtype), bs)
    for x, bs in itertools.product(SPECIAL, [1, 3, None]):
        _check_quant(ext, rng, x, bs)


def test_quant_large_lengths(quant):
    ext = quant
    d = 65_537
    rng = np.random.default_rng(d)
    for dtype, bs, s in [(np.float32, None, 8), (np.float64, 1000, 3), (np.float32, 4096, 1),
                         (np.float64, 37, 127), (np.float32, 1000, 255)]:
        _check_quant(ext, rng, _vector(rng, d, dtype), bs, levels=(s,), resolutions=(1e-3,))


def test_quant_decode_fuzz(quant):
    """Arbitrary payloads: same first error and same output; out untouched on error."""
    ext = quant
    rng = np.random.default_rng(4)
    for trial in range(600):
        d = int(rng.integers(0, 30))
        bs = int(rng.choice([1, 3, 8, max(d, 1)]))
        nb = ref.nblocks(d, bs)
        p = rng.integers(0, 256, ref.sign_nbytes(d, bs)).astype(np.uint8)
        if rng.random() < 0.7 and nb:
            p[:4 * nb] = np.frombuffer(rng.random(nb).astype("<f4").tobytes(), np.uint8)
        _both_decode(ext, "sign_decode_add", p, (bs,), d, rng, 2.0)
        p = rng.integers(0, 256, ref.natural_nbytes(d)).astype(np.uint8)
        if rng.random() < 0.5:
            p[:d] |= 1
        _both_decode(ext, "natural_decode_add", p, (), d, rng, 2.0)
        s = int(rng.choice([1, 2, 3, 7, 127, 200, 255]))
        p = rng.integers(0, 256, ref.natdither_nbytes(d, bs, s)).astype(np.uint8)
        if rng.random() < 0.7 and nb:
            p[:4 * nb] = np.frombuffer(rng.random(nb).astype("<f4").tobytes(), np.uint8)
        if rng.random() < 0.5:
            p[4 * nb:] &= np.uint8(rng.choice([0x00, 0x22, 0x66, 0xEE]))
        _both_decode(ext, "natdither_decode_add", p, (bs, s), d, rng, 2.0)
        w = rng.integers(0, 34 if rng.random() < 0.3 else 5, nb).astype(np.uint8)
        bits = int(np.repeat(w.astype(np.int64), bs)[:d].sum())
        n = max(0, nb + -(-bits // 8) + int(rng.choice([0, 0, 0, 1, -1])))
        p = rng.integers(0, 256, n).astype(np.uint8)
        p[:min(nb, n)] = w[:min(nb, n)]
        _both_decode(ext, "rounding_decode_add", p, (bs, 0.25), d, rng, 2.0)


@pytest.mark.parametrize("impl", ["ext", "ref"])
def test_quant_bad_arguments(impl):
    if impl == "ext" and not kernels.HAVE_CYTHON_SPARSIFY_QUANT:
        pytest.skip("compiled kernels not built")
    k = kernels if impl == "ext" else ref
    x = np.ones(10)
    with pytest.raises(ValueError):
        k.sign_encode(x, 4, np.empty(k.sign_nbytes(10, 4) - 1, np.uint8))
    with pytest.raises(ValueError):
        k.sign_nbytes(10, 0)
    with pytest.raises(ValueError):
        k.natural_encode(x, 0, np.empty(3, np.uint8))
    with pytest.raises(ValueError):
        k.natdither_nbytes(10, 4, 256)
    with pytest.raises(ValueError):
        k.natdither_encode(x, np.array([1, np.nan, 1], np.float32), 4, 2, 0,
                           np.empty(k.natdither_nbytes(10, 4, 2), np.uint8))
    with pytest.raises(ValueError):
        k.rounding_widths(x, 4, 0.0)
    with pytest.raises(ValueError):
        k.rounding_encode(x, np.array([33, 1, 1], np.uint8), 4, 1.0, np.empty(50, np.uint8))
    with pytest.raises(ValueError):
        k.sign_decode_add(np.zeros(k.sign_nbytes(10, 4), np.uint8), 10, 4, np.zeros(9), 1.0)
