"""``mlp``: a fully connected network with softmax cross-entropy, in NumPy, on real images.

Config::

    problem: {name: mlp, hidden: [64], activation: relu, l2: 1e-4, test_fraction: 0.2}
    data:    {source: digits}

Data: scikit-learn's bundled digits (1797 8x8 images, pixel values scaled to [0, 1], 10
classes; no download), or ``data: {source: mnist1d}`` (5000 MNIST-1D signals of length 40,
generated offline by the mnist1d package; see :func:`psgd.data.mnist1d`). The input layer
has as many units as a sample has values (64 or 40). A seeded split (the config's seed)
holds out ``test_fraction`` of the samples; the training samples are split over the workers
by ``data.partition``.

Model: layer widths ``[n_in, *hidden, 10]``; hidden layers apply ``activation`` (relu or
tanh), the last is linear and feeds the softmax. ``f_i`` is the mean cross-entropy over
worker i's training samples plus ``(l2 / 2) ||x||^2`` (every parameter), weighted m_i / m as
for the linear models, so the logged ``loss`` is the training loss over every training sample.
``stochastic_grad`` draws ``batch_size`` samples with replacement (unbiased). At every
logging step ``test_loss`` (mean cross-entropy, without l2) and ``test_accuracy`` of the
held-out samples are logged too. The network is non-convex: f*, L and mu are unknown
(give ``algorithm.stepsize`` a number).

Vector layout: per layer, its weight matrix W (in x out, row-major) then its bias (out);
``ProblemSet.layers`` holds each layer's size (W and b together), what a compressor's
``block_size: layer`` compresses block by block, and ``ProblemSet.layer_shapes`` each
layer as the row-major (in + 1) x out matrix [W; b] that W then b is (what powersgd
approximates). The initial weights are seeded by the config's
seed: He (relu) or Glorot (tanh) normal, biases zero.
"""

from __future__ import annotations

import numpy as np

from .. import data as _data
from ..validation import Choice, Int, List, Real
from ..registry import register
from .builders import Problem
from .objectives import Objective
from .problemset import ProblemSet
from .regulariser import L1Reg

N_CLASSES = 10


def n_features(data_cfg) -> int:
    """The input size of a network on ``data.source`` (digits 64 pixels, mnist1d 40 values)."""
    return int(np.prod(_data.BUNDLED[data_cfg["source"]][1]))


def layer_shapes(n_in: int, hidden, n_out: int) -> list:
    """[(in, out)] of every layer."""
    widths = [n_in, *hidden, n_out]
    return list(zip(widths[:-1], widths[1:]))


def layer_sizes(shapes) -> list:
    return [i * o + o for i, o in shapes]


def unpack(x, shapes) -> list:
    """[(W, b)] views into the flat vector ``x``: per (in, out) shape, W (in x out, row-major)
    then b (out)."""
    out, at = [], 0
    for i, o in shapes:
        out.append((x[at:at + i * o].reshape(i, o), x[at + i * o:at + i * o + o]))
        at += i * o + o
    return out


def activate(z, activation: str):
    return np.maximum(z, 0.0) if activation == "relu" else np.tanh(z)


def activate_grad(z, h, activation: str):
    """The activation's derivative at z (h = activate(z) already computed)."""
    return (z > 0).astype(z.dtype) if activation == "relu" else 1.0 - h * h


def log_softmax(logits):
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def cross_entropy(logits, y) -> float:
    """Mean cross-entropy of the rows of ``logits`` against the labels ``y``."""
    return float(-log_softmax(logits)[np.arange(y.size), y].mean())


def cross_entropy_grad(logits, y):
    """(mean cross-entropy, its gradient with respect to ``logits``)."""
    logp = log_softmax(logits)
    rows = np.arange(y.size)
    loss = float(-logp[rows, y].mean())
    dz = np.exp(logp)
    dz[rows, y] -= 1.0
    dz /= y.size
    return loss, dz


def init_weights(W, activation: str, rng) -> None:
    """He (relu) or Glorot (tanh) normal weights into the fan_in x fan_out matrix ``W``."""
    fan_in, fan_out = W.shape
    var = 2.0 / fan_in if activation == "relu" else 2.0 / (fan_in + fan_out)
    W[:] = rng.standard_normal(W.shape) * np.sqrt(var)


class Network:
    """The network's arithmetic on a flat parameter vector: loss, gradient, predictions."""

    def __init__(self, shapes, activation: str):
        self.shapes = shapes
        self.activation = activation
        self.d = sum(layer_sizes(shapes))

    def unpack(self, x):
        """[(W, b)] views into the flat vector ``x``."""
        return unpack(x, self.shapes)

    def forward(self, x, X):
        """(logits, [(z, h)] of the hidden layers)."""
        hidden, h = [], X
        params = self.unpack(x)
        for W, b in params[:-1]:
            z = h @ W + b
            h = activate(z, self.activation)
            hidden.append((z, h))
        W, b = params[-1]
        return h @ W + b, hidden

    def loss(self, x, X, y) -> float:
        """Mean cross-entropy of (X, y)."""
        logits, _ = self.forward(x, X)
        return cross_entropy(logits, y)

    def backward(self, x, X, hidden, dz, grad, input_grad=False):
        """Fill ``grad`` (flat, this network's d) from ``dz`` = dloss/dlogits of ``forward``'s
        pass on X; with ``input_grad`` return dloss/dX too (for a layer below the network)."""
        params, gparams = self.unpack(x), self.unpack(grad)
        inputs = [X] + [h for _, h in hidden]
        for layer in range(len(params) - 1, -1, -1):
            W, _ = params[layer]
            gW, gb = gparams[layer]
            np.matmul(inputs[layer].T, dz, out=gW)
            gb[:] = dz.sum(axis=0)
            if layer:
                z, h = hidden[layer - 1]
                dz = (dz @ W.T) * activate_grad(z, h, self.activation)
            elif input_grad:
                return dz @ W.T
        return None

    def loss_and_grad(self, x, X, y):
        """(mean cross-entropy, its gradient as a flat vector)."""
        logits, hidden = self.forward(x, X)
        loss, dz = cross_entropy_grad(logits, y)
        grad = np.empty(self.d)
        self.backward(x, X, hidden, dz, grad)
        return loss, grad

    def accuracy(self, x, X, y) -> float:
        logits, _ = self.forward(x, X)
        return float(np.mean(np.argmax(logits, axis=1) == y))

    def initial_point(self, rng) -> np.ndarray:
        x = np.zeros(self.d)
        for W, _ in self.unpack(x):
            init_weights(W, self.activation, rng)
        return x


