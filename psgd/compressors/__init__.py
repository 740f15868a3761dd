"""Compressors: ``get_compressor(config)`` builds one from a config mapping.

Importing this package imports every module in it (found with :mod:`pkgutil`, so a new
compressor module needs no entry in a list here); each registers its class with
``@register_compressor``, which also refuses a codec id that another class already has.
"""

import importlib
import pkgutil

from ..registry import classes, lookup, names
from ..errors import ConfigError
from .base import Compressor
from .layered import Layered, is_layered

__all__ = ["Compressor", "get_compressor", "available"]

#: modules of this package that define no compressor
_NOT_COMPRESSORS = {"base", "layered"}

for _module in pkgutil.iter_modules(__path__):
    if _module.name not in _NOT_COMPRESSORS and not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")


def get_compressor(config, layers=None) -> Compressor:
    """Build a compressor from ``{"name": ..., **params}`` (the mapping is not modified).

    ``block_size: layer`` needs ``layers``, the problem's layer sizes (``ProblemSet.layers``):
    the result is then a :class:`~psgd.compressors.layered.Layered` with one block per layer.
    """
    if isinstance(config, str):
        config = {"name": config}
    config = dict(config)
    if is_layered(config):
        if not layers:
            from ..problems import with_layers  # (the registry's, so the list cannot drift)

            raise ConfigError(f"compressor.block_size: got 'layer', but this problem has no "
                              f"layers; allowed: an integer >= 1 or null ('layer' needs a "
                              f"problem with layers: {', '.join(with_layers())})")
        return Layered(config, layers, get_compressor)
    cls = lookup("compressor", config.pop("name", None))
    return cls(**config)


def available() -> list[str]:
    """Names of the registered compressors."""
    return names("compressor")


def compressor_classes() -> dict:
    return classes("compressor")
