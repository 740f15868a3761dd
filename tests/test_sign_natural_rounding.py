"""sign, natural, natural_dithering, rounding: round trips, unbiasedness, omega / delta / epsilon,
exact bits, corrupted buffers, config."""

import itertools
import math

import numpy as np
import pytest

from psgd import kernels
from psgd.compressors import get_compressor
from psgd.compressors.base import HEADER_NBYTES
from psgd.errors import ConfigError, WireFormatError


def comp(name, **kw):
    return get_compressor({"name": name, **kw})


def check_corruption(c, buf, d, rng, flips=200):
    """Truncations and extensions raise WireFormatError; flips and garbage never crash."""
    for n in range(len(buf)):
        with pytest.raises(WireFormatError):
            c.decode(buf[:n], d=d)
    with pytest.raises(WireFormatError):
        c.decode(np.concatenate([buf, np.zeros(1, np.uint8)]), d=d)
    for _ in range(flips):
        bad = buf.copy()
        i = int(rng.integers(HEADER_NBYTES, len(buf))) if len(buf) > HEADER_NBYTES else 0
        bad[i] ^= np.uint8(1 << int(rng.integers(8)))
        out = np.zeros(d, np.float64)
        try:
            with np.errstate(over="ignore"):
                c.decode_add(bad, out)
        except WireFormatError:
            assert not out.any()
    for n in range(0, 3 * len(buf), 5):
        garbage = rng.integers(0, 256, n).astype(np.uint8)
        garbage[:min(n, 8)] = buf[:min(n, 8)]
        try:
            with np.errstate(over="ignore"):
                c.decode(garbage, d=d)
        except WireFormatError:
            pass


def block_view(x, bs):
    bs = bs or max(x.size, 1)
    return [x[i:i + bs] for i in range(0, x.size, bs)]


# -- sign ---------------------------------------------------------------------------------

