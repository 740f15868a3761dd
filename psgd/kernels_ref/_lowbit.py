"""NumPy twin of ``cython_ext/_lowbit.pyx``: 16-bit float casts and min-max quantization.

Casts (``cast``)
----------------
Formats: ``CAST_FP16`` (IEEE binary16: m = 10 mantissa bits, smallest normal exponent
emin = -14, largest finite 65504) and ``CAST_BF16`` (bfloat16: m = 7, emin = -126,
largest finite (2 - 2^-7) 2^127). For every coordinate, with ``a = |x_j|`` as float64:

* ``e = max(floor(log2 a), emin)`` (from the exponent field of a; a = 0 gives emin);
* ``q = a 2^(m - e)`` (exact: a power-of-two scaling), so the format's neighbours of a
  are ``floor(q) 2^(e - m)`` and ``(floor(q) + 1) 2^(e - m)``;
* nearest: ``n = rint(q)`` (ties to even); stochastic: ``n = floor(q) + (u_j < q - floor(q))``
  with ``u_j = (splitmix64(seed, j) >> 11) 2^-53``: unbiased (exactly, for float32 input);
* the code is ``((e - emin) << m) + n`` (a carry of n into the next binade lands on the
  next exponent by itself) with the IEEE sign bit of x_j in bit 15.

That is IEEE round-to-nearest-even for ``nearest`` (``x.astype(np.float16)``). Inputs
with ``|x_j|`` above the largest finite value (and NaN, Inf) are a ValueError, so no
rounding ever overflows. Payload: d little-endian uint16 codes. Decoding rejects codes
whose exponent field is all ones (Inf/NaN; ERR_VALUE, where = the coordinate) and adds
``weight * value``.

Min-max (``minmax``)
--------------------
Per bucket b (``bucket_size`` coordinates, the last may be short) ``lo_b`` = its minimum
rounded DOWN to float32 and ``hi_b`` = its maximum rounded UP to float32 (so every x_j lies
in [lo_b, hi_b]; a zero bound is +0); ``L = 2^bits - 1``, ``Delta_b = (hi_b - lo_b) / L`` (float64). With
``q = (x_j - lo_b) / Delta_b`` (0 when Delta_b = 0) the code is
``n = min(floor(q) + (u_j < q - floor(q)), L)``. Payload: the nbuckets pairs
(lo_b, hi_b) as little-endian float32, then every n in ``bits`` bits, LSB-first, zero-padded
to a byte: ``8 nbuckets + ceil(d bits / 8)`` bytes. Decoding rejects a pair that is not
finite or has lo > hi (ERR_SCALE, where = the bucket) and non-zero padding (ERR_PADDING);
value = ``lo_b + n Delta_b``. |x_j| beyond float32 (and NaN, Inf) is a ValueError.
"""

from __future__ import annotations

import numpy as np

from ._dither import nblocks
from ._quant import _lsb_pack, _lsb_unpack
from .errors import ERR_OK, ERR_PADDING, ERR_SCALE, ERR_VALUE
from .splitmix import splitmix_uniform

CAST_FP16 = 0
CAST_BF16 = 1
#: (mantissa bits m, smallest normal exponent emin, largest finite value) per format
CAST_FORMATS = {CAST_FP16: (10, -14, 65504.0), CAST_BF16: (7, -126, (2.0 - 2.0**-7) * 2.0**127)}
MINMAX_MAX_BITS = 8
_F32_MAX = float(np.finfo(np.float32).max)


def _format(fmt):
    if fmt not in CAST_FORMATS:
        raise ValueError(f"cast format must be CAST_FP16 or CAST_BF16, got {fmt!r}")
    return CAST_FORMATS[fmt]


def cast_encode(x: np.ndarray, fmt: int, stochastic: bool, seed: int, out: np.ndarray) -> None:
    """Round x to the 16-bit format (nearest or stochastic) and write the d codes into out."""
    m, emin, top = _format(fmt)
    d = x.size
    if out.size != 2 * d:
        raise ValueError("cast_encode: out has the wrong length")
    xv = x.astype(np.float64)
    a = np.abs(xv)
    if not (a <= top).all():
        raise ValueError("cast_encode: x holds NaN or Inf, or |x_i| exceeds the format's range")
    if d == 0:
        return
    e = np.maximum((a.view(np.uint64) >> np.uint64(52)).astype(np.int64) - 1023, emin)
    q = np.ldexp(a, m - e)
    if stochastic:
        n = np.floor(q)
        n = n + (splitmix_uniform(seed, 0, d) < q - n)
    else:
        n = np.rint(q)
    code = ((e - emin) << m) + n.astype(np.int64)
    code |= np.signbit(xv).astype(np.int64) << 15
    out[:] = code.astype("<u2").view(np.uint8)


