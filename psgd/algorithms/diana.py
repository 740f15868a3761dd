"""DIANA (Mishchenko et al., Algorithm 1): compress g_i - h_i and learn the shifts h_i.

Each worker keeps its shift h_i and sends C(g_i - h_i); both ends then move h_i by
alpha * C(.), so the server's copy of every h_i stays exact. The server's estimate
g_hat_i = h_i + C(g_i - h_i) is unbiased, and its variance vanishes at the optimum: DIANA
converges to x* where DQGD stalls.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..registry import register
from ..validation import AnyOf, Choice, Real
from .base import COMMON_PARAMS, Algorithm, Hyper, ServerState, axpy
from .stepsize import step_size


@dataclass
class DianaWorker:
    shift: np.ndarray  # h_i


@dataclass
class DianaServer(ServerState):
    shift: np.ndarray | None = None   # synchronous: h = sum_i w_i h_i, all the server needs
    shifts: np.ndarray | None = None  # asynchronous: every worker's h_i (n x d)


@register("algorithm")
class DIANA(Algorithm):
    """DIANA (Mishchenko et al., Algorithm 1): compress g_i - h_i, learn the shifts h_i."""

    name = "diana"
    requires = "unbiased"
    needs_decoded = True
    server_state = DianaServer
    params = {**COMMON_PARAMS,
              "alpha": AnyOf(Choice("theory"), Real(0, 1, closed="right"), default="theory"),
              "momentum": Real(0, 1, closed="left", default=0.0)}

    @classmethod
    def resolve(cls, cfg, compressor, consts, weights, tau):
        a = cfg["algorithm"]
        omega = compressor.omega(consts.d)
        alpha = 1.0 / (1.0 + omega) if a["alpha"] == "theory" else float(a["alpha"])

        def theory():
            # Gorbunov, Hanzely & Richtarik 2020 (papers.md B.3): alpha = 1/(1+omega),
            # gamma = 1/(L + 6 omega L_max/n). The compression variance is bounded through each
            # f_i's smoothness, sum_i w_i^2 ||grad f_i(x) - grad f_i(x*)||^2 <= 2 max_i(w_i L_i)
            # D_f, so L_max/n is max_i w_i L_i in general; it equals L/n only when every L_i = L.
            max_wL = float(np.max(np.asarray(weights) * np.asarray(consts.L_i)))
            g = 1.0 / (consts.L + 6.0 * omega * max_wL)
            rule = "1/(L + 6 omega max_i w_i L_i) (proven, sync)"
            if a["momentum"]:
                # heavy ball multiplies the effective step by 1/(1-beta): keep it (heuristic)
                g *= 1.0 - a["momentum"]
                rule += " * (1-momentum) (heuristic)"
            return g, rule

        gamma, rule = step_size(a, consts, theory, tau)
        return Hyper(gamma=gamma, alpha=alpha, momentum=a["momentum"],
                     form=cls.default_form(a), rule=rule)

    def worker_init(self, d):
        return DianaWorker(shift=np.zeros(d))

    def worker_vector(self, ws, grad, full=False):
        return grad - ws.shift

    def worker_update(self, ws, v, y):
        ws.shift += self.hyper.alpha * y

    def server_fields(self, d):
        if self.synchronous:
            return {"shift": np.zeros(d)}
        return {"shifts": np.zeros((self.n, d))}

    def sync_direction(self, ss, batch):
        # g_hat = sum_i w_i (h_i + y_i) = h + Y with Y = sum_i w_i y_i, then h += alpha Y,
        # i.e. h <- (1 - alpha) h + alpha g_hat: two vectors besides x, no temporary
        g = self.aggregate(batch, self.work("direction", ss.x.size))
        g += ss.shift
        alpha = self.hyper.alpha
        ss.shift *= 1.0 - alpha
        axpy(alpha, g, ss.shift)
        return g

    def entry(self, ss, msg, out):
        y = self.work("message", out.size)
        msg.write_to(y)
        shift = ss.shifts[msg.worker]
        np.add(shift, y, out=out)  # g_hat = h_i + y, then h_i += alpha y
        y *= self.hyper.alpha
        shift += y
