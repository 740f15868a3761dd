/* C helpers of cython_ext/_sparsify.pyx: rand_k / top_k: bit-pattern keys, histograms and candidate collection.
   Declared for Cython in the cdef extern block of _sparsify.pyx; only that module includes it. */
#ifndef PSGD_SPARSIFY_H
#define PSGD_SPARSIFY_H

#include "_common.h"
static inline int psgd_ctz64(uint64_t w) { return __builtin_ctzll(w); }
/* top_k keys: |x|'s bit pattern, an integer with the order of |x| (NaN/Inf above every
   finite value). NK is the native-width key (int32/int64, sign bit clear, so signed
   compares vectorize); KEY widens it to the shared 64-bit key (float keys in the
   high half, so both types share one digit schedule). */
#define PSGD_NK32(v) ((int32_t)(psgd_f32_bits(v) & 0x7FFFFFFFu))
#define PSGD_NK64(v) ((int64_t)(psgd_f64_bits(v) & 0x7FFFFFFFFFFFFFFFULL))
#define PSGD_W32(k) ((uint64_t)(uint32_t)(k) << 32)
#define PSGD_W64(k) ((uint64_t)(k))
#define PSGD_TOPK(SFX, T, NKT, NK, W, NSH)                                                \
/* histogram of the top 11 bits of every key (4 interleaved copies: runs of one bucket \
   do not stall on store-to-load forwarding); returns the largest key */                \
static uint64_t psgd_topk_hist_##SFX(const T *x, Py_ssize_t d, Py_ssize_t *h) {          \
    Py_ssize_t *h0 = h, *h1 = h + 2048, *h2 = h + 4096, *h3 = h + 6144, i = 0;           \
    NKT m0 = 0, m1 = 0, m2 = 0, m3 = 0, k0, k1, k2, k3;                                  \
    for (; i + 4 <= d; i += 4) {                                                          \
        k0 = NK(x[i]); k1 = NK(x[i + 1]); k2 = NK(x[i + 2]); k3 = NK(x[i + 3]);           \
        h0[k0 >> NSH]++; h1[k1 >> NSH]++; h2[k2 >> NSH]++; h3[k3 >> NSH]++;               \
        m0 = k0 > m0 ? k0 : m0; m1 = k1 > m1 ? k1 : m1;                                   \
        m2 = k2 > m2 ? k2 : m2; m3 = k3 > m3 ? k3 : m3;                                   \
    }                                                                                     \
    for (; i < d; i++) { k0 = NK(x[i]); h0[k0 >> NSH]++; m0 = k0 > m0 ? k0 : m0; }       \
    m0 = m1 > m0 ? m1 : m0; m2 = m3 > m2 ? m3 : m2;                                       \
    return W(m2 > m0 ? m2 : m0);                                                          \
}                                                                                         \
/* append (index, key) of every key >= lo to ci/ck in index order; -1 past cap.          \
   Chunks of 16 are screened with a vectorizable OR first (hits are rare). */            \
static inline __attribute__((always_inline)) Py_ssize_t psgd_topk_collect_body_##SFX(   \
        const T *x, Py_ssize_t d, uint64_t lo64,                                           \
                                          int64_t *ci, uint64_t *ck, Py_ssize_t cap) {   \
    NKT lo = (NKT)(W(1) == 1 ? lo64 : lo64 >> 32);                                        \
    Py_ssize_t i = 0, c = 0;                                                              \
    for (;; i += 16) {                                                                    \
        int n = d - i < 16 ? (int)(d - i) : 16, any = 0, j;                               \
        if (n <= 0) break;                                                                \
        if (n == 16) { for (j = 0; j < 16; j++) any |= NK(x[i + j]) >= lo; }              \
        else any = 1;                                                                     \
        if (!any) continue;                                                               \
        for (j = 0; j < n; j++) {                                                         \
            NKT k = NK(x[i + j]);                                                         \
            if (k >= lo) {                                                                \
                if (c == cap) return -1;                                                  \
                ci[c] = i + j; ck[c] = W(k); c++;                                         \
            }                                                                             \
        }                                                                                 \
    }                                                                                     \
    return c;                                                                             \
}
PSGD_TOPK(f32, float, int32_t, PSGD_NK32, PSGD_W32, 20)
PSGD_TOPK(f64, double, int64_t, PSGD_NK64, PSGD_W64, 52)
/* the screening pass is built for the baseline and for x86-64-v4 (wider compares),
   chosen at run time as in _dither */
