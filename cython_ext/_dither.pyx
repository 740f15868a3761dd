# cython: language_level=3
"""Random-dithering kernels: fused quantize+pack and unpack+validate+accumulate.

Their meaning (RNG, rounding, wire layout, error codes) is defined by the NumPy
twins in ``psgd/kernels_ref.py``; these must agree with them bit for bit. The
hot loops run without the GIL, walk blocks in an outer loop (no 64-bit division
per coordinate) and handle 5 coordinates per trit byte at a time.
"""

from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t
from libc.math cimport fabs, sqrt, nextafterf, INFINITY, NAN
from libc.string cimport memset

import numpy as np

cdef extern from *:
    """
    #include <string.h>
    #include <math.h>
    /* SplitMix64 finaliser of z = seed + (i+1)*GAMMA -> a double in [0, 1) (kernels_ref.py).
       z >> 11 < 2**53, so the signed conversion is exact (and vectorizes on AVX-512). */
    #define PSGD_GAMMA 0x9E3779B97F4A7C15ULL
    static inline __attribute__((always_inline)) double psgd_u01(uint64_t z) {
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
        z ^= z >> 31;
        return (double)(int64_t)(z >> 11) * 0x1.0p-53;
    }
    /* Explicit little-endian float32 load/store: the wire format is LE on any host. */
    static inline void psgd_store_f32le(uint8_t *p, float f) {
        uint32_t u; memcpy(&u, &f, 4);
        p[0] = (uint8_t)u; p[1] = (uint8_t)(u >> 8); p[2] = (uint8_t)(u >> 16); p[3] = (uint8_t)(u >> 24);
    }
    static inline uint32_t psgd_load_u32le(const uint8_t *p) {
        return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
    }
    static inline float psgd_u32_as_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

    /* The per-coordinate quantizers, written as flat branch-free loops over a chunk of one
       block so the compiler vectorizes them (they are the encode's whole cost; Cython cannot
       attach target attributes, hence C). Each is built twice: for the x86-64 baseline and,
       on GCC >= 12, for x86-64-v4 (AVX-512: 64-bit multiplies and int64->double in SIMD,
       about 3x faster), chosen at run time, so the module still runs on any x86-64.
       IEEE arithmetic without contraction (-ffp-contract=off) rounds identically in both.
       z is seed + j*GAMMA for the chunk's first coordinate j. */
    #define PSGD_BODIES(T, SFX)                                                               \
    static inline __attribute__((always_inline)) void psgd_trits_body_##SFX(                  \
            const T *x, Py_ssize_t n, double t, uint64_t z, uint8_t *tr) {                    \
        /* s = 1: y = |x|/t <= 1, floor(y) = 0 unless y = 1, and then u < y holds anyway:     \
           level = (u < y) is the spec's formula. t = inf stands for t = 0 (all zeros). */    \
        for (Py_ssize_t k = 0; k < n; k++) {                                                  \
            double xv = (double)x[k];                                                         \
            unsigned lev = psgd_u01(z + (uint64_t)(k + 1) * PSGD_GAMMA) < fabs(xv) / t;       \
            tr[k] = (uint8_t)(lev + (lev & (xv < 0)));                                        \
        }                                                                                     \
    }                                                                                         \
    static inline __attribute__((always_inline)) void psgd_codes_body_##SFX(                  \
            const T *x, Py_ssize_t n, double t, uint32_t levels, uint64_t z, uint32_t *code) {\
        double s = (double)levels;                                                            \
        for (Py_ssize_t k = 0; k < n; k++) {                                                  \
            double xv = (double)x[k];                                                         \
            double y = fabs(xv) / t * s;                                                      \
            int in = y < s;                  /* else level = s (also catches NaN) */          \
            double yc = in ? y : 0.0;        /* keeps the int conversion in range */          \
            double low = (double)(int32_t)yc; /* == floor(y) for 0 <= y < s < 2**31 */        \
            uint32_t lev = in ? (uint32_t)low + (psgd_u01(z + (uint64_t)(k + 1) * PSGD_GAMMA) \
                                                 < yc - low) : levels;                        \
            code[k] = (lev << 1) | (uint32_t)((xv < 0) & (lev != 0));                         \
        }                                                                                     \
    }
    PSGD_BODIES(float, f32)
    PSGD_BODIES(double, f64)

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
    #define PSGD_DISPATCH(SFX, T)                                                             \
    static void psgd_trits_base_##SFX(const T *x, Py_ssize_t n, double t, uint64_t z,         \
                                      uint8_t *tr) { psgd_trits_body_##SFX(x, n, t, z, tr); } \
    static void psgd_codes_base_##SFX(const T *x, Py_ssize_t n, double t, uint32_t s,         \
            uint64_t z, uint32_t *c) { psgd_codes_body_##SFX(x, n, t, s, z, c); }             \
    PSGD_V4 static void psgd_trits_v4_##SFX(const T *x, Py_ssize_t n, double t, uint64_t z,   \
                                            uint8_t *tr) { psgd_trits_body_##SFX(x, n, t, z, tr); } \
    PSGD_V4 static void psgd_codes_v4_##SFX(const T *x, Py_ssize_t n, double t, uint32_t s,   \
            uint64_t z, uint32_t *c) { psgd_codes_body_##SFX(x, n, t, s, z, c); }             \
    static inline void psgd_trits_##SFX(const T *x, Py_ssize_t n, double t, uint64_t z,       \
                                        uint8_t *tr) {                                        \
        if (PSGD_HAVE_V4 && psgd_use_v4) psgd_trits_v4_##SFX(x, n, t, z, tr);                 \
        else psgd_trits_base_##SFX(x, n, t, z, tr);                                           \
    }                                                                                         \
    static inline void psgd_codes_##SFX(const T *x, Py_ssize_t n, double t, uint32_t s,       \
                                        uint64_t z, uint32_t *c) {                            \
        if (PSGD_HAVE_V4 && psgd_use_v4) psgd_codes_v4_##SFX(x, n, t, s, z, c);               \
        else psgd_codes_base_##SFX(x, n, t, s, z, c);                                         \
    }
    PSGD_DISPATCH(f32, float)
    PSGD_DISPATCH(f64, double)
    """
    const uint64_t GAMMA "PSGD_GAMMA"
    const int HAVE_V4 "PSGD_HAVE_V4"
    int psgd_use_v4
    int psgd_cpu_has_v4() noexcept nogil
    double psgd_u01(uint64_t z) noexcept nogil
    void psgd_store_f32le(uint8_t *p, float f) noexcept nogil
    uint32_t psgd_load_u32le(const uint8_t *p) noexcept nogil
    float psgd_u32_as_f32(uint32_t u) noexcept nogil
    void psgd_trits_f32(const float *x, Py_ssize_t n, double t, uint64_t z, uint8_t *tr) noexcept nogil
    void psgd_trits_f64(const double *x, Py_ssize_t n, double t, uint64_t z, uint8_t *tr) noexcept nogil
    void psgd_codes_f32(const float *x, Py_ssize_t n, double t, uint32_t s, uint64_t z,
                        uint32_t *code) noexcept nogil
    void psgd_codes_f64(const double *x, Py_ssize_t n, double t, uint32_t s, uint64_t z,
                        uint32_t *code) noexcept nogil

