"""NumPy twin of ``cython_ext/_quant.pyx``: sign, natural, natural dithering, rounding."""

from __future__ import annotations

import numpy as np

from ._dither import _blocked, nblocks, symbol_bits
from ._sparse_sphere import _block_lengths
from .errors import (
    ERR_CODE, ERR_LEVEL, ERR_OK, ERR_PADDING, ERR_SCALE, ERR_SIGN, ERR_SIZE, ERR_WIDTH)
from .splitmix import splitmix64

# ====================================================================================
# Dense quantizers (sign, natural, natural_dithering, rounding): twins of _quant.pyx
# ====================================================================================
# Bit streams below are LSB-first (bit k of a stream is bit k % 8 of byte k // 8),
# fields written least significant bit first, padded with zero bits to a whole byte.
# Blocks: ``nblocks = ceil(d / block_size)``, the last one may be short; d_b is the
# length of block b.
#
# Scaled sign
# -----------
# Block scale ``m_b = ||x_b||_1 / d_b``: the |x_j| (as float64) are summed in 8 lanes,
# lane l taking the block-relative coordinates j = l (mod 8) in index order, the lanes
# combined as ((l0+l1)+(l2+l3))+((l4+l5)+(l6+l7)), divided by d_b in float64 and
# rounded to the nearest float32. Payload: the nblocks float32 scales (little-endian),
# then one bit per coordinate, the IEEE sign bit of x_j (so -0.0 sends 1). Decoding:
# ``value = -m_b if bit else m_b``; ``out_j += weight * value``.
#
# Natural compression
# -------------------
# Every coordinate becomes ``sign * 2^(c - 127)`` with an 8-bit code c (c = 0: zero).
# For float32 x with exponent field E and mantissa field M (|x| = (1 + M/2^23) 2^(E-127)
# if E > 0, M 2^-149 if E = 0): ``c = E + (r_j < M * 2^30)`` where
# ``r_j = splitmix64(seed + (j+1) GAMMA) >> 11`` (53 bits), i.e. round up with
# probability M/2^23. So |x| goes to one of the two powers of two around it with the
# unbiased probabilities; subnormals (E = 0) go to 0 or 2^-126; E = 254 may round up
# to c = 255, which stands for 2^128; E = 255 (Inf/NaN) is a ValueError. For float64
# x (exponent field E, 52-bit mantissa M): E >= 1151 (|x| >= 2^128, Inf, NaN) is a
# ValueError; E >= 897: ``c = E - 896 + (r_j < 2 M)``; else (|x| < 2^-126)
# ``c = (r_j 2^-53 < |x| 2^126)`` in float64. The sign bit is the IEEE sign bit of
# x_j when c > 0, else 0. Payload: d code bytes, then d sign bits.
#
# Natural dithering
# -----------------
# Block scale t_b from :func:`block_scales` (2- or max-norm rounded up to float32),
# levels {0, 2^(1-s), ..., 1/2, 1} coded as l = 0 (zero) or l = 1..s (2^(l-s)).
# With ``y = |x_j| / t_b`` (float64) and r_j as above: y >= 1 gives l = s; otherwise,
# with e = floor(log2 y) from y's exponent field and M its 52-bit mantissa, e >= 1-s
# gives ``l = e + s + (r_j < 2 M)``, and smaller y gives ``l = (r_j 2^-53 < ldexp(y, s-1))``
# (0 or 1). A block with t_b = 0 gives l = 0. Payload: nblocks float32 scales, then
# ``b = 1 + ceil(log2(s + 1))`` bits per coordinate, the code ``sign + 2 l``. Decoding:
# ``value = sign * ldexp(t_b, l - s)`` (0 for l = 0).
#
# Rounding
# --------
# ``q_j = rint(x_j / resolution)`` (float64 division, round half to even), |q_j| <=
# 2^31 - 1 (else ValueError), zig-zag code ``c_j = 2 q_j`` (q >= 0) or ``-2 q_j - 1``.
# Block width ``w_b = bitlen(max_j c_j)`` in [0, 32]. Payload: nblocks width bytes,
# then every c_j in its block's width. Decoding rejects widths > 32 (ERR_WIDTH), a
# length that does not match the widths (ERR_SIZE, where = expected length), the
# code 2^32 - 1 (q = -2^31, ERR_CODE), a width that is not its block's bit length
# (ERR_WIDTH) and non-zero padding; ``value = resolution * q``.

