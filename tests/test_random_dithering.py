"""random_dithering: round trips, unbiasedness, variance vs omega, sizes, corrupted buffers, config."""

import itertools
import math

import numpy as np
import pytest

from psgd.compressors import get_compressor
from psgd.compressors.base import HEADER_NBYTES
from psgd.errors import ConfigError, WireFormatError
from psgd.kernels_ref import symbol_bits

CONFIGS = [dict(levels=s, norm=n, block_size=b)
           for s, n, b in itertools.product([1, 2, 7], ["2", "inf"], [None, 1, 4])]


def comp(**kw):
    return get_compressor({"name": "random_dithering", **kw})


def scales_of(c, x):
    """Per-coordinate float32-rounded-up scales, as the compressor computes them."""
    from psgd import kernels
    bs = c.block_size or max(x.size, 1)
    t = kernels.block_scales(np.ascontiguousarray(x), bs, kernels.NORM_2 if c.norm == "2" else kernels.NORM_INF)
    return np.repeat(t.astype(np.float64), bs)[:x.size]


def exact_variance(c, x):
    """Per-coordinate Var C(x)_j = t^2 (y - l)(l + 1 - y) / s^2, y = s |x_j| / t (papers.md §A.5)."""
    t = scales_of(c, x)
    s = c.levels
    with np.errstate(invalid="ignore", divide="ignore"):
        y = np.where(t > 0, np.abs(x) / t * s, 0.0)
    low = np.floor(y)
    return t * t * (y - low) * (low + 1 - y) / (s * s)


# -- round trips ------------------------------------------------------------------

@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_round_trip_support(cfg, dtype):
    c = comp(**cfg)
    rng = np.random.default_rng(1)
    x = rng.standard_normal(103).astype(dtype)
    x[::10] = 0
    buf = c.encode(x, rng)
    out = c.decode(buf, d=x.size)
    t = scales_of(c, x.astype(np.float64))
    assert np.all(out[t == 0] == 0)
    k = out[t > 0] / t[t > 0] * c.levels               # integer levels with the sign of x
    assert np.allclose(k, np.round(k), atol=1e-9)
    assert np.all(np.abs(np.round(k)) <= c.levels)
    assert np.all(out[x == 0] == 0)
    nz = out != 0
    assert np.all(np.sign(out[nz]) == np.sign(x[nz]))
    # each coordinate lands on one of the two levels around |x_j|
    assert np.all(np.abs(out - x) <= t / c.levels * (1 + 1e-12))


@pytest.mark.parametrize("cfg", CONFIGS[:6], ids=str)
def test_zero_and_tiny_vectors(cfg):
    c = comp(**cfg)
    rng = np.random.default_rng(2)
    for d in [0, 1, 2, 5]:
        buf = c.encode(np.zeros(d), rng)
        assert len(buf) == c.nbytes(d)
        np.testing.assert_array_equal(c.decode(buf), np.zeros(d))
    # d = 1 with float32 input: t = |x|, y = s, so the value is exact
    for v in [3.25, -1e-20, 7e30]:
        x = np.array([v], np.float32)
        np.testing.assert_array_equal(c.decode(c.encode(x, rng), dtype=np.float32), x)
    assert c.decode(c.encode(np.zeros(0), rng)).shape == (0,)


def test_decode_add_dtypes_and_weight():
    rng = np.random.default_rng(3)
    c = comp(levels=3, block_size=10)
    for in_dtype, out_dtype in itertools.product([np.float32, np.float64], repeat=2):
        x = rng.standard_normal(57).astype(in_dtype)
        buf = c.encode(x, rng)
        dec = c.decode(buf)
        out = np.ones(57, out_dtype)
        c.decode_add(buf, out, weight=-0.5)
        expected = np.ones(57, out_dtype) + (-0.5 * dec).astype(out_dtype)
        np.testing.assert_array_equal(out, expected)


def test_seeded_encode_is_reproducible():
    c = comp(levels=2, norm="inf", block_size=16)
    x = np.random.default_rng(4).standard_normal(1000)
    a = c.encode(x, np.random.default_rng(9))
    b = c.encode(x, np.random.default_rng(9))
    assert a.tobytes() == b.tobytes()
    assert a.tobytes() != c.encode(x, np.random.default_rng(10)).tobytes()


