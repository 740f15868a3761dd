"""Pure-NumPy twins of the Cython kernels: one module per module of ``cython_ext/``.

=====================  ==============================  ===================================
twin                   compiled module                 compressors
=====================  ==============================  ===================================
``_dither``            ``psgd._dither``                random_dithering (dense)
``_elias``             ``psgd._elias``                 random_dithering (elias)
``_sparse_sphere``     ``psgd._sparse_sphere``         sparse_dithering, spherical
``_sparsify``          ``psgd._sparsify``              rand_k, top_k
``_quant``             ``psgd._quant``                 sign, natural, natural_dithering,
                                                       rounding
``_lowbit``            ``psgd._lowbit``                cast, minmax
``splitmix``           ``psgd_splitmix`` (_common.h)   the random stream they all draw from
``errors``             ``cython_ext/_errors.h``        the decoders' error codes
=====================  ==============================  ===================================

These functions DEFINE what the kernels compute: the compiled versions must agree with
them byte for byte (encode) and value for value (decode); ``tests/test_kernels*.py`` check
it on odd lengths. They are also the runtime fallback when an extension is not built
(:mod:`psgd.kernels` picks one or the other, module by module). Everything is vectorized:
no Python loop over coordinates or blocks. Each module's docstring and comments give the
exact byte layout it defines.

This package also exposes every public name of its modules (``kernels_ref.dither_encode``).
"""

from . import _dither, _elias, _lowbit, _quant, _sparse_sphere, _sparsify, errors, splitmix

#: twin module of each compiled module (psgd.kernels loads one or the other)
TWINS = {"_dither": _dither, "_elias": _elias, "_quant": _quant,
         "_sparse_sphere": _sparse_sphere, "_sparsify": _sparsify, "_lowbit": _lowbit}


def _public(module) -> dict:
    return {k: v for k, v in vars(module).items()
            if not k.startswith("_") and k != "annotations" and not isinstance(v, type(errors))}


__all__ = []
for _module in (errors, splitmix, *TWINS.values()):
    globals().update(_public(_module))
    __all__ += sorted(_public(_module))
