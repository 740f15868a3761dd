/* C helpers of cython_ext/_quant.pyx: sign, natural, natural dithering and rounding: rint, the per-block loops.
   Declared for Cython in the cdef extern block of _quant.pyx; only that module includes it. */
#ifndef PSGD_QUANT_H
#define PSGD_QUANT_H

#include "_common.h"
/* rint(v) for |v| < 2^51 in round-to-nearest-even (what np.rint does), without a libm
   call on baseline x86-64; for larger |v| the result is still >= 2^50 in magnitude
   (or NaN), which the range check rejects. */
static inline double psgd_rint(double v) {
    const double c = 6755399441055744.0;      /* 1.5 * 2^52; no -ffast-math: not folded */
    return (v + c) - c;
}
static inline unsigned psgd_sb_f32(float v) { return psgd_f32_bits(v) >> 31; }
static inline unsigned psgd_sb_f64(double v) { return (unsigned)(psgd_f64_bits(v) >> 63); }

/* ---- scaled sign: one block of n coordinates whose first sign bit is bit0 of the
   stream. lane[l] = sequential float64 sum of |x_j| over j = l (mod 8) (block-relative
   j); sign bits OR-ed into a zeroed stream (whole bytes when bit0 is a byte start). */
#define PSGD_SIGN_ENC(SFX, T)                                                             \
static void psgd_sign_block_gen_##SFX(const T *x, Py_ssize_t n, Py_ssize_t bit0,              \
                                  uint8_t *bits, double *lane) {                          \
    double a0 = 0, a1 = 0, a2 = 0, a3 = 0, a4 = 0, a5 = 0, a6 = 0, a7 = 0;                \
    Py_ssize_t j = 0;                                                                     \
    if ((bit0 & 7) == 0) {                                                                \
        uint8_t *o = bits + (bit0 >> 3);                                                  \
        for (; j + 8 <= n; j += 8) {                                                      \
            const T *p = x + j;                                                           \
            a0 += fabs((double)p[0]); a1 += fabs((double)p[1]);                           \
            a2 += fabs((double)p[2]); a3 += fabs((double)p[3]);                           \
            a4 += fabs((double)p[4]); a5 += fabs((double)p[5]);                           \
            a6 += fabs((double)p[6]); a7 += fabs((double)p[7]);                           \
            *o++ = (uint8_t)(psgd_sb_##SFX(p[0]) | psgd_sb_##SFX(p[1]) << 1 |             \
                             psgd_sb_##SFX(p[2]) << 2 | psgd_sb_##SFX(p[3]) << 3 |        \
                             psgd_sb_##SFX(p[4]) << 4 | psgd_sb_##SFX(p[5]) << 5 |        \
                             psgd_sb_##SFX(p[6]) << 6 | psgd_sb_##SFX(p[7]) << 7);        \
        }                                                                                 \
    }                                                                                     \
    lane[0] = a0; lane[1] = a1; lane[2] = a2; lane[3] = a3;                               \
    lane[4] = a4; lane[5] = a5; lane[6] = a6; lane[7] = a7;                               \
    for (; j < n; j++) {                                                                  \
        Py_ssize_t b = bit0 + j;                                                          \
        lane[j & 7] += fabs((double)x[j]);                                                \
        bits[b >> 3] |= (uint8_t)(psgd_sb_##SFX(x[j]) << (b & 7));                        \
    }                                                                                     \
}
PSGD_SIGN_ENC(f32, float)
PSGD_SIGN_ENC(f64, double)

/* out[j] += bit j ? neg : pos, for the n coordinates whose first bit is bit0 */
#define PSGD_SIGN_DEC(SFX, T)                                                             \
static void psgd_sign_add_gen_##SFX(const uint8_t *bits, Py_ssize_t bit0, Py_ssize_t n,       \
                                T pos, T neg, T *out) {                                   \
    Py_ssize_t j = 0;                                                                     \
    if ((bit0 & 7) == 0) {                                                                \
        const uint8_t *q = bits + (bit0 >> 3);                                            \
        for (; j + 8 <= n; j += 8) {                                                      \
            unsigned by = *q++;                                                           \
            T *o = out + j;                                                               \
            o[0] += (by & 1) ? neg : pos; o[1] += (by & 2) ? neg : pos;                   \
            o[2] += (by & 4) ? neg : pos; o[3] += (by & 8) ? neg : pos;                   \
            o[4] += (by & 16) ? neg : pos; o[5] += (by & 32) ? neg : pos;                 \
            o[6] += (by & 64) ? neg : pos; o[7] += (by & 128) ? neg : pos;                \
        }                                                                                 \
    }                                                                                     \
    for (; j < n; j++) {                                                                  \
        Py_ssize_t b = bit0 + j;                                                          \
        out[j] += ((bits[b >> 3] >> (b & 7)) & 1) ? neg : pos;                            \
    }                                                                                     \
}
PSGD_SIGN_DEC(f32, float)
PSGD_SIGN_DEC(f64, double)

/* ---- per-coordinate quantizers, flat branch-free loops over a chunk so that they
   vectorize; each is built for the x86-64 baseline and (GCC >= 12) for x86-64-v4
   (AVX-512 has 64-bit multiplies for SplitMix64), chosen at run time (as _dither).
   z = seed + j0 * GAMMA for the chunk's first coordinate j0. */
/* natural compression: exponent code and sign flag per coordinate; returns nonzero if
   some |x| is NaN, Inf or >= 2^128 */
static inline __attribute__((always_inline)) int psgd_nat_f32_body(
        const float *x, Py_ssize_t n, uint64_t z, uint8_t *code, uint8_t *sgn) {
    uint32_t bad = 0;
    for (Py_ssize_t k = 0; k < n; k++) {
        uint32_t u = psgd_f32_bits(x[k]);
        uint32_t e = (u >> 23) & 0xFF;
        uint64_t r = psgd_mix64(z + (uint64_t)(k + 1) * PSGD_GAMMA) >> 11;
        uint32_t c = e + (r < ((uint64_t)(u & 0x7FFFFF) << 30));
        bad |= e == 0xFF;
        code[k] = (uint8_t)c;
        sgn[k] = (uint8_t)((u >> 31) & (c != 0));
    }
    return bad != 0;
}
static inline __attribute__((always_inline)) int psgd_nat_f64_body(
        const double *x, Py_ssize_t n, uint64_t z, uint8_t *code, uint8_t *sgn) {
    uint32_t bad = 0;
    for (Py_ssize_t k = 0; k < n; k++) {
        uint64_t u = psgd_f64_bits(x[k]);
        uint32_t e = (uint32_t)((u >> 52) & 0x7FF);
        uint64_t r = psgd_mix64(z + (uint64_t)(k + 1) * PSGD_GAMMA) >> 11;
        /* |x| >= 2^-126: e - 896 in [1, 254] (+1 rounding up); below: 0 or 1 (2^-126) */
        uint32_t hi = e - 896 + (r < ((u & 0xFFFFFFFFFFFFFULL) << 1));
        uint32_t lo = (double)(int64_t)r * 0x1.0p-53 < fabs(x[k]) * 0x1.0p126;
        uint32_t c = e >= 897 ? hi : lo;
        bad |= e >= 1151;                      /* |x| >= 2^128, Inf or NaN */
        c = e >= 1151 ? 0 : c;
        code[k] = (uint8_t)c;
        sgn[k] = (uint8_t)((u >> 63) & (c != 0));
    }
    return bad != 0;
}
/* natural dithering: code = sign + 2 level for the n coordinates of one block with
   scale t > 0; p2 = 2^(s-1) */
#define PSGD_NATD_BODY(SFX, T)                                                            \
static inline __attribute__((always_inline)) void psgd_natd_##SFX##_body(                   \
        const T *x, Py_ssize_t n, double t, uint32_t s, double p2, uint64_t z,            \
        uint32_t *code) {                                                                 \
    /* all 64-bit and select-by-mask: with FP compares, ?: would block if-conversion     \
       (-ftrapping-math) and with it vectorization */                                     \
    const uint64_t s64 = s, M52 = 0xFFFFFFFFFFFFFULL;                                     \
    for (Py_ssize_t k = 0; k < n; k++) {                                                  \
        double xv = (double)x[k];                                                         \
        double y = fabs(xv) / t;                                                          \
        uint64_t u = psgd_f64_bits(y);                                                    \
        uint64_t E = u >> 52;                 /* y >= 0: floor(log2 y) = E - 1023 */      \
        uint64_t r = psgd_mix64(z + (uint64_t)(k + 1) * PSGD_GAMMA) >> 11;                \
        uint64_t mid = E - 1023 + s64 + (uint64_t)(r < ((u & M52) << 1));                 \
        uint64_t low = (uint64_t)((double)(int64_t)r * 0x1.0p-53 < y * p2);               \
        uint64_t m_hi = -(uint64_t)(E + s64 >= 1024);    /* y >= 2^(1-s) */               \
        uint64_t m_in = -(uint64_t)(y < 1.0);                                             \
        uint64_t lev = (((mid & m_hi) | (low & ~m_hi)) & m_in) | (s64 & ~m_in);           \
        uint64_t neg = (uint64_t)(xv < 0);                                                \
        code[k] = (uint32_t)((lev << 1) | (neg & (uint64_t)(lev != 0)));                  \
    }                                                                                     \
}
PSGD_NATD_BODY(f32, float)

