# cython: language_level=3
"""Sparsification kernels (psgd._sparsify): rand_k index selection, top_k selection, varint gap coding.

Their meaning (random stream, tie-breaking, byte layout, error codes) is defined by
the NumPy twins in ``psgd/kernels_ref.py`` ("Sparse codes"); these must agree with
them exactly. top_k selects in O(d) with a radix select on the bit patterns of |x|
(two passes over x, no sort); rand_k draws from the counter-based SplitMix64 stream
into a bitmap, so it costs O(k + d/64) and never touches x.
"""

from libc.stdint cimport uint8_t, uint32_t, uint64_t, int32_t, int64_t
from libc.stdlib cimport malloc, calloc, free
from libc.string cimport memset, memcpy
from libc.math cimport INFINITY

import numpy as np

from _common cimport (GAMMA, psgd_mix64, psgd_f32_bits, psgd_f64_bits, psgd_u32_as_f32, psgd_load_u32le,
                     psgd_cpu_has_v4, psgd_set_use_v4, real_in, real_out, isa_variants, use_isa)
# the decoders' error codes: the one table, psgd/kernels_ref/errors.py (via _errors.h)
from _common cimport (
    C_ERR_OK, C_ERR_VALUE, C_ERR_VARINT, C_ERR_NONCANONICAL, C_ERR_INDEX, C_ERR_TRAILING)

cdef extern from "_sparsify.h":
    int psgd_ctz64(uint64_t w) noexcept nogil
    uint64_t psgd_topk_hist_f32(const float *x, Py_ssize_t d, Py_ssize_t *h) noexcept nogil
    uint64_t psgd_topk_hist_f64(const double *x, Py_ssize_t d, Py_ssize_t *h) noexcept nogil
    Py_ssize_t psgd_topk_collect_f32(const float *x, Py_ssize_t d, uint64_t lo, int64_t *ci,
                                     uint64_t *ck, Py_ssize_t cap) noexcept nogil
    Py_ssize_t psgd_topk_collect_f64(const double *x, Py_ssize_t d, uint64_t lo, int64_t *ci,
                                     uint64_t *ck, Py_ssize_t cap) noexcept nogil

psgd_set_use_v4(psgd_cpu_has_v4())


def _isa_variants():
    """The screening-pass builds this CPU can run, e.g. ['baseline', 'x86-64-v4'] (for tests)."""
    return isa_variants()


def _use_isa(name):
    """Select a build from :func:`_isa_variants` (tests compare each with the twin)."""
    use_isa(name)


# The codes this module's decoders return, for Python (tests check them against the twin).
ERR_OK, ERR_VALUE, ERR_VARINT, ERR_NONCANONICAL, ERR_INDEX, ERR_TRAILING = (
    C_ERR_OK, C_ERR_VALUE, C_ERR_VARINT, C_ERR_NONCANONICAL, C_ERR_INDEX, C_ERR_TRAILING)
MAX_DIM = 2**32 - 1

# ------------------------------------------------------------------ rand_k

def randk_indices(uint64_t seed, Py_ssize_t d, Py_ssize_t k):
    """The sorted k-subset of range(d) that the stream of ``seed`` selects (kernels_ref)."""
    if not 0 <= d <= MAX_DIM:
        raise ValueError(f"d must be in [0, {MAX_DIM}], got {d}")
    if not 0 <= k <= d:
        raise ValueError(f"k must be in [0, d={d}], got {k}")
    result = np.empty(k, dtype=np.int64)
    if k == 0:
        return result
    cdef int64_t[::1] out = result
    cdef bint complement = 2 * k > d
    cdef Py_ssize_t n = d - k if complement else k
    cdef Py_ssize_t nwords = (d + 63) // 64, taken = 0, i, p = 0
    cdef uint64_t ud = <uint64_t>d, thresh = ((<uint64_t>1 << 32) - ud) % ud
    cdef uint64_t z = seed, m, v, w
    cdef uint64_t* seen = <uint64_t*>calloc(nwords, 8)
    if seen == NULL:
        raise MemoryError()
    with nogil:
        while taken < n:
            z += GAMMA
            m = (psgd_mix64(z) >> 32) * ud          # Lemire: v = floor(r * d / 2^32), r < 2^32
            if (m & 0xFFFFFFFFULL) < thresh:           # reject: keeps every v equally likely
                continue
            v = m >> 32
            w = <uint64_t>1 << (v & 63)
            if seen[v >> 6] & w:                    # already drawn
                continue
            seen[v >> 6] |= w
            taken += 1
        for i in range(nwords):
            w = seen[i]
            if complement:
                w = ~w
                if i == nwords - 1 and d & 63:
                    w &= (<uint64_t>1 << (d & 63)) - 1
            while w:
                out[p] = 64 * i + psgd_ctz64(w)
                p += 1
                w &= w - 1
    free(seen)
    return result


