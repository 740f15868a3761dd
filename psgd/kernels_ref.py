"""Pure-NumPy twins of the Cython kernels in ``cython_ext/_dither.pyx``.

These functions DEFINE what the kernels compute: the compiled versions must agree
with them byte for byte (encode) and value for value (decode); ``tests/test_kernels.py``
checks it. They are also the runtime fallback when the extension is not built
(:mod:`psgd.kernels` picks one or the other). Everything is vectorized: no Python
loop over coordinates or blocks.

Random numbers (counter-based SplitMix64, so it vectorizes)
---------------------------------------------------------
Coordinate ``i`` (0-based index into the whole vector, not into its block) uses::

    z = seed + (i + 1) * 0x9E3779B97F4A7C15            (mod 2**64)
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9          (mod 2**64)
    z = (z ^ (z >> 27)) * 0x94D049BB133111EB          (mod 2**64)
    z = z ^ (z >> 31)
    u_i = (z >> 11) * 2**-53                          (a double in [0, 1))

``seed`` is one draw ``rng.integers(0, 2**64, dtype=np.uint64)`` from the
Generator given to ``encode``.

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

__all__ = ["NORM_2", "NORM_INF", "MAX_LEVELS", "ERR_OK", "ERR_SCALE", "ERR_TRIT",
           "ERR_LEVEL", "ERR_SIGN", "ERR_PADDING", "nblocks", "symbol_bits",
           "symbols_nbytes", "splitmix_uniform", "block_scales", "dither_encode",
           "dither_decode_add",
           "ERR_ZERO_BLOCK", "ERR_LENGTH", "SD_DETERMINISTIC", "SD_RANDOMIZED", "SD_MAX_LEVEL",
           "sd_block_constant", "sd_kmax", "sd_max_level_bits", "sd_encode", "sd_decode_add",
           "sphere_block_seeds", "sphere_points", "sphere_search"]

#: ``norm_code`` values of :func:`block_scales` (the same numbers in the .pyx)
NORM_2 = 0
NORM_INF = 1
#: levels are capped so that one symbol fits in 32 bits (b <= 32)
MAX_LEVELS = 2**31 - 1

#: error codes of :func:`dither_decode_add`; it returns ``(code, where)``
ERR_OK = 0        # where = -1
ERR_SCALE = 1     # where = block index: scale is NaN, infinite or has its sign bit set
ERR_TRIT = 2      # where = index of a trit byte >= 243 (in the symbol stream)
ERR_LEVEL = 3     # where = coordinate whose level exceeds s
ERR_SIGN = 4      # where = coordinate with level 0 and sign bit 1
ERR_PADDING = 5   # where = index of the last symbol byte, whose padding is not zero

_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
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


def splitmix_uniform(seed: int, start: int, stop: int) -> np.ndarray:
    """u_i for i in [start, stop) (see the module docstring)."""
    with np.errstate(over="ignore"):
        z = np.uint64(seed) + np.arange(start + 1, stop + 1, dtype=np.uint64) * _GAMMA
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
    z ^= z >> np.uint64(31)
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53


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


# =====================================================================================
# Sparse dithering and spherical compression (cython_ext/_sparse_sphere.pyx)
# =====================================================================================
#
# Sparse dithering (psgd.compressors.sparse_dithering; papers.md §A.10-A.11)
# --------------------------------------------------------------------------
# Blocks of ``block_size`` (the last may be short). Block b of length d_b has a
# constant c_b (deterministic: 2 sqrt(nu/d_b) = 2h; randomized: 2 sqrt(omega/d_b) = h),
# computed by the caller (:func:`sd_block_constant`) and passed in as ``c_full`` /
# ``c_last``. Per block:
#
#     s = sum x_j^2            sequential float64 sum in index order (as block_scales)
#     g = c_b * sqrt(s)        double; g >= FLT_MAX or NaN is an error (ValueError)
#     gamma = float32(g) rounded DOWN, then one more float32 step towards 0;
#     gamma < FLT_MIN (0 or subnormal) is flushed to 0 (the block is sent as zeros)
#
# (two steps down make d_b gamma^2 / 4 <= (1 - 2^-23) * c_b^2 s d_b / 4 strictly,
# enough slack for every float64 rounding below, so ||C(x)-x||^2 <= nu ||x||^2 holds
# for the decoded float64 vector, not just in exact arithmetic.) Per coordinate, with
# G = double(gamma) > 0 (k = 0 when gamma = 0):
#
#     y = fabs(double(x_j)) / G
#     deterministic:  k = floor(y + 0.5)
#     randomized:     l = floor(y); k = l + (u_j < y - l)   (u_j = splitmix_uniform(seed, j))
#
# Decoded value: sign(x_j) * k_j * G. k must be <= kmax_b (:func:`sd_kmax`, < 2^31).
#
# Payload: nblocks float32 gammas (LE), then ceil(d/5) trit bytes (trit 0 = zero,
# 1 = positive, 2 = negative; byte = t0 + 3 t1 + ... + 81 t4, last byte padded with
# zero trits: exactly the random_dithering s = 1 packing), then the unary levels of
# the nonzero coordinates in index order: k-1 one bits and a zero bit, LSB-first
# (bit n of the stream is bit n % 8 of byte n // 8), padded with zero bits to a byte.
# K = sum_j k_j bits, so the payload is 4 nblocks + ceil(d/5) + ceil(K/8) bytes.
#
# Decode validation, in this order (first failure wins; ``out`` untouched on error):
#   ERR_SCALE (block): gamma NaN/Inf, sign bit set, or subnormal nonzero
#   ERR_TRIT (trit byte index): a trit byte >= 243
#   ERR_PADDING (-1): nonzero padding trits
#   ERR_ZERO_BLOCK (coordinate): nonzero trit in a block whose gamma is 0
#   then the unary stream, coordinate by coordinate:
#   ERR_LEVEL (coordinate): a run reaches kmax_b ones (k would exceed kmax_b)
#   ERR_LENGTH (-1): the stream ends inside a run, or has bytes after ceil(K/8)
#   ERR_PADDING (-1): nonzero bits after the last terminator in the final byte
#
# Spherical compression (psgd.compressors.spherical; papers.md §A.12)
# ------------------------------------------------------------------
# Random points: block b uses the 64-bit seed ``mix64(seed + (b+1) * GAMMA)``
# (mix64 = the SplitMix64 finaliser above, full 64-bit output). Candidate t = 1, 2, ...
# of a block of length d_b has the coordinates j = 0..d_b-1
#
#     m = (t-1) d_b + j;  u1 = U(seed_b, 2m);  u2 = U(seed_b, 2m+1)
#     z_j = sqrt(-2 log(1 - u1)) * cos(TWO_PI * u2)      (Box-Muller, i.i.d. N(0,1))
#
# with U(s, i) the splitmix uniform of counter i under seed s. The direction z/||z||
# is uniform on the sphere; the decoder computes candidate T directly (counter based).
# Search (per block, x_b its coordinates, s = sequential sum x_b^2): sequentially in
# j, dot += z_j x_j and zz += z_j z_j; candidate t is accepted when
#
#     dot > 0  and  dot * dot >= thr * zz * s         (thr = 1 - alpha + margin)
#
# T = the first accepted t (T = 1 for s == 0), sigma = float32(dot / sqrt(zz))
# (round to nearest; 0 for s == 0). C(x)_b = sigma z/||z|| is the projection of x_b
# onto the accepted direction: ||C(x)_b - x_b||^2 = s (1 - cos^2) <= (alpha - margin) s.
# No candidate up to ``cap`` trials: T = 0 is returned (the caller raises).
# The transcendental functions are libm's in the kernel and NumPy's in the twin; they
# may differ in the last ulp, which can change T only when a candidate lies within
# ~1e-15 of the threshold (the margin keeps the decoded error <= alpha either way).

ERR_ZERO_BLOCK = 6  # where = coordinate with a nonzero trit in a block whose scale is 0
ERR_LENGTH = 7      # where = -1: the unary stream is too short or too long
SD_DETERMINISTIC = 0
SD_RANDOMIZED = 1
#: levels are capped so they fit in 31 bits
SD_MAX_LEVEL = 2**31 - 1
TWO_PI = 6.283185307179586
_FLT_MIN = float(np.finfo(np.float32).tiny)
_FLT_MAX = float(np.finfo(np.float32).max)


def sd_block_constant(d_b: int, variant: int, param: float) -> float:
    """c_b: 2 sqrt(nu/d_b) (deterministic, = 2h) or 2 sqrt(omega/d_b) (randomized, = h)."""
    return 2.0 * np.sqrt(param / d_b)


def sd_kmax(d_b: int, variant: int, param: float) -> int:
    """A level no valid message exceeds in a block of length d_b (checked by decode).

    k <= y + 1 with y = |x_j| / gamma <= ||x_b|| / gamma <= (1 + 2^-20) / c_b.
    """
    return int(np.floor((1.0 + 2.0**-20) / sd_block_constant(d_b, variant, param))) + 1


def sd_max_level_bits(d_b: int, variant: int, param: float) -> int:
    """An upper bound on K_b = sum of the levels in one block of length d_b.

    Deterministic: every nonzero k has |u_j| >= (2k-1) h (1 - eps), so by Cauchy-Schwarz
    sum (2k-1) <= d_b / sqrt(nu) and K_b <= d_b (1/sqrt(nu) + 1) / 2.
    Randomized: k - 1 < y for k >= 1, so K_b < ||u||_1 / h + d_b <= d_b (1/(2 sqrt(omega)) + 1).
    """
    if variant == SD_DETERMINISTIC:
        bound = d_b * (1.0 / np.sqrt(param) + 1.0) / 2.0
    else:
        bound = d_b * (1.0 / (2.0 * np.sqrt(param)) + 1.0)
    return int(np.floor(bound * (1.0 + 2.0**-20))) + 1


def _mix64(z):
    """The SplitMix64 finaliser on uint64 arrays (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def _u01_at(seed, index):
    """U(seed, index) elementwise: (mix64(seed + (index+1) GAMMA) >> 11) * 2^-53."""
    with np.errstate(over="ignore"):
        z = np.asarray(seed, dtype=np.uint64) + (np.asarray(index, dtype=np.uint64) + np.uint64(1)) * _GAMMA
    return (_mix64(z) >> np.uint64(11)).astype(np.float64) * 2.0**-53


def _block_sumsq(x, block_size):
    """Sequential float64 sum of squares of every block (the kernels' order)."""
    xb = _blocked(x.astype(np.float64), block_size)
    if xb.size == 0:
        return np.zeros(0)
    return np.cumsum(xb * xb, axis=1)[:, -1]


def _block_lengths(d, block_size):
    nb = nblocks(d, block_size)
    lens = np.full(nb, block_size, dtype=np.int64)
    if nb:
        lens[-1] = d - (nb - 1) * block_size
    return lens


def _sd_gammas(x, block_size, c_full, c_last):
    d = x.size
    nb = nblocks(d, block_size)
    c = np.full(nb, c_full)
    if nb and d % block_size:
        c[-1] = c_last
    with np.errstate(over="ignore", invalid="ignore"):
        g = c * np.sqrt(_block_sumsq(x, block_size))
    if not (g < _FLT_MAX).all():  # NaN, inf or too large for a float32 scale
        raise ValueError("sparse dithering: x holds NaN/Inf or a block norm too large for float32")
    f = g.astype(np.float32)
    up = f.astype(np.float64) > g
    f[up] = np.nextafter(f[up], np.float32(0))
    pos = f > 0
    f[pos] = np.nextafter(f[pos], np.float32(0))
    f[f < np.float32(_FLT_MIN)] = 0
    return f


def sd_encode(x: np.ndarray, block_size: int, c_full: float, c_last: float, variant: int,
              seed: int) -> np.ndarray:
    """The sparse dithering payload of x (a new uint8 array); see the section comment."""
    d = x.size
    _check_common(d, block_size, 1)
    nb = nblocks(d, block_size)
    gam = _sd_gammas(x, block_size, c_full, c_last)
    G = np.repeat(gam.astype(np.float64), block_size)[:d]
    with np.errstate(divide="ignore", invalid="ignore"):
        y = np.abs(x.astype(np.float64)) / G
        if variant == SD_DETERMINISTIC:
            k = np.floor(y + 0.5)
        else:
            low = np.floor(y)
            k = low + (splitmix_uniform(seed, 0, d) < y - low)
    k[G == 0] = 0
    if k.size and k.max() > SD_MAX_LEVEL:
        raise ValueError("sparse dithering: a level exceeds 2^31 - 1 (nu or omega too small)")
    k = k.astype(np.int64)
    trit = np.where(k > 0, np.where(x > 0, 1, 2), 0).astype(np.uint8)
    trits = np.zeros(-(-d // 5) * 5, dtype=np.uint8)
    trits[:d] = trit
    nz = k[k > 0]
    K = int(nz.sum())
    bits = np.ones(-(-K // 8) * 8, dtype=np.uint8)
    bits[np.cumsum(nz) - 1] = 0
    bits[K:] = 0
    return np.concatenate([np.frombuffer(gam.astype("<f4").tobytes(), dtype=np.uint8),
                           trits.reshape(-1, 5) @ _POW3,
                           np.packbits(bits, bitorder="little")])


def sd_decode_add(payload: np.ndarray, d: int, block_size: int, kmax_full: int,
                  kmax_last: int, out: np.ndarray, weight: float) -> tuple[int, int]:
    """Validate a sparse dithering payload and, if valid, ``out += weight * decoded``.

    Returns ``(ERR_OK, -1)`` or the first ``(code, where)`` in the order of the section
    comment; ``out`` is untouched on error.
    """
    _check_common(d, block_size, 1)
    if out.size != d:
        raise ValueError("sd_decode_add: out has the wrong length")
    nb = nblocks(d, block_size)
    nt = -(-d // 5)
    if payload.size < 4 * nb + nt:
        return ERR_LENGTH, -1
    bits = payload[:4 * nb].view("<u4") if nb else np.zeros(0, "<u4")
    expo = (bits >> 23) & 0xFF
    bad = (expo == 0xFF) | (bits >> 31 == 1) | ((expo == 0) & (bits != 0))
    if bad.any():
        return ERR_SCALE, int(np.argmax(bad))
    gam = bits.view("<f4").astype(np.float64)
    sym = payload[4 * nb:4 * nb + nt]
    bad = sym >= 243
    if bad.any():
        return ERR_TRIT, int(np.argmax(bad))
    trits = _TRITS[sym].ravel()
    if trits[d:].any():
        return ERR_PADDING, -1
    trits = trits[:d]
    G = np.repeat(gam, block_size)[:d]
    bad = (trits != 0) & (G == 0)
    if bad.any():
        return ERR_ZERO_BLOCK, int(np.argmax(bad))
    coords = np.flatnonzero(trits)
    kmax = np.full(d, kmax_full, dtype=np.int64)
    if d % block_size:
        kmax[(nb - 1) * block_size:] = kmax_last
    stream = np.unpackbits(payload[4 * nb + nt:], bitorder="little")
    ends = np.flatnonzero(stream == 0)[:coords.size] + 1   # one past each terminator
    k = np.diff(ends, prepend=0)
    bad = k > kmax[coords[:k.size]]
    if bad.any():
        return ERR_LEVEL, int(coords[np.argmax(bad)])
    if k.size < coords.size:  # stream ended inside a run: too long a run is a level error
        tail = stream.size - (int(ends[-1]) if ends.size else 0)
        nxt = int(coords[k.size])
        return (ERR_LEVEL, nxt) if tail >= kmax[nxt] else (ERR_LENGTH, -1)
    used = int(ends[-1]) if ends.size else 0
    if stream.size != -(-used // 8) * 8:
        return ERR_LENGTH, -1
    if stream[used:].any():
        return ERR_PADDING, -1
    level = np.zeros(d)
    level[coords] = k
    value = G * level
    value = np.where(trits == 2, -value, value)
    add = weight * value
    out += add.astype(out.dtype, copy=False)
    return ERR_OK, -1


def sphere_block_seeds(seed: int, blocks) -> np.ndarray:
    """seed_b = mix64(seed + (b+1) GAMMA) for the given block indices."""
    with np.errstate(over="ignore"):
        z = np.uint64(seed) + (np.asarray(blocks, dtype=np.uint64) + np.uint64(1)) * _GAMMA
    return _mix64(z)


def sphere_points(block_seeds: np.ndarray, t: np.ndarray, d_b: int) -> np.ndarray:
    """Candidates t[i] (1-based) of blocks with seeds block_seeds[i]: shape t.shape + (d_b,).

    ``block_seeds`` broadcasts against ``t``.
    """
    t = np.asarray(t, dtype=np.uint64)
    s = np.broadcast_to(np.asarray(block_seeds, dtype=np.uint64), t.shape)[..., None]
    m = (t[..., None] - np.uint64(1)) * np.uint64(d_b) + np.arange(d_b, dtype=np.uint64)
    two_m = m * np.uint64(2)
    u1 = _u01_at(s, two_m)
    u2 = _u01_at(s, two_m + np.uint64(1))
    return np.sqrt(-2.0 * np.log(1.0 - u1)) * np.cos(TWO_PI * u2)


#: the twin's search holds at most this many candidate coordinates at once
SPHERE_CHUNK = 2**18


def _sphere_search_group(xb, sumsq, seeds, d_b, thr, cap):
    """T (0 = not found) and sigma for blocks of equal length d_b (rows of xb)."""
    n = xb.shape[0]
    T = np.zeros(n, dtype=np.uint64)
    sigma = np.zeros(n, dtype=np.float32)
    T[sumsq == 0] = 1
    per = max(1, SPHERE_CHUNK // (64 * d_b))
    for g0 in range(0, n, per):  # groups of blocks bound the memory
        active = g0 + np.flatnonzero(sumsq[g0:g0 + per] != 0)
        t0 = 0
        while active.size and t0 < cap:  # rounds of C candidates per block, not single draws
            # chunks grow (64, then doubling) so that easy blocks stay cheap
            C = int(min(cap - t0, max(1, SPHERE_CHUNK // (active.size * d_b)), max(64, t0)))
            t = np.arange(t0 + 1, t0 + C + 1, dtype=np.uint64)
            z = sphere_points(seeds[active][:, None], np.broadcast_to(t, (active.size, C)), d_b)
            dot = np.cumsum(z * xb[active][:, None, :], axis=2)[:, :, -1]
            zz = np.cumsum(z * z, axis=2)[:, :, -1]
            ok = (dot > 0) & (dot * dot >= thr * zz * sumsq[active][:, None])
            hit = ok.any(axis=1)
            rows = np.flatnonzero(hit)
            first = np.argmax(ok, axis=1)[rows]
            T[active[rows]] = (t0 + 1 + first).astype(np.uint64)
            sigma[active[rows]] = (dot[rows, first] / np.sqrt(zz[rows, first])).astype(np.float32)
            active = active[~hit]
            t0 += C
    return T, sigma


def sphere_search(x: np.ndarray, block_size: int, thr: float, seed: int, cap_full: int,
                  cap_last: int) -> tuple[np.ndarray, np.ndarray]:
    """(T uint64, sigma float32) per block; T = 0 where no candidate within the cap."""
    d = x.size
    _check_common(d, block_size, 1)
    nb = nblocks(d, block_size)
    xb = _blocked(x.astype(np.float64), block_size)
    sumsq = _block_sumsq(x, block_size)
    seeds = sphere_block_seeds(seed, np.arange(nb))
    T = np.zeros(nb, dtype=np.uint64)
    sigma = np.zeros(nb, dtype=np.float32)
    nfull = d // block_size
    if nfull:
        T[:nfull], sigma[:nfull] = _sphere_search_group(xb[:nfull], sumsq[:nfull], seeds[:nfull],
                                                        block_size, thr, cap_full)
    if nfull < nb:
        dl = d - nfull * block_size
        T[nfull:], sigma[nfull:] = _sphere_search_group(xb[nfull:, :dl], sumsq[nfull:],
                                                        seeds[nfull:], dl, thr, cap_last)
    return T, sigma


# ====================================================================================
# Sparse codes (rand_k, top_k): twins of cython_ext/_sparse.pyx
# ====================================================================================
# rand_k index selection (exactly uniform k-subsets from a 64-bit seed)
# --------------------------------------------------------------------
# Draw j = 0, 1, 2, ... uses ``r_j = splitmix64(seed + (j+1) * GAMMA) >> 32`` (the top
# 32 bits of the same SplitMix64 output as above) and Lemire's multiply-shift with
# rejection: ``m = r_j * d``; the draw is rejected if ``m mod 2**32 < (2**32 - d) mod d``,
# else ``v_j = m >> 32`` is uniform on range(d). The selected set is the first
# ``n`` distinct values of the accepted v_j, with ``n = k`` if ``2k <= d`` and else
# ``n = d - k`` and the set is the complement (so at most d ln 2 draws are needed).
# Either way the result is a uniformly random k-subset, returned sorted.
#
# top_k selection
# ---------------
# The k coordinates with the largest |x_i| compared exactly in the input dtype (by the
# bit pattern of |x_i|, which orders finite floats), ties broken towards the LOWEST
# index; returned sorted. NaN or Inf in x is a ValueError.
#
# Index coding (top_k; rand_k when the indices travel)
# ----------------------------------------------------
# Sorted indices i_0 < i_1 < ... become gaps ``g_0 = i_0``, ``g_e = i_e - i_{e-1} - 1``,
# each written as an unsigned LEB128 varint (7 bits per byte, least significant group
# first, bit 7 set on every byte but the last): ``8 * ceil(max(1, bitlen(g)) / 7)``
# bits per index. Decoding rejects a varint longer than 5 bytes or >= 2**32
# (ERR_VARINT), one running past the buffer (ERR_VARINT), a redundant zero high
# byte (ERR_NONCANONICAL), an index >= d (ERR_INDEX) and bytes after the k-th
# varint (ERR_TRAILING); ``where`` is the byte offset of the varint, the entry
# number for ERR_INDEX, the offset of the first extra byte for ERR_TRAILING.

ERR_VALUE = 10          # where = entry whose float32 value is NaN or Inf
ERR_VARINT = 11         # where = byte offset of a truncated / too long / too large varint
ERR_NONCANONICAL = 12   # where = byte offset of a varint with a redundant zero high byte
ERR_INDEX = 13          # where = entry number whose index is >= d
ERR_TRAILING = 14       # where = byte offset of the first byte after the last varint
MAX_DIM = 2**32 - 1


def splitmix64(seed: int, start: int, stop: int) -> np.ndarray:
    """The raw 64-bit SplitMix64 outputs for counters i in [start, stop) (uint64)."""
    with np.errstate(over="ignore"):
        z = np.uint64(seed) + np.arange(start + 1, stop + 1, dtype=np.uint64) * _GAMMA
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def randk_indices(seed: int, d: int, k: int) -> np.ndarray:
    """The sorted k-subset of range(d) that the stream of ``seed`` selects (see above)."""
    if not 0 <= d <= MAX_DIM:
        raise ValueError(f"d must be in [0, {MAX_DIM}], got {d}")
    if not 0 <= k <= d:
        raise ValueError(f"k must be in [0, d={d}], got {k}")
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    complement = 2 * k > d
    n = d - k if complement else k
    chosen = np.zeros(0, dtype=np.uint64)
    if n:
        thresh = np.uint64((2**32 - d) % d)
        # expected draws for n distinct values: d (H_d - H_{d-n}) ~ -d log(1 - n/d); the
        # batch is regrown (rarely) until it holds n distinct accepted values
        expect = -d * np.log1p(-n / d)
        m = int(1.05 * expect + 6 * np.sqrt(expect) + 64)
        while True:
            r = splitmix64(seed, 0, m) >> np.uint64(32)
            prod = r * np.uint64(d)
            v = (prod >> np.uint64(32))[(prod & np.uint64(0xFFFFFFFF)) >= thresh]
            _, first = np.unique(v, return_index=True)
            if first.size >= n:
                chosen = v[np.sort(first)[:n]]
                break
            m *= 2
    mark = np.zeros(d, dtype=bool)
    mark[chosen.astype(np.int64)] = True
    if complement:
        mark = ~mark
    return np.flatnonzero(mark).astype(np.int64)


def _abs_keys(x: np.ndarray) -> np.ndarray:
    if x.dtype == np.float32:
        key = x.view(np.uint32) & np.uint32(0x7FFFFFFF)
        inf = np.uint32(0x7F800000)
    else:
        key = np.ascontiguousarray(x, dtype=np.float64).view(np.uint64) & np.uint64(0x7FFFFFFFFFFFFFFF)
        inf = np.uint64(0x7FF0000000000000)
    if key.size and key.max() >= inf:
        raise ValueError("topk_indices: x holds NaN or Inf")
    return key


def topk_indices(x: np.ndarray, k: int) -> np.ndarray:
    """Sorted indices of the k largest |x_i|, ties to the lowest index; ValueError on NaN/Inf."""
    d = x.size
    if not 0 <= k <= d:
        raise ValueError(f"k must be in [0, d={d}], got {k}")
    key = _abs_keys(x)
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    if k == d:
        return np.arange(d, dtype=np.int64)
    t = np.partition(key, d - k)[d - k]          # the k-th largest key
    take = key > t
    eq = np.flatnonzero(key == t)[:k - int(np.count_nonzero(take))]
    take[eq] = True
    return np.flatnonzero(take).astype(np.int64)


def _gaps(idx: np.ndarray) -> np.ndarray:
    idx = np.asarray(idx, dtype=np.int64)
    g = np.diff(idx, prepend=np.int64(-1)) - 1
    if g.size and (g.min() < 0 or idx[-1] > MAX_DIM):
        raise ValueError("indices must be strictly increasing, in [0, 2**32 - 1)")
    return g.astype(np.uint64)


def _varint_lengths(g: np.ndarray) -> np.ndarray:
    n = np.ones(g.size, dtype=np.int64)
    for b in range(1, 10):                       # 7-bit groups of a uint64 (10 at most)
        n += g >= np.uint64(1 << (7 * b))
    return n


def gaps_nbytes(idx: np.ndarray) -> int:
    """Bytes of the LEB128 varints of the gaps of the sorted indices idx."""
    return int(_varint_lengths(_gaps(idx)).sum())


def gaps_encode(idx: np.ndarray, out: np.ndarray) -> None:
    """Write the gap varints of idx into out (exactly gaps_nbytes(idx) bytes)."""
    g = _gaps(idx)
    lens = _varint_lengths(g)
    total = int(lens.sum())
    if out.size != total:
        raise ValueError(f"gaps_encode: out has {out.size} bytes, expected {total}")
    start = np.cumsum(lens) - lens
    for b in range(int(lens.max(initial=0))):   # byte position within a varint (<= 5)
        sel = lens > b
        byte = (g[sel] >> np.uint64(7 * b)) & np.uint64(0x7F)
        byte |= np.where(lens[sel] > b + 1, np.uint64(0x80), np.uint64(0))
        out[start[sel] + b] = byte.astype(np.uint8)


def gaps_decode(buf: np.ndarray, d: int, idx: np.ndarray) -> tuple[int, int]:
    """Parse exactly idx.size gap varints filling buf into idx; return (code, where)."""
    buf = np.asarray(buf, dtype=np.uint8)
    n, k = buf.size, idx.size
    ends = np.flatnonzero(buf < 0x80)[:k]        # the last byte of each varint
    starts = np.concatenate(([0], ends[:-1] + 1)).astype(np.int64)[:ends.size]
    lens = ends - starts + 1
    # first malformed varint among the complete ones (stream order)
    bad_long = (lens > 5) | ((lens == 5) & (buf[ends] > 0x0F))
    bad_canon = (lens > 1) & (buf[ends] == 0)
    bad = bad_long | bad_canon
    nfirst = int(np.argmax(bad)) if bad.any() else ends.size
    # values of the well-formed ones before it
    ok_starts, ok_lens = starts[:nfirst], lens[:nfirst]
    nbytes_ok = int(ok_lens.sum())
    if nbytes_ok:
        shift = (np.arange(nbytes_ok) - np.repeat(ok_starts, ok_lens)) * 7
        parts = (buf[:nbytes_ok] & np.uint8(0x7F)).astype(np.uint64) << shift.astype(np.uint64)
        vals = np.add.reduceat(parts, ok_starts)   # groups never overlap: sum == OR
        pos = np.cumsum(vals + np.uint64(1)) - np.uint64(1)   # < k * 2^32 < 2^64
        over = np.flatnonzero(pos >= np.uint64(d))
    else:
        pos = np.zeros(0, dtype=np.uint64)
        over = np.zeros(0, dtype=np.int64)
    if over.size:
        return ERR_INDEX, int(over[0])
    if nfirst < ends.size:
        return (ERR_VARINT if bad_long[nfirst] else ERR_NONCANONICAL), int(starts[nfirst])
    if ends.size < k:                            # the next varint runs past the end
        start = int(ends[-1]) + 1 if ends.size else 0
        return ERR_VARINT, start
    end = int(ends[-1]) + 1 if k else 0
    if end != n:
        return ERR_TRAILING, end
    idx[:] = pos.astype(np.int64)
    return ERR_OK, -1


def sparse_add(idx: np.ndarray, values: np.ndarray, scale: float, out: np.ndarray,
               weight: float) -> tuple[int, int]:
    """Validate the little-endian float32 values; if all finite, out[idx] += weight*(scale*v)."""
    k = idx.size
    if values.size != 4 * k:
        raise ValueError(f"sparse_add: values has {values.size} bytes, expected {4 * k}")
    if k and (idx.min() < 0 or idx.max() >= out.size):
        raise ValueError(f"sparse_add: index out of range for d={out.size}")
    bits = np.frombuffer(values.tobytes(), dtype="<u4")
    bad = (bits >> 23) & 0xFF == 0xFF
    if bad.any():
        return ERR_VALUE, int(np.argmax(bad))
    v = scale * bits.view("<f4").astype(np.float64)
    out[idx] += (weight * v).astype(out.dtype, copy=False)
    return ERR_OK, -1


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

ERR_WIDTH = 15     # where = block whose width byte is > 32 or not its codes' bit length
ERR_CODE = 16      # where = coordinate whose rounding code is 2^32 - 1
ERR_SIZE = 17      # where = the payload length the width bytes imply
NATDITHER_MAX_LEVELS = 127
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


# ====================================================================================
# Elias-omega random dithering (random_dithering, encoding: elias): twins of _elias.pyx
# ====================================================================================
#
# Levels and signs are those of the dense encoding (:func:`_levels_signs`: the same
# uniforms and rounding), so one seed gives the same C(x) under both encodings.
#
# Elias omega of n >= 1 (papers.md §A.0): starting from an empty code, while n > 1
# prepend bin(n) and set n = len(bin(n)) - 1; then append a 0 bit. Lengths: 1 -> 1,
# 2, 3 -> 3, 4..7 -> 6, 8..15 -> 7, 16 -> 11, 100 -> 13, 1000 -> 17. Decoding reads
# n = 1, then while the next bit is 1 reads that bit and n more as the new n; a 0 bit
# ends the code. Groups longer than 34 bits (n >= 2^34) are rejected (ERR_RANGE).
#
# Payload: ``nblocks`` little-endian float32 block scales (as the dense encoding), then
# one bit stream, MSB-first (bit k is bit 7 - k % 8 of byte k // 8):
#
#     omega(nnz + 1)                           nnz = number of nonzero levels in x
#     per nonzero coordinate i, in index order:
#         omega(i - i_prev)                    i_prev = the previous nonzero (-1 at first)
#         1 sign bit (1 = negative)
#         omega(level)                         1 <= level <= s
#
# padded with zero bits to a whole byte. This is QSGD's code (papers.md §A.0, the DIANA+
# ``standard_dithering`` count) with the block scales moved to the front and one gap
# sequence for the whole vector (a block boundary does not restart it), plus the nnz
# count that lets a decoder know where the stream ends. Bits:
#
#     32 nblocks + omega(nnz + 1) + sum_i (omega(gap_i) + 1 + omega(level_i)), rounded up to 8
#
# Upper bound (omega(g) <= g + 2 and sum of gaps <= d): 32 nblocks + d (4 + omega(s))
# + omega(d + 1) bits (:func:`elias_max_nbytes`).
#
# Decoding checks, in stream order: the scales (ERR_SCALE, where = block); the count
# (ERR_STREAM if cut short, ERR_RANGE if nnz > d; where = 0); per nonzero the gap code
# (ERR_STREAM / ERR_RANGE, also for an index >= d; where = bit offset of the code in the
# stream), the sign bit (ERR_STREAM at its offset), the level code (ERR_STREAM, or
# ERR_RANGE for level > s; at its offset), a nonzero in a block whose scale is 0
# (ERR_ZERO_BLOCK, where = coordinate); then 8 or more unused bits (ERR_TRAILING, where
# = the first unused byte) or nonzero padding (ERR_PADDING, where = the last byte).
# ``value = sign * (t * level / s)``; ``out_j += weight * value`` (cast as in the dense
# decoder). A payload shorter than the scales is ERR_STREAM at 0.

ERR_STREAM = 18    # where = bit offset (in the stream after the scales) of a code cut short
ERR_RANGE = 19     # where = bit offset of a code whose value is out of range
_OMEGA_MAX_GROUP = 34
_ELIAS_CHUNK = 2**18       # nonzeros packed per step (bounds the twin's memory)
_ELIAS_WINDOW = 2**15      # stream bits parsed per step by the twin decoder


def _check_elias(d, block_size, levels):
    _check_common(d, block_size, levels)
    if d > 2**32 - 1:
        raise ValueError(f"d must be in [0, 2**32 - 1], got {d}")


def omega_length(n: int) -> int:
    """Bits of the Elias-omega code of n >= 1."""
    n = int(n)
    if n < 1:
        raise ValueError("Elias omega codes n >= 1")
    total = 1
    while n > 1:
        length = n.bit_length()
        total += length
        n = length - 1
    return total


def elias_max_nbytes(d: int, block_size: int, levels: int) -> int:
    """Upper bound on the payload: 4 nblocks + ceil((d (4 + omega(s)) + omega(d + 1)) / 8)."""
    _check_elias(d, block_size, levels)
    return 4 * nblocks(d, block_size) + -(-(d * (4 + omega_length(levels)) + omega_length(d + 1)) // 8)


def _omega_fields(n: np.ndarray):
    """(values, lengths), shape (N, 6): the groups of omega(n) in writing order + the 0 bit."""
    n = n.astype(np.uint64)
    vals, lens = [], []
    v = n
    for _ in range(5):                          # n < 2^34 needs at most 4 groups
        big = v > 1
        length = np.where(big, _bit_lengths(v), 0)
        vals.append(np.where(big, v, 0).astype(np.uint64))
        lens.append(length)
        v = np.where(big, length - 1, 1).astype(np.uint64)
    vals = vals[::-1] + [np.zeros_like(n)]
    lens = lens[::-1] + [np.ones(n.size, dtype=np.int64)]
    return np.stack(vals, axis=1), np.stack(lens, axis=1)


def _msb_pack_into(words: np.ndarray, vals: np.ndarray, lens: np.ndarray, start: int) -> None:
    """OR fields (values of lens <= 40 bits, in order) MSB-first into big-endian 64-bit words
    from stream bit ``start`` on. Fields never overlap, so sums are ORs."""
    keep = lens > 0
    vals, lens = vals[keep].astype(np.uint64), lens[keep].astype(np.int64)
    if not vals.size:
        return
    off = start + np.cumsum(lens) - lens
    wi, end = off >> 6, (off & 63) + lens
    fits = end <= 64
    part = np.where(fits, vals << (np.uint64(64) - np.minimum(end, 64).astype(np.uint64)),
                    vals >> (np.maximum(end - 64, 0).astype(np.uint64)))
    starts = np.flatnonzero(np.diff(wi, prepend=-1))
    words[wi[starts]] += np.add.reduceat(part, starts)
    spill = ~fits
    words[wi[spill] + 1] += vals[spill] << (np.uint64(128) - end[spill].astype(np.uint64))


def elias_encode(x: np.ndarray, scales: np.ndarray, block_size: int, levels: int, seed: int,
                 out: np.ndarray) -> int:
    """Quantize x (dense random-dithering levels) and write the Elias-omega payload into out
    (at least elias_max_nbytes bytes); return the payload length."""
    d = x.size
    _check_elias(d, block_size, levels)
    nb = nblocks(d, block_size)
    if scales.size != nb or out.size < elias_max_nbytes(d, block_size, levels):
        raise ValueError("elias_encode: scales or out has the wrong length")
    scales = scales.astype(np.float32) + np.float32(0.0)
    if not (np.isfinite(scales) & (scales >= 0)).all():
        raise ValueError("elias_encode: scales must be finite and >= 0")
    out[:4 * nb] = np.frombuffer(scales.astype("<f4").tobytes(), dtype=np.uint8)
    level, sign = _levels_signs(x, scales, block_size, levels, seed) if d else (
        np.zeros(0, np.uint64), np.zeros(0, bool))
    nz = np.flatnonzero(level)
    gaps = np.diff(nz, prepend=-1).astype(np.uint64)
    cv, cl = _omega_fields(np.array([nz.size + 1]))
    per = (omega_length_array(gaps) + 1 + omega_length_array(level[nz])) if nz.size else np.zeros(0, np.int64)
    total = int(cl.sum()) + int(per.sum())
    nbytes = -(-total // 8)
    words = np.zeros(nbytes // 8 + 2, dtype=np.uint64)
    _msb_pack_into(words, cv.ravel(), cl.ravel(), 0)
    offsets = int(cl.sum()) + np.cumsum(per) - per
    for a in range(0, nz.size, _ELIAS_CHUNK):   # bounded memory: one chunk of nonzeros at a time
        b = min(a + _ELIAS_CHUNK, nz.size)
        gv, gl = _omega_fields(gaps[a:b])
        lv, ll = _omega_fields(level[nz[a:b]])
        vals = np.concatenate([gv, sign[nz[a:b]].astype(np.uint64)[:, None], lv], axis=1)
        lens = np.concatenate([gl, np.ones((b - a, 1), np.int64), ll], axis=1)
        _msb_pack_into(words, vals.ravel(), lens.ravel(), int(offsets[a]))
    out[4 * nb:4 * nb + nbytes] = words.astype(">u8").view(np.uint8)[:nbytes]
    return 4 * nb + nbytes


def omega_length_array(n: np.ndarray) -> np.ndarray:
    """Elias-omega code lengths of an array of n >= 1 (int64)."""
    v = np.asarray(n, dtype=np.uint64)
    total = np.ones(v.size, dtype=np.int64)
    for _ in range(5):
        big = v > 1
        length = np.where(big, _bit_lengths(v), 0)
        total += length
        v = np.where(big, length - 1, 1).astype(np.uint64)
    return total


class _Bits:
    """Random access to an MSB-first bit stream: ``read(p, L)`` for L <= 40, p + L <= nbits."""

    def __init__(self, stream: np.ndarray):
        self.nbits = 8 * stream.size
        self.raw = np.zeros(stream.size + 16, dtype=np.uint8)
        self.raw[:stream.size] = stream
        self.win = np.lib.stride_tricks.sliding_window_view(self.raw, 9)

    def read(self, p: np.ndarray, length) -> np.ndarray:
        p = np.asarray(p, dtype=np.int64)
        w9 = self.win[p >> 3]                                   # 9 bytes from byte p // 8
        hi = np.ascontiguousarray(w9[:, :8]).view(">u8").ravel().astype(np.uint64)
        o = (p & 7).astype(np.uint64)
        top = (hi << o) | np.where(o > 0, w9[:, 8].astype(np.uint64) >> (np.uint64(8) - o), np.uint64(0))
        length = np.broadcast_to(np.asarray(length, dtype=np.uint64), p.shape)
        return np.where(length > 0, top >> (np.uint64(64) - np.maximum(length, 1)), np.uint64(0))


def _omega_at(bits: _Bits, p: np.ndarray):
    """Speculative Elias-omega decode at every position p: (status, end, value) with status
    0 ok, 1 cut short, 2 a group longer than 34 bits."""
    p = np.asarray(p, dtype=np.int64)
    status = np.full(p.size, -1, dtype=np.int8)              # -1: still reading
    pos, n = p.copy(), np.ones(p.size, dtype=np.uint64)
    for _ in range(8):                                       # <= 5 groups before n >= 2^34
        act = np.flatnonzero(status < 0)
        if not act.size:
            break
        q, m = pos[act], n[act]
        inside = q < bits.nbits
        b = np.where(inside, bits.read(np.minimum(q, bits.nbits - 1) if bits.nbits else q, 1), 0)
        status[act[~inside]] = 1
        stop = inside & (b == 0)
        status[act[stop]] = 0
        pos[act[stop]] = q[stop] + 1
        go = inside & (b == 1)
        long_ = go & (m + np.uint64(1) > _OMEGA_MAX_GROUP)
        status[act[long_]] = 2
        go &= ~long_
        short = go & (q + (m + np.uint64(1)).astype(np.int64) > bits.nbits)
        status[act[short]] = 1
        go &= ~short
        g = act[go]
        n[g] = bits.read(q[go], m[go] + np.uint64(1))
        pos[g] = q[go] + (m[go] + np.uint64(1)).astype(np.int64)
    status[status < 0] = 2
    return status, pos, n


def _triples_at(bits: _Bits, p: np.ndarray):
    """Speculative (gap, sign, level) parse at every position p."""
    sg, eg, g = _omega_at(bits, p)
    ps = eg                                                  # the sign bit
    s_ok = ps < bits.nbits
    sign = np.where(s_ok, bits.read(np.minimum(ps, max(bits.nbits - 1, 0)), 1), 0) if bits.nbits \
        else np.zeros(p.size, np.uint64)
    sl, el, lev = _omega_at(bits, ps + 1)
    ok = (sg == 0) & s_ok & (sl == 0)
    nxt = np.where(ok, el, -1)
    return dict(sg=sg, eg=eg, g=g, s_ok=s_ok, sign=sign, sl=sl, lev=lev, next=nxt)


def _follow_chain(bits: _Bits, start: int, count: int) -> np.ndarray:
    """The bit positions of the first ``count`` triples from ``start`` (fewer if one is
    malformed: the chain then ends with it). Windowed pointer doubling: each step parses
    every position of a window speculatively and finds the chain inside it in O(log W)
    vectorized rounds."""
    nodes = []
    cur, remaining = start, count
    while remaining > 0:
        if cur >= bits.nbits:                                # nothing left to read
            nodes.append(np.array([cur], dtype=np.int64))
            break
        lo, hi = cur, min(bits.nbits, cur + _ELIAS_WINDOW)
        m = hi - lo
        nxt = _triples_at(bits, np.arange(lo, hi))["next"]
        jump = np.where(nxt < 0, m + 1, np.where(nxt >= hi, m, nxt - lo))
        jump = np.concatenate([jump, [m, m + 1]])
        member = np.zeros(m + 2, dtype=bool)
        member[0] = True
        for _ in range(int(m).bit_length() + 1):
            member[jump[np.flatnonzero(member[:m])]] = True
            jump = jump[jump]
        local = np.flatnonzero(member[:m])[:remaining]
        nodes.append(lo + local)
        remaining -= local.size
        last = int(nxt[local[-1]])
        if last < 0:                                         # a malformed triple: stop
            break
        cur = last
    return np.concatenate(nodes) if nodes else np.zeros(0, dtype=np.int64)


def elias_decode_add(payload: np.ndarray, d: int, block_size: int, levels: int,
                     out: np.ndarray, weight: float) -> tuple[int, int]:
    """Validate the whole payload; if valid, out += weight * decoded. Returns (code, where)."""
    _check_elias(d, block_size, levels)
    if out.size != d:
        raise ValueError("elias_decode_add: out has the wrong length")
    nb = nblocks(d, block_size)
    if payload.size < 4 * nb:
        return ERR_STREAM, 0
    u = np.frombuffer(payload[:4 * nb].tobytes(), dtype="<u4")
    bad = ((u >> 23) & 0xFF == 0xFF) | (u >> 31 == 1)
    if bad.any():
        return ERR_SCALE, int(np.argmax(bad))
    scales = u.view("<f4").astype(np.float64)
    bits = _Bits(payload[4 * nb:])
    st, end, cnt = _omega_at(bits, np.array([0]))
    if st[0]:
        return (ERR_STREAM if st[0] == 1 else ERR_RANGE), 0
    if int(cnt[0]) > d + 1:
        return ERR_RANGE, 0
    nnz = int(cnt[0]) - 1
    nodes = _follow_chain(bits, int(end[0]), nnz)
    t = _triples_at(bits, nodes)
    g = np.where(t["sg"] == 0, t["g"], 0).astype(np.int64)
    idx = np.cumsum(g) - 1
    # the first problem in stream order: per node, in the kernel's order of checks
    checks = [
        (t["sg"] != 0, np.where(t["sg"] == 1, ERR_STREAM, ERR_RANGE), nodes),
        (idx >= d, np.full(nodes.size, ERR_RANGE), nodes),
        (~t["s_ok"], np.full(nodes.size, ERR_STREAM), t["eg"]),
        (t["sl"] != 0, np.where(t["sl"] == 1, ERR_STREAM, ERR_RANGE), t["eg"] + 1),
        (t["lev"] > np.uint64(levels), np.full(nodes.size, ERR_RANGE), t["eg"] + 1),
        ((idx >= 0) & (idx < d) & (scales[np.clip(idx // block_size, 0, max(nb - 1, 0))] == 0.0
                                   if nb else np.zeros(nodes.size, bool)),
         np.full(nodes.size, ERR_ZERO_BLOCK), idx),
    ]
    first_node = nodes.size
    for cond, _, _ in checks:
        if cond.any():
            first_node = min(first_node, int(np.argmax(cond)))
    if first_node < nodes.size:
        for cond, code, where in checks:
            if cond[first_node]:
                return int(code[first_node]), int(where[first_node])
    blk = idx // block_size
    stop = int(t["next"][-1]) if nnz else int(end[0])
    if bits.nbits - stop >= 8:
        return ERR_TRAILING, -(-stop // 8)
    if stop < bits.nbits and int(bits.read(np.array([stop]), bits.nbits - stop)[0]):
        return ERR_PADDING, stop >> 3
    if nnz:
        lev = t["lev"].astype(np.float64)
        v = scales[blk] * lev / float(levels)
        v = np.where(t["sign"] == 1, -v, v)
        with np.errstate(over="ignore"):
            out[idx] += (weight * v).astype(out.dtype, copy=False)
    return ERR_OK, -1
