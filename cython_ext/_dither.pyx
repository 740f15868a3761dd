# cython: language_level=3
"""Random-dithering kernels: fused quantize+pack and unpack+validate+accumulate.

Their meaning (RNG, rounding, wire layout, error codes) is defined by the NumPy
twins in ``psgd/kernels_ref.py``; these must agree with them bit for bit. The
hot loops run without the GIL, walk blocks in an outer loop (no 64-bit division
per coordinate), quantize chunks of a block in flat loops the compiler vectorizes
(built for the x86-64 baseline and for x86-64-v4, chosen at import), pack 5
coordinates per trit byte and decode trits through a 243-entry table.
"""

from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t
from libc.math cimport sqrt, nextafterf, INFINITY
from libc.string cimport memcpy, memset

import numpy as np

from _common cimport (GAMMA, psgd_store_f32le, psgd_load_u32le, psgd_u32_as_f32, psgd_cpu_has_v4,
                     psgd_set_use_v4, real_in, real_out, _nblocks, isa_variants, use_isa, fill_trits)
# the decoders' error codes: the one table, psgd/kernels_ref/errors.py (via _errors.h)
from _common cimport C_ERR_OK, C_ERR_SCALE, C_ERR_TRIT, C_ERR_LEVEL, C_ERR_SIGN, C_ERR_PADDING

cdef extern from "_dither.h":
    Py_ssize_t psgd_pack(const uint32_t *c, Py_ssize_t n, int b, uint8_t *stage) noexcept nogil
    void psgd_unpack(const uint8_t *sym, Py_ssize_t avail, Py_ssize_t n, int b, uint32_t *c) noexcept nogil
    void psgd_trits_f32(const float *x, Py_ssize_t n, double t, uint64_t z, uint8_t *tr) noexcept nogil
    void psgd_trits_f64(const double *x, Py_ssize_t n, double t, uint64_t z, uint8_t *tr) noexcept nogil
    void psgd_codes_f32(const float *x, Py_ssize_t n, double t, uint32_t s, uint64_t z,
                        uint32_t *code) noexcept nogil
    void psgd_codes_f64(const double *x, Py_ssize_t n, double t, uint32_t s, uint64_t z,
                        uint32_t *code) noexcept nogil
    void psgd_values_f32(const uint32_t *c, Py_ssize_t n, double t, double s, double w,
                         float *out) noexcept nogil
    void psgd_values_f64(const uint32_t *c, Py_ssize_t n, double t, double s, double w,
                         double *out) noexcept nogil
    void psgd_absmax_f32(const float *x, Py_ssize_t n, double *r) noexcept nogil
    void psgd_absmax_f64(const double *x, Py_ssize_t n, double *r) noexcept nogil
    float psgd_scale2_f32(const float *x, Py_ssize_t n) noexcept nogil
    float psgd_scale2_f64(const double *x, Py_ssize_t n) noexcept nogil

psgd_set_use_v4(psgd_cpu_has_v4())


def _isa_variants():
    """The quantizer builds this CPU can run, e.g. ['baseline', 'x86-64-v4'] (for tests)."""
    return isa_variants()


def _use_isa(name):
    """Select a quantizer build from :func:`_isa_variants` (tests compare each with the twin)."""
    use_isa(name)


# Must equal the constants of the twin in psgd/kernels_ref/ (tests/test_kernels.py checks).
cdef enum:
    CHUNK = 1280        # coordinates quantized per call: a multiple of 5 (whole trit bytes)
    C_NORM_2 = 0
    C_NORM_INF = 1
NORM_2, NORM_INF = C_NORM_2, C_NORM_INF
ERR_OK, ERR_SCALE, ERR_TRIT, ERR_LEVEL, ERR_SIGN, ERR_PADDING = (
    C_ERR_OK, C_ERR_SCALE, C_ERR_TRIT, C_ERR_LEVEL, C_ERR_SIGN, C_ERR_PADDING)
MAX_LEVELS = 2**31 - 1

# _TRITS[5*byte + m] = trit m of byte (byte < 243): the decode lookup table.
cdef uint8_t _TRITS[243 * 5]
fill_trits(_TRITS)


cdef inline Py_ssize_t _symbol_bits(Py_ssize_t levels) noexcept nogil:
    cdef Py_ssize_t b = 1
    while levels:
        b += 1
        levels >>= 1
    return b


cdef inline Py_ssize_t _symbols_nbytes(Py_ssize_t d, Py_ssize_t levels) noexcept nogil:
    if levels == 1:
        return (d + 4) // 5
    return (d * _symbol_bits(levels) + 7) // 8


cdef _check_common(Py_ssize_t d, Py_ssize_t block_size, Py_ssize_t levels):
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    if not 1 <= levels <= MAX_LEVELS:
        raise ValueError(f"levels must be in [1, {MAX_LEVELS}], got {levels}")
    if d < 0:
        raise ValueError(f"d must be >= 0, got {d}")


