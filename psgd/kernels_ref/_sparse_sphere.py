"""NumPy twin of ``cython_ext/_sparse_sphere.pyx``: sparse dithering and spherical codes."""

from __future__ import annotations

import numpy as np

from ._dither import _POW3, _TRITS, _blocked, _check_common, nblocks
from .errors import ERR_LENGTH, ERR_LEVEL, ERR_OK, ERR_PADDING, ERR_SCALE, ERR_TRIT, ERR_ZERO_BLOCK
from .splitmix import splitmix64_at, splitmix_uniform, uniform_at

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
    return splitmix64_at(seed, np.asarray(blocks, dtype=np.uint64))


def sphere_points(block_seeds: np.ndarray, t: np.ndarray, d_b: int) -> np.ndarray:
    """Candidates t[i] (1-based) of blocks with seeds block_seeds[i]: shape t.shape + (d_b,).

    ``block_seeds`` broadcasts against ``t``.
    """
    t = np.asarray(t, dtype=np.uint64)
    s = np.broadcast_to(np.asarray(block_seeds, dtype=np.uint64), t.shape)[..., None]
    m = (t[..., None] - np.uint64(1)) * np.uint64(d_b) + np.arange(d_b, dtype=np.uint64)
    two_m = m * np.uint64(2)
    u1 = uniform_at(s, two_m)
    u2 = uniform_at(s, two_m + np.uint64(1))
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
