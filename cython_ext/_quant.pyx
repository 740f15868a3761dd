# cython: language_level=3
"""Dense quantizer kernels: scaled sign, natural compression, natural dithering, rounding.

Their meaning (random stream, rounding, byte layout, error codes) is defined by the
NumPy twins in ``psgd/kernels_ref.py`` ("Dense quantizers"); these must agree with
them exactly: encode byte for byte, decode value for value. Hot loops are plain C
(below) written so that the compiler can vectorize them; no loop holds the GIL.
"""

from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t
from libc.string cimport memset

import numpy as np

from _common cimport (GAMMA, psgd_mix64, psgd_f32_bits, psgd_f64_bits, psgd_u32_as_f32, psgd_store_f32le,
                     psgd_load_u32le, psgd_cpu_has_v4, psgd_set_use_v4, psgd_lsb_bw, psgd_lsb_put,
                     psgd_lsb_flush, real_in, real_out, _nblocks, isa_variants, use_isa,
                     check_block_size)
# the decoders' error codes: the one table, psgd/kernels_ref/errors.py (via _errors.h)
from _common cimport (
    C_ERR_OK, C_ERR_SCALE, C_ERR_LEVEL, C_ERR_SIGN, C_ERR_PADDING, C_ERR_WIDTH, C_ERR_CODE,
    C_ERR_SIZE)

cdef extern from "_quant.h":
    double psgd_rint(double v) noexcept nogil
    void psgd_sign_block_f32(const float *x, Py_ssize_t n, Py_ssize_t bit0, uint8_t *bits,
                             double *lane) noexcept nogil
    void psgd_sign_block_f64(const double *x, Py_ssize_t n, Py_ssize_t bit0, uint8_t *bits,
                             double *lane) noexcept nogil
    void psgd_sign_add_f32(const uint8_t *bits, Py_ssize_t bit0, Py_ssize_t n, float pos,
                           float neg, float *out) noexcept nogil
    void psgd_sign_add_f64(const uint8_t *bits, Py_ssize_t bit0, Py_ssize_t n, double pos,
                           double neg, double *out) noexcept nogil
    int psgd_nat_f32(const float *x, Py_ssize_t n, uint64_t z, uint8_t *code, uint8_t *sgn) noexcept nogil
    int psgd_nat_f64(const double *x, Py_ssize_t n, uint64_t z, uint8_t *code, uint8_t *sgn) noexcept nogil
    void psgd_natd_f32(const float *x, Py_ssize_t n, double t, uint32_t s, double p2, uint64_t z,
                       uint32_t *code) noexcept nogil
    void psgd_natd_f64(const double *x, Py_ssize_t n, double t, uint32_t s, double p2, uint64_t z,
                       uint32_t *code) noexcept nogil
    Py_ssize_t psgd_nat_check(const uint8_t *code, const uint8_t *bits, Py_ssize_t d) noexcept nogil
    void psgd_nat_add_f32(const uint8_t *code, const uint8_t *bits, Py_ssize_t d, const double *pow2,
                          double w, float *out) noexcept nogil
    void psgd_nat_add_f64(const uint8_t *code, const uint8_t *bits, Py_ssize_t d, const double *pow2,
                          double w, double *out) noexcept nogil
    double ldexp(double x, int e) noexcept nogil
    void psgd_unpack(const uint8_t *s, Py_ssize_t nbytes, uint64_t bit0, int b, Py_ssize_t n,
                     uint32_t *c) noexcept nogil
    uint64_t psgd_round_f32(const float *x, Py_ssize_t n, double res, uint32_t *code,
                            int *bad) noexcept nogil
    uint64_t psgd_round_f64(const double *x, Py_ssize_t n, double res, uint32_t *code,
                            int *bad) noexcept nogil
    void psgd_natd_add_f32(const uint32_t *c, Py_ssize_t n, double t, const double *lut, double w,
                           float *out) noexcept nogil
    void psgd_natd_add_f64(const uint32_t *c, Py_ssize_t n, double t, const double *lut, double w,
                           double *out) noexcept nogil
    void psgd_round_add_f32(const uint32_t *c, Py_ssize_t n, double res, double w,
                            float *out) noexcept nogil
    void psgd_round_add_f64(const uint32_t *c, Py_ssize_t n, double res, double w,
                            double *out) noexcept nogil
    double fabs(double x) noexcept nogil

