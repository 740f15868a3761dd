"""Optimization algorithms: what a worker sends and how the server applies it.

An algorithm knows nothing of bytes or MPI. Its hyper-parameters are frozen in a
:class:`Hyper` computed once (``stepsize: theory`` uses L, L_i, mu, omega or delta,
the worker weights and tau); all mutable state lives in explicit state objects
(:class:`WorkerState`, :class:`ServerState`), so checkpointing is "save the states"
and every algorithm can be tested in-process.

Worker side, per gradient g of f_i::

    v = alg.worker_vector(ws, g)      # the vector to compress
    y = decode(encode(v))             # exactly what the server will decode
    alg.worker_update(ws, v, y)       # keep memories in step with the server

Server side, for a batch of decoded messages ``[(i, y_i), ...]`` in worker order::

    alg.server_apply(ss, batch, prox)

Two server forms (``algorithm.async_form``); with a batch holding every worker's
fresh message they coincide with the synchronous algorithm:

- ``table``: the server keeps each worker's latest entry (DIANA: h_i + y_i; DQGD: y_i;
  EF21: g_i) and steps with the weighted sum of all entries (incremental aggregated
  gradient).
- ``direct``: x <- x - gamma * sum over the batch of w_i * entry_i.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from .errors import ConfigError
from .registry import lookup, register
from .validation import AnyOf, Choice, Int, Nullable, Real

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

    def as_dict(self):
        return asdict(self)


@dataclass
class WorkerState:
    """A worker's algorithm memory (DIANA h_i, EF e_i, EF21 g_i); empty for gd/dqgd."""

    memory: np.ndarray | None = None


@dataclass
class ServerState:
    x: np.ndarray
    step: int = 0
    entries: np.ndarray | None = None     # table form: each worker's latest entry
    entries_sum: np.ndarray | None = None  # sum_i w_i entries[i]
    shifts: np.ndarray | None = None      # DIANA h_i / EF21 g_i mirrors (n x d)
    velocity: np.ndarray | None = None    # heavy-ball momentum buffer


@dataclass
class Constants:
    """Problem constants the step-size rules need."""

    L: float
    L_i: list
    mu: float
    d: int


