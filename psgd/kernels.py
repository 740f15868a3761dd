"""The bit-packing kernels: compiled (``psgd._dither``) when built, else the NumPy twins.

Both expose the same names and signatures; :mod:`psgd.kernels_ref` defines what they
compute. ``HAVE_CYTHON`` says which one is in use. ``import psgd`` never needs the
extension: without it this module warns once and uses the twins.
"""

from __future__ import annotations

import contextlib
import warnings

from . import kernels_ref
from .kernels_ref import (ERR_LEVEL, ERR_OK, ERR_PADDING, ERR_SCALE, ERR_SIGN, ERR_TRIT,  # noqa: F401
                          MAX_LEVELS, NORM_2, NORM_INF, nblocks, symbol_bits, symbols_nbytes)

try:
    from . import _dither as _impl
    HAVE_CYTHON = True
except ImportError as exc:  # not built (PSGD_WITH_CYTHON=0, no compiler, ...)
    warnings.warn(f"psgd: compiled kernels psgd._dither are not available ({exc}); "
                  "falling back to the slower NumPy twins in psgd.kernels_ref",
                  RuntimeWarning, stacklevel=2)
    _impl = kernels_ref
    HAVE_CYTHON = False

#: the functions that have a compiled version (tests compare each with its twin)
KERNELS = ("block_scales", "dither_encode", "dither_decode_add")

block_scales = _impl.block_scales
dither_encode = _impl.dither_encode
dither_decode_add = _impl.dither_decode_add

# -- sparse dithering and the spherical search (psgd._sparse_sphere; twins in kernels_ref) --
from .kernels_ref import (ERR_LENGTH, ERR_ZERO_BLOCK, SD_DETERMINISTIC, SD_MAX_LEVEL,  # noqa: E402,F401
                          SD_RANDOMIZED, sd_block_constant, sd_kmax, sd_max_level_bits,
                          sphere_block_seeds, sphere_points)

try:
    from . import _sparse_sphere as _impl_ss
    HAVE_CYTHON_SPARSE_SPHERE = True
except ImportError as exc:
    warnings.warn(f"psgd: compiled kernels psgd._sparse_sphere are not available ({exc}); "
                  "falling back to the slower NumPy twins in psgd.kernels_ref",
                  RuntimeWarning, stacklevel=2)
    _impl_ss = kernels_ref
    HAVE_CYTHON_SPARSE_SPHERE = False

#: the sparse dithering / spherical functions that have a compiled version
KERNELS_SPARSE_SPHERE = ("sd_encode", "sd_decode_add", "sphere_search")

sd_encode = _impl_ss.sd_encode
sd_decode_add = _impl_ss.sd_decode_add
sphere_search = _impl_ss.sphere_search

# -- sparsification (psgd._sparsify) and dense quantizers (psgd._quant); twins in kernels_ref --
from .kernels_ref import (ERR_CODE, ERR_INDEX, ERR_NONCANONICAL, ERR_SIZE,  # noqa: E402,F401
                          ERR_TRAILING, ERR_VALUE, ERR_VARINT, ERR_WIDTH, NATDITHER_MAX_LEVELS,
                          ROUNDING_MAX_Q)

try:
    from . import _quant as _impl_q
    from . import _sparsify as _impl_sp
    HAVE_CYTHON_SPARSIFY_QUANT = True
except ImportError as exc:
    warnings.warn(f"psgd: compiled kernels psgd._sparsify / psgd._quant are not available ({exc}); "
                  "falling back to the slower NumPy twins in psgd.kernels_ref",
                  RuntimeWarning, stacklevel=2)
    _impl_sp = _impl_q = kernels_ref
    HAVE_CYTHON_SPARSIFY_QUANT = False

#: the rand_k / top_k / sign / natural / natural_dithering / rounding kernels
KERNELS_SPARSIFY = ("randk_indices", "topk_indices", "gaps_nbytes", "gaps_encode", "gaps_decode",
                    "sparse_add")
KERNELS_QUANT = ("sign_nbytes", "sign_encode", "sign_decode_add", "natural_nbytes",
                 "natural_encode", "natural_decode_add", "natdither_nbytes", "natdither_encode",
                 "natdither_decode_add", "rounding_widths", "rounding_encode", "rounding_decode_add")

randk_indices = _impl_sp.randk_indices
topk_indices = _impl_sp.topk_indices
gaps_nbytes = _impl_sp.gaps_nbytes
gaps_encode = _impl_sp.gaps_encode
gaps_decode = _impl_sp.gaps_decode
sparse_add = _impl_sp.sparse_add
sign_nbytes = _impl_q.sign_nbytes
sign_encode = _impl_q.sign_encode
sign_decode_add = _impl_q.sign_decode_add
natural_nbytes = _impl_q.natural_nbytes
natural_encode = _impl_q.natural_encode
natural_decode_add = _impl_q.natural_decode_add
natdither_nbytes = _impl_q.natdither_nbytes
natdither_encode = _impl_q.natdither_encode
natdither_decode_add = _impl_q.natdither_decode_add
rounding_widths = _impl_q.rounding_widths
rounding_encode = _impl_q.rounding_encode
rounding_decode_add = _impl_q.rounding_decode_add


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

# -- Elias-omega random dithering (psgd._elias; twins in kernels_ref) --
from .kernels_ref import ERR_RANGE, ERR_STREAM, elias_max_nbytes, omega_length  # noqa: E402,F401

try:
    from . import _elias as _impl_el
    HAVE_CYTHON_ELIAS = True
except ImportError as exc:
    warnings.warn(f"psgd: compiled kernels psgd._elias are not available ({exc}); "
                  "falling back to the slower NumPy twins in psgd.kernels_ref",
                  RuntimeWarning, stacklevel=2)
    _impl_el = kernels_ref
    HAVE_CYTHON_ELIAS = False

#: the Elias-omega random-dithering kernels
KERNELS_ELIAS = ("elias_encode", "elias_decode_add")

elias_encode = _impl_el.elias_encode
elias_decode_add = _impl_el.elias_decode_add
