"""The smooth function interface every problem family implements."""

from __future__ import annotations

import numpy as np

#: largest d for which dense d x d Hessians (Newton, exact eigenvalues) are used
DENSE_MAX = 4096


class Objective:
    """One smooth function f_i (a worker's shard) or the global smooth part f.

    ``value``, ``grad``, ``value_and_grad`` take a float64 vector of length ``d``;
    ``stochastic_grad(x, batch_size, rng)`` is an unbiased estimate of ``grad(x)`` (samples with
    replacement; deterministic problems return the exact gradient); ``hessian(x)`` is a dense
    (d, d) array; ``smoothness()`` is the Lipschitz constant L of the gradient and
    ``strong_convexity()`` a lower bound mu on the Hessian's eigenvalues. Either may be None:
    "unknown" (the default), and then :func:`psgd.problems.constants` reports None.
    """

    d: int
    n_samples: int | None = None

    def value(self, x) -> float:
        return self.value_and_grad(x)[0]

    def grad(self, x) -> np.ndarray:
        return self.value_and_grad(x)[1]

    def grad_into(self, x, out: np.ndarray) -> np.ndarray:
        """The gradient, written into ``out`` where the objective can (a worker reuses one
        vector: at d = 10^7 a fresh 80 MB gradient a step costs more in page zeroing than
        its arithmetic); returns the gradient, which need not be ``out``."""
        return self.grad(x)

    def value_and_grad(self, x):  # pragma: no cover - abstract
        raise NotImplementedError

    def value_and_grad_norm(self, x):
        """(f(x), ||grad f(x)||): what the metrics log. Objectives that can stream override
        it, so the server need not hold a d-sized gradient it only takes the norm of."""
        value, grad = self.value_and_grad(x)
        return value, float(np.linalg.norm(grad))

    def stochastic_grad(self, x, batch_size: int, rng: np.random.Generator) -> np.ndarray:
        return self.grad(x)

    def hessian(self, x) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def smoothness(self) -> float | None:
        return None

    def strong_convexity(self) -> float | None:
        return None
