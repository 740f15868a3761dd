"""EF21 (Richtarik, Sokolov & Fatkhullin 2021): error feedback that converges with any contraction.

Worker i keeps g_i, sends C(grad f_i - g_i) and moves g_i by it; the server mirrors every g_i
and steps with their weighted sum. Unlike classic EF the memories converge to grad f_i(x*).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..registry import register
from .base import Algorithm, Hyper, ServerState
from .stepsize import ef21_step, message_scale, step_size


@dataclass
class EF21Worker:
    estimate: np.ndarray  # g_i


@dataclass
class EF21Server(ServerState):
    estimates: np.ndarray | None = None  # every worker's g_i (n x d)


@register("algorithm")
class EF21(Algorithm):
    """EF21 (Richtarik, Sokolov & Fatkhullin 2021): workers send C(grad_i - g_i), g_i += C(.)."""

    name = "ef21"
    requires = "contraction"
    needs_decoded = True
    forms = ("table",)
    server_state = EF21Server

    @classmethod
    def resolve(cls, cfg, compressor, consts, weights, tau):
        a = cfg["algorithm"]
        gamma, rule = step_size(a, consts, lambda: (
            ef21_step(compressor, consts, weights), "1/(L + L~ sqrt(beta/theta)) (proven, sync)"),
            tau)
        return Hyper(gamma=gamma, form="table", message_scale=message_scale(compressor, consts.d),
                     rule=rule)

    def worker_init(self, d):
        return EF21Worker(estimate=np.zeros(d))

    def worker_vector(self, ws, grad, full=False):
        return grad - ws.estimate

    def worker_update(self, ws, v, y):
        ws.estimate += y

    def server_fields(self, d):
        return {"estimates": np.zeros((self.n, d))}

    def entry(self, ss, msg, out):
        estimate = ss.estimates[msg.worker]
        estimate += msg.y
        np.copyto(out, estimate)
