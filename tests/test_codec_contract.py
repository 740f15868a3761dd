"""The codec contract (CONTRACT.md section 5), checked on every registered compressor and every
entry of its ``examples``: a compressor added later is covered by defining ``examples``.

* round trip: the message is a 1-D uint8 array whose length is the true size (bits =
  8 len(buf)), within ``max_nbytes(d)`` and equal to ``nbytes(d)`` for fixed-length codes;
  decode gives a float64 vector of length d; ``decode_add`` and ``encode_into`` agree with
  ``decode`` and ``encode``; the same seed gives the same bytes; the config round-trips;
* unbiased compressors: E[C(x)] = x and E||C(x) - x||^2 <= omega ||x||^2 (Monte Carlo);
* biased ones: ||C(x) - x||^2 <= delta ||x||^2 on every draw;
* every truncation, an appended byte and every damaged header byte raise WireFormatError,
  and random payload damage either decodes to a finite length-d vector or raises it.

The check functions are tested on planted broken codecs at the end, so each can fail.
"""

import math

import numpy as np
import pytest

from psgd.compressors import compressor_classes, get_compressor
from psgd.compressors.base import HEADER_NBYTES
from psgd.compressors.identity import Identity
from psgd.errors import WireFormatError

EXAMPLES = [pytest.param(name, params, id=f"{name}-{i}")
            for name, cls in sorted(compressor_classes().items())
            for i, params in enumerate(cls.examples)]
DIMS = (0, 1, 7, 37)


def _key(c, i=0):
    """A shared key per draw for shared-seed compressors (as the runtime derives one per step)."""
    return 1_000_003 * i + 17 if c.shared_randomness else None


def _vector(d, rng):
    return rng.standard_normal(d)


# -- the checks ------------------------------------------------------------------------------

def check_round_trip(c, x, rng_seed=0):
    d = x.size
    key = _key(c)
    buf = c.encode(x, np.random.default_rng(rng_seed), key=key)
    assert isinstance(buf, np.ndarray) and buf.dtype == np.uint8 and buf.ndim == 1
    assert len(bytes(buf)) == buf.nbytes == len(buf)          # bits on the wire = 8 len(buf)
    assert HEADER_NBYTES <= len(buf) <= c.max_nbytes(d)
    if c.nbytes(d) is not None:
        assert len(buf) == c.nbytes(d)
    again = c.encode(x, np.random.default_rng(rng_seed), key=key)
    assert bytes(again) == bytes(buf), "the same seed must give the same message"
    y = c.decode(buf, key=key, d=d)
    assert y.shape == (d,) and y.dtype == np.float64 and np.isfinite(y).all()
    assert np.array_equal(c.decode(bytes(buf), key=key), y)   # bytes work, d from the header
    for dtype, weight in ((np.float64, 1.0), (np.float64, -0.5), (np.float32, 2.0)):
        out = np.full(d, 0.25, dtype=dtype)
        c.decode_add(buf, out, weight, key=key)
        expect = (np.full(d, 0.25) + weight * y).astype(dtype)
        tol = 1e-6 if dtype == np.float32 else 1e-12
        assert np.allclose(out, expect, rtol=tol, atol=tol * (1 + np.abs(y).max(initial=0)))
    into = np.full(d, 7.0)  # decode_into overwrites whatever was there
    c.decode_into(buf, into, key=key)
    assert np.array_equal(into, y)
    room = np.full(len(buf) + 5, 0xAB, dtype=np.uint8)
    n = c.encode_into(x, np.random.default_rng(rng_seed), room, key=key)
    assert n == len(buf) and bytes(room[:n]) == bytes(buf) and (room[n:] == 0xAB).all()
    return buf, y


def check_unbiased(c, x, n, rng):
    """Every coordinate's mean within 5 standard errors, the variance ratio within omega."""
    d = x.size
    ys = np.empty((n, d))
    for i in range(n):
        key = _key(c, i)
        ys[i] = c.decode(c.encode(x, rng, key=key), key=key, d=d)
    se = ys.std(axis=0) / math.sqrt(n)
    bias = np.abs(ys.mean(axis=0) - x)
    assert (bias <= 5 * se + 1e-6 * np.abs(x).max()).all(), f"biased: {bias.max():.3g}"
    r = ((ys - x) ** 2).sum(axis=1) / (x @ x)
    assert r.mean() - 5 * r.std() / math.sqrt(n) <= c.omega(d) * (1 + 1e-6) + 1e-12, \
        f"E||C(x)-x||^2/||x||^2 = {r.mean():.4g} > omega = {c.omega(d):.4g}"


def check_contraction(c, x, draws, rng):
    """||C(x) - x|| <= (sqrt(delta) + 2^-23) ||x||: delta is stated for float32 input, and the
    values a compressor sends as float32 (kept values, scales) are within 2^-24 of float64
    ones, which moves C(x) by at most that much relative to ||x|| (doubled for margin)."""
    d = x.size
    for i in range(draws):
        key = _key(c, i)
        y = c.decode(c.encode(x, rng, key=key), key=key, d=d)
        err = ((y - x) ** 2).sum()
        bound = (math.sqrt(c.delta(d)) + 2.0**-23) ** 2 * (x @ x)
        assert err <= bound, f"||C(x)-x||^2 = {err:.6g} > delta ||x||^2 = {c.delta(d) * (x @ x):.6g}"