#: natural dithering's largest s: its nonzero levels 2^(1-s)..1 then span 255 binades, down to
#: 2^-254 = (smallest normal float32) / (largest float32) (the float32 exponent range), so
#: every normal float32 coordinate has a level of its own binade under any float32 scale.
#: Codes are 1 + 8 = 9 bits from s = 128 on; s <= 127 (8-bit codes) is unchanged.
NATDITHER_MAX_LEVELS = 255
ROUNDING_MAX_Q = 2**31 - 1


def _check_block_size(d, block_size):
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    if d < 0:
        raise ValueError(f"d must be >= 0, got {d}")


def _bit_lengths(v: np.ndarray) -> np.ndarray:
    """Bit lengths of uint64 values < 2^53 (frexp is exact there)."""
    return np.frexp(v.astype(np.float64))[1].astype(np.int64)


def _lsb_pack(codes: np.ndarray, widths: np.ndarray, nbytes: int) -> np.ndarray:
    """Write codes[i] in widths[i] <= 32 bits, LSB-first, one after the other; zero padding."""
    codes = codes.astype(np.uint64)
    widths = np.broadcast_to(np.asarray(widths, dtype=np.int64), codes.shape)
    words = np.zeros(nbytes // 8 + 2, dtype=np.uint64)
    if codes.size:
        off = np.cumsum(widths) - widths
        wi, sh = off >> 6, (off & 63).astype(np.uint64)
        lo = codes << sh                                       # bits past 64 drop out
        starts = np.flatnonzero(np.diff(wi, prepend=-1))
        words[wi[starts]] = np.add.reduceat(lo, starts)        # disjoint bits: sum == OR
        spill = (off & 63) + widths > 64                       # the rest goes to word wi + 1
        words[wi[spill] + 1] += codes[spill] >> (np.uint64(64) - sh[spill])
    return words.astype("<u8").view(np.uint8)[:nbytes].copy()


def _lsb_unpack(stream: np.ndarray, widths: np.ndarray, count: int) -> np.ndarray:
    """The count codes of widths[i] bits at the start of an LSB-first stream (uint64)."""
    widths = np.broadcast_to(np.asarray(widths, dtype=np.int64), (count,))
    raw = np.zeros(-(-stream.size // 8) * 8 + 16, dtype=np.uint8)
    raw[:stream.size] = stream
    words = raw.view("<u8").astype(np.uint64)
    off = np.cumsum(widths) - widths
    wi, sh = off >> 6, (off & 63).astype(np.uint64)
    lo = words[wi] >> sh
    hi = np.where(sh > 0, words[wi + 1] << ((np.uint64(64) - sh) & np.uint64(63)), np.uint64(0))
    return (lo | hi) & ((np.uint64(1) << widths.astype(np.uint64)) - np.uint64(1))


def _scales_or_error(payload, nb):
    bits = np.frombuffer(payload[:4 * nb].tobytes(), dtype="<u4")
    bad = ((bits >> 23) & 0xFF == 0xFF) | (bits >> 31 == 1)
    if bad.any():
        return int(np.argmax(bad)), None
    return -1, bits.view("<f4").astype(np.float64)


def _accumulate(out, weight, value):
    out += (weight * value).astype(out.dtype, copy=False)


# -- scaled sign ---------------------------------------------------------------------

def sign_nbytes(d: int, block_size: int) -> int:
    """4 bytes per block scale + ceil(d / 8) bytes of sign bits."""
    _check_block_size(d, block_size)
    return 4 * nblocks(d, block_size) + -(-d // 8)


def sign_encode(x: np.ndarray, block_size: int, out: np.ndarray) -> None:
    """Block scales ||x_b||_1 / d_b (float32) and the sign bits of x; ValueError on NaN/Inf."""
    d = x.size
    n = sign_nbytes(d, block_size)
    if out.size != n:
        raise ValueError(f"sign_encode: out has {out.size} bytes, expected {n}")
    if d == 0:
        return
    nb = nblocks(d, block_size)
    lanes = min(8, block_size)
    width = -(-block_size // lanes) * lanes
    a = np.zeros((nb, width), dtype=np.float64)
    a[:, :block_size] = _blocked(np.abs(x.astype(np.float64)), block_size)
    lane = np.zeros((nb, 8), dtype=np.float64)
    lane[:, :lanes] = np.cumsum(a.reshape(nb, -1, lanes), axis=1)[:, -1, :]  # sequential per lane
    s = ((lane[:, 0] + lane[:, 1]) + (lane[:, 2] + lane[:, 3])) + \
        ((lane[:, 4] + lane[:, 5]) + (lane[:, 6] + lane[:, 7]))
    with np.errstate(over="ignore", invalid="ignore"):
        m = (s / _block_lengths(d, block_size)).astype(np.float32)
    bad = ~np.isfinite(m)
    if bad.any():
        raise ValueError(f"sign_encode: block {int(np.argmax(bad))} holds NaN or Inf or its mean "
                         "|x| overflows float32")
    out[:4 * nb] = np.frombuffer(m.astype("<f4").tobytes(), dtype=np.uint8)
    out[4 * nb:] = np.packbits(np.signbit(x), bitorder="little")


def sign_decode_add(payload: np.ndarray, d: int, block_size: int, out: np.ndarray,
                    weight: float) -> tuple[int, int]:
    """Validate; if valid, out += weight * (+-scale_b per sign bit). Returns (code, where)."""
    n = sign_nbytes(d, block_size)
    if payload.size != n or out.size != d:
        raise ValueError("sign_decode_add: payload or out has the wrong length")
    if d == 0:
        return ERR_OK, -1
    nb = nblocks(d, block_size)
    where, scales = _scales_or_error(payload, nb)
    if where >= 0:
        return ERR_SCALE, where
    bits = np.unpackbits(payload[4 * nb:], bitorder="little")
    if bits[d:].any():
        return ERR_PADDING, n - 1
    t = np.repeat(scales, block_size)[:d]
    _accumulate(out, weight, np.where(bits[:d] == 1, -t, t))
    return ERR_OK, -1


# -- natural compression --------------------------------------------------------------

def natural_nbytes(d: int) -> int:
    """d exponent-code bytes + ceil(d / 8) bytes of sign bits (9 bits per coordinate)."""
    if d < 0:
        raise ValueError(f"d must be >= 0, got {d}")
    return d + -(-d // 8)


def natural_encode(x: np.ndarray, seed: int, out: np.ndarray) -> None:
    """Exponent codes then sign bits (see above); ValueError on NaN, Inf or |x| >= 2^128."""
    d = x.size
    n = natural_nbytes(d)
    if out.size != n:
        raise ValueError(f"natural_encode: out has {out.size} bytes, expected {n}")
    if d == 0:
        return
    r = splitmix64(seed, 0, d) >> np.uint64(11)
    if x.dtype == np.float32:
        u = x.view(np.uint32).astype(np.uint64)
        e = (u >> np.uint64(23)) & np.uint64(0xFF)
        if (e == 0xFF).any():
            raise ValueError("natural_encode: x holds NaN or Inf, or |x_i| >= 2^128")
        code = e + (r < ((u & np.uint64(0x7FFFFF)) << np.uint64(30)))
        sign = u >> np.uint64(31)
    else:
        x = np.ascontiguousarray(x, dtype=np.float64)
        u = x.view(np.uint64)
        e = ((u >> np.uint64(52)) & np.uint64(0x7FF)).astype(np.int64)
        if (e >= 1151).any():
            raise ValueError("natural_encode: x holds NaN or Inf, or |x_i| >= 2^128")
        up = r < ((u & np.uint64(0xFFFFFFFFFFFFF)) << np.uint64(1))
        tiny = r.astype(np.float64) * 2.0**-53 < np.abs(x) * 2.0**126
        code = np.where(e >= 897, e - 896 + up, tiny).astype(np.uint64)
        sign = u >> np.uint64(63)
    out[:d] = code.astype(np.uint8)
    out[d:] = np.packbits((sign & (code != 0)).astype(np.uint8), bitorder="little")


def natural_decode_add(payload: np.ndarray, d: int, out: np.ndarray, weight: float) -> tuple[int, int]:
    """Validate; if valid, out += weight * (+-2^(code-127)). Returns (code, where)."""
    n = natural_nbytes(d)
    if payload.size != n or out.size != d:
        raise ValueError("natural_decode_add: payload or out has the wrong length")
    if d == 0:
        return ERR_OK, -1
    code = payload[:d]
    bits = np.unpackbits(payload[d:], bitorder="little")
    bad = (code == 0) & (bits[:d] == 1)
    if bad.any():
        return ERR_SIGN, int(np.argmax(bad))
    if bits[d:].any():
        return ERR_PADDING, n - 1
    v = np.where(code == 0, 0.0, np.ldexp(1.0, code.astype(np.int64) - 127))
    _accumulate(out, weight, np.where(bits[:d] == 1, -v, v))
    return ERR_OK, -1


# -- natural dithering -----------------------------------------------------------------

def natdither_nbytes(d: int, block_size: int, levels: int) -> int:
    """4 bytes per block scale + ceil(d * (1 + ceil(log2(s + 1))) / 8) symbol bytes."""
    _check_block_size(d, block_size)
    if not 1 <= levels <= NATDITHER_MAX_LEVELS:
        raise ValueError(f"levels must be in [1, {NATDITHER_MAX_LEVELS}], got {levels}")
    return 4 * nblocks(d, block_size) + -(-d * symbol_bits(levels) // 8)


def natdither_encode(x: np.ndarray, scales: np.ndarray, block_size: int, levels: int,
                     seed: int, out: np.ndarray) -> None:
    """Quantize x to sign * t_b * {0, 2^(1-s), ..., 1} and write the payload (see above)."""
    d = x.size
    n = natdither_nbytes(d, block_size, levels)
    nb = nblocks(d, block_size)
    if scales.size != nb or out.size != n:
        raise ValueError("natdither_encode: scales or out has the wrong length")
    scales = scales.astype(np.float32) + np.float32(0.0)
    if not (np.isfinite(scales) & (scales >= 0)).all():
        raise ValueError("natdither_encode: scales must be finite and >= 0")
    if d == 0:
        return
    s = levels
    t = np.repeat(scales.astype(np.float64), block_size)[:d]
    xv = x.astype(np.float64)
    r = splitmix64(seed, 0, d) >> np.uint64(11)
    with np.errstate(divide="ignore", invalid="ignore"):
        y = np.where(t > 0, np.abs(xv) / t, 0.0)
    u = y.view(np.uint64)
    e = (u >> np.uint64(52)).astype(np.int64) - 1023
    mid = e + s + (r < ((u & np.uint64(0xFFFFFFFFFFFFF)) << np.uint64(1)))
    low = r.astype(np.float64) * 2.0**-53 < np.ldexp(y, s - 1)
    lev = np.where(~(y < 1.0), s, np.where(e >= 1 - s, mid, low)).astype(np.uint64)
    lev[t == 0] = 0
    code = (lev << np.uint64(1)) | ((xv < 0) & (lev != 0)).astype(np.uint64)
    out[:4 * nb] = np.frombuffer(scales.astype("<f4").tobytes(), dtype=np.uint8)
    out[4 * nb:] = _lsb_pack(code, symbol_bits(s), n - 4 * nb)


def natdither_decode_add(payload: np.ndarray, d: int, block_size: int, levels: int,
                         out: np.ndarray, weight: float) -> tuple[int, int]:
    """Validate; if valid, out += weight * sign * ldexp(t_b, level - s). Returns (code, where)."""
    n = natdither_nbytes(d, block_size, levels)
    nb = nblocks(d, block_size)
    if payload.size != n or out.size != d:
        raise ValueError("natdither_decode_add: payload or out has the wrong length")
    if d == 0:
        return ERR_OK, -1
    where, scales = _scales_or_error(payload, nb)
    if where >= 0:
        return ERR_SCALE, where
    b = symbol_bits(levels)
    code = _lsb_unpack(payload[4 * nb:], b, d)
    lev, sign = code >> np.uint64(1), (code & np.uint64(1)) == 1
    bad = (lev > levels) | (sign & (lev == 0))
    if bad.any():
        i = int(np.argmax(bad))
        return (ERR_LEVEL if lev[i] > levels else ERR_SIGN), i
    if (d * b) % 8 and payload[-1] >> ((d * b) % 8):
        return ERR_PADDING, n - 1
    t = np.repeat(scales, block_size)[:d]
    v = np.where(lev == 0, 0.0, np.ldexp(t, lev.astype(np.int64) - levels))
    _accumulate(out, weight, np.where(sign, -v, v))
    return ERR_OK, -1


# -- rounding ------------------------------------------------------------------------

def _rounding_codes(x, resolution):
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        q = np.rint(x.astype(np.float64) / resolution)
    bad = ~(np.abs(q) <= ROUNDING_MAX_Q)
    if bad.any():
        raise ValueError(f"rounding_widths: |x[{int(np.argmax(bad))}]| / resolution is NaN, Inf "
                         "or above 2^31 - 1")
    qi = q.astype(np.int64)
    return ((qi << 1) ^ (qi >> 63)).astype(np.uint64)


def rounding_widths(x: np.ndarray, block_size: int, resolution: float) -> np.ndarray:
    """Per block, the bit length of the largest zig-zag code of q = rint(x / resolution)."""
    _check_block_size(x.size, block_size)
    if not resolution > 0.0:
        raise ValueError(f"resolution must be > 0, got {resolution}")
    code = _rounding_codes(x, resolution)
    if x.size == 0:
        return np.zeros(0, dtype=np.uint8)
    top = np.maximum.reduceat(code, np.arange(0, x.size, block_size))
    return _bit_lengths(top).astype(np.uint8)


def rounding_encode(x: np.ndarray, widths: np.ndarray, block_size: int, resolution: float,
                    out: np.ndarray) -> None:
    """Widths bytes, then each block's zig-zag codes in its width, LSB-first (see above)."""
    d = x.size
    _check_block_size(d, block_size)
    nb = nblocks(d, block_size)
    if widths.size != nb:
        raise ValueError("rounding_encode: widths has the wrong length")
    if (widths > 32).any():
        raise ValueError("rounding_encode: widths must be <= 32")
    w = np.repeat(widths.astype(np.int64), block_size)[:d]
    total = int(w.sum())
    if out.size != nb + -(-total // 8):
        raise ValueError(f"rounding_encode: out has {out.size} bytes, expected {nb + -(-total // 8)}")
    code = _rounding_codes(x, resolution) & ((np.uint64(1) << w.astype(np.uint64)) - np.uint64(1))
    out[:nb] = widths
    out[nb:] = _lsb_pack(code, w, out.size - nb)


def rounding_decode_add(payload: np.ndarray, d: int, block_size: int, resolution: float,
                        out: np.ndarray, weight: float) -> tuple[int, int]:
    """Validate; if valid, out += weight * (resolution * q). Returns (code, where)."""
    _check_block_size(d, block_size)
    if out.size != d:
        raise ValueError("rounding_decode_add: out has the wrong length")
    nb = nblocks(d, block_size)
    n = payload.size
    if n < nb:
        return ERR_SIZE, nb
    widths = payload[:nb].astype(np.int64)
    if (widths > 32).any():
        return ERR_WIDTH, int(np.argmax(widths > 32))
    w = np.repeat(widths, block_size)[:d]
    total = int(w.sum())
    if n != nb + -(-total // 8):
        return ERR_SIZE, nb + -(-total // 8)
    if d == 0:
        return ERR_OK, -1
    code = _lsb_unpack(payload[nb:], w, d)
    bad_code = code == np.uint64(0xFFFFFFFF)
    j_code = int(np.argmax(bad_code)) if bad_code.any() else d
    orv = np.bitwise_or.reduceat(code, np.arange(0, d, block_size))
    bad_w = _bit_lengths(orv) != widths
    b_w = int(np.argmax(bad_w)) if bad_w.any() else nb
    if j_code < d and j_code // block_size <= b_w:       # blocks are checked in order
        return ERR_CODE, j_code
    if b_w < nb:
        return ERR_WIDTH, b_w
    if total % 8 and payload[-1] >> (total % 8):
        return ERR_PADDING, n - 1
    q = (code >> np.uint64(1)).astype(np.int64) ^ -(code & np.uint64(1)).astype(np.int64)
    _accumulate(out, weight, resolution * q.astype(np.float64))
    return ERR_OK, -1