#define PSGD_S_DISPATCH(SFX, T)                                                           \
static Py_ssize_t psgd_topk_collect_base_##SFX(const T *x, Py_ssize_t d, uint64_t lo,     \
        int64_t *ci, uint64_t *ck, Py_ssize_t cap) {                                      \
    return psgd_topk_collect_body_##SFX(x, d, lo, ci, ck, cap); }                         \
static Py_ssize_t psgd_topk_collect_##SFX(const T *x, Py_ssize_t d, uint64_t lo,          \
        int64_t *ci, uint64_t *ck, Py_ssize_t cap) {                                      \
    return (PSGD_HAVE_V4 && psgd_use_v4) ? psgd_topk_collect_v4_##SFX(x, d, lo, ci, ck, cap) \
                                             : psgd_topk_collect_base_##SFX(x, d, lo, ci, ck, cap); \
}
/* AVX-512: a 16-bit hit mask per 16 keys (vpcmpd/vpcmpq), hits visited with ctz */
#if PSGD_HAVE_V4
#include <immintrin.h>
PSGD_V4 static Py_ssize_t psgd_topk_collect_v4_f32(const float *x, Py_ssize_t d, uint64_t lo64,
        int64_t *ci, uint64_t *ck, Py_ssize_t cap) {
    const __m512i absm = _mm512_set1_epi32(0x7FFFFFFF), vlo = _mm512_set1_epi32((int32_t)(lo64 >> 32));
    Py_ssize_t i = 0, c = 0;
    for (; i + 16 <= d; i += 16) {
        __m512i k = _mm512_and_si512(_mm512_loadu_si512((const void *)(x + i)), absm);
        uint32_t m = _mm512_cmpge_epi32_mask(k, vlo);
        while (m) {
            int j = __builtin_ctz(m);
            m &= m - 1;
            if (c == cap) return -1;
            ci[c] = i + j; ck[c] = PSGD_W32(PSGD_NK32(x[i + j])); c++;
        }
    }
    Py_ssize_t r = psgd_topk_collect_body_f32(x + i, d - i, lo64, ci + c, ck + c, cap - c);
    if (r < 0) return -1;
    for (Py_ssize_t q = c; q < c + r; q++) ci[q] += i;
    return c + r;
}
PSGD_V4 static Py_ssize_t psgd_topk_collect_v4_f64(const double *x, Py_ssize_t d, uint64_t lo64,
        int64_t *ci, uint64_t *ck, Py_ssize_t cap) {
    const __m512i absm = _mm512_set1_epi64(0x7FFFFFFFFFFFFFFFLL), vlo = _mm512_set1_epi64((int64_t)lo64);
    Py_ssize_t i = 0, c = 0;
    for (; i + 16 <= d; i += 16) {
        __m512i k0 = _mm512_and_si512(_mm512_loadu_si512((const void *)(x + i)), absm);
        __m512i k1 = _mm512_and_si512(_mm512_loadu_si512((const void *)(x + i + 8)), absm);
        uint32_t m = (uint32_t)_mm512_cmpge_epi64_mask(k0, vlo)
                     | ((uint32_t)_mm512_cmpge_epi64_mask(k1, vlo) << 8);
        while (m) {
            int j = __builtin_ctz(m);
            m &= m - 1;
            if (c == cap) return -1;
            ci[c] = i + j; ck[c] = PSGD_W64(PSGD_NK64(x[i + j])); c++;
        }
    }
    Py_ssize_t r = psgd_topk_collect_body_f64(x + i, d - i, lo64, ci + c, ck + c, cap - c);
    if (r < 0) return -1;
    for (Py_ssize_t q = c; q < c + r; q++) ci[q] += i;
    return c + r;
}
#else
static Py_ssize_t psgd_topk_collect_v4_f32(const float *x, Py_ssize_t d, uint64_t lo,
        int64_t *ci, uint64_t *ck, Py_ssize_t cap) { return psgd_topk_collect_body_f32(x, d, lo, ci, ck, cap); }
static Py_ssize_t psgd_topk_collect_v4_f64(const double *x, Py_ssize_t d, uint64_t lo,
        int64_t *ci, uint64_t *ck, Py_ssize_t cap) { return psgd_topk_collect_body_f64(x, d, lo, ci, ck, cap); }
#endif
PSGD_S_DISPATCH(f32, float)
PSGD_S_DISPATCH(f64, double)

#endif  /* PSGD_SPARSIFY_H */
