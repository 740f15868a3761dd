# cython: language_level=3
"""Elias-omega coded random dithering (QSGD's scheme): quantize+code and validate+decode+add.

The levels are exactly those of the dense random-dithering kernels (psgd._dither: the
same SplitMix64 uniforms and rounding), so both encodings of one seed decode to the
same vector. The wire layout, the Elias-omega code, the bit order and the error codes
are defined by the NumPy twins in ``psgd/kernels_ref.py`` ("Elias-omega random
dithering"). Every read of the decoder's bit reader is checked against the end of the
buffer first: a truncated or corrupted message returns an error code, it never reads
out of bounds.
"""

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int32_t, int64_t
from libc.string cimport memset

import numpy as np

from _common cimport (GAMMA, psgd_store_f32le, psgd_load_u32le, psgd_u32_as_f32, psgd_cpu_has_v4,
                     psgd_set_use_v4, real_in, real_out, _nblocks, isa_variants, use_isa)
# the decoders' error codes: the one table, psgd/kernels_ref/errors.py (via _errors.h)
from _common cimport (
    C_ERR_OK, C_ERR_SCALE, C_ERR_PADDING, C_ERR_ZERO_BLOCK, C_ERR_TRAILING, C_ERR_STREAM,
    C_ERR_RANGE)

cdef extern from "_elias.h":
    void psgd_e_codes_f32(const float *x, Py_ssize_t n, double t, uint32_t s, uint64_t z,
                          uint32_t *code) noexcept nogil
    void psgd_e_codes_f64(const double *x, Py_ssize_t n, double t, uint32_t s, uint64_t z,
                          uint32_t *code) noexcept nogil
    ctypedef struct psgd_bw:
        uint8_t *out
        Py_ssize_t p
        Py_ssize_t cap
        uint64_t acc
        int nbits
    void psgd_bw_put(psgd_bw *w, uint64_t v, int len) noexcept nogil
    void psgd_bw_flush(psgd_bw *w) noexcept nogil
    void psgd_bw_omega(psgd_bw *w, uint64_t n) noexcept nogil
    void psgd_bw_triple(psgd_bw *w, uint64_t gap, uint32_t sign, uint64_t lev) noexcept nogil
    void psgd_e_write(const uint32_t *code, Py_ssize_t m, Py_ssize_t j0, Py_ssize_t *prev,
                      psgd_bw *w) noexcept nogil
    int psgd_omega_len(uint64_t n) noexcept nogil
    ctypedef struct psgd_tri:
        uint16_t gap
        uint16_t lev
        uint8_t sign
        uint8_t len
    psgd_tri psgd_tri_lut[4096]
    void psgd_elias_init() noexcept nogil
    uint64_t psgd_load_u64be(const uint8_t *p) noexcept nogil
    ctypedef struct psgd_br:
        const uint8_t *buf
        uint64_t pos
        uint64_t end
    int psgd_br_omega(psgd_br *r, uint64_t *out) noexcept nogil

psgd_set_use_v4(psgd_cpu_has_v4())
psgd_elias_init()


def _isa_variants():
    """The quantizer builds this CPU can run, e.g. ['baseline', 'x86-64-v4'] (for tests)."""
    return isa_variants()


def _use_isa(name):
    """Select a quantizer build from :func:`_isa_variants` (tests compare each with the twin)."""
    use_isa(name)


# Must equal the constants of the twin in psgd/kernels_ref/ (tests check).
cdef enum:
    CHUNK = 2048
ERR_STREAM, ERR_RANGE = C_ERR_STREAM, C_ERR_RANGE
MAX_LEVELS = 2**31 - 1

cdef _check(Py_ssize_t d, Py_ssize_t block_size, Py_ssize_t levels):
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    if not 1 <= levels <= MAX_LEVELS:
        raise ValueError(f"levels must be in [1, {MAX_LEVELS}], got {levels}")
    if not 0 <= d <= 2**32 - 1:
        raise ValueError(f"d must be in [0, 2**32 - 1], got {d}")


def omega_length(uint64_t n):
    """Bits of the Elias-omega code of n >= 1."""
    if n < 1:
        raise ValueError("Elias omega codes n >= 1")
    return psgd_omega_len(n)