class Algorithm:
    """Base class; subclasses set ``name``, ``params`` and override the hooks they need."""

    name = ""
    params = dict(COMMON_PARAMS)
    compressed = True
    forms = ("table", "direct")
    #: worker memory kind: None, "shift" (DIANA h_i), "error" (EF e_i), "ef21" (g_i)
    memory = None
    #: what the compressor must be: None, "unbiased" (dqgd, diana) or "contraction" (ef, ef21)
    requires = None

    def __init__(self, cfg: dict, hyper: Hyper, weights: np.ndarray):
        self.cfg = cfg
        self.hyper = hyper
        self.weights = np.asarray(weights, dtype=np.float64)
        self.n = len(self.weights)
        self._buffers = {}

    # -- config -----------------------------------------------------------------

    @classmethod
    def check_config(cls, cfg: dict) -> None:
        form = cfg["algorithm"]["async_form"]
        if form is not None and form not in cls.forms:
            raise ConfigError(f"algorithm.async_form: got {form!r}; allowed for {cls.name}: "
                              f"{', '.join(cls.forms)}")
        if cls.requires == "unbiased":
            _require_unbiased(cfg)
        elif cls.requires == "contraction":
            _require_contraction(cfg)
        if not cls.compressed and cfg["compressor"]["name"] != "identity":
            raise ConfigError(f"compressor.name: got {cfg['compressor']['name']!r}; allowed: identity "
                              f"(algorithm {cls.name} sends uncompressed gradients; use dqgd or diana "
                              f"to compress)")

    @classmethod
    def resolve(cls, cfg: dict, compressor, consts: Constants, weights, tau: int) -> Hyper:
        """Turn the config (possibly ``stepsize: theory``) into frozen hyper-parameters."""
        raise NotImplementedError

    # -- worker side --------------------------------------------------------------

    def worker_init(self, d: int) -> WorkerState:
        return WorkerState(None if self.memory is None else np.zeros(d))

    def worker_vector(self, ws: WorkerState, grad: np.ndarray) -> np.ndarray:
        return grad

    def worker_update(self, ws: WorkerState, v: np.ndarray, y: np.ndarray) -> None:
        """Update the worker memory given the decoded (already scaled) message y."""

    # -- server side --------------------------------------------------------------

    def server_init(self, x0: np.ndarray) -> ServerState:
        d = x0.size
        ss = ServerState(x=x0.astype(np.float64).copy())
        if self.hyper.form == "table":
            ss.entries = np.zeros((self.n, d))
            ss.entries_sum = np.zeros(d)
        if self.memory in ("shift", "ef21"):
            ss.shifts = np.zeros((self.n, d))
        if self.hyper.momentum:
            ss.velocity = np.zeros(d)
        return ss

    def entry(self, ss: ServerState, i: int, y: np.ndarray, out: np.ndarray) -> None:
        """Write worker i's contribution to the gradient estimate, given its decoded message."""
        np.copyto(out, y)

    def server_apply(self, ss: ServerState, batch, prox) -> None:
        """One server update from ``batch = [(worker, decoded message), ...]``.

        Every pass writes into a preallocated vector: at d = 10^7 a fresh temporary costs
        as much as the arithmetic it holds (page faults on 80 MB).
        """
        w = self.weights
        if self.hyper.form == "table":
            if len(batch) == self.n:
                # every worker fresh: recompute exactly (this is the synchronous step)
                for i, y in batch:
                    self.entry(ss, i, y, ss.entries[i])
                np.dot(w, ss.entries, out=ss.entries_sum)
            else:
                new = self._work("entry", ss.x.size)
                for i, y in batch:
                    self.entry(ss, i, y, new)
                    row = ss.entries[i]
                    np.subtract(new, row, out=row)  # row = new - old, then sum += w_i * row
                    row *= w[i]
                    ss.entries_sum += row
                    np.copyto(row, new)
            direction = ss.entries_sum
        else:
            direction = self._work("direction", ss.x.size)
            direction.fill(0.0)
            term = self._work("entry", ss.x.size)
            for i, y in batch:
                self.entry(ss, i, y, term)
                term *= w[i]
                direction += term
        self._step(ss, direction, prox)
        ss.step += 1

    def _step(self, ss: ServerState, direction: np.ndarray, prox) -> None:
        h = self.hyper
        if ss.velocity is not None:
            ss.velocity *= h.momentum
            ss.velocity += direction
            direction = ss.velocity
        step = self._work("step", ss.x.size)
        np.multiply(direction, h.gamma, out=step)
        np.subtract(ss.x, step, out=ss.x)
        ss.x = prox(ss.x, h.gamma)

    def _work(self, name: str, d: int) -> np.ndarray:
        """A reusable server-side work vector (scratch: never part of the checkpointed state)."""
        buf = self._buffers.get(name)
        if buf is None or buf.size != d:
            buf = self._buffers[name] = np.empty(d)
        return buf


def _step_size(cfg_alg, gamma: float, rule: str, tau: int):
    """(gamma, rule): a numeric ``stepsize`` as given, else the synchronous theory step
    ``gamma`` (found by ``rule``), divided by (1 + tau) for asynchronous runs.

    The division is a HEURISTIC, not proven for compressed methods: delayed-gradient methods
    are stable with steps of order 1/(L (1 + tau)) (Arjevani, Shamir & Srebro 2020 for
    delayed GD on quadratics).
    """
    if cfg_alg["stepsize"] != "theory":
        return float(cfg_alg["stepsize"]), "given in the config"
    if tau:
        return gamma * (1.0 / (1.0 + tau)), rule + " / (1+tau) (heuristic)"
    return gamma, rule


def _default_form(cls, cfg_alg) -> str:
    return cfg_alg["async_form"] or cls.forms[0]


@register("algorithm")
class GD(Algorithm):
    """Uncompressed gradient descent (the baseline)."""

    name = "gd"
    compressed = False
    params = {**COMMON_PARAMS, "momentum": Real(0, 1, closed="left", default=0.0)}

    @classmethod
    def resolve(cls, cfg, compressor, consts, weights, tau):
        a = cfg["algorithm"]
        gamma, rule = _step_size(a, 1.0 / consts.L, "1/L (proven)", tau)
        return Hyper(gamma=gamma, momentum=a["momentum"], form=_default_form(cls, a), rule=rule)


