"""What one run is made of, built identically on every rank: problem, algorithm, codecs,
random streams, the downlink policy and the rank/role layout.

:func:`build_context` is the only place these are put together; the launcher, the server
and the workers read them from the :class:`RunContext` and never rebuild them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from . import algorithms, problems
from .compressors import get_compressor
from .errors import ConfigError
from .steps import Uplink
from .transport import Roles

#: the model travels exactly unless run.downlink names a compressor
EXACT_DOWNLINK = {"name": "identity", "dtype": "float64"}


class Streams:
    """The run's named random streams, all derived from ``seed``.

    ``SeedSequence(seed).spawn(n + 1)``: child 0 is the server's (the downlink compressor's
    randomness), child j + 1 is worker j's, split into its compressor stream and its
    minibatch stream. Shared-seed compressors (rand_k, the sketches) key their stream by
    (seed, worker, seq) on both ends, so no indices travel.
    """

    SERVER = 0
    #: distinguishes the downlink streams of servers 1..S-1 from every other stream
    SHARD_DOWNLINK = 0x53484152  # "SHAR"

    def __init__(self, seed: int, n_workers: int, n_servers: int = 1):
        self.seed = seed
        self.n_workers = n_workers
        self.n_servers = n_servers

    def _child(self, i: int) -> np.random.SeedSequence:
        # a fresh spawn each time: the same call always gives the same stream
        return np.random.SeedSequence(self.seed).spawn(self.n_workers + 1)[i]

    def downlink(self, shard: int = 0) -> np.random.Generator:
        if shard == 0:
            return np.random.default_rng(self._child(self.SERVER))
        return np.random.default_rng([self.seed, self.SHARD_DOWNLINK, shard])

    def worker(self, j: int):
        """(compressor stream, minibatch stream) of worker j."""
        comp, batch = self._child(j + 1).spawn(2)
        return np.random.default_rng(comp), np.random.default_rng(batch)

    def shared_key(self, j: int, seq: int, shard: int = 0) -> int:
        ids = [self.seed, j, seq] if self.n_servers == 1 else [self.seed, j, seq, shard]
        return int(np.random.SeedSequence(ids).generate_state(1, np.uint64)[0])


class Downlink:
    """How the model goes back to the workers.

    Exact (the default): the float64 model itself. Compressed (``run.downlink``): the
    server keeps, per worker, the model that worker knows (its mirror) and sends
    C(x - mirror); both ends move the mirror by ``scale`` * C(.), with scale = 1/(1+omega)
    for an unbiased C so that the worker's copy converges to the server's model.
    """

    def __init__(self, run_cfg: dict, d: int, cfg: dict | None = None, layers=None):
        cfg = cfg or (run_cfg["downlink"] or {}).get("compressor") or EXACT_DOWNLINK
        self.compressor = get_compressor(cfg, layers)  # layers: for block_size: layer
        self.exact = cfg["name"] == "identity" and cfg.get("dtype", "float64") == "float64"
        self.scale = 1.0
        if not self.exact and self.compressor.unbiased:
            self.scale = 1.0 / (1.0 + self.compressor.omega(d))
        self.d = d
        self._delta = None  # the server's scratch for x - mirror (compressed downlinks)

    def max_nbytes(self) -> int:
        return self.compressor.max_nbytes(self.d)

    def mirrors(self, x0: np.ndarray, n: int):
        """The server's per-worker mirrors (None for an exact downlink)."""
        return None if self.exact else np.tile(x0, (n, 1))

    def encode(self, x, mirror, rng, out: np.ndarray) -> int:
        """Server: the message that brings a worker from ``mirror`` to ``x`` (mirror moves)."""
        if mirror is None:  # the model itself, encoded straight into the send buffer
            return self.compressor.encode_into(x, rng, out)
        # x - mirror into one scratch vector, its code straight into the send buffer, and
        # the mirror moved by decoding that code into it: the worker's own step
        # (``apply``), so both copies agree bit for bit, with no d-sized temporaries
        if self._delta is None or self._delta.size != x.size:
            self._delta = np.empty(x.size)
        np.subtract(x, mirror, out=self._delta)
        n = self.compressor.encode_into(self._delta, rng, out)
        self.compressor.decode_add(out[:n], mirror, self.scale)
        return n

    def apply(self, payload, x: np.ndarray) -> np.ndarray:
        """Worker: its model ``x`` moved in place to the server's message (raises
        WireFormatError); returns x."""
        if self.exact:
            self.compressor.decode_into(payload, x)
        else:
            self.compressor.decode_add(payload, x, self.scale)
        return x


