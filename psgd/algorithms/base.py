"""What every algorithm shares: hyper-parameters, problem constants, state and the update.

An algorithm knows nothing of bytes or MPI. Its hyper-parameters are frozen in a
:class:`Hyper` computed once by ``resolve`` (``stepsize: theory`` uses L, L_i, mu, omega or
delta, the worker weights and tau). All mutable state lives in explicit dataclasses that the
algorithm declares (optax style): a worker state (DIANA's shift h_i, EF's error e_i, ...) and a
server state (the model x, the step, and what the algorithm needs there). Checkpoints walk
those dataclasses field by field (:func:`psgd.checkpoint.state_arrays`), so the server and
worker loops never name an algorithm's fields.

Worker side, per gradient g of f_i at the worker's ``seq``-th message (see psgd.steps)::

    full = alg.full_message(seq)        # exact float64 this time? (MARINA's coin)
    v = alg.worker_vector(ws, g, full)  # the vector to compress
    y = decode(encode(v))               # exactly what the server will decode
    alg.worker_update(ws, v, y)         # only when alg.needs_decoded, and then
    # a memory that just moves by weight * y (DIANA: h_i += alpha y) names itself in
    # alg.memory_step(ws) instead: the message is decoded straight into it

Server side, for a batch of received messages in worker order (each decodes itself into a
vector with ``msg.add_to(out, weight)`` or ``msg.write_to(out)``: psgd.steps.Received)::

    alg.server_apply(ss, batch, prox)

Synchronous runs (tau = 0: every update holds every worker's fresh message) keep O(d)
server state: only what the algorithm needs there (DIANA: x, h = sum_i w_i h_i and, with
momentum, v; DQGD/GD: x; EF21 and MARINA: the aggregate g), and every message is decoded
and accumulated straight into the aggregate with its weight. Asynchronous runs use one of
two forms (``algorithm.async_form``), which coincide with the synchronous step on a batch
of every worker's fresh message:

- ``table``: the server keeps each worker's latest entry (DIANA: h_i + y_i; DQGD: y_i;
  EF21: g_i), n x d values, and steps with their weighted sum (incremental aggregated
  gradient);
- ``direct``: x <- x - gamma * sum over the batch of w_i * entry_i (O(d), plus DIANA's
  n x d shifts h_i).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
import numpy as np
from scipy.linalg.blas import daxpy as _daxpy

from ..errors import ConfigError
from ..validation import AnyOf, Choice, Int, Nullable, Real

COMMON_PARAMS = {
    "stepsize": AnyOf(Choice("theory"), Real(0, closed="neither"), default="theory"),
    "batch_size": Nullable(Int(1)),
    "async_form": Nullable(Choice("table", "direct")),
}


@dataclass(frozen=True)
class Hyper:
    """Resolved hyper-parameters, printed at start and written to summary.json."""

    gamma: float
    alpha: float = 0.0
    momentum: float = 0.0
    form: str = "table"
    #: factor applied to every decoded message (1/(1+omega) turns an unbiased
    #: compressor into a contraction for ef / ef21; 1 otherwise)
    message_scale: float = 1.0
    rule: str = ""  # which formula produced gamma, and whether it is proven
    #: MARINA's probability of an exact (uncompressed) round; 0 for the others
    p_full: float = 0.0
    #: the proven radius of the ball ||x - x*|| <= R the run converges to (cgd with an
    #: epsilon-compressor, Khirirat's Theorems A/B); None where no theorem gives one
    ball_radius: float | None = None

    def as_dict(self):
        return asdict(self)


@dataclass
class Constants:
    """Problem constants the step-size rules need (None where the problem cannot tell)."""

    L: float | None
    L_i: list | None
    mu: float | None
    d: int
    #: the dense smoothness matrix (the Hessian of a quadratic), a function so that only the
    #: rules that need it build it; None where the problem does not know one
    smoothness_matrix: object = None

    @property
    def known(self) -> bool:
        return self.L is not None and self.L_i is not None and self.mu is not None


@dataclass
class Table:
    """The table form's memory: every worker's latest entry and their weighted sum."""

    entries: np.ndarray  # n x d
    total: np.ndarray    # sum_i w_i entries[i]

    @classmethod
    def zeros(cls, n: int, d: int) -> "Table":
        return cls(np.zeros((n, d)), np.zeros(d))


@dataclass
class ServerState:
    """What every server keeps; algorithms extend it with their own fields."""

    x: np.ndarray
    step: int = 0
    table: Table | None = None          # asynchronous table form only
    velocity: np.ndarray | None = None  # heavy-ball momentum buffer, when momentum > 0


@dataclass
class WorkerState:
    """A worker's algorithm memory; empty for algorithms without one (gd, dqgd)."""