@register("algorithm")
class DQGD(Algorithm):
    """Distributed quantized GD: workers send Q(grad f_i); QSGD/TernGrad are dqgd + their quantizer."""

    name = "dqgd"
    requires = "unbiased"
    params = {**COMMON_PARAMS, "momentum": Real(0, 1, closed="left", default=0.0)}

    @classmethod
    def resolve(cls, cfg, compressor, consts, weights, tau):
        a = cfg["algorithm"]
        omega = compressor.omega(consts.d)
        # DIANA paper Thm 10 (papers.md B.2), the largest step it allows: every f_i L-smooth
        # and mu-strongly convex, gamma <= 2/((mu + L)(1 + 2 omega/n)). Its proof runs worker
        # by worker (co-coercivity of each f_i), so unequal shards give
        # min_i 2/((mu + L_i)(1 + 2 omega w_i)).
        L_i = np.asarray(consts.L_i, dtype=np.float64)
        g = float(np.min(2.0 / ((consts.mu + L_i) * (1.0 + 2.0 * omega * np.asarray(weights)))))
        gamma, rule = _step_size(a, g, "min_i 2/((mu+L_i)(1+2 omega w_i)) (proven, sync)", tau)
        return Hyper(gamma=gamma, momentum=a["momentum"], form=_default_form(cls, a), rule=rule)


@register("algorithm")
class DIANA(Algorithm):
    """DIANA (Mishchenko et al., Algorithm 1): compress g_i - h_i, learn the shifts h_i."""

    name = "diana"
    requires = "unbiased"
    memory = "shift"
    params = {**COMMON_PARAMS,
              "alpha": AnyOf(Choice("theory"), Real(0, 1, closed="right"), default="theory"),
              "momentum": Real(0, 1, closed="left", default=0.0)}

    @classmethod
    def resolve(cls, cfg, compressor, consts, weights, tau):
        a = cfg["algorithm"]
        omega = compressor.omega(consts.d)
        alpha = 1.0 / (1.0 + omega) if a["alpha"] == "theory" else float(a["alpha"])
        # Gorbunov, Hanzely & Richtarik 2020 (papers.md B.3): alpha = 1/(1+omega),
        # gamma = 1/(L + 6 omega L_max/n). The compression variance is bounded through each
        # f_i's smoothness, sum_i w_i^2 ||grad f_i(x) - grad f_i(x*)||^2 <= 2 max_i(w_i L_i) D_f,
        # so L_max/n is max_i w_i L_i in general; it equals L/n only when every L_i = L.
        max_wL = float(np.max(np.asarray(weights) * np.asarray(consts.L_i)))
        g = 1.0 / (consts.L + 6.0 * omega * max_wL)
        rule = "1/(L + 6 omega max_i w_i L_i) (proven, sync)"
        if a["momentum"]:
            # heavy ball multiplies the effective step by 1/(1-beta): keep it (heuristic)
            g *= 1.0 - a["momentum"]
            rule += " * (1-momentum) (heuristic)"
        gamma, rule = _step_size(a, g, rule, tau)
        return Hyper(gamma=gamma, alpha=alpha, momentum=a["momentum"],
                     form=_default_form(cls, a), rule=rule)

    def worker_vector(self, ws, grad):
        return grad - ws.memory

    def worker_update(self, ws, v, y):
        ws.memory += self.hyper.alpha * y

    def entry(self, ss, i, y, out):
        np.add(ss.shifts[i], y, out=out)  # g_hat = h_i + y, then h_i += alpha y
        scaled = self._work("scaled", y.size)
        np.multiply(y, self.hyper.alpha, out=scaled)
        ss.shifts[i] += scaled


@register("algorithm")
class EF21(Algorithm):
    """EF21 (Richtarik, Sokolov & Fatkhullin 2021): workers send C(grad_i - g_i), g_i += C(.)."""

    name = "ef21"
    requires = "contraction"
    memory = "ef21"
    forms = ("table",)

    @classmethod
    def resolve(cls, cfg, compressor, consts, weights, tau):
        a = cfg["algorithm"]
        g, scale = _ef21_step(compressor, consts, weights)
        gamma, rule = _step_size(a, g, "1/(L + L~ sqrt(beta/theta)) (proven, sync)", tau)
        return Hyper(gamma=gamma, form="table", message_scale=scale, rule=rule)

    def worker_vector(self, ws, grad):
        return grad - ws.memory

    def worker_update(self, ws, v, y):
        ws.memory += y

    def entry(self, ss, i, y, out):
        ss.shifts[i] += y
        np.copyto(out, ss.shifts[i])


