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
from cython.parallel cimport prange

import numpy as np

from _common cimport (GAMMA, psgd_store_f32le, psgd_load_u32le, psgd_u32_as_f32, psgd_cpu_has_v4,
                     psgd_set_use_v4, real_in, real_out, _nblocks, isa_variants, use_isa, fill_trits,
                     psgd_threads_for, psgd_split, psgd_team_size, MAX_THREADS, openmp_info,
                     set_threads)
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
    float psgd_scale2_f32(const float *x, Py_ssize_t n, int nt) noexcept nogil
    float psgd_scale2_f64(const double *x, Py_ssize_t n, int nt) noexcept nogil

psgd_set_use_v4(psgd_cpu_has_v4())


def _isa_variants():
    """The quantizer builds this CPU can run, e.g. ['baseline', 'x86-64-v4'] (for tests)."""
    return isa_variants()


def _use_isa(name):
    """Select a quantizer build from :func:`_isa_variants` (tests compare each with the twin)."""
    use_isa(name)


def _openmp_info():
    """{"openmp": built with OpenMP, "omp_max_threads": ..., "max_threads": ...}."""
    return openmp_info()


def _set_threads(int n, Py_ssize_t min_size):
    """Run the kernels below on n threads for d >= min_size (psgd.kernels.set_threads)."""
    set_threads(n, min_size)


