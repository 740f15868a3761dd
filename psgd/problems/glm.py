"""Generalised linear models on samples: ``logistic`` and ``least_squares``.

``f_i`` is the **average** loss over worker i's shard plus ``(l2 / 2) ||x||^2``, and worker i
is weighted by m_i / m, so f is the average over all m samples whatever the shard sizes.

* ``logistic`` (``l2`` default 1e-3, ``l1`` default 0): labels mapped to +-1 (the larger label
  becomes +1), loss ``log(1 + exp(-b_j a_j^T x))``. The l2 default is positive because several
  LIBSVM sets (mushrooms among them) are linearly separable, and then ``l2 = 0`` has no minimiser.
* ``least_squares`` (``l2`` default 0, ``l1`` default 0): loss ``(a_j^T x - b_j)^2 / 2`` with the
  raw labels as targets.
"""

from __future__ import annotations

import os

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from scipy.special import expit

from .. import data as _data
from ..errors import ConfigError, PsgdError
from ..registry import register
from ..validation import Real
from . import solvers
from .builders import Problem
from .objectives import DENSE_MAX, Objective
from .problemset import ProblemSet
from .regulariser import L1Reg

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


class _DataProblem(Problem):
    uses_data = True
    objective_cls: type

    @classmethod
    def dimension(cls, params, data_cfg):
        return data_cfg["n_features"]  # libsvm with null: the largest index in the file

    @classmethod
    def _targets(cls, labels, full, values=None):
        """Regression targets, or +-1 classes (the larger of the file's two labels is +1)."""
        if cls.name != "logistic":
            return np.array(labels, dtype=np.float64), {}
        b = _data.labels_to_pm1(labels, full, values)
        lo, hi = np.unique(labels) if values is None else values
        return b, {"label_map": {f"{lo:g}": -1, f"{hi:g}": 1}}

    @classmethod
    def build(cls, params, data_cfg, seed, n_workers, workers=None):
        libsvm = data_cfg["source"] == "libsvm"
        sharded = libsvm and workers is not None
        if libsvm:
            full = _data.resolve_path(data_cfg["path"])
            info = {"dataset": os.path.basename(full), "path": full}
            if sharded:  # two streaming passes: the shape and labels, then only our rows
                scan = _data.scan_libsvm(full, data_cfg["n_features"])
                m, d = scan.m, scan.d
            else:
                A, labels = _data.read_libsvm(full, data_cfg["n_features"])
                m, d = A.shape
        else:
            # .get: a run directory written before data.condition existed (psgd reproduce
            # rebuilds the problem from a finished run's config.yaml) holds no such key
            condition = data_cfg.get("condition", 1.0)
            A, b = _data.synthetic(cls.name, data_cfg["n_samples"], data_cfg["n_features"],
                                   seed, data_cfg["noise"], condition)
            info = {"dataset": "synthetic", "noise": data_cfg["noise"]}
            if condition != 1.0:
                info["condition"] = condition
            m, d = A.shape
        shards = _data.partition(m, n_workers, data_cfg["partition"], seed)
        if sharded:
            rows = np.unique(np.concatenate([shards[w] for w in workers]
                                            + [np.zeros(0, np.int64)]))
            A, labels = _data.read_libsvm(full, d, rows=rows)
            b, extra = cls._targets(labels, full, scan.labels)
            info["nnz"] = scan.nnz
        else:
            rows = np.arange(m)
            if libsvm:
                b, extra = cls._targets(labels, full)
        if libsvm:
            info.update(extra)
        sizes = np.array([s.size for s in shards], dtype=np.int64)
        l2 = params["l2"]

        def local(i):
            if sharded and i not in workers:
                raise PsgdError(f"worker {i}'s shard is not loaded on this rank (it holds "
                                f"workers {workers})")
            pos = np.searchsorted(rows, shards[i])
            if pos.size and pos[-1] - pos[0] + 1 == pos.size:  # contiguous: a view, no copy
                pos = slice(int(pos[0]), int(pos[-1]) + 1)
            return cls.objective_cls(A[pos], b[pos], l2)

        def global_():
            if sharded:
                raise PsgdError(f"the global objective needs every shard; this rank loaded "
                                f"only workers {workers}")
            return cls.objective_cls(A, b, l2)

        info.update({"m": int(m), "n_samples": int(m), "partition": data_cfg["partition"],
                     "shard_sizes": sizes.tolist()})
        if sp.issparse(A) and not sharded:
            info["nnz"] = int(A.nnz)
        return ProblemSet(name=cls.name, params=params, d=d, weights=sizes / m, n_samples=int(m),
                          local_factory=local, global_factory=global_,
                          reg=L1Reg(params["l1"]), x0=np.zeros(d), info=info, kind="glm")

    @classmethod
    def reference(cls, ps, tol):
        """Newton (l1 = 0) or proximal Newton (l1 > 0); FISTA beyond DENSE_MAX."""
        obj, l1, x0 = ps.global_objective, ps.reg.l1, np.zeros(ps.d)
        if ps.d > DENSE_MAX:  # pragma: no cover - huge synthetic problems
            x, f, res, it = solvers.first_order(obj, l1, x0, tol)
            info = {"method": "fista", "iterations": it,
                    ("residual" if l1 > 0 else "grad_norm"): res}
        elif l1 > 0:
            x, f, res, it = solvers.prox_newton(obj, l1, x0, tol)
            info = {"method": "proximal newton", "iterations": it, "residual": res}
        else:
            x, f, gn, it = solvers.newton(obj, x0, tol)
            info = {"method": "newton", "iterations": it, "grad_norm": gn}
        measure = info.get("residual", info.get("grad_norm"))
        if cls.name == "logistic" and ps.params.get("l2", 0) == 0 and measure > 1e-6:
            raise ConfigError(f"problem.l2: got 0.0; logistic regression on this data did not "
                              f"converge (optimality measure {measure:.3g}): the data may be "
                              "separable, so there is no minimiser; use l2 > 0")
        return x, f, info


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