@register("algorithm")
class EF(Algorithm):
    """Classic error feedback (Seide et al. 2014; Stich & Karimireddy 2019).

    Worker: v = e_i + gamma * g; send C(v); e_i = v - C(v). The step is inside the
    message, so the server applies x <- x - sum_batch w_i C(v_i) (direct form only).
    """

    name = "ef"
    requires = "contraction"
    memory = "error"
    forms = ("direct",)

    @classmethod
    def resolve(cls, cfg, compressor, consts, weights, tau):
        a = cfg["algorithm"]
        # HEURISTIC: the EF21 step for the same contraction (the classic EF analyses
        # give steps of the same order but with loose constants).
        g, scale = _ef21_step(compressor, consts, weights)
        gamma, rule = _step_size(a, g, "EF21's step (heuristic for classic EF)", tau)
        return Hyper(gamma=gamma, form="direct", message_scale=scale, rule=rule)

    def worker_vector(self, ws, grad):
        return ws.memory + self.hyper.gamma * grad

    def worker_update(self, ws, v, y):
        np.subtract(v, y, out=ws.memory)

    def _step(self, ss, direction, prox):
        # gamma is already inside the messages
        np.subtract(ss.x, direction, out=ss.x)
        ss.x = prox(ss.x, self.hyper.gamma)


def _require_unbiased(cfg):
    from .compressors import get_compressor

    comp = get_compressor(cfg["compressor"])
    if not comp.unbiased:
        raise ConfigError(f"compressor.name: got {comp.name!r}, which is biased; allowed for "
                          f"{cfg['algorithm']['name']}: an unbiased compressor "
                          f"(use ef or ef21 with biased ones)")


def _require_contraction(cfg):
    """At validation time d is unknown; a compressor that is no contraction at d = 1024
    (rounding: delta = 1 for every d) is refused here with the same message as at run time."""
    from .compressors import get_compressor

    _contraction(get_compressor(cfg["compressor"]), 1024)


def _ef21_step(compressor, consts, weights):
    """EF21's theorem step (proven, sync) and the message scale for ``compressor``.

    gamma = 1/(L + L~ sqrt(beta/theta)) with a = 1 - delta, theta = 1 - sqrt(1 - a),
    beta = (1 - a)/theta and L~ = sqrt(sum_i w_i L_i^2).
    """
    contraction, scale = _contraction(compressor, consts.d)
    a = 1.0 - contraction
    theta = 1.0 - math.sqrt(1.0 - a)
    beta = (1.0 - a) / theta
    l_tilde = math.sqrt(float(np.dot(weights, np.square(consts.L_i))))
    return 1.0 / (consts.L + l_tilde * math.sqrt(beta / theta)), scale


def _contraction(compressor, d):
    """(delta, scale): ||s C(x) - x||^2 <= delta ||x||^2 after scaling by s.

    A biased compressor gives its own delta; an unbiased one with variance omega is
    turned into a contraction by s = 1/(1+omega), with delta = omega/(1+omega).
    """
    if compressor.unbiased:
        omega = compressor.omega(d)
        return omega / (1.0 + omega), 1.0 / (1.0 + omega)
    delta = compressor.delta(d)
    if not delta < 1.0:
        raise ConfigError(f"compressor.name: got {compressor.name!r} with delta = {delta:g}, which "
                          f"is no contraction; allowed for error feedback: a compressor with "
                          f"delta < 1 (e.g. top_k, sign) or an unbiased one")
    return delta, 1.0


def get_algorithm_class(name):
    return lookup("algorithm", name)


def build(cfg, compressor, consts: Constants, weights, tau: int) -> Algorithm:
    cls = get_algorithm_class(cfg["algorithm"]["name"])
    hyper = cls.resolve(cfg, compressor, consts, np.asarray(weights, dtype=np.float64), tau)
    return cls(cfg["algorithm"], hyper, weights)
