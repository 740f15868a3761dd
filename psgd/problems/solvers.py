"""Reference solvers: f* and x* to high accuracy on one process, and :func:`solve`.

The numerical routines (Newton, proximal Newton, FISTA) work on any
:class:`~psgd.problems.objectives.Objective` with ``value_and_grad`` and ``hessian``; which
one a problem uses is its family's ``reference`` hook.
"""

from __future__ import annotations

import math
import time

import numpy as np
import scipy.linalg as sla

from .problemset import ProblemSet
from .regulariser import soft


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


def newton(obj, x, tol, max_iter=200):
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
    return float(np.linalg.norm(x - soft(x - g, l1)))


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
        zn = soft(y - step * gy, step * l1)
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


def prox_newton(obj, l1, x, tol, max_iter=200):
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


def first_order(obj, l1, x, tol, max_iter=20000):  # pragma: no cover - huge-d fallback
    """FISTA with restart for d > DENSE_MAX (lower accuracy; reported in the info)."""
    step = 1.0 / obj.smoothness()
    y, z, t = x.copy(), x.copy(), 1.0
    for it in range(1, max_iter + 1):
        gy = obj.grad(y)
        zn = soft(y - step * gy, step * l1)
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


def solve(ps: ProblemSet, *, tol: float = 1e-12, return_info: bool = False, copy: bool = True):
    """A high-accuracy minimiser of F = f + R on one process: ``(x_star, f_star)``.

    The problem family's ``reference`` hook decides how (see each family's module):

    * rosenbrock: exactly (1, 1), 0; quadratic: the closed form x* = mean of the centers;
    * logistic / least_squares with l1 = 0: Newton with backtracking, polished until
      ||grad f|| <= tol or float64 stops making progress;
    * with l1 > 0: proximal Newton (subproblems solved exactly on the identified support),
      stopped when the prox residual ||x - prox(x - grad f(x))|| <= tol.

    A family that cannot tell returns None, and then this returns ``(None, None)`` (with
    ``return_info``, info ``{"method": "unknown"}``): f* is unknown.

    ``f_star`` includes R. The result is cached on ``ps``; ``copy=False`` returns the cached
    x_star itself, read-only (the server keeps it for the whole run: at d = 10^7 a copy is 80 MB). With ``return_info=True`` also returns
    a dict: ``method``, ``iterations``, ``grad_norm`` (smooth) or ``residual`` (l1: the prox
    residual), ``converged`` (reached ``tol``) and ``time_s``.
    Raises ConfigError when logistic with l2 = 0 does not converge (separable data have no
    minimiser).
    """
    if ps._solution is None or ps._solution[2]["tol"] != tol:
        t0 = time.perf_counter()
        found = ps.family.reference(ps, tol) if ps.family is not None else None
        if found is None:
            x, f, info = None, None, {"method": "unknown", "converged": False}
        else:
            x, f, info = found
            x, f = np.asarray(x, dtype=np.float64).view(), float(f)
            x.flags.writeable = False  # a read-only view: callers get a copy unless they ask
            measure = info.get("residual", info.get("grad_norm"))
            info["converged"] = bool(measure is not None and measure <= tol)
        info["tol"] = tol
        info["time_s"] = time.perf_counter() - t0
        ps._solution = (x, f, info)
    x, f, info = ps._solution
    x = x.copy() if copy and x is not None else x
    return (x, f, dict(info)) if return_info else (x, f)
