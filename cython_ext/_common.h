/* C helpers shared by psgd's Cython kernels (the .pyx files beside it, via _common.pxd).

   Everything is static: each extension module gets its own copy, in particular its own
   psgd_use_v4 flag, so _use_isa() of one module never switches another. */
#ifndef PSGD_COMMON_H
#define PSGD_COMMON_H

#include <stdint.h>
#include <string.h>
#include <math.h>
#include <float.h>

/* ---- counter-based SplitMix64 (psgd/kernels_ref.py): the j-th output of a seed is the
   finaliser of z = seed + (j+1)*GAMMA, so any coordinate's number is computed directly. */
#define PSGD_GAMMA 0x9E3779B97F4A7C15ULL
static inline uint64_t psgd_mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}
/* -> a double in [0, 1). z >> 11 < 2**53, so the signed conversion is exact (and
   vectorizes on AVX-512). */
static inline __attribute__((always_inline)) double psgd_u01(uint64_t z) {
    return (double)(int64_t)(psgd_mix64(z) >> 11) * 0x1.0p-53;
}

/* ---- bit casts */
static inline uint32_t psgd_f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline uint64_t psgd_f64_bits(double f) { uint64_t u; memcpy(&u, &f, 8); return u; }
static inline float psgd_u32_as_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

/* ---- explicit little-endian loads/stores: the wire format is LE on any host */
static inline void psgd_store_u32le(uint8_t *p, uint32_t u) {
    p[0] = (uint8_t)u; p[1] = (uint8_t)(u >> 8); p[2] = (uint8_t)(u >> 16); p[3] = (uint8_t)(u >> 24);
}
static inline void psgd_store_f32le(uint8_t *p, float f) { psgd_store_u32le(p, psgd_f32_bits(f)); }
static inline uint32_t psgd_load_u32le(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
/* ---- LSB-first bit writer into an exact-size buffer (bit k of the stream is bit k % 8 of
   byte k / 8): bits collect in acc and leave 32 at a time; flush writes the partial bytes */
typedef struct { uint8_t *out; Py_ssize_t p; uint64_t acc; int nbits; } psgd_lsb_bw;
static inline void psgd_lsb_put(psgd_lsb_bw *w, uint64_t v, int len) {  /* v < 2^len, len <= 32 */
    w->acc |= v << w->nbits;                 /* nbits < 32 here: fits in 64 bits */
    w->nbits += len;
    if (w->nbits >= 32) {
        psgd_store_u32le(w->out + w->p, (uint32_t)w->acc);
        w->p += 4; w->acc >>= 32; w->nbits -= 32;
    }
}
static inline void psgd_lsb_flush(psgd_lsb_bw *w) {
    while (w->nbits > 0) { w->out[w->p++] = (uint8_t)w->acc; w->acc >>= 8; w->nbits -= 8; }
}
static inline uint64_t psgd_load_u64le(const uint8_t *p) {
    uint64_t v; memcpy(&v, p, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    return v;
}

/* ---- ISA dispatch. Hot loops are built for the x86-64 baseline and, on GCC >= 12, for
   x86-64-v4 (AVX-512 has the 64-bit multiplies and int64->double conversions that
   SplitMix64 needs), picked at run time so a module runs on any x86-64. IEEE arithmetic
   without contraction (-ffp-contract=off) rounds identically in both builds. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12
#define PSGD_HAVE_V4 1
#define PSGD_V4 __attribute__((target("arch=x86-64-v4")))
#else
#define PSGD_HAVE_V4 0
#define PSGD_V4
#endif
static int psgd_use_v4 = 0;   /* set at import from the CPU (tests may switch it) */
static int psgd_cpu_has_v4(void) {
#if PSGD_HAVE_V4
    __builtin_cpu_init();
    return __builtin_cpu_supports("x86-64-v4") != 0;
#else
    return 0;
#endif
}
static inline void psgd_set_use_v4(int on) { psgd_use_v4 = on; }

/* NAME_base and NAME_v4 from NAME_body (an always_inline function), and NAME dispatching
   between them; PSGD_MULTIVERSION_RET for a body that returns RET */
#define PSGD_MULTIVERSION(NAME, PARAMS, ARGS)                                             \
static void NAME##_base PARAMS { NAME##_body ARGS; }                                      \
PSGD_V4 static void NAME##_v4 PARAMS { NAME##_body ARGS; }                                \
static inline void NAME PARAMS {                                                          \
    if (PSGD_HAVE_V4 && psgd_use_v4) NAME##_v4 ARGS; else NAME##_base ARGS;               \
}
#define PSGD_MULTIVERSION_RET(RET, NAME, PARAMS, ARGS)                                    \
static RET NAME##_base PARAMS { return NAME##_body ARGS; }                                \
PSGD_V4 static RET NAME##_v4 PARAMS { return NAME##_body ARGS; }                          \
static inline RET NAME PARAMS {                                                           \
    return (PSGD_HAVE_V4 && psgd_use_v4) ? NAME##_v4 ARGS : NAME##_base ARGS;             \
}

/* ---- OpenMP threads (issue 11): a kernel call runs on psgd_threads_for(d, units) threads.
   Built without OpenMP (setup.py found no -fopenmp, or PSGD_OPENMP=0) the pragmas are
   ignored and this is always 1. Each module keeps its own copy of the setting (like
   psgd_use_v4); psgd.kernels.set_threads sets them all. Threads only split a vector into
   contiguous ranges of whole units (chunks of codes, blocks): each output byte and each
   out[j] += v_j is computed by the same instructions as on one thread, so results never
   depend on the thread count. */
#ifdef _OPENMP
#include <omp.h>
#define PSGD_HAVE_OPENMP 1
static inline int psgd_omp_max_threads(void) { return omp_get_max_threads(); }
#else
#define PSGD_HAVE_OPENMP 0
static inline int psgd_omp_max_threads(void) { return 0; }
#endif
#define PSGD_MAX_THREADS 1024                 /* per-thread result arrays live on the stack */
static int psgd_threads = 1;                  /* 1: never start a parallel region */
static Py_ssize_t psgd_parallel_min = 1 << 20;  /* coordinates; set with the count */
static inline void psgd_set_threads(int n, Py_ssize_t min_size) {
    psgd_threads = n < 1 ? 1 : n > PSGD_MAX_THREADS ? PSGD_MAX_THREADS : n;
    psgd_parallel_min = min_size < 0 ? 0 : min_size;
}
/* threads for a call over d coordinates made of `units` independent pieces */
static inline int psgd_threads_for(Py_ssize_t d, Py_ssize_t units) {
    if (!PSGD_HAVE_OPENMP || psgd_threads <= 1 || d < psgd_parallel_min || units < 2)
        return 1;
    return units < psgd_threads ? (int)units : psgd_threads;
}
/* [*lo, *hi): part t of T of n units, the first n % T parts one unit longer */
static inline void psgd_split(Py_ssize_t n, int T, int t, Py_ssize_t *lo, Py_ssize_t *hi) {
    Py_ssize_t q = n / T, r = n % T;
    *lo = t * q + (t < r ? t : r);
    *hi = *lo + q + (t < r ? 1 : 0);
}
/* how many threads an OpenMP region asking for n really gets (1 without OpenMP): lets
   tests check that the build used -fopenmp and that a thread count takes effect */
static inline int psgd_team_size(int n) {
    int got = 1;
#ifdef _OPENMP
    #pragma omp parallel num_threads(n)
    {
        #pragma omp single
        got = omp_get_num_threads();
    }
#endif
    (void)n;
    return got;
}

#endif
