/* C loops of _lowbit.pyx: 16-bit float casts and min-max quantization. Their meaning is
   defined by the NumPy twin psgd/kernels_ref/_lowbit.py; these must agree with it exactly. */
#ifndef PSGD_LOWBIT_H
#define PSGD_LOWBIT_H

#include "_common.h"

/* 2^e as a double for -1022 <= e <= 1023 (exact, no libm) */
static inline double psgd_pow2(int64_t e) {
    uint64_t u = (uint64_t)(e + 1023) << 52;
    double v; memcpy(&v, &u, 8); return v;
}

/* ---- cast: the 16-bit codes of n coordinates (m mantissa bits, smallest normal exponent
   emin); returns nonzero if some |x| is above topbits (the bits of the largest finite
   value as a double), NaN or Inf. stochastic: u_k from z + (k+1) GAMMA. */
#define PSGD_CAST_BODY(SFX, T)                                                            \
static inline __attribute__((always_inline)) int psgd_cast_##SFX##_body(                    \
        const T *x, Py_ssize_t n, int m, int emin, uint64_t topbits, int stochastic,      \
        uint64_t z, uint16_t *code) {                                                     \
    uint64_t bad = 0;                                                                     \
    for (Py_ssize_t k = 0; k < n; k++) {                                                  \
        uint64_t u = psgd_f64_bits((double)x[k]);                                         \
        uint64_t ua = u & 0x7FFFFFFFFFFFFFFFULL;                                          \
        bad |= (uint64_t)(ua > topbits);                                                  \
        ua = ua > topbits ? 0 : ua;            /* keep the arithmetic defined */          \
        double a; memcpy(&a, &ua, 8);                                                     \
        int64_t e = (int64_t)(ua >> 52) - 1023;                                           \
        e = e < emin ? emin : e;                                                          \
        double q = a * psgd_pow2(m - e);       /* exact: a power-of-two scaling */        \
        double fl = (double)(int64_t)q;        /* floor: q >= 0 */                        \
        double nn;                                                                        \
        if (stochastic)                                                                   \
            nn = fl + (double)(psgd_u01(z + (uint64_t)(k + 1) * PSGD_GAMMA) < q - fl);    \
        else                                                                              \
            nn = (q + 0x1.0p52) - 0x1.0p52;    /* rint, ties to even (q < 2^52) */        \
        code[k] = (uint16_t)((((uint64_t)(e - emin)) << m) + (uint64_t)(int64_t)nn        \
                             + ((u >> 63) << 15));                                        \
    }                                                                                     \
    return bad != 0;                                                                      \
}
PSGD_CAST_BODY(f32, float)
PSGD_CAST_BODY(f64, double)

/* ---- min-max codes of the n coordinates of one bucket (lo, delta, L = 2^bits - 1) */
#define PSGD_MINMAX_BODY(SFX, T)                                                          \
static inline __attribute__((always_inline)) void psgd_minmax_##SFX##_body(                 \
        const T *x, Py_ssize_t n, double lo, double delta, double L, uint64_t z,          \
        uint32_t *code) {                                                                 \
    for (Py_ssize_t k = 0; k < n; k++) {                                                  \
        double q = delta > 0.0 ? ((double)x[k] - lo) / delta : 0.0;                       \
        double fl = (double)(int64_t)q;                                                   \
        double nn = fl + (double)(psgd_u01(z + (uint64_t)(k + 1) * PSGD_GAMMA) < q - fl); \
        nn = nn > L ? L : nn;                                                             \
        code[k] = (uint32_t)(int64_t)nn;                                                  \
    }                                                                                     \
}
PSGD_MINMAX_BODY(f32, float)
PSGD_MINMAX_BODY(f64, double)

PSGD_MULTIVERSION_RET(int, psgd_cast_f32, (const float *x, Py_ssize_t n, int m, int emin,
                      uint64_t t, int s, uint64_t z, uint16_t *c), (x, n, m, emin, t, s, z, c))
PSGD_MULTIVERSION_RET(int, psgd_cast_f64, (const double *x, Py_ssize_t n, int m, int emin,
                      uint64_t t, int s, uint64_t z, uint16_t *c), (x, n, m, emin, t, s, z, c))
PSGD_MULTIVERSION(psgd_minmax_f32, (const float *x, Py_ssize_t n, double lo, double dl,
                  double L, uint64_t z, uint32_t *c), (x, n, lo, dl, L, z, c))
PSGD_MULTIVERSION(psgd_minmax_f64, (const double *x, Py_ssize_t n, double lo, double dl,
                  double L, uint64_t z, uint32_t *c), (x, n, lo, dl, L, z, c))

/* the value of a 16-bit code (its exponent field is not all ones) */
static inline double psgd_cast_value(uint32_t c, int m, int emin) {
    uint32_t E = (c >> m) & ((1u << (15 - m)) - 1), mant = c & ((1u << m) - 1);
    double v = E == 0 ? (double)mant * psgd_pow2(emin - m)
                      : (double)(mant + (1u << m)) * psgd_pow2((int64_t)E - 1 + emin - m);
    return (c >> 15) ? -v : v;
}

/* code k (bits <= 8) of an LSB-first stream of nbytes bytes */
static inline uint32_t psgd_get_bits8(const uint8_t *s, Py_ssize_t nbytes, Py_ssize_t k, int bits) {
    uint64_t pos = (uint64_t)k * (uint64_t)bits;
    Py_ssize_t byte = (Py_ssize_t)(pos >> 3);
    uint32_t w = s[byte];
    if (byte + 1 < nbytes) w |= (uint32_t)s[byte + 1] << 8;
    return (w >> (pos & 7)) & ((1u << bits) - 1);
}

#endif  /* PSGD_LOWBIT_H */