def check_corruption(c, x, rng):
    d = x.size
    key = _key(c)
    buf = c.encode(x, rng, key=key)
    for n in range(len(buf)):
        if n == HEADER_NBYTES and c.header_only_valid:
            assert not c.decode(buf[:n], key=key, d=d).any()     # a valid "nothing sent"
            continue
        with pytest.raises(WireFormatError):
            c.decode(buf[:n], key=key, d=d)
            pytest.fail(f"a message cut to {n} of {len(buf)} bytes decoded")
    with pytest.raises(WireFormatError):
        c.decode(np.append(buf, np.uint8(0)), key=key, d=d)
        pytest.fail("a message with a byte appended decoded")
    b = [int(v) for v in buf[:HEADER_NBYTES]]
    header_damage = ((0, b[0] ^ 1), (1, b[1] + 1), (2, b[2] ^ 0x80), (3, 1), (4, b[4] ^ 1))
    for pos, value in header_damage:
        bad = buf.copy()
        bad[pos] = value % 256
        with pytest.raises(WireFormatError):
            c.decode(bad, key=key, d=d)
            pytest.fail(f"a message with header byte {pos} changed decoded")
    for _ in range(50):
        bad = buf.copy()
        if len(buf) > HEADER_NBYTES:
            for i in rng.integers(HEADER_NBYTES, len(buf), size=rng.integers(1, 4)):
                bad[i] = rng.integers(256)
        try:
            y = c.decode(bad, key=key, d=d)
        except WireFormatError:
            with pytest.raises(WireFormatError):  # (a worker's model: decode_into refuses it too)
                c.decode_into(bad, np.zeros(d), key=key)
            continue
        assert y.shape == (d,) and np.isfinite(y).all()


# -- every registered compressor, every example -----------------------------------------------

def test_every_registered_compressor_has_examples():
    missing = [name for name, cls in compressor_classes().items() if not cls.examples]
    assert not missing, f"define examples on {missing}"
    ids = {}
    for name, cls in compressor_classes().items():
        assert cls.codec_id not in ids, f"{name} and {ids[cls.codec_id]} share a codec id"
        ids[cls.codec_id] = name


@pytest.mark.parametrize("name,params", EXAMPLES)
def test_config_round_trip(name, params):
    cfg = {"name": name, **params}
    before = dict(cfg)
    c = get_compressor(cfg)
    assert cfg == before, "get_compressor must not modify its argument"
    assert get_compressor(c.get_config()) == c
    assert type(c).from_config(c.get_config()) == c


@pytest.mark.parametrize("name,params", EXAMPLES)
def test_round_trip_and_exact_bits(name, params):
    c = get_compressor({"name": name, **params})
    rng = np.random.default_rng(1)
    for d in DIMS:
        x = _vector(d, rng)
        check_round_trip(c, x)
        check_round_trip(c, x.astype(np.float32))
        if d:
            check_round_trip(c, np.zeros(d))


@pytest.mark.parametrize("name,params", EXAMPLES)
def test_unbiased_or_contraction(name, params):
    c = get_compressor({"name": name, **params})
    rng = np.random.default_rng(2)
    x = _vector(8, rng)
    if c.unbiased:
        check_unbiased(c, x, 1000, rng)
        check_unbiased(c, np.eye(1, 8, 3).ravel(), 300, rng)
    else:
        for d in (1, 3, 16, 50):
            check_contraction(c, _vector(d, rng), 5, rng)


@pytest.mark.parametrize("name,params", EXAMPLES)
def test_corrupted_and_truncated_input_raise(name, params):
    c = get_compressor({"name": name, **params})
    rng = np.random.default_rng(3)
    for d in (1, 11):
        check_corruption(c, _vector(d, rng), rng)


# -- the checks can fail -------------------------------------------------------------------------

class _Scaled(Identity):
    """Unregistered: claims to be unbiased but decodes 1.05 x."""

    def _decode_add(self, payload, d, out, weight, key):
        super()._decode_add(payload, d, out, 1.05 * weight, key)


class _Lenient(Identity):
    """Unregistered: ignores bytes after the vector (a truncation-blind, padding-blind codec)."""

    def _payload_nbytes(self, d):
        return None

    def _max_payload_nbytes(self, d):
        return 8 * d + 16

    def _decode_add(self, payload, d, out, weight, key):
        if payload.size < 8 * d:
            payload = np.concatenate([payload, np.zeros(8 * d - payload.size, np.uint8)])
        super()._decode_add(payload[:8 * d], d, out, weight, key)


class _Shrinking(Identity):
    """Unregistered: a biased codec whose claimed delta is too small."""

    unbiased = False

    def delta(self, d):
        return 0.0

    def _decode_add(self, payload, d, out, weight, key):
        super()._decode_add(payload, d, out, 0.5 * weight, key)


def test_the_checks_catch_planted_defects():
    rng = np.random.default_rng(4)
    x = _vector(8, rng)
    with pytest.raises(AssertionError, match="biased"):
        check_unbiased(_Scaled(), x, 200, rng)
    with pytest.raises(pytest.fail.Exception):
        check_corruption(_Lenient(), x, rng)
    with pytest.raises(AssertionError, match="delta"):
        check_contraction(_Shrinking(), x, 1, rng)
    check_round_trip(Identity(), x)           # and the honest codec passes them
    check_unbiased(Identity(), x, 50, rng)
    check_corruption(Identity(), x, rng)


def test_all_finite_finds_every_nan_and_inf_and_survives_overflowing_sums():
    from psgd.compressors.base import all_finite

    x = np.ones(1000)
    assert all_finite(x) and all_finite(np.zeros(0)) and all_finite(x.astype(np.float32))
    for bad in (np.nan, np.inf, -np.inf):
        y = x.copy()
        y[617] = bad
        assert not all_finite(y)
    assert all_finite(np.full(4, 1e308))  # the sum overflows; every value is finite
    assert not all_finite(np.array([np.inf, -np.inf]))  # the sum is NaN