class MLPObjective(Objective):
    """Mean cross-entropy over (X, y) plus (l2/2)||x||^2."""

    def __init__(self, net: Network, X, y, l2: float):
        self.net, self.X, self.y, self.l2 = net, X, y, float(l2)
        self.d = net.d
        self.n_samples = y.size

    def value_and_grad(self, x):
        loss, grad = self.net.loss_and_grad(x, self.X, self.y)
        if self.l2:
            loss += 0.5 * self.l2 * float(np.dot(x, x))
            grad += self.l2 * x
        return loss, grad

    def stochastic_grad(self, x, batch_size, rng):
        """Minibatch gradient: ``batch_size`` samples drawn with replacement (unbiased)."""
        idx = rng.integers(0, self.n_samples, size=int(batch_size))
        _, grad = self.net.loss_and_grad(x, self.X[idx], self.y[idx])
        if self.l2:
            grad += self.l2 * x
        return grad


def split(m: int, test_fraction: float, seed: int):
    """(train rows, test rows): a seeded permutation, each part sorted."""
    order = _data._rng(seed, _data.STREAM_SPLIT).permutation(m)
    n_test = max(1, int(round(test_fraction * m)))
    return np.sort(order[n_test:]), np.sort(order[:n_test])


@register("problem")
class MLP(Problem):
    """A fully connected softmax network on digits or MNIST-1D (NumPy; f* unknown)."""

    name = "mlp"
    uses_data = True
    sources = ("digits", "mnist1d")
    params = {
        "hidden": List(Int(1, 4096), 0, 8, default=[64],
                       doc="widths of the hidden layers ([] is multinomial logistic regression)"),
        "activation": Choice("relu", "tanh", default="relu", doc="of the hidden layers"),
        "l2": Real(0, 1e3, default=1e-4, doc="(l2/2)||x||^2 on every parameter"),
        "test_fraction": Real(0, 1, closed="neither", default=0.2,
                              doc="held-out share of the samples (a seeded split)"),
    }

    @classmethod
    def layers(cls, params, data_cfg):
        return layer_sizes(layer_shapes(n_features(data_cfg), params["hidden"], N_CLASSES))

    @classmethod
    def dimension(cls, params, data_cfg):
        return sum(cls.layers(params, data_cfg))

    @classmethod
    def build(cls, params, data_cfg, seed, n_workers, workers=None):
        X, y = _data.bundled(data_cfg["source"])
        shapes = layer_shapes(X.shape[1], params["hidden"], N_CLASSES)
        net = Network(shapes, params["activation"])
        return network_problem(cls.name, params, data_cfg, seed, n_workers, net, X, y,
                               layers=layer_sizes(shapes),
                               # W (in x out, row-major) then b (out) is the (in + 1) x out
                               # matrix [W; b]
                               layer_shapes=[[i + 1, o] for i, o in shapes])


def network_problem(name, params, data_cfg, seed, n_workers, net, X, y, layers, layer_shapes):
    """The ProblemSet of a network ``net`` (loss_and_grad, loss, accuracy, initial_point, d)
    on the samples (X, y): the seeded split, the partition, the l2 term and the test metrics."""
    train, test = split(y.size, params["test_fraction"], seed)
    Xtr, ytr, Xte, yte = X[train], y[train], X[test], y[test]
    shards = _data.partition(ytr.size, n_workers, data_cfg["partition"], seed)
    l2 = params["l2"]

    def evaluate(x):
        with np.errstate(over="ignore", invalid="ignore"):
            return {"test_loss": net.loss(x, Xte, yte),
                    "test_accuracy": net.accuracy(x, Xte, yte)}

    return ProblemSet(
        name=name, params=params, d=net.d,
        weights=np.array([s.size for s in shards], dtype=np.float64) / ytr.size,
        n_samples=int(ytr.size),
        local_factory=lambda i: MLPObjective(net, Xtr[shards[i]], ytr[shards[i]], l2),
        global_factory=lambda: MLPObjective(net, Xtr, ytr, l2), reg=L1Reg(0.0),
        x0=net.initial_point(_data._rng(seed, _data.STREAM_INIT)),
        info={"dataset": data_cfg["source"], "n_samples": int(ytr.size),
              "n_test": int(yte.size)},
        kind=name, evaluator=evaluate, layers=layers, layer_shapes=layer_shapes)
