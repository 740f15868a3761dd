"""``python``: the user's own model, from a factory function (``problem.factory``).

Config::

    problem: {name: python, factory: "my_package.my_module:make", hidden: 32, ...}

The other keys of the section are the factory's parameters, passed through as given. Every
rank calls ``factory(params, data, seed, n_workers)`` (``params``: those keys; ``data``: the
resolved ``data`` section; ``seed``: the config's seed) and gets a list of ``n_workers``
objects, one per worker, each with

* ``value_and_grad(x) -> (float, ndarray)``: worker i's f_i and its gradient at the flat
  vector ``x`` (length d);
* ``d`` (an int) or ``x0`` (the initial point, a flat array; worker 0's is used), and
  optionally ``dtype`` (``numpy.float32``: ``x`` is handed over as float32; gradients may be
  float32 or float64 either way);
* optionally ``weight`` (its share of the samples; all or none; equal shares if absent),
  ``n_samples`` (epochs are then counted), ``stochastic_grad(x, batch_size, rng)`` (needed
  for ``algorithm.batch_size``), ``evaluate(x) -> {name: float}`` (extra metrics, e.g. test
  accuracy: the server logs their weighted mean over the workers that define it), and the
  constants ``L`` (smoothness) and ``mu`` (strong convexity) where known.

The loss in metrics.jsonl is the weighted mean of the workers' values, computed on rank 0
(which builds every worker's object, as every rank does). f* is unknown, so ``subopt`` is
null and ``run.target`` is refused; ``stepsize: theory`` needs ``L`` and ``mu`` on every
object. Before any step (``psgd run``; ``psgd validate -n N``) the objects are checked at the
initial point: a factory that cannot be imported, raises, returns the wrong number of
objects, a gradient of the wrong shape, or NaN is one line and exit 2. A failure after that
names the rank (the worker's or the server's). ``examples/my_problem.py`` is a complete
factory to copy.
"""

from __future__ import annotations

import importlib
import json

import numpy as np

from ..errors import ConfigError, RunError
from ..registry import register
from ..validation import Str, shown
from .builders import Problem
from .objectives import Objective
from .problemset import ProblemSet
from .regulariser import L1Reg


