"""DGC (Lin, Han, Mao, Wang & Dally 2018, Deep Gradient Compression): sparsified error
feedback with momentum correction and momentum factor masking.

Worker i keeps a momentum u_i and an accumulator v_i, both local. Per gradient g::

    u_i <- m u_i + g          (momentum correction: momentum before sparsification)
    v_i <- v_i + u_i          (the local accumulation, the error memory)
    send C(v_i)               (top_k or threshold)
    v_i <- v_i - C(v_i);  u_i[sent] <- 0   (momentum factor masking)

and the server steps ``x <- x - gamma sum_i w_i C(v_i)`` (direct form: it keeps no
momentum; the momentum lives in the workers' u_i). Clearing u at the sent coordinates is
what stops the stale momentum of a coordinate that was just applied from pushing it again.
``v - C(v)`` is 0 at the sent coordinates up to the float32 rounding of the sent values,
which stays in v as classic error feedback keeps it. With m = 0 this is classic EF with
gamma on the server. The paper's warm-up, gradient clipping and local gradient clipping
are training heuristics, not part of the recursion, and are left out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from ..registry import register
from ..validation import Real
from .base import COMMON_PARAMS, Algorithm, Hyper, axpy

#: the sparsifiers whose sent coordinates are what momentum factor masking clears
SPARSIFIERS = ("top_k", "threshold")


@dataclass
class DGCWorker:
    momentum: np.ndarray     # u_i
    accumulated: np.ndarray  # v_i


@register("algorithm")
class DGC(Algorithm):
    """DGC: local momentum, accumulation, top-k/threshold of it, sent coordinates cleared."""

    name = "dgc"
    needs_decoded = True
    forms = ("direct",)
    params = {**COMMON_PARAMS,
              "momentum": Real(0.0, 1.0, closed="left", default=0.9,
                               doc="m in u <- m u + g (0: classic EF with gamma on the server)")}

    @classmethod
    def check_config(cls, cfg):
        super().check_config(cfg)
        name = cfg["compressor"]["name"]
        if name not in SPARSIFIERS:
            raise ConfigError(f"compressor.name: got {name!r}; allowed for dgc: "
                              f"{', '.join(SPARSIFIERS)} (momentum factor masking clears the "
                              f"coordinates a sparsifier sent)")
        if cfg["algorithm"]["stepsize"] == "theory":
            raise ConfigError("algorithm.stepsize: got 'theory'; allowed for dgc: a number "
                              "(no theorem gives DGC a step size; e.g. --set algorithm.stepsize=0.1)")

    @classmethod
    def resolve(cls, cfg, compressor, consts, weights, tau):
        a = cfg["algorithm"]
        # Hyper.momentum is the workers' m here (reported in summary.json); the server
        # keeps no velocity (see server_init and step)
        return Hyper(gamma=float(a["stepsize"]), momentum=float(a["momentum"]), form="direct",
                     rule="given in the config")

    @property
    def beta(self) -> float:
        return self.hyper.momentum

    def worker_init(self, d):
        return DGCWorker(momentum=np.zeros(d), accumulated=np.zeros(d))

    def worker_vector(self, ws, grad, full=False):
        ws.momentum *= self.beta
        ws.momentum += grad
        ws.accumulated += ws.momentum
        return ws.accumulated

    def server_init(self, x0):
        ss = super().server_init(x0)
        ss.velocity = None  # the momentum is the workers' (u_i), not a server heavy ball
        return ss

    def step(self, ss, direction, prox):
        axpy(-self.hyper.gamma, direction, ss.x)
        ss.x = prox(ss.x, self.hyper.gamma)

    def worker_update(self, ws, v, y):
        # v is ws.accumulated itself: subtract what was sent, clear u where it was sent
        ws.accumulated -= y
        ws.momentum[y != 0] = 0.0