/* ---- b-bit codes (b <= 32) of an LSB-first stream of nbytes bytes: code k is at bit
   bit0 + k b. One unaligned little-endian 64-bit load per code (byte-wise at the end). */
static void psgd_unpack(const uint8_t *s, Py_ssize_t nbytes, uint64_t bit0, int b,
                        Py_ssize_t n, uint32_t *c) {
    const uint64_t mask = (1ULL << b) - 1;   /* b <= 32 */
    for (Py_ssize_t k = 0; k < n; k++) {
        uint64_t pos = bit0 + (uint64_t)k * (uint64_t)b;
        Py_ssize_t byte = (Py_ssize_t)(pos >> 3);
        uint64_t w = 0;
        if (byte + 8 <= nbytes) w = psgd_load_u64le(s + byte);
        else for (Py_ssize_t q = 0; byte + q < nbytes; q++) w |= (uint64_t)s[byte + q] << (8 * q);
        c[k] = (uint32_t)((w >> (pos & 7)) & mask);
    }
}
/* ---- rounding: zig-zag codes of q = rint(x / res) for n coordinates; returns the OR of
   the codes, or sets *bad if some |q| > 2^31 - 1 (or is NaN) */
#define PSGD_ROUND_BODY(SFX, T)                                                           \
static inline __attribute__((always_inline)) uint64_t psgd_round_##SFX##_body(             \
        const T *x, Py_ssize_t n, double res, uint32_t *code, int *bad) {                 \
    uint64_t orv = 0, badv = 0;                                                           \
    for (Py_ssize_t k = 0; k < n; k++) {                                                  \
        double q = psgd_rint((double)x[k] / res);                                         \
        /* |q| <= 2^31 - 1 compared on the bits of |q| (NaN above all): no FP compare,     \
           so the loop if-converts and vectorizes */                                      \
        uint64_t ok = (uint64_t)((psgd_f64_bits(q) & 0x7FFFFFFFFFFFFFFFULL)               \
                                 <= 0x41DFFFFFFFC00000ULL);                               \
        badv |= ok ^ 1;                                                                   \
        int64_t qi = (int64_t)(ok ? q : 0.0);                                             \
        uint64_t c = (uint64_t)((qi << 1) ^ (qi >> 63));                                  \
        code[k] = (uint32_t)c;                                                            \
        orv |= c;                                                                         \
    }                                                                                     \
    if (badv) *bad = 1;                                                                   \
    return orv;                                                                           \
}
PSGD_ROUND_BODY(f32, float)
PSGD_ROUND_BODY(f64, double)