def _cast_values(payload: np.ndarray, d: int, fmt: int) -> tuple[int, int, np.ndarray | None]:
    m, emin, _ = _format(fmt)
    if payload.size != 2 * d:
        raise ValueError("cast_decode_add: payload has the wrong length")
    code = np.frombuffer(payload.tobytes(), dtype="<u2").astype(np.int64)
    efield = (code >> m) & ((1 << (15 - m)) - 1)
    bad = efield == (1 << (15 - m)) - 1
    if bad.any():
        return ERR_VALUE, int(np.argmax(bad)), None
    mant = code & ((1 << m) - 1)
    # subnormals (efield 0): mant 2^(emin - m); normals: (2^m + mant) 2^(efield - 1 + emin - m)
    v = np.where(efield == 0, np.ldexp(mant.astype(np.float64), emin - m),
                 np.ldexp((mant + (1 << m)).astype(np.float64), efield - 1 + emin - m))
    return ERR_OK, -1, np.where(code >> 15 == 1, -v, v)


def cast_decode_add(payload: np.ndarray, d: int, fmt: int, out: np.ndarray,
                    weight: float) -> tuple[int, int]:
    """Validate; if valid, out += weight * the decoded values. Returns (code, where)."""
    if out.size != d:
        raise ValueError("cast_decode_add: out has the wrong length")
    code, where, v = _cast_values(payload, d, fmt)
    if code == ERR_OK:
        out += (weight * v).astype(out.dtype, copy=False)
    return code, where


# -- min-max -----------------------------------------------------------------------------

def _check_minmax(d, bucket_size, bits):
    if bucket_size < 1:
        raise ValueError(f"bucket_size must be >= 1, got {bucket_size}")
    if d < 0:
        raise ValueError(f"d must be >= 0, got {d}")
    if not 1 <= bits <= MINMAX_MAX_BITS:
        raise ValueError(f"bits must be in [1, {MINMAX_MAX_BITS}], got {bits}")


def minmax_nbytes(d: int, bucket_size: int, bits: int) -> int:
    """8 bytes (lo, hi) per bucket + ceil(d bits / 8) code bytes."""
    _check_minmax(d, bucket_size, bits)
    return 8 * nblocks(d, bucket_size) + -(-d * bits // 8)


def _f32_down(v):
    f = v.astype(np.float32)
    return np.where(f.astype(np.float64) > v, np.nextafter(f, np.float32(-np.inf)), f)


def _f32_up(v):
    f = v.astype(np.float32)
    return np.where(f.astype(np.float64) < v, np.nextafter(f, np.float32(np.inf)), f)


def minmax_encode(x: np.ndarray, bucket_size: int, bits: int, seed: int, out: np.ndarray) -> None:
    """Per bucket (lo, hi), then stochastic codes on the 2^bits-level grid (see above)."""
    d = x.size
    n_out = minmax_nbytes(d, bucket_size, bits)
    if out.size != n_out:
        raise ValueError("minmax_encode: out has the wrong length")
    xv = x.astype(np.float64)
    if not (np.abs(xv) <= _F32_MAX).all():
        raise ValueError("minmax_encode: x holds NaN or Inf, or |x_i| exceeds float32")
    if d == 0:
        return
    nb = nblocks(d, bucket_size)
    starts = np.arange(nb) * bucket_size
    lo = _f32_down(np.minimum.reduceat(xv, starts) + 0.0)    # + 0.0: a zero bound is +0
    hi = _f32_up(np.maximum.reduceat(xv, starts) + 0.0)
    levels = (1 << bits) - 1
    delta = (hi.astype(np.float64) - lo.astype(np.float64)) / levels
    lo_j = np.repeat(lo.astype(np.float64), bucket_size)[:d]
    delta_j = np.repeat(delta, bucket_size)[:d]
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(delta_j > 0, (xv - lo_j) / delta_j, 0.0)
    n = np.floor(q)
    n = np.minimum(n + (splitmix_uniform(seed, 0, d) < q - n), levels)
    pairs = np.empty(2 * nb, dtype="<f4")
    pairs[0::2], pairs[1::2] = lo, hi
    out[:8 * nb] = pairs.view(np.uint8)
    out[8 * nb:] = _lsb_pack(n.astype(np.uint64), bits, n_out - 8 * nb)


def minmax_decode_add(payload: np.ndarray, d: int, bucket_size: int, bits: int, out: np.ndarray,
                      weight: float) -> tuple[int, int]:
    """Validate; if valid, out += weight * (lo_b + n Delta_b). Returns (code, where)."""
    n_in = minmax_nbytes(d, bucket_size, bits)
    if payload.size != n_in or out.size != d:
        raise ValueError("minmax_decode_add: payload or out has the wrong length")
    if d == 0:
        return ERR_OK, -1
    nb = nblocks(d, bucket_size)
    pairs = np.frombuffer(payload[:8 * nb].tobytes(), dtype="<f4").astype(np.float64)
    lo, hi = pairs[0::2], pairs[1::2]
    bad = ~(np.isfinite(lo) & np.isfinite(hi) & (lo <= hi))
    if bad.any():
        return ERR_SCALE, int(np.argmax(bad))
    if (d * bits) % 8 and payload[-1] >> ((d * bits) % 8):
        return ERR_PADDING, n_in - 1
    n = _lsb_unpack(payload[8 * nb:], bits, d).astype(np.float64)
    delta = (hi - lo) / ((1 << bits) - 1)
    v = np.repeat(lo, bucket_size)[:d] + n * np.repeat(delta, bucket_size)[:d]
    out += (weight * v).astype(out.dtype, copy=False)
    return ERR_OK, -1

