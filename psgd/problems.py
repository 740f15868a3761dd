"""Optimization problems: objectives, the per-worker split, a reference solver and constants.

The objective is ``F(x) = f(x) + R(x)`` with a smooth part split over ``n`` workers,

    f(x) = sum_i w_i f_i(x),        w_i = m_i / m,        R(x) = l1 * ||x||_1,

where ``f_i`` is the **average** loss over worker i's shard plus ``(l2 / 2) ||x||^2``. So ``f`` is
the average loss over all m samples plus the l2 term, whatever the shard sizes, and the server
must aggregate worker gradients with the weights ``ProblemSet.weights`` (not 1/n) for the fixed
point of an algorithm to be the global optimum. ``R`` enters only through its prox
(soft thresholding).

Entry points:

* :func:`make_problem` ``(problem_cfg, data_cfg, seed, n_workers) -> ProblemSet`` -- every rank
  builds the same ProblemSet from the same config and seed;
* :func:`solve` ``(ps) -> (x_star, f_star)`` -- a high-accuracy reference solution on one process;
* :func:`constants` ``(ps) -> {"L", "L_i", "mu"}`` -- smoothness and strong convexity;
* :func:`check_problem_config` -- the validation used by ``psgd validate``.

Problems (registered with ``@register("problem")``; ``params`` are :mod:`psgd.validation`
constraints):

* ``logistic`` (``l2`` default 1e-3, ``l1`` default 0): labels mapped to +-1 (the larger label
  becomes +1), loss ``log(1 + exp(-b_j a_j^T x))``. The l2 default is positive because several
  LIBSVM sets (mushrooms among them) are linearly separable, and then ``l2 = 0`` has no minimiser.
* ``least_squares`` (``l2`` default 0, ``l1`` default 0): loss ``(a_j^T x - b_j)^2 / 2`` with the
  raw labels as targets.
* ``quadratic`` (no data): ``f_i(x) = 1/2 (x - c_i)^T H (x - c_i)`` with one Hessian ``H`` of
  prescribed spectrum in [mu, L] and a seeded center ``c_i ~ N(0, I/d)`` per worker, so
  ``x* = mean(c_i)`` is no worker's own optimum. ``rotate: false`` keeps ``H`` diagonal
  (O(d) gradients; d = 10^7 is cheap); ``rotate: true`` uses ``Q diag(lambda) Q^T`` with a
  seeded random orthogonal Q (dense, d <= 4096).
* ``rosenbrock`` (no data, exactly 2 workers): the DIANA paper's split
  ``f1 = (x+16)^2 + 10(y-x^2)^2 + 16y``, ``f2 = (x-18)^2 + 10(y-x^2)^2 - 16y - 578``,
  ``f = (f1 + f2)/2 = (x-1)^2 + 10(y-x^2)^2``; ``x* = (1, 1)``, ``f* = 0``; start (-1.2, 1), the
  classical Rosenbrock starting point (the DIANA paper's own start point could not be checked).

``quadratic`` and ``rosenbrock`` ignore the ``data`` section (a ``libsvm`` source is an error).
"""

from __future__ import annotations

import math
import os
import time

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from scipy.special import expit

from . import data as _data
from .errors import ConfigError
from .registry import lookup, names, register
from .validation import Bool, Choice, Int, Real, check_params

#: largest d for which dense d x d Hessians (Newton, exact eigenvalues) are used
DENSE_MAX = 4096


# =============================================================================================
# Objectives
# =============================================================================================


class Objective:
    """One smooth function f_i (a worker's shard) or the global smooth part f.

    ``value``, ``grad``, ``value_and_grad`` take a float64 vector of length ``d``;
    ``stochastic_grad(x, batch_size, rng)`` is an unbiased estimate of ``grad(x)`` (samples with
    replacement; deterministic problems return the exact gradient); ``hessian(x)`` is a dense
    (d, d) array; ``smoothness()`` is the Lipschitz constant L of the gradient and
    ``strong_convexity()`` a lower bound mu on the Hessian's eigenvalues.
    """

    d: int
    n_samples: int | None = None

    def value(self, x) -> float:
        return self.value_and_grad(x)[0]

    def grad(self, x) -> np.ndarray:
        return self.value_and_grad(x)[1]

    def value_and_grad(self, x):  # pragma: no cover - abstract
        raise NotImplementedError

    def stochastic_grad(self, x, batch_size: int, rng: np.random.Generator) -> np.ndarray:
        return self.grad(x)

    def hessian(self, x) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def smoothness(self) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def strong_convexity(self) -> float:  # pragma: no cover - abstract
        raise NotImplementedError


