"""A complete plug-in problem for ``psgd run``: copy this file and replace the model.

``make`` is the factory the config names (``problem: {name: python, factory:
"my_problem:make", ...}``). psgd calls it on every rank as ``make(params, data, seed,
n_workers)`` and expects one object per worker. This one is ridge regression on data it
generates from the seed (replace ``_load`` with your own data): worker j holds rows
``shards[j]`` and its object computes its average squared error plus (l2/2)||x||^2.

Only ``value_and_grad`` and ``d`` (or ``x0``) are required. Everything else below is
optional and shows what psgd does with it:

* ``weight``: the worker's share of the samples (the server weights its message by it);
* ``n_samples``: lets psgd count epochs;
* ``stochastic_grad(x, batch_size, rng)``: used when ``algorithm.batch_size`` is set;
* ``evaluate(x)``: extra metrics logged beside the loss (their weighted mean over workers);
* ``L`` and ``mu``: smoothness and strong convexity, which ``stepsize: theory`` needs.

Run it (from the repository root; the module must be importable on every rank):

    PYTHONPATH=examples mpiexec -n 5 psgd run examples/my_problem.yaml
"""

import numpy as np


def _load(n_samples, n_features, seed):
    """Your data go here. This makes a planted linear model with noise, from the seed."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((n_samples, n_features))
    x_true = rng.standard_normal(n_features)
    b = A @ x_true + 0.1 * rng.standard_normal(n_samples)
    return A, b


class RidgeShard:
    """One worker's part: f_j(x) = ||A_j x - b_j||^2 / (2 m_j) + (l2/2)||x||^2."""

    def __init__(self, A, b, A_test, b_test, l2, weight):
        self.A, self.b, self.l2 = A, b, l2
        self.A_test, self.b_test = A_test, b_test
        self.d = A.shape[1]              # required (or x0: the initial point)
        self.weight = weight             # optional: share of the samples
        self.n_samples = A.shape[0]      # optional: epochs are counted
        eig = np.linalg.eigvalsh(A.T @ A / A.shape[0])
        self.L = float(eig[-1] + l2)     # optional constants: stepsize: theory
        self.mu = float(max(eig[0], 0.0) + l2)

    def value_and_grad(self, x):         # required
        r = self.A @ x - self.b
        value = 0.5 * r @ r / len(r) + 0.5 * self.l2 * x @ x
        return value, self.A.T @ r / len(r) + self.l2 * x

    def stochastic_grad(self, x, batch_size, rng):  # optional: minibatches
        rows = rng.integers(0, len(self.b), size=batch_size)
        r = self.A[rows] @ x - self.b[rows]
        return self.A[rows].T @ r / batch_size + self.l2 * x

    def evaluate(self, x):               # optional: extra metrics
        r = self.A_test @ x - self.b_test
        return {"test_rmse": float(np.sqrt(np.mean(r * r)))}


def make(params, data, seed, n_workers):
    """The factory: ``params`` are the problem section's other keys, ``data`` the data
    section (here unused), ``seed`` the config's seed."""
    n_samples, n_features = params.get("n_samples", 2000), params.get("n_features", 20)
    l2 = params.get("l2", 1e-3)
    A, b = _load(n_samples + n_samples // 5, n_features, seed)
    A, b, A_test, b_test = A[:n_samples], b[:n_samples], A[n_samples:], b[n_samples:]
    shards = np.array_split(np.arange(n_samples), n_workers)
    return [RidgeShard(A[s], b[s], A_test, b_test, l2, len(s) / n_samples) for s in shards]