# ------------------------------------------------------------------ block scales

cdef inline void _absmax(const real_in* x, Py_ssize_t n, double* result) noexcept nogil:
    if real_in is float:
        psgd_absmax_f32(x, n, result)
    else:
        psgd_absmax_f64(x, n, result)


def block_scales(const real_in[::1] x, Py_ssize_t block_size, int norm_code):
    """Per-block norms of x rounded up to float32 (NaN/inf propagate; the caller checks)."""
    cdef Py_ssize_t d = x.shape[0]
    _check_common(d, block_size, 1)
    if norm_code != NORM_2 and norm_code != NORM_INF:
        raise ValueError(f"norm_code must be NORM_2 ({NORM_2}) or NORM_INF ({NORM_INF}), got {norm_code}")
    cdef Py_ssize_t nb = _nblocks(d, block_size)
    result = np.empty(nb, dtype=np.float32)
    cdef float[::1] out = result
    cdef Py_ssize_t blk, j, start, end
    cdef double acc, a
    cdef float f
    if d == 0:
        return result
    with nogil:
        for blk in range(nb):
            start = blk * block_size
            end = start + block_size if d - start > block_size else d
            if norm_code == C_NORM_2:       # the sequential float64 sum's result (see C)
                if real_in is float:
                    f = psgd_scale2_f32(&x[0] + start, end - start)
                else:
                    f = psgd_scale2_f64(&x[0] + start, end - start)
            else:
                _absmax(&x[0] + start, end - start, &acc)
                f = <float>acc
                if <double>f < acc:          # round up so that |x_j| <= t32
                    f = nextafterf(f, INFINITY)
            out[blk] = f
    return result


# ------------------------------------------------------------------ encode

cdef inline void _trits(const real_in* x, Py_ssize_t n, double t, uint64_t z, uint8_t* tr) noexcept nogil:
    if real_in is float:
        psgd_trits_f32(x, n, t, z, tr)
    else:
        psgd_trits_f64(x, n, t, z, tr)


cdef inline void _codes(const real_in* x, Py_ssize_t n, double t, uint32_t s, uint64_t z,
                        uint32_t* code) noexcept nogil:
    if real_in is float:
        psgd_codes_f32(x, n, t, s, z, code)
    else:
        psgd_codes_f64(x, n, t, s, z, code)