# Must equal the constants of the twin in psgd/kernels_ref/ (tests check).
cdef enum:
    CHUNK = 4096
    NATDITHER_MAX_LEVELS = 255     # the float32 exponent range (see the twin)
ERR_WIDTH, ERR_CODE, ERR_SIZE = C_ERR_WIDTH, C_ERR_CODE, C_ERR_SIZE
ROUNDING_MAX_Q = 2**31 - 1

psgd_set_use_v4(psgd_cpu_has_v4())


def _isa_variants():
    """The quantizer builds this CPU can run, e.g. ['baseline', 'x86-64-v4'] (for tests)."""
    return isa_variants()


def _use_isa(name):
    """Select a quantizer build from :func:`_isa_variants` (tests compare each with the twin)."""
    use_isa(name)


cdef inline int _bitlen(uint64_t v) noexcept nogil:
    cdef int n = 0
    while v:
        n += 1
        v >>= 1
    return n


cdef Py_ssize_t _check_scales(const uint8_t* p, Py_ssize_t nb, float* scales) noexcept nogil:
    # finite float32 >= 0 with a clear sign bit (what encode writes); -1 if all are
    cdef Py_ssize_t i
    cdef uint32_t u
    for i in range(nb):
        u = psgd_load_u32le(p + 4 * i)
        if (u >> 31) or ((u >> 23) & 0xFF) == 0xFF:
            return i
        scales[i] = psgd_u32_as_f32(u)
    return -1


# ------------------------------------------------------------------ scaled sign

def sign_nbytes(Py_ssize_t d, Py_ssize_t block_size):
    """4 bytes per block scale + ceil(d / 8) bytes of sign bits."""
    check_block_size(d, block_size)
    return 4 * _nblocks(d, block_size) + (d + 7) // 8


def sign_encode(const real_in[::1] x, Py_ssize_t block_size, uint8_t[::1] out):
    """Block scales ||x_b||_1 / d_b (float32) and the sign bits of x; ValueError on NaN/Inf."""
    cdef Py_ssize_t d = x.shape[0]
    cdef Py_ssize_t n = sign_nbytes(d, block_size), nb = _nblocks(d, block_size)
    if out.shape[0] != n:
        raise ValueError(f"sign_encode: out has {out.shape[0]} bytes, expected {n}")
    cdef Py_ssize_t blk, start, m, bad = -1
    cdef double lane[8]
    cdef double s
    cdef float f
    if d == 0:
        return
    with nogil:
        memset(&out[4 * nb], 0, (d + 7) // 8)
        for blk in range(nb):
            start = blk * block_size
            m = block_size if d - start > block_size else d - start
            if real_in is float:
                psgd_sign_block_f32(&x[start], m, start, &out[4 * nb], lane)
            else:
                psgd_sign_block_f64(&x[start], m, start, &out[4 * nb], lane)
            s = ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]))
            f = <float>(s / <double>m)
            if not (f <= 3.4028234663852886e38):      # NaN, Inf or overflow
                bad = blk
                break
            psgd_store_f32le(&out[4 * blk], f)
    if bad >= 0:
        raise ValueError(f"sign_encode: block {bad} holds NaN or Inf or its mean |x| overflows float32")


