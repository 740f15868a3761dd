"""Declarative parameter constraints (the scikit-learn ``_param_validation`` idea).

A component declares ``params = {"levels": Int(1), "norm": Choice("2", "inf")}``;
:func:`check_params` checks a mapping against it and raises one-line
:class:`~psgd.errors.ConfigError` messages of the form
``compressor.levels: got 0; allowed: an integer >= 1``.
"""

from __future__ import annotations

import math
import numbers
import reprlib

from .errors import ConfigError

#: the default range of an ``Int`` without an upper bound: d, k, block sizes and counts are
#: int32 on the wire and in the kernels, so nothing larger can run
MAX_INT = 2**31 - 1
#: the default magnitude bound of a ``Real``: keeps every product with a gradient, a scale or a
#: time finite in float64 (and a float32 scale finite); tighter ranges are declared where known
MAX_REAL = 1e12
#: at most this many characters of a rejected value appear in an error message
SHOWN_CHARS = 80

_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxdict, _REPR.maxlist, _REPR.maxtuple = 3, 4, 4, 4
_REPR.maxset = _REPR.maxfrozenset = _REPR.maxdeque = _REPR.maxarray = 4
_REPR.maxstring, _REPR.maxlong, _REPR.maxother = SHOWN_CHARS, 40, SHOWN_CHARS


def shown(value) -> str:
    """``repr(value)`` cut to about :data:`SHOWN_CHARS` characters.

    reprlib stops descending after a few levels and items, so even a value built from YAML
    aliases (a billion shared leaves) is described in microseconds, not printed whole.
    """
    text = _REPR.repr(value)
    if len(text) > SHOWN_CHARS:
        text = text[:SHOWN_CHARS - 3] + "..."
    return text