cdef void _encode_trits(const real_in* x, Py_ssize_t d, const float* scales, Py_ssize_t bs,
                        uint64_t seed, uint8_t* out) noexcept nogil:
    # Quantize chunk by chunk into tr (a chunk never crosses a block), pack whenever
    # tr holds CHUNK trits; a trit byte may straddle two blocks.
    cdef uint8_t tr[CHUNK]
    cdef Py_ssize_t nb = _nblocks(d, bs), blk, j = 0, end, n, f = 0, p = 0
    cdef double t
    for blk in range(nb):
        end = j + bs if d - j > bs else d
        t = scales[blk]
        if t == 0.0:
            t = INFINITY                   # |x|/inf = 0: every trit of the block is 0
        while j < end:
            n = CHUNK - f if end - j > CHUNK - f else end - j
            _trits(x + j, n, t, seed + <uint64_t>j * GAMMA, tr + f)
            j += n
            f += n
            if f == CHUNK:
                _pack5(tr, CHUNK // 5, out + p)
                p += CHUNK // 5
                f = 0
    if f:
        while f % 5:                       # padding trits are 0
            tr[f] = 0
            f += 1
        _pack5(tr, f // 5, out + p)


cdef inline void _pack5(const uint8_t* tr, Py_ssize_t nbytes, uint8_t* out) noexcept nogil:
    cdef Py_ssize_t m
    for m in range(nbytes):
        out[m] = tr[5 * m] + 3 * tr[5 * m + 1] + 9 * tr[5 * m + 2] + 27 * tr[5 * m + 3] + 81 * tr[5 * m + 4]


cdef void _encode_bits(const real_in* x, Py_ssize_t d, const float* scales, Py_ssize_t bs,
                       Py_ssize_t levels, uint64_t seed, uint8_t* out) noexcept nogil:
    # Chunks of CHUNK codes (a multiple of 8, so each starts on a byte boundary) are
    # quantized block segment by block segment, then packed into stage and copied out.
    cdef uint32_t codes[CHUNK]
    cdef uint8_t stage[CHUNK * 4 + 8]
    cdef int b = <int>_symbol_bits(levels)
    cdef Py_ssize_t c0, n, j, e, blk = 0, block_end = bs if bs < d else d
    cdef double t
    c0 = -CHUNK
    while c0 + CHUNK < d:                    # chunks of CHUNK codes
        c0 += CHUNK
        n = CHUNK if d - c0 > CHUNK else d - c0
        j = c0
        while j < c0 + n:
            if j == block_end:
                blk += 1
                block_end = block_end + bs if d - block_end > bs else d
            e = block_end if block_end < c0 + n else c0 + n
            t = scales[blk]
            if t == 0.0:
                memset(codes + (j - c0), 0, (e - j) * sizeof(uint32_t))
            else:
                _codes(x + j, e - j, t, <uint32_t>levels, seed + <uint64_t>j * GAMMA, codes + (j - c0))
            j = e
        memcpy(out + c0 // 8 * b, stage, psgd_pack(codes, n, b, stage))


def dither_encode(const real_in[::1] x, const float[::1] scales, Py_ssize_t block_size,
                  Py_ssize_t levels, uint64_t seed, uint8_t[::1] out):
    """Quantize x with the given block scales and write the whole payload into ``out``."""
    cdef Py_ssize_t d = x.shape[0]
    _check_common(d, block_size, levels)
    cdef Py_ssize_t nb = _nblocks(d, block_size), i
    if scales.shape[0] != nb or out.shape[0] != 4 * nb + _symbols_nbytes(d, levels):
        raise ValueError("dither_encode: scales or out has the wrong length")
    for i in range(nb):
        if not (0.0 <= scales[i] <= 3.4028234663852886e38):   # finite, >= 0, not NaN
            raise ValueError("dither_encode: scales must be finite and >= 0")
    if d == 0:
        return
    with nogil:
        for i in range(nb):
            psgd_store_f32le(&out[4 * i], scales[i] + <float>0.0)  # -0.0 -> +0.0
        if levels == 1:
            _encode_trits(&x[0], d, &scales[0], block_size, seed, &out[4 * nb])
        else:
            _encode_bits(&x[0], d, &scales[0], block_size, levels, seed, &out[4 * nb])


# ------------------------------------------------------------------ decode

cdef Py_ssize_t _check_trits(const uint8_t* sym, Py_ssize_t n, Py_ssize_t d, int* code) noexcept nogil:
    cdef Py_ssize_t k
    cdef uint8_t worst = 0
    cdef uint32_t r, lim
    for k in range(n):                       # a max-reduction the compiler vectorizes
        if sym[k] > worst:
            worst = sym[k]
    if worst >= 243:
        for k in range(n):
            if sym[k] >= 243:
                code[0] = C_ERR_TRIT
                return k
    r = d % 5
    if r:                                    # trits past d must be 0: byte < 3**r
        lim = 1
        while r:
            lim *= 3
            r -= 1
        if sym[n - 1] >= lim:
            code[0] = C_ERR_PADDING
            return n - 1
    return -1


cdef void _add_trits(const uint8_t* sym, Py_ssize_t d, const float* scales, Py_ssize_t bs,
                     double w, real_out* out) noexcept nogil:
    cdef Py_ssize_t nb = _nblocks(d, bs), blk, j = 0, end, p = 0
    cdef int m = 0                           # j % 5
    cdef real_out vals[3]
    cdef const uint8_t* q
    cdef double t
    for blk in range(nb):
        end = j + bs if d - j > bs else d
        t = <double>scales[blk]
        # weight * (sign * (t * level / s)) for level 0, +1, -1 (s = 1), as the twin rounds it
        vals[0] = <real_out>(w * (t * 0.0))
        vals[1] = <real_out>(w * t)
        vals[2] = <real_out>(w * (-t))
        while j < end and m != 0:
            out[j] = out[j] + vals[_TRITS[5 * sym[p] + m]]
            j += 1
            m += 1
            if m == 5:
                m = 0
                p += 1
        while j + 5 <= end:
            q = &_TRITS[5 * sym[p]]
            out[j] = out[j] + vals[q[0]]
            out[j + 1] = out[j + 1] + vals[q[1]]
            out[j + 2] = out[j + 2] + vals[q[2]]
            out[j + 3] = out[j + 3] + vals[q[3]]
            out[j + 4] = out[j + 4] + vals[q[4]]
            j += 5
            p += 1
        while j < end:
            out[j] = out[j] + vals[_TRITS[5 * sym[p] + m]]
            j += 1
            m += 1
            if m == 5:
                m = 0
                p += 1


cdef Py_ssize_t _check_bits(const uint8_t* sym, Py_ssize_t nsym, Py_ssize_t d, Py_ssize_t levels,
                            int* code) noexcept nogil:
    cdef uint32_t codes[CHUNK]
    cdef int b = <int>_symbol_bits(levels)
    cdef uint32_t s = <uint32_t>levels, bad, c
    cdef Py_ssize_t c0, n, k, off
    c0 = -CHUNK
    while c0 + CHUNK < d:                    # chunks of CHUNK codes
        c0 += CHUNK
        n = CHUNK if d - c0 > CHUNK else d - c0
        off = c0 // 8 * b
        psgd_unpack(sym + off, nsym - off, n, b, codes)
        bad = 0
        for k in range(n):                   # an OR-reduction the compiler vectorizes
            bad |= ((codes[k] >> 1) > s) | (codes[k] == 1)
        if bad:
            for k in range(n):
                c = codes[k]
                if (c >> 1) > s:
                    code[0] = C_ERR_LEVEL
                    return c0 + k
                if c == 1:                   # level 0 with sign bit 1
                    code[0] = C_ERR_SIGN
                    return c0 + k
    if (d * b) % 8 and (sym[nsym - 1] >> ((d * b) % 8)) != 0:
        code[0] = C_ERR_PADDING
        return nsym - 1
    return -1


cdef inline void _values(const uint32_t* c, Py_ssize_t n, double t, double s, double w,
                         real_out* out) noexcept nogil:
    if real_out is float:
        psgd_values_f32(c, n, t, s, w, out)
    else:
        psgd_values_f64(c, n, t, s, w, out)


cdef void _add_bits(const uint8_t* sym, Py_ssize_t nsym, Py_ssize_t d, const float* scales,
                    Py_ssize_t bs, Py_ssize_t levels, double w, real_out* out) noexcept nogil:
    cdef uint32_t codes[CHUNK]
    cdef int b = <int>_symbol_bits(levels)
    cdef Py_ssize_t c0, n, j, e, off, k, blk = 0, block_end = bs if bs < d else d
    # Few codes (b <= 8) and long blocks: the 2^b values of a block, each computed exactly as
    # _values does (a division per coordinate otherwise), then one table lookup per code.
    cdef bint use_table = b <= 8 and bs >= (<Py_ssize_t>4 << b)
    cdef real_out table[256]
    cdef Py_ssize_t table_blk = -1
    cdef double t, v
    c0 = -CHUNK
    while c0 + CHUNK < d:                    # chunks of CHUNK codes
        c0 += CHUNK
        n = CHUNK if d - c0 > CHUNK else d - c0
        off = c0 // 8 * b
        psgd_unpack(sym + off, nsym - off, n, b, codes)
        j = c0
        while j < c0 + n:
            if j == block_end:
                blk += 1
                block_end = block_end + bs if d - block_end > bs else d
            e = block_end if block_end < c0 + n else c0 + n
            if not use_table:
                _values(codes + (j - c0), e - j, <double>scales[blk], <double>levels, w, out + j)
            else:
                if table_blk != blk:         # codes above 2 levels + 1 were rejected
                    t = <double>scales[blk]
                    for k in range(2 * levels + 2):
                        v = t * <double>(k >> 1) / <double>levels
                        if k & 1:
                            v = -v
                        table[k] = <real_out>(w * v)
                    table_blk = blk
                for k in range(j, e):
                    out[k] = out[k] + table[codes[k - c0]]
            j = e


def dither_decode_add(const uint8_t[::1] payload, Py_ssize_t d, Py_ssize_t block_size,
                      Py_ssize_t levels, real_out[::1] out, double weight):
    """Validate ``payload``; if valid, ``out += weight * decoded``. Returns ``(code, where)``."""
    _check_common(d, block_size, levels)
    cdef Py_ssize_t nb = _nblocks(d, block_size), n = _symbols_nbytes(d, levels), i
    if payload.shape[0] != 4 * nb + n or out.shape[0] != d:
        raise ValueError("dither_decode_add: payload or out has the wrong length")
    if d == 0:
        return ERR_OK, -1
    scales_arr = np.empty(nb, dtype=np.float32)
    cdef float[::1] scales = scales_arr
    cdef uint32_t u
    cdef int code = C_ERR_OK
    cdef Py_ssize_t where = -1
    cdef const uint8_t* sym = &payload[4 * nb]
    with nogil:
        for i in range(nb):
            u = psgd_load_u32le(&payload[4 * i])
            if (u >> 31) or ((u >> 23) & 0xFF) == 0xFF:  # sign bit set, inf or NaN
                code = C_ERR_SCALE
                where = i
                break
            scales[i] = psgd_u32_as_f32(u)
        if code == C_ERR_OK:
            if levels == 1:
                where = _check_trits(sym, n, d, &code)
            else:
                where = _check_bits(sym, n, d, levels, &code)
        if code == C_ERR_OK:                   # only a fully valid payload touches out
            if levels == 1:
                _add_trits(sym, d, &scales[0], block_size, weight, &out[0])
            else:
                _add_bits(sym, n, d, &scales[0], block_size, levels, weight, &out[0])
    return code, where
