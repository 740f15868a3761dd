"""``cnn``: a small convolutional network with softmax cross-entropy, in NumPy, on real data.

Config::

    problem: {name: cnn, channels: [8], kernel: 3, pool: 2, hidden: [32], activation: relu,
              l2: 1e-4, test_fraction: 0.2}
    data:    {source: digits}          # or {source: mnist1d}

Params:

* ``channels``: output channels of each convolutional layer (1 to 3 layers; default [8]);
* ``kernel``: the kernel's side (default 3): 3x3 on the digits images (8x8, one channel), a
  length-3 1-D kernel on the MNIST-1D signals (length 40, one channel); stride 1, no padding
  ("valid"), so each layer shrinks every spatial side by ``kernel - 1``;
* ``pool``: the side of the non-overlapping average pooling after each convolution (default 2;
  1 = no pooling); a side that ``pool`` does not divide drops its last rows;
* ``hidden``, ``activation``, ``l2``, ``test_fraction``: as for ``mlp`` (the dense layers
  after the last convolution, the activation of every layer but the last, the (l2/2)||x||^2
  term, the held-out share of a seeded split).

Model: per convolutional layer conv -> activation -> average pooling, then the features
flattened into the ``mlp`` network ``[features, *hidden, 10]`` (:class:`.mlp.Network`, which
also gives the softmax cross-entropy, the split, the init and the objective). The loss, the
minibatch ``stochastic_grad`` (``batch_size`` samples with replacement), the logged
``test_loss``/``test_accuracy`` and the unknown f*, L, mu are those of ``mlp``.

Vector layout: per convolutional layer its kernel matrix W (c_in * kernel^dims x c_out,
row-major; a row is (input channel, kernel offsets) in that order) then its bias (c_out), then
the dense layers as in ``mlp``. ``ProblemSet.layers`` holds each layer's size and
``ProblemSet.layer_shapes`` each layer as the (rows + 1) x c_out matrix [W; b] (what powersgd
approximates), so ``block_size: layer`` and powersgd apply as they do to ``mlp``. The initial
weights are seeded by the config's seed (He for relu, Glorot for tanh, with fan-in
c_in * kernel^dims), biases zero.

The convolution is an im2col: ``sliding_window_view`` gathers every kernel-sized patch, so a
layer is one matrix product; the backward pass scatters the patch gradients back with one
slice-add per kernel offset. Activations are kept channels-last, (n, *spatial, channels).
"""

from __future__ import annotations

import itertools

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .. import data as _data
from ..errors import ConfigError
from ..registry import register
from ..validation import Int, List, shown
from .builders import Problem
from .mlp import (MLP, N_CLASSES, Network, activate, activate_grad, cross_entropy,
                  cross_entropy_grad, init_weights, layer_shapes, layer_sizes, network_problem,
                  unpack)