def _team_size(int n):
    """The threads an OpenMP region asking for n gets: 1 in a build without OpenMP."""
    return psgd_team_size(n)


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
    cdef int nt, t
    cdef Py_ssize_t lo, hi
    if d == 0:
        return result
    with nogil:
        nt = psgd_threads_for(d, nb)
        if nt > 1:                          # whole blocks per thread, each as on one thread
            for t in prange(nt, num_threads=nt, schedule="static", chunksize=1):
                _block_scales_range(&x[0], d, block_size, norm_code, t, nt, &out[0])
        elif nb == 1 and norm_code == C_NORM_2:
            # one block (the default): its sum on the threads (psgd_scale2, same bytes)
            out[0] = _scale2(&x[0], d, psgd_threads_for(d, d // 4096))
        else:
            _block_scales_range(&x[0], d, block_size, norm_code, 0, 1, &out[0])
    return result


cdef inline float _scale2(const real_in* x, Py_ssize_t n, int nt) noexcept nogil:
    if real_in is float:
        return psgd_scale2_f32(x, n, nt)
    else:
        return psgd_scale2_f64(x, n, nt)


cdef void _block_scales_range(const real_in* x, Py_ssize_t d, Py_ssize_t block_size, int norm_code,
                              int t, int nt, float* out) noexcept nogil:
    """The scales of part t of nt of the blocks."""
    cdef Py_ssize_t blk, b0, b1, start, end
    cdef double acc
    cdef float f
    psgd_split(_nblocks(d, block_size), nt, t, &b0, &b1)
    for blk in range(b0, b1):
        start = blk * block_size
        end = start + block_size if d - start > block_size else d
        if norm_code == C_NORM_2:           # the sequential float64 sum's result (see C)
            f = _scale2(x + start, end - start, 1)
        else:
            _absmax(x + start, end - start, &acc)
            f = <float>acc
            if <double>f < acc:              # round up so that |x_j| <= t32
                f = nextafterf(f, INFINITY)
        out[blk] = f


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
                        uint64_t seed, uint8_t* out, Py_ssize_t k0, Py_ssize_t k1) noexcept nogil:
    # Chunks k0..k1-1 of CHUNK trits (a multiple of 5: chunk k is bytes k*CHUNK/5 on, so
    # chunks are independent and threads can take ranges of them). A chunk is quantized
    # block segment by block segment into tr, then packed; a trit byte may straddle two
    # blocks. Padding trits past d are 0.
    cdef uint8_t tr[CHUNK]
    cdef Py_ssize_t k, c0, n, j, e, blk, block_end
    cdef double t
    for k in range(k0, k1):
        c0 = k * CHUNK
        n = CHUNK if d - c0 > CHUNK else d - c0
        blk = c0 // bs
        block_end = (blk + 1) * bs if d - blk * bs > bs else d
        j = c0
        while j < c0 + n:
            if j == block_end:
                blk += 1
                block_end = block_end + bs if d - block_end > bs else d
            e = block_end if block_end < c0 + n else c0 + n
            t = scales[blk]
            if t == 0.0:
                t = INFINITY               # |x|/inf = 0: every trit of the block is 0
            _trits(x + j, e - j, t, seed + <uint64_t>j * GAMMA, tr + (j - c0))
            j = e
        while n % 5:
            tr[n] = 0
            n += 1
        _pack5(tr, n // 5, out + c0 // 5)


cdef inline void _pack5(const uint8_t* tr, Py_ssize_t nbytes, uint8_t* out) noexcept nogil:
    cdef Py_ssize_t m
    for m in range(nbytes):
        out[m] = tr[5 * m] + 3 * tr[5 * m + 1] + 9 * tr[5 * m + 2] + 27 * tr[5 * m + 3] + 81 * tr[5 * m + 4]


cdef void _encode_bits(const real_in* x, Py_ssize_t d, const float* scales, Py_ssize_t bs,
                       Py_ssize_t levels, uint64_t seed, uint8_t* out,
                       Py_ssize_t k0, Py_ssize_t k1) noexcept nogil:
    # Chunks k0..k1-1 of CHUNK codes (a multiple of 8: chunk k is whole bytes from
    # k*CHUNK/8*b on, so chunks are independent) are quantized block segment by block
    # segment, then packed into stage and copied out (pack's slack bytes stay in stage).
    cdef uint32_t codes[CHUNK]
    cdef uint8_t stage[CHUNK * 4 + 8]
    cdef int b = <int>_symbol_bits(levels)
    cdef Py_ssize_t k, c0, n, j, e, blk, block_end
    cdef double t
    for k in range(k0, k1):
        c0 = k * CHUNK
        n = CHUNK if d - c0 > CHUNK else d - c0
        blk = c0 // bs
        block_end = (blk + 1) * bs if d - blk * bs > bs else d
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


cdef void _encode_part(const real_in* x, Py_ssize_t d, const float* scales, Py_ssize_t bs,
                       Py_ssize_t levels, uint64_t seed, uint8_t* out, int t, int nt) noexcept nogil:
    """Part t of nt of the chunks. The random numbers are counter-based (coordinate j's is
    mix(seed + (j+1) GAMMA)), so a part needs no draws of the parts before it."""
    cdef Py_ssize_t k0, k1
    psgd_split(_nblocks(d, CHUNK), nt, t, &k0, &k1)
    if levels == 1:
        _encode_trits(x, d, scales, bs, seed, out, k0, k1)
    else:
        _encode_bits(x, d, scales, bs, levels, seed, out, k0, k1)


def dither_encode(const real_in[::1] x, const float[::1] scales, Py_ssize_t block_size,
                  Py_ssize_t levels, uint64_t seed, uint8_t[::1] out):
    """Quantize x with the given block scales and write the whole payload into ``out``."""
    cdef Py_ssize_t d = x.shape[0]
    _check_common(d, block_size, levels)
    cdef Py_ssize_t nb = _nblocks(d, block_size), i
    cdef int nt, t
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
        nt = psgd_threads_for(d, _nblocks(d, CHUNK))
        if nt == 1:
            _encode_part(&x[0], d, &scales[0], block_size, levels, seed, &out[4 * nb], 0, 1)
        else:
            for t in prange(nt, num_threads=nt, schedule="static", chunksize=1):
                _encode_part(&x[0], d, &scales[0], block_size, levels, seed, &out[4 * nb], t, nt)


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
                     double w, real_out* out, Py_ssize_t j0, Py_ssize_t j1) noexcept nogil:
    # coordinates j0..j1-1, j0 a multiple of 5 (a whole trit byte: threads take ranges)
    cdef Py_ssize_t blk = j0 // bs, j = j0, end, p = j0 // 5
    cdef int m = 0                           # j % 5
    cdef real_out vals[3]
    cdef const uint8_t* q
    cdef double t
    while j < j1:
        end = (blk + 1) * bs if j1 - blk * bs > bs else j1
        t = <double>scales[blk]
        blk += 1
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
                            int* code, Py_ssize_t k0, Py_ssize_t k1) noexcept nogil:
    # the codes of chunks k0..k1-1: the first bad one (its index, *code set) or -1
    cdef uint32_t codes[CHUNK]
    cdef int b = <int>_symbol_bits(levels)
    cdef uint32_t s = <uint32_t>levels, bad, c
    cdef Py_ssize_t c0, n, k, off, kc
    for kc in range(k0, k1):
        c0 = kc * CHUNK
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
    return -1


