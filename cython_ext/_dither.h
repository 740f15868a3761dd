/* C helpers of cython_ext/_dither.pyx: random dithering (dense): the b-bit code writer/reader and the quantizer loops.
   Declared for Cython in the cdef extern block of _dither.pyx; only that module includes it. */
#ifndef PSGD_DITHER_H
#define PSGD_DITHER_H

#include "_common.h"

static inline void psgd_store_u64le(uint8_t *p, uint64_t v) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    memcpy(p, &v, 8);
}

/* b-bit codes <-> LSB-first bit stream, for s > 1. A chunk starts on a byte boundary.
   pack writes ceil(n*b/8) bytes plus up to 8 bytes of slack into stage. */
static Py_ssize_t psgd_pack(const uint32_t *c, Py_ssize_t n, int b, uint8_t *stage) {
    uint64_t acc = 0; int nbits = 0; Py_ssize_t p = 0, k = 0;
    if (b <= 8) {
        /* 8 codes fill exactly b bytes: build them as one word and store 8 bytes (the
           next group overwrites the zero bytes past b). The groups are independent, so
           this runs at the store rate, not at the one-code-at-a-time chain below. */
        for (; k + 8 <= n; k += 8, p += b) {
            uint64_t w = 0;
            for (int m = 0; m < 8; m++)
                w |= (uint64_t)c[k + m] << (m * b);
            psgd_store_u64le(stage + p, w);
        }
    }
    for (; k < n; k++) {                      /* branch-free: b does not divide 32 */
        acc |= (uint64_t)c[k] << nbits;        /* nbits < 32, b <= 32: fits in 64 bits */
        nbits += b;
        psgd_store_u32le(stage + p, (uint32_t)acc);
        int full = nbits >> 5;
        p += 4 * full;
        acc >>= 32 * full;
        nbits &= 31;
    }
    psgd_store_u32le(stage + p, (uint32_t)acc);
    return (n * b + 7) / 8;
}
/* avail = bytes readable from sym; the n codes lie inside them. */
static void psgd_unpack(const uint8_t *sym, Py_ssize_t avail, Py_ssize_t n, int b, uint32_t *c) {
    uint64_t mask = ((uint64_t)1 << b) - 1;
    Py_ssize_t k = 0, m;
    /* codes 8g..8g+7 fill bytes b*g..b*g+b-1: one 8-byte load each at a fixed offset and
       shift; only while every load stays inside the stream (the last ~8 bytes go below) */
    if (b <= 8) {                             /* the 8 codes of a group: one 8-byte load */
        for (; k + 8 <= n && k / 8 * b + 8 <= avail; k += 8) {
            uint64_t w = psgd_load_u64le(sym + k / 8 * b);
            for (m = 0; m < 8; m++)
                c[k + m] = (uint32_t)((w >> (m * b)) & mask);
        }
    }
    int off[8], sh[8];
    for (m = 0; m < 8; m++) { off[m] = (int)(m * b >> 3); sh[m] = (int)(m * b & 7); }
    for (; k + 8 <= n && (k + 8) / 8 * b + 8 <= avail; k += 8) {
        const uint8_t *g = sym + k / 8 * b;
        for (m = 0; m < 8; m++)
            c[k + m] = (uint32_t)((psgd_load_u64le(g + off[m]) >> sh[m]) & mask);
    }
    for (; k < n; k++) {
        Py_ssize_t byte = k * b >> 3;
        uint64_t w = 0;
        for (int i = 0; i < 5 && byte + i < avail; i++)
            w |= (uint64_t)sym[byte + i] << (8 * i);
        c[k] = (uint32_t)((w >> (k * b & 7)) & mask);
    }
}

/* The per-coordinate arithmetic: flat branch-free loops over a chunk of one block, so
   the compiler vectorizes them (they are most of the cost; Cython cannot attach target
   attributes, hence C). Each is built twice: for the x86-64 baseline and, on GCC >= 12,
   for x86-64-v4 (AVX-512 has the 64-bit multiplies and int64->double conversions that
   SplitMix64 needs; ~3x faster), picked at run time so the module runs on any x86-64.
   IEEE arithmetic without contraction (-ffp-contract=off) rounds identically in both.
   z is seed + j*GAMMA for the chunk's first coordinate j. */
