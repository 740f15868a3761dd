# cython: language_level=3
"""Sparse dithering (encode / validate+accumulate) and the spherical-compression search.

Their meaning (rounding, random numbers, wire layout, error codes and their order) is
defined by the NumPy twins in ``psgd/kernels_ref.py`` (section "Sparse dithering and
spherical compression"); these must agree with them byte for byte on encode and value
for value on decode. The hot loops run without the GIL.
"""

from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t
from libc.math cimport fabs, sqrt, floor, log, cos, nextafterf
from libc.string cimport memcpy

import numpy as np

from _common cimport (GAMMA, psgd_mix64, psgd_u01, psgd_store_f32le, psgd_load_u32le, psgd_u32_as_f32,
                     real_in, real_out, _nblocks, check_block_size, fill_trits,
                     psgd_lsb_bw, psgd_lsb_put, psgd_lsb_flush)
# the decoders' error codes: the one table, psgd/kernels_ref/errors.py (via _errors.h)
from _common cimport (
    C_ERR_OK, C_ERR_SCALE, C_ERR_TRIT, C_ERR_LEVEL, C_ERR_PADDING, C_ERR_ZERO_BLOCK,
    C_ERR_LENGTH)

cdef extern from "<float.h>":
    const double FLT_MAX_D "((double)FLT_MAX)"
    const float FLT_MIN_F "FLT_MIN"

# Must equal the constants of the twin in psgd/kernels_ref/ (tests check).
cdef enum:
    C_SD_DETERMINISTIC = 0
    C_SD_RANDOMIZED = 1
ERR_OK, ERR_SCALE, ERR_TRIT, ERR_LEVEL, ERR_PADDING, ERR_ZERO_BLOCK, ERR_LENGTH = (
    C_ERR_OK, C_ERR_SCALE, C_ERR_TRIT, C_ERR_LEVEL, C_ERR_PADDING, C_ERR_ZERO_BLOCK, C_ERR_LENGTH)
SD_DETERMINISTIC, SD_RANDOMIZED = C_SD_DETERMINISTIC, C_SD_RANDOMIZED
SD_MAX_LEVEL = 2**31 - 1
cdef double TWO_PI_C = 6.283185307179586
TWO_PI = TWO_PI_C

cdef uint8_t _TRITS[243 * 5]
fill_trits(_TRITS)


# ------------------------------------------------------------------ sparse dithering

