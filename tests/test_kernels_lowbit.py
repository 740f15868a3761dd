"""Compiled psgd._lowbit (cast, minmax) against its NumPy twin psgd.kernels_ref._lowbit.

Encodes must agree byte for byte, decodes value for value and error for error, on lengths
0..17, large odd lengths, mixed magnitudes (subnormal to large, signed zeros) and random
payloads, for every build this CPU can run (baseline x86-64 and, where present, x86-64-v4).
"""

import itertools
import os

import numpy as np
import pytest

from psgd import kernels, kernels_ref as ref

DTYPES = [np.float32, np.float64]
FORMATS = [ref.CAST_FP16, ref.CAST_BF16]


def _isas():
    if not kernels.HAVE_CYTHON_LOWBIT:
        return ["none"]
    from psgd import _lowbit
    return _lowbit._isa_variants()


@pytest.fixture(params=_isas())
def lowbit(request):
    if request.param == "none":
        pytest.skip("compiled kernels not built")
    from psgd import _lowbit
    _lowbit._use_isa(request.param)
    yield _lowbit
    _lowbit._use_isa(_lowbit._isa_variants()[-1])


def test_extension_built_when_required():
    if os.environ.get("PSGD_WITH_CYTHON") != "1":
        pytest.skip("PSGD_WITH_CYTHON is not 1")
    assert kernels.HAVE_CYTHON_LOWBIT and kernels.cast_encode.__module__ == "psgd._lowbit"


def test_same_names_and_constants():
    for name in kernels.KERNELS_LOWBIT:
        assert callable(getattr(kernels, name)) and callable(getattr(ref, name))
    if kernels.HAVE_CYTHON_LOWBIT:
        from psgd import _lowbit
        for name in ("CAST_FP16", "CAST_BF16", "CAST_FORMATS", "MINMAX_MAX_BITS", "ERR_OK",
                     "ERR_SCALE", "ERR_PADDING", "ERR_VALUE"):
            assert getattr(_lowbit, name) == getattr(ref, name), name


def _vector(rng, d, dtype):
    """Magnitudes from 1e-13 to 1e4 (fp16 subnormals and normals), some +0 and -0."""
    x = rng.standard_normal(d) * np.exp(rng.uniform(-30, 9, d))
    x[rng.random(d) < 0.1] = 0.0
    x[rng.random(d) < 0.05] = -0.0
    return x.astype(dtype)


def _check(mod, rng, x):
    d = x.size
    for fmt, stochastic in itertools.product(FORMATS, (False, True)):
        a, b = np.empty(2 * d, np.uint8), np.empty(2 * d, np.uint8)
        seed = int(rng.integers(2**63))
        mod.cast_encode(x, fmt, stochastic, seed, a)
        ref.cast_encode(x, fmt, stochastic, seed, b)
        assert a.tobytes() == b.tobytes(), (fmt, stochastic, x.dtype, d)
        _both_decode(mod, "cast_decode_add", a, (fmt,), d, rng)
    for bs, bits in itertools.product((1, 3, 128, 10**6), (1, 2, 5, 8)):
        n = ref.minmax_nbytes(d, bs, bits)
        assert mod.minmax_nbytes(d, bs, bits) == n
        a, b = np.empty(n, np.uint8), np.empty(n, np.uint8)
        seed = int(rng.integers(2**63))
        mod.minmax_encode(x, bs, bits, seed, a)
        ref.minmax_encode(x, bs, bits, seed, b)
        assert a.tobytes() == b.tobytes(), (bs, bits, x.dtype, d)
        _both_decode(mod, "minmax_decode_add", a, (bs, bits), d, rng)


def _both_decode(mod, fn, payload, args, d, rng, weight=-0.7):
    for out_dtype in DTYPES:
        o1 = rng.standard_normal(d).astype(out_dtype)
        o2, before = o1.copy(), o1.copy()
        with np.errstate(all="ignore"):
            r1 = getattr(mod, fn)(payload, d, *args, o1, weight)
            r2 = getattr(ref, fn)(payload, d, *args, o2, weight)
        assert r1 == r2, (fn, d, args, r1, r2)
        assert o1.tobytes() == o2.tobytes(), (fn, d, args)
        if r1[0] != ref.ERR_OK:
            assert o1.tobytes() == before.tobytes(), "out written before the payload was rejected"
    return r1


def test_small_lengths(lowbit):
    rng = np.random.default_rng(1)
    for d, dtype in itertools.product(range(18), DTYPES):
        _check(lowbit, rng, np.clip(_vector(rng, d, dtype), -6e4, 6e4))


def test_large_lengths(lowbit):
    rng = np.random.default_rng(2)
    for d, dtype in ((9001, np.float32), (65_537, np.float64)):
        _check(lowbit, rng, np.clip(_vector(rng, d, dtype), -6e4, 6e4))


def test_nearest_fp16_and_bf16_are_ieee_round_to_nearest_even():
    rng = np.random.default_rng(3)
    x = np.clip(_vector(rng, 20_000, np.float32), -6e4, 6e4)
    x[:4] = [65504.0, -65504.0, 2.0**-25, 3 * 2.0**-26]     # the top, ties at the bottom
    out = np.empty(2 * x.size, np.uint8)
    kernels.cast_encode(x, ref.CAST_FP16, False, 0, out)
    assert out.tobytes() == x.astype("<f2").tobytes()
    kernels.cast_encode(x, ref.CAST_BF16, False, 0, out)
    u = x.view(np.uint32).astype(np.uint64)                 # float32 -> bf16, ties to even
    expect = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype("<u2")
    assert out.tobytes() == expect.tobytes()


def test_out_of_range_inputs_raise(lowbit):
    for impl in (lowbit, ref):
        for bad in (65505.0, np.inf, np.nan):
            with pytest.raises(ValueError):
                impl.cast_encode(np.array([1.0, bad]), ref.CAST_FP16, False, 0, np.empty(4, np.uint8))
        impl.cast_encode(np.array([1.0, 3e38]), ref.CAST_BF16, True, 0, np.empty(4, np.uint8))
        for bad in (1e39, np.inf, np.nan):
            with pytest.raises(ValueError):
                impl.minmax_encode(np.array([1.0, bad]), 2, 4, 0, np.empty(9, np.uint8))


def test_random_payloads(lowbit):
    """Arbitrary payloads: the same first error and the same output; out untouched on error."""
    rng = np.random.default_rng(4)
    for _ in range(1500):
        d = int(rng.integers(0, 25))
        fmt = int(rng.choice(FORMATS))
        p = rng.integers(0, 256, 2 * d).astype(np.uint8)
        if rng.random() < 0.5:
            p[1::2] &= 0x3F                                   # mostly finite codes
        _both_decode(lowbit, "cast_decode_add", p, (fmt,), d, rng)
        bs, bits = int(rng.integers(1, 6)), int(rng.integers(1, 9))
        p = rng.integers(0, 256, ref.minmax_nbytes(d, bs, bits)).astype(np.uint8)
        nb = -(-d // bs)
        if rng.random() < 0.7 and nb:
            pairs = np.sort(rng.standard_normal((nb, 2)), axis=1).astype("<f4")
            p[:8 * nb] = pairs.view(np.uint8).ravel()
        _both_decode(lowbit, "minmax_decode_add", p, (bs, bits), d, rng)
