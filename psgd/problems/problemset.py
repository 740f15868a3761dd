"""ProblemSet: what one rank knows about the problem (weights, local and global objectives)."""

from __future__ import annotations

import numpy as np

from .objectives import Objective


class ProblemSet:
    """Everything one rank needs about the problem: built by :func:`make_problem`.

    Attributes: ``name``, ``params``, ``d``, ``n_workers``, ``weights`` (m_i/m, sums to 1: the
    server's aggregation weights), ``n_samples`` (m or None), ``reg`` (value, prox), ``kind``
    ("glm", "quadratic", "rosenbrock", ...), ``family`` (the registered problem class, whose
    ``reference`` and ``constants`` hooks :func:`solve` and :func:`constants` call).
    Methods: ``local(i)`` (worker i's Objective, 0-based,
    built on first use and cached), ``global_objective`` (the smooth part f), ``loss(x)``
    (f(x) + R(x)), ``initial_point()``, ``describe()``, ``evaluate(x)`` (extra metrics a
    problem logs beside the loss, e.g. ``test_accuracy``; ``{}`` unless it has an
    ``evaluator``). ``layers``: the sizes of the model's parameter groups in vector order
    (a network's layers; None for a problem without them); ``layer_shapes``: each group as
    the row-major matrix [m, n] it is (m n = its size), where it is one (what powersgd
    approximates; None otherwise).
    """

    def __init__(self, *, name, params, d, weights, n_samples, local_factory, global_factory,
                 reg, x0, info, kind, family=None, evaluator=None, layers=None,
                 layer_shapes=None):
        self.name = name
        self.params = dict(params)
        self.d = int(d)
        self.weights = np.asarray(weights, dtype=np.float64)
        self.n_workers = self.weights.size
        self.n_samples = n_samples
        self.reg = reg
        self.kind = kind
        self.family = family
        self._local_factory = local_factory
        self._global_factory = global_factory
        self._x0 = np.asarray(x0, dtype=np.float64)
        self._info = info
        self._locals: dict = {}
        self._global = None
        self._solution = None
        self._constants = None
        self._evaluator = evaluator
        self.layers = None if layers is None else [int(v) for v in layers]
        self.layer_shapes = None if layer_shapes is None else [[int(m), int(n)]
                                                               for m, n in layer_shapes]

    def local(self, i: int) -> Objective:
        i = int(i)
        if not 0 <= i < self.n_workers:
            raise IndexError(f"worker index {i} out of range [0, {self.n_workers})")
        if i not in self._locals:
            self._locals[i] = self._local_factory(i)
        return self._locals[i]

    @property
    def global_objective(self) -> Objective:
        if self._global is None:
            self._global = self._global_factory()
        return self._global

    def loss(self, x) -> float:
        """The full objective F(x) = f(x) + R(x)."""
        return self.global_objective.value(x) + self.reg.value(x)

    def initial_point(self) -> np.ndarray:
        return self._x0.copy()

    @property
    def x0(self) -> np.ndarray:
        """The initial point itself, read-only: what the runtime keeps (a d = 10^7 copy that
        nobody writes is 80 MB of a server's memory; an all-zero x0 is not even resident)."""
        view = self._x0.view()
        view.flags.writeable = False
        return view

    def evaluate(self, x) -> dict:
        """Extra metrics of the model ``x`` (name -> float), logged at every logging step."""
        return {} if self._evaluator is None else dict(self._evaluator(x))

    def describe(self) -> dict:
        out = {"problem": self.name, **self.params, "d": self.d, "n_workers": self.n_workers}
        out.update(self._info)
        return out

    def __repr__(self):
        return f"ProblemSet({self.describe()!r})"
