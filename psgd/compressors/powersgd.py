"""``powersgd``: a rank-r approximation of each layer's matrix by one power-iteration step
(Vogels, Karimireddy & Jaggi 2019, PowerSGD); biased, for error feedback (ef, ef21).

The vector is cut into matrices, one per layer (``shapes``: each [m, n], row-major, in
vector order; null: the problem's layer shapes when it has them, else the whole vector as
one m x n matrix with m = ceil(sqrt(d)), n = ceil(d / m), zero-padded at the end). For a
matrix M and a start Q (n x r, r = min(rank, m, n))::

    P = M Q,   P^ = orth(P) (m x r, orthonormal columns: Householder QR),   Q' = M^T P^

and ``C(M) = P^ Q'^T = P^ P^^T M``, the projection of M on span(M Q).

One vector alone (``encode``/``decode``, the codec contract): Q is standard Gaussian from
``rng``; the message is every layer's P^ then every layer's Q', float32, so
``64 + 32 sum_l r_l (m_l + n_l)`` bits. In a run (``rounds = 2``, :class:`psgd.steps.Rounds`)
the two factors are two rounds of messages, each a codec buffer (this header, then float32
factors, no other field): worker i sends P_i = M_i Q; the server sends P^ = orth(sum_i w_i
P_i); worker i sends Q_i = M_i^T P^; the server sends Q = sum_i w_i Q_i. So per step and
layer r (m + n) floats go up from each worker and r (m + n) come down to it. The workers'
messages are linear in M_i, hence sum_i w_i P^ Q_i^T = P^ Q^T: the server's aggregate is the
low-rank product of the two factors it sent, and every worker rebuilds it from them and
replays the server's update (see :class:`psgd.steps.Rounds`). Q is warm-started: the next
step's Q is this step's aggregate Q on every rank (Q at step 0: standard Gaussian from the
run's seed). Worker i's own decoded message is P^ Q_i^T (its memory: e_i = v_i - P^ Q_i^T).

``delta(d) = 1``: the projection never grows a vector, but no contraction holds on every
input (a start Q nearly orthogonal to M's row space captures almost nothing), so ef and
ef21 accept it only with a numeric ``algorithm.stepsize`` (``for_error_feedback``).
Decoding checks the exact length and that every value is finite; NaN or Inf in x is a
ValueError. The QR and the products use LAPACK/BLAS in float64; the bytes are float32
roundings of them, which do not depend on the library in practice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..validation import Int, List, Nullable
from .base import Compressor, register_compressor, wire_error

#: distinguishes the warm start's stream from every other stream derived from the run's seed
START_STREAM = 0x504F574552  # "POWER"


def near_square(d: int) -> tuple[int, int]:
    """(m, n) with m = ceil(sqrt d), n = ceil(d / m): m n >= d, m n - d < m."""
    if d == 0:
        return 0, 0
    m = math.isqrt(d - 1) + 1
    return m, -(-d // m)


@dataclass(frozen=True)
class Layer:
    start: int   # offset in the vector
    size: int    # coordinates of the vector it covers (m n, or fewer when padded)
    m: int
    n: int
    r: int


def layout(shapes, d: int, rank: int) -> list[Layer]:
    """The layers of a length-d vector (ValueError when ``shapes`` do not add up to d)."""
    if shapes is None:
        m, n = near_square(d)
        pairs, sizes = ([(m, n)], [d]) if d else ([], [])
    else:
        pairs = [tuple(s) for s in shapes]
        sizes = [m * n for m, n in pairs]
        if sum(sizes) != d:
            raise ValueError(f"powersgd: shapes {shapes} cover {sum(sizes)} coordinates, "
                             f"the vector has {d}")
    out, at = [], 0
    for (m, n), size in zip(pairs, sizes):
        out.append(Layer(at, size, m, n, min(rank, m, n)))
        at += size
    return out


def _flat(blocks) -> np.ndarray:
    """The row-major concatenation of per-layer factor matrices (float64)."""
    return np.concatenate([b.ravel() for b in blocks] + [np.zeros(0)])


@dataclass
class PowerSGDState:
    """A rank's PowerSGD memory, the same on every rank: the warm start Q and this step's P^."""

    q: np.ndarray      # every layer's Q (n x r, row-major), concatenated
    p_hat: np.ndarray  # every layer's P^ (m x r) of the step under way


@register_compressor
class PowerSGD(Compressor):
    """Rank-r approximation per layer by one power step (biased, for ef/ef21; two rounds)."""

    name = "powersgd"
    codec_id = 35
    unbiased = False
    rounds = 2
    for_error_feedback = True
    # (explicit shapes fix d, and the contract tests run every example at several d: the
    # layer layouts are tested in tests/test_powersgd.py)
    examples = ({"rank": 1}, {"rank": 2}, {"rank": 4})
    params = {
        "rank": Int(1, 4096, default=1, doc="r, the rank of each layer's approximation"),
        "shapes": Nullable(List(List(Int(1), 2, 2), 1, 4096),
                           doc="[[m, n], ...] each layer's matrix, in vector order (null: the "
                               "problem's layers, else one near-square matrix)"),
    }

    # -- layout ------------------------------------------------------------------------

    def layers(self, d: int) -> list[Layer]:
        return layout(self.shapes, d, self.rank)

    def p_size(self, d: int) -> int:
        return sum(L.m * L.r for L in self.layers(d))

    def q_size(self, d: int) -> int:
        return sum(L.n * L.r for L in self.layers(d))

    def check_dim(self, d: int, path: str = "compressor.shapes") -> None:
        """ConfigError unless ``shapes`` fit a length-d vector (config validation)."""
        from ..errors import ConfigError

        covered = sum(m * n for m, n in self.shapes or [])
        if self.shapes is not None and covered != d:
            raise ConfigError(f"{path}: got {self.shapes} (covering {covered} coordinates); "
                              f"allowed: shapes whose m n add up to d = {d}")

    def check_run(self, cfg: dict, d: int | None) -> None:
        """What a run with powersgd needs (ConfigError naming the key otherwise): error
        feedback with a numeric step, and the runtime's two-round support, which is
        synchronous with one server, the model not compressed separately and no checkpoints."""
        from ..errors import ConfigError

        a, run = cfg["algorithm"], cfg["run"]
        need = [
            ("algorithm.name", a["name"], a["name"] in ("ef", "ef21"),
             "ef or ef21 (powersgd is biased: error feedback corrects it)"),
            ("algorithm.stepsize", a["stepsize"], a["stepsize"] != "theory",
             "a number (the theory steps need a contraction delta < 1, which powersgd does "
             "not guarantee)"),
            ("run.mode", run["mode"], run["mode"] == "sync",
             "sync (each step's two rounds need every worker's message)"),
            ("run.servers", run["servers"], run["servers"] == 1,
             "1 (the server orthogonalises each layer's whole P)"),
            ("run.downlink", run["downlink"], run["downlink"] is None,
             "null (the model message already is the rank-r aggregate)"),
            ("run.checkpoint_every", run["checkpoint_every"], run["checkpoint_every"] is None,
             "null (powersgd runs write no checkpoints yet)"),
        ]
        for key, value, ok, allowed in need:
            if not ok:
                raise ConfigError(f"{key}: got {value!r}; allowed with compressor powersgd: "
                                  f"{allowed}")
        if d is not None and self.shapes is not None:
            self.check_dim(d)

    @staticmethod
    def matrix(v: np.ndarray, L: Layer) -> np.ndarray:
        """Layer L of v as its m x n matrix (a view unless padded)."""
        seg = v[L.start:L.start + L.size]
        if L.size == L.m * L.n:
            return seg.reshape(L.m, L.n)
        padded = np.zeros(L.m * L.n, dtype=v.dtype)
        padded[:L.size] = seg
        return padded.reshape(L.m, L.n)

    @staticmethod
    def _factors(flat: np.ndarray, layers, rows: str) -> list:
        """Split a concatenation of per-layer factors (m x r for "m", n x r for "n")."""
        out, at = [], 0
        for L in layers:
            k = getattr(L, rows)
            out.append(flat[at:at + k * L.r].reshape(k, L.r))
            at += k * L.r
        return out

    # -- the math ----------------------------------------------------------------------

    def project(self, v, q, layers):
        """[P_l = M_l Q_l] of v for the concatenated Q ``q``."""
        return _flat(self.matrix(v, L) @ Q for L, Q in zip(layers, self._factors(q, layers, "n")))

    def back(self, v, p_hat, layers):
        """[Q'_l = M_l^T P^_l] of v for the concatenated P^ ``p_hat``."""
        return _flat(self.matrix(v, L).T @ P
                     for L, P in zip(layers, self._factors(p_hat, layers, "m")))

    @classmethod
    def orthonormal(cls, p, layers):
        """[orth(P_l)]: Householder QR's Q factor (orthonormal columns even when P_l is
        rank deficient or zero)."""
        return _flat(np.linalg.qr(P)[0] for P in cls._factors(p, layers, "m"))

    def low_rank_add(self, p_hat, q, layers, out, weight):
        """out += weight * [P^_l Q_l^T], each layer's first ``size`` entries row-major."""
        for L, P, Q in zip(layers, self._factors(p_hat, layers, "m"),
                           self._factors(q, layers, "n")):
            block = (P @ Q.T).ravel()[:L.size]
            if weight != 1.0:
                block *= weight
            out[L.start:L.start + L.size] += block

    # -- the codec (one vector alone) --------------------------------------------------

    def _encode(self, x, rng, key):
        if not np.isfinite(x).all():
            raise ValueError(f"{self.name}: x holds NaN or Inf")
        layers = self.layers(x.size)
        x = x.astype(np.float64)
        q = rng.standard_normal(self.q_size(x.size))
        p_hat = self.orthonormal(self.project(x, q, layers), layers).astype("<f4")
        q_new = self.back(x, p_hat.astype(np.float64), layers).astype("<f4")
        return np.concatenate([p_hat.view(np.uint8), q_new.view(np.uint8)])

    def _decode_add(self, payload, d, out, weight, key):
        layers = self.layers(d)
        f = self.floats(payload)
        mp = self.p_size(d)
        self.low_rank_add(f[:mp], f[mp:], layers, out, weight)

    def floats(self, payload) -> np.ndarray:
        """The payload's float32 values as float64 (WireFormatError unless all finite)."""
        if payload.size % 4:
            raise wire_error(self.name, f"payload of {payload.size} bytes is not whole float32s")
        f = np.frombuffer(payload.tobytes(), dtype="<f4").astype(np.float64)
        if not np.isfinite(f).all():
            raise wire_error(self.name, "payload holds NaN or Inf")
        return f

    def _payload_nbytes(self, d):
        return 4 * (self.p_size(d) + self.q_size(d))

    def _max_payload_nbytes(self, d):
        return self._payload_nbytes(d)

    def delta(self, d):
        """1: a projection never grows x, but no uniform contraction holds (module docstring)."""
        return 1.0

    # -- the two rounds of a run (driven by psgd.steps.Rounds) -------------------------

    def round_state(self, d: int, seed: int) -> PowerSGDState:
        """The warm start at step 0, the same on every rank: Gaussian from the run's seed."""
        rng = np.random.default_rng([seed, START_STREAM])
        return PowerSGDState(q=rng.standard_normal(self.q_size(d)), p_hat=np.zeros(self.p_size(d)))

    def factor_message(self, values: np.ndarray, d: int) -> np.ndarray:
        """A round's codec buffer: this codec's header, then ``values`` as float32."""
        return self.framed(np.ascontiguousarray(values, dtype="<f4").view(np.uint8), d)

    def read_factors(self, buf, d: int, count: int) -> np.ndarray:
        """A round's ``count`` float32 values as float64 (WireFormatError if anything is off)."""
        payload, _ = self._parse(buf, d, fixed=False)
        if payload.size != 4 * count:
            raise wire_error(self.name, f"factor message of {payload.size} bytes, expected "
                                        f"{4 * count} for d={d}")
        return self.floats(payload)

    def worker_round(self, state, t: int, v, reply, d: int):
        """Worker: round t's message for its vector v (``reply``: the server's last)."""
        layers = self.layers(d)
        if t == 0:
            return self.factor_message(self.project(v, state.q, layers), d)
        state.p_hat = self.read_factors(reply, d, self.p_size(d))
        return self.factor_message(self.back(v, state.p_hat, layers), d)

    def worker_decoded(self, state, sent, d: int) -> np.ndarray:
        """Worker: its own decoded message P^ Q_i^T from the Q_i it sent (as float32)."""
        y = np.zeros(d)
        self.low_rank_add(state.p_hat, self.round_values(1, sent, d), self.layers(d), y, 1.0)
        return y

    def round_values(self, t: int, buf, d: int) -> np.ndarray:
        """A worker's round-t message read (P_i or Q_i; WireFormatError if anything is off)."""
        return self.read_factors(buf, d, self.p_size(d) if t == 0 else self.q_size(d))

    def server_round(self, state, t: int, values, weights, d: int):
        """Server: the reply to round t from every worker's ``round_values``, in worker order."""
        total = np.zeros(self.p_size(d) if t == 0 else self.q_size(d))
        for f, w in zip(values, weights):
            total += w * f
        if t == 0:
            reply = self.factor_message(self.orthonormal(total, self.layers(d)), d)
            state.p_hat = self.read_factors(reply, d, total.size)  # what the workers read
            return reply
        return self.factor_message(total, d)

    def final_total(self, state, final, d: int) -> np.ndarray:
        """Every rank: the step's aggregate P^ Q^T from the server's last message, which is
        also the next step's warm start."""
        state.q = self.read_factors(final, d, self.q_size(d))
        total = np.zeros(d)
        self.low_rank_add(state.p_hat, state.q, self.layers(d), total, 1.0)
        return total
