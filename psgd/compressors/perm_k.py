"""``perm_k``: permutation compressors (Szlendak, Tyurin, Richtarik 2021), correlated across workers.

At every step all n workers draw the same uniformly random permutation pi of the d
coordinates (from the run's shared seed and the step, so it never travels) and worker j
keeps only its own slice of it, scaled so that the slice is unbiased:

* d >= n: ``S_j = {pi(i) : floor(j d / n) <= i < floor((j + 1) d / n)}``, ``C_j(x) = (d / |S_j|) x_{S_j}``;
* d < n: ``S_j = {pi(j mod d)}``, ``C_j(x) = d x_{S_j}`` (the paper's n >= d case).

Each C_j on its own is rand_k with k = |S_j|: unbiased, ``E||C_j(x) - x||^2 = (d/|S_j| - 1)
||x||^2`` exactly, so ``omega = n - 1`` when n divides d (in general d / min_j |S_j| - 1).
What PermK adds is the correlation: for d >= n the slices are disjoint and cover every
coordinate once, so with n | d the average of the workers' messages satisfies the
AB-inequality with A = B = 1 (Szlendak et al., Lemma 2 / Theorem 1):

    E||(1/n) sum_j C_j(x_j) - xbar||^2 = (1/n) sum_j ||x_j||^2 - ||xbar||^2,

which is zero when all x_j are equal (the average is then exact). Independent rand_k
with the same k gives ``((n - 1)/n) (1/n) sum_j ||x_j||^2`` instead, so PermK is the better
of the two exactly when ``||xbar||^2 > (1/n^2) sum_j ||x_j||^2``: when the workers' vectors
are alike (small heterogeneity), the regime the paper targets; for very dissimilar vectors
it can be worse. tests/test_perm_k_threshold.py checks these identities by Monte Carlo.

The disjointness needs every worker at the same step to use the same permutation, so it
holds for synchronous algorithms (every worker's seq-th message belongs to one step);
asynchronous runs still get unbiased messages with omega = n - 1, but not the AB gain.

Notes
-----
``n`` is the number of workers sharing the permutation (config ``compressor.n``; it must
be the run's worker count: ``psgd run`` checks it). The key (``shared_randomness``) is
``step_key + 2^64 j``: the low 64 bits are the same for every worker at a step (the runtime
derives them from (seed, seq); :meth:`psgd.steps.Uplink.key`), the high bits carry the
worker index j (so a plain 64-bit key means worker 0). pi is the stable argsort of the
SplitMix64 outputs 0..d-1 of step_key (a uniform permutation unless two of the d 64-bit
outputs tie, probability below d^2 / 2^65; the stable sort makes even that deterministic),
O(d log d); the last permutation is cached, so a server decoding n messages of one step
sorts once. Payload with a key: the |S_j| values as little-endian float32 in increasing
index order, ``32 |S_j|`` bits. Without a key (standalone use) the seed is drawn from
``rng`` and the indices follow as LEB128 gap varints, as for rand_k.
"""

from __future__ import annotations

import numpy as np

from .. import kernels
from ..errors import ConfigError
from ..kernels_ref.splitmix import splitmix64
from ..validation import Int
from .base import Compressor, register_compressor, wire_error
from .rand_k import add_values, carried_indices, gather_values

_U64 = 2**64


@register_compressor
class PermK(Compressor):
    """Worker j keeps slice j of a permutation shared by all n workers, scaled (unbiased)."""

    name = "perm_k"
    codec_id = 33
    unbiased = True
    shared_randomness = True
    #: the key's high bits carry the worker index: Uplink.key builds it (psgd.steps)
    correlated = True
    examples = ({"n": 4}, {"n": 2}, {"n": 16}, {"n": 3})
    params = {"n": Int(1, 2**16, required=True,
                       doc="workers sharing the permutation: the run's worker count")}

    def __init__(self, **params):
        super().__init__(**params)
        self._cache = (None, None, None)

    @staticmethod
    def worker_key(step_key: int, worker: int) -> int:
        """The key of worker ``worker`` at the step whose shared 64-bit key is ``step_key``."""
        return int(step_key) % _U64 + _U64 * int(worker)

    def _split(self, key: int) -> tuple[int, int]:
        step, worker = int(key) % _U64, int(key) // _U64
        if not 0 <= worker < self.n:
            raise ValueError(f"{self.name}: the key names worker {worker}, but n={self.n}")
        return step, worker

    def permutation(self, step_key: int, d: int) -> np.ndarray:
        """pi: the stable argsort of the SplitMix64 outputs 0..d-1 of step_key (cached)."""
        if self._cache[0] != (step_key, d):
            self._cache = ((step_key, d), np.argsort(splitmix64(step_key, 0, d), kind="stable"))
        return self._cache[1]

    def indices(self, step_key: int, worker: int, d: int) -> np.ndarray:
        """S_j in increasing order (module docstring)."""
        if d == 0:
            return np.empty(0, dtype=np.int64)
        pi = self.permutation(step_key, d)
        if d < self.n:
            return pi[worker % d: worker % d + 1].astype(np.int64)
        lo, hi = worker * d // self.n, (worker + 1) * d // self.n
        return np.sort(pi[lo:hi]).astype(np.int64)

    def _scale(self, d, k):
        return d / k if k else 0.0

    def _encode(self, x, rng, key):
        d = x.size
        if key is None:
            step, worker = int(rng.integers(0, _U64, dtype=np.uint64)), 0
        else:
            step, worker = self._split(key)
        idx = self.indices(step, worker, d)
        values = gather_values(self.name, x, idx)
        if key is not None:
            return values
        gaps = np.empty(kernels.gaps_nbytes(idx), dtype=np.uint8)
        kernels.gaps_encode(idx, gaps)
        return np.concatenate([values, gaps])

    def _slice_len(self, worker, d):
        if d == 0:
            return 0
        if d < self.n:
            return 1
        return (worker + 1) * d // self.n - worker * d // self.n

    def _decode_add(self, payload, d, out, weight, key):
        if key is not None:
            try:
                step, worker = self._split(key)
            except ValueError as exc:
                raise wire_error(self.name, str(exc).split(": ", 1)[1]) from None
            k = self._slice_len(worker, d)
            if payload.size != 4 * k:
                raise wire_error(self.name, f"payload is {payload.size} bytes, expected {4 * k} "
                                            f"(worker {worker}'s {k} float32 values)")
            idx = self.indices(step, worker, d)
        else:
            k = self._slice_len(0, d)
            idx = carried_indices(self.name, payload, k, d)
        add_values(self.name, idx, payload[:4 * k], self._scale(d, k), out, weight)

    def _max_payload_nbytes(self, d):
        """4 bytes a value and at most 5 a gap varint, for the longest slice ceil(d / n)."""
        return 9 * (-(-d // self.n) if d >= self.n else min(d, 1))

    def omega(self, d):
        """d / min_j |S_j| - 1: n - 1 when n divides d (module docstring)."""
        if d == 0:
            return 0.0
        return d / (d // self.n if d >= self.n else 1) - 1.0

    def check_workers(self, n_workers: int, path: str = "compressor") -> None:
        """Refuse a run whose worker count is not n (the slices would not partition)."""
        if n_workers != self.n:
            raise ConfigError(f"{path}.n: got {self.n}; allowed: the run's worker count "
                              f"{n_workers} (perm_k's slices partition the coordinates among n "
                              "workers)")
