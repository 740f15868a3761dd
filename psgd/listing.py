"""``psgd list [NAME]``: every registered component and config section, parameter by parameter.

Each parameter line shows its name, what it means (the constraint's ``doc``), the values
allowed (the constraint's own description, so it cannot drift from what validation
enforces) and the default. A compressor whose bias depends on a ``variant`` parameter shows
the bias of each variant, found by building one instance per variant.
"""

from __future__ import annotations

import sys

from .errors import ConfigError

KINDS = ("compressor", "algorithm", "problem")


def _sections() -> dict:
    """Config sections that are not a registered component: name -> (summary, spec)."""
    from . import config, data

    return {
        "seed": ("the run's seed", {"seed": config.SEED}),
        "data": ("where the samples come from and how they are split", data.DATA_SPEC),
        "run": ("how the run proceeds and stops", config.RUN_SPEC),
        "output": ("where results go", config.OUTPUT_SPEC),
    }


def _summary(cls) -> str:
    doc = (cls.__doc__ or "").strip()
    return doc.splitlines()[0].strip() if doc else ""


def _param_lines(spec: dict) -> list[str]:
    if not spec:
        return ["      (no parameters)"]
    width = max(map(len, spec))
    lines = []
    for key, c in spec.items():
        default = "required" if c.required else f"default {c.default!r}"
        doc = f"{c.doc}; " if c.doc else ""
        allowed = c.describe()
        if key == "block_size":  # 'layer' is the problem's to decide (config._named_section)
            from .problems import with_layers

            allowed += f", or 'layer' (one block per layer of {' or '.join(with_layers())})"
        lines.append(f"      {key:<{width}}  {doc}allowed: {allowed}; {default}")
    return lines


def _instance(cls, params: dict, tries: int = 6):
    """Build ``cls`` with ``params`` plus a value for each parameter it says is missing."""
    params = dict(params)
    for _ in range(tries):
        try:
            return cls(**params)
        except ConfigError as exc:
            key = str(exc).split(":", 1)[0].rpartition(".")[2]
            if key not in cls.params or key in params or "missing" not in str(exc):
                return None
            params[key] = _some_value(cls.params[key])
    return None


def _some_value(constraint):
    """A value inside the constraint's range (the middle of a bounded interval)."""
    inner = getattr(constraint, "inner", constraint)
    lo, hi = getattr(inner, "lo", None), getattr(inner, "hi", None)
    if lo is not None and hi is not None:
        value = (lo + hi) / 2 if hi - lo <= 10 else lo + 1
        return int(value) if type(inner).__name__ == "Int" else float(value)
    return getattr(inner, "options", (None,))[0]


#: the choice parameters that decide whether a compressor is biased (sparse_dithering's
#: variant, cast's rounding)
_BIAS_PARAMS = ("variant", "rounding")


def _bias(cls) -> str:
    key = next((k for k in _BIAS_PARAMS if hasattr(cls.params.get(k), "options")), None)
    variant = cls.params.get(key) if key else None
    if variant is not None:
        parts = []
        for option in variant.options:
            c = _instance(cls, {key: option})
            kind = "?" if c is None else ("unbiased" if c.unbiased else "biased")
            parts.append(f"{option}: {kind}")
        return " [" + "; ".join(parts) + "]"
    return " [unbiased]" if cls.unbiased else " [biased]"


def _entries() -> dict:
    """name -> (heading, lines) for every component and section, grouped by kind."""
    from . import algorithms, compressors, problems  # noqa: F401  (fill the registry)
    from .registry import classes

    groups = {}
    for kind in KINDS:
        group = {}
        for name, cls in sorted(classes(kind).items()):
            extra = _bias(cls) if kind == "compressor" else ""
            group[name] = [f"  {name}{extra}: {_summary(cls)}"] + _param_lines(cls.params)
        groups[f"{kind}s"] = group
    groups["config sections"] = {
        name: [f"  {name}: {summary}"] + _param_lines(spec)
        for name, (summary, spec) in _sections().items()}
    return groups


def show(name: str | None = None, out=None) -> int:
    """Print every entry, or only ``name``'s; exit 2 with one line for an unknown name."""
    out = out or sys.stdout
    groups = _entries()
    if name is None:
        for group, entries in groups.items():
            print(f"{group}:", file=out)
            for lines in entries.values():
                print("\n".join(lines), file=out)
        return 0
    for group, entries in groups.items():
        if name in entries:
            print("\n".join(entries[name]), file=out)
            return 0
    known = sorted(n for entries in groups.values() for n in entries)
    raise ConfigError(f"psgd list: no entry named {name!r}; allowed: one of {', '.join(known)}")
