"""``quadratic`` (no data): per-worker quadratics with one Hessian of prescribed spectrum.

``f_i(x) = 1/2 (x - c_i)^T H (x - c_i)`` with H's spectrum in [mu, L] and a seeded center
``c_i ~ N(0, I/d)`` per worker, so ``x* = mean(c_i)`` is no worker's own optimum.
``rotate: false`` keeps ``H`` diagonal (O(d) gradients; d = 10^7 is cheap); ``rotate: true``
uses ``Q diag(lambda) Q^T`` with a seeded random orthogonal Q (dense, d <= 4096).
"""

from __future__ import annotations

import math

import numpy as np

from .. import data as _data
from ..errors import ConfigError
from ..registry import register
from ..validation import Bool, Choice, Int, Real
from .builders import Problem
from .objectives import DENSE_MAX, Objective
from .problemset import ProblemSet
from .regulariser import L1Reg


#: coordinates per chunk of a streamed evaluation: 512 KiB of float64, cache-sized
CHUNK = 1 << 16


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
        if self.Q is None:
            return self._streamed(x)[0]
        u = np.asarray(x, dtype=np.float64) - self.center
        return float(0.5 * (u @ self._h(u)) + self.const)

    def value_and_grad_norm(self, x):
        if self.Q is None:
            value, sq = self._streamed(x)
            return value, math.sqrt(sq)
        return super().value_and_grad_norm(x)

    def _streamed(self, x):
        """Diagonal H: (f(x), ||grad f(x)||^2) a chunk at a time. The server evaluates its model
        at every logging step (and with run.target at every step): at d = 10^7 two d-sized
        temporaries would be 160 MB of its peak memory for two numbers."""
        x = np.asarray(x, dtype=np.float64)
        quad = sq = 0.0
        for lo in range(0, self.d, CHUNK):
            u = x[lo:lo + CHUNK] - self.center[lo:lo + CHUNK]
            g = self.lam[lo:lo + CHUNK] * u
            quad += float(u @ g)
            sq += float(g @ g)
        return 0.5 * quad + self.const, sq

    def grad(self, x):
        return self._h(np.asarray(x, dtype=np.float64) - self.center)

    def grad_into(self, x, out):
        if self.Q is not None:
            return self.grad(x)
        np.subtract(x, self.center, out=out)
        out *= self.lam
        return out

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


SPECTRA = ("linear", "log", "cubic", "power", "lowrank")


def quadratic_spectrum(mu: float, L: float, d: int, spectrum: str, exponent: float = 1.0,
                       rank: int = 1) -> np.ndarray:
    """The d Hessian eigenvalues, ascending, from mu to L.

    ``linear``: evenly spaced; ``log``: geometrically spaced (needs mu > 0); ``cubic``:
    ``mu + (L - mu) t^3`` for t evenly spaced in [0, 1] (most eigenvalues near mu; this was
    called ``power`` before the power law took that name); ``power``: the power law
    ``max(mu, L i^-exponent)``, i = 1..d (Flynn et al.'s lambda_i = i^-a scaled to L, floored at
    mu; mu = 0 gives it exactly, and the problem is still L d^-a strongly convex); ``lowrank``: ``rank``
    eigenvalues L and d - rank eigenvalues mu. d = 1 gives [L].
    """
    if d == 1:
        return np.array([float(L)])
    if spectrum == "linear":
        return np.linspace(mu, L, d)
    if spectrum == "log":
        return np.geomspace(mu, L, d)
    if spectrum == "cubic":
        t = np.linspace(0.0, 1.0, d)
        return mu + (L - mu) * t**3
    if spectrum == "power":
        i = np.arange(d, 0, -1, dtype=np.float64)
        return np.maximum(float(mu), L * i ** -float(exponent))
    if spectrum == "lowrank":
        lam = np.full(d, float(mu))
        lam[d - rank:] = L
        return lam
    raise ConfigError(f"problem.spectrum: got {spectrum!r}; allowed: one of {', '.join(SPECTRA)}")


