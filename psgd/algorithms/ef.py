"""Classic error feedback (Seide et al. 2014; Stich & Karimireddy 2019).

Worker: v = e_i + gamma * g; send C(v); e_i = v - C(v). The step is inside the message, so
the server applies x <- x - sum_batch w_i C(v_i) (direct form only). With heterogeneous data
the memories never vanish, so it stalls in a neighbourhood (the defect EF21 removes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..registry import register
from .base import Algorithm, Hyper
from .stepsize import ef21_step, message_scale, step_size


@dataclass
class EFWorker:
    error: np.ndarray  # e_i


@register("algorithm")
class EF(Algorithm):
    """Classic error feedback: workers send C(e_i + gamma g_i) and keep the residual."""

    name = "ef"
    requires = "contraction"
    needs_decoded = True
    forms = ("direct",)

    @classmethod
    def resolve(cls, cfg, compressor, consts, weights, tau):
        a = cfg["algorithm"]
        # HEURISTIC: the EF21 step for the same contraction (the classic EF analyses
        # give steps of the same order but with loose constants).
        gamma, rule = step_size(a, consts, lambda: (
            ef21_step(compressor, consts, weights), "EF21's step (heuristic for classic EF)"), tau)
        return Hyper(gamma=gamma, form="direct", message_scale=message_scale(compressor, consts.d),
                     rule=rule)

    def worker_init(self, d):
        return EFWorker(error=np.zeros(d))

    def worker_vector(self, ws, grad, full=False):
        return ws.error + self.hyper.gamma * grad

    def worker_update(self, ws, v, y):
        np.subtract(v, y, out=ws.error)

    def total_direction(self, ss, total):
        return total  # sync_direction's aggregate, given whole

    def step(self, ss, direction, prox):
        # gamma is already inside the messages
        np.subtract(ss.x, direction, out=ss.x)
        ss.x = prox(ss.x, self.hyper.gamma)
