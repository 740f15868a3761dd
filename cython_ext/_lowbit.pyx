# cython: language_level=3
"""Low-bit kernels: 16-bit float casts (fp16, bf16) and min-max quantization.

Their meaning (random stream, rounding, byte layout, error codes) is defined by the
NumPy twin ``psgd/kernels_ref/_lowbit.py``; these must agree with it exactly: encode
byte for byte, decode value for value. Hot loops are plain C (``_lowbit.h``).
"""

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t
from libc.math cimport nextafterf, INFINITY

import numpy as np

from _common cimport (GAMMA, psgd_f64_bits, psgd_u32_as_f32, psgd_store_f32le, psgd_load_u32le,
                     psgd_cpu_has_v4, psgd_set_use_v4, psgd_lsb_bw, psgd_lsb_put, psgd_lsb_flush,
                     real_in, real_out, _nblocks, isa_variants, use_isa)
from _common cimport C_ERR_OK, C_ERR_SCALE, C_ERR_PADDING, C_ERR_VALUE

cdef extern from "_lowbit.h":
    int psgd_cast_f32(const float *x, Py_ssize_t n, int m, int emin, uint64_t topbits,
                      int stochastic, uint64_t z, uint16_t *code) noexcept nogil
    int psgd_cast_f64(const double *x, Py_ssize_t n, int m, int emin, uint64_t topbits,
                      int stochastic, uint64_t z, uint16_t *code) noexcept nogil
    void psgd_minmax_f32(const float *x, Py_ssize_t n, double lo, double delta, double L,
                         uint64_t z, uint32_t *code) noexcept nogil
    void psgd_minmax_f64(const double *x, Py_ssize_t n, double lo, double delta, double L,
                         uint64_t z, uint32_t *code) noexcept nogil
    double psgd_cast_value(uint32_t c, int m, int emin) noexcept nogil
    uint32_t psgd_get_bits8(const uint8_t *s, Py_ssize_t nbytes, Py_ssize_t k, int bits) noexcept nogil

# Must equal the constants of the twin in psgd/kernels_ref/_lowbit.py (tests check).
cdef enum:
    CHUNK = 4096
CAST_FP16 = 0
CAST_BF16 = 1
CAST_FORMATS = {CAST_FP16: (10, -14, 65504.0), CAST_BF16: (7, -126, (2.0 - 2.0**-7) * 2.0**127)}
MINMAX_MAX_BITS = 8
ERR_OK, ERR_SCALE, ERR_PADDING, ERR_VALUE = C_ERR_OK, C_ERR_SCALE, C_ERR_PADDING, C_ERR_VALUE

psgd_set_use_v4(psgd_cpu_has_v4())


def _isa_variants():
    """The builds this CPU can run, e.g. ['baseline', 'x86-64-v4'] (for tests)."""
    return isa_variants()


def _use_isa(name):
    """Select a build from :func:`_isa_variants` (tests compare each with the twin)."""
    use_isa(name)


def _format(fmt):
    if fmt not in CAST_FORMATS:
        raise ValueError(f"cast format must be CAST_FP16 or CAST_BF16, got {fmt!r}")
    return CAST_FORMATS[fmt]


def cast_encode(const real_in[::1] x, int fmt, bint stochastic, uint64_t seed, uint8_t[::1] out):
    """Round x to the 16-bit format (nearest or stochastic) and write the d codes into out."""
    m_, emin_, top = _format(fmt)
    cdef int m = m_, emin = emin_, bad = 0
    cdef uint64_t topbits = psgd_f64_bits(top)
    cdef Py_ssize_t d = x.shape[0], j = 0, k, n
    if out.shape[0] != 2 * d:
        raise ValueError("cast_encode: out has the wrong length")
    cdef uint16_t code[CHUNK]
    with nogil:
        while j < d and not bad:
            n = CHUNK if d - j > CHUNK else d - j
            if real_in is float:
                bad = psgd_cast_f32(&x[j], n, m, emin, topbits, stochastic, seed + <uint64_t>j * GAMMA, code)
            else:
                bad = psgd_cast_f64(&x[j], n, m, emin, topbits, stochastic, seed + <uint64_t>j * GAMMA, code)
            for k in range(n):
                out[2 * (j + k)] = <uint8_t>code[k]
                out[2 * (j + k) + 1] = <uint8_t>(code[k] >> 8)
            j += n
    if bad:
        raise ValueError("cast_encode: x holds NaN or Inf, or |x_i| exceeds the format's range")


def cast_decode_add(const uint8_t[::1] payload, Py_ssize_t d, int fmt, real_out[::1] out,
                    double weight):
    """Validate; if valid, out += weight * the decoded values. Returns (code, where)."""
    m_, emin_, _ = _format(fmt)
    cdef int m = m_, emin = emin_
    if payload.shape[0] != 2 * d:
        raise ValueError("cast_decode_add: payload has the wrong length")
    if out.shape[0] != d:
        raise ValueError("cast_decode_add: out has the wrong length")
    cdef uint32_t emask = (1u << (15 - m)) - 1, c
    cdef Py_ssize_t j
    with nogil:
        for j in range(d):          # validate every code before touching out
            c = <uint32_t>payload[2 * j] | (<uint32_t>payload[2 * j + 1] << 8)
            if ((c >> m) & emask) == emask:
                with gil:
                    return C_ERR_VALUE, j
        for j in range(d):
            c = <uint32_t>payload[2 * j] | (<uint32_t>payload[2 * j + 1] << 8)
            if real_out is float:
                out[j] += <float>(weight * psgd_cast_value(c, m, emin))
            else:
                out[j] += weight * psgd_cast_value(c, m, emin)
    return C_ERR_OK, -1