def resolve_factory(spec: str):
    """``"package.module:function"`` -> the function; ConfigError naming what is missing."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"problem.factory: got {shown(spec)}; allowed: "
                          "'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any import failure of the user's module
        hint = (" (is its directory on PYTHONPATH on every rank?)"
                if isinstance(exc, ModuleNotFoundError) else "")
        raise ConfigError(f"problem.factory: cannot import module {module_name!r} of "
                          f"{spec!r}: {type(exc).__name__}: {exc}{hint}") from None
    factory = module
    for part in attr.split("."):
        factory = getattr(factory, part, None)
        if factory is None:
            raise ConfigError(f"problem.factory: module {module_name!r} has no {attr!r} "
                              f"(from {spec!r}); allowed: a function defined there")
    if not callable(factory):
        raise ConfigError(f"problem.factory: {spec!r} is a {type(factory).__name__}, not a "
                          "function")
    return factory


def _params(params: dict) -> dict:
    return {k: v for k, v in params.items() if k != "factory"}


#: the last factory call of this process (psgd run checks the objects, then builds the run
#: from the same ones): key -> (objects, checked facts)
_CACHE: dict = {}


def _key(params, data_cfg, seed, n_workers) -> str:
    return json.dumps([params, data_cfg, int(seed), int(n_workers)], sort_keys=True, default=str)


def _objects(params, data_cfg, seed, n_workers):
    """Call the factory once per (config, seed, n) in this process and check what it gave."""
    key = _key(params, data_cfg, seed, n_workers)
    if key not in _CACHE:
        spec = params["factory"]
        factory = resolve_factory(spec)
        try:
            objs = factory(_params(params), dict(data_cfg), int(seed), int(n_workers))
        except ConfigError as exc:  # the factory's own one-line refusal
            raise ConfigError(f"problem.factory {spec}: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - the user's code: one line, before any step
            raise ConfigError(f"problem.factory {spec} raised {type(exc).__name__}: "
                              f"{exc}") from None
        facts = _check(spec, objs, int(n_workers))
        _CACHE.clear()
        _CACHE[key] = (list(objs), facts)
    return _CACHE[key]


def _check(spec: str, objs, n: int) -> dict:
    """d, x0, weights, n_samples and dtype of the objects, each checked at x0."""
    what = f"problem.factory {spec}"
    if not isinstance(objs, (list, tuple)) or len(objs) != n:
        got = f"{len(objs)} objects" if isinstance(objs, (list, tuple)) else \
            f"a {type(objs).__name__}"
        raise ConfigError(f"{what} returned {got}; allowed: a list of {n} objects, one per "
                          f"worker (n_workers = {n})")
    first = objs[0]
    x0 = getattr(first, "x0", None)
    if x0 is not None:
        x0 = np.asarray(x0, dtype=np.float64).ravel()
        d = x0.size
    else:
        d = getattr(first, "d", None)
        if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1:
            raise ConfigError(f"{what}: worker 0's object has neither x0 nor an integer d >= 1 "
                              f"(got d = {shown(d)}); allowed: one of them, the length of x")
        d = int(d)
        x0 = np.zeros(d)
    if not np.all(np.isfinite(x0)):
        raise ConfigError(f"{what}: worker 0's x0 contains NaN or Inf")
    weights = [getattr(o, "weight", None) for o in objs]
    if all(w is None for w in weights):
        weights = np.full(n, 1.0 / n)
    elif any(w is None for w in weights):
        raise ConfigError(f"{what}: worker {weights.index(None)} has no weight but others do; "
                          "allowed: a weight on every object or on none (equal shares)")
    else:
        weights = np.asarray(weights, dtype=np.float64)
        if not np.all(np.isfinite(weights)) or np.any(weights < 0) or weights.sum() <= 0:
            raise ConfigError(f"{what}: weights {weights.tolist()}; allowed: finite numbers "
                              ">= 0 with a positive sum")
        weights = weights / weights.sum()
    counts = [getattr(o, "n_samples", None) for o in objs]
    n_samples = int(sum(counts)) if all(isinstance(c, (int, np.integer)) for c in counts) \
        else None
    for j, obj in enumerate(objs):
        if not callable(getattr(obj, "value_and_grad", None)):
            raise ConfigError(f"{what}: worker {j}'s object ({type(obj).__name__}) has no "
                              "value_and_grad(x) method")
        dtype = np.dtype(getattr(obj, "dtype", np.float64))
        if dtype not in (np.float32, np.float64):
            raise ConfigError(f"{what}: worker {j}'s dtype is {dtype}; allowed: float32, "
                              "float64")
        try:
            value, grad = obj.value_and_grad(x0.astype(dtype))
            value = float(value)
            grad = np.asarray(grad)
        except Exception as exc:  # noqa: BLE001 - the user's code, before any step
            raise ConfigError(f"{what}: worker {j}'s value_and_grad(x0) raised "
                              f"{type(exc).__name__}: {exc}") from None
        if grad.shape != (d,):
            raise ConfigError(f"{what}: worker {j}'s value_and_grad(x0) returned a gradient of "
                              f"shape {grad.shape}; allowed: shape ({d},), flat like x0")
        if not np.isfinite(value) or not np.all(np.isfinite(grad)):
            raise ConfigError(f"{what}: worker {j}'s value_and_grad(x0) returned NaN or Inf "
                              f"(value {value!r})")
    return {"d": d, "x0": x0, "weights": weights, "n_samples": n_samples}


class PluginObjective(Objective):
    """Worker j's object as an Objective: float64 in and out, its failures one line."""

    def __init__(self, obj, j: int, d: int, spec: str):
        self.obj, self.j, self.d, self.spec = obj, j, d, spec
        self.dtype = np.dtype(getattr(obj, "dtype", np.float64))
        self.n_samples = getattr(obj, "n_samples", None)

    def _call(self, method, *args):
        try:
            return getattr(self.obj, method)(*args)
        except Exception as exc:  # noqa: BLE001 - reported with the worker it happened on
            raise RunError(f"problem.factory {self.spec}: worker {self.j}'s {method} raised "
                           f"{type(exc).__name__}: {exc}") from None

    def _grad(self, grad, method) -> np.ndarray:
        g = np.asarray(grad, dtype=np.float64)
        if g.shape != (self.d,):
            raise RunError(f"problem.factory {self.spec}: worker {self.j}'s {method} returned "
                           f"shape {g.shape}, expected ({self.d},)")
        return g

    def value_and_grad(self, x):
        value, grad = self._call("value_and_grad", np.asarray(x, dtype=self.dtype))
        return float(value), self._grad(grad, "value_and_grad")

    def stochastic_grad(self, x, batch_size, rng):
        if not callable(getattr(self.obj, "stochastic_grad", None)):
            raise RunError(f"problem.factory {self.spec}: worker {self.j}'s object has no "
                           "stochastic_grad(x, batch_size, rng), which algorithm.batch_size "
                           "needs")
        g = self._call("stochastic_grad", np.asarray(x, dtype=self.dtype), batch_size, rng)
        return self._grad(g, "stochastic_grad")

    def evaluate(self, x):
        if not callable(getattr(self.obj, "evaluate", None)):
            return None
        return self._call("evaluate", np.asarray(x, dtype=self.dtype))

    def smoothness(self):
        return getattr(self.obj, "L", None)

    def strong_convexity(self):
        return getattr(self.obj, "mu", None)


