/* C helpers of cython_ext/_elias.pyx: random dithering with the Elias-omega code: level codes and the MSB-first bit coder.
   Declared for Cython in the cdef extern block of _elias.pyx; only that module includes it. */
#ifndef PSGD_ELIAS_H
#define PSGD_ELIAS_H

#include "_common.h"
/* The random-dithering level code (level << 1 | sign) of n coordinates of one block with
   scale t > 0, exactly as psgd._dither computes it; z = seed + j0 * GAMMA. Written with
   integer masks instead of ?: on FP compares (which -ftrapping-math keeps as branches) so
   that the loop vectorizes: in = y < s, yc = in ? y : 0, trunc(yc) < 2^31 is the same
   through int64 as through int32. */
#define PSGD_E_BODY(SFX, T)                                                               \
static inline __attribute__((always_inline)) void psgd_e_codes_##SFX##_body(                \
        const T *x, Py_ssize_t n, double t, uint32_t levels, uint64_t z, uint32_t *code) {\
    const double s = (double)levels;                                                      \
    const uint64_t s64 = levels;                                                          \
    for (Py_ssize_t k = 0; k < n; k++) {                                                  \
        double xv = (double)x[k];                                                         \
        double y = fabs(xv) / t * s;                                                      \
        uint64_t m_in = -(uint64_t)(y < s);                                               \
        uint64_t ycb = psgd_f64_bits(y) & m_in;                                           \
        double yc; memcpy(&yc, &ycb, 8);                                                  \
        int64_t lowi = (int64_t)yc;                                                       \
        double low = (double)lowi;                                                        \
        uint64_t r = psgd_mix64(z + (uint64_t)(k + 1) * PSGD_GAMMA) >> 11;                \
        uint64_t up = (uint64_t)((double)(int64_t)r * 0x1.0p-53 < yc - low);              \
        uint64_t lev = (((uint64_t)lowi + up) & m_in) | (s64 & ~m_in);                    \
        uint64_t neg = (uint64_t)(xv < 0);                                                \
        code[k] = (uint32_t)((lev << 1) | (neg & (uint64_t)(lev != 0)));                  \
    }                                                                                     \
}
PSGD_E_BODY(f32, float)
PSGD_E_BODY(f64, double)
#define PSGD_E_DISPATCH(SFX, T)                                                           \
PSGD_MULTIVERSION(psgd_e_codes_##SFX, (const T *x, Py_ssize_t n, double t, uint32_t s,    \
                  uint64_t z, uint32_t *c), (x, n, t, s, z, c))
PSGD_E_DISPATCH(f32, float)
PSGD_E_DISPATCH(f64, double)

/* ---- MSB-first bit writer (bit k of the stream is bit 7 - k % 8 of byte k / 8). The
   pending bits sit at the top of acc (nbits <= 7 between puts); a put adds up to 56 bits
   and then every whole byte leaves with one unaligned 8-byte big-endian store (its low
   bytes are zeros that later stores overwrite), so a whole triple costs one put. cap is
   the size of the buffer: within 8 bytes of it the bytes are stored one at a time. */
typedef struct { uint8_t *out; Py_ssize_t p, cap; uint64_t acc; int nbits; } psgd_bw;
static inline void psgd_store_u64be(uint8_t *p, uint64_t v) {
#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    memcpy(p, &v, 8);
}
static inline void psgd_bw_put56(psgd_bw *w, uint64_t v, int len) {   /* v < 2^len, len <= 56 */
    /* (v << 1) << (63 - nbits - len): both shifts < 64 also for len = 0 */
    w->acc |= (v << 1) << (63 - w->nbits - len);
    w->nbits += len;
    int nbytes = w->nbits >> 3;
    if (w->p + 8 <= w->cap) psgd_store_u64be(w->out + w->p, w->acc);
    else for (int q = 0; q < nbytes; q++) w->out[w->p + q] = (uint8_t)(w->acc >> (56 - 8 * q));
    w->p += nbytes;
    w->acc <<= 8 * nbytes;                                  /* 8 * nbytes <= 56 */
    w->nbits &= 7;
}
static inline void psgd_bw_put(psgd_bw *w, uint64_t v, int len) {     /* len <= 32 */
    psgd_bw_put56(w, v, len);
}
static inline void psgd_bw_put_long(psgd_bw *w, uint64_t v, int len) {   /* len <= 64 */
    if (len > 32) { psgd_bw_put56(w, v >> 32, len - 32); psgd_bw_put56(w, v & 0xFFFFFFFFULL, 32); }
    else psgd_bw_put56(w, v, len);
}
static inline void psgd_bw_flush(psgd_bw *w) {            /* pad with zeros to a byte */
    if (w->nbits > 0) { w->out[w->p++] = (uint8_t)(w->acc >> 56); w->acc = 0; w->nbits = 0; }
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
        psgd_bw_put56(w, v, lg + 1 + ll);                 /* <= 17 + 1 + 17 bits */
    } else {
        psgd_bw_omega(w, gap); psgd_bw_put(w, sign, 1); psgd_bw_omega(w, lev);
    }
}
/* the triples of the nonzero codes of code[0..m) (coordinates j0..j0+m), *prev the index
   of the previous nonzero. Branch-free for the common case (gap and level in the tables):
   a zero code puts 0 bits, so a mix of zeros and nonzeros costs no mispredictions. */
static void psgd_e_write(const uint32_t *code, Py_ssize_t m, Py_ssize_t j0, Py_ssize_t *prev,
                         psgd_bw *w) {
    Py_ssize_t pv = *prev;
    for (Py_ssize_t k = 0; k < m; k++) {
        uint32_t c = code[k];
        uint64_t gap = (uint64_t)(j0 + k - pv), lev = c >> 1;
        if ((gap | lev) >= PSGD_OMEGA_LUT) {              /* long gap or high level */
            if (c) { psgd_bw_triple(w, gap, c & 1, lev); pv = j0 + k; }
            continue;
        }
        uint64_t nz = -(uint64_t)(c != 0);
        int lg = psgd_omega_bits[gap], ll = psgd_omega_bits[lev];
        uint64_t v = ((uint64_t)psgd_omega_val[gap] << (ll + 1)) | ((uint64_t)(c & 1) << ll)
                     | psgd_omega_val[lev];
        psgd_bw_put56(w, v & nz, (lg + 1 + ll) & (int)nz);
        pv = c ? j0 + k : pv;
    }
    *prev = pv;
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