#define PSGD_BODIES(T, SFX)                                                               \
static inline __attribute__((always_inline)) void psgd_trits_##SFX##_body(                \
        const T *x, Py_ssize_t n, double t, uint64_t z, uint8_t *tr) {                    \
    /* s = 1: y = |x|/t <= 1, floor(y) = 0 unless y = 1, and then u < y holds anyway:     \
       level = (u < y) is the spec's formula. t = inf stands for t = 0 (all zeros). */    \
    for (Py_ssize_t k = 0; k < n; k++) {                                                  \
        double xv = (double)x[k];                                                         \
        unsigned lev = psgd_u01(z + (uint64_t)(k + 1) * PSGD_GAMMA) < fabs(xv) / t;       \
        tr[k] = (uint8_t)(lev + (lev & (xv < 0)));                                        \
    }                                                                                     \
}                                                                                         \
static inline __attribute__((always_inline)) void psgd_codes_##SFX##_body(                \
        const T *x, Py_ssize_t n, double t, uint32_t levels, uint64_t z, uint32_t *code) {\
    double s = (double)levels;                                                            \
    for (Py_ssize_t k = 0; k < n; k++) {                                                  \
        double xv = (double)x[k];                                                         \
        double y = fabs(xv) / t * s;                                                      \
        /* y >= s or NaN gives yc = s, low = s, u < 0 false: level s, as specified; else  \
           (int32_t)y == floor(y) for 0 <= y < s < 2**31. Written without a conditional  \
           level so that GCC vectorizes the loop. */                                      \
        double yc = y < s ? y : s;                                                        \
        int32_t low = (int32_t)yc;                                                        \
        double u = psgd_u01(z + (uint64_t)(k + 1) * PSGD_GAMMA);                          \
        uint32_t lev = (uint32_t)low + (uint32_t)(u < yc - (double)low);                  \
        lev = lev > levels ? levels : lev;                                                \
        code[k] = (lev << 1) | ((uint32_t)(xv < 0) & (uint32_t)(lev != 0));               \
    }                                                                                     \
}                                                                                         \
static inline __attribute__((always_inline)) void psgd_values_##SFX##_body(               \
        const uint32_t *c, Py_ssize_t n, double t, double s, double w, T *out) {          \
    /* out += weight * (sign * (t * level / s)), the double product cast to T */          \
    for (Py_ssize_t k = 0; k < n; k++) {                                                  \
        double v = t * (double)(int32_t)(c[k] >> 1) / s;                                  \
        v = (c[k] & 1) ? -v : v;                                                          \
        out[k] = out[k] + (T)(w * v);                                                     \
    }                                                                                     \
}                                                                                         \
static inline __attribute__((always_inline)) void psgd_absmax_##SFX##_body(               \
        const T *x, Py_ssize_t n, double *result) {                                       \
    /* max |x| on the bit patterns: for sign-cleared IEEE values integer order is value   \
       order, and every NaN lies above inf, so NaN propagates (as np.max) and the         \
       reduction vectorizes, which a float max with NaN semantics does not. */           \
    PSGD_UINT_##SFX m = 0, u;                                                             \
    for (Py_ssize_t k = 0; k < n; k++) {                                                  \
        memcpy(&u, x + k, sizeof(T));                                                     \
        u &= PSGD_ABS_##SFX;                                                              \
        m = u > m ? u : m;                                                                \
    }                                                                                     \
    T v; memcpy(&v, &m, sizeof(T));                                                       \
    *result = (double)v;                                                                  \
}
/* The 2-norm block scale, ceil_f32(sqrt(sum of x_j^2)), the sum in float64 and sequential in
   index order (the twin's cumsum). That order is one dependency chain of adds (~3 cycles
   per coordinate, 0.35 of np.copyto at d = 10^7), so first sum in 32 independent lanes
   (vectorized) and bound the difference: the products a*a are the same in both orders and
   nonnegative, so any order's sum is within gamma_(n-1) S of the exact S, and the two
   differ by at most ~2 n u S_par (u = 2^-53; 4 n u is used). When that whole interval
   rounds to one float32 (all but ~n u / 2^-24 of the blocks), it is the sequential
   result; otherwise (or non-finite) the sequential sum is computed. Bytes never change.
   nt > 1 threads sum one block (the whole vector, by default) in nt ranges. */