#: coordinates per chunk of a fused pass: three float64 chunks (768 KiB) stay in L2
CHUNK = 1 << 15


def chunks(d: int):
    """Slices of [0, d) for passes that do several vector operations per chunk while it is
    in cache, instead of one memory pass per operation (at d = 10^7 each pass is ~10 ms)."""
    return (slice(lo, min(lo + CHUNK, d)) for lo in range(0, d, CHUNK))


def axpy(a: float, x: np.ndarray, y: np.ndarray) -> None:
    """y += a * x in place, in one pass and without a temporary (BLAS daxpy)."""
    out = _daxpy(x, y, a=a)
    if out is not y:  # only if y were not a contiguous float64 vector, which ours always are
        np.copyto(y, out)


class Algorithm:
    """Base class; subclasses set ``name``, ``params`` and override the hooks they need."""

    name = ""
    params = dict(COMMON_PARAMS)
    compressed = True
    forms = ("table", "direct")
    #: the worker must see the decoded message to keep its memory in step with the server
    needs_decoded = False
    #: some messages are sent exactly (float64) instead of compressed (see full_message)
    sends_full = False
    #: what the compressor must be: None, "unbiased" (dqgd, diana) or "contraction" (ef, ef21)
    requires = None
    server_state = ServerState

    def __init__(self, cfg: dict, hyper: Hyper, weights: np.ndarray, seed: int = 0,
                 synchronous: bool = True):
        self.cfg = cfg
        self.hyper = hyper
        self.weights = np.asarray(weights, dtype=np.float64)
        self.n = len(self.weights)
        self.seed = seed
        #: every update holds every worker's fresh message (tau = 0): O(d) server state
        self.synchronous = synchronous
        self._buffers = {}

    # -- config -----------------------------------------------------------------

    @classmethod
    def check_config(cls, cfg: dict) -> None:
        from .stepsize import require_contraction, require_unbiased

        form = cfg["algorithm"]["async_form"]
        if form is not None and form not in cls.forms:
            raise ConfigError(f"algorithm.async_form: got {form!r}; allowed for {cls.name}: "
                              f"{', '.join(cls.forms)}")
        if cls.requires == "unbiased":
            require_unbiased(cfg)
        elif cls.requires == "contraction":
            require_contraction(cfg)
        if not cls.compressed and cfg["compressor"]["name"] != "identity":
            raise ConfigError(f"compressor.name: got {cfg['compressor']['name']!r}; allowed: identity "
                              f"(algorithm {cls.name} sends uncompressed gradients; use dqgd or diana "
                              f"to compress)")

    @classmethod
    def resolve(cls, cfg: dict, compressor, consts: Constants, weights, tau: int) -> Hyper:
        """Turn the config (possibly ``stepsize: theory``) into frozen hyper-parameters."""
        raise NotImplementedError

    @classmethod
    def default_form(cls, cfg_alg) -> str:
        return cfg_alg["async_form"] or cls.forms[0]

    # -- worker side --------------------------------------------------------------

    def worker_init(self, d: int) -> WorkerState:
        return WorkerState()

    def full_message(self, seq: int) -> bool:
        """Whether the worker's ``seq``-th message is sent exactly (uncompressed)."""
        return False

    def worker_vector(self, ws, grad: np.ndarray, full: bool = False) -> np.ndarray:
        return grad

    def worker_update(self, ws, v: np.ndarray, y: np.ndarray) -> None:
        """Update the worker memory given the decoded (already scaled) message y."""

    def memory_step(self, ws):
        """(memory, weight) when the worker memory's update is ``memory += weight * y``, so
        the message can be decoded straight into it (one pass instead of four: decode,
        scale, add); None when :meth:`worker_update` needs y itself."""
        return None

    # -- server side --------------------------------------------------------------

    def server_init(self, x0: np.ndarray) -> ServerState:
        d = x0.size
        table = not self.synchronous and self.hyper.form == "table"
        return self.server_state(
            x=np.array(x0, dtype=np.float64),  # one copy: x0 is read-only
            table=Table.zeros(self.n, d) if table else None,
            velocity=np.zeros(d) if self.hyper.momentum else None,
            **self.server_fields(d))

    def server_fields(self, d: int) -> dict:
        """The algorithm's own server-state fields (beyond x, step, table, velocity)."""
        return {}

    def aggregate(self, batch, out: np.ndarray) -> np.ndarray:
        """out = sum over the batch of w_i * message_i, one fused decode pass per message."""
        out.fill(0.0)
        for msg in batch:
            msg.add_to(out, self.weights[msg.worker])
        return out

    def sync_direction(self, ss, batch) -> np.ndarray:
        """The synchronous step's direction from every worker's fresh message."""
        return self.aggregate(batch, self.work("direction", ss.x.size))

    def entry(self, ss, msg, out: np.ndarray) -> None:
        """Write worker msg.worker's contribution to the gradient estimate into ``out``."""
        msg.write_to(out)

    def server_apply(self, ss, batch, prox) -> None:
        """One server update from ``batch``, the received messages in worker order.

        Every pass writes into a preallocated vector: at d = 10^7 a fresh temporary costs
        as much as the arithmetic it holds (page faults on 80 MB).
        """
        if self.synchronous:
            if len(batch) != self.n:
                raise ValueError(f"a synchronous update needs all {self.n} workers' messages, "
                                 f"got {len(batch)}")
            self.sync_step(ss, batch, prox)
            ss.step += 1
            return
        if ss.table is not None:
            direction = self._table_direction(ss, batch)
        else:
            direction = self.work("direction", ss.x.size)
            direction.fill(0.0)
            term = self.work("entry", ss.x.size)
            for msg in batch:
                self.entry(ss, msg, term)
                term *= self.weights[msg.worker]
                direction += term
        self.step(ss, direction, prox)
        ss.step += 1

    def sync_step(self, ss, batch, prox) -> None:
        """The synchronous update from every worker's fresh message (overridden where
        fusing the direction and the step into one pass pays: DIANA)."""
        self.step(ss, self.sync_direction(ss, batch), prox)

    def apply_total(self, ss, total: np.ndarray, prox) -> None:
        """One synchronous update from ``total`` = sum_i w_i y_i, the weighted sum of every
        worker's decoded message, given whole: a multi-round compressor's aggregate, which
        the server and (replaying it) every worker apply (psgd.steps.Rounds)."""
        self.step(ss, self.total_direction(ss, total), prox)
        ss.step += 1

    def total_direction(self, ss, total: np.ndarray) -> np.ndarray:
        """The synchronous step's direction from the weighted sum of the messages; defined
        by the algorithms whose step depends on the messages only through it."""
        raise NotImplementedError(f"{self.name} cannot step from the aggregate of its messages")

    def _table_direction(self, ss, batch) -> np.ndarray:
        """Refresh the batch's entries and their weighted sum incrementally (IAG)."""
        table, w = ss.table, self.weights
        if len(batch) == self.n:  # every worker fresh: recompute exactly (no drift of the sum)
            for msg in batch:
                self.entry(ss, msg, table.entries[msg.worker])
            np.dot(w, table.entries, out=table.total)
            return table.total
        new = self.work("entry", ss.x.size)
        for msg in batch:
            self.entry(ss, msg, new)
            row = table.entries[msg.worker]
            np.subtract(new, row, out=row)  # row = new - old, then total += w_i * row
            row *= w[msg.worker]
            table.total += row
            np.copyto(row, new)
        return table.total

    def step(self, ss, direction: np.ndarray, prox) -> None:
        h = self.hyper
        if ss.velocity is not None:
            ss.velocity *= h.momentum
            ss.velocity += direction
            direction = ss.velocity
        axpy(-h.gamma, direction, ss.x)
        ss.x = prox(ss.x, h.gamma)

    def work(self, name: str, d: int) -> np.ndarray:
        """A reusable work vector (scratch: never part of the checkpointed state; a worker's
        decoded message, the server's aggregate)."""
        buf = self._buffers.get(name)
        if buf is None or buf.size != d:
            buf = self._buffers[name] = np.empty(d)
        return buf
