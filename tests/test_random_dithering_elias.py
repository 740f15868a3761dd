"""random_dithering with encoding: elias -- kernels vs twins, same C(x) as dense, exact bits,
QSGD's ~2.8 bits/coordinate at s = sqrt(d), corrupted buffers."""

import itertools
import math

import numpy as np
import pytest

from psgd import kernels, kernels_ref as ref
from psgd.compressors import get_compressor
from psgd.compressors.base import HEADER_NBYTES
from psgd.errors import WireFormatError


def comp(**kw):
    return get_compressor({"name": "random_dithering", "encoding": "elias", **kw})


def _isas():
    if not kernels.HAVE_CYTHON_ELIAS:
        return ["none"]
    from psgd import _elias
    return _elias._isa_variants()


@pytest.fixture(params=_isas())
def ext(request):
    if request.param == "none":
        pytest.skip("compiled kernels not built")
    from psgd import _elias
    default = _elias._isa_variants()[-1]
    _elias._use_isa(request.param)
    yield _elias
    _elias._use_isa(default)


def test_omega_lengths():
    for n, length in [(1, 1), (2, 3), (3, 3), (4, 6), (7, 6), (8, 7), (16, 11), (100, 13), (1000, 17)]:
        assert ref.omega_length(n) == length == kernels.omega_length(n)
    n = np.arange(1, 5000)
    lengths = ref.omega_length_array(n)
    assert np.all(lengths <= n + 2)                     # the bound behind elias_max_nbytes
    assert [ref.omega_length(int(v)) for v in n[::97]] == lengths[::97].tolist()


def _vector(rng, d, dtype):
    x = rng.standard_normal(d) * rng.choice([1e-3, 1.0, 1e3], size=d)
    x[rng.random(d) < 0.2] = 0.0
    return x.astype(dtype)


def _check(ext, rng, x, bs, s, norm):
    d = x.size
    b = bs or max(d, 1)
    sc = ref.block_scales(x, b, norm)
    if not np.isfinite(sc).all():
        return
    seed = int(rng.integers(0, 2**64, dtype=np.uint64))
    n = ext.elias_max_nbytes(d, b, s)
    assert n == ref.elias_max_nbytes(d, b, s)
    p1, p2 = np.empty(n, np.uint8), np.full(n, 0xAA, np.uint8)
    m = ext.elias_encode(x, sc, b, s, seed, p1)
    assert m == ref.elias_encode(x, sc, b, s, seed, p2)
    assert p1[:m].tobytes() == p2[:m].tobytes(), (d, bs, s, norm)
    dense = np.empty(4 * ref.nblocks(d, b) + ref.symbols_nbytes(d, s), np.uint8)
    ref.dither_encode(x, sc, b, s, seed, dense)
    for out_dtype in (np.float32, np.float64):
        o1 = rng.standard_normal(d).astype(out_dtype)
        o2, o3 = o1.copy(), o1.copy()
        assert ext.elias_decode_add(p1[:m], d, b, s, o1, -1.5) == (0, -1)
        assert ref.elias_decode_add(p1[:m], d, b, s, o2, -1.5) == (0, -1)
        assert ref.dither_decode_add(dense, d, b, s, o3, -1.5) == (0, -1)
        assert o1.tobytes() == o2.tobytes() == o3.tobytes()      # the same C(x) as dense


def test_twins_small_lengths(ext):
    rng = np.random.default_rng(1)
    for d, dtype in itertools.product(range(18), (np.float32, np.float64)):
        x = _vector(rng, d, dtype)
        for bs, s in itertools.product([1, 3, None], [1, 7, 2**31 - 1]):
            _check(ext, rng, x, bs, s, ref.NORM_2 if (d + s) % 2 else ref.NORM_INF)


def test_twins_large_lengths(ext):
    rng = np.random.default_rng(2)
    d = 40_009
    for dtype, bs, s in [(np.float32, None, 200), (np.float64, 1000, 3), (np.float32, 37, 1)]:
        _check(ext, rng, _vector(rng, d, dtype), bs, s, ref.NORM_2)


def test_decode_fuzz_agrees(ext):
    """Flipped, cut and random payloads: the same first error, out untouched on error."""
    rng = np.random.default_rng(3)
    for _ in range(500):
        d = int(rng.integers(0, 25))
        bs = int(rng.choice([1, 4, max(d, 1)]))
        s = int(rng.choice([1, 2, 5, 2**31 - 1]))
        nb = ref.nblocks(d, bs)
        if rng.random() < 0.6 and d:
            x = _vector(rng, d, np.float64)
            buf = np.empty(ref.elias_max_nbytes(d, bs, s), np.uint8)
            p = buf[:ref.elias_encode(x, ref.block_scales(x, bs, 0), bs, s, 7, buf)].copy()
            if p.size and rng.random() < 0.8:
                p[int(rng.integers(p.size))] ^= np.uint8(1 << int(rng.integers(8)))
            if rng.random() < 0.3:
                p = p[:int(rng.integers(0, p.size + 1))]
        else:
            p = rng.integers(0, 256, int(rng.integers(0, 4 * nb + 12))).astype(np.uint8)
            if nb and p.size >= 4 * nb:
                p[:4 * nb] = np.frombuffer(rng.random(nb).astype("<f4").tobytes(), np.uint8)
        o1 = rng.standard_normal(d)
        o2, before = o1.copy(), o1.copy()
        r1 = ext.elias_decode_add(p, d, bs, s, o1, 2.0)
        assert r1 == ref.elias_decode_add(p, d, bs, s, o2, 2.0), (d, bs, s, p.tobytes().hex())
        assert o1.tobytes() == o2.tobytes()
        if r1[0] != ref.ERR_OK:
            assert o1.tobytes() == before.tobytes()