def test_encode_rejects_non_finite():
    c = comp()
    rng = np.random.default_rng(0)
    for x in [np.array([1.0, np.nan]), np.array([np.inf, 1.0]), np.array([1e300, 1e300])]:
        with pytest.raises(ValueError, match="NaN or Inf"):
            c.encode(x, rng)


# -- statistics -------------------------------------------------------------------

def _draws(c, x, n, seed):
    rng = np.random.default_rng(seed)
    return np.stack([c.decode(c.encode(x, rng)) for _ in range(n)])


@pytest.mark.parametrize("cfg", [dict(levels=1), dict(levels=1, norm="inf", block_size=4),
                                 dict(levels=3, block_size=7), dict(levels=7, norm="inf")], ids=str)
def test_unbiased_monte_carlo(cfg):
    c = comp(**cfg)
    x = np.random.default_rng(5).standard_normal(30)
    x[3] = 0.0
    n = 4000
    mean = _draws(c, x, n, seed=6).mean(axis=0)
    se = np.sqrt(exact_variance(c, x) / n)
    assert np.all(np.abs(mean - x) <= 5 * se + 1e-9 * np.abs(x)), np.max(np.abs(mean - x) / (se + 1e-300))


def _worst_vectors(d):
    t = 1 / (1 + math.sqrt(d))
    rng = np.random.default_rng(d)
    return {"uniform": np.ones(d), "inf-worst": np.r_[1.0, np.full(d - 1, t)],
            "gauss": rng.standard_normal(d), "sparse": np.r_[1.0, np.zeros(d - 1)],
            "spiky": rng.standard_normal(d) ** 5}


@pytest.mark.parametrize("d", [1, 4, 25, 100])
def test_exact_variance_below_omega(d):
    for cfg in CONFIGS + [dict(levels=4, block_size=None), dict(levels=10, norm="inf")]:
        c = comp(**cfg)
        for name, x in _worst_vectors(d).items():
            var = exact_variance(c, x).sum()
            # rounding t up to float32 (t32 <= t (1 + 2^-24)) adds at most ~2^-24 t ||x||_1
            # <= 2^-24 sqrt(d) ||x||^2 to the variance; omega() states the formula without it
            slack = 2.0**-22 * math.sqrt(d)
            assert var <= (c.omega(d) + slack) * (x @ x), (cfg, name, var / (x @ x), c.omega(d))


@pytest.mark.parametrize("d", [4, 100])
def test_omega_attained_by_known_worst_cases(d):
    """DIANA Lemma 2: uniform vector for norm 2, (1, t, ..., t) for norm inf (s = 1)."""
    x = _worst_vectors(d)
    c2, ci = comp(levels=1, norm="2"), comp(levels=1, norm="inf")
    assert exact_variance(c2, x["uniform"]).sum() / d == pytest.approx(c2.omega(d), rel=1e-6)
    xi = x["inf-worst"]
    assert exact_variance(ci, xi).sum() / (xi @ xi) == pytest.approx(ci.omega(d), rel=1e-6)
    # and empirically: the Monte Carlo omega stays within 5 standard errors below omega
    for c, v in [(c2, x["uniform"]), (ci, xi)]:
        n = 2000
        ratio = ((_draws(c, v, n, seed=d) - v) ** 2).sum(axis=1) / (v @ v)
        assert ratio.mean() <= c.omega(d) + 5 * ratio.std() / math.sqrt(n)
        assert ratio.mean() >= c.omega(d) - 5 * ratio.std() / math.sqrt(n)   # attained


def test_omega_formulas():
    assert comp(levels=1).omega(100) == pytest.approx(9.0)
    assert comp(levels=1, norm="inf").omega(100) == pytest.approx(4.5)
    assert comp(levels=1, block_size=25).omega(100) == pytest.approx(4.0)
    assert comp(levels=1, block_size=1000).omega(100) == pytest.approx(9.0)
    assert comp(levels=4).omega(100) == pytest.approx(min(100 / 64, 10 / 4))
    assert comp(levels=10).omega(100) == pytest.approx(0.25)
    assert comp(levels=1).omega(1) == 0.0 and comp(levels=3).omega(0) == 0.0


