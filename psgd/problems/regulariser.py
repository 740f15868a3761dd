"""The non-smooth part R(x) = l1 ||x||_1, used only through its prox."""

from __future__ import annotations

import numpy as np


class L1Reg:
    """``R(x) = l1 * ||x||_1``; ``prox(x, step)`` is soft thresholding at ``step * l1``.

    With ``l1 == 0``, ``prox`` returns ``x`` itself (no copy); otherwise a new array.
    """

    def __init__(self, l1: float = 0.0):
        self.l1 = float(l1)

    def value(self, x) -> float:
        return 0.0 if self.l1 == 0.0 else float(self.l1 * np.abs(x).sum())

    def prox(self, x, step: float):
        if self.l1 == 0.0:
            return x
        return soft(x, float(step) * self.l1)

    def __repr__(self):
        return f"L1Reg(l1={self.l1!r})"


def _soft(x, t):
    return np.sign(x) * np.maximum(np.abs(x) - t, 0.0)


def soft(x, t):
    """Soft thresholding: the prox of t ||.||_1."""
    return np.sign(x) * np.maximum(np.abs(x) - t, 0.0)