def exact_bits(c, x, y):
    """64 + 32 nblocks + 8 ceil(S/8), S from the decoded nonzeros (module docstring)."""
    d = x.size
    bs = c.block_size or max(d, 1)
    nz = np.flatnonzero(y)
    t = np.repeat(kernels.block_scales(x, bs, kernels.NORM_2 if c.norm == "2" else kernels.NORM_INF)
                  .astype(np.float64), bs)[:d]
    levels = np.rint(np.abs(y[nz]) / t[nz] * c.levels).astype(np.int64)
    gaps = np.diff(nz, prepend=-1)
    S = ref.omega_length(nz.size + 1) + sum(ref.omega_length(int(g)) + 1 + ref.omega_length(int(v))
                                            for g, v in zip(gaps, levels))
    return 64 + 32 * -(-d // bs) + 8 * math.ceil(S / 8)


@pytest.mark.parametrize("cfg", [dict(levels=1), dict(levels=4, block_size=7), dict(levels=30, norm="inf")],
                         ids=str)
def test_round_trip_and_exact_bits(cfg):
    c = comp(**cfg)
    dense = get_compressor({"name": "random_dithering", **cfg})
    rng = np.random.default_rng(4)
    for d in [0, 1, 2, 9, 300]:
        x = _vector(rng, d, np.float64)
        buf = c.encode(x, np.random.default_rng(d))
        y = c.decode(buf, d=d)
        np.testing.assert_array_equal(y, dense.decode(dense.encode(x, np.random.default_rng(d))))
        assert 8 * len(buf) == exact_bits(c, x, y)
        assert len(buf) <= c.max_nbytes(d) and c.nbytes(d) is None


def test_qsgd_sqrt_d_costs_about_2_8_bits():
    """QSGD Cor. 3.3: s = sqrt(d), one block, norm 2: about 2.8 bits per coordinate."""
    d = 10**5
    c = comp(levels=round(math.sqrt(d)))
    rng = np.random.default_rng(5)
    bits = [8 * len(c.encode(rng.standard_normal(d), rng)) / d for _ in range(3)]
    assert 2.6 < np.mean(bits) < 2.9, bits
    assert c.omega(d) <= 1.0


def test_corrupted_buffers():
    rng = np.random.default_rng(6)
    c = comp(levels=3, block_size=8)
    x = rng.standard_normal(40)
    buf = c.encode(x, rng)
    for n in range(len(buf)):
        with pytest.raises(WireFormatError):
            c.decode(buf[:n], d=40)
    with pytest.raises(WireFormatError, match="goes on"):
        c.decode(np.concatenate([buf, np.zeros(1, np.uint8)]), d=40)
    for _ in range(300):
        bad = buf.copy()
        bad[int(rng.integers(HEADER_NBYTES, len(buf)))] ^= np.uint8(1 << int(rng.integers(8)))
        out = np.zeros(40)
        try:
            c.decode_add(bad, out)
        except WireFormatError:
            assert not out.any()
    zero = comp(levels=3, block_size=2).encode(np.r_[0.0, 0.0, 1.0, 1.0], rng)
    bad = zero.copy()
    bad[HEADER_NBYTES + 8:] = [0b10000001, 0b00000000]      # count 2.. then a gap into block 0
    with pytest.raises(WireFormatError):
        comp(levels=3, block_size=2).decode(bad)


def test_unbiased_monte_carlo():
    """E C(x) = x within 5 standard errors (exact per-coordinate variance of the levels)."""
    c = comp(levels=3, block_size=6)
    rng = np.random.default_rng(7)
    x = rng.standard_normal(18)
    x[4] = 0.0
    t = np.repeat(kernels.block_scales(x, 6, kernels.NORM_2).astype(np.float64), 6)
    y = np.abs(x) / t * 3
    var = t * t * (y - np.floor(y)) * (np.floor(y) + 1 - y) / 9
    n = 3000
    mean = np.mean([c.decode(c.encode(x, rng)) for _ in range(n)], axis=0)
    assert np.all(np.abs(mean - x) <= 5 * np.sqrt(var / n) + 1e-12)