def _gram_eigs(A, need_min: bool):
    """(lambda_max, lambda_min or None) of A^T A for a dense or sparse A."""
    m, d = A.shape
    if min(m, d) == 0:
        return 0.0, 0.0
    if m < d and m <= DENSE_MAX:  # the m x m Gram matrix has the same nonzero eigenvalues
        G = A @ A.T
        G = G.toarray() if sp.issparse(G) else np.asarray(G)
        lmax = float(max(sla.eigvalsh(G, subset_by_index=[m - 1, m - 1])[0], 0.0))
        return lmax, (0.0 if need_min else None)
    if d <= DENSE_MAX:
        G = A.T @ A
        G = G.toarray() if sp.issparse(G) else np.asarray(G)
        ev = sla.eigvalsh(G)
        return float(max(ev[-1], 0.0)), (float(max(ev[0], 0.0)) if need_min else None)
    op = spla.LinearOperator((d, d), matvec=lambda v: A.T @ (A @ v), dtype=np.float64)
    lmax = float(spla.eigsh(op, k=1, which="LA", return_eigenvectors=False, tol=1e-10)[0])
    lmin = None
    if need_min:
        if m < d:
            lmin = 0.0
        else:  # pragma: no cover - only for very large synthetic problems
            lmin = float(max(spla.eigsh(op, k=1, which="SA", return_eigenvectors=False,
                                        tol=1e-8)[0], 0.0))
    return lmax, lmin


class _GLMObjective(Objective):
    """Average of a per-sample loss of ``a_j^T x`` plus (l2/2)||x||^2; A dense or CSR."""

    def __init__(self, A, b, l2: float):
        self.A = A
        self.b = np.asarray(b, dtype=np.float64)
        self.l2 = float(l2)
        self.n_samples, self.d = A.shape
        self._eigs = None

    def _row_subset(self, idx):
        return self.A[idx], self.b[idx]

    def stochastic_grad(self, x, batch_size, rng):
        """Minibatch gradient: ``batch_size`` rows drawn uniformly **with replacement** (unbiased)."""
        batch_size = int(batch_size)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        idx = rng.integers(0, self.n_samples, size=batch_size)
        Ab, bb = self._row_subset(idx)
        return self._loss_grad(Ab, bb, x) + self.l2 * x

    def _gram(self):
        if self._eigs is None:
            self._eigs = _gram_eigs(self.A, need_min=True)
        return self._eigs


class LogisticObjective(_GLMObjective):
    """``mean_j log(1 + exp(-b_j a_j^T x)) + (l2/2)||x||^2`` with b_j in {-1, +1}."""

    def value(self, x):
        z = self.b * (self.A @ x)
        return float(np.mean(np.logaddexp(0.0, -z)) + 0.5 * self.l2 * (x @ x))

    def value_and_grad(self, x):
        x = np.asarray(x, dtype=np.float64)
        z = self.b * (self.A @ x)
        f = float(np.mean(np.logaddexp(0.0, -z)) + 0.5 * self.l2 * (x @ x))
        g = self.A.T @ (-self.b * expit(-z)) / self.n_samples + self.l2 * x
        return f, g

    def grad(self, x):
        return self.value_and_grad(x)[1]

    def _loss_grad(self, Ab, bb, x):
        z = bb * (Ab @ x)
        return Ab.T @ (-bb * expit(-z)) / bb.size

    def hessian(self, x):
        p = expit(self.A @ x)
        w = p * (1.0 - p) / self.n_samples
        if sp.issparse(self.A):
            H = (self.A.T @ sp.diags(w) @ self.A).toarray()
        else:
            H = (self.A.T * w) @ self.A
        H[np.diag_indices_from(H)] += self.l2
        return H

    def smoothness(self):
        return self._gram()[0] / (4.0 * self.n_samples) + self.l2

    def strong_convexity(self):
        return self.l2


