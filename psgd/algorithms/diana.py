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
from .base import CHUNK, COMMON_PARAMS, Algorithm, Hyper, ServerState, axpy, chunks
from .stepsize import step_size


@dataclass
class DianaWorker:
    shift: np.ndarray  # h_i


@dataclass
class DianaServer(ServerState):
    shift: np.ndarray | None = None   # synchronous: h = sum_i w_i h_i, all the server needs
    shifts: np.ndarray | None = None  # asynchronous: every worker's h_i (n x d)


def heavy_ball_step(L: float, omega: float, alpha: float, beta: float, n: int) -> float:
    """DIANA with momentum beta: the largest step of Mishchenko et al.'s Theorem 7.

    papers.md B.3 [P] (text extraction, check against the PDF), with alpha_p = 1/(1 + omega),
    so the theorem's own omega' = (n-1)/n + 1/(n alpha_p) = 1 + omega/n: for 0 <= alpha <
    alpha_p, beta != 1 - alpha, xi = max{1 - alpha, beta}, zeta = omega' + alpha (omega' - 1)/
    (1 - xi) and delta = 1 + (2/n)(1/alpha_p - 1)(1 + alpha/|1 - alpha - beta|), it needs
    gamma < (1 - beta^2)/(2 L zeta) and beta^2/((1-beta)^2 (1-xi)) <= (1 - beta^2 - 2 L gamma
    zeta)/(gamma^2 L^2 delta). The second is a quadratic in gamma, a gamma^2 + b gamma <= c,
    whose root is below (1 - beta^2)/(2 L zeta) = c/b, so it is the step. This replaces the
    (1 - beta) heuristic; it is far smaller than a tuned step (the theorem is nonconvex).
    """
    alpha_p = 1.0 / (1.0 + omega)
    # alpha: theory is alpha_p itself, the edge of alpha < alpha_p: the conditions are
    # continuous there, so the step is their limit
    if alpha > alpha_p * (1.0 + 1e-12) or abs(1.0 - alpha - beta) < 1e-12:
        from ..errors import ConfigError
        raise ConfigError(f"algorithm.momentum: got {beta!r} with alpha = {alpha:g}; allowed with "
                          f"stepsize theory (DIANA Thm 7): alpha < 1/(1+omega) = {alpha_p:g} and "
                          f"momentum != 1 - alpha (or give a numeric stepsize)")
    w = 1.0 + omega / n
    xi = max(1.0 - alpha, beta)
    zeta = w + alpha * (w - 1.0) / (1.0 - xi)
    delta = 1.0 + (2.0 / n) * (1.0 / alpha_p - 1.0) * (1.0 + alpha / abs(1.0 - alpha - beta))
    a = beta * beta * L * L * delta / ((1.0 - beta) ** 2 * (1.0 - xi))
    b, c = 2.0 * L * zeta, 1.0 - beta * beta
    return (-b + (b * b + 4.0 * a * c) ** 0.5) / (2.0 * a) if a > 0 else 0.999 * c / b


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
            if a["momentum"]:
                return (heavy_ball_step(consts.L, omega, alpha, a["momentum"], len(weights)),
                        "DIANA Thm 7 (heavy ball): the largest gamma its two conditions allow "
                        "(proven [P] for f_i = f, nonconvex, sync)")
            max_wL = float(np.max(np.asarray(weights) * np.asarray(consts.L_i)))
            g = 1.0 / (consts.L + 6.0 * omega * max_wL)
            return g, "1/(L + 6 omega max_i w_i L_i) (proven, sync)"

        gamma, rule = step_size(a, consts, theory, tau)
        return Hyper(gamma=gamma, alpha=alpha, momentum=a["momentum"],
                     form=cls.default_form(a), rule=rule)

    def worker_init(self, d):
        return DianaWorker(shift=np.zeros(d))

    def worker_vector(self, ws, grad, full=False):
        # into a reused vector: DIANA's message is consumed within the step (it has no
        # multi-round compressors, whose rounds keep the vector between messages)
        return np.subtract(grad, ws.shift, out=self.work("vector", grad.size))

    def memory_step(self, ws):
        return ws.shift, self.hyper.alpha  # h_i += alpha y, decoded straight into h_i

    def server_fields(self, d):
        if self.synchronous:
            return {"shift": np.zeros(d)}
        return {"shifts": np.zeros((self.n, d))}

    def sync_step(self, ss, batch, prox):
        # g_hat = sum_i w_i (h_i + y_i) = h + Y with Y = sum_i w_i y_i, then h += alpha Y,
        # i.e. h <- (1 - alpha) h + alpha g_hat, then the step (heavy ball: v <- beta v +
        # g_hat) on x: all fused, a cache-sized chunk at a time, in 5 memory passes instead
        # of 11 (7 instead of 16 with momentum; d = 10^7: ~60 ms a step), with the same
        # operations on every coordinate as Algorithm.step
        total = self.aggregate(batch, self.work("direction", ss.x.size))
        h = self.hyper
        keep, gamma = 1.0 - h.alpha, -h.gamma
        g = self.work("chunk", min(CHUNK, ss.x.size))
        for part in chunks(ss.x.size):
            gc, shift = g[:part.stop - part.start], ss.shift[part]
            np.add(total[part], shift, out=gc)
            shift *= keep
            axpy(h.alpha, gc, shift)
            if ss.velocity is not None:
                v = ss.velocity[part]
                v *= h.momentum
                v += gc
                gc = v
            axpy(gamma, gc, ss.x[part])
        ss.x = prox(ss.x, h.gamma)

    def entry(self, ss, msg, out):
        # g_hat = h_i + y, then h_i += alpha y as the worker moves its own copy (the same
        # decode_add with the same weight, so the two copies stay bit for bit equal)
        shift = ss.shifts[msg.worker]
        np.copyto(out, shift)
        msg.add_to(out)
        msg.add_to(shift, self.hyper.alpha)