def geometry(spatial, channels, kernel: int, pool: int):
    """[(spatial in, c_in, spatial after conv, spatial after pool, c_out)] of each conv layer,
    and the flattened feature count; ConfigError (naming the key) when a side runs out."""
    out, c_in = [], 1
    for c_out in channels:
        if min(spatial) < kernel:
            raise ConfigError(f"problem.kernel: got {kernel}; allowed: at most {min(spatial)} "
                              f"(a convolutional layer's input is {'x'.join(map(str, spatial))};"
                              " use fewer convolutional layers or a smaller kernel)")
        conv = tuple(s - kernel + 1 for s in spatial)
        if min(conv) < pool:
            raise ConfigError(f"problem.pool: got {pool}; allowed: at most {min(conv)} (the "
                              f"convolution's output is {'x'.join(map(str, conv))})")
        pooled = tuple(s // pool for s in conv)
        out.append((spatial, c_in, conv, pooled, c_out))
        spatial, c_in = pooled, c_out
    return out, int(np.prod(spatial)) * c_in


class ConvNet:
    """The network's arithmetic on a flat vector: conv layers, then a dense :class:`Network`.

    Samples come in flat, (n, prod(spatial)), and are viewed as (n, *spatial, 1).
    """

    def __init__(self, spatial, channels, kernel, pool, hidden, activation):
        self.spatial, self.kernel, self.pool = tuple(spatial), int(kernel), int(pool)
        self.activation = activation
        self.geo, n_feat = geometry(self.spatial, channels, self.kernel, self.pool)
        self.dims = len(self.spatial)
        kd = self.kernel ** self.dims
        self.conv_shapes = [(c_in * kd, c_out) for _, c_in, _, _, c_out in self.geo]
        self.dense = Network(layer_shapes(n_feat, hidden, N_CLASSES), activation)
        self.conv_d = sum(layer_sizes(self.conv_shapes))
        self.d = self.conv_d + self.dense.d

    @property
    def shapes(self):
        """(in, out) of every layer, conv then dense, as the vector holds them."""
        return self.conv_shapes + list(self.dense.shapes)

    def unpack_conv(self, x):
        """[(W, b)] of the conv layers: views into the front of ``x``."""
        return unpack(x, self.conv_shapes)

    def _patches(self, h):
        """(n, *spatial, c) -> the im2col matrix (n * positions, c * kernel^dims)."""
        axes = tuple(range(1, 1 + self.dims))
        win = sliding_window_view(h, (self.kernel,) * self.dims, axis=axes)
        # win: (n, *conv, c, *k): a row is one output position, ordered (channel, offsets)
        return win.reshape(-1, win.shape[1 + self.dims] * self.kernel ** self.dims)

    def _pool(self, a, pooled):
        """Average pooling of (n, *conv, c) to (n, *pooled, c) (trailing rows dropped)."""
        p = self.pool
        if p == 1:
            return a
        a = a[(slice(None), *(slice(0, s * p) for s in pooled))]
        shape = [a.shape[0]]
        for s in pooled:
            shape += [s, p]
        a = a.reshape(*shape, a.shape[-1])
        return a.mean(axis=tuple(2 + 2 * k for k in range(self.dims)))

    def _unpool(self, g, conv, pooled):
        """The gradient of :meth:`_pool`: (n, *pooled, c) -> (n, *conv, c)."""
        p = self.pool
        if p == 1:
            return g
        up = g / p ** self.dims
        for k in range(self.dims):
            up = np.repeat(up, p, axis=1 + k)
        full = np.zeros((g.shape[0], *conv, g.shape[-1]))
        full[(slice(None), *(slice(0, s * p) for s in pooled))] = up
        return full

    def forward(self, x, X):
        """(logits, the conv layers' saved values, the dense features, the dense hidden)."""
        h = X.reshape(X.shape[0], *self.spatial, 1)
        saved = []
        for (W, b), (_, _, conv, pooled, c_out) in zip(self.unpack_conv(x), self.geo):
            cols = self._patches(h)
            z = (cols @ W + b).reshape(h.shape[0], *conv, c_out)
            a = activate(z, self.activation)
            saved.append((cols, z, a))
            h = self._pool(a, pooled)
        feats = h.reshape(h.shape[0], -1)
        logits, hidden = self.dense.forward(x[self.conv_d:], feats)
        return logits, saved, feats, hidden

    def loss(self, x, X, y) -> float:
        return cross_entropy(self.forward(x, X)[0], y)

    def accuracy(self, x, X, y) -> float:
        return float(np.mean(np.argmax(self.forward(x, X)[0], axis=1) == y))

    def loss_and_grad(self, x, X, y):
        logits, saved, feats, hidden = self.forward(x, X)
        loss, dz = cross_entropy_grad(logits, y)
        grad = np.empty(self.d)
        dfeat = self.dense.backward(x[self.conv_d:], feats, hidden, dz, grad[self.conv_d:],
                                    input_grad=True)
        params = self.unpack_conv(x)
        gparams = self.unpack_conv(grad)
        n = X.shape[0]
        dh = dfeat.reshape(n, *self.geo[-1][3], self.geo[-1][4])
        for layer in range(len(params) - 1, -1, -1):
            W, _ = params[layer]
            gW, gb = gparams[layer]
            spatial, c_in, conv, pooled, c_out = self.geo[layer]
            cols, z, a = saved[layer]
            dz = (self._unpool(dh, conv, pooled) * activate_grad(z, a, self.activation))
            dz = dz.reshape(-1, c_out)
            np.matmul(cols.T, dz, out=gW)
            gb[:] = dz.sum(axis=0)
            if layer:
                dh = self._col2im(dz @ W.T, n, spatial, c_in, conv)
        return loss, grad

    def _col2im(self, dcols, n, spatial, c_in, conv):
        """Scatter patch gradients (n * positions, c * kernel^dims) back onto the input."""
        k = self.kernel
        dcols = dcols.reshape(n, *conv, c_in, *(k,) * self.dims)
        dh = np.zeros((n, *spatial, c_in))
        for off in itertools.product(range(k), repeat=self.dims):
            where = (slice(None), *(slice(o, o + s) for o, s in zip(off, conv)))
            dh[where] += dcols[(Ellipsis, *off)]
        return dh

    def initial_point(self, rng) -> np.ndarray:
        x = np.zeros(self.d)
        for W, _ in self.unpack_conv(x):
            init_weights(W, self.activation, rng)
        x[self.conv_d:] = self.dense.initial_point(rng)
        return x


@register("problem")
class CNN(Problem):
    """A small convolutional softmax network on digits or MNIST-1D (NumPy; f* unknown)."""

    name = "cnn"
    uses_data = True
    sources = ("digits", "mnist1d")
    params = {
        "channels": List(Int(1, 256), 1, 3, default=[8],
                         doc="output channels of each convolutional layer"),
        "kernel": Int(1, 40, default=3,
                      doc="kernel side (3x3 on digits' 8x8 images, length 3 on mnist1d's 40)"),
        "pool": Int(1, 8, default=2,
                    doc="side of the average pooling after each convolution (1: none)"),
        **MLP.params,
    }
    params["hidden"] = List(Int(1, 4096), 0, 8, default=[32],
                            doc="widths of the dense hidden layers after the convolutions")

    @staticmethod
    def _net(params, data_cfg) -> ConvNet:
        spatial = _data.BUNDLED[data_cfg["source"]][1]
        return ConvNet(spatial, params["channels"], params["kernel"], params["pool"],
                       params["hidden"], params["activation"])

    @classmethod
    def check_config(cls, params, data_cfg):
        super().check_config(params, data_cfg)
        cls._net(params, data_cfg)  # the geometry: a kernel or pool larger than its input

    @classmethod
    def layers(cls, params, data_cfg):
        return layer_sizes(cls._net(params, data_cfg).shapes)

    @classmethod
    def dimension(cls, params, data_cfg):
        return sum(cls.layers(params, data_cfg))

    @classmethod
    def build(cls, params, data_cfg, seed, n_workers, workers=None):
        net = cls._net(params, data_cfg)
        X, y = _data.bundled(data_cfg["source"])
        if X.shape[1] != int(np.prod(net.spatial)):  # pragma: no cover - BUNDLED is the contract
            raise ConfigError(f"data.source: got {shown(data_cfg['source'])}; its samples do not "
                              f"have the shape {net.spatial}")
        return network_problem(cls.name, params, data_cfg, seed, n_workers, net, X, y,
                               layers=layer_sizes(net.shapes),
                               layer_shapes=[[i + 1, o] for i, o in net.shapes])