/* ---- decode-side accumulation of unpacked codes */
#define PSGD_ADD_BODIES(SFX, T)                                                           \
static inline __attribute__((always_inline)) void psgd_natd_add_##SFX##_body(               \
        const uint32_t *c, Py_ssize_t n, double t, const double *lut, double w, T *out) { \
    for (Py_ssize_t k = 0; k < n; k++) {                                                  \
        uint64_t u = psgd_f64_bits(t * lut[c[k] >> 1]) ^ ((uint64_t)(c[k] & 1) << 63);    \
        double v; memcpy(&v, &u, 8);                                                      \
        out[k] += (T)(w * v);                                                             \
    }                                                                                     \
}                                                                                         \
static inline __attribute__((always_inline)) void psgd_round_add_##SFX##_body(              \
        const uint32_t *c, Py_ssize_t n, double res, double w, T *out) {                  \
    for (Py_ssize_t k = 0; k < n; k++) {                                                  \
        int64_t q = (int64_t)(c[k] >> 1) ^ -(int64_t)(c[k] & 1);                          \
        out[k] += (T)(w * (res * (double)q));                                             \
    }                                                                                     \
}
PSGD_ADD_BODIES(f32, float)
PSGD_ADD_BODIES(f64, double)
PSGD_NATD_BODY(f64, double)

