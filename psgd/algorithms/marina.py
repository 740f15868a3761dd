"""MARINA (Gorbunov, Burlachenko, Li & Richtarik 2021): compressed gradient differences.

The server keeps one gradient estimate g = sum_i w_i g_i. At every message, with
probability p (a coin shared by the workers and the server, drawn from the run's seed
and the message's sequence number, so it never travels) worker i sends its gradient
exactly; otherwise it sends Q(grad f_i(x_new) - grad f_i(x_old)), the compressed change of
its gradient since its previous message. The server sets g_i to the exact gradient, or
moves it by the decoded difference, and steps x <- x - gamma g. The first message is always
exact (g^0 = grad f(x^0)). Unlike DQGD the estimate's error vanishes as the iterates
converge, so MARINA reaches x* with an unbiased compressor.

Asynchronously (table form) each worker's difference is taken between its own two latest
models, so the server's g_i stays the exact running sum of what that worker sent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..registry import register
from ..validation import AnyOf, Choice, Real
from .base import COMMON_PARAMS, Algorithm, Hyper, ServerState
from .stepsize import l_tilde, step_size

#: distinguishes the coin's stream from every other stream derived from the run's seed
COIN_STREAM = 0x4D4152494E41  # "MARINA"


@dataclass
class MarinaWorker:
    last_grad: np.ndarray  # grad f_i at the model of the worker's previous message


@dataclass
class MarinaServer(ServerState):
    estimate: np.ndarray | None = None  # synchronous: g = sum_i w_i g_i


@register("algorithm")
class MARINA(Algorithm):
    """MARINA: exact gradients with probability p, compressed gradient differences otherwise."""

    name = "marina"
    requires = "unbiased"
    sends_full = True
    forms = ("table",)
    server_state = MarinaServer
    params = {**COMMON_PARAMS,
              "p": AnyOf(Choice("theory"), Real(0, 1, closed="right"), default="theory")}

    @classmethod
    def resolve(cls, cfg, compressor, consts, weights, tau):
        a = cfg["algorithm"]
        omega = compressor.omega(consts.d)
        # the paper's p = zeta_Q/d matches the expected cost of an exact round to a compressed
        # one for sparsifiers; for dense quantizers (zeta_Q = d) that would be p = 1, so we
        # take one exact round per (1 + omega) compressed ones: a heuristic, labelled so
        p = 1.0 / (1.0 + omega) if a["p"] == "theory" else float(a["p"])

        def theory():
            # MARINA Theorem 2.2 (PL / strongly convex case): gamma <= min{1/(L + L~ sqrt(2(1-p)
            # omega/(p n))), p/(2 mu)} with L~^2 the mean of L_i^2. With weights w_i the
            # variance term sum_i w_i^2 omega ||Delta_i||^2 <= omega max_i w_i sum_i w_i L_i^2
            # ||Delta x||^2, so omega/n becomes omega max_i w_i.
            spread = math.sqrt(2.0 * (1.0 - p) * omega * float(np.max(weights)) / p)
            g = min(1.0 / (consts.L + l_tilde(consts, weights) * spread), p / (2.0 * consts.mu))
            return g, "min(1/(L + L~ sqrt(2(1-p) omega max_i w_i/p)), p/(2 mu)) (proven, sync)"

        gamma, rule = step_size(a, consts, theory, tau)
        if a["p"] == "theory":
            rule += "; p = 1/(1+omega) (heuristic)"
        return Hyper(gamma=gamma, form="table", rule=rule, p_full=p)

    def full_message(self, seq):
        if seq == 0:
            return True
        state = np.random.SeedSequence([self.seed, COIN_STREAM, seq]).generate_state(1, np.uint64)
        return float(state[0]) / 2.0**64 < self.hyper.p_full

    def worker_init(self, d):
        return MarinaWorker(last_grad=np.zeros(d))

    def worker_vector(self, ws, grad, full=False):
        v = grad if full else grad - ws.last_grad
        np.copyto(ws.last_grad, grad)
        return v

    def server_fields(self, d):
        return {"estimate": np.zeros(d)} if self.synchronous else {}

    def sync_direction(self, ss, batch):
        # the coin is the same for every worker at a synchronous step: all exact or all deltas
        if batch[0].full:
            return self.aggregate(batch, ss.estimate)
        for msg in batch:
            msg.add_to(ss.estimate, self.weights[msg.worker])
        return ss.estimate

    def entry(self, ss, msg, out):
        # asynchronous: the table's row of worker i is its g_i
        if msg.full:
            msg.write_to(out)
        else:
            np.copyto(out, ss.table.entries[msg.worker])
            msg.add_to(out)
