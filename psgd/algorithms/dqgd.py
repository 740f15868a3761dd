"""DQGD: distributed quantized gradient descent (Khirirat et al.); workers send Q(grad f_i).

QSGD and TernGrad are dqgd with their quantizer. It converges only to a neighbourhood whose
size grows with omega times the gradients' spread at x* (what DIANA removes).
"""

from __future__ import annotations

import numpy as np

from ..registry import register
from ..validation import Real
from .base import COMMON_PARAMS, Algorithm, Hyper
from .stepsize import step_size


@register("algorithm")
class DQGD(Algorithm):
    """Distributed quantized GD: workers send Q(grad f_i); QSGD/TernGrad are dqgd + their quantizer."""

    name = "dqgd"
    requires = "unbiased"
    params = {**COMMON_PARAMS, "momentum": Real(0, 1, closed="left", default=0.0)}

    @classmethod
    def resolve(cls, cfg, compressor, consts, weights, tau):
        a = cfg["algorithm"]

        def theory():
            omega = compressor.omega(consts.d)
            # DIANA paper Thm 10 (papers.md B.2), the largest step it allows: every f_i
            # L-smooth and mu-strongly convex, gamma <= 2/((mu + L)(1 + 2 omega/n)). Its proof
            # runs worker by worker (co-coercivity of each f_i), so unequal shards give
            # min_i 2/((mu + L_i)(1 + 2 omega w_i)).
            L_i = np.asarray(consts.L_i, dtype=np.float64)
            g = float(np.min(2.0 / ((consts.mu + L_i) * (1.0 + 2.0 * omega * np.asarray(weights)))))
            return g, "min_i 2/((mu+L_i)(1+2 omega w_i)) (proven, sync)"

        gamma, rule = step_size(a, consts, theory, tau)
        return Hyper(gamma=gamma, momentum=a["momentum"], form=cls.default_form(a), rule=rule)
