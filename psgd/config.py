"""Experiment configs: YAML (safe_load only), ``--set`` overrides, declarative validation.

:func:`load` returns the *resolved* config: a plain dict with every default filled
in, which is what ``psgd validate`` prints and what ``psgd run`` writes to
``DIR/config.yaml``. Every problem is a one-line :class:`ConfigError` naming the
key, the value and what is allowed; unknown keys are errors, never ignored.
"""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

from .errors import ConfigError
from .registry import lookup
from .validation import AnyMapping, Choice, Int, Mapping, Nullable, Real, Str, check_params

SECTIONS = ("seed", "problem", "data", "algorithm", "compressor", "run", "output")

RUN_SPEC = {
    "mode": Choice("sync", "async", default="sync"),
    "max_staleness": Int(0, default=0),
    "iterations": Int(1, default=1000),
    "target": Nullable(Real(0, closed="neither")),
    "log_every": Int(1, default=100),
    "timeout_s": Real(0, closed="neither", default=120.0),
    "checkpoint_every": Nullable(Int(1)),
    # sharded servers: S server ranks, each owning a block-aligned key range
    "servers": Int(1, default=1),
    # fault injection for tests: worker index (0-based) -> extra seconds per gradient
    "worker_delay": Mapping(Int(0), Real(0)),
    # optional compression of the model delta sent to workers: {compressor: {name: ...}}
    "downlink": Nullable(AnyMapping()),
}

OUTPUT_SPEC = {"dir": Str(default="runs/psgd")}


def _components():
    # Imported here so that `import psgd.config` stays light and registries are filled.
    from . import algorithms, compressors, data, problems  # noqa: F401
    return data


def _named_section(kind: str, given, default_name: str | None) -> dict:
    """Validate a ``{name: ..., **params}`` section against the named class's ``params``."""
    if given is None:
        given = {}
    if not isinstance(given, dict):
        raise ConfigError(f"{kind}: got {given!r}; allowed: a mapping with a name key")
    given = dict(given)
    name = given.pop("name", default_name)
    if name is None:
        raise ConfigError(f"{kind}.name: missing; allowed: a registered {kind} name (see `psgd list`)")
    cls = lookup(kind, name)
    params = check_params(kind, cls.params, given)
    return {"name": name, **params}


def validate(raw: dict) -> dict:
    """Validate a parsed config mapping; return the resolved config (a new dict)."""
    data_mod = _components()
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config: got a {type(raw).__name__}; allowed: a mapping of sections "
                          f"{', '.join(SECTIONS)}")
    unknown = [k for k in raw if k not in SECTIONS]
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown section; allowed: {', '.join(SECTIONS)}")
    cfg = {"seed": Int(0, default=0).check("seed", raw.get("seed", 0))}
    cfg["problem"] = _named_section("problem", raw.get("problem"), "logistic")
    cfg["data"] = data_mod.check_data_config(check_params("data", data_mod.DATA_SPEC, raw.get("data")))
    cfg["algorithm"] = _named_section("algorithm", raw.get("algorithm"), "diana")
    cfg["compressor"] = _named_section("compressor", raw.get("compressor"), "identity")
    cfg["run"] = check_params("run", RUN_SPEC, raw.get("run"))
    cfg["output"] = check_params("output", OUTPUT_SPEC, raw.get("output"))
    _cross_checks(cfg)
    return cfg


def _cross_checks(cfg: dict) -> None:
    """Checks that span sections, each with its reason."""
    from .algorithms import get_algorithm_class
    run = cfg["run"]
    if run["mode"] == "sync" and run["max_staleness"] != 0:
        raise ConfigError(f"run.max_staleness: got {run['max_staleness']}; allowed: 0 when "
                          f"run.mode is sync (set run.mode: async for bounded staleness)")
    if run["downlink"] is not None:
        down = check_params("run.downlink", {"compressor": AnyMapping(required=True)}, run["downlink"])
        run["downlink"] = {"compressor": _named_section("compressor", down["compressor"], None)}
    if run["servers"] > 1 and run["checkpoint_every"] is not None:
        raise ConfigError(f"run.checkpoint_every: got {run['checkpoint_every']}; allowed: null "
                          f"when run.servers > 1 (sharded servers write no checkpoints yet)")
    get_algorithm_class(cfg["algorithm"]["name"]).check_config(cfg)


def parse_override(item: str):
    """``a.b.c=value`` -> (["a", "b", "c"], value parsed as YAML)."""
    if "=" not in item:
        raise ConfigError(f"--set {item}: expected key.path=value, e.g. --set run.iterations=500")
    path, _, text = item.partition("=")
    keys = path.strip().split(".")
    if not all(keys):
        raise ConfigError(f"--set {item}: empty key in {path!r}")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {item}: value is not valid YAML ({_one_line(exc)})") from None
    return keys, value


def apply_overrides(raw: dict, overrides) -> dict:
    raw = copy.deepcopy(raw) if raw else {}
    for item in overrides or ():
        keys, value = parse_override(item)
        node = raw
        for i, key in enumerate(keys[:-1]):
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item}: {'.'.join(keys[:i + 1])} is {child!r}, not a mapping")
            node = child
        node[keys[-1]] = value
    return raw


def read_yaml(path) -> dict:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror or exc})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({_one_line(exc)})") from None
    return {} if raw is None else raw


def load(path, overrides=()) -> dict:
    """Read, override and validate a config file; return the resolved config."""
    return validate(apply_overrides(read_yaml(path), overrides))


def dump(cfg: dict) -> str:
    return yaml.safe_dump(cfg, sort_keys=False, default_flow_style=False)


def _one_line(exc) -> str:
    return " ".join(str(exc).split())
