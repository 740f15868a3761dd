"""Uncompressed gradient descent: the baseline every compressed method is measured against."""

from __future__ import annotations

from ..registry import register
from ..validation import Real
from .base import COMMON_PARAMS, Algorithm, Hyper
from .stepsize import step_size


@register("algorithm")
class GD(Algorithm):
    """Uncompressed gradient descent (the baseline)."""

    name = "gd"
    compressed = False
    params = {**COMMON_PARAMS, "momentum": Real(0, 1, closed="left", default=0.0)}

    @classmethod
    def resolve(cls, cfg, compressor, consts, weights, tau):
        a = cfg["algorithm"]
        gamma, rule = step_size(a, consts, lambda: (1.0 / consts.L, "1/L (proven)"), tau)
        return Hyper(gamma=gamma, momentum=a["momentum"], form=cls.default_form(a), rule=rule)
