"""The compiled kernels (``psgd._dither``, ``_sparse_sphere``, ``_sparsify``, ``_quant``,
``_elias``, ``_lowbit``) when built, else their NumPy twins.

Both expose the same names and signatures; the twin modules in :mod:`psgd.kernels_ref`
(one per compiled module) define what they compute. ``import psgd`` never needs the
extensions: a module that is not built (no compiler, ``PSGD_WITH_CYTHON=0``) makes this
module warn once and use its twin.
``HAVE_CYTHON*`` say which are compiled; compressors look kernels up as ``kernels.NAME``
at call time, so :func:`use_twins` can switch them all to the twins.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import warnings

from . import kernels_ref
from .kernels_ref import (  # noqa: F401  (constants and pure helpers shared by both)
    ERR_LEVEL, ERR_OK, ERR_PADDING, ERR_SCALE, ERR_SIGN, ERR_TRIT, MAX_LEVELS, NORM_2,
    NORM_INF, nblocks, symbol_bits, symbols_nbytes, ERR_LENGTH, ERR_ZERO_BLOCK,
    SD_DETERMINISTIC, SD_MAX_LEVEL, SD_RANDOMIZED, sd_block_constant, sd_kmax,
    sd_max_level_bits, sphere_block_seeds, sphere_points, ERR_CODE, ERR_INDEX,
    ERR_NONCANONICAL, ERR_SIZE, ERR_TRAILING, ERR_VALUE, ERR_VARINT, ERR_WIDTH,
    NATDITHER_MAX_LEVELS, ROUNDING_MAX_Q, ERR_RANGE, ERR_STREAM, elias_max_nbytes,
    omega_length, CAST_FP16, CAST_BF16, CAST_FORMATS, MINMAX_MAX_BITS)

#: the functions each compiled module provides (each has a twin of the same name)
KERNELS = ("block_scales", "dither_encode", "dither_decode_add")
KERNELS_SPARSE_SPHERE = ("sd_encode", "sd_decode_add", "sphere_search")
KERNELS_SPARSIFY = ("randk_indices", "topk_indices", "gaps_nbytes", "gaps_encode", "gaps_decode",
                    "sparse_add")
KERNELS_QUANT = ("sign_nbytes", "sign_encode", "sign_decode_add", "natural_nbytes",
                 "natural_encode", "natural_decode_add", "natdither_nbytes", "natdither_encode",
                 "natdither_decode_add", "rounding_widths", "rounding_encode", "rounding_decode_add")
KERNELS_ELIAS = ("elias_encode", "elias_decode_add")
KERNELS_LOWBIT = ("cast_encode", "cast_decode_add", "minmax_nbytes", "minmax_encode",
                  "minmax_decode_add")
_MODULES = {"_dither": KERNELS, "_sparse_sphere": KERNELS_SPARSE_SPHERE,
            "_sparsify": KERNELS_SPARSIFY, "_quant": KERNELS_QUANT, "_elias": KERNELS_ELIAS,
            "_lowbit": KERNELS_LOWBIT}


def _load(module: str):
    """The compiled module, or the twins (with a warning) when it is not built."""
    try:
        return importlib.import_module(f"psgd.{module}"), True
    except ImportError as exc:
        warnings.warn(f"psgd: compiled kernels psgd.{module} are not available ({exc}); "
                      f"falling back to the slower NumPy twins in psgd.kernels_ref.{module}",
                      RuntimeWarning, stacklevel=3)
        return kernels_ref.TWINS[module], False


_compiled = {}
for _module, _names in _MODULES.items():
    _impl, _compiled[_module] = _load(_module)
    globals().update({name: getattr(_impl, name) for name in _names})

HAVE_CYTHON = _compiled["_dither"]
HAVE_CYTHON_SPARSE_SPHERE = _compiled["_sparse_sphere"]
HAVE_CYTHON_SPARSIFY_QUANT = _compiled["_sparsify"] and _compiled["_quant"]
HAVE_CYTHON_ELIAS = _compiled["_elias"]
HAVE_CYTHON_LOWBIT = _compiled["_lowbit"]


def _kernel_names() -> list[str]:
    """Every name listed in a KERNELS* tuple of this module (all compiled-or-twin functions)."""
    g = globals()
    return [n for key in sorted(g) if key.startswith("KERNELS") for n in g[key]]


@contextlib.contextmanager
def use_twins():
    """Run the block with every kernel of this module replaced by its NumPy twin.

    Compressors look kernels up as ``kernels.NAME`` at call time, so this switches a
    whole compressor to its reference implementation (``psgd bench codecs`` measures
    kernel against twin this way). Not thread-safe; restores the kernels on exit.
    """
    g = globals()
    saved = {n: g[n] for n in _kernel_names()}
    try:
        g.update({n: getattr(kernels_ref, n) for n in saved})
        yield
    finally:
        g.update(saved)


# ---- threads (issue 11): the compiled modules with OpenMP loops, and their settings
#: modules whose kernels split large vectors over threads (random dithering so far)
THREADED_MODULES = ("_dither",)
#: below this many coordinates a kernel stays on one thread: starting a parallel region
#: costs ~10-50 us, which pays only above ~10^5-10^6 coordinates on a shared 2-core node
#: (measured with ``psgd bench codecs --threads``; see README)
PARALLEL_MIN_SIZE = 1 << 18
MAX_THREADS = 1024


def threads_from_env(environ=None) -> int:
    """The thread count of PSGD_THREADS: unset or empty means 1 (single-threaded, as before).

    OMP_NUM_THREADS is deliberately not a fallback: schedulers and BLAS setups set it for
    other reasons, and psgd's MPI ranks often share a node, so threads start only when asked.
    """
    from .errors import ConfigError
    text = (os.environ if environ is None else environ).get("PSGD_THREADS", "").strip()
    if not text:
        return 1
    try:
        n = int(text)
    except ValueError:
        n = 0
    if not 1 <= n <= MAX_THREADS:
        raise ConfigError(f"PSGD_THREADS must be an integer from 1 (single-threaded) to "
                          f"{MAX_THREADS}, got {text!r}")
    return n


def set_threads(n: int, min_size: int = PARALLEL_MIN_SIZE) -> None:
    """Run the threaded kernels on n threads for vectors of >= min_size coordinates.

    Results are the same bytes for every n; n = 1 never starts a thread. A no-op for the
    twins and in a build without OpenMP.
    """
    if not 1 <= n <= MAX_THREADS or min_size < 0:
        raise ValueError(f"threads must be in [1, {MAX_THREADS}] and min_size >= 0, "
                         f"got {n}, {min_size}")
    global THREADS, MIN_SIZE
    for module in THREADED_MODULES:
        if _compiled[module]:
            importlib.import_module(f"psgd.{module}")._set_threads(n, min_size)
    THREADS, MIN_SIZE = n, min_size


@contextlib.contextmanager
def threads(n: int, min_size: int = PARALLEL_MIN_SIZE):
    """Run the block with :func:`set_threads` (n, min_size); restore the settings on exit."""
    saved = (THREADS, MIN_SIZE)
    set_threads(n, min_size)
    try:
        yield
    finally:
        set_threads(*saved)


def openmp_available() -> bool:
    """Whether the threaded modules were compiled with OpenMP (else threads do nothing)."""
    return all(_compiled[m] and importlib.import_module(f"psgd.{m}")._openmp_info()["openmp"]
               for m in THREADED_MODULES)


THREADS, MIN_SIZE = 1, PARALLEL_MIN_SIZE
set_threads(threads_from_env())