class LeastSquaresObjective(_GLMObjective):
    """``mean_j (a_j^T x - b_j)^2 / 2 + (l2/2)||x||^2``."""

    def value(self, x):
        r = self.A @ x - self.b
        return float(0.5 * np.mean(r * r) + 0.5 * self.l2 * (x @ x))

    def value_and_grad(self, x):
        x = np.asarray(x, dtype=np.float64)
        r = self.A @ x - self.b
        f = float(0.5 * np.mean(r * r) + 0.5 * self.l2 * (x @ x))
        return f, self.A.T @ r / self.n_samples + self.l2 * x

    def grad(self, x):
        return self.value_and_grad(x)[1]

    def _loss_grad(self, Ab, bb, x):
        return Ab.T @ (Ab @ x - bb) / bb.size

    def hessian(self, x=None):
        G = self.A.T @ self.A
        H = (G.toarray() if sp.issparse(G) else np.array(G)) / self.n_samples
        H[np.diag_indices_from(H)] += self.l2
        return H

    def smoothness(self):
        return self._gram()[0] / self.n_samples + self.l2

    def strong_convexity(self):
        lmax, lmin = self._gram()
        return (lmin if self.n_samples >= self.d else 0.0) / self.n_samples + self.l2


class QuadraticObjective(Objective):
    """``1/2 (x - c)^T H (x - c) + const`` with ``H = diag(lam)`` or ``Q diag(lam) Q^T``."""

    def __init__(self, lam, center, const=0.0, Q=None):
        self.lam = lam
        self.center = center
        self.const = float(const)
        self.Q = Q
        self.d = lam.size

    def _h(self, u):
        if self.Q is None:
            return self.lam * u
        return self.Q @ (self.lam * (self.Q.T @ u))

    def value(self, x):
        u = np.asarray(x, dtype=np.float64) - self.center
        return float(0.5 * (u @ self._h(u)) + self.const)

    def grad(self, x):
        return self._h(np.asarray(x, dtype=np.float64) - self.center)

    def value_and_grad(self, x):
        u = np.asarray(x, dtype=np.float64) - self.center
        g = self._h(u)
        return float(0.5 * (u @ g) + self.const), g

    def hessian(self, x=None):
        if self.d > DENSE_MAX:
            raise ValueError(f"hessian: d = {self.d} is too large for a dense matrix "
                             f"(at most {DENSE_MAX})")
        if self.Q is None:
            return np.diag(self.lam)
        return (self.Q * self.lam) @ self.Q.T

    def smoothness(self):
        return float(self.lam.max())

    def strong_convexity(self):
        return float(self.lam.min())


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


# =============================================================================================
# Regularizer
# =============================================================================================


class L1Reg:
    """``R(x) = l1 * ||x||_1``; ``prox(x, step)`` is soft thresholding at ``step * l1``.

    With ``l1 == 0``, ``prox`` returns ``x`` itself (no copy); otherwise a new array.
    """

    def __init__(self, l1: float = 0.0):
        self.l1 = float(l1)

    def value(self, x) -> float:
        return 0.0 if self.l1 == 0.0 else float(self.l1 * np.abs(x).sum())

    def prox(self, x, step: float):
        if self.l1 == 0.0:
            return x
        t = float(step) * self.l1
        return np.sign(x) * np.maximum(np.abs(x) - t, 0.0)

    def __repr__(self):
        return f"L1Reg(l1={self.l1!r})"


def _soft(x, t):
    return np.sign(x) * np.maximum(np.abs(x) - t, 0.0)


# =============================================================================================
# ProblemSet
# =============================================================================================


