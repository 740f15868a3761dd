"""NumPy twin of ``cython_ext/_dither.pyx``: random dithering, dense encoding.

(See :mod:`psgd.kernels_ref` for what a twin is; ``tests/test_kernels.py`` compares.)

Random numbers: coordinate ``i`` (0-based index into the whole vector, not into its
block) uses ``u_i = splitmix_uniform(seed, i)`` (:mod:`psgd.kernels_ref.splitmix`).

Random dithering (dense encoding)
---------------------------------
The vector is cut into ``nblocks = ceil(d / block_size)`` blocks (the last may be
short). Block scale t: the max-norm, or the 2-norm as the square root of the sum of
squares accumulated sequentially in float64 in index order; then rounded UP to
float32 (so ``|x_j| <= t`` always) and used as ``double(t32)`` from then on.
Coordinate j of a block with t > 0 and ``s`` levels::

    y = fabs(double(x_j)) / t * s;  l = floor(y)
    level = s if not (y < s) else l + (u_j < y - l)     # "y < s" == "l < s" for y >= 0

sign = (x_j < 0) and level > 0. A block with t = 0 gives level 0 everywhere.

Payload: ``nblocks`` little-endian float32 scales, then the symbols of all d
coordinates as one stream (blocks share it):

* ``s == 1``: trits (0 = zero, 1 = +t, 2 = -t), 5 per byte,
  ``byte = t0 + 3 t1 + 9 t2 + 27 t3 + 81 t4``; the last byte padded with zero trits.
* ``s > 1``: ``b = 1 + ceil(log2(s + 1))`` bits per coordinate, the code
  ``sign + 2 * level`` written LSB-first into a little-endian bit stream (bit k
  of the stream is bit ``k % 8`` of byte ``k // 8``: sign first, then the level
  from its least significant bit), padded with zero bits to a whole byte.

Decoding: ``value = sign * (t * level / s)`` in double, then
``out_j += weight * value`` (for a float32 ``out`` the double product is cast
to float32 before the add).
"""

from __future__ import annotations

import numpy as np

from .errors import ERR_LEVEL, ERR_OK, ERR_PADDING, ERR_SCALE, ERR_SIGN, ERR_TRIT
from .splitmix import splitmix_uniform


#: ``norm_code`` values of :func:`block_scales` (the same numbers in the .pyx)
NORM_2 = 0
NORM_INF = 1
#: levels are capped so that one symbol fits in 32 bits (b <= 32)
MAX_LEVELS = 2**31 - 1

