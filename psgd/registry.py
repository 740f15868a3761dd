"""One registry for every named component: compressors, algorithms, problems.

Components register themselves with a class decorator, so the list of what exists
can never drift from the code (numcodecs keeps a hand-written list and it drifts).

Third-party packages add components through package entry points (numcodecs style), one
group per kind: ``psgd.compressors``, ``psgd.algorithms``, ``psgd.problems``. In the
plug-in's ``pyproject.toml``::

    [project.entry-points."psgd.problems"]
    my_model = "my_package.problems:MyModel"

An entry point's name is the component's ``name``. It is imported only when a config names
it (or ``psgd list`` shows everything); the class is registered as if it carried the
decorator (compressors with their codec-id check), and a plug-in that fails to import, or
whose class has another name, is a one-line ConfigError naming the entry point.
"""

from __future__ import annotations

from .errors import ConfigError, UnknownComponentError

_REGISTRY: dict[str, dict[str, type]] = {"compressor": {}, "algorithm": {}, "problem": {}}
#: entry-point groups, one per kind
GROUPS = {kind: f"psgd.{kind}s" for kind in _REGISTRY}
#: kinds whose every entry point has been loaded (psgd list, classes())
_ALL_LOADED: set = set()


def register(kind: str):
    """Class decorator: ``@register("compressor")`` on a class with a ``name`` attribute."""

    def deco(cls):
        table = _REGISTRY[kind]
        if cls.name in table and table[cls.name] is not cls:
            raise RuntimeError(f"two {kind}s named {cls.name!r}")
        table[cls.name] = cls
        return cls

    return deco


def entry_points(kind: str) -> dict:
    """The installed packages' entry points of ``kind``'s group: name -> EntryPoint."""
    from importlib.metadata import entry_points as _eps

    return {ep.name: ep for ep in _eps(group=GROUPS[kind])}


def _load(kind: str, ep) -> type:
    """Import one entry point's class and register it; ConfigError naming it if that fails."""
    where = f"entry point {ep.name} = {ep.value} (group {GROUPS[kind]})"
    try:
        cls = ep.load()
    except Exception as exc:  # noqa: BLE001 - any failure of a plug-in's import is one line
        raise ConfigError(f"{kind}.name: {ep.name!r} is the {where}, which failed to load: "
                          f"{type(exc).__name__}: {exc}") from None
    if getattr(cls, "name", None) != ep.name:
        raise ConfigError(f"{kind}.name: the {where} loads {cls!r}, whose name is "
                          f"{getattr(cls, 'name', None)!r}; allowed: a class whose name is "
                          f"{ep.name!r}")
    if _REGISTRY[kind].get(ep.name) is not cls:
        if kind == "compressor":  # the same codec-id check as the built-in compressors
            from .compressors.base import register_compressor
            try:
                register_compressor(cls)
            except (TypeError, RuntimeError) as exc:
                raise ConfigError(f"compressor.name: the {where}: {exc}") from None
        else:
            register(kind)(cls)
    return cls


def lookup(kind: str, name, path: str | None = None) -> type:
    """The class registered as ``name``; errors name the key ``path`` (default: ``kind``)."""
    from .validation import shown

    table = _REGISTRY[kind]
    if isinstance(name, str) and name not in table:
        ep = entry_points(kind).get(name)
        if ep is not None:
            return _load(kind, ep)
    if not isinstance(name, str) or name not in table:
        raise UnknownComponentError(f"{path or kind}.name: got {shown(name)}; allowed: one of "
                                    f"{', '.join(names(kind))}")
    return table[name]


def names(kind: str) -> list[str]:
    """Registered names and the installed plug-ins' (not imported for this)."""
    return sorted(set(_REGISTRY[kind]) | set(entry_points(kind)))


def classes(kind: str, plugins: bool = True) -> dict[str, type]:
    """Every component of ``kind``, the plug-ins' imported (once) and registered
    (``plugins=False``: only those registered so far, importing nothing)."""
    if plugins and kind not in _ALL_LOADED:
        _ALL_LOADED.add(kind)  # first: a plug-in's own registration calls classes() again
        for name, ep in entry_points(kind).items():
            if name not in _REGISTRY[kind]:
                _load(kind, ep)
    return dict(_REGISTRY[kind])


def unregister(kind: str, name: str) -> None:
    """Remove a registered component (a plug-in's tests clean up after themselves)."""
    _REGISTRY[kind].pop(name, None)
