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

cdef extern from *:
    """
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
    """
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

# Must equal the constants of psgd/kernels_ref.py (tests check).
cdef enum:
    CHUNK = 4096
    C_ERR_OK = 0
    C_ERR_SCALE = 1
    C_ERR_LEVEL = 3
    C_ERR_SIGN = 4
    C_ERR_PADDING = 5
    C_ERR_WIDTH = 15
    C_ERR_CODE = 16
    C_ERR_SIZE = 17
    NATDITHER_MAX_LEVELS = 127
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
