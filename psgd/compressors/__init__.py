"""Compressors: ``get_compressor(config)`` builds one from a config mapping.

Importing this package registers every compressor (each module registers its class
with ``@register("compressor")``).
"""

from ..registry import classes, lookup, names
from .base import Compressor
from . import identity  # noqa: F401  (registers)
from . import dithering  # noqa: F401
from . import sparse_dithering, spherical, sketches  # noqa: F401,E402
from . import rand_k, top_k, sign, natural, rounding  # noqa: F401,E402

__all__ = ["Compressor", "get_compressor", "available"]


def get_compressor(config) -> Compressor:
    """Build a compressor from ``{"name": ..., **params}`` (the mapping is not modified)."""
    if isinstance(config, str):
        config = {"name": config}
    config = dict(config)
    cls = lookup("compressor", config.pop("name", None))
    return cls(**config)


def available() -> list[str]:
    """Names of the registered compressors."""
    return names("compressor")


def compressor_classes() -> dict:
    return classes("compressor")
