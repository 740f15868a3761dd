"""Experiment configs: YAML (safe_load only), ``--set`` overrides, declarative validation.

:func:`load` returns the *resolved* config: a plain dict with every default filled
in, which is what ``psgd validate`` prints and what ``psgd run`` writes to
``DIR/config.yaml``. Every problem is a one-line :class:`ConfigError` naming the
key, the value and what is allowed; unknown keys are errors, never ignored.

Two stages, one path:

* :func:`validate` checks everything that needs neither the worker count nor the file
  system: every section's keys and ranges, the problem's own rules (``mu <= L``, a data-free
  problem with a data file), both compressors as built (``top_k`` needs ``k`` or ``ratio``),
  the algorithm's demands on the compressor, the downlink's contraction and the message size;
* :func:`check_launch` adds what ``psgd run`` checks before its first step: the data file
  exists and its first lines parse and, given the worker count, the problem's worker rules
  and the ``worker_delay`` indices. ``psgd validate -n N`` runs both.

The YAML reader (:func:`read_yaml`) refuses duplicate keys (naming both lines), alias
expansions beyond :data:`MAX_NODES` nodes, nesting deeper than :data:`MAX_DEPTH`, files that
are not UTF-8 and files over :data:`MAX_BYTES`, each in one line naming the file.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import numpy as np
import yaml

from .errors import ConfigError
from .registry import lookup
from .validation import (SHOWN_CHARS, AnyMapping, Choice, Int, Mapping, Nullable, Real, Str,
                         check_params, shown)

SECTIONS = ("seed", "problem", "data", "algorithm", "compressor", "run", "output")

#: a config is a few hundred bytes; anything this large is not one
MAX_BYTES = 1 << 20
#: nodes after alias expansion: a real config has under a hundred
MAX_NODES = 10_000
#: mapping/sequence nesting: a real config nests three levels
MAX_DEPTH = 32
#: the dimension assumed for the message-size check when the data file decides d
SIZE_CHECK_D = 1024

SEED = Int(0, 2**63 - 1, default=0, doc="every rank's random stream derives from it")

RUN_SPEC = {
    "mode": Choice("sync", "async", default="sync", doc="sync: every step waits for all workers"),
    "max_staleness": Int(0, 10**6, default=0, doc="tau: largest staleness applied (async)"),
    "iterations": Int(1, default=1000, doc="server updates"),
    "target": Nullable(Real(0, closed="neither"), doc="stop when f - f* <= target"),
    "log_every": Int(1, default=100, doc="steps between metrics lines"),
    # a sleep or deadline beyond ~11 days overflows nothing but is surely a typo
    "timeout_s": Real(0, 10**6, closed="right", default=120.0,
                      doc="seconds a silent rank may take before the job ends"),
    "checkpoint_every": Nullable(Int(1), doc="server updates between checkpoints"),
    "servers": Int(1, 4096, default=1,
                   doc="server ranks, each owning a block-aligned key range (the first ranks)"),
    # fault injection for tests: worker index (0-based) -> extra seconds per gradient
    "worker_delay": Mapping(Int(0), Real(0, 3600),
                            doc="{worker: extra seconds per gradient} (straggler injection)"),
    # optional compression of the model delta sent to workers: {compressor: {name: ...}}
    "downlink": Nullable(AnyMapping(), doc="{compressor: {name: ...}} compresses the model"),
}

OUTPUT_SPEC = {"dir": Str(default="runs/psgd", doc="output directory (--out overrides it)")}

DOWNLINK = "run.downlink.compressor"


def _components():
    # Imported here so that `import psgd.config` stays light and registries are filled.
    from . import algorithms, compressors, data, problems  # noqa: F401
    return data


def _named_section(kind: str, given, default_name: str | None, path: str | None = None) -> dict:
    """Validate a ``{name: ..., **params}`` section against the named class's ``params``."""
    path = path or kind
    if given is None:
        given = {}
    if not isinstance(given, dict):
        raise ConfigError(f"{path}: got {shown(given)}; allowed: a mapping with a name key")
    given = dict(given)
    name = given.pop("name", default_name)
    if name is None:
        raise ConfigError(f"{path}.name: missing; allowed: a registered {kind} name "
                          "(see `psgd list`)")
    cls = lookup(kind, name, path)
    # block_size: layer is decided by the problem (its layer sizes), not by the codec's own
    # range: the codec's params are checked with a stand-in block size and 'layer' kept
    layered = kind == "compressor" and "block_size" in cls.params \
        and given.get("block_size") == "layer"
    if layered:
        given["block_size"] = 1
    elif kind == "compressor" and "block_size" in cls.params \
            and isinstance(given.get("block_size"), str):
        raise ConfigError(f"{path}.block_size: got {shown(given['block_size'])}; allowed: an "
                          f"integer >= 1, null or 'layer' (one block per layer of the model)")
    params = check_params(path, cls.params, given, getattr(cls, "open_params", False))
    if layered:
        params["block_size"] = "layer"
    return {"name": name, **params}