psgd_use_v4 = psgd_cpu_has_v4()


def _isa_variants():
    """The quantizer builds this CPU can run, e.g. ['baseline', 'x86-64-v4'] (for tests)."""
    return ["baseline"] + (["x86-64-v4"] if psgd_cpu_has_v4() else [])


def _use_isa(name):
    """Select a quantizer build from :func:`_isa_variants` (tests compare each with the twin)."""
    global psgd_use_v4
    if name not in _isa_variants():
        raise ValueError(f"ISA variant {name!r} is not available; have {_isa_variants()}")
    psgd_use_v4 = name == "x86-64-v4"


# Must equal the constants of psgd/kernels_ref.py (tests/test_kernels.py checks).
cdef enum:
    CHUNK = 1280        # coordinates quantized per call: a multiple of 5 (whole trit bytes)
    C_NORM_2 = 0
    C_NORM_INF = 1
    C_ERR_OK = 0
    C_ERR_SCALE = 1
    C_ERR_TRIT = 2
    C_ERR_LEVEL = 3
    C_ERR_SIGN = 4
    C_ERR_PADDING = 5
NORM_2, NORM_INF = C_NORM_2, C_NORM_INF
ERR_OK, ERR_SCALE, ERR_TRIT, ERR_LEVEL, ERR_SIGN, ERR_PADDING = (
    C_ERR_OK, C_ERR_SCALE, C_ERR_TRIT, C_ERR_LEVEL, C_ERR_SIGN, C_ERR_PADDING)
MAX_LEVELS = 2**31 - 1

ctypedef fused real_in:
    float
    double

ctypedef fused real_out:
    float
    double

# _TRITS[5*byte + m] = trit m of byte (byte < 243): the decode lookup table.
cdef uint8_t _TRITS[243 * 5]
cdef int _b, _m, _v
for _b in range(243):
    _v = _b
    for _m in range(5):
        _TRITS[5 * _b + _m] = _v % 3
        _v //= 3


