"""cast, minmax, bernoulli and natural_dithering beyond 127 levels: the properties their
docstrings state, beyond the generic codec contract (tests/test_codec_contract.py)."""

import math

import numpy as np
import pytest

from psgd import kernels
from psgd.compressors import get_compressor
from psgd.compressors.base import HEADER_NBYTES
from psgd.errors import ConfigError, WireFormatError


def _mc(c, x, n, rng):
    ys = np.array([c.decode(c.encode(x, rng), d=x.size) for _ in range(n)])
    x = x.astype(np.float64)
    return ys.mean(axis=0), ((ys - x) ** 2).sum(axis=1).mean() / (x @ x)


# -- cast -------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt,m", [("fp16", 10), ("bf16", 7)])
def test_cast_sizes_bounds_and_nearest_is_numpy(fmt, m):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(1001).astype(np.float32)
    near = get_compressor({"name": "cast", "format": fmt})
    sto = get_compressor({"name": "cast", "format": fmt, "rounding": "stochastic"})
    assert not near.unbiased and sto.unbiased
    assert near.delta(1001) == sto.omega(1001) == 2.0 ** (-2 * m - 2)
    buf = near.encode(x, rng)
    assert len(buf) == HEADER_NBYTES + 2 * 1001            # 16 bits a coordinate, exactly
    y = near.decode(buf)
    if fmt == "fp16":
        assert np.array_equal(y, x.astype(np.float16).astype(np.float64))
    assert (np.abs(y - x) <= 2.0 ** (-m - 1) * np.abs(x)).all()   # |err| <= ulp/2 <= 2^-(m+1)|x|
    ys = [sto.decode(sto.encode(x, rng)) for _ in range(3)]
    # stochastic: the two format neighbours of x, one ulp apart at most
    assert all((np.abs(v - x) < 2.0 ** -m * np.abs(x)).all() for v in ys)


def test_cast_stochastic_is_unbiased_with_the_stated_variance():
    rng = np.random.default_rng(1)
    c = get_compressor({"name": "cast", "format": "bf16", "rounding": "stochastic"})
    x = np.array([1 + 2.0**-9, 3.0, -1.0 / 3, 1e-30, 1e30], np.float32)
    mean, ratio = _mc(c, x, 4000, rng)
    assert np.allclose(mean, x, rtol=2.0**-7 * 5 / math.sqrt(4000) + 1e-9, atol=0)
    assert ratio <= c.omega(5)
    # 1 + 2^-9 sits at a quarter of bf16's spacing 2^-7: up with probability 1/4
    ups = np.mean([c.decode(c.encode(x[:1], rng))[0] > 1.0 for _ in range(4000)])
    assert abs(ups - 0.25) < 5 * math.sqrt(0.25 * 0.75 / 4000)


def test_cast_refuses_what_the_format_cannot_hold():
    c = get_compressor({"name": "cast", "format": "fp16"})
    with pytest.raises(ValueError, match="65504"):
        c.encode(np.array([1.0, 70000.0]), np.random.default_rng(0))
    get_compressor({"name": "cast", "format": "bf16"}).encode(np.array([7e4, 1e38]),
                                                              np.random.default_rng(0))
    bad = c.encode(np.ones(3), np.random.default_rng(0))
    bad[HEADER_NBYTES + 3] = 0x7C                             # coordinate 1 becomes +Inf
    with pytest.raises(WireFormatError, match="coordinate 1"):
        c.decode(bad)
    with pytest.raises(ConfigError, match="format"):
        get_compressor({"name": "cast", "format": "fp8"})


# -- minmax -----------------------------------------------------------------------------------