def validate(raw: dict) -> dict:
    """Validate a parsed config mapping; return the resolved config (a new dict)."""
    data_mod = _components()
    from . import problems

    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config: got a {type(raw).__name__}; allowed: a mapping of sections "
                          f"{', '.join(SECTIONS)}")
    unknown = [k for k in raw if k not in SECTIONS]
    if unknown:
        name = str(unknown[0])[:SHOWN_CHARS]
        raise ConfigError(f"{name}: unknown section; allowed: {', '.join(SECTIONS)}")
    cfg = {"seed": SEED.check("seed", raw.get("seed", 0))}
    cfg["problem"] = _named_section("problem", raw.get("problem"), "logistic")
    cfg["data"] = data_mod.check_data_config(check_params("data", data_mod.DATA_SPEC,
                                                          raw.get("data")))
    problems.check_config(cfg["problem"], cfg["data"])
    cfg["algorithm"] = _named_section("algorithm", raw.get("algorithm"), "diana")
    cfg["compressor"] = _named_section("compressor", raw.get("compressor"), "identity")
    cfg["run"] = check_params("run", RUN_SPEC, raw.get("run"))
    cfg["output"] = check_params("output", OUTPUT_SPEC, raw.get("output"))
    _cross_checks(cfg)
    return cfg


def _cross_checks(cfg: dict) -> None:
    """Checks that span sections, each with its reason."""
    from .algorithms import get_algorithm_class
    from .problems import dimension
    from .problems import layers as problem_layers
    from .shards import check_layer_servers

    run = cfg["run"]
    if run["mode"] == "sync" and run["max_staleness"] != 0:
        raise ConfigError(f"run.max_staleness: got {run['max_staleness']}; allowed: 0 when "
                          f"run.mode is sync (set run.mode: async for bounded staleness)")
    d = dimension(cfg["problem"], cfg["data"])
    layers = problem_layers(cfg["problem"], cfg["data"])
    uplink = _build_compressor(cfg["compressor"], "compressor", cfg, layers)
    if hasattr(uplink, "check_run"):  # a compressor's demands on the run (powersgd's rounds)
        uplink.check_run(cfg, d)
        # (where the problem cannot tell d, explicit layer shapes do)
        d = d or sum(m * n for m, n in uplink.config.get("shapes") or []) or None
    _check_message_size(uplink, d, "compressor")
    if run["downlink"] is not None:
        down = check_params("run.downlink", {"compressor": AnyMapping(required=True)},
                            run["downlink"])
        run["downlink"] = {"compressor": _named_section("compressor", down["compressor"], None,
                                                        DOWNLINK)}
        downlink = _build_compressor(run["downlink"]["compressor"], DOWNLINK, cfg, layers)
        _check_downlink_contracts(downlink, d)
        _check_message_size(downlink, d, DOWNLINK)
    check_layer_servers(cfg, layers)
    get_algorithm_class(cfg["algorithm"]["name"]).check_config(cfg)


def _build_compressor(section: dict, path: str, cfg: dict, layers):
    """The compressor as the run builds it, so its own cross-parameter checks run here.

    Compressors name their keys ``compressor.*``; for the downlink the message is re-rooted
    at ``path`` so it names the key the user must change.
    """
    from .compressors import get_compressor
    from .compressors.layered import is_layered
    from .problems import with_layers

    if is_layered(section) and not layers:
        raise ConfigError(f"{path}.block_size: got 'layer', but problem "
                          f"{cfg['problem']['name']} has no layers; allowed: an integer >= 1 or "
                          f"null ('layer' needs a problem with layers: {', '.join(with_layers())})")
    try:
        return get_compressor(section, layers)
    except ConfigError as exc:
        text = str(exc)
        if path != "compressor" and text.startswith("compressor"):
            raise type(exc)(path + text[len("compressor"):]) from None
        raise


def _check_downlink_contracts(comp, d) -> None:
    """The downlink moves each worker's model by s*C(x - x_worker): it converges only if that
    is a contraction, as for error feedback on the uplink. An unbiased C with s = 1/(1+omega)
    always is; a biased one needs delta < 1 (rounding has delta = 1 and stalls)."""
    if comp.unbiased:
        return
    delta = comp.delta(d or SIZE_CHECK_D)
    if not delta < 1.0:
        raise ConfigError(f"{DOWNLINK}.name: got {comp.name!r} with delta = {delta:g}, which is "
                          "no contraction, so the workers' models would stall; allowed: a "
                          "compressor with delta < 1 (e.g. top_k, sign) or an unbiased one")


