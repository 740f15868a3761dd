"""One registry for every named component: compressors, algorithms, problems.

Components register themselves with a class decorator, so the list of what exists
can never drift from the code (numcodecs keeps a hand-written list and it drifts).
"""

from __future__ import annotations

from .errors import UnknownComponentError

_REGISTRY: dict[str, dict[str, type]] = {"compressor": {}, "algorithm": {}, "problem": {}}


def register(kind: str):
    """Class decorator: ``@register("compressor")`` on a class with a ``name`` attribute."""

    def deco(cls):
        table = _REGISTRY[kind]
        if cls.name in table and table[cls.name] is not cls:
            raise RuntimeError(f"two {kind}s named {cls.name!r}")
        table[cls.name] = cls
        return cls

    return deco


def lookup(kind: str, name, path: str | None = None) -> type:
    """The class registered as ``name``; errors name the key ``path`` (default: ``kind``)."""
    from .validation import shown

    table = _REGISTRY[kind]
    if not isinstance(name, str) or name not in table:
        raise UnknownComponentError(f"{path or kind}.name: got {shown(name)}; allowed: one of "
                                    f"{', '.join(sorted(table))}")
    return table[name]


def names(kind: str) -> list[str]:
    return sorted(_REGISTRY[kind])


def classes(kind: str) -> dict[str, type]:
    return dict(_REGISTRY[kind])


def unregister(kind: str, name: str) -> None:
    """Remove a registered component (a plug-in's tests clean up after themselves)."""
    _REGISTRY[kind].pop(name, None)