class ProblemSet:
    """Everything one rank needs about the problem: built by :func:`make_problem`.

    Attributes: ``name``, ``params``, ``d``, ``n_workers``, ``weights`` (m_i/m, sums to 1: the
    server's aggregation weights), ``n_samples`` (m or None), ``reg`` (value, prox), ``kind``
    ("glm", "quadratic", "rosenbrock"). Methods: ``local(i)`` (worker i's Objective, 0-based,
    built on first use and cached), ``global_objective`` (the smooth part f), ``loss(x)``
    (f(x) + R(x)), ``initial_point()``, ``describe()``.
    """

    def __init__(self, *, name, params, d, weights, n_samples, local_factory, global_factory,
                 reg, x0, info, kind):
        self.name = name
        self.params = dict(params)
        self.d = int(d)
        self.weights = np.asarray(weights, dtype=np.float64)
        self.n_workers = self.weights.size
        self.n_samples = n_samples
        self.reg = reg
        self.kind = kind
        self._local_factory = local_factory
        self._global_factory = global_factory
        self._x0 = np.asarray(x0, dtype=np.float64)
        self._info = info
        self._locals: dict = {}
        self._global = None
        self._solution = None
        self._constants = None

    def local(self, i: int) -> Objective:
        i = int(i)
        if not 0 <= i < self.n_workers:
            raise IndexError(f"worker index {i} out of range [0, {self.n_workers})")
        if i not in self._locals:
            self._locals[i] = self._local_factory(i)
        return self._locals[i]

    @property
    def global_objective(self) -> Objective:
        if self._global is None:
            self._global = self._global_factory()
        return self._global

    def loss(self, x) -> float:
        """The full objective F(x) = f(x) + R(x)."""
        return self.global_objective.value(x) + self.reg.value(x)

    def initial_point(self) -> np.ndarray:
        return self._x0.copy()

    def describe(self) -> dict:
        out = {"problem": self.name, **self.params, "d": self.d, "n_workers": self.n_workers}
        out.update(self._info)
        return out

    def __repr__(self):
        return f"ProblemSet({self.describe()!r})"


# =============================================================================================
# Problems
# =============================================================================================


class Problem:
    """Base of the registered problems: ``name``, ``params`` and ``build``."""

    name: str
    params: dict = {}
    uses_data = False

    @classmethod
    def cross_check(cls, params, data_cfg, n_workers=None) -> None:
        if not cls.uses_data and data_cfg is not None and data_cfg.get("source") == "libsvm":
            raise ConfigError(f"data.source: got 'libsvm'; allowed: synthetic "
                              f"(problem {cls.name} uses no data file)")

    @classmethod
    def build(cls, params, data_cfg, seed, n_workers) -> ProblemSet:  # pragma: no cover
        raise NotImplementedError


class _DataProblem(Problem):
    uses_data = True
    objective_cls: type

    @classmethod
    def _load(cls, data_cfg, seed):
        if data_cfg["source"] == "libsvm":
            A, labels = _data.read_libsvm(data_cfg["path"], data_cfg["n_features"])
            full = _data.resolve_path(data_cfg["path"])
            b = (_data.labels_to_pm1(labels, full) if cls.name == "logistic"
                 else np.array(labels, dtype=np.float64))
            info = {"dataset": os.path.basename(full), "path": full}
            if cls.name == "logistic":
                lo, hi = np.unique(labels)
                info["label_map"] = {f"{lo:g}": -1, f"{hi:g}": 1}
        else:
            A, b = _data.synthetic(cls.name, data_cfg["n_samples"], data_cfg["n_features"],
                                   seed, data_cfg["noise"])
            info = {"dataset": "synthetic", "noise": data_cfg["noise"]}
        return A, b, info

    @classmethod
    def build(cls, params, data_cfg, seed, n_workers):
        A, b, info = cls._load(data_cfg, seed)
        m, d = A.shape
        shards = _data.partition(m, n_workers, data_cfg["partition"], seed)
        sizes = np.array([s.size for s in shards], dtype=np.int64)
        contiguous = data_cfg["partition"] == "contiguous"
        starts = np.concatenate([[0], np.cumsum(sizes)])
        l2 = params["l2"]

        def local(i):
            if contiguous:
                rows = slice(int(starts[i]), int(starts[i + 1]))
            else:
                rows = shards[i]
            return cls.objective_cls(A[rows], b[rows], l2)

        info.update({"m": int(m), "n_samples": int(m), "partition": data_cfg["partition"],
                     "shard_sizes": sizes.tolist()})
        if sp.issparse(A):
            info["nnz"] = int(A.nnz)
        return ProblemSet(name=cls.name, params=params, d=d, weights=sizes / m, n_samples=int(m),
                          local_factory=local,
                          global_factory=lambda: cls.objective_cls(A, b, l2),
                          reg=L1Reg(params["l1"]), x0=np.zeros(d), info=info, kind="glm")


@register("problem")
class Logistic(_DataProblem):
    """L2/L1-regularised logistic regression (labels mapped to +-1)."""

    name = "logistic"
    params = {
        "l2": Real(0, default=1e-3, doc="l2 regularisation (in every f_i)"),
        "l1": Real(0, default=0.0, doc="l1 regularisation (prox, server side)"),
    }
    objective_cls = LogisticObjective