def _check_message_size(comp, d, path) -> None:
    """Refuse settings whose message can be larger than the uncompressed float64 vector."""
    d = d or SIZE_CHECK_D
    plain = 8 + 8 * d  # identity float64: codec header + the values
    worst = comp.max_nbytes(d)
    if worst > plain:
        params = ", ".join(f"{k}={v!r}" for k, v in comp.get_config().items() if k != "name")
        raise ConfigError(f"{path}: {comp.name} ({params}) sends up to {worst / d:.3g} bytes per "
                          f"coordinate at d = {d}, more than the {plain / d:.3g} of the "
                          "uncompressed float64 vector; allowed: a setting whose message is "
                          "smaller (or compressor identity)")


def check_launch(cfg: dict, n_workers: int | None = None) -> None:
    """What ``psgd run`` checks before its first step, on a resolved config.

    The data file exists and its first lines parse; with ``n_workers``, the problem's worker
    rules (rosenbrock: exactly 2), what only building it shows (the ``python`` factory's
    objects), enough samples for every worker and the ``worker_delay`` indices. Raises ConfigError or DataFormatError (one line).
    """
    from . import data, problems

    if n_workers is not None:
        if isinstance(n_workers, bool) or not isinstance(n_workers, int) or n_workers < 1:
            raise ConfigError(f"-n: got {shown(n_workers)}; allowed: the number of workers, "
                              "an integer >= 1 (mpiexec -n N runs N - 1 workers)")
        problems.check_workers(cfg["problem"], cfg["data"], n_workers)
        problems.check_build(cfg, n_workers)  # the python factory's objects, at x0
        from .compressors import get_compressor
        comp = get_compressor(cfg["compressor"], problems.layers(cfg["problem"], cfg["data"]))
        if hasattr(comp, "check_workers"):        # perm_k: its n must be the worker count
            comp.check_workers(n_workers)
        bad = [k for k in cfg["run"]["worker_delay"] if k >= n_workers]
        if bad:
            raise ConfigError(f"run.worker_delay: worker index {bad[0]} does not exist; "
                              f"allowed: 0..{n_workers - 1} ({n_workers} workers)")
    if cfg["data"]["source"] == "libsvm" and problems.uses_data(cfg["problem"]):
        data.probe_libsvm(cfg["data"]["path"], cfg["data"]["n_features"])
        if n_workers is not None:
            m = data.count_rows(cfg["data"]["path"])
            data.check_split(m, n_workers)


# -- overrides --------------------------------------------------------------------------------

#: ``--set key=~`` (and ``--unset key``) removes the key, so its default applies;
#: ``--set key=null`` sets it to null
REMOVE = "~"


def parse_override(item: str):
    """``a.b.c=value`` -> (["a", "b", "c"], value parsed as YAML, or REMOVE for ``=~``)."""
    if "=" not in item:
        raise ConfigError(f"--set {shown(item)}: expected key.path=value, "
                          "e.g. --set run.iterations=500")
    path, _, text = item.partition("=")
    keys = path.strip().split(".")
    if not all(keys):
        raise ConfigError(f"--set {shown(item)}: empty key in {shown(path)}")
    if text.strip() == REMOVE:
        return keys, REMOVE
    try:
        value = _load_text(text) if text.strip() else None
    except ConfigError as exc:
        raise ConfigError(f"--set {shown(item)}: the value is {exc}") from None
    return keys, value


def apply_overrides(raw: dict, overrides) -> dict:
    """A copy of ``raw`` with each ``key.path=value`` applied in order (``=~`` removes)."""
    raw = copy.deepcopy(raw) if raw else {}
    for item in overrides or ():
        keys, value = parse_override(item)
        node = raw
        for i, key in enumerate(keys[:-1]):
            child = node.get(key)
            if child is None:
                if value is REMOVE:
                    break
                child = node[key] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {shown(item)}: {'.'.join(keys[:i + 1])} is "
                                  f"{shown(child)}, not a mapping")
            node = child
        else:
            if value is not REMOVE:
                node[keys[-1]] = value
                continue
            if keys[-1] in node:
                del node[keys[-1]]
                continue
        where = ".".join(keys)
        raise ConfigError(f"--unset {where}: {where} is not in the config, so there is nothing "
                          "to remove (check the spelling; `psgd validate CONFIG` prints the keys)")
    return raw