# ------------------------------------------------------------------ top_k

cdef inline uint64_t _key(real_in v) noexcept nogil:
    if real_in is float:
        return (<uint64_t>(psgd_f32_bits(v) & 0x7FFFFFFFU)) << 32
    else:
        return psgd_f64_bits(v) & 0x7FFFFFFFFFFFFFFFULL


cdef void _refine(uint64_t* sub, Py_ssize_t nsub, Py_ssize_t need, int first_level,
                  uint64_t prefix, Py_ssize_t* hist, uint64_t* t_out, Py_ssize_t* need_out) noexcept nogil:
    # Radix select: the need-th largest of the nsub keys in sub (need <= nsub), whose
    # digits above first_level all equal prefix's. Digits: bits 62..52 (level 0), then
    # 13 bits at a time (levels 1-4: shifts 39, 26, 13, 0). sub is filtered in place.
    # Returns the key T and how many keys == T are among the need largest.
    cdef int lev, sh, width
    cdef Py_ssize_t i, c, above
    cdef uint64_t digit, mask, T = prefix
    for lev in range(first_level, 5):
        sh = 52 if lev == 0 else 39 - 13 * (lev - 1)
        width = 11 if lev == 0 else 13
        mask = (<uint64_t>1 << width) - 1
        memset(hist, 0, (<Py_ssize_t>1 << width) * sizeof(Py_ssize_t))
        for i in range(nsub):
            hist[(sub[i] >> sh) & mask] += 1
        above = 0
        digit = mask
        while above + hist[digit] < need:
            above += hist[digit]
            digit -= 1
        need -= above
        T |= digit << sh
        c = 0
        for i in range(nsub):
            if ((sub[i] >> sh) & mask) == digit:
                sub[c] = sub[i]
                c += 1
        nsub = c
    t_out[0] = T
    need_out[0] = need


cdef Py_ssize_t _emit(const int64_t* ci, const uint64_t* ck, Py_ssize_t m, uint64_t T,
                      Py_ssize_t need, int64_t* out) noexcept nogil:
    # candidates in index order -> every key > T and the first `need` keys == T
    cdef Py_ssize_t i, c = 0
    for i in range(m):
        if ck[i] > T:
            out[c] = ci[i]
            c += 1
        elif ck[i] == T and need > 0:
            out[c] = ci[i]
            c += 1
            need -= 1
    return c


cdef enum:
    SAMPLES = 16384     # strided sample that guesses a lower bound of the threshold