@register("problem")
class Quadratic(Problem):
    """Per-worker quadratics ``1/2 (x - c_i)^T H (x - c_i)``, H with a prescribed spectrum."""

    name = "quadratic"
    params = {
        "mu": Real(0, default=0.01, doc="smallest Hessian eigenvalue"),
        "L": Real(0, closed="neither", default=1.0, doc="largest Hessian eigenvalue"),
        "n_features": Int(1, default=1000, doc="dimension d"),
        "spectrum": Choice(*SPECTRA, default="linear",
                           doc="how eigenvalues fill [mu, L]: linear, log, cubic (mu + (L - mu) "
                               "t^3; the old 'power'), power (max(mu, L i^-exponent)), "
                               "lowrank (rank eigenvalues L, the rest mu)"),
        "exponent": Real(0, default=1.0, doc="a in spectrum power: lambda_i = max(mu, L i^-a)"),
        "rank": Int(1, default=10, doc="r in spectrum lowrank: r eigenvalues L, d - r mu"),
        "rotate": Bool(default=False, doc="false: diagonal H (O(d) gradients); true: dense "
                                          f"random rotation (d <= {DENSE_MAX})"),
    }

    @classmethod
    def check_config(cls, params, data_cfg):
        super().check_config(params, data_cfg)
        if params["mu"] > params["L"]:
            raise ConfigError(f"problem.mu: got {params['mu']!r}; allowed: a number in "
                              f"[0, L] (L = {params['L']!r})")
        if params["spectrum"] == "log" and params["mu"] == 0:
            raise ConfigError("problem.mu: got 0.0; allowed: a number > 0 with spectrum log")
        if params["spectrum"] == "lowrank" and params["rank"] > params["n_features"]:
            raise ConfigError(f"problem.rank: got {params['rank']}; allowed: an integer in "
                              f"1..n_features ({params['n_features']})")
        if params["rotate"] and params["n_features"] > DENSE_MAX:
            raise ConfigError(f"problem.n_features: got {params['n_features']}; allowed: at most "
                              f"{DENSE_MAX} with rotate: true (dense d x d Hessian)")

    @classmethod
    def dimension(cls, params, data_cfg):
        return params["n_features"]

    @classmethod
    def build(cls, params, data_cfg, seed, n_workers, workers=None):
        d = params["n_features"]
        lam = quadratic_spectrum(params["mu"], params["L"], d, params["spectrum"],
                                 params["exponent"], params["rank"])
        Q = None
        if params["rotate"]:
            Z = _data._rng(seed, _data.STREAM_ROTATION).standard_normal((d, d))
            Q, R = np.linalg.qr(Z)
            Q *= np.sign(np.diag(R))
        weights = np.full(n_workers, 1.0 / n_workers)

        def center(i):
            c = _data._rng(seed, _data.STREAM_CENTERS, i).standard_normal(d)
            c /= math.sqrt(d)  # in place: the server builds n of these at d = 10^7
            return c

        def local(i):
            return QuadraticObjective(lam, center(i), 0.0, Q)

        def global_():
            cbar = np.zeros(d)
            for i in range(n_workers):
                c = center(i)
                c *= weights[i]
                cbar += c
                del c  # before the next center is drawn: one d-sized temporary at a time
            probe = QuadraticObjective(lam, cbar, 0.0, Q)
            const = sum(weights[i] * probe.value(center(i)) for i in range(n_workers))
            return QuadraticObjective(lam, cbar, const, Q)

        info = {"dataset": None, "m": None, "n_samples": None, "shard_sizes": None}
        ps = ProblemSet(name=cls.name, params=params, d=d, weights=weights, n_samples=None,
                        local_factory=local, global_factory=global_, reg=L1Reg(0.0),
                        x0=np.zeros(d), info=info, kind="quadratic")
        ps._lam = lam
        return ps

    @classmethod
    def reference(cls, ps, tol):
        obj = ps.global_objective
        x = obj.center  # x* itself: psgd.problems.solve keeps it read-only
        f, grad_norm = obj.value_and_grad_norm(x)
        return x, f, {"method": "closed form", "iterations": 0, "grad_norm": grad_norm}

    @classmethod
    def constants(cls, ps):
        lam = ps._lam  # one Hessian for every worker: no need to build f
        L = float(lam.max())
        c = {"L": L, "L_i": [L] * ps.n_workers, "mu": float(lam.min())}
        if lam.size <= DENSE_MAX:  # the Hessian, for the sketch step rule (lambda_S)
            c["smoothness_matrix"] = lambda: ps.local(0).hessian()
        return c
