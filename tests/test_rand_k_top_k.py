"""rand_k and top_k: round trips, unbiasedness, omega / delta, exact bits, corrupted buffers, config."""

import math

import numpy as np
import pytest

from psgd import kernels
from psgd.compressors import get_compressor
from psgd.compressors.base import HEADER_NBYTES
from psgd.errors import ConfigError, WireFormatError


def comp(name, **kw):
    return get_compressor({"name": name, **kw})


def varint_bits(idx):
    """8 * sum of the LEB128 lengths of the gaps (the documented formula, independently)."""
    g = np.diff(np.asarray(idx, np.int64), prepend=-1) - 1
    return 8 * sum(max(1, math.ceil(int(v).bit_length() / 7)) for v in g)


def reference_topk(x, k):
    """Stable: largest |x| first, ties to the lowest index."""
    order = np.lexsort((np.arange(x.size), -np.abs(x.astype(np.float64))))
    return np.sort(order[:k])


def check_corruption(c, buf, d, key=None, rng=None, flips=200):
    """Truncations and garbage raise WireFormatError; random flips either decode or raise it."""
    rng = rng or np.random.default_rng(0)
    for n in range(len(buf)):
        with pytest.raises(WireFormatError):
            c.decode(buf[:n], key=key, d=d)
    with pytest.raises(WireFormatError):
        c.decode(np.concatenate([buf, np.zeros(1, np.uint8)]), key=key, d=d)
    for _ in range(flips):
        bad = buf.copy()
        i = int(rng.integers(HEADER_NBYTES, len(buf))) if len(buf) > HEADER_NBYTES else 0
        bad[i] ^= np.uint8(1 << int(rng.integers(8)))
        out = np.zeros(d, np.float32)
        try:
            c.decode_add(bad, out, key=key)
        except WireFormatError:
            assert not out.any()              # a rejected message leaves out untouched
    for n in range(0, 3 * len(buf), 7):
        garbage = rng.integers(0, 256, n).astype(np.uint8)
        garbage[:min(n, 8)] = buf[:min(n, 8)]
        try:
            c.decode(garbage, key=key, d=d)
        except WireFormatError:
            pass


# -- rand_k ---------------------------------------------------------------------------

@pytest.mark.parametrize("cfg", [dict(ratio=0.1), dict(k=1), dict(k=30), dict(ratio=0.7),
                                 dict(ratio=1.0), dict(k=5, send_indices=True)], ids=str)