cdef Py_ssize_t _check_padding_bits(const uint8_t* sym, Py_ssize_t nsym, Py_ssize_t d,
                                    Py_ssize_t levels, int* code) noexcept nogil:
    cdef Py_ssize_t b = _symbol_bits(levels)
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
                    Py_ssize_t bs, Py_ssize_t levels, double w, real_out* out,
                    Py_ssize_t k0, Py_ssize_t k1) noexcept nogil:
    # chunks k0..k1-1 of CHUNK codes (each starts on a byte: threads take ranges of them)
    cdef uint32_t codes[CHUNK]
    cdef int b = <int>_symbol_bits(levels)
    cdef Py_ssize_t c0, n, j, e, off, k, kc
    cdef Py_ssize_t blk = k0 * CHUNK // bs
    cdef Py_ssize_t block_end = (blk + 1) * bs if d - blk * bs > bs else d
    # Few codes (b <= 8) and long blocks: the 2^b values of a block, each computed exactly as
    # _values does (a division per coordinate otherwise), then one table lookup per code.
    cdef bint use_table = b <= 8 and bs >= (<Py_ssize_t>4 << b)
    cdef real_out table[256]
    cdef Py_ssize_t table_blk = -1
    cdef double t, v
    for kc in range(k0, k1):
        c0 = kc * CHUNK
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
    cdef int nt, t
    cdef int codes_t[MAX_THREADS]
    cdef Py_ssize_t wheres_t[MAX_THREADS]
    with nogil:
        for i in range(nb):
            u = psgd_load_u32le(&payload[4 * i])
            if (u >> 31) or ((u >> 23) & 0xFF) == 0xFF:  # sign bit set, inf or NaN
                code = C_ERR_SCALE
                where = i
                break
            scales[i] = psgd_u32_as_f32(u)
        nt = psgd_threads_for(d, _nblocks(d, CHUNK))
        if code == C_ERR_OK:
            if levels == 1:
                where = _check_trits(sym, n, d, &code)
            elif nt == 1:
                where = _check_bits(sym, n, d, levels, &code, 0, _nblocks(d, CHUNK))
            else:
                # each part finds its first bad code; the first part with one reports it
                for t in prange(nt, num_threads=nt, schedule="static", chunksize=1):
                    _check_bits_part(sym, n, d, levels, t, nt, codes_t, wheres_t)
                for i in range(nt):
                    if codes_t[i] != C_ERR_OK:
                        code = codes_t[i]
                        where = wheres_t[i]
                        break
            if code == C_ERR_OK and levels > 1:
                where = _check_padding_bits(sym, n, d, levels, &code)
        if code == C_ERR_OK:                   # only a fully valid payload touches out
            if nt == 1:
                _add_part(sym, n, d, &scales[0], block_size, levels, weight, &out[0], 0, 1)
            else:
                for t in prange(nt, num_threads=nt, schedule="static", chunksize=1):
                    _add_part(sym, n, d, &scales[0], block_size, levels, weight, &out[0], t, nt)
    return code, where


cdef void _check_bits_part(const uint8_t* sym, Py_ssize_t nsym, Py_ssize_t d, Py_ssize_t levels,
                           int t, int nt, int* codes_t, Py_ssize_t* wheres_t) noexcept nogil:
    cdef Py_ssize_t k0, k1
    psgd_split(_nblocks(d, CHUNK), nt, t, &k0, &k1)
    codes_t[t] = C_ERR_OK
    wheres_t[t] = _check_bits(sym, nsym, d, levels, &codes_t[t], k0, k1)


cdef void _add_part(const uint8_t* sym, Py_ssize_t nsym, Py_ssize_t d, const float* scales,
                    Py_ssize_t bs, Py_ssize_t levels, double w, real_out* out,
                    int t, int nt) noexcept nogil:
    """out += w * decoded on part t of nt of the chunks (each out[j] is its own sum: the
    same on any number of threads)."""
    cdef Py_ssize_t k0, k1
    psgd_split(_nblocks(d, CHUNK), nt, t, &k0, &k1)
    if levels == 1:
        _add_trits(sym, d, scales, bs, w, out, k0 * CHUNK, k1 * CHUNK if k1 * CHUNK < d else d)
    else:
        _add_bits(sym, nsym, d, scales, bs, levels, w, out, k0, k1)