@register("problem")
class LeastSquares(_DataProblem):
    """L2/L1-regularised least squares with the raw labels as targets."""

    name = "least_squares"
    params = {
        "l2": Real(0, default=0.0, doc="l2 regularisation (in every f_i)"),
        "l1": Real(0, default=0.0, doc="l1 regularisation (prox, server side)"),
    }
    objective_cls = LeastSquaresObjective


def quadratic_spectrum(mu: float, L: float, d: int, spectrum: str) -> np.ndarray:
    """The d Hessian eigenvalues, ascending, from mu to L.

    ``linear``: evenly spaced; ``log``: geometrically spaced (needs mu > 0); ``power``:
    ``mu + (L - mu) t^3`` for t evenly spaced in [0, 1] (most eigenvalues near mu). d = 1 gives [L].
    """
    if d == 1:
        return np.array([float(L)])
    if spectrum == "linear":
        return np.linspace(mu, L, d)
    if spectrum == "log":
        return np.geomspace(mu, L, d)
    if spectrum == "power":
        t = np.linspace(0.0, 1.0, d)
        return mu + (L - mu) * t**3
    raise ConfigError(f"problem.spectrum: got {spectrum!r}; allowed: one of linear, log, power")


@register("problem")
class Quadratic(Problem):
    """Per-worker quadratics ``1/2 (x - c_i)^T H (x - c_i)``, H with a prescribed spectrum."""

    name = "quadratic"
    params = {
        "mu": Real(0, default=0.01, doc="smallest Hessian eigenvalue"),
        "L": Real(0, closed="neither", default=1.0, doc="largest Hessian eigenvalue"),
        "n_features": Int(1, default=1000, doc="dimension d"),
        "spectrum": Choice("linear", "log", "power", default="linear",
                           doc="how eigenvalues fill [mu, L]"),
        "rotate": Bool(default=False, doc="false: diagonal H (O(d) gradients); true: dense "
                                          f"random rotation (d <= {DENSE_MAX})"),
    }

    @classmethod
    def cross_check(cls, params, data_cfg, n_workers=None):
        super().cross_check(params, data_cfg, n_workers)
        if params["mu"] > params["L"]:
            raise ConfigError(f"problem.mu: got {params['mu']!r}; allowed: a number in "
                              f"[0, L] (L = {params['L']!r})")
        if params["spectrum"] == "log" and params["mu"] == 0:
            raise ConfigError("problem.mu: got 0.0; allowed: a number > 0 with spectrum log")
        if params["rotate"] and params["n_features"] > DENSE_MAX:
            raise ConfigError(f"problem.n_features: got {params['n_features']}; allowed: at most "
                              f"{DENSE_MAX} with rotate: true (dense d x d Hessian)")

    @classmethod
    def build(cls, params, data_cfg, seed, n_workers):
        d = params["n_features"]
        lam = quadratic_spectrum(params["mu"], params["L"], d, params["spectrum"])
        Q = None
        if params["rotate"]:
            Z = _data._rng(seed, 4).standard_normal((d, d))
            Q, R = np.linalg.qr(Z)
            Q *= np.sign(np.diag(R))
        weights = np.full(n_workers, 1.0 / n_workers)

        def center(i):
            return _data._rng(seed, 3, i).standard_normal(d) / math.sqrt(d)

        def local(i):
            return QuadraticObjective(lam, center(i), 0.0, Q)

        def global_():
            cbar = np.zeros(d)
            for i in range(n_workers):
                cbar += weights[i] * center(i)
            probe = QuadraticObjective(lam, cbar, 0.0, Q)
            const = sum(weights[i] * probe.value(center(i)) for i in range(n_workers))
            return QuadraticObjective(lam, cbar, const, Q)

        info = {"dataset": None, "m": None, "n_samples": None, "shard_sizes": None}
        ps = ProblemSet(name=cls.name, params=params, d=d, weights=weights, n_samples=None,
                        local_factory=local, global_factory=global_, reg=L1Reg(0.0),
                        x0=np.zeros(d), info=info, kind="quadratic")
        ps._lam = lam
        return ps