#define PSGD_Q_DISPATCH(SFX, T)                                                           \
PSGD_MULTIVERSION_RET(int, psgd_nat_##SFX, (const T *x, Py_ssize_t n, uint64_t z,         \
                      uint8_t *c, uint8_t *g), (x, n, z, c, g))                           \
PSGD_MULTIVERSION(psgd_natd_##SFX, (const T *x, Py_ssize_t n, double t, uint32_t s,       \
                  double p2, uint64_t z, uint32_t *c), (x, n, t, s, p2, z, c))
PSGD_Q_DISPATCH(f32, float)
PSGD_Q_DISPATCH(f64, double)

/* ---- scaled sign with AVX2 (vmovmskps, 4-wide double lanes), used with the x86-64-v4
   build (v4 implies v3). Same lane sums in the same order as the generic loops. */
#if PSGD_HAVE_V4
#include <immintrin.h>
#define PSGD_V3 __attribute__((target("arch=x86-64-v3")))
PSGD_V3 static Py_ssize_t psgd_sign_fast_f32(const float *x, Py_ssize_t n, uint8_t *o, double *lane) {
    const __m256d absm = _mm256_castsi256_pd(_mm256_set1_epi64x(0x7FFFFFFFFFFFFFFFLL));
    __m256d lo = _mm256_loadu_pd(lane), hi = _mm256_loadu_pd(lane + 4);
    Py_ssize_t j = 0;
    for (; j + 8 <= n; j += 8) {
        __m256 v = _mm256_loadu_ps(x + j);
        *o++ = (uint8_t)_mm256_movemask_ps(v);
        lo = _mm256_add_pd(lo, _mm256_and_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(v)), absm));
        hi = _mm256_add_pd(hi, _mm256_and_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)), absm));
    }
    _mm256_storeu_pd(lane, lo); _mm256_storeu_pd(lane + 4, hi);
    return j;
}
PSGD_V3 static Py_ssize_t psgd_sign_fast_f64(const double *x, Py_ssize_t n, uint8_t *o, double *lane) {
    const __m256d absm = _mm256_castsi256_pd(_mm256_set1_epi64x(0x7FFFFFFFFFFFFFFFLL));
    __m256d lo = _mm256_loadu_pd(lane), hi = _mm256_loadu_pd(lane + 4);
    Py_ssize_t j = 0;
    for (; j + 8 <= n; j += 8) {
        __m256d v0 = _mm256_loadu_pd(x + j), v1 = _mm256_loadu_pd(x + j + 4);
        *o++ = (uint8_t)(_mm256_movemask_pd(v0) | (_mm256_movemask_pd(v1) << 4));
        lo = _mm256_add_pd(lo, _mm256_and_pd(v0, absm));
        hi = _mm256_add_pd(hi, _mm256_and_pd(v1, absm));
    }
    _mm256_storeu_pd(lane, lo); _mm256_storeu_pd(lane + 4, hi);
    return j;
}
PSGD_V3 static Py_ssize_t psgd_sign_addfast_f32(const uint8_t *q, Py_ssize_t n, float pos,
                                               float neg, float *out) {
    const __m256i sel = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    const __m256 vp = _mm256_set1_ps(pos), vn = _mm256_set1_ps(neg);
    Py_ssize_t j = 0;
    for (; j + 8 <= n; j += 8) {
        __m256i m = _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32(*q++), sel), sel);
        __m256 val = _mm256_blendv_ps(vp, vn, _mm256_castsi256_ps(m));
        _mm256_storeu_ps(out + j, _mm256_add_ps(_mm256_loadu_ps(out + j), val));
    }
    return j;
}
PSGD_V3 static Py_ssize_t psgd_sign_addfast_f64(const uint8_t *q, Py_ssize_t n, double pos,
                                               double neg, double *out) {
    const __m256i sl = _mm256_setr_epi64x(1, 2, 4, 8), sh = _mm256_setr_epi64x(16, 32, 64, 128);
    const __m256d vp = _mm256_set1_pd(pos), vn = _mm256_set1_pd(neg);
    Py_ssize_t j = 0;
    for (; j + 8 <= n; j += 8) {
        __m256i b = _mm256_set1_epi64x(*q++);
        __m256i m0 = _mm256_cmpeq_epi64(_mm256_and_si256(b, sl), sl);
        __m256i m1 = _mm256_cmpeq_epi64(_mm256_and_si256(b, sh), sh);
        _mm256_storeu_pd(out + j, _mm256_add_pd(_mm256_loadu_pd(out + j),
                         _mm256_blendv_pd(vp, vn, _mm256_castsi256_pd(m0))));
        _mm256_storeu_pd(out + j + 4, _mm256_add_pd(_mm256_loadu_pd(out + j + 4),
                         _mm256_blendv_pd(vp, vn, _mm256_castsi256_pd(m1))));
    }
    return j;
}
#endif
/* dispatch: the AVX2 loop for the byte-aligned whole groups, the generic code for the rest */
#define PSGD_SIGN_DISPATCH(SFX, T)                                                        \
static void psgd_sign_block_##SFX(const T *x, Py_ssize_t n, Py_ssize_t bit0, uint8_t *bits, \
                                  double *lane) {                                         \
    if (PSGD_HAVE_V4 && psgd_use_v4 && (bit0 & 7) == 0 && n >= 8) {                   \
        double l8[8] = {0, 0, 0, 0, 0, 0, 0, 0};                                          \
        Py_ssize_t done = PSGD_SIGN_FAST(SFX)(x, n, bits + (bit0 >> 3), l8);              \
        double rest[8];                                                                   \
        psgd_sign_block_gen_##SFX(x + done, n - done, bit0 + done, bits, rest);           \
        /* the tail continues each lane's sequential sum: lane l of the tail starts at    \
           block-relative j = done + l, and done is a multiple of 8 */                    \
        for (int l = 0; l < 8; l++) {                                                     \
            double a = l8[l];                                                             \
            for (Py_ssize_t k = done + l; k < n; k += 8) a += fabs((double)x[k]);         \
            lane[l] = a;                                                                  \
        }                                                                                 \
        (void)rest;                                                                       \
        return;                                                                           \
    }                                                                                     \
    psgd_sign_block_gen_##SFX(x, n, bit0, bits, lane);                                    \
}                                                                                         \
static void psgd_sign_add_##SFX(const uint8_t *bits, Py_ssize_t bit0, Py_ssize_t n,       \
                                T pos, T neg, T *out) {                                   \
    Py_ssize_t done = 0;                                                                  \
    if (PSGD_HAVE_V4 && psgd_use_v4 && (bit0 & 7) == 0)                               \
        done = PSGD_SIGN_ADDFAST(SFX)(bits + (bit0 >> 3), n, pos, neg, out);              \
    psgd_sign_add_gen_##SFX(bits, bit0 + done, n - done, pos, neg, out + done);           \
}
#if PSGD_HAVE_V4
#define PSGD_SIGN_FAST(SFX) psgd_sign_fast_##SFX
#define PSGD_SIGN_ADDFAST(SFX) psgd_sign_addfast_##SFX
#else
#define PSGD_SIGN_FAST(SFX) psgd_sign_nofast
#define PSGD_SIGN_ADDFAST(SFX) psgd_sign_noaddfast
static Py_ssize_t psgd_sign_nofast(const void *x, Py_ssize_t n, uint8_t *o, double *l) { return 0; }
static Py_ssize_t psgd_sign_noaddfast(const uint8_t *q, Py_ssize_t n, double p, double m, void *o) { return 0; }
#endif
PSGD_SIGN_DISPATCH(f32, float)
PSGD_SIGN_DISPATCH(f64, double)
#define PSGD_Q_DISPATCH2(SFX, T)                                                          \
PSGD_MULTIVERSION_RET(uint64_t, psgd_round_##SFX, (const T *x, Py_ssize_t n, double r,    \
                      uint32_t *c, int *b), (x, n, r, c, b))                              \
