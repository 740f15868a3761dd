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
    estimate: np.ndarray | None = None   # synchronous: g = sum_i w_i g_i


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
        return {"estimate": np.zeros(d)} if self.synchronous else {}

    def sync_direction(self, ss, batch):
        for msg in batch:  # g += sum_i w_i C(grad f_i - g_i), one fused pass per message
            msg.add_to(ss.estimate, self.weights[msg.worker])
        return ss.estimate

    def total_direction(self, ss, total):
        ss.estimate += total  # g += sum_i w_i C(grad f_i - g_i), given whole
        return ss.estimate

    def entry(self, ss, msg, out):
        # asynchronous: the table's row of worker i is its g_i; the message moves it
        np.copyto(out, ss.table.entries[msg.worker])
        msg.add_to(out)