@pytest.mark.parametrize("keyed", [True, False])
def test_rand_k_round_trip(cfg, keyed):
    c = comp("rand_k", **cfg)
    rng = np.random.default_rng(1)
    for d in [1, 2, 17, 100]:
        x = rng.standard_normal(d).astype(np.float32)
        key = 99 + d if keyed else None
        buf = c.encode(x, rng, key=key)
        y = c.decode(buf, key=key, d=d)
        k = c.k_of(d)
        kept = np.flatnonzero(y)
        assert kept.size == k
        np.testing.assert_allclose(y[kept], x[kept] * d / k, rtol=1e-6)
        indices = not keyed or cfg.get("send_indices")
        expected = HEADER_NBYTES + 4 * k + (varint_bits(kept) // 8 if indices else 0)
        assert len(buf) == expected                         # exact bits on the wire
        if keyed:                                           # the same key, the same subset
            assert np.array_equal(np.flatnonzero(c.decode(c.encode(x, rng, key=key), key=key)), kept)
            np.testing.assert_array_equal(kept, kernels.randk_indices(key, d, k))


def test_rand_k_keyed_message_needs_the_key():
    c = comp("rand_k", k=3)
    buf = c.encode(np.ones(10), np.random.default_rng(0), key=7)
    assert len(buf) == HEADER_NBYTES + 12
    with pytest.raises(WireFormatError, match="key"):
        c.decode(buf)
    assert c.nbytes(10) is None and c.max_nbytes(10) == HEADER_NBYTES + 27


def test_rand_k_subsets_are_uniform():
    """Every one of the C(6, 3) = 20 subsets appears with frequency 1/20 (chi-square)."""
    n, counts = 20000, {}
    for key in range(n):
        s = tuple(kernels.randk_indices(key * 0x9E3779B97F4A7C15 % 2**64, 6, 3).tolist())
        counts[s] = counts.get(s, 0) + 1
    assert len(counts) == 20
    chi2 = sum((v - n / 20) ** 2 / (n / 20) for v in counts.values())
    assert chi2 < 43.8                                      # p = 0.001 at 19 degrees of freedom


@pytest.mark.parametrize("cfg,d", [(dict(k=2), 9), (dict(ratio=0.5), 8), (dict(ratio=0.9), 10)], ids=str)
def test_rand_k_unbiased_and_exact_variance(cfg, d):
    c = comp("rand_k", **cfg)
    rng = np.random.default_rng(2)
    x = rng.standard_normal(d)
    x[0] = 10.0                                             # a spike: the variance is x-proportional
    n = 6000
    keys = rng.integers(0, 2**63, n)
    draws = np.stack([c.decode(c.encode(x, rng, key=int(kk)), key=int(kk)) for kk in keys])
    k = c.k_of(d)
    var = x * x * (d / k - 1.0)                             # exact per-coordinate variance
    se = np.sqrt(var / n)
    assert np.all(np.abs(draws.mean(0) - x) <= 5 * se + 1e-12)
    # E||C(x) - x||^2 = omega ||x||^2 exactly; the Monte Carlo mean within 5 standard errors
    err = ((draws - x) ** 2).sum(1)
    assert abs(err.mean() - c.omega(d) * (x @ x)) <= 5 * err.std() / math.sqrt(n) + 1e-6 * (x @ x)
    assert c.omega(d) == pytest.approx(d / k - 1.0)


def test_rand_k_expected_bits_with_indices():
    c = comp("rand_k", ratio=0.01)
    d = 20000
    rng = np.random.default_rng(3)
    x = rng.standard_normal(d)
    bits = [8 * (len(c.encode(x, rng)) - HEADER_NBYTES) for _ in range(40)]
    expect = c.expected_payload_bits(d)
    assert abs(np.mean(bits) - expect) < 0.02 * expect
    assert c.expected_payload_bits(d, indices=False) == 32 * 200


def test_rand_k_corrupted_buffers():
    rng = np.random.default_rng(4)
    x = rng.standard_normal(40)
    for cfg, key in [(dict(k=6), None), (dict(k=6), 5), (dict(ratio=0.5, send_indices=True), 5)]:
        c = comp("rand_k", **cfg)
        check_corruption(c, c.encode(x, rng, key=key), 40, key=key, rng=rng)
    c = comp("rand_k", k=2)
    buf = c.encode(np.array([1.0, np.float32(2.0), 3.0, 4.0]), rng)      # values then varints
    bad = buf.copy()
    bad[HEADER_NBYTES:HEADER_NBYTES + 4] = np.frombuffer(np.float32(np.nan).tobytes(), np.uint8)
    with pytest.raises(WireFormatError, match="NaN or Inf"):
        c.decode(bad)
    bad = buf.copy()
    bad[-1] = 0x7F                                          # index past d
    with pytest.raises(WireFormatError, match="past the end"):
        c.decode(bad)


def test_rand_k_config_errors():
    for cfg in [{}, dict(k=3, ratio=0.5), dict(k=0), dict(ratio=0.0), dict(ratio=1.5),
                dict(k=2, send_indices="yes"), dict(k=2, block_size=4)]:
        with pytest.raises(ConfigError):
            comp("rand_k", **cfg)
    assert comp("rand_k", ratio=0.25).get_config() == {"name": "rand_k", "k": None, "ratio": 0.25,
                                                       "send_indices": False}


def test_rand_k_edge_sizes():
    c = comp("rand_k", k=5)
    rng = np.random.default_rng(5)
    for key in [None, 3]:
        assert c.decode(c.encode(np.zeros(0), rng, key=key), key=key).shape == (0,)
        np.testing.assert_array_equal(c.decode(c.encode(np.arange(3.0), rng, key=key), key=key),
                                      np.arange(3.0))      # k >= d: everything, scale 1


# -- top_k ------------------------------------------------------------------------------

@pytest.mark.parametrize("cfg", [dict(k=1), dict(k=7), dict(ratio=0.05), dict(ratio=1.0)], ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_top_k_round_trip_and_bits(cfg, dtype):
    c = comp("top_k", **cfg)
    rng = np.random.default_rng(6)
    for d in [1, 3, 16, 200, 5000]:
        x = (rng.standard_normal(d) * rng.choice([1e-3, 1, 1e3], d)).astype(dtype)
        x[rng.random(d) < 0.2] = 0.0
        if d > 4:
            x[3] = -x[2]                                    # a tie
        k = c.k_of(d)
        idx = reference_topk(x, k)
        buf = c.encode(x, rng)
        y = c.decode(buf, d=d)
        expected = np.zeros(d)
        expected[idx] = x[idx].astype(np.float32)
        np.testing.assert_array_equal(y, expected)
        assert 8 * len(buf) == 64 + 32 * k + varint_bits(idx)     # exact bits on the wire


def test_top_k_contraction_on_every_draw():
    rng = np.random.default_rng(7)
    for cfg in [dict(k=1), dict(k=4), dict(ratio=0.3)]:
        c = comp("top_k", **cfg)
        for d in [1, 5, 30]:
            for x in [rng.standard_normal(d), np.ones(d), np.r_[1.0, np.zeros(d - 1)],
                      rng.standard_normal(d) ** 7, -np.ones(d)]:
                x = x.astype(np.float32)
                y = c.decode(c.encode(x, rng), d=d)
                err = float(((y - x) ** 2).sum())
                assert err <= c.delta(d) * float(x.astype(np.float64) @ x) * (1 + 1e-12)
        # equal magnitudes attain delta
        x = np.ones(20, np.float32)
        y = c.decode(c.encode(x, rng))
        assert ((y - x) ** 2).sum() == pytest.approx(c.delta(20) * 20)


def test_top_k_ties_go_to_the_lowest_index():
    c = comp("top_k", k=3)
    x = np.array([1.0, -2.0, 2.0, 0.5, -2.0, 2.0])
    np.testing.assert_array_equal(np.flatnonzero(c.decode(c.encode(x, None))), [1, 2, 4])


def test_top_k_rejects_non_finite_and_corruption():
    c = comp("top_k", k=4)
    rng = np.random.default_rng(8)
    for x in [np.array([1.0, np.nan, 2.0]), np.array([np.inf, 1.0]), np.array([1e300, 1.0])]:
        with pytest.raises(ValueError, match="NaN or Inf"):
            c.encode(x, rng)
    x = rng.standard_normal(300)
    check_corruption(c, c.encode(x, rng), 300, rng=rng)
    check_corruption(comp("top_k", ratio=0.5), comp("top_k", ratio=0.5).encode(x[:20], rng), 20, rng=rng)
    buf = c.encode(np.arange(1000.0), rng)
    bad = np.concatenate([buf[:-1], [0x80 | buf[-1], 0x00]]).astype(np.uint8)   # overlong varint
    with pytest.raises(WireFormatError, match="redundant zero"):
        c.decode(bad)


def test_top_k_config_and_theory():
    for cfg in [{}, dict(k=1, ratio=0.1), dict(ratio=0), dict(block_size=3, k=1)]:
        with pytest.raises(ConfigError):
            comp("top_k", **cfg)
    c = comp("top_k", ratio=0.01)
    assert c.delta(1000) == pytest.approx(0.99) and c.k_of(10**7) == 10**5
    assert not c.unbiased and c.max_nbytes(1000) == HEADER_NBYTES + 90


def test_golden_bytes():
    """Freeze the wire formats (regenerate only on a deliberate format change)."""
    x = np.array([0.5, -3.0, 0.0, 2.25, -0.125, 7.0, 1.0, -1.0], np.float32)
    assert comp("top_k", k=3).encode(x, None).tobytes().hex() == \
        "c501" "0b00" "08000000" "000040c0" "00001040" "0000e040" "010101"
    rng = np.random.default_rng(0)
    assert kernels.randk_indices(12345, 8, 2).tolist() == [0, 1]
    assert kernels.randk_indices(2**64 - 1, 1000, 4).tolist() == [219, 426, 893, 912]
    assert comp("rand_k", k=2).encode(x, rng, key=12345).tobytes().hex() == \
        "c501" "0a00" "08000000" "0000003f" "000040c0"
    assert comp("rand_k", k=2, send_indices=True).encode(x, rng, key=12345).tobytes().hex() == \
        "c501" "0a00" "08000000" "0000003f" "000040c0" "0000"


def test_registered_with_codec_ids_10_to_19():
    from psgd.compressors import compressor_classes
    classes = compressor_classes()
    ours = {"rand_k": 10, "top_k": 11, "sign": 12, "natural": 13, "natural_dithering": 14,
            "rounding": 15}
    assert {n: classes[n].codec_id for n in ours} == ours
    ids = [c.codec_id for c in classes.values()]
    assert len(ids) == len(set(ids))                       # no two codecs share an id
    assert [n for n in ours if classes[n].unbiased] == ["rand_k", "natural", "natural_dithering"]
    assert classes["rand_k"].shared_randomness and not classes["top_k"].shared_randomness
