# cython: language_level=3
"""Declarations and inline helpers shared by psgd's Cython kernels (``cimport``-ed, no module).

The C side is _common.h; each kernel module compiles its own static copy of it.
"""

from libc.stdint cimport uint8_t, uint32_t, uint64_t

cdef extern from "_common.h":
    const uint64_t GAMMA "PSGD_GAMMA"
    const int HAVE_V4 "PSGD_HAVE_V4"
    uint64_t psgd_mix64(uint64_t z) noexcept nogil
    double psgd_u01(uint64_t z) noexcept nogil
    uint32_t psgd_f32_bits(float f) noexcept nogil
    uint64_t psgd_f64_bits(double f) noexcept nogil
    float psgd_u32_as_f32(uint32_t u) noexcept nogil
    void psgd_store_u32le(uint8_t *p, uint32_t u) noexcept nogil
    void psgd_store_f32le(uint8_t *p, float f) noexcept nogil
    uint32_t psgd_load_u32le(const uint8_t *p) noexcept nogil
    uint64_t psgd_load_u64le(const uint8_t *p) noexcept nogil
    ctypedef struct psgd_lsb_bw:
        uint8_t *out
        Py_ssize_t p
        uint64_t acc
        int nbits
    void psgd_lsb_put(psgd_lsb_bw *w, uint64_t v, int len) noexcept nogil
    void psgd_lsb_flush(psgd_lsb_bw *w) noexcept nogil
    int psgd_cpu_has_v4() noexcept nogil
    void psgd_set_use_v4(int on) noexcept nogil
    # OpenMP threads (see _common.h): all 1 / no-ops in a build without OpenMP
    const int HAVE_OPENMP "PSGD_HAVE_OPENMP"
    const int MAX_THREADS "PSGD_MAX_THREADS"
    int psgd_omp_max_threads() noexcept nogil
    void psgd_set_threads(int n, Py_ssize_t min_size) noexcept nogil
    int psgd_threads_for(Py_ssize_t d, Py_ssize_t units) noexcept nogil
    void psgd_split(Py_ssize_t n, int T, int t, Py_ssize_t *lo, Py_ssize_t *hi) noexcept nogil
    int psgd_team_size(int n) noexcept nogil

# The decoders' error codes. _errors.h is written by setup.py from psgd/kernels_ref/errors.py,
# the one table of them (the Python twins import it; tests check the compiled modules agree).
cdef extern from "_errors.h":
    enum:
        C_ERR_OK "PSGD_ERR_OK"
        C_ERR_SCALE "PSGD_ERR_SCALE"
        C_ERR_TRIT "PSGD_ERR_TRIT"
        C_ERR_LEVEL "PSGD_ERR_LEVEL"
        C_ERR_SIGN "PSGD_ERR_SIGN"
        C_ERR_PADDING "PSGD_ERR_PADDING"
        C_ERR_ZERO_BLOCK "PSGD_ERR_ZERO_BLOCK"
        C_ERR_LENGTH "PSGD_ERR_LENGTH"
        C_ERR_VALUE "PSGD_ERR_VALUE"
        C_ERR_VARINT "PSGD_ERR_VARINT"
        C_ERR_NONCANONICAL "PSGD_ERR_NONCANONICAL"
        C_ERR_INDEX "PSGD_ERR_INDEX"
        C_ERR_TRAILING "PSGD_ERR_TRAILING"
        C_ERR_WIDTH "PSGD_ERR_WIDTH"
        C_ERR_CODE "PSGD_ERR_CODE"
        C_ERR_SIZE "PSGD_ERR_SIZE"
        C_ERR_STREAM "PSGD_ERR_STREAM"
        C_ERR_RANGE "PSGD_ERR_RANGE"

ctypedef fused real_in:
    float
    double

ctypedef fused real_out:
    float
    double


cdef inline Py_ssize_t _nblocks(Py_ssize_t d, Py_ssize_t bs) noexcept nogil:
    return (d + bs - 1) // bs


cdef inline list isa_variants():
    """The builds this CPU can run, e.g. ['baseline', 'x86-64-v4']."""
    return ["baseline"] + (["x86-64-v4"] if psgd_cpu_has_v4() else [])


cdef inline int use_isa(name) except -1:
    """Switch this module's dispatch to ``name`` (one of :func:`isa_variants`)."""
    if name not in isa_variants():
        raise ValueError(f"ISA variant {name!r} is not available; have {isa_variants()}")
    psgd_set_use_v4(name == "x86-64-v4")
    return 0


cdef inline dict openmp_info():
    """Whether this module was built with OpenMP, and its thread settings (for tests)."""
    return {"openmp": bool(HAVE_OPENMP), "omp_max_threads": psgd_omp_max_threads(),
            "max_threads": MAX_THREADS}


cdef inline int set_threads(int n, Py_ssize_t min_size) except -1:
    """Run this module's parallel kernels on n threads for vectors of >= min_size coordinates."""
    if not 1 <= n <= MAX_THREADS:
        raise ValueError(f"threads must be in [1, {MAX_THREADS}], got {n}")
    if min_size < 0:
        raise ValueError(f"min_size must be >= 0, got {min_size}")
    psgd_set_threads(n, min_size)
    return 0


cdef inline int check_block_size(Py_ssize_t d, Py_ssize_t block_size) except -1:
    """The argument check shared by the block-wise kernels: block_size >= 1, d >= 0."""
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    if d < 0:
        raise ValueError(f"d must be >= 0, got {d}")
    return 0


cdef inline void fill_trits(uint8_t* table) noexcept nogil:
    """table[5*byte + m] = trit m of byte (byte < 243): the trit decode lookup table."""
    cdef int b, m, v
    for b in range(243):
        v = b
        for m in range(5):
            table[5 * b + m] = v % 3
            v //= 3