class WeightedSum(Objective):
    """f = sum_i w_i f_i over every worker's objective (rank 0's loss and global gradient).

    Its constants are bounds from the workers': L <= sum w_i L_i, mu >= sum w_i mu_i.
    """

    def __init__(self, parts, weights):
        self.parts, self.weights = parts, np.asarray(weights, dtype=np.float64)
        self.d = parts[0].d
        self.n_samples = parts[0].n_samples and sum(p.n_samples or 0 for p in parts)

    def value_and_grad(self, x):
        value, grad = 0.0, np.zeros(self.d)
        for w, part in zip(self.weights, self.parts):
            v, g = part.value_and_grad(x)
            value += w * v
            grad += w * g
        return value, grad

    def _bound(self, which):
        values = [getattr(p, which)() for p in self.parts]
        return None if None in values else float(np.dot(self.weights, values))

    def smoothness(self):
        return self._bound("smoothness")

    def strong_convexity(self):
        return self._bound("strong_convexity")


def weighted_metrics(parts, weights, x) -> dict:
    """The weighted mean of each metric over the workers whose evaluate reports it."""
    sums, mass = {}, {}
    for w, part in zip(weights, parts):
        found = part.evaluate(x)
        for name, value in (found or {}).items():
            sums[name] = sums.get(name, 0.0) + w * float(value)
            mass[name] = mass.get(name, 0.0) + w
    return {name: sums[name] / mass[name] for name in sums if mass[name] > 0}


@register("problem")
class PythonProblem(Problem):
    """Your own model: factory(params, data, seed, n_workers) -> one object per worker."""

    name = "python"
    uses_data = True
    sources = ("synthetic", "libsvm", "digits")
    open_params = True
    params = {"factory": Str(required=True,
                             doc="'package.module:function' on the workers' PYTHONPATH; the "
                                 "section's other keys are its parameters")}

    @classmethod
    def check_config(cls, params, data_cfg):
        super().check_config(params, data_cfg)
        resolve_factory(params["factory"])  # importable, before anything else

    @classmethod
    def check_build(cls, params, data_cfg, seed, n_workers, batch_size=None):
        objs, _ = _objects(params, data_cfg, seed, n_workers)
        if batch_size is not None:
            for j, obj in enumerate(objs):
                if not callable(getattr(obj, "stochastic_grad", None)):
                    raise ConfigError(f"algorithm.batch_size: got {batch_size}, but worker "
                                      f"{j}'s object from {params['factory']} has no "
                                      "stochastic_grad(x, batch_size, rng); allowed: null")

    @classmethod
    def build(cls, params, data_cfg, seed, n_workers, workers=None):
        objs, facts = _objects(params, data_cfg, seed, n_workers)
        spec = params["factory"]
        parts = [PluginObjective(o, j, facts["d"], spec) for j, o in enumerate(objs)]
        weights = facts["weights"]
        return ProblemSet(
            name=cls.name, params=params, d=facts["d"], weights=weights,
            n_samples=facts["n_samples"], local_factory=lambda i: parts[i],
            global_factory=lambda: WeightedSum(parts, weights), reg=L1Reg(0.0),
            x0=facts["x0"], info={"factory": spec}, kind="python",
            evaluator=lambda x: weighted_metrics(parts, weights, x))