@pytest.mark.parametrize("bits,bucket", [(8, 1024), (4, 64), (1, 16), (2, 5)])
def test_minmax_exact_bits_unbiased_and_omega(bits, bucket):
    rng = np.random.default_rng(bits)
    d = 300
    c = get_compressor({"name": "minmax", "bits": bits, "bucket_size": bucket})
    x = rng.standard_normal(d)
    nb = -(-d // min(bucket, d))
    buf = c.encode(x, rng)
    assert len(buf) == HEADER_NBYTES + 8 * nb + -(-d * bits // 8)
    y = c.decode(buf)
    lo = np.repeat(np.minimum.reduceat(x, np.arange(nb) * bucket), bucket)[:d]
    hi = np.repeat(np.maximum.reduceat(x, np.arange(nb) * bucket), bucket)[:d]
    step = (hi - lo) / (2**bits - 1)
    assert (np.abs(y - x) <= step * (1 + 1e-6) + 1e-6).all()   # one of x's two grid neighbours
    mean, ratio = _mc(c, x, 600, rng)
    assert ratio <= c.omega(d)
    assert c.omega(d) == min(bucket, d) / (2 * (2**bits - 1) ** 2)


def test_minmax_omega_is_nearly_attained_at_one_bit():
    """b = 1 on {-a, a, 0, ..., 0}: every zero goes to +-a, ratio (d~ - 2)/2 vs omega d~/2."""
    rng = np.random.default_rng(5)
    c = get_compressor({"name": "minmax", "bits": 1, "bucket_size": 10})
    x = np.zeros(10)
    x[0], x[1] = -1.0, 1.0
    _, ratio = _mc(c, x, 300, rng)
    assert ratio == pytest.approx(4.0, rel=1e-6) and c.omega(10) == 5.0


def test_minmax_constant_bucket_and_bad_pairs():
    c = get_compressor({"name": "minmax", "bits": 3, "bucket_size": 4})
    x = np.array([2.5, 2.5, 2.5, 2.5, -1.0, 0.5])
    assert np.array_equal(c.decode(c.encode(x, np.random.default_rng(0))), x)
    buf = c.encode(x, np.random.default_rng(0))
    bad = buf.copy()
    bad[HEADER_NBYTES + 8:HEADER_NBYTES + 16] = np.array([1.0, -1.0], "<f4").view(np.uint8)
    with pytest.raises(WireFormatError, match="bucket 1"):
        c.decode(bad)
    with pytest.raises(ConfigError, match="bits"):
        get_compressor({"name": "minmax", "bits": 9})


# -- bernoulli --------------------------------------------------------------------------------

def test_bernoulli_all_or_nothing_with_omega_exact():
    rng = np.random.default_rng(7)
    c = get_compressor({"name": "bernoulli", "p": 0.25})
    x = rng.standard_normal(50)
    sizes, ys = [], []
    for _ in range(4000):
        buf = c.encode(x, rng)
        sizes.append(len(buf))
        ys.append(c.decode(buf))
    assert set(sizes) == {HEADER_NBYTES, HEADER_NBYTES + 4 * 50}       # header only, or all
    sent = np.mean(np.array(sizes) > HEADER_NBYTES)
    assert abs(sent - 0.25) < 5 * math.sqrt(0.25 * 0.75 / 4000)
    ys = np.array(ys)
    assert np.allclose(ys[np.array(sizes) > HEADER_NBYTES], x.astype(np.float32) / 0.25)
    ratio = (((ys - x) ** 2).sum(axis=1) / (x @ x)).mean()
    assert c.omega(50) == 3.0 and abs(ratio - 3.0) < 0.25
    with pytest.raises(WireFormatError, match="expected 0"):
        always = get_compressor({"name": "bernoulli", "p": 1.0})
        always.decode(always.encode(x, rng)[:HEADER_NBYTES + 8], d=50)


# -- natural_dithering with up to 255 levels --------------------------------------------------

def test_natural_dithering_up_to_255_levels():
    assert kernels.NATDITHER_MAX_LEVELS == 255
    with pytest.raises(ConfigError, match="levels"):
        get_compressor({"name": "natural_dithering", "levels": 256})
    rng = np.random.default_rng(8)
    d = 40
    x = rng.standard_normal(d) * np.exp(rng.uniform(-150, 0, d))   # 65 binades below the max
    for s in (127, 128, 255):
        c = get_compressor({"name": "natural_dithering", "levels": s})
        buf = c.encode(x, rng)
        b = 1 + s.bit_length()
        assert b == (8 if s == 127 else 9)
        assert len(buf) == HEADER_NBYTES + 4 + -(-d * b // 8)
    c = get_compressor({"name": "natural_dithering", "levels": 255})
    y = c.decode(c.encode(x, rng))
    # with 255 levels every coordinate keeps its binade: natural compression's factor-2 error
    nz = y != 0
    assert nz.all() and (np.abs(np.log2(np.abs(y / x))) <= 1).all()
    mean, ratio = _mc(c, x, 400, rng)
    assert ratio <= c.omega(d)