@register("problem")
class Rosenbrock(Problem):
    """The DIANA paper's two-worker Rosenbrock split (needs exactly 2 workers)."""

    name = "rosenbrock"
    params: dict = {}
    #: start point: the classical Rosenbrock start
    x0 = (-1.2, 1.0)

    @classmethod
    def cross_check(cls, params, data_cfg, n_workers=None):
        super().cross_check(params, data_cfg, n_workers)
        if n_workers is not None and n_workers != 2:
            raise ConfigError(f"problem.name: rosenbrock needs exactly 2 workers; got {n_workers}")

    @classmethod
    def build(cls, params, data_cfg, seed, n_workers):
        info = {"dataset": None, "m": None, "n_samples": None, "shard_sizes": None}
        return ProblemSet(name=cls.name, params=params, d=2, weights=np.array([0.5, 0.5]),
                          n_samples=None, local_factory=RosenbrockObjective,
                          global_factory=lambda: RosenbrockObjective("global"),
                          reg=L1Reg(0.0), x0=np.array(cls.x0), info=info, kind="rosenbrock")


def check_problem_config(problem_cfg, data_cfg=None, n_workers=None) -> dict:
    """Validate the ``problem`` section (``name`` plus that problem's params); defaults filled.

    With ``data_cfg`` (validated or raw) and ``n_workers``, also the cross-checks (a data-free
    problem with a LIBSVM source, rosenbrock with other than 2 workers, mu > L, ...).
    """
    if problem_cfg is None:
        problem_cfg = {}
    if not isinstance(problem_cfg, dict):
        raise ConfigError(f"problem: got {problem_cfg!r}; allowed: a mapping with a name")
    cfg = dict(problem_cfg)
    if "name" not in cfg:
        raise ConfigError(f"problem.name: missing; allowed: one of {', '.join(names('problem'))}")
    name = cfg.pop("name")
    cls = lookup("problem", name)
    params = check_params("problem", cls.params, cfg)
    if data_cfg is not None:
        data_cfg = _data.check_data_config(data_cfg)
    cls.cross_check(params, data_cfg, n_workers)
    return {"name": cls.name, **params}


def make_problem(problem_cfg: dict, data_cfg: dict, seed: int, n_workers: int) -> ProblemSet:
    """Build the ProblemSet for ``n_workers`` workers, deterministically from (configs, seed).

    Both sections are (re)validated, so raw mappings work too. Raises ConfigError for bad or
    inconsistent settings and DataFormatError for an unreadable data file.
    """
    if isinstance(n_workers, bool) or not isinstance(n_workers, (int, np.integer)) or n_workers < 1:
        raise ConfigError(f"n_workers: got {n_workers!r}; allowed: an integer >= 1")
    data_cfg = _data.check_data_config(data_cfg)
    problem = check_problem_config(problem_cfg, data_cfg, int(n_workers))
    cls = lookup("problem", problem["name"])
    params = {k: v for k, v in problem.items() if k != "name"}
    return cls.build(params, data_cfg, int(seed), int(n_workers))


# =============================================================================================
# Reference solver
# =============================================================================================


def _solve_sym(H, rhs):
    try:
        c = sla.cho_factor(H, check_finite=False)
        out = sla.cho_solve(c, rhs, check_finite=False)
        if np.all(np.isfinite(out)):
            return out
    except (sla.LinAlgError, ValueError):
        pass
    return sla.lstsq(H, rhs, check_finite=False)[0]


def _noise(f):
    return 1e-14 * max(1.0, abs(f))


def _newton(obj, x, tol, max_iter=200):
    """Damped Newton with Armijo backtracking, then polishing steps that reduce ||grad||."""
    f, g = obj.value_and_grad(x)
    gn = float(np.linalg.norm(g))
    it = 0
    while gn > tol and it < max_iter:
        it += 1
        p = _solve_sym(obj.hessian(x), -g)
        slope = float(g @ p)
        if not slope < 0:
            p, slope = -g, -gn * gn
        t, accepted = 1.0, False
        while t > 1e-12:
            xn = x + t * p
            fn, gvec = obj.value_and_grad(xn)
            gnn = float(np.linalg.norm(gvec))
            if abs(fn - f) <= _noise(f):  # f cannot resolve progress: judge by the gradient
                accepted = gnn < gn
                break
            if fn <= f + 1e-4 * t * slope:
                accepted = True
                break
            t *= 0.5
        if not accepted:
            break
        x, f, g, gn = xn, fn, gvec, gnn
    return x, f, gn, it


