"""The problem extension surface: the :class:`Problem` base class and the entry points that
dispatch to the registered problem families by ``problem.name``.

A family subclasses :class:`Problem`, registers it with ``@register("problem")`` and defines
``name``, ``params`` (:mod:`psgd.validation` constraints) and ``build``; it may override the
checks (``check_config``, ``check_workers``), ``dimension`` and the reference hooks
(``reference``, ``constants``), whose defaults answer "unknown".
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from ..registry import lookup, names
from ..validation import check_params, shown
from .problemset import ProblemSet


class Problem:
    """Base of the registered problems: ``name``, ``params``, ``build`` and optional hooks."""

    name: str
    params: dict = {}
    uses_data = False
    #: the data sources this problem accepts (``data.source``)
    sources: tuple = ("synthetic", "libsvm")
    #: keys outside ``params`` are kept as given (the ``python`` problem's factory params)
    open_params = False

    @classmethod
    def check_config(cls, params: dict, data_cfg: dict) -> None:
        """Rules between this problem's params and the resolved ``data`` section."""
        if not cls.uses_data and data_cfg.get("source") == "libsvm":
            raise ConfigError("data.source: got 'libsvm'; allowed: synthetic "
                              f"(problem {cls.name} uses no data file)")
        source = data_cfg.get("source")
        if source not in cls.sources:
            raise ConfigError(f"data.source: got {shown(source)}; allowed: "
                              f"{', '.join(cls.sources)} (for problem {cls.name})")

    @classmethod
    def check_workers(cls, params: dict, data_cfg: dict, n_workers: int) -> None:
        """Rules on the worker count (the data's sample count is checked by the data layer)."""

    @classmethod
    def check_build(cls, params: dict, data_cfg: dict, seed: int, n_workers: int,
                    batch_size=None) -> None:
        """Rules that need the problem built (the ``python`` factory's objects); by default
        none, since building a data problem reads the whole file."""

    @classmethod
    def dimension(cls, params: dict, data_cfg: dict) -> int | None:
        """d when the config decides it, None when only the data file does."""
        return None

    @classmethod
    def layers(cls, params: dict, data_cfg: dict) -> list | None:
        """The sizes of the model's layers in vector order when the config decides them (what
        ``block_size: layer`` compresses block by block), None for a problem without layers.
        ``build`` must give ``ProblemSet.layers`` the same list."""
        return None

    @classmethod
    def build(cls, params, data_cfg, seed, n_workers, workers=None) -> ProblemSet:
        raise NotImplementedError  # pragma: no cover - every family defines it

    @classmethod
    def reference(cls, ps: ProblemSet, tol: float):
        """``(x_star, f_star, info)`` to accuracy ``tol``, or None: unknown."""
        return None

    @classmethod
    def constants(cls, ps: ProblemSet) -> dict:
        """``{"L", "L_i", "mu"}`` from the objectives (each None where they do not know)."""
        g = ps.global_objective
        L_i = [ps.local(i).smoothness() for i in range(ps.n_workers)]
        return {"L": g.smoothness(), "L_i": None if None in L_i else L_i,
                "mu": g.strong_convexity()}


def _family(problem_cfg: dict) -> type:
    return lookup("problem", problem_cfg.get("name"))


def _params(problem_cfg: dict) -> dict:
    return {k: v for k, v in problem_cfg.items() if k != "name"}


def check_config(problem_cfg: dict, data_cfg: dict) -> None:
    """The problem's own rules on resolved ``problem`` and ``data`` sections (config.validate)."""
    _family(problem_cfg).check_config(_params(problem_cfg), data_cfg)


def check_workers(problem_cfg: dict, data_cfg: dict, n_workers: int) -> None:
    """The problem's rules on the worker count (rosenbrock: exactly 2)."""
    _family(problem_cfg).check_workers(_params(problem_cfg), data_cfg, n_workers)


def check_build(cfg: dict, n_workers: int) -> None:
    """What only building the problem can show, on a resolved config (psgd run, validate -n)."""
    _family(cfg["problem"]).check_build(_params(cfg["problem"]), cfg["data"], cfg["seed"],
                                        n_workers, cfg["algorithm"].get("batch_size"))


def dimension(problem_cfg: dict, data_cfg: dict) -> int | None:
    """d when the config decides it (synthetic data, quadratic, rosenbrock), else None."""
    return _family(problem_cfg).dimension(_params(problem_cfg), data_cfg)


def layers(problem_cfg: dict, data_cfg: dict) -> list | None:
    """The problem's layer sizes (mlp, cnn), None when it has none."""
    return _family(problem_cfg).layers(_params(problem_cfg), data_cfg)


def with_layers() -> list:
    """Names of the problems that have layers (``block_size: layer`` applies to them)."""
    from ..registry import classes

    return sorted(name for name, cls in classes("problem").items()
                  if cls.layers.__func__ is not Problem.layers.__func__)


def uses_data(problem_cfg: dict) -> bool:
    return bool(_family(problem_cfg).uses_data)


def check_problem_config(problem_cfg, data_cfg=None, n_workers=None) -> dict:
    """Validate a raw ``problem`` section (``name`` plus that problem's params); defaults filled.

    With ``data_cfg`` (raw or resolved) also the problem's rules on it, and with ``n_workers``
    its worker rules. ``config.validate`` is the path a config takes; this is for callers that
    hold only the problem section.
    """
    from .. import data as _data

    if problem_cfg is None:
        problem_cfg = {}
    if not isinstance(problem_cfg, dict):
        raise ConfigError(f"problem: got {shown(problem_cfg)}; allowed: a mapping with a name")
    cfg = dict(problem_cfg)
    if "name" not in cfg:
        raise ConfigError(f"problem.name: missing; allowed: one of {', '.join(names('problem'))}")
    cls = lookup("problem", cfg.pop("name"))
    params = check_params("problem", cls.params, cfg, cls.open_params)
    if data_cfg is not None:
        data_cfg = _data.check_data_config(data_cfg)
        cls.check_config(params, data_cfg)
        if n_workers is not None:
            cls.check_workers(params, data_cfg, n_workers)
    return {"name": cls.name, **params}


def make_problem(problem_cfg: dict, data_cfg: dict, seed: int, n_workers: int,
                 workers=None) -> ProblemSet:
    """Build the ProblemSet for ``n_workers`` workers, deterministically from (configs, seed).

    ``problem_cfg`` and ``data_cfg`` are the *resolved* sections of :func:`psgd.config.validate`
    (every default filled); they are not validated again. What needs the worker count is
    checked here: the problem's worker rules and enough samples per worker (ConfigError).
    ``workers`` (an iterable of worker indices, possibly empty) loads only their shards of a
    data file, so a worker rank holds 1/n of the data; ``local(i)`` of another worker and the
    global objective then raise. Unreadable data raise DataFormatError.
    """
    if isinstance(n_workers, bool) or not isinstance(n_workers, (int, np.integer)) \
            or n_workers < 1:
        raise ConfigError(f"n_workers: got {shown(n_workers)}; allowed: an integer >= 1")
    n_workers = int(n_workers)
    cls = _family(problem_cfg)
    params = _params(problem_cfg)
    cls.check_workers(params, data_cfg, n_workers)
    if workers is not None:
        workers = sorted({int(w) for w in workers})  # empty: no shard, only the shape
        if workers and (workers[0] < 0 or workers[-1] >= n_workers):
            raise ConfigError(f"workers: got {shown(workers)}; allowed: indices in "
                              f"[0, {n_workers})")
    ps = cls.build(params, data_cfg, int(seed), n_workers, workers)
    ps.family = cls
    return ps