# -- YAML -------------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys instead of letting the last one win."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *base` keys may be overridden: that is what merging is for
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = seen.get(key)
            except TypeError:
                continue  # an unhashable key: the base class reports it
            if first is not None:
                raise ConfigError(f"line {line}: duplicate key {shown(key)} (first on line "
                                  f"{first}); allowed: each key once per mapping")
            seen[key] = line
        return super().construct_mapping(node, deep)


def _too_large(what: str) -> ConfigError:
    return ConfigError(f"{what}; allowed: a config of sections with scalar values")


def _check_size(root) -> None:
    """Count the nodes and the depth of the tree the aliases expand to, once per node, so a
    billion-leaf alias bomb is measured in microseconds and refused before it is built."""
    memo: dict = {}  # id(node) -> (expanded size, height); None while being visited

    def visit(node, depth):
        key = id(node)
        if key in memo and memo[key] is None:
            raise ConfigError("an alias refers to a mapping or list that contains it; "
                              "allowed: aliases of complete values")
        if key not in memo:
            memo[key] = None
            if isinstance(node, yaml.SequenceNode):
                children = node.value
            elif isinstance(node, yaml.MappingNode):
                children = [n for pair in node.value for n in pair]
            else:
                children = []
            size, height = 1, 0
            for child in children:
                child_size, child_height = visit(child, depth + 1)
                size, height = size + child_size, max(height, child_height + 1)
                if size > MAX_NODES:
                    raise _too_large(f"more than {MAX_NODES} values once aliases are expanded")
            memo[key] = (size, height)
        if depth + memo[key][1] > MAX_DEPTH:
            raise _too_large(f"nested deeper than {MAX_DEPTH} levels")
        return memo[key]

    if root is not None:
        visit(root, 0)


#: quoted scalars and comments, whose brackets do not nest anything
_NOT_FLOW = re.compile(r"'[^']*'|\"(?:[^\"\\]|\\.)*\"|(?:^|(?<=\s))#[^\n]*", re.M)


_STEP = np.zeros(256, dtype=np.int64)
_STEP[[ord("["), ord("{")]], _STEP[[ord("]"), ord("}")]] = 1, -1


def _flow_depth(text: str) -> int:
    """How deep ``[`` and ``{`` nest (an upper bound: unbalanced brackets count too)."""
    raw = np.frombuffer(_NOT_FLOW.sub("", text).encode("utf-8", "surrogatepass"), np.uint8)
    return int(np.cumsum(_STEP[raw]).max(initial=0))


def _load_text(text: str):
    """Parse one YAML document within the bounds of the module docstring.

    Raises ConfigError with a phrase the caller prefixes with the file or the --set item.
    """
    # PyYAML's scanner is quadratic in the flow nesting depth (30 000 brackets take 20 s), so
    # that depth is measured before it runs; block nesting is measured on the composed nodes.
    if _flow_depth(text) > MAX_DEPTH:
        raise _too_large(f"nested deeper than {MAX_DEPTH} levels")
    try:
        loader = _Loader(text)  # the reader refuses control characters here already
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML ({_yaml_problem(exc)})") from None
    try:
        root = loader.get_single_node()
        _check_size(root)
        return None if root is None else loader.construct_document(root)
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML ({_yaml_problem(exc)})") from None
    except RecursionError:  # the composer recurses once per level, before _check_size runs
        raise _too_large(f"nested too deeply to parse (more than {MAX_DEPTH} levels)") from None
    finally:
        loader.dispose()


def read_yaml(path) -> dict:
    """Read and parse a config file; every failure is one ConfigError line naming the file."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            blob = fh.read(MAX_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror or exc})") from None
    if len(blob) > MAX_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_BYTES} bytes; allowed: a small YAML file")
    try:
        text = blob.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {blob[exc.start]:#04x} at offset "
                          f"{exc.start}); allowed: a UTF-8 YAML file") from None
    try:
        raw = _load_text(text)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return {} if raw is None else raw


def load(path, overrides=()) -> dict:
    """Read, override and validate a config file; return the resolved config."""
    return validate(apply_overrides(read_yaml(path), overrides))


def dump(cfg: dict) -> str:
    return yaml.safe_dump(cfg, sort_keys=False, default_flow_style=False)


def _yaml_problem(exc) -> str:
    """A YAML error as 'line N: problem', without PyYAML's multi-line source excerpt."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or getattr(exc, "context", None) or str(exc)
    where = f"line {mark.line + 1}: " if mark is not None else ""
    text = " ".join(f"{where}{problem}".split())
    return text if len(text) <= 120 else text[:117] + "..."
