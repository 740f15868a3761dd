"""``rosenbrock`` (no data, exactly 2 workers): the DIANA paper's split.

``f1 = (x+16)^2 + 10(y-x^2)^2 + 16y``, ``f2 = (x-18)^2 + 10(y-x^2)^2 - 16y - 578``,
``f = (f1 + f2)/2 = (x-1)^2 + 10(y-x^2)^2``; ``x* = (1, 1)``, ``f* = 0``; start (-1.2, 1), the
classical Rosenbrock starting point (the DIANA paper's own start point could not be checked).
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from ..registry import register
from .builders import Problem
from .objectives import Objective
from .problemset import ProblemSet
from .regulariser import L1Reg


# Rosenbrock pieces: (x - a)^2 + 10 (y - x^2)^2 + s*y + c
_ROSEN = {0: (-16.0, 16.0, 0.0), 1: (18.0, -16.0, -578.0), "global": (1.0, 0.0, 0.0)}
# Hessian at (1, 1) is [[82, -40], [-40, 20]] for every piece
_ROSEN_H = np.array([[82.0, -40.0], [-40.0, 20.0]])
_ROSEN_EIGS = np.linalg.eigvalsh(_ROSEN_H)


class RosenbrockObjective(Objective):
    """One piece of the DIANA paper's Rosenbrock split (``which`` = 0, 1 or ``"global"``).

    Not convex; ``smoothness()``/``strong_convexity()`` are the extreme Hessian eigenvalues at
    the optimum (1, 1) (the same for every piece): about 101.61 and 0.3937.
    """

    d = 2

    def __init__(self, which):
        self.which = which
        self.a, self.s, self.c = _ROSEN[which]

    def value_and_grad(self, x):
        x0, x1 = float(x[0]), float(x[1])
        g = x1 - x0 * x0
        f = (x0 - self.a) ** 2 + 10.0 * g * g + self.s * x1 + self.c
        grad = np.array([2.0 * (x0 - self.a) - 40.0 * x0 * g, 20.0 * g + self.s])
        return float(f), grad

    def hessian(self, x):
        x0, x1 = float(x[0]), float(x[1])
        g = x1 - x0 * x0
        return np.array([[2.0 - 40.0 * g + 80.0 * x0 * x0, -40.0 * x0], [-40.0 * x0, 20.0]])

    def smoothness(self):
        return float(_ROSEN_EIGS[-1])

    def strong_convexity(self):
        return float(_ROSEN_EIGS[0])


@register("problem")
class Rosenbrock(Problem):
    """The DIANA paper's two-worker Rosenbrock split (needs exactly 2 workers)."""

    name = "rosenbrock"
    params: dict = {}
    #: start point: the classical Rosenbrock start
    x0 = (-1.2, 1.0)

    @classmethod
    def check_workers(cls, params, data_cfg, n_workers):
        if n_workers != 2:
            raise ConfigError(f"problem.name: rosenbrock needs exactly 2 workers; got {n_workers} "
                              "(launch it with mpiexec -n 3: one server and two workers)")

    @classmethod
    def dimension(cls, params, data_cfg):
        return 2

    @classmethod
    def build(cls, params, data_cfg, seed, n_workers, workers=None):
        info = {"dataset": None, "m": None, "n_samples": None, "shard_sizes": None}
        return ProblemSet(name=cls.name, params=params, d=2, weights=np.array([0.5, 0.5]),
                          n_samples=None, local_factory=RosenbrockObjective,
                          global_factory=lambda: RosenbrockObjective("global"),
                          reg=L1Reg(0.0), x0=np.array(cls.x0), info=info, kind="rosenbrock")

    @classmethod
    def reference(cls, ps, tol):
        return np.array([1.0, 1.0]), 0.0, {"method": "exact", "iterations": 0, "grad_norm": 0.0}