def sd_encode(const real_in[::1] x, Py_ssize_t block_size, double c_full, double c_last,
              int variant, uint64_t seed):
    """The sparse dithering payload of x (a new uint8 array); see kernels_ref.py."""
    cdef Py_ssize_t d = x.shape[0]
    check_block_size(d, block_size)
    cdef Py_ssize_t nb = _nblocks(d, block_size), nt = (d + 4) // 5
    gam_arr = np.empty(nb, dtype=np.float32)
    lev_arr = np.empty(d, dtype=np.int64)
    cdef float[::1] gam = gam_arr
    cdef int64_t[::1] lev = lev_arr
    cdef Py_ssize_t blk, j, start, end
    cdef double acc, a, g, c, G, y, low
    cdef float f
    cdef int bad = 0
    cdef int64_t K = 0, k
    with nogil:
        for blk in range(nb):
            start = blk * block_size
            end = start + block_size if d - start > block_size else d
            c = c_last if (end - start < block_size) else c_full
            acc = 0.0
            for j in range(start, end):
                a = <double>x[j]
                acc += a * a
            g = c * sqrt(acc)
            if not (g < FLT_MAX_D):
                bad = 1
                break
            f = <float>g
            if <double>f > g:
                f = nextafterf(f, 0.0)
            if f > 0:
                f = nextafterf(f, 0.0)
            if f < FLT_MIN_F:
                f = 0.0
            gam[blk] = f
            G = <double>f
            for j in range(start, end):
                if G == 0:
                    k = 0
                else:
                    y = fabs(<double>x[j]) / G
                    if variant == C_SD_DETERMINISTIC:
                        y = floor(y + 0.5)
                    else:
                        low = floor(y)
                        y = low + (psgd_u01(seed + <uint64_t>(j + 1) * GAMMA) < y - low)
                    if y > 2147483647.0:
                        bad = 2
                        break
                    k = <int64_t>y
                lev[j] = k
                K += k
            if bad:
                break
    if bad == 1:
        raise ValueError("sparse dithering: x holds NaN/Inf or a block norm too large for float32")
    if bad == 2:
        raise ValueError("sparse dithering: a level exceeds 2^31 - 1 (nu or omega too small)")
    result = np.zeros(4 * nb + nt + (K + 7) // 8, dtype=np.uint8)
    cdef uint8_t[::1] out = result
    cdef uint8_t *sym
    cdef uint8_t *ustream
    cdef uint8_t tr[5]
    cdef Py_ssize_t i, m
    cdef psgd_lsb_bw w
    with nogil:
        for blk in range(nb):
            psgd_store_f32le(&out[4 * blk], gam[blk])
        sym = &out[4 * nb] if nt else NULL
        ustream = &out[4 * nb + nt] if K else NULL
        for i in range(nt):  # 5 coordinates per trit byte
            for m in range(5):
                j = 5 * i + m
                tr[m] = 0
                if j < d and lev[j]:
                    tr[m] = 1 if x[j] > 0 else 2
            sym[i] = tr[0] + 3 * tr[1] + 9 * tr[2] + 27 * tr[3] + 81 * tr[4]
        # unary levels, LSB-first: k - 1 one bits and the zero terminator, 32 at a time
        # through the shared bit writer instead of one read-modify-write per bit
        w.out = ustream
        w.p = 0
        w.acc = 0
        w.nbits = 0
        for j in range(d):
            k = lev[j]
            if k == 0:
                continue
            while k > 32:
                psgd_lsb_put(&w, 0xFFFFFFFF, 32)
                k -= 32
            psgd_lsb_put(&w, (<uint64_t>1 << (k - 1)) - 1, <int>k)
        psgd_lsb_flush(&w)
    return result


def sd_decode_add(const uint8_t[::1] payload, Py_ssize_t d, Py_ssize_t block_size,
                  int64_t kmax_full, int64_t kmax_last, real_out[::1] out, double weight):
    """Validate a sparse dithering payload; if valid, out += weight * decoded. (code, where)."""
    check_block_size(d, block_size)
    if out.shape[0] != d:
        raise ValueError("sd_decode_add: out has the wrong length")
    cdef Py_ssize_t nb = _nblocks(d, block_size), nt = (d + 4) // 5
    cdef Py_ssize_t n = payload.shape[0]
    if n < 4 * nb + nt:
        return ERR_LENGTH, -1
    cdef const uint8_t *p = &payload[0] if n else NULL
    cdef const uint8_t *sym = p + 4 * nb
    cdef const uint8_t *ustream = sym + nt
    cdef int64_t nbits = 8 * (n - 4 * nb - nt)
    cdef Py_ssize_t blk, j, i, start, end
    cdef uint32_t u, expo
    cdef int code = C_ERR_OK
    cdef Py_ssize_t where = -1
    cdef int64_t pos = 0, ones, kmax, k
    cdef uint8_t t
    cdef double G, v
    trits_arr = np.empty(5 * nt, dtype=np.uint8)
    cdef uint8_t[::1] trits = trits_arr
    with nogil:
        for blk in range(nb):
            u = psgd_load_u32le(p + 4 * blk)
            expo = (u >> 23) & 0xFF
            if expo == 0xFF or (u >> 31) or (expo == 0 and u != 0):
                code, where = C_ERR_SCALE, blk
                break
        if code == C_ERR_OK:
            for i in range(nt):
                if sym[i] >= 243:
                    code, where = C_ERR_TRIT, i
                    break
        if code == C_ERR_OK:
            for i in range(nt):
                memcpy(&trits[5 * i], &_TRITS[5 * sym[i]], 5)
            for j in range(d, 5 * nt):
                if trits[j]:
                    code, where = C_ERR_PADDING, -1
                    break
        if code == C_ERR_OK:
            for blk in range(nb):
                if psgd_load_u32le(p + 4 * blk) != 0:
                    continue
                start = blk * block_size
                end = start + block_size if d - start > block_size else d
                for j in range(start, end):
                    if trits[j]:
                        code, where = C_ERR_ZERO_BLOCK, j
                        break
                if code != C_ERR_OK:
                    break
        if code == C_ERR_OK:
            # validate the unary stream (first pass, out untouched)
            for j in range(d):
                if trits[j] == 0:
                    continue
                kmax = kmax_last if (j // block_size == nb - 1 and d % block_size) else kmax_full
                ones = 0
                while True:
                    if pos >= nbits:
                        code, where = C_ERR_LENGTH, -1
                        if ones >= kmax:
                            code, where = C_ERR_LEVEL, j
                        break
                    if (ustream[pos >> 3] >> (pos & 7)) & 1:
                        ones += 1
                        pos += 1
                        if ones >= kmax:
                            code, where = C_ERR_LEVEL, j
                            break
                    else:
                        pos += 1
                        break
                if code != C_ERR_OK:
                    break
        if code == C_ERR_OK:
            if nbits != (pos + 7) // 8 * 8:
                code, where = C_ERR_LENGTH, -1
            else:
                while pos < nbits:
                    if (ustream[pos >> 3] >> (pos & 7)) & 1:
                        code, where = C_ERR_PADDING, -1
                        break
                    pos += 1
        if code == C_ERR_OK:
            pos = 0
            for blk in range(nb):
                start = blk * block_size
                end = start + block_size if d - start > block_size else d
                G = <double>psgd_u32_as_f32(psgd_load_u32le(p + 4 * blk))
                for j in range(start, end):
                    t = trits[j]
                    if t == 0:
                        continue
                    k = 1
                    while (ustream[pos >> 3] >> (pos & 7)) & 1:
                        k += 1
                        pos += 1
                    pos += 1
                    v = G * <double>k
                    if t == 2:
                        v = -v
                    if real_out is float:
                        out[j] += <float>(weight * v)
                    else:
                        out[j] += weight * v
    return code, where


# ------------------------------------------------------------------ spherical search

def sphere_search(const real_in[::1] x, Py_ssize_t block_size, double thr, uint64_t seed,
                  int64_t cap_full, int64_t cap_last):
    """(T uint64, sigma float32) per block; T = 0 where no candidate within the cap."""
    cdef Py_ssize_t d = x.shape[0]
    check_block_size(d, block_size)
    cdef Py_ssize_t nb = _nblocks(d, block_size)
    T_arr = np.zeros(nb, dtype=np.uint64)
    s_arr = np.zeros(nb, dtype=np.float32)
    cdef uint64_t[::1] T = T_arr
    cdef float[::1] sigma = s_arr
    cdef Py_ssize_t blk, j, start, end, db
    cdef int64_t t, cap
    cdef uint64_t sb, m
    cdef double s, a, dot, zz, z, u1, u2
    with nogil:
        for blk in range(nb):
            start = blk * block_size
            end = start + block_size if d - start > block_size else d
            db = end - start
            cap = cap_last if db < block_size else cap_full
            s = 0.0
            for j in range(start, end):
                a = <double>x[j]
                s += a * a
            if s == 0:
                T[blk] = 1
                continue
            sb = psgd_mix64(seed + <uint64_t>(blk + 1) * GAMMA)
            for t in range(1, cap + 1):
                dot = 0.0
                zz = 0.0
                m = <uint64_t>(t - 1) * <uint64_t>db
                for j in range(db):
                    u1 = psgd_u01(sb + (2 * (m + j) + 1) * GAMMA)
                    u2 = psgd_u01(sb + (2 * (m + j) + 2) * GAMMA)
                    z = sqrt(-2.0 * log(1.0 - u1)) * cos(TWO_PI_C * u2)
                    dot += z * <double>x[start + j]
                    zz += z * z
                if dot > 0 and dot * dot >= thr * zz * s:
                    T[blk] = <uint64_t>t
                    sigma[blk] = <float>(dot / sqrt(zz))
                    break
    return T_arr, s_arr
