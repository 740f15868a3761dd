/* C helpers of cython_ext/_elias.pyx: random dithering with the Elias-omega code: level codes and the MSB-first bit coder.
   Declared for Cython in the cdef extern block of _elias.pyx; only that module includes it. */
#ifndef PSGD_ELIAS_H
#define PSGD_ELIAS_H

#include "_common.h"
/* The random-dithering level code (level << 1 | sign) of n coordinates of one block with
   scale t > 0, exactly as psgd._dither computes it; z = seed + j0 * GAMMA. */
#define PSGD_E_BODY(SFX, T)                                                               \
static inline __attribute__((always_inline)) void psgd_e_codes_##SFX##_body(                \
        const T *x, Py_ssize_t n, double t, uint32_t levels, uint64_t z, uint32_t *code) {\
    double s = (double)levels;                                                            \
    for (Py_ssize_t k = 0; k < n; k++) {                                                  \
        double xv = (double)x[k];                                                         \
        double y = fabs(xv) / t * s;                                                      \
        int in = y < s;                                                                   \
        double yc = in ? y : 0.0;                                                         \
        double low = (double)(int32_t)yc;                                                 \
        uint32_t lev = in ? (uint32_t)low + (psgd_u01(z + (uint64_t)(k + 1) * PSGD_GAMMA)\
                                             < yc - low) : levels;                        \
        code[k] = (lev << 1) | (uint32_t)((xv < 0) & (lev != 0));                         \
    }                                                                                     \
}
PSGD_E_BODY(f32, float)
PSGD_E_BODY(f64, double)
#define PSGD_E_DISPATCH(SFX, T)                                                           \
PSGD_MULTIVERSION(psgd_e_codes_##SFX, (const T *x, Py_ssize_t n, double t, uint32_t s,    \
                  uint64_t z, uint32_t *c), (x, n, t, s, z, c))
PSGD_E_DISPATCH(f32, float)
PSGD_E_DISPATCH(f64, double)

/* ---- MSB-first bit writer (bit k of the stream is bit 7 - k % 8 of byte k / 8): bits
   collect in acc and leave 32 at a time */
typedef struct { uint8_t *out; Py_ssize_t p; uint64_t acc; int nbits; } psgd_bw;
static inline void psgd_bw_put(psgd_bw *w, uint64_t v, int len) {     /* len <= 32 */
    w->acc = (w->acc << len) | v;
    w->nbits += len;
    if (w->nbits >= 32) {
        uint32_t top;
        w->nbits -= 32;
        top = (uint32_t)(w->acc >> w->nbits);
        w->out[w->p] = (uint8_t)(top >> 24); w->out[w->p + 1] = (uint8_t)(top >> 16);
        w->out[w->p + 2] = (uint8_t)(top >> 8); w->out[w->p + 3] = (uint8_t)top;
        w->p += 4;
    }
}
static inline void psgd_bw_put_long(psgd_bw *w, uint64_t v, int len) {   /* len <= 64 */
    if (len > 32) { psgd_bw_put(w, v >> 32, len - 32); psgd_bw_put(w, v & 0xFFFFFFFFULL, 32); }
    else psgd_bw_put(w, v, len);
}
static inline void psgd_bw_flush(psgd_bw *w) {            /* pad with zeros to a byte */
    while (w->nbits > 0) {
        int take = w->nbits >= 8 ? 8 : w->nbits;
        w->out[w->p++] = (uint8_t)(((w->acc >> (w->nbits - take)) << (8 - take)) & 0xFF);
        w->nbits -= take;
    }
}
static inline int psgd_bitlen64(uint64_t v) { return v ? 64 - __builtin_clzll(v) : 0; }
/* Elias omega of n >= 1 as one right-aligned integer (n < 2^34: at most 45 bits) */
static inline uint64_t psgd_omega_code(uint64_t n, int *len) {
    uint64_t code = 0; int total = 1, l;        /* the final 0 bit */
    while (n > 1) { l = psgd_bitlen64(n); code |= n << total; total += l; n = (uint64_t)(l - 1); }
    *len = total;
    return code;
}
static inline int psgd_omega_len(uint64_t n) { int l; psgd_omega_code(n, &l); return l; }
/* omega codes of 1..1023 (at most 17 bits) */
#define PSGD_OMEGA_LUT 1024
static uint32_t psgd_omega_val[PSGD_OMEGA_LUT];
static uint8_t psgd_omega_bits[PSGD_OMEGA_LUT];
static inline void psgd_bw_omega(psgd_bw *w, uint64_t n) {
    if (n < PSGD_OMEGA_LUT) { psgd_bw_put(w, psgd_omega_val[n], psgd_omega_bits[n]); return; }
    int l; uint64_t c = psgd_omega_code(n, &l);
    psgd_bw_put_long(w, c, l);
}
/* a whole (gap, sign, level) triple; one put when both are small */
static inline void psgd_bw_triple(psgd_bw *w, uint64_t gap, uint32_t sign, uint64_t lev) {
    if (gap < PSGD_OMEGA_LUT && lev < PSGD_OMEGA_LUT) {
        int lg = psgd_omega_bits[gap], ll = psgd_omega_bits[lev];
        uint64_t v = ((uint64_t)psgd_omega_val[gap] << (ll + 1)) | ((uint64_t)sign << ll)
                     | psgd_omega_val[lev];
        psgd_bw_put_long(w, v, lg + 1 + ll);
    } else {
        psgd_bw_omega(w, gap); psgd_bw_put(w, sign, 1); psgd_bw_omega(w, lev);
    }
}
/* the decoder's table: the triple (gap, sign, level) that the next 12 bits start with,
   if it fits in them (len 0: it does not) */
