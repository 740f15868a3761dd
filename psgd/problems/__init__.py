"""Optimization problems: objectives, the per-worker split, a reference solver and constants.

The objective is ``F(x) = f(x) + R(x)`` with a smooth part split over ``n`` workers,

    f(x) = sum_i w_i f_i(x),        w_i = m_i / m,        R(x) = l1 * ||x||_1,

where ``f_i`` is worker i's smooth function (for data problems the **average** loss over its
shard plus ``(l2 / 2) ||x||^2``), so the server must aggregate worker gradients with the
weights ``ProblemSet.weights`` (not 1/n) for the fixed point of an algorithm to be the global
optimum. ``R`` enters only through its prox (soft thresholding).

Entry points:

* :func:`make_problem` ``(problem_cfg, data_cfg, seed, n_workers, workers=None) -> ProblemSet``
  -- every rank builds the same ProblemSet from the same *resolved* config sections and seed
  (``workers`` loads only those workers' shards of a data file);
* :func:`solve` ``(ps) -> (x_star, f_star)`` -- a high-accuracy reference solution on one process;
* :func:`constants` ``(ps) -> {"L", "L_i", "mu"}`` -- smoothness and strong convexity;
* :func:`check_config`, :func:`check_workers`, :func:`dimension` -- what ``psgd.config``
  asks a problem before anything is built; :func:`check_problem_config` validates a raw
  ``problem`` section on its own.

Unknown constants: a problem may not know f*, L or mu (a user's own model, a neural network).
Its family then leaves the ``reference`` / ``constants`` hooks of :class:`Problem` at their
defaults (or its objectives return None from ``smoothness`` / ``strong_convexity``), and
``solve(ps)`` returns ``(None, None)`` and ``constants(ps)`` reports None for each unknown
value (``L_i`` is None unless every worker's is known). Callers must treat None as "unknown":
no suboptimality, and no ``stepsize: theory``.

Modules: :mod:`.objectives` (the Objective interface), :mod:`.regulariser` (L1 and its prox),
:mod:`.problemset` (ProblemSet), :mod:`.builders` (the Problem base and the entry points),
:mod:`.solvers` (reference solvers, :func:`solve`), :mod:`.constants`, and one module per
family, each registered with ``@register("problem")``: :mod:`.glm` (``logistic``,
``least_squares``), :mod:`.quadratic`, :mod:`.rosenbrock`, :mod:`.plugin` (``python``: the
user's own factory), :mod:`.mlp` (``mlp``: a NumPy network on ``data.source: digits`` or ``mnist1d``), :mod:`.cnn`
(``cnn``: a NumPy convolutional network on the same data).
``quadratic`` and ``rosenbrock`` ignore the ``data`` section (a ``libsvm`` source is an error).
"""

from .builders import (Problem, check_build, check_config, check_problem_config, check_workers,
                       dimension, layers, make_problem, uses_data, with_layers)
from .constants import constants
from .objectives import DENSE_MAX, Objective
from .problemset import ProblemSet
from .regulariser import L1Reg
from .solvers import solve
from .glm import LeastSquares, LeastSquaresObjective, Logistic, LogisticObjective  # registers
from .quadratic import Quadratic, QuadraticObjective, quadratic_spectrum  # registers
from .rosenbrock import Rosenbrock, RosenbrockObjective  # registers
from .plugin import PythonProblem  # registers
from .mlp import MLP  # registers
from .cnn import CNN  # registers

__all__ = ["DENSE_MAX", "L1Reg", "LeastSquares", "LeastSquaresObjective", "Logistic",
           "LogisticObjective", "Objective", "Problem", "ProblemSet", "Quadratic",
           "QuadraticObjective", "Rosenbrock", "RosenbrockObjective", "MLP", "CNN", "PythonProblem", "check_build",
           "check_config",
           "check_problem_config", "check_workers", "constants", "dimension", "layers", "make_problem",
           "quadratic_spectrum", "solve", "uses_data", "with_layers"]