class Constraint:
    """One parameter's allowed values; ``default`` is used when the key is absent."""

    required = False

    def __init__(self, default=None, *, required=False, doc=""):
        self.default = default
        self.required = required
        self.doc = doc

    def describe(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def convert(self, value):
        """Return the checked (possibly normalised) value, or raise ValueError."""
        raise NotImplementedError

    def check(self, path: str, value):
        try:
            return self.convert(value)
        except (ValueError, TypeError):
            raise ConfigError(
                f"{path}: got {shown(value)}; allowed: {self.describe()}") from None


class Int(Constraint):
    """An integer in [lo, hi]; ``hi`` defaults to :data:`MAX_INT` and ``lo`` to -MAX_INT."""

    def __init__(self, lo=None, hi=None, default=None, **kw):
        super().__init__(default, **kw)
        self.lo = -MAX_INT if lo is None else lo
        self.hi = MAX_INT if hi is None else hi

    def describe(self):
        return f"an integer in [{self.lo}, {self.hi}]"

    def convert(self, value):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ValueError
        value = int(value)
        if (self.lo is not None and value < self.lo) or (self.hi is not None and value > self.hi):
            raise ValueError
        return value


class Real(Constraint):
    """A finite real number in an interval; ``closed`` is 'both', 'left', 'right' or 'neither'.

    A bound left out is :data:`MAX_REAL` in magnitude (and then included), never infinite.
    """

    def __init__(self, lo=None, hi=None, closed="both", default=None, **kw):
        super().__init__(default, **kw)
        if lo is None:
            lo, closed = -MAX_REAL, ("both" if closed in ("both", "left") else "left")
        if hi is None:
            hi, closed = MAX_REAL, ("both" if closed in ("both", "right") else "right")
        self.lo, self.hi, self.closed = lo, hi, closed

    def describe(self):
        left = "[" if self.closed in ("both", "left") else "("
        right = "]" if self.closed in ("both", "right") else ")"
        return f"a number in {left}{self.lo:g}, {self.hi:g}{right}"

    def convert(self, value):
        if isinstance(value, str):
            # YAML 1.1 (PyYAML) reads 1e-6 as a string: it needs a dot (1.0e-6). Accept it.
            value = float(value.strip())
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError
        try:
            value = float(value)
        except OverflowError:  # an integer beyond float64 (YAML integers are unbounded)
            raise ValueError from None
        if not math.isfinite(value):
            raise ValueError
        lo_ok = value >= self.lo if self.closed in ("both", "left") else value > self.lo
        hi_ok = value <= self.hi if self.closed in ("both", "right") else value < self.hi
        if not (lo_ok and hi_ok):
            raise ValueError
        return value


class Choice(Constraint):
    """One of a fixed set of values; YAML numbers are compared by their text (norm: 2 == '2')."""

    def __init__(self, *options, default=None, **kw):
        super().__init__(default, **kw)
        self.options = tuple(options)

    def describe(self):
        return "one of " + ", ".join(str(o) for o in self.options)

    def convert(self, value):
        if isinstance(value, bool):
            raise ValueError
        for option in self.options:
            if value == option or (isinstance(value, (int, float, str)) and str(value) == str(option)):
                return option
        raise ValueError


class Bool(Constraint):
    def describe(self):
        return "true or false"

    def convert(self, value):
        if not isinstance(value, bool):
            raise ValueError
        return value


class Str(Constraint):
    def describe(self):
        return "a non-empty string"

    def convert(self, value):
        if not isinstance(value, str) or not value:
            raise ValueError
        return value


class Nullable(Constraint):
    """``null`` or what ``inner`` allows."""

    def __init__(self, inner: Constraint, default=None, **kw):
        super().__init__(default, **kw)
        self.inner = inner

    def describe(self):
        return f"null or {self.inner.describe()}"

    def convert(self, value):
        return None if value is None else self.inner.convert(value)


class AnyOf(Constraint):
    """The first of several constraints that accepts the value (e.g. a number or 'theory')."""

    def __init__(self, *inners: Constraint, default=None, **kw):
        super().__init__(default, **kw)
        self.inners = inners

    def describe(self):
        return " or ".join(c.describe() for c in self.inners)

    def convert(self, value):
        for inner in self.inners:
            try:
                return inner.convert(value)
            except (ValueError, TypeError):
                continue
        raise ValueError


class Mapping(Constraint):
    """A mapping whose keys and values satisfy ``key`` and ``value`` (e.g. worker_delay)."""

    def __init__(self, key: Constraint, value: Constraint, default=None, **kw):
        super().__init__({} if default is None else default, **kw)
        self.key, self.value = key, value

    def describe(self):
        return f"a mapping from {self.key.describe()} to {self.value.describe()}"

    def convert(self, value):
        if not isinstance(value, dict):
            raise ValueError
        return {self.key.convert(k): self.value.convert(v) for k, v in value.items()}


class List(Constraint):
    """A list of ``min_len`` to ``max_len`` items, each what ``inner`` allows (e.g. layer widths)."""

    def __init__(self, inner: Constraint, min_len=0, max_len=64, default=None, **kw):
        super().__init__(default, **kw)
        self.inner, self.min_len, self.max_len = inner, min_len, max_len

    def describe(self):
        return (f"a list of {self.min_len} to {self.max_len} items, each "
                f"{self.inner.describe()}")

    def convert(self, value):
        if not isinstance(value, (list, tuple)) or not self.min_len <= len(value) <= self.max_len:
            raise ValueError
        return [self.inner.convert(v) for v in value]


class AnyMapping(Constraint):
    """Any mapping; its contents are validated by whoever owns them."""

    def describe(self):
        return "a mapping"

    def convert(self, value):
        if not isinstance(value, dict):
            raise ValueError
        return dict(value)


def check_params(path: str, spec: dict, given: dict, open_keys: bool = False) -> dict:
    """Validate ``given`` against ``spec``; return a new dict with every default filled in.

    Unknown keys are errors: a typo must never silently fall back to a default. With
    ``open_keys`` (the ``python`` problem, whose other keys are its factory's parameters)
    keys outside ``spec`` are kept as given, after the spec's own keys.
    """
    if given is None:
        given = {}
    if not isinstance(given, dict):
        raise ConfigError(f"{path}: got {shown(given)}; allowed: a mapping of "
                          f"{', '.join(spec) or 'no keys'}")
    unknown = sorted(set(given) - set(spec), key=str)
    if unknown and not open_keys:
        allowed = ", ".join(spec) if spec else "no parameters"
        key = str(unknown[0])
        key = key if len(key) <= SHOWN_CHARS else key[:SHOWN_CHARS - 3] + "..."
        raise ConfigError(f"{path}.{key}: unknown key; allowed: {allowed}")
    out = {}
    for key, constraint in spec.items():
        if key in given:
            out[key] = constraint.check(f"{path}.{key}", given[key])
        elif constraint.required:
            raise ConfigError(f"{path}.{key}: missing; allowed: {constraint.describe()}")
        else:
            out[key] = constraint.default
    for key in unknown:  # (open_keys only)
        if not isinstance(key, str):
            raise ConfigError(f"{path}: key {shown(key)} is not a string; allowed: string keys")
        out[key] = given[key]
    return out