@pytest.mark.parametrize("cfg", [dict(levels=1, norm="2", block_size=5), dict(levels=1, norm="inf"),
                                 dict(levels=3, block_size=8)], ids=str)
def test_variance_formula_matches_monte_carlo(cfg):
    """E||C(x) - x||^2 = sum_j Var_j; for s = 1 that is DIANA Lemma 1's
    Psi = sum_l (||x(l)||_1 ||x(l)||_p - ||x(l)||_2^2)."""
    c = comp(**cfg)
    x = np.random.default_rng(8).standard_normal(40)
    exact = exact_variance(c, x).sum()
    if c.levels == 1:
        bs = c.block_size or x.size
        psi = 0.0
        for blk in np.split(x, range(bs, x.size, bs)):
            p = np.abs(blk).max() if c.norm == "inf" else np.linalg.norm(blk)
            psi += np.abs(blk).sum() * p - blk @ blk
        assert exact == pytest.approx(psi, rel=1e-6)
    n = 3000
    err = ((_draws(c, x, n, seed=9) - x) ** 2).sum(axis=1)
    assert abs(err.mean() - exact) <= 5 * err.std() / math.sqrt(n)


# -- sizes ------------------------------------------------------------------------

@pytest.mark.parametrize("d", [0, 1, 4, 5, 6, 17, 1001])
@pytest.mark.parametrize("cfg", CONFIGS + [dict(levels=255, block_size=64), dict(levels=2**31 - 1)], ids=str)
def test_message_length_is_exact(cfg, d):
    c = comp(**cfg)
    nblocks = -(-d // (c.block_size or max(d, 1)))
    sym = -(-d // 5) if c.levels == 1 else -(-d * symbol_bits(c.levels) // 8)
    buf = c.encode(np.random.default_rng(d).standard_normal(d), np.random.default_rng(0))
    assert len(buf) == HEADER_NBYTES + 4 * nblocks + sym == c.nbytes(d) == c.max_nbytes(d)


def test_bits_per_coordinate_s1():
    d = 10**6
    x = np.random.default_rng(10).standard_normal(d).astype(np.float32)
    for bs in [None, 1000]:
        c = comp(levels=1, block_size=bs)
        nbits = 8 * len(c.encode(x, np.random.default_rng(0)))
        nblocks = 1 if bs is None else d // bs
        assert nbits <= 2 * d + 32 * nblocks + 64
        assert nbits == 64 + 32 * nblocks + 8 * math.ceil(d / 5)       # 1.6 bits/coordinate


def test_wire_format_is_frozen():
    """Golden bytes: a change here breaks every peer running an older psgd."""
    x = np.arange(-6, 7) / 4
    for cfg, hexed in [(dict(levels=1, block_size=5), "c50102000d00000012ca1740f6de773f42660c40366c0c"),
                       (dict(levels=3, norm="inf"), "c50102000d0000000000c03f6fbb01226d")]:
        assert comp(**cfg).encode(x, np.random.default_rng(0)).tobytes().hex() == hexed


# -- corrupted buffers ------------------------------------------------------------

def _good(cfg, d=23, seed=0):
    c = comp(**cfg)
    return c, c.encode(np.random.default_rng(seed).standard_normal(d), np.random.default_rng(seed))


@pytest.mark.parametrize("cfg", [dict(levels=1, block_size=4), dict(levels=3), dict(levels=4, block_size=5)], ids=str)
def test_corruptions_raise(cfg):
    c, buf = _good(cfg)
    for cut in [0, 3, 7, 8, len(buf) - 1]:
        with pytest.raises(WireFormatError):
            c.decode(buf[:cut])
    with pytest.raises(WireFormatError):
        c.decode(np.r_[buf, np.uint8(0)])
    for i, bit in itertools.product(range(HEADER_NBYTES), range(8)):
        bad = buf.copy()
        bad[i] ^= 1 << bit
        with pytest.raises(WireFormatError):
            c.decode(bad)
    with pytest.raises(WireFormatError):
        c.decode(buf, d=22)
    bad = buf.copy()
    bad[8:12] = np.frombuffer(np.float32(np.nan).tobytes(), np.uint8)
    with pytest.raises(WireFormatError, match="scale of block 0"):
        c.decode(bad)
    bad[8:12] = np.frombuffer(np.float32(-1.0).tobytes(), np.uint8)
    with pytest.raises(WireFormatError, match="scale"):
        c.decode(bad)
    bad = buf.copy()
    bad[-1] = 0xFF                                  # trit >= 243, or nonzero padding bits
    with pytest.raises(WireFormatError):
        c.decode(bad)
    with pytest.raises(WireFormatError):
        c.decode("not bytes")


def test_specific_symbol_errors():
    c = comp(levels=1)                              # d = 7: 2 trit bytes, 3 padding trits
    x = np.zeros(7)
    buf = c.encode(x, np.random.default_rng(0))
    bad = buf.copy()
    bad[12] = 243
    with pytest.raises(WireFormatError, match="trit byte 0 is 243"):
        c.decode(bad)
    bad = buf.copy()
    bad[13] = 9                                     # trit 2 of byte 1 = coordinate 7 >= d
    with pytest.raises(WireFormatError, match="padding"):
        c.decode(bad)
    c = comp(levels=5)                              # b = 4 bits: code = sign + 2 level
    buf = c.encode(np.zeros(2), np.random.default_rng(0))
    for byte, what in [(0x0C, "level above"), (0x01, "sign bit"), (0x10, "sign bit"), (0xD0, "level above")]:
        bad = buf.copy()
        bad[-1] = byte
        with pytest.raises(WireFormatError, match=what):
            c.decode(bad)
    bad = buf.copy()
    bad[-1] = 0xBA                                  # levels 5 and 5, signs set: valid
    np.testing.assert_array_equal(c.decode(bad), [0.0, 0.0])


def test_random_mutations_never_crash():
    rng = np.random.default_rng(12)
    bufs = [_good(cfg, d=int(rng.integers(0, 30)), seed=i) for i, cfg in enumerate(CONFIGS)]
    ok = 0
    for _ in range(3000):
        c, buf = bufs[int(rng.integers(len(bufs)))]
        bad = buf.copy()
        kind = rng.integers(4)
        if kind == 0:
            for _ in range(int(rng.integers(1, 4))):
                i = int(rng.integers(bad.size))
                bad[i] ^= np.uint8(1 << int(rng.integers(8)))
        elif kind == 1:
            bad = bad[:int(rng.integers(bad.size + 1))]
        elif kind == 2:
            bad = np.r_[bad, rng.integers(0, 256, int(rng.integers(1, 5))).astype(np.uint8)]
        else:
            bad[HEADER_NBYTES:] = rng.integers(0, 256, bad.size - HEADER_NBYTES)
        try:
            res = c.decode(bad.tobytes())
            assert np.isfinite(res).all()
            ok += 1
        except WireFormatError:
            pass
    assert 0 < ok < 3000


# -- config -----------------------------------------------------------------------

def test_config_round_trip():
    for cfg in CONFIGS:
        c = comp(**cfg)
        conf = c.get_config()
        assert conf == {"name": "random_dithering", "encoding": "dense", **cfg}
        again = get_compressor(conf)
        assert again == c and conf == c.get_config()
    assert comp().get_config() == {"name": "random_dithering", "levels": 1, "norm": "2",
                                   "block_size": None, "encoding": "dense"}
    assert comp(norm=2).norm == "2"                  # YAML numbers compare by their text


@pytest.mark.parametrize("bad, match", [
    (dict(levels=0), "compressor.levels"), (dict(levels=1.5), "compressor.levels"),
    (dict(levels=2**31), "compressor.levels"), (dict(norm="1"), "compressor.norm"),
    (dict(block_size=0), "compressor.block_size"), (dict(encoding="zip"), "compressor.encoding"),
    (dict(level=2), "compressor.level: unknown key"),
])
def test_bad_params(bad, match):
    with pytest.raises(ConfigError, match=match) as info:
        comp(**bad)
    assert "\n" not in str(info.value)


def test_registered():
    from psgd.compressors import available
    assert "random_dithering" in available()
    c = comp()
    assert c.codec_id == 2 and c.unbiased
