"""The bit-packing kernels: compiled (``psgd._dither``) when built, else the NumPy twins.

Both expose the same names and signatures; :mod:`psgd.kernels_ref` defines what they
compute. ``HAVE_CYTHON`` says which one is in use. ``import psgd`` never needs the
extension: without it this module warns once and uses the twins.
"""

from __future__ import annotations

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