_POW3 = np.array([1, 3, 9, 27, 81], dtype=np.uint8)
#: _TRITS[byte] = the 5 trits of a byte < 243
_TRITS = (np.arange(243)[:, None] // np.array([1, 3, 9, 27, 81]) % 3).astype(np.uint8)


def nblocks(d: int, block_size: int) -> int:
    return -(-d // block_size)


def symbol_bits(levels: int) -> int:
    """b = 1 + ceil(log2(s + 1)) bits per coordinate (s > 1); ceil(log2(s+1)) == s.bit_length()."""
    return 1 + int(levels).bit_length()


def symbols_nbytes(d: int, levels: int) -> int:
    """Length of the symbol stream: ceil(d/5) trit bytes (s = 1) or ceil(d*b/8) bytes."""
    if levels == 1:
        return -(-d // 5)
    return -(-d * symbol_bits(levels) // 8)


def _check_common(d, block_size, levels):
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    if not 1 <= levels <= MAX_LEVELS:
        raise ValueError(f"levels must be in [1, {MAX_LEVELS}], got {levels}")
    if d < 0:
        raise ValueError(f"d must be >= 0, got {d}")


def _blocked(v: np.ndarray, block_size: int) -> np.ndarray:
    """v (float64) zero-padded to whole blocks, shape (nblocks, block_size)."""
    nb = nblocks(v.size, block_size)
    padded = np.zeros(nb * block_size, dtype=np.float64)
    padded[:v.size] = v
    return padded.reshape(nb, block_size)


def block_scales(x: np.ndarray, block_size: int, norm_code: int) -> np.ndarray:
    """Per-block norms of x rounded up to float32 (NaN/inf propagate; the caller checks)."""
    _check_common(x.size, block_size, 1)
    if norm_code not in (NORM_2, NORM_INF):
        raise ValueError(f"norm_code must be NORM_2 ({NORM_2}) or NORM_INF ({NORM_INF}), got {norm_code}")
    ax = _blocked(np.abs(x.astype(np.float64)), block_size)  # zero padding changes no norm
    if ax.size == 0:
        return np.zeros(0, dtype=np.float32)
    if norm_code == NORM_INF:
        t = ax.max(axis=1)
    else:
        # cumsum is sequential, i.e. exactly the kernel's left-to-right float64 sum
        with np.errstate(over="ignore"):
            t = np.sqrt(np.cumsum(ax * ax, axis=1)[:, -1])
    with np.errstate(over="ignore"):  # a norm beyond float32 becomes inf; the caller checks
        t32 = t.astype(np.float32)
    up = t32.astype(np.float64) < t
    t32[up] = np.nextafter(t32[up], np.float32(np.inf))
    return t32


def _levels_signs(x, scales, block_size, levels, seed):
    """(level uint64, sign bool) of every coordinate, exactly as the kernel computes them."""
    d = x.size
    t = np.repeat(scales.astype(np.float64), block_size)[:d]
    s = float(levels)
    u = splitmix_uniform(seed, 0, d)
    with np.errstate(divide="ignore", invalid="ignore"):
        y = np.abs(x.astype(np.float64)) / t * s
        low = np.floor(y)
        level = np.where(y < s, low + (u < y - low), s)
    level[t == 0] = 0
    level = level.astype(np.uint64)
    return level, (x < 0) & (level > 0)


def dither_encode(x: np.ndarray, scales: np.ndarray, block_size: int, levels: int,
                  seed: int, out: np.ndarray) -> None:
    """Quantize x with the given block scales and write the whole payload into ``out``.

    ``out`` is a uint8 array of exactly ``4 * nblocks + symbols_nbytes(d, levels)`` bytes.
    ``x`` must be finite (as it is whenever ``block_scales(x)`` is): for NaN the
    kernel and this twin may pick different levels.
    """
    d = x.size
    _check_common(d, block_size, levels)
    nb = nblocks(d, block_size)
    if scales.size != nb or out.size != 4 * nb + symbols_nbytes(d, levels):
        raise ValueError("dither_encode: scales or out has the wrong length")
    scales = scales.astype(np.float32) + np.float32(0.0)  # -0.0 -> +0.0 (decode rejects a sign bit)
    if not (np.isfinite(scales) & (scales >= 0)).all():
        raise ValueError("dither_encode: scales must be finite and >= 0")
    level, sign = _levels_signs(x, scales, block_size, levels, seed)
    out[:4 * nb] = np.frombuffer(scales.astype("<f4").tobytes(), dtype=np.uint8)
    if levels == 1:
        trits = np.zeros(-(-d // 5) * 5, dtype=np.uint8)
        trits[:d] = level.astype(np.uint8) * (1 + sign)
        out[4 * nb:] = trits.reshape(-1, 5) @ _POW3
    else:
        b = symbol_bits(levels)
        code = sign.astype(np.uint64) | (level << np.uint64(1))
        bits = (code[:, None] >> np.arange(b, dtype=np.uint64)) & np.uint64(1)
        out[4 * nb:] = np.packbits(bits.astype(np.uint8).ravel(), bitorder="little")


def dither_decode_add(payload: np.ndarray, d: int, block_size: int, levels: int,
                      out: np.ndarray, weight: float) -> tuple[int, int]:
    """Validate ``payload`` and, if it is valid, ``out += weight * decoded``.

    Returns ``(ERR_OK, -1)`` or ``(code, where)`` for the first problem found, checking
    the scales first, then the symbols in stream order; ``out`` is untouched on error.
    """
    _check_common(d, block_size, levels)
    nb = nblocks(d, block_size)
    if payload.size != 4 * nb + symbols_nbytes(d, levels) or out.size != d:
        raise ValueError("dither_decode_add: payload or out has the wrong length")
    bits = payload[:4 * nb].view("<u4") if nb else np.zeros(0, "<u4")
    bad = ((bits >> 23) & 0xFF == 0xFF) | (bits >> 31 == 1)
    if bad.any():
        return ERR_SCALE, int(np.argmax(bad))
    scales = bits.view("<f4").astype(np.float64)
    sym = payload[4 * nb:]
    if levels == 1:
        bad = sym >= 243
        if bad.any():
            return ERR_TRIT, int(np.argmax(bad))
        trits = _TRITS[sym].ravel()
        if trits[d:].any():
            return ERR_PADDING, sym.size - 1
        level = (trits[:d] != 0).astype(np.uint64)
        sign = trits[:d] == 2
    else:
        b = symbol_bits(levels)
        stream = np.unpackbits(sym, bitorder="little")
        code = (stream[:d * b].reshape(d, b).astype(np.uint64) << np.arange(b, dtype=np.uint64)).sum(
            axis=1, dtype=np.uint64)
        sign = (code & np.uint64(1)).astype(bool)
        level = code >> np.uint64(1)
        bad = (level > levels) | (sign & (level == 0))
        if bad.any():
            i = int(np.argmax(bad))
            return (ERR_LEVEL if level[i] > levels else ERR_SIGN), i
        if stream[d * b:].any():
            return ERR_PADDING, sym.size - 1
    t = np.repeat(scales, block_size)[:d]
    value = t * level.astype(np.float64) / float(levels)
    value = np.where(sign, -value, value)
    add = weight * value
    out += add.astype(out.dtype, copy=False)
    return ERR_OK, -1