def elias_max_nbytes(Py_ssize_t d, Py_ssize_t block_size, Py_ssize_t levels):
    """Upper bound on the payload: 4 nblocks + ceil((d (4 + omega(s)) + omega(d + 1)) / 8)."""
    _check(d, block_size, levels)
    return 4 * _nblocks(d, block_size) + (d * (4 + psgd_omega_len(levels))
                                          + psgd_omega_len(d + 1) + 7) // 8


def elias_encode(const real_in[::1] x, const float[::1] scales, Py_ssize_t block_size,
                 Py_ssize_t levels, uint64_t seed, uint8_t[::1] out):
    """Quantize x (dense random-dithering levels) and write the Elias-omega payload into out
    (at least elias_max_nbytes bytes); return the payload length."""
    cdef Py_ssize_t d = x.shape[0]
    _check(d, block_size, levels)
    cdef Py_ssize_t nb = _nblocks(d, block_size), i
    if scales.shape[0] != nb or out.shape[0] < elias_max_nbytes(d, block_size, levels):
        raise ValueError("elias_encode: scales or out has the wrong length")
    for i in range(nb):
        if not (0.0 <= scales[i] <= 3.4028234663852886e38):
            raise ValueError("elias_encode: scales must be finite and >= 0")
    cdef uint32_t code[CHUNK]
    cdef Py_ssize_t blk, j = 0, end, m, k, nnz = 0, prev = -1
    cdef double t
    cdef psgd_bw w
    with nogil:
        for i in range(nb):
            psgd_store_f32le(&out[4 * i], scales[i] + <float>0.0)
        # pass 1: count the nonzeros (the count code comes first)
        for blk in range(nb):
            end = j + block_size if d - j > block_size else d
            t = <double>scales[blk]
            while j < end:
                m = CHUNK if end - j > CHUNK else end - j
                if t != 0.0:
                    if real_in is float:
                        psgd_e_codes_f32(&x[j], m, t, <uint32_t>levels, seed + <uint64_t>j * GAMMA, code)
                    else:
                        psgd_e_codes_f64(&x[j], m, t, <uint32_t>levels, seed + <uint64_t>j * GAMMA, code)
                    for k in range(m):
                        nnz += code[k] != 0
                j += m
        w.out = &out[4 * nb]
        w.p = 0
        w.cap = out.shape[0] - 4 * nb
        w.acc = 0
        w.nbits = 0
        psgd_bw_omega(&w, <uint64_t>nnz + 1)
        # pass 2: the same codes again (counter-based: recomputing is cheaper than storing)
        j = 0
        for blk in range(nb):
            end = j + block_size if d - j > block_size else d
            t = <double>scales[blk]
            while j < end:
                m = CHUNK if end - j > CHUNK else end - j
                if t != 0.0:
                    if real_in is float:
                        psgd_e_codes_f32(&x[j], m, t, <uint32_t>levels, seed + <uint64_t>j * GAMMA, code)
                    else:
                        psgd_e_codes_f64(&x[j], m, t, <uint32_t>levels, seed + <uint64_t>j * GAMMA, code)
                    psgd_e_write(code, m, j, &prev, &w)
                j += m
        psgd_bw_flush(&w)                            # zero padding to a whole byte
    return 4 * nb + w.p