typedef struct { uint16_t gap, lev; uint8_t sign, len; } psgd_tri;
static psgd_tri psgd_tri_lut[4096];
static void psgd_elias_init(void) {
    for (uint64_t n = 1; n < PSGD_OMEGA_LUT; n++) {
        int l; psgd_omega_val[n] = (uint32_t)psgd_omega_code(n, &l); psgd_omega_bits[n] = (uint8_t)l;
    }
    memset(psgd_tri_lut, 0, sizeof(psgd_tri_lut));
    for (uint64_t g = 1; g < 64; g++) for (uint64_t v = 1; v < 64; v++) for (uint32_t sg = 0; sg < 2; sg++) {
        int len = psgd_omega_bits[g] + 1 + psgd_omega_bits[v];
        if (len > 12) continue;
        uint32_t code = (psgd_omega_val[g] << (psgd_omega_bits[v] + 1)) | (sg << psgd_omega_bits[v])
                        | psgd_omega_val[v];
        uint32_t first = code << (12 - len), count = 1u << (12 - len);
        for (uint32_t i = 0; i < count; i++) {
            psgd_tri *e = &psgd_tri_lut[first + i];
            e->gap = (uint16_t)g; e->lev = (uint16_t)v; e->sign = (uint8_t)sg; e->len = (uint8_t)len;
        }
    }
}
static inline uint64_t psgd_load_u64be(const uint8_t *p) {
    uint64_t w; memcpy(&w, p, 8);
#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    w = __builtin_bswap64(w);
#endif
    return w;
}

/* ---- checked MSB-first bit reader over nbits bits */
typedef struct { const uint8_t *buf; uint64_t pos, end; } psgd_br;
static inline uint64_t psgd_br_read(psgd_br *r, int len) {   /* caller checked pos+len <= end */
    uint64_t v = 0;
    while (len > 0) {
        uint64_t byte = r->buf[r->pos >> 3];
        int off = (int)(r->pos & 7), take = 8 - off;
        if (take > len) take = len;
        v = (v << take) | ((byte >> (8 - off - take)) & ((1u << take) - 1));
        r->pos += take;
        len -= take;
    }
    return v;
}
/* Elias omega decode: 0 ok (value in *out), 1 truncated, 2 too large (a group > 34 bits) */
static inline int psgd_br_omega(psgd_br *r, uint64_t *out) {
    uint64_t n = 1;
    for (;;) {
        if (r->pos >= r->end) return 1;
        if (!((r->buf[r->pos >> 3] >> (7 - (r->pos & 7))) & 1)) { r->pos++; *out = n; return 0; }
        if (n + 1 > 34) return 2;
        if (r->pos + n + 1 > r->end) return 1;
        n = psgd_br_read(r, (int)(n + 1));
    }
}

#endif  /* PSGD_ELIAS_H */