# ------------------------------------------------------------------ min-max

def minmax_nbytes(Py_ssize_t d, Py_ssize_t bucket_size, int bits):
    """8 bytes (lo, hi) per bucket + ceil(d bits / 8) code bytes."""
    if bucket_size < 1:
        raise ValueError(f"bucket_size must be >= 1, got {bucket_size}")
    if d < 0:
        raise ValueError(f"d must be >= 0, got {d}")
    if not 1 <= bits <= MINMAX_MAX_BITS:
        raise ValueError(f"bits must be in [1, {MINMAX_MAX_BITS}], got {bits}")
    return 8 * _nblocks(d, bucket_size) + (d * bits + 7) // 8


cdef inline float _f32_down(double v) noexcept nogil:
    cdef float f = <float>v
    return nextafterf(f, -INFINITY) if <double>f > v else f


cdef inline float _f32_up(double v) noexcept nogil:
    cdef float f = <float>v
    return nextafterf(f, INFINITY) if <double>f < v else f


def minmax_encode(const real_in[::1] x, Py_ssize_t bucket_size, int bits, uint64_t seed,
                  uint8_t[::1] out):
    """Per bucket (lo, hi), then stochastic codes on the 2^bits-level grid (kernels_ref)."""
    cdef Py_ssize_t d = x.shape[0]
    cdef Py_ssize_t nbytes = minmax_nbytes(d, bucket_size, bits), nb = _nblocks(d, bucket_size)
    if out.shape[0] != nbytes:
        raise ValueError("minmax_encode: out has the wrong length")
    cdef Py_ssize_t j, k, m, blk, start, end
    cdef double v, lo_d, hi_d, delta, L = <double>((1 << bits) - 1)
    cdef float lo, hi
    cdef int bad = 0
    cdef uint32_t code[CHUNK]
    cdef psgd_lsb_bw w
    with nogil:
        for j in range(d):
            v = <double>x[j]
            if not (-3.4028234663852886e38 <= v <= 3.4028234663852886e38):
                bad = 1
                break
    if bad:
        raise ValueError("minmax_encode: x holds NaN or Inf, or |x_i| exceeds float32")
    with nogil:
        w.out = &out[8 * nb]
        w.p = 0
        w.acc = 0
        w.nbits = 0
        for blk in range(nb):
            start = blk * bucket_size
            end = start + bucket_size if d - start > bucket_size else d
            lo_d = <double>x[start]
            hi_d = lo_d
            for j in range(start + 1, end):
                v = <double>x[j]
                lo_d = v if v < lo_d else lo_d
                hi_d = v if v > hi_d else hi_d
            lo = _f32_down(lo_d + 0.0)          # + 0.0: a zero bound is +0 (no sign)
            hi = _f32_up(hi_d + 0.0)
            psgd_store_f32le(&out[8 * blk], lo)
            psgd_store_f32le(&out[8 * blk + 4], hi)
            delta = (<double>hi - <double>lo) / L
            j = start
            while j < end:
                m = CHUNK if end - j > CHUNK else end - j
                if real_in is float:
                    psgd_minmax_f32(&x[j], m, lo, delta, L, seed + <uint64_t>j * GAMMA, code)
                else:
                    psgd_minmax_f64(&x[j], m, lo, delta, L, seed + <uint64_t>j * GAMMA, code)
                for k in range(m):
                    psgd_lsb_put(&w, code[k], bits)
                j += m
        psgd_lsb_flush(&w)


def minmax_decode_add(const uint8_t[::1] payload, Py_ssize_t d, Py_ssize_t bucket_size, int bits,
                      real_out[::1] out, double weight):
    """Validate; if valid, out += weight * (lo_b + n Delta_b). Returns (code, where)."""
    cdef Py_ssize_t nbytes = minmax_nbytes(d, bucket_size, bits), nb = _nblocks(d, bucket_size)
    if payload.shape[0] != nbytes or out.shape[0] != d:
        raise ValueError("minmax_decode_add: payload or out has the wrong length")
    if d == 0:
        return C_ERR_OK, -1
    cdef Py_ssize_t j, blk, start, end, nsym = nbytes - 8 * nb
    cdef double lo, hi, delta, v, L = <double>((1 << bits) - 1)
    cdef const uint8_t* sym = &payload[8 * nb]
    cdef uint32_t ulo, uhi
    for blk in range(nb):
        ulo = psgd_load_u32le(&payload[8 * blk])
        uhi = psgd_load_u32le(&payload[8 * blk + 4])
        lo = <double>psgd_u32_as_f32(ulo)
        hi = <double>psgd_u32_as_f32(uhi)
        if ((ulo >> 23) & 0xFF) == 0xFF or ((uhi >> 23) & 0xFF) == 0xFF or not lo <= hi:
            return C_ERR_SCALE, blk
    if (d * bits) % 8 and (sym[nsym - 1] >> ((d * bits) % 8)) != 0:
        return C_ERR_PADDING, nbytes - 1
    with nogil:
        for blk in range(nb):
            start = blk * bucket_size
            end = start + bucket_size if d - start > bucket_size else d
            lo = <double>psgd_u32_as_f32(psgd_load_u32le(&payload[8 * blk]))
            hi = <double>psgd_u32_as_f32(psgd_load_u32le(&payload[8 * blk + 4]))
            delta = (hi - lo) / L
            for j in range(start, end):
                v = lo + <double>psgd_get_bits8(sym, nsym, j, bits) * delta
                if real_out is float:
                    out[j] += <float>(weight * v)
                else:
                    out[j] += weight * v
    return C_ERR_OK, -1