def _prox_residual(x, g, l1):
    """||x - prox_{l1 |.|_1}(x - g)||: zero exactly at a minimiser of f + l1 ||.||_1."""
    return float(np.linalg.norm(x - _soft(x - g, l1)))


def _l1_qp(H, q, l1, z0, max_iter=20000):
    """argmin_z q^T z + 1/2 z^T H z + l1 ||z||_1 (H symmetric PSD, small dense).

    Accelerated proximal gradient (FISTA, gradient restart) to find the support, with regular
    attempts to solve exactly on the current support (a linear solve, then a KKT check).
    """

    def exact(z):
        S = np.flatnonzero(z)
        s = np.sign(z[S])
        zz = np.zeros_like(z)
        if S.size:
            zS = _solve_sym(H[np.ix_(S, S)], -(q[S] + l1 * s))
            if not np.all(np.sign(zS) == s):
                return None
            zz[S] = zS
        viol = np.abs(q + H @ zz)
        viol[S] = 0.0
        if np.all(viol <= l1 * (1 + 1e-9) + 1e-15):
            return zz
        return None

    z = exact(z0)
    if z is not None:
        return z
    lh = float(sla.eigvalsh(H, subset_by_index=[H.shape[0] - 1, H.shape[0] - 1])[0])
    step = 1.0 / max(lh, 1e-300)
    z = z0.copy()
    y = z.copy()
    t = 1.0
    for k in range(1, max_iter + 1):
        gy = q + H @ y
        zn = _soft(y - step * gy, step * l1)
        if (y - zn) @ (zn - z) > 0:  # restart
            t = 1.0
            y = z.copy()
            continue
        tn = 0.5 * (1.0 + math.sqrt(1.0 + 4.0 * t * t))
        y = zn + ((t - 1.0) / tn) * (zn - z)
        z, t = zn, tn
        if k % 10 == 0:
            ze = exact(z)
            if ze is not None:
                return ze
    return z


def _prox_newton(obj, l1, x, tol, max_iter=200):
    """Proximal Newton with backtracking on f + l1 ||x||_1; returns (x, F, residual, iters)."""
    f, g = obj.value_and_grad(x)
    F = f + l1 * np.abs(x).sum()
    r = _prox_residual(x, g, l1)
    it = 0
    while r > tol and it < max_iter:
        it += 1
        H = obj.hessian(x)
        z = _l1_qp(H, g - H @ x, l1, x)
        dx = z - x
        delta = float(g @ dx + l1 * (np.abs(z).sum() - np.abs(x).sum()))
        t, accepted = 1.0, False
        while t > 1e-12:
            xn = x + t * dx
            fn, gvec = obj.value_and_grad(xn)
            Fn = fn + l1 * np.abs(xn).sum()
            rn = _prox_residual(xn, gvec, l1)
            if abs(Fn - F) <= _noise(F):
                accepted = rn < r
                break
            if Fn <= F + 1e-4 * t * min(delta, 0.0) and Fn < F:
                accepted = True
                break
            t *= 0.5
        if not accepted:
            break
        x, F, g, r = xn, Fn, gvec, rn
    return x, F, r, it


def _first_order(obj, l1, x, tol, max_iter=20000):  # pragma: no cover - huge-d fallback
    """FISTA with restart for d > DENSE_MAX (lower accuracy; reported in the info)."""
    step = 1.0 / obj.smoothness()
    y, z, t = x.copy(), x.copy(), 1.0
    for it in range(1, max_iter + 1):
        gy = obj.grad(y)
        zn = _soft(y - step * gy, step * l1)
        if (y - zn) @ (zn - z) > 0:
            t, y = 1.0, z.copy()
            continue
        tn = 0.5 * (1.0 + math.sqrt(1.0 + 4.0 * t * t))
        y = zn + ((t - 1.0) / tn) * (zn - z)
        z, t = zn, tn
        if it % 50 == 0:
            f, g = obj.value_and_grad(z)
            if _prox_residual(z, g, l1) <= tol:
                break
    f, g = obj.value_and_grad(z)
    return z, f + l1 * np.abs(z).sum(), _prox_residual(z, g, l1), it