def elias_decode_add(const uint8_t[::1] payload, Py_ssize_t d, Py_ssize_t block_size,
                     Py_ssize_t levels, real_out[::1] out, double weight):
    """Validate the whole payload; if valid, out += weight * decoded. Returns (code, where)."""
    _check(d, block_size, levels)
    cdef Py_ssize_t nb = _nblocks(d, block_size), n = payload.shape[0], i, e
    if out.shape[0] != d:
        raise ValueError("elias_decode_add: out has the wrong length")
    if n < 4 * nb:
        return C_ERR_STREAM, 0
    scales_arr = np.empty(max(nb, 1), dtype=np.float32)
    cdef float[::1] scales = scales_arr
    cdef uint32_t u
    for i in range(nb):
        u = psgd_load_u32le(&payload[4 * i])
        if (u >> 31) or ((u >> 23) & 0xFF) == 0xFF:
            return C_ERR_SCALE, i
        scales[i] = psgd_u32_as_f32(u)
    cdef psgd_br r
    r.buf = &payload[4 * nb] if n > 4 * nb else NULL
    r.pos = 0
    r.end = 8 * <uint64_t>(n - 4 * nb)
    cdef uint64_t v, start, cnt
    cdef int st
    st = psgd_br_omega(&r, &cnt)
    if st:
        return (C_ERR_STREAM if st == 1 else C_ERR_RANGE), 0
    if cnt > <uint64_t>d + 1:
        return C_ERR_RANGE, 0
    cdef Py_ssize_t nnz = <Py_ssize_t>(cnt - 1)
    # every triple takes >= 3 bits: a count beyond what is left is cut short at once
    cdef Py_ssize_t cap = nnz if <uint64_t>nnz <= (r.end - r.pos) // 3 else <Py_ssize_t>((r.end - r.pos) // 3 + 1)
    # 32-bit is enough (d <= 2^32 - 1, |level| <= 2^31 - 1) and halves the scratch the
    # kernel has to fault in (8 bytes per nonzero instead of 16)
    idx_arr = np.empty(max(cap, 1), dtype=np.uint32)
    lev_arr = np.empty(max(cap, 1), dtype=np.int32)
    cdef uint32_t[::1] idx = idx_arr
    cdef int32_t[::1] lev = lev_arr
    cdef int64_t prev = -1
    cdef int code = C_ERR_OK
    cdef Py_ssize_t where = -1
    cdef uint64_t g, sgn
    cdef psgd_tri tri
    cdef int64_t blk_end = block_size, nxt       # blk_end: end of the block of index prev + 1..
    cdef Py_ssize_t blk = 0
    with nogil:
        for e in range(nnz):
            if r.pos + 64 <= r.end:               # fast path: 8 readable bytes, a table hit
                tri = psgd_tri_lut[psgd_load_u64be(&r.buf[r.pos >> 3]) << (r.pos & 7) >> 52]
                nxt = prev + tri.gap
                while nxt >= blk_end and blk_end < d:    # the block of nxt (no division)
                    blk += 1
                    blk_end += block_size
                if tri.len and <uint64_t>tri.gap <= <uint64_t>(d - 1 - prev) \
                        and <uint64_t>tri.lev <= <uint64_t>levels and scales[blk] != 0.0:
                    r.pos += tri.len
                    prev += tri.gap
                    idx[e] = <uint32_t>prev
                    lev[e] = -<int32_t>tri.lev if tri.sign else <int32_t>tri.lev
                    continue
            start = r.pos
            st = psgd_br_omega(&r, &g)
            if st:
                code = C_ERR_STREAM if st == 1 else C_ERR_RANGE
                where = <Py_ssize_t>start
                break
            if g > <uint64_t>(d - 1 - prev):           # index prev + g must be < d
                code = C_ERR_RANGE
                where = <Py_ssize_t>start
                break
            if r.pos >= r.end:
                code = C_ERR_STREAM
                where = <Py_ssize_t>r.pos
                break
            sgn = (r.buf[r.pos >> 3] >> (7 - (r.pos & 7))) & 1
            r.pos += 1
            start = r.pos
            st = psgd_br_omega(&r, &v)
            if st:
                code = C_ERR_STREAM if st == 1 else C_ERR_RANGE
                where = <Py_ssize_t>start
                break
            if v > <uint64_t>levels:
                code = C_ERR_RANGE
                where = <Py_ssize_t>start
                break
            prev += <int64_t>g
            if scales[prev // block_size] == 0.0:      # encode sends no nonzero there
                code = C_ERR_ZERO_BLOCK
                where = <Py_ssize_t>prev
                break
            idx[e] = <uint32_t>prev
            lev[e] = -<int32_t>v if sgn else <int32_t>v
        if code == C_ERR_OK:
            if (r.end - r.pos) >= 8:
                code = C_ERR_TRAILING
                where = <Py_ssize_t>((r.pos + 7) >> 3)
            elif r.pos < r.end and (r.buf[r.pos >> 3] & ((1u << (r.end - r.pos)) - 1)):
                code = C_ERR_PADDING
                where = <Py_ssize_t>(r.pos >> 3)
    if code != C_ERR_OK:
        return code, where
    cdef double s = <double>levels, tv
    cdef int64_t lv
    blk = 0
    blk_end = block_size
    with nogil:
        for e in range(nnz):
            while <int64_t>idx[e] >= blk_end:
                blk += 1
                blk_end += block_size
            lv = lev[e]
            tv = <double>scales[blk] * <double>(lv if lv > 0 else -lv) / s
            if lv < 0:
                tv = -tv
            out[idx[e]] = out[idx[e]] + <real_out>(weight * tv)
    return C_ERR_OK, -1