static inline float psgd_ceil_f32(double v) {
    float f = (float)v;
    if ((double)f < v)                       /* round up so that |x_j| <= t32 */
        f = nextafterf(f, INFINITY);
    return f;
}
#define PSGD_LANES 32
#define PSGD_NORM2(T, SFX)                                                                \
static inline __attribute__((always_inline)) double psgd_sumsq_lanes_##SFX##_body(        \
        const T *x, Py_ssize_t n) {                                                       \
    double acc[PSGD_LANES] = {0.0};                                                       \
    Py_ssize_t k = 0;                                                                     \
    for (; k + PSGD_LANES <= n; k += PSGD_LANES)                                          \
        for (int l = 0; l < PSGD_LANES; l++) {                                            \
            double a = (double)x[k + l];                                                  \
            acc[l] += a * a;                                                              \
        }                                                                                 \
    for (; k < n; k++) {                                                                  \
        double a = (double)x[k];                                                          \
        acc[0] += a * a;                                                                  \
    }                                                                                     \
    for (int w = PSGD_LANES / 2; w >= 1; w /= 2)                                          \
        for (int l = 0; l < w; l++)                                                       \
            acc[l] += acc[l + w];                                                         \
    return acc[0];                                                                        \
}                                                                                         \
PSGD_MULTIVERSION_RET(double, psgd_sumsq_lanes_##SFX, (const T *x, Py_ssize_t n), (x, n))  \
static float psgd_scale2_##SFX(const T *x, Py_ssize_t n, int nt) {                        \
    if (n >= 64) {                                                                        \
        /* on nt threads: lane sums of nt ranges, added in range order. Still some order  \
           of the same n products, so the bound below holds and the bytes are the same */ \
        double part[PSGD_MAX_THREADS], s = 0.0;                                           \
        if (nt > 1) {                                                                     \
            _Pragma("omp parallel for num_threads(nt) schedule(static, 1)")               \
            for (int t = 0; t < nt; t++) {                                                \
                Py_ssize_t lo, hi;                                                        \
                psgd_split(n, nt, t, &lo, &hi);                                           \
                part[t] = psgd_sumsq_lanes_##SFX(x + lo, hi - lo);                        \
            }                                                                             \
            for (int t = 0; t < nt; t++)                                                  \
                s += part[t];                                                             \
        } else                                                                            \
            s = psgd_sumsq_lanes_##SFX(x, n);                                             \
        if (s <= DBL_MAX) {                  /* finite (NaN compares false) */            \
            double delta = s * ((double)n * 0x1p-51);                                     \
            float lo = psgd_ceil_f32(sqrt(s - delta)), hi = psgd_ceil_f32(sqrt(s + delta)); \
            if (lo == hi)                                                                 \
                return lo;                                                                \
        }                                                                                 \
    }                                                                                     \
    double acc = 0.0;                        /* sequential: the defining order */         \
    for (Py_ssize_t k = 0; k < n; k++) {                                                  \
        double a = (double)x[k];                                                          \
        acc += a * a;                                                                     \
    }                                                                                     \
    return psgd_ceil_f32(sqrt(acc));                                                      \
}
#define PSGD_UINT_f32 uint32_t
#define PSGD_UINT_f64 uint64_t
#define PSGD_ABS_f32 0x7FFFFFFFu
#define PSGD_ABS_f64 0x7FFFFFFFFFFFFFFFull
PSGD_BODIES(float, f32)
PSGD_BODIES(double, f64)

#define PSGD_ALL(T, SFX)                                                                  \
PSGD_MULTIVERSION(psgd_trits_##SFX, (const T *x, Py_ssize_t n, double t, uint64_t z,      \
                  uint8_t *tr), (x, n, t, z, tr))                                         \
PSGD_MULTIVERSION(psgd_codes_##SFX, (const T *x, Py_ssize_t n, double t, uint32_t s,      \
                  uint64_t z, uint32_t *c), (x, n, t, s, z, c))                           \
PSGD_MULTIVERSION(psgd_values_##SFX, (const uint32_t *c, Py_ssize_t n, double t,          \
                  double s, double w, T *out), (c, n, t, s, w, out))                      \
PSGD_MULTIVERSION(psgd_absmax_##SFX, (const T *x, Py_ssize_t n, double *r), (x, n, r))
PSGD_ALL(float, f32)
PSGD_ALL(double, f64)
PSGD_NORM2(float, f32)
PSGD_NORM2(double, f64)

#endif  /* PSGD_DITHER_H */