cdef inline Py_ssize_t _nblocks(Py_ssize_t d, Py_ssize_t bs) noexcept nogil:
    return (d + bs - 1) // bs


cdef inline Py_ssize_t _symbol_bits(Py_ssize_t levels) noexcept nogil:
    cdef Py_ssize_t b = 1
    while levels:
        b += 1
        levels >>= 1
    return b


cdef inline Py_ssize_t _symbols_nbytes(Py_ssize_t d, Py_ssize_t levels) noexcept nogil:
    if levels == 1:
        return (d + 4) // 5
    return (d * _symbol_bits(levels) + 7) // 8


cdef _check_common(Py_ssize_t d, Py_ssize_t block_size, Py_ssize_t levels):
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    if not 1 <= levels <= MAX_LEVELS:
        raise ValueError(f"levels must be in [1, {MAX_LEVELS}], got {levels}")
    if d < 0:
        raise ValueError(f"d must be >= 0, got {d}")


# ------------------------------------------------------------------ block scales

def block_scales(const real_in[::1] x, Py_ssize_t block_size, int norm_code):
    """Per-block norms of x rounded up to float32 (NaN/inf propagate; the caller checks)."""
    cdef Py_ssize_t d = x.shape[0]
    _check_common(d, block_size, 1)
    if norm_code != NORM_2 and norm_code != NORM_INF:
        raise ValueError(f"norm_code must be NORM_2 ({NORM_2}) or NORM_INF ({NORM_INF}), got {norm_code}")
    cdef Py_ssize_t nb = _nblocks(d, block_size)
    result = np.empty(nb, dtype=np.float32)
    cdef float[::1] out = result
    cdef Py_ssize_t blk, j, start, end
    cdef double acc, a
    cdef bint nan
    cdef float f
    with nogil:
        for blk in range(nb):
            start = blk * block_size
            end = start + block_size if d - start > block_size else d
            acc = 0.0
            if norm_code == C_NORM_INF:
                nan = False
                for j in range(start, end):
                    a = fabs(<double>x[j])
                    nan |= a != a          # NaN must propagate, as np.max does
                    if a > acc:
                        acc = a
                if nan:
                    acc = NAN
            else:
                for j in range(start, end):  # sequential float64 sum: the twin's cumsum order
                    a = <double>x[j]
                    acc += a * a
                acc = sqrt(acc)
            f = <float>acc
            if <double>f < acc:              # round up so that |x_j| <= t32
                f = nextafterf(f, INFINITY)
            out[blk] = f
    return result


# ------------------------------------------------------------------ encode

cdef inline void _trits(const real_in* x, Py_ssize_t n, double t, uint64_t z, uint8_t* tr) noexcept nogil:
    if real_in is float:
        psgd_trits_f32(x, n, t, z, tr)
    else:
        psgd_trits_f64(x, n, t, z, tr)


cdef inline void _codes(const real_in* x, Py_ssize_t n, double t, uint32_t s, uint64_t z,
                        uint32_t* code) noexcept nogil:
    if real_in is float:
        psgd_codes_f32(x, n, t, s, z, code)
    else:
        psgd_codes_f64(x, n, t, s, z, code)