def topk_indices(const real_in[::1] x, Py_ssize_t k):
    """Sorted indices of the k largest |x_i|, ties to the lowest index; ValueError on NaN/Inf.

    Fast path (k <= d/2, d >= 4 SAMPLES): take a strided sample of the keys, pick a key L
    that should have about 1.3 k + 64 keys above it, collect the (index, key) pairs with
    key >= L in one screened pass, and radix-select the k-th largest among them. If fewer
    than k (or more than 4 k + 2 SAMPLES) keys are >= L, fall back to a histogram of the
    top 11 bits of every key, then collect the threshold bucket and refine it. The result
    depends only on x and k (the twin computes it with np.partition).
    """
    cdef Py_ssize_t d = x.shape[0]
    if not 0 <= k <= d:
        raise ValueError(f"k must be in [0, d={d}], got {k}")
    cdef uint64_t inf_key = _key(<real_in>INFINITY)
    cdef Py_ssize_t i, c, b, m = -1, above, need, r, cap, stride
    cdef uint64_t maxkey = 0, T, lo
    hist_arr = np.zeros(8192, dtype=np.intp)
    cdef Py_ssize_t[::1] hist = hist_arr
    result = np.empty(k, dtype=np.int64)
    cdef int64_t[::1] out = result
    cdef int64_t[::1] cand_idx
    cdef uint64_t[::1] cand_key, sub
    if 0 < k and 2 * k <= d and d >= 4 * SAMPLES:
        stride = d // SAMPLES
        sub_arr = np.empty(SAMPLES, dtype=np.uint64)
        sub = sub_arr
        r = min(SAMPLES, (13 * k * SAMPLES) // (10 * d) + 64)
        cap = 4 * k + 2 * SAMPLES
        cand_idx = np.empty(cap, dtype=np.int64)
        cand_key = np.empty(cap, dtype=np.uint64)
        with nogil:
            for i in range(SAMPLES):
                sub[i] = _key(x[i * stride])
            _refine(&sub[0], SAMPLES, r, 0, 0, &hist[0], &lo, &need)
            if real_in is float:
                m = psgd_topk_collect_f32(&x[0], d, lo, &cand_idx[0], &cand_key[0], cap)
            else:
                m = psgd_topk_collect_f64(&x[0], d, lo, &cand_idx[0], &cand_key[0], cap)
            if m >= k:
                for i in range(m):
                    maxkey = cand_key[i] if cand_key[i] > maxkey else maxkey
        if m >= k:
            if maxkey >= inf_key:
                raise ValueError("topk_indices: x holds NaN or Inf")
            sub_arr = np.asarray(cand_key)[:m].copy()      # only the m filled entries
            sub = sub_arr
            with nogil:
                _refine(&sub[0], m, k, 0, 0, &hist[0], &T, &need)
                _emit(&cand_idx[0], &cand_key[0], m, T, need, &out[0])
            return result
    # histogram path: pass 1 over x (also finds NaN/Inf)
    hist4_arr = np.zeros(4 * 2048, dtype=np.intp)
    cdef Py_ssize_t[::1] hist4 = hist4_arr
    if d:
        with nogil:
            if real_in is float:
                maxkey = psgd_topk_hist_f32(&x[0], d, &hist4[0])
            else:
                maxkey = psgd_topk_hist_f64(&x[0], d, &hist4[0])
    if maxkey >= inf_key:
        raise ValueError("topk_indices: x holds NaN or Inf")
    if k == 0:
        return result
    if k == d:
        for i in range(d):
            out[i] = i
        return result
    # the bucket B of the k-th largest key: above = #keys in higher buckets < k <= above + h[B]
    above = 0
    b = 2047
    while True:
        c = hist4[b] + hist4[2048 + b] + hist4[4096 + b] + hist4[6144 + b]
        if above + c >= k:
            break
        above += c
        b -= 1
    m = above + c                     # candidates: every key in bucket >= B, in index order
    cand_idx = np.empty(m, dtype=np.int64)
    cand_key = np.empty(m, dtype=np.uint64)
    sub_arr = np.empty(c, dtype=np.uint64)
    sub = sub_arr
    lo = (<uint64_t>b) << 52
    with nogil:
        if real_in is float:
            psgd_topk_collect_f32(&x[0], d, lo, &cand_idx[0], &cand_key[0], m)
        else:
            psgd_topk_collect_f64(&x[0], d, lo, &cand_idx[0], &cand_key[0], m)
        c = 0
        for i in range(m):
            if (cand_key[i] >> 52) == <uint64_t>b:
                sub[c] = cand_key[i]
                c += 1
        _refine(&sub[0], c, k - above, 1, lo, &hist[0], &T, &need)
        _emit(&cand_idx[0], &cand_key[0], m, T, need, &out[0])
    return result


# ------------------------------------------------------------------ varint gaps

cdef inline int _varint_len(uint64_t g) noexcept nogil:
    cdef int n = 1
    while g >= 0x80:
        g >>= 7
        n += 1
    return n


cdef int _check_sorted(const int64_t[::1] idx) except -1:
    cdef Py_ssize_t e
    cdef int64_t prev = -1
    for e in range(idx.shape[0]):
        if idx[e] <= prev or idx[e] > MAX_DIM:
            raise ValueError("indices must be strictly increasing, in [0, 2**32 - 1)")
        prev = idx[e]
    return 0


def gaps_nbytes(const int64_t[::1] idx):
    """Bytes of the LEB128 varints of the gaps of the sorted indices idx."""
    _check_sorted(idx)
    cdef Py_ssize_t e, n = 0
    cdef int64_t prev = -1
    for e in range(idx.shape[0]):
        n += _varint_len(<uint64_t>(idx[e] - prev - 1))
        prev = idx[e]
    return n


def gaps_encode(const int64_t[::1] idx, uint8_t[::1] out):
    """Write the gap varints of idx into out (exactly gaps_nbytes(idx) bytes)."""
    cdef Py_ssize_t n = gaps_nbytes(idx), e, p = 0
    if out.shape[0] != n:
        raise ValueError(f"gaps_encode: out has {out.shape[0]} bytes, expected {n}")
    cdef int64_t prev = -1
    cdef uint64_t g
    with nogil:
        for e in range(idx.shape[0]):
            g = <uint64_t>(idx[e] - prev - 1)
            prev = idx[e]
            while g >= 0x80:
                out[p] = <uint8_t>(g | 0x80)
                p += 1
                g >>= 7
            out[p] = <uint8_t>g
            p += 1


def gaps_decode(const uint8_t[::1] buf, Py_ssize_t d, int64_t[::1] idx):
    """Parse exactly idx.shape[0] gap varints filling buf into idx; return (code, where)."""
    cdef Py_ssize_t n = buf.shape[0], k = idx.shape[0], e, p = 0, start
    cdef int64_t prev = -1
    cdef uint64_t v, cur
    cdef int shift
    cdef uint8_t byte = 0
    cdef int code = C_ERR_OK
    cdef Py_ssize_t where = -1
    with nogil:
        for e in range(k):
            start = p
            v = 0
            shift = 0
            while True:
                if p >= n or (shift == 28 and buf[p] > 0x0F):
                    code = C_ERR_VARINT          # truncated, longer than 5 bytes or >= 2^32
                    where = start
                    break
                byte = buf[p]
                p += 1
                v |= <uint64_t>(byte & 0x7F) << shift
                if byte < 0x80:
                    break
                shift += 7
            if code != C_ERR_OK:
                break
            if p - start > 1 and byte == 0:
                code = C_ERR_NONCANONICAL
                where = start
                break
            cur = <uint64_t>(prev + 1) + v
            if cur >= <uint64_t>d:
                code = C_ERR_INDEX
                where = e
                break
            idx[e] = <int64_t>cur
            prev = <int64_t>cur
        if code == C_ERR_OK and p != n:
            code = C_ERR_TRAILING
            where = p
    return code, where


# ------------------------------------------------------------------ scatter-add

def sparse_add(const int64_t[::1] idx, const uint8_t[::1] values, double scale,
               real_out[::1] out, double weight):
    """Validate the little-endian float32 values; if all finite, out[idx] += weight*(scale*v)."""
    cdef Py_ssize_t k = idx.shape[0], e, d = out.shape[0]
    if values.shape[0] != 4 * k:
        raise ValueError(f"sparse_add: values has {values.shape[0]} bytes, expected {4 * k}")
    for e in range(k):
        if not 0 <= idx[e] < d:
            raise ValueError(f"sparse_add: index {idx[e]} out of range for d={d}")
    cdef uint32_t u
    cdef double v
    cdef Py_ssize_t bad = -1
    with nogil:
        for e in range(k):
            u = psgd_load_u32le(&values[4 * e])
            if ((u >> 23) & 0xFF) == 0xFF:       # NaN or Inf: encode never sends one
                bad = e
                break
        if bad < 0:
            for e in range(k):
                v = scale * <double>psgd_u32_as_f32(psgd_load_u32le(&values[4 * e]))
                out[idx[e]] = out[idx[e]] + <real_out>(weight * v)
    if bad >= 0:
        return ERR_VALUE, bad
    return ERR_OK, -1