def solve(ps: ProblemSet, *, tol: float = 1e-12, return_info: bool = False):
    """A high-accuracy minimiser of F = f + R on one process: ``(x_star, f_star)``.

    * rosenbrock: exactly (1, 1), 0; quadratic: the closed form x* = mean of the centers;
    * logistic / least_squares with l1 = 0: Newton with backtracking, polished until
      ||grad f|| <= tol or float64 stops making progress;
    * with l1 > 0: proximal Newton (subproblems solved exactly on the identified support),
      stopped when the prox residual ||x - prox(x - grad f(x))|| <= tol.

    ``f_star`` includes R. The result is cached on ``ps``. With ``return_info=True`` also returns
    a dict: ``method``, ``iterations``, ``grad_norm`` (smooth) or ``residual`` (l1: the prox
    residual), ``converged`` (reached ``tol``) and ``time_s``.
    Raises ConfigError when logistic with l2 = 0 does not converge (separable data have no
    minimiser).
    """
    if ps._solution is not None and ps._solution[2]["tol"] == tol:
        x, f, info = ps._solution
        return (x.copy(), f, dict(info)) if return_info else (x.copy(), f)
    t0 = time.perf_counter()
    obj = ps.global_objective
    l1 = ps.reg.l1
    if ps.kind == "rosenbrock":
        x, f, info = np.array([1.0, 1.0]), 0.0, {"method": "exact", "iterations": 0,
                                                  "grad_norm": 0.0}
    elif ps.kind == "quadratic":
        x = obj.center.copy()
        f = obj.const
        info = {"method": "closed form", "iterations": 0,
                "grad_norm": float(np.linalg.norm(obj.grad(x)))}
    elif ps.d > DENSE_MAX:  # pragma: no cover - huge synthetic problems
        x, f, res, it = _first_order(obj, l1, np.zeros(ps.d), tol)
        info = {"method": "fista", "iterations": it,
                ("residual" if l1 > 0 else "grad_norm"): res}
    elif l1 > 0:
        x, f, res, it = _prox_newton(obj, l1, np.zeros(ps.d), tol)
        info = {"method": "proximal newton", "iterations": it, "residual": res}
    else:
        x, f, gn, it = _newton(obj, np.zeros(ps.d), tol)
        info = {"method": "newton", "iterations": it, "grad_norm": gn}
    measure = info.get("residual", info.get("grad_norm"))
    info["converged"] = bool(measure <= tol)
    info["tol"] = tol
    info["time_s"] = time.perf_counter() - t0
    if (ps.kind == "glm" and ps.name == "logistic" and ps.params.get("l2", 0) == 0
            and measure > 1e-6):
        raise ConfigError(f"problem.l2: got 0.0; logistic regression on this data did not "
                          f"converge (optimality measure {measure:.3g}): the data may be "
                          "separable, so there is no minimiser; use l2 > 0")
    f = float(f)
    ps._solution = (x, f, info)
    return (x.copy(), f, dict(info)) if return_info else (x.copy(), f)


# =============================================================================================
# Constants
# =============================================================================================


def constants(ps: ProblemSet) -> dict:
    """``{"L": L of f, "L_i": [L of f_i], "mu": strong convexity of f}`` (cached on ``ps``).

    logistic: L = lambda_max(A^T A)/(4m) + l2, mu = l2; least_squares: L = lambda_max(A^T A)/m +
    l2, mu = lambda_min(A^T A)/m + l2 (l2 when m < d); the L_i use each shard's own rows and m_i.
    quadratic: L and mu of the spectrum. rosenbrock (non-convex): the extreme Hessian eigenvalues
    at the optimum, ~101.61 and ~0.3937.
    """
    if ps._constants is None:
        if ps.kind == "quadratic":  # one Hessian for every worker: no need to build f
            lam = ps._lam
            L, mu = float(lam.max()), float(lam.min())
            L_i = [L] * ps.n_workers
        else:
            g = ps.global_objective
            L, mu = g.smoothness(), g.strong_convexity()
            L_i = [ps.local(i).smoothness() for i in range(ps.n_workers)]
        ps._constants = {"L": float(L), "L_i": [float(v) for v in L_i], "mu": float(mu)}
    c = ps._constants
    return {"L": c["L"], "L_i": list(c["L_i"]), "mu": c["mu"]}