@pytest.mark.parametrize("bs", [None, 1, 3, 8, 10])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sign_round_trip_bits_and_contraction(bs, dtype):
    c = comp("sign", block_size=bs)
    rng = np.random.default_rng(1)
    for d in [0, 1, 7, 8, 9, 33]:
        for x in [rng.standard_normal(d), np.r_[np.ones(min(d, 1)), np.zeros(max(d - 1, 0))],
                  rng.standard_normal(d) ** 5, np.full(d, -2.5)]:
            x = x.astype(dtype)
            buf = c.encode(x, rng)
            nb = -(-d // (bs or max(d, 1)))
            assert 8 * len(buf) == 64 + 32 * nb + 8 * math.ceil(d / 8) == 8 * c.nbytes(d)
            y = c.decode(buf, d=d)
            x64 = x.astype(np.float64)
            for xb, yb in zip(block_view(x64, bs), block_view(y, bs)):
                m = np.float32(np.abs(xb).sum() / xb.size)
                np.testing.assert_allclose(np.abs(yb), m, rtol=1e-6)
                assert np.all(np.signbit(yb) == np.signbit(xb))
            err, nx = ((y - x64) ** 2).sum(), x64 @ x64
            assert err <= (c.delta(d) + 2.0**-47) * nx + 1e-300       # on every vector (+ float32 scale)
    x = np.r_[3.0, np.zeros(9)]                                  # e_1 attains delta = 1 - 1/d
    y = comp("sign").decode(comp("sign").encode(x, rng))
    assert ((y - x) ** 2).sum() == pytest.approx(comp("sign").delta(10) * 9.0)


def test_sign_decode_add_and_errors():
    c = comp("sign", block_size=4)
    rng = np.random.default_rng(2)
    x = rng.standard_normal(10).astype(np.float32)
    buf = c.encode(x, rng)
    out = np.ones(10, np.float32)
    c.decode_add(buf, out, weight=-2.0)
    np.testing.assert_array_equal(out, np.ones(10, np.float32) + (-2.0 * c.decode(buf)).astype(np.float32))
    for v in [np.array([1.0, np.nan]), np.array([np.inf]), np.array([1e39, 1e39])]:
        with pytest.raises(ValueError, match="NaN or Inf"):
            c.encode(v, rng)
    check_corruption(c, buf, 10, rng)
    bad = buf.copy()
    bad[HEADER_NBYTES + 3] |= 0x80                               # negative scale
    with pytest.raises(WireFormatError, match="scale of block 0"):
        c.decode(bad)
    for cfg in [dict(block_size=0), dict(levels=2)]:
        with pytest.raises(ConfigError):
            comp("sign", **cfg)


# -- natural ------------------------------------------------------------------------------

def natural_variance(x):
    """Exact per-coordinate variance: |t| in [2^a, 2^(a+1)): p (1-p) 4^a, p = |t|/2^a - 1."""
    a = np.abs(x.astype(np.float64))
    low = np.where(a > 0, 2.0 ** np.floor(np.log2(np.where(a > 0, a, 1.0))), 0.0)
    p = np.where(a > 0, a / np.where(low > 0, low, 1.0) - 1.0, 0.0)
    return p * (1 - p) * low * low


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_natural_round_trip_and_bits(dtype):
    c = comp("natural")
    rng = np.random.default_rng(3)
    for d in [0, 1, 8, 9, 100]:
        x = (rng.standard_normal(d) * 10.0 ** rng.integers(-30, 30, d)).astype(dtype)
        x[rng.random(d) < 0.1] = 0.0
        buf = c.encode(x, rng)
        assert 8 * len(buf) == 64 + 9 * d + (-9 * d) % 8 == 8 * c.nbytes(d)      # 9 bits/coord
        y = c.decode(buf, d=d)
        a = np.abs(x.astype(np.float64))
        nz = a > 0
        assert np.all(y[~nz] == 0)
        assert np.all(np.sign(y[nz]) == np.sign(x[nz]))
        e = np.log2(np.abs(y[nz]))
        assert np.all(e == np.round(e))                          # powers of two
        assert np.all((np.abs(y[nz]) <= 2 * a[nz]) & (np.abs(y[nz]) * 2 >= a[nz]))
    # exact powers of two are sent exactly; special float32 values
    x = np.array([1.0, -0.5, 2.0**-126, 2.0**127, -0.0, 0.0], np.float32)
    np.testing.assert_array_equal(c.decode(c.encode(x, rng), dtype=np.float32), x)
    sub = np.full(4000, 2.0**-128, np.float32)                   # subnormal: 0 or 2^-126
    y = c.decode(c.encode(sub, rng))
    assert set(np.unique(y)) <= {0.0, 2.0**-126} and abs(y.mean() / 2.0**-128 - 1) < 0.1
    top = np.full(2000, 2.0**127 * 1.5, np.float32)              # rounds up to 2^128 half the time
    y = c.decode(c.encode(top, rng))
    assert set(np.unique(y)) == {2.0**127, 2.0**128}
    with np.errstate(over="ignore"):
        assert np.isinf(c.decode(c.encode(top, rng), dtype=np.float32)).any()
    for v in [np.array([np.inf]), np.array([np.nan], np.float32), np.array([2.0**128])]:
        with pytest.raises(ValueError, match="NaN or Inf"):
            c.encode(v, rng)


def test_natural_unbiased_and_omega():
    c = comp("natural")
    rng = np.random.default_rng(4)
    x = np.r_[rng.standard_normal(12), 4 / 3, -1.2345e-20, 3.0]
    n = 6000
    draws = np.stack([c.decode(c.encode(x, rng)) for _ in range(n)])
    var = natural_variance(x)
    assert np.all(np.abs(draws.mean(0) - x) <= 5 * np.sqrt(var / n) + 1e-15 * np.abs(x))
    err = ((draws - x) ** 2).sum(1)
    assert abs(err.mean() - var.sum()) <= 5 * err.std() / math.sqrt(n)
    # the exact variance never exceeds omega ||x||^2; (4/3) 2^a attains it
    for v in [rng.standard_normal(50), rng.random(50) * 1e10, np.full(7, 4 / 3) * 2.0 ** np.arange(7)]:
        assert natural_variance(v).sum() <= c.omega(v.size) * (v @ v) * (1 + 1e-12)
    w = np.full(5, 4 / 3)
    assert natural_variance(w).sum() == pytest.approx(0.125 * (w @ w))


def test_natural_corruption():
    c = comp("natural")
    rng = np.random.default_rng(5)
    buf = c.encode(rng.standard_normal(19), rng)
    check_corruption(c, buf, 19, rng)
    bad = c.encode(np.zeros(3), rng)
    bad[HEADER_NBYTES + 3] |= 1                                  # sign bit on a zero
    with pytest.raises(WireFormatError, match="sign bit"):
        c.decode(bad)
    with pytest.raises(ConfigError):
        comp("natural", levels=3)


# -- natural dithering ----------------------------------------------------------------------

def natdither_variance(c, x):
    """Exact per-coordinate variance with the float32 (rounded-up) block scales."""
    bs = c.block_size or max(x.size, 1)
    norm = kernels.NORM_2 if c.norm == "2" else kernels.NORM_INF
    t = kernels.block_scales(np.ascontiguousarray(x), bs, norm)
    t = np.repeat(t.astype(np.float64), bs)[:x.size]
    with np.errstate(divide="ignore", invalid="ignore"):
        y = np.where(t > 0, np.abs(x) / t, 0.0)
    s = c.levels
    floor_lev = 2.0 ** -(s - 1)
    low = np.where(y >= floor_lev, 2.0 ** np.floor(np.log2(np.where(y > 0, y, 1.0))), 0.0)
    high = np.where(y >= floor_lev, np.minimum(2 * low, 1.0), floor_lev)
    return t * t * (y - low) * (high - y)


NATD = [dict(levels=s, norm=n, block_size=b) for s, n, b in
        itertools.product([1, 2, 4, 8], ["2", "inf"], [None, 5])]


@pytest.mark.parametrize("cfg", NATD, ids=str)
def test_natdither_round_trip_bits_and_variance(cfg):
    c = comp("natural_dithering", **cfg)
    rng = np.random.default_rng(6)
    for d in [0, 1, 5, 16, 23]:
        x = rng.standard_normal(d) * 10.0 ** rng.integers(-3, 3, d)
        buf = c.encode(x, rng)
        nb = -(-d // (cfg["block_size"] or max(d, 1)))
        b = 1 + (cfg["levels"]).bit_length()
        assert 8 * len(buf) == 64 + 32 * nb + 8 * math.ceil(d * b / 8) == 8 * c.nbytes(d)
        y = c.decode(buf, d=d)
        for xb, yb in zip(block_view(x, cfg["block_size"]), block_view(y, cfg["block_size"])):
            t = float(kernels.block_scales(xb, xb.size, kernels.NORM_2 if cfg["norm"] == "2"
                                           else kernels.NORM_INF)[0])
            lev = np.abs(yb[yb != 0]) / t
            assert np.all(np.isin(lev, 2.0 ** -np.arange(cfg["levels"])))   # on a level
            assert np.all(np.sign(yb[yb != 0]) == np.sign(xb[yb != 0]))
    # exact variance below omega on known hard vectors (uniform, one spike + small, just above
    # and below the lowest level, Gaussian, heavy tails)
    for d in [1, 4, 25, 100]:
        s = cfg["levels"]
        vecs = [np.ones(d), np.r_[1.0, np.full(d - 1, 1 / (1 + math.sqrt(d)))],
                np.r_[1.0, np.full(d - 1, 2.0 ** -s * 1.01)],
                np.r_[1.0, np.full(d - 1, 2.0 ** (1 - s) * 0.75)],
                rng.standard_normal(d), rng.standard_normal(d) ** 5]
        for x in vecs:
            var = natdither_variance(c, x).sum()
            assert var <= c.omega(d) * (x @ x) * (1 + 2.0**-20), (cfg, d, var / (x @ x), c.omega(d))


@pytest.mark.parametrize("cfg", [dict(levels=1), dict(levels=3, norm="inf", block_size=4),
                                 dict(levels=6)], ids=str)
def test_natdither_unbiased(cfg):
    c = comp("natural_dithering", **cfg)
    rng = np.random.default_rng(7)
    x = rng.standard_normal(12)
    x[2] = 0.0
    n = 5000
    draws = np.stack([c.decode(c.encode(x, rng)) for _ in range(n)])
    se = np.sqrt(natdither_variance(c, x) / n)
    assert np.all(np.abs(draws.mean(0) - x) <= 5 * se + 1e-12)
    err = ((draws - x) ** 2).sum(1)
    assert abs(err.mean() - natdither_variance(c, x).sum()) <= 5 * err.std() / math.sqrt(n) + 1e-12


def test_natdither_corruption_and_config():
    rng = np.random.default_rng(8)
    for cfg in [dict(levels=3, block_size=4), dict(levels=1)]:
        c = comp("natural_dithering", **cfg)
        check_corruption(c, c.encode(rng.standard_normal(13), rng), 13, rng)
    for cfg in [dict(levels=0), dict(levels=256), dict(norm="1"), dict(block_size=0)]:
        with pytest.raises(ConfigError):
            comp("natural_dithering", **cfg)
    assert comp("natural_dithering", levels=8).omega(10**6) == pytest.approx(0.125 + 1000 / 128 * 1)
    with pytest.raises(ValueError, match="NaN or Inf"):
        comp("natural_dithering").encode(np.array([1.0, np.inf]), rng)


# -- rounding -------------------------------------------------------------------------------

def rounding_bits(x, res, bs):
    q = np.rint(x.astype(np.float64) / res).astype(np.int64)
    z = np.where(q >= 0, 2 * q, -2 * q - 1)
    bits = 0
    blocks = block_view(z, bs)
    for zb in blocks:
        bits += zb.size * int(zb.max()).bit_length()
    return 64 + 8 * len(blocks) + 8 * math.ceil(bits / 8)


@pytest.mark.parametrize("bs", [None, 1, 4, 64])
@pytest.mark.parametrize("res", [1e-3, 0.5, 3.0])
def test_rounding_round_trip_bits_and_epsilon(bs, res):
    c = comp("rounding", resolution=res, block_size=bs)
    rng = np.random.default_rng(9)
    for d in [0, 1, 9, 100]:
        for x in [rng.standard_normal(d), np.zeros(d), rng.standard_normal(d) * 1e-4,
                  np.full(d, res / 2), np.full(d, -1.5 * res)]:
            buf = c.encode(x, rng)
            assert 8 * len(buf) == rounding_bits(x, res, bs)      # exact bits
            y = c.decode(buf, d=d)
            np.testing.assert_array_equal(y, res * np.rint(x / res))
            err = float(((y - x) ** 2).sum())
            assert math.sqrt(err) <= c.epsilon(d) * (1 + 1e-12)
            assert err <= c.delta(d) * (x @ x) * (1 + 1e-12) + 1e-300
    assert c.epsilon(16) == 2 * res and not c.unbiased and c.delta(5) == 1.0


def test_rounding_errors_and_config():
    rng = np.random.default_rng(10)
    c = comp("rounding", resolution=0.01, block_size=3)
    with pytest.raises(ValueError, match="larger resolution"):
        c.encode(np.array([1e8]), rng)
    with pytest.raises(ValueError, match="NaN or Inf"):
        c.encode(np.array([np.nan]), rng)
    x = rng.standard_normal(20)
    buf = c.encode(x, rng)
    check_corruption(c, buf, 20, rng)
    bad = buf.copy()
    bad[HEADER_NBYTES] += 1                                    # width no longer minimal: length too
    with pytest.raises(WireFormatError):
        c.decode(bad)
    z = comp("rounding", resolution=1.0).encode(np.array([3.0, -1.0]), rng)   # codes 6, 1: width 3
    bad = z.copy()
    bad[HEADER_NBYTES + 1] = 0b001001                          # codes 1, 1: width 3 not minimal
    with pytest.raises(WireFormatError, match="width"):
        comp("rounding", resolution=1.0).decode(bad)
    for cfg in [{}, dict(resolution=0.0), dict(resolution=-1.0), dict(resolution=1.0, block_size=0)]:
        with pytest.raises(ConfigError):
            comp("rounding", **cfg)


def test_golden_bytes():
    """Freeze the deterministic wire formats (sign, rounding) and natural's random stream."""
    x = np.array([0.5, -3.0, 0.0, 2.25, -0.125, 7.0, 1.0, -1.0, 4.0], np.float32)
    assert comp("sign", block_size=4).encode(x, None).tobytes().hex() == \
        "c5010c0009000000" "0000b83f" "00001240" "00008040" "9200"
    assert comp("rounding", resolution=0.5).encode(x, None).tobytes().hex() == \
        "c5010f0009000000" "05" "620104381910"
    rng = np.random.default_rng(0)
    assert comp("natural").encode(x, rng).tobytes().hex() == GOLDEN_NATURAL


GOLDEN_NATURAL = "c5010d0009000000" "7e8000817c827f7f81" "9200"


@pytest.mark.parametrize("cfg", [dict(name="sign", block_size=5), dict(name="natural"),
                                 dict(name="natural_dithering", levels=3, block_size=4)], ids=str)
def test_encode_into_send_buffer(cfg):
    """Fixed-length codes write straight into a preallocated buffer: same bytes as encode."""
    c = get_compressor(cfg)
    x = np.random.default_rng(11).standard_normal(23)
    buf = np.full(c.max_nbytes(23) + 5, 0xEE, np.uint8)
    n = c.encode_into(x, np.random.default_rng(3), buf)
    assert n == c.nbytes(23)
    assert buf[:n].tobytes() == c.encode(x, np.random.default_rng(3)).tobytes()
    assert np.all(buf[n:] == 0xEE)
