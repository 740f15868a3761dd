"""Optimization algorithms: what a worker sends and how the server applies it.

One module per algorithm (gd, dqgd, diana, ef, ef21, marina), each registering its class
with ``@register("algorithm")``; this package imports every module it holds, so adding an
algorithm is adding one module. The shared shape (hyper-parameters, state dataclasses, the
table and direct server forms) is in :mod:`.base`; shared step-size rules in :mod:`.stepsize`.
"""

from __future__ import annotations

import importlib
import pkgutil

import numpy as np

from ..registry import lookup
from .base import Algorithm, Constants, Hyper, ServerState, Table, WorkerState

_SHARED = {"base", "stepsize"}
for _mod in pkgutil.iter_modules(__path__):
    if _mod.name not in _SHARED:
        importlib.import_module(f"{__name__}.{_mod.name}")

__all__ = ["Algorithm", "Constants", "Hyper", "ServerState", "Table", "WorkerState",
           "build", "get_algorithm_class"]


def get_algorithm_class(name):
    return lookup("algorithm", name)


def build(cfg, compressor, consts: Constants, weights, tau: int) -> Algorithm:
    cls = get_algorithm_class(cfg["algorithm"]["name"])
    hyper = cls.resolve(cfg, compressor, consts, np.asarray(weights, dtype=np.float64), tau)
    return cls(cfg["algorithm"], hyper, weights, seed=cfg["seed"], synchronous=tau == 0)


def __getattr__(name):
    # the algorithm classes by their class names (algorithms.DIANA, ...), as before the split
    from ..registry import classes

    for cls in classes("algorithm").values():
        if cls.__name__ == name:
            return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