PSGD_MULTIVERSION(psgd_natd_add_##SFX, (const uint32_t *c, Py_ssize_t n, double t,        \
                  const double *l, double w, T *o), (c, n, t, l, w, o))                   \
PSGD_MULTIVERSION(psgd_round_add_##SFX, (const uint32_t *c, Py_ssize_t n, double r,       \
                  double w, T *o), (c, n, r, w, o))
PSGD_Q_DISPATCH2(f32, float)
PSGD_Q_DISPATCH2(f64, double)

/* natural decode: first coordinate with code 0 and its sign bit set, or -1 */
static Py_ssize_t psgd_nat_check(const uint8_t *code, const uint8_t *bits, Py_ssize_t d) {
    Py_ssize_t j = 0;
    for (; j + 8 <= d; j += 8) {
        unsigned z = 0;
        for (int l = 0; l < 8; l++) z |= (unsigned)(code[j + l] == 0) << l;
        if (z & bits[j >> 3]) break;
    }
    for (; j < d; j++)
        if (code[j] == 0 && ((bits[j >> 3] >> (j & 7)) & 1)) return j;
    return -1;
}
/* out_j += (T)(w * (+-pow2[c_j])), the sign applied by flipping the sign bit */
#define PSGD_NAT_ADD(SFX, T)                                                              \
static void psgd_nat_add_##SFX(const uint8_t *code, const uint8_t *bits, Py_ssize_t d,    \
                               const double *pow2, double w, T *out) {                    \
    for (Py_ssize_t j = 0; j < d; j++) {                                                  \
        uint64_t u = psgd_f64_bits(pow2[code[j]])                                         \
                     | ((uint64_t)((bits[j >> 3] >> (j & 7)) & 1) << 63);                 \
        double v; memcpy(&v, &u, 8);                                                      \
        out[j] += (T)(w * v);                                                             \
    }                                                                                     \
}
PSGD_NAT_ADD(f32, float)
PSGD_NAT_ADD(f64, double)

#endif  /* PSGD_QUANT_H */