@dataclass
class RunContext:
    """Everything a server or worker needs, built identically on every rank.

    With sharded servers (``run.servers: S``) ``shards``, ``uplinks`` and ``downlinks`` hold
    one entry per key range, and :meth:`for_shard` is the view one server runs on: its
    range's d, x0, codecs and downlink.
    """

    cfg: dict
    ps: object
    roles: Roles
    compressor: object
    uplink: Uplink
    downlink: Downlink
    consts: algorithms.Constants
    alg: algorithms.Algorithm
    streams: Streams
    x0: np.ndarray
    has_l1: bool
    #: f* and x* where the problem knows them (rank 0 solves for them); None otherwise
    f_star: float | None = None
    x_star: np.ndarray | None = None
    solve_s: float = 0.0
    tau: int = field(default=0)
    shards: list = field(default_factory=list)
    uplinks: list = field(default_factory=list)
    downlinks: list = field(default_factory=list)
    #: this view's key range (the whole vector unless it is a shard's view)
    shard: object = None

    @property
    def n(self) -> int:
        return self.roles.n_workers

    @property
    def d(self) -> int:
        return self.ps.d if self.shard is None else self.shard.d

    @property
    def n_servers(self) -> int:
        return len(self.shards)

    def for_shard(self, s: int) -> "RunContext":
        """The view server s runs on (S = 1: the context itself)."""
        if self.n_servers == 1:
            return self
        sh = self.shards[s]
        return replace(self, shard=sh, uplink=self.uplinks[s], downlink=self.downlinks[s],
                       x0=self.x0[sh.lo:sh.hi].copy())

    @property
    def hyper(self):
        return self.alg.hyper

    def prox(self, x, step):
        return self.ps.reg.prox(x, step)


def build_context(cfg: dict, roles: Roles, ps=None, constants=None) -> RunContext:
    """The run context from the resolved config. ``ps``: the problem as this rank loaded it
    (a worker rank: only its shard, see :func:`load_problem`), else every shard is loaded;
    ``constants``: L, L_i and mu as rank 0 computed them from the whole problem, else
    computed from ``ps``."""
    from . import shards as sharding

    n = roles.n_workers
    if ps is None:
        ps = problems.make_problem(cfg["problem"], cfg["data"], cfg["seed"], n)
    c = problems.constants(ps) if constants is None else constants
    consts = algorithms.Constants(
        L=_maybe_float(c["L"]), mu=_maybe_float(c["mu"]), d=ps.d,
        L_i=None if c["L_i"] is None else [float(v) for v in c["L_i"]],
        smoothness_matrix=c.get("smoothness_matrix"))
    compressor = get_compressor(with_layer_shapes(cfg["compressor"], ps), ps.layers)
    run = cfg["run"]
    tau = run["max_staleness"] if run["mode"] == "async" else 0
    bad = [k for k in run["worker_delay"] if k >= n]
    if bad:
        raise ConfigError(f"run.worker_delay: worker index {bad[0]} does not exist; allowed: "
                          f"0..{n - 1} ({n} workers)")
    n_servers = len(roles.servers)
    down_cfg = (run["downlink"] or {}).get("compressor") or EXACT_DOWNLINK
    if n_servers == 1:
        shards, parts = [sharding.Shard(0, 0, ps.d)], [compressor]
        rules = compressor
    else:
        shards, parts = sharding.split(cfg["compressor"], ps.d, n_servers, ps.layers, down_cfg)
        rules = sharding.ShardedCompressor(parts, shards)
    alg = algorithms.build(cfg, rules, consts, ps.weights, tau)
    streams = Streams(cfg["seed"], n, n_servers)
    uplinks = [Uplink(c, alg, streams, sh.d, sh.index) for c, sh in zip(parts, shards)]
    downlinks = [Downlink(run, sh.d, sharding.shard_config(down_cfg, sh, ps.d),
                          sharding.shard_layers(ps.layers, sh)) for sh in shards]
    return RunContext(cfg=cfg, ps=ps, roles=roles, compressor=compressor,
                      uplink=uplinks[0], downlink=downlinks[0], consts=consts, alg=alg,
                      streams=streams, x0=ps.x0,
                      has_l1=cfg["problem"].get("l1", 0.0) > 0, tau=tau,
                      shards=shards, uplinks=uplinks, downlinks=downlinks)


def with_layer_shapes(comp_cfg: dict, ps) -> dict:
    """A compressor that takes ``shapes`` (powersgd) and was given none gets the problem's
    layer matrices, where the problem has them (the config on disk keeps null)."""
    from .registry import lookup

    params = lookup("compressor", comp_cfg["name"]).params
    if "shapes" in params and comp_cfg.get("shapes") is None and ps.layer_shapes:
        return dict(comp_cfg, shapes=ps.layer_shapes)
    return comp_cfg


def load_problem(cfg: dict, roles: Roles, rank: int):
    """The problem as ``rank`` needs it: server 0 every shard (it computes f*, the constants
    and the metrics), a worker only its own shard of a data file, a range server none (it
    needs only d, the weights and x0): each rank holds the data it works on, not the file."""
    role, index = roles.of(rank)
    loads = None if (role, index) == ("server", 0) else ([index] if role == "worker" else [])
    return problems.make_problem(cfg["problem"], cfg["data"], cfg["seed"], roles.n_workers,
                                 workers=loads)


def _maybe_float(v):
    return None if v is None else float(v)