cdef void _encode_trits(const real_in* x, Py_ssize_t d, const float* scales, Py_ssize_t bs,
                        uint64_t seed, uint8_t* out) noexcept nogil:
    # Quantize chunk by chunk into tr (a chunk never crosses a block), pack whenever
    # tr holds CHUNK trits; a trit byte may straddle two blocks.
    cdef uint8_t tr[CHUNK]
    cdef Py_ssize_t nb = _nblocks(d, bs), blk, j = 0, end, n, f = 0, p = 0
    cdef double t
    for blk in range(nb):
        end = j + bs if d - j > bs else d
        t = scales[blk]
        if t == 0.0:
            t = INFINITY                   # |x|/inf = 0: every trit of the block is 0
        while j < end:
            n = CHUNK - f if end - j > CHUNK - f else end - j
            _trits(x + j, n, t, seed + <uint64_t>j * GAMMA, tr + f)
            j += n
            f += n
            if f == CHUNK:
                _pack5(tr, CHUNK // 5, out + p)
                p += CHUNK // 5
                f = 0
    if f:
        while f % 5:                       # padding trits are 0
            tr[f] = 0
            f += 1
        _pack5(tr, f // 5, out + p)


cdef inline void _pack5(const uint8_t* tr, Py_ssize_t nbytes, uint8_t* out) noexcept nogil:
    cdef Py_ssize_t m
    for m in range(nbytes):
        out[m] = tr[5 * m] + 3 * tr[5 * m + 1] + 9 * tr[5 * m + 2] + 27 * tr[5 * m + 3] + 81 * tr[5 * m + 4]


cdef void _encode_bits(const real_in* x, Py_ssize_t d, const float* scales, Py_ssize_t bs,
                       Py_ssize_t levels, uint64_t seed, uint8_t* out) noexcept nogil:
    cdef uint32_t code[CHUNK]
    cdef Py_ssize_t nb = _nblocks(d, bs), blk, j = 0, end, n, k, p = 0
    cdef int b = <int>_symbol_bits(levels), nbits = 0
    cdef uint64_t acc = 0
    cdef double t
    for blk in range(nb):
        end = j + bs if d - j > bs else d
        t = scales[blk]
        while j < end:
            n = CHUNK if end - j > CHUNK else end - j
            if t == 0.0:
                memset(code, 0, n * sizeof(uint32_t))
            else:
                _codes(x + j, n, t, <uint32_t>levels, seed + <uint64_t>j * GAMMA, code)
            j += n
            for k in range(n):
                acc |= <uint64_t>code[k] << nbits   # nbits < 32 and b <= 32: fits in 64 bits
                nbits += b
                if nbits >= 32:
                    out[p] = <uint8_t>acc
                    out[p + 1] = <uint8_t>(acc >> 8)
                    out[p + 2] = <uint8_t>(acc >> 16)
                    out[p + 3] = <uint8_t>(acc >> 24)
                    p += 4
                    acc >>= 32
                    nbits -= 32
    while nbits > 0:                            # flush; the high bits of the last byte are 0
        out[p] = <uint8_t>acc
        p += 1
        acc >>= 8
        nbits -= 8


def dither_encode(const real_in[::1] x, const float[::1] scales, Py_ssize_t block_size,
                  Py_ssize_t levels, uint64_t seed, uint8_t[::1] out):
    """Quantize x with the given block scales and write the whole payload into ``out``."""
    cdef Py_ssize_t d = x.shape[0]
    _check_common(d, block_size, levels)
    cdef Py_ssize_t nb = _nblocks(d, block_size), i
    if scales.shape[0] != nb or out.shape[0] != 4 * nb + _symbols_nbytes(d, levels):
        raise ValueError("dither_encode: scales or out has the wrong length")
    for i in range(nb):
        if not (0.0 <= scales[i] <= 3.4028234663852886e38):   # finite, >= 0, not NaN
            raise ValueError("dither_encode: scales must be finite and >= 0")
    if d == 0:
        return
    with nogil:
        for i in range(nb):
            psgd_store_f32le(&out[4 * i], scales[i] + <float>0.0)  # -0.0 -> +0.0
        if levels == 1:
            _encode_trits(&x[0], d, &scales[0], block_size, seed, &out[4 * nb])
        else:
            _encode_bits(&x[0], d, &scales[0], block_size, levels, seed, &out[4 * nb])


# ------------------------------------------------------------------ decode

cdef Py_ssize_t _check_trits(const uint8_t* sym, Py_ssize_t n, Py_ssize_t d, int* code) noexcept nogil:
    cdef Py_ssize_t k
    cdef uint8_t worst = 0
    cdef uint32_t r, lim
    for k in range(n):                       # a max-reduction the compiler vectorizes
        if sym[k] > worst:
            worst = sym[k]
    if worst >= 243:
        for k in range(n):
            if sym[k] >= 243:
                code[0] = C_ERR_TRIT
                return k
    r = d % 5
    if r:                                    # trits past d must be 0: byte < 3**r
        lim = 1
        while r:
            lim *= 3
            r -= 1
        if sym[n - 1] >= lim:
            code[0] = C_ERR_PADDING
            return n - 1
    return -1


cdef void _add_trits(const uint8_t* sym, Py_ssize_t d, const float* scales, Py_ssize_t bs,
                     double w, real_out* out) noexcept nogil:
    cdef Py_ssize_t nb = _nblocks(d, bs), blk, j = 0, end, p = 0
    cdef int m = 0                           # j % 5
    cdef real_out vals[3]
    cdef const uint8_t* q
    cdef double t
    for blk in range(nb):
        end = j + bs if d - j > bs else d
        t = <double>scales[blk]
        # weight * (sign * (t * level / s)) for level 0, +1, -1 (s = 1), as the twin rounds it
        vals[0] = <real_out>(w * (t * 0.0))
        vals[1] = <real_out>(w * t)
        vals[2] = <real_out>(w * (-t))
        while j < end and m != 0:
            out[j] = out[j] + vals[_TRITS[5 * sym[p] + m]]
            j += 1
            m += 1
            if m == 5:
                m = 0
                p += 1
        while j + 5 <= end:
            q = &_TRITS[5 * sym[p]]
            out[j] = out[j] + vals[q[0]]
            out[j + 1] = out[j + 1] + vals[q[1]]
            out[j + 2] = out[j + 2] + vals[q[2]]
            out[j + 3] = out[j + 3] + vals[q[3]]
            out[j + 4] = out[j + 4] + vals[q[4]]
            j += 5
            p += 1
        while j < end:
            out[j] = out[j] + vals[_TRITS[5 * sym[p] + m]]
            j += 1
            m += 1
            if m == 5:
                m = 0
                p += 1


cdef Py_ssize_t _check_bits(const uint8_t* sym, Py_ssize_t n, Py_ssize_t d, Py_ssize_t levels,
                            int* code) noexcept nogil:
    cdef int b = <int>_symbol_bits(levels), nbits = 0
    cdef uint64_t acc = 0, c, mask = (<uint64_t>1 << b) - 1, s = <uint64_t>levels
    cdef Py_ssize_t j, p = 0
    for j in range(d):
        while nbits < b:                     # never reads past byte ceil((j+1)*b/8) - 1
            acc |= <uint64_t>sym[p] << nbits
            p += 1
            nbits += 8
        c = acc & mask
        acc >>= b
        nbits -= b
        if (c >> 1) > s:
            code[0] = C_ERR_LEVEL
            return j
        if c == 1:                           # level 0 with sign bit 1
            code[0] = C_ERR_SIGN
            return j
    if (d * b) % 8 and (sym[n - 1] >> ((d * b) % 8)) != 0:
        code[0] = C_ERR_PADDING
        return n - 1
    return -1


cdef void _add_bits(const uint8_t* sym, Py_ssize_t d, const float* scales, Py_ssize_t bs,
                    Py_ssize_t levels, double w, real_out* out) noexcept nogil:
    cdef Py_ssize_t nb = _nblocks(d, bs), blk, j = 0, end, p = 0
    cdef int b = <int>_symbol_bits(levels), nbits = 0
    cdef uint64_t acc = 0, c, mask = (<uint64_t>1 << b) - 1
    cdef double t, v, s = <double>levels
    for blk in range(nb):
        end = j + bs if d - j > bs else d
        t = <double>scales[blk]
        while j < end:
            while nbits < b:
                acc |= <uint64_t>sym[p] << nbits
                p += 1
                nbits += 8
            c = acc & mask
            acc >>= b
            nbits -= b
            v = t * <double>(c >> 1) / s
            if c & 1:
                v = -v
            out[j] = out[j] + <real_out>(w * v)
            j += 1


def dither_decode_add(const uint8_t[::1] payload, Py_ssize_t d, Py_ssize_t block_size,
                      Py_ssize_t levels, real_out[::1] out, double weight):
    """Validate ``payload``; if valid, ``out += weight * decoded``. Returns ``(code, where)``."""
    _check_common(d, block_size, levels)
    cdef Py_ssize_t nb = _nblocks(d, block_size), n = _symbols_nbytes(d, levels), i
    if payload.shape[0] != 4 * nb + n or out.shape[0] != d:
        raise ValueError("dither_decode_add: payload or out has the wrong length")
    if d == 0:
        return ERR_OK, -1
    scales_arr = np.empty(nb, dtype=np.float32)
    cdef float[::1] scales = scales_arr
    cdef uint32_t u
    cdef int code = C_ERR_OK
    cdef Py_ssize_t where = -1
    cdef const uint8_t* sym = &payload[4 * nb]
    with nogil:
        for i in range(nb):
            u = psgd_load_u32le(&payload[4 * i])
            if (u >> 31) or ((u >> 23) & 0xFF) == 0xFF:  # sign bit set, inf or NaN
                code = C_ERR_SCALE
                where = i
                break
            scales[i] = psgd_u32_as_f32(u)
        if code == C_ERR_OK:
            if levels == 1:
                where = _check_trits(sym, n, d, &code)
            else:
                where = _check_bits(sym, n, d, levels, &code)
        if code == C_ERR_OK:                   # only a fully valid payload touches out
            if levels == 1:
                _add_trits(sym, d, &scales[0], block_size, weight, &out[0])
            else:
                _add_bits(sym, d, &scales[0], block_size, levels, weight, &out[0])
    return code, where