def sign_decode_add(const uint8_t[::1] payload, Py_ssize_t d, Py_ssize_t block_size,
                    real_out[::1] out, double weight):
    """Validate; if valid, out += weight * (+-scale_b per sign bit). Returns (code, where)."""
    cdef Py_ssize_t n = sign_nbytes(d, block_size), nb = _nblocks(d, block_size)
    if payload.shape[0] != n or out.shape[0] != d:
        raise ValueError("sign_decode_add: payload or out has the wrong length")
    if d == 0:
        return C_ERR_OK, -1
    scales_arr = np.empty(nb, dtype=np.float32)
    cdef float[::1] scales = scales_arr
    cdef Py_ssize_t blk, start, m, where
    cdef double t
    cdef const uint8_t* bits = &payload[4 * nb]
    with nogil:
        where = _check_scales(&payload[0], nb, &scales[0])
    if where >= 0:
        return C_ERR_SCALE, where
    if d % 8 and bits[(d + 7) // 8 - 1] >> (d % 8):
        return C_ERR_PADDING, n - 1
    with nogil:
        for blk in range(nb):
            start = blk * block_size
            m = block_size if d - start > block_size else d - start
            t = <double>scales[blk]
            if real_out is float:
                psgd_sign_add_f32(bits, start, m, <float>(weight * t), <float>(weight * -t), &out[start])
            else:
                psgd_sign_add_f64(bits, start, m, weight * t, weight * -t, &out[start])
    return C_ERR_OK, -1


# ------------------------------------------------------------------ natural compression

cdef double _POW2[256]
_POW2[0] = 0.0
for _c in range(1, 256):
    _POW2[_c] = 2.0 ** (_c - 127)


def natural_nbytes(Py_ssize_t d):
    """d exponent-code bytes + ceil(d / 8) bytes of sign bits (9 bits per coordinate)."""
    if d < 0:
        raise ValueError(f"d must be >= 0, got {d}")
    return d + (d + 7) // 8


cdef inline void _pack_bits(const uint8_t* flags, Py_ssize_t n, Py_ssize_t bit0, uint8_t* out) noexcept nogil:
    # OR the 0/1 flags into a zeroed LSB-first bit stream starting at bit0
    cdef Py_ssize_t k = 0, b
    if (bit0 & 7) == 0:
        while k + 8 <= n:
            out[(bit0 + k) >> 3] = (flags[k] | flags[k + 1] << 1 | flags[k + 2] << 2 | flags[k + 3] << 3
                                    | flags[k + 4] << 4 | flags[k + 5] << 5 | flags[k + 6] << 6
                                    | flags[k + 7] << 7)
            k += 8
    while k < n:
        b = bit0 + k
        out[b >> 3] |= flags[k] << (b & 7)
        k += 1


def natural_encode(const real_in[::1] x, uint64_t seed, uint8_t[::1] out):
    """Exponent codes then sign bits (kernels_ref); ValueError on NaN, Inf or |x| >= 2^128."""
    cdef Py_ssize_t d = x.shape[0], n = natural_nbytes(d), j, m
    if out.shape[0] != n:
        raise ValueError(f"natural_encode: out has {out.shape[0]} bytes, expected {n}")
    cdef uint8_t sgn[CHUNK]
    cdef int bad = 0
    if d == 0:
        return
    with nogil:
        memset(&out[d], 0, n - d)
        j = 0
        while j < d:
            m = CHUNK if d - j > CHUNK else d - j
            if real_in is float:
                bad |= psgd_nat_f32(&x[j], m, seed + <uint64_t>j * GAMMA, &out[j], sgn)
            else:
                bad |= psgd_nat_f64(&x[j], m, seed + <uint64_t>j * GAMMA, &out[j], sgn)
            _pack_bits(sgn, m, j, &out[d])
            j += m
    if bad:
        raise ValueError("natural_encode: x holds NaN or Inf, or |x_i| >= 2^128")


def natural_decode_add(const uint8_t[::1] payload, Py_ssize_t d, real_out[::1] out, double weight):
    """Validate; if valid, out += weight * (+-2^(code-127)). Returns (code, where)."""
    cdef Py_ssize_t n = natural_nbytes(d), j, b
    if payload.shape[0] != n or out.shape[0] != d:
        raise ValueError("natural_decode_add: payload or out has the wrong length")
    if d == 0:
        return C_ERR_OK, -1
    cdef const uint8_t* bits = &payload[d]
    cdef Py_ssize_t where
    with nogil:
        where = psgd_nat_check(&payload[0], bits, d)
    if where >= 0:
        return C_ERR_SIGN, where
    if d % 8 and bits[n - d - 1] >> (d % 8):
        return C_ERR_PADDING, n - 1
    with nogil:
        if real_out is float:
            psgd_nat_add_f32(&payload[0], bits, d, _POW2, weight, &out[0])
        else:
            psgd_nat_add_f64(&payload[0], bits, d, _POW2, weight, &out[0])
    return C_ERR_OK, -1


# ------------------------------------------------------------------ natural dithering

cdef inline Py_ssize_t _natd_bits(Py_ssize_t levels) noexcept nogil:
    return 1 + _bitlen(<uint64_t>levels)


def natdither_nbytes(Py_ssize_t d, Py_ssize_t block_size, Py_ssize_t levels):
    """4 bytes per block scale + ceil(d * (1 + ceil(log2(s + 1))) / 8) symbol bytes."""
    check_block_size(d, block_size)
    if not 1 <= levels <= NATDITHER_MAX_LEVELS:
        raise ValueError(f"levels must be in [1, {NATDITHER_MAX_LEVELS}], got {levels}")
    return 4 * _nblocks(d, block_size) + (d * _natd_bits(levels) + 7) // 8


def natdither_encode(const real_in[::1] x, const float[::1] scales, Py_ssize_t block_size,
                     Py_ssize_t levels, uint64_t seed, uint8_t[::1] out):
    """Quantize x to sign * t_b * {0, 2^(1-s), ..., 1} and write the payload (kernels_ref)."""
    cdef Py_ssize_t d = x.shape[0]
    cdef Py_ssize_t n = natdither_nbytes(d, block_size, levels), nb = _nblocks(d, block_size)
    if scales.shape[0] != nb or out.shape[0] != n:
        raise ValueError("natdither_encode: scales or out has the wrong length")
    cdef Py_ssize_t i, blk, j = 0, end
    for i in range(nb):
        if not (0.0 <= scales[i] <= 3.4028234663852886e38):
            raise ValueError("natdither_encode: scales must be finite and >= 0")
    if d == 0:
        return
    cdef int b = <int>_natd_bits(levels)
    cdef uint32_t s = <uint32_t>levels
    cdef uint32_t code[CHUNK]
    cdef psgd_lsb_bw w
    cdef double t, p2 = 2.0 ** (levels - 1)
    cdef Py_ssize_t k, m
    with nogil:
        for i in range(nb):
            psgd_store_f32le(&out[4 * i], scales[i] + <float>0.0)
        w.out = &out[4 * nb]
        w.p = 0
        w.acc = 0
        w.nbits = 0
        for blk in range(nb):
            end = j + block_size if d - j > block_size else d
            t = <double>scales[blk]
            while j < end:
                m = CHUNK if end - j > CHUNK else end - j
                if t == 0.0:
                    memset(code, 0, m * sizeof(uint32_t))
                elif real_in is float:
                    psgd_natd_f32(&x[j], m, t, s, p2, seed + <uint64_t>j * GAMMA, code)
                else:
                    psgd_natd_f64(&x[j], m, t, s, p2, seed + <uint64_t>j * GAMMA, code)
                for k in range(m):
                    psgd_lsb_put(&w, code[k], b)
                j += m
        psgd_lsb_flush(&w)


def natdither_decode_add(const uint8_t[::1] payload, Py_ssize_t d, Py_ssize_t block_size,
                         Py_ssize_t levels, real_out[::1] out, double weight):
    """Validate; if valid, out += weight * sign * ldexp(t_b, level - s). Returns (code, where)."""
    cdef Py_ssize_t n = natdither_nbytes(d, block_size, levels), nb = _nblocks(d, block_size)
    if payload.shape[0] != n or out.shape[0] != d:
        raise ValueError("natdither_decode_add: payload or out has the wrong length")
    if d == 0:
        return C_ERR_OK, -1
    scales_arr = np.empty(nb, dtype=np.float32)
    cdef float[::1] scales = scales_arr
    cdef Py_ssize_t where, j, k, m, blk, end, nsym = n - 4 * nb
    cdef int b = <int>_natd_bits(levels), code = C_ERR_OK
    cdef uint32_t s = <uint32_t>levels, c
    cdef uint32_t cbuf[CHUNK]
    cdef const uint8_t* sym = &payload[4 * nb]
    cdef double t, v
    cdef double lut[NATDITHER_MAX_LEVELS + 1]
    lut[0] = 0.0
    for j in range(1, levels + 1):
        lut[j] = 2.0 ** (j - levels)          # t * lut[l] == ldexp(t, l - s) exactly
    with nogil:
        where = _check_scales(&payload[0], nb, &scales[0])
        if where >= 0:
            code = C_ERR_SCALE
        else:
            j = 0
            while j < d and code == C_ERR_OK:   # validate every symbol before touching out
                m = CHUNK if d - j > CHUNK else d - j
                psgd_unpack(sym, nsym, <uint64_t>j * b, b, m, cbuf)
                for k in range(m):
                    c = cbuf[k]
                    if (c >> 1) > s or c == 1:
                        code = C_ERR_LEVEL if (c >> 1) > s else C_ERR_SIGN
                        where = j + k
                        break
                j += m
            if code == C_ERR_OK and (d * b) % 8 and (sym[nsym - 1] >> ((d * b) % 8)) != 0:
                code = C_ERR_PADDING
                where = n - 1
        if code == C_ERR_OK:
            j = 0
            for blk in range(nb):
                end = j + block_size if d - j > block_size else d
                t = <double>scales[blk]
                while j < end:
                    m = CHUNK if end - j > CHUNK else end - j
                    psgd_unpack(sym, nsym, <uint64_t>j * b, b, m, cbuf)
                    if real_out is float:
                        psgd_natd_add_f32(cbuf, m, t, lut, weight, &out[j])
                    else:
                        psgd_natd_add_f64(cbuf, m, t, lut, weight, &out[j])
                    j += m
    return code, where


# ------------------------------------------------------------------ rounding

cdef inline uint64_t _round_codes(const real_in* x, Py_ssize_t n, double res, uint32_t* code,
                                  int* bad) noexcept nogil:
    if real_in is float:
        return psgd_round_f32(x, n, res, code, bad)
    else:
        return psgd_round_f64(x, n, res, code, bad)


def rounding_widths(const real_in[::1] x, Py_ssize_t block_size, double resolution):
    """Per block, the bit length of the largest zig-zag code of q = rint(x / resolution)."""
    cdef Py_ssize_t d = x.shape[0]
    check_block_size(d, block_size)
    if not resolution > 0.0:
        raise ValueError(f"resolution must be > 0, got {resolution}")
    cdef Py_ssize_t nb = _nblocks(d, block_size), blk, j = 0, end, m, k, bad_at = -1
    result = np.zeros(nb, dtype=np.uint8)
    cdef uint8_t[::1] w = result
    cdef uint32_t cbuf[CHUNK]
    cdef uint64_t orv
    cdef int bad = 0
    with nogil:
        for blk in range(nb):
            end = j + block_size if d - j > block_size else d
            orv = 0
            while j < end:
                m = CHUNK if end - j > CHUNK else end - j
                orv |= _round_codes(&x[j], m, resolution, cbuf, &bad)
                if bad:
                    for k in range(m):            # locate it for the message
                        if not (fabs(psgd_rint(<double>x[j + k] / resolution)) <= 2147483647.0):
                            bad_at = j + k
                            break
                    break
                j += m
            if bad:
                break
            w[blk] = <uint8_t>_bitlen(orv)
    if bad:
        raise ValueError(f"rounding_widths: |x[{bad_at}]| / resolution is NaN, Inf or above 2^31 - 1")
    return result


def rounding_encode(const real_in[::1] x, const uint8_t[::1] widths, Py_ssize_t block_size,
                    double resolution, uint8_t[::1] out):
    """Widths bytes, then each block's zig-zag codes in its width, LSB-first (kernels_ref)."""
    cdef Py_ssize_t d = x.shape[0]
    check_block_size(d, block_size)
    cdef Py_ssize_t nb = _nblocks(d, block_size), blk, j = 0, end, total = 0, m, k
    if widths.shape[0] != nb:
        raise ValueError("rounding_encode: widths has the wrong length")
    for blk in range(nb):
        if widths[blk] > 32:
            raise ValueError("rounding_encode: widths must be <= 32")
        m = block_size if d - blk * block_size > block_size else d - blk * block_size
        total += m * widths[blk]
    if out.shape[0] != nb + (total + 7) // 8:
        raise ValueError(f"rounding_encode: out has {out.shape[0]} bytes, expected {nb + (total + 7) // 8}")
    cdef int wb, bad = 0
    cdef uint64_t mask
    cdef psgd_lsb_bw w
    cdef uint32_t cbuf[CHUNK]
    with nogil:
        for blk in range(nb):
            out[blk] = widths[blk]
        w.out = &out[0]
        w.p = nb
        w.acc = 0
        w.nbits = 0
        for blk in range(nb):
            end = j + block_size if d - j > block_size else d
            wb = widths[blk]
            mask = (<uint64_t>1 << wb) - 1
            while j < end:
                m = CHUNK if end - j > CHUNK else end - j
                _round_codes(&x[j], m, resolution, cbuf, &bad)
                if wb:
                    for k in range(m):
                        psgd_lsb_put(&w, <uint64_t>cbuf[k] & mask, wb)
                j += m
        psgd_lsb_flush(&w)


def rounding_decode_add(const uint8_t[::1] payload, Py_ssize_t d, Py_ssize_t block_size,
                        double resolution, real_out[::1] out, double weight):
    """Validate; if valid, out += weight * (resolution * q). Returns (code, where)."""
    check_block_size(d, block_size)
    if out.shape[0] != d:
        raise ValueError("rounding_decode_add: out has the wrong length")
    cdef Py_ssize_t nb = _nblocks(d, block_size), n = payload.shape[0], blk, j, end, total = 0, m, k
    if n < nb:
        return C_ERR_SIZE, nb
    for blk in range(nb):
        if payload[blk] > 32:
            return C_ERR_WIDTH, blk
        m = block_size if d - blk * block_size > block_size else d - blk * block_size
        total += m * payload[blk]
    if n != nb + (total + 7) // 8:
        return C_ERR_SIZE, nb + (total + 7) // 8
    if d == 0:
        return C_ERR_OK, -1
    cdef int wb, code = C_ERR_OK, phase
    cdef uint64_t bit, orv
    cdef uint32_t c
    cdef uint32_t cbuf[CHUNK]
    cdef int64_t q
    cdef Py_ssize_t where = -1, nsym = n - nb
    cdef const uint8_t* sym = &payload[nb]
    with nogil:
        for phase in range(2):                # 0: validate everything, 1: accumulate
            j = 0
            bit = 0
            for blk in range(nb):
                end = j + block_size if d - j > block_size else d
                wb = payload[blk]
                orv = 0
                while j < end:
                    m = CHUNK if end - j > CHUNK else end - j
                    if wb:
                        psgd_unpack(sym, nsym, bit, wb, m, cbuf)
                    else:
                        memset(cbuf, 0, m * sizeof(uint32_t))
                    bit += <uint64_t>m * wb
                    if phase == 0:
                        for k in range(m):
                            c = cbuf[k]
                            if c == 0xFFFFFFFFU:          # q = -2^31: encode never makes it
                                code = C_ERR_CODE
                                where = j + k
                                break
                            orv |= c
                        if code != C_ERR_OK:
                            break
                    elif real_out is float:
                        psgd_round_add_f32(cbuf, m, resolution, weight, &out[j])
                    else:
                        psgd_round_add_f64(cbuf, m, resolution, weight, &out[j])
                    j += m
                if code != C_ERR_OK:
                    break
                if phase == 0 and _bitlen(orv) != wb:
                    code = C_ERR_WIDTH
                    where = blk
                    break
            if code != C_ERR_OK:
                break
            if phase == 0 and (total % 8) and (payload[n - 1] >> (total % 8)) != 0:
                code = C_ERR_PADDING
                where = n - 1
                break
    return code, where
