"""A torch.nn.Module as a ``python`` problem worker: ``TorchWorker`` (extra ``.[torch]``).

A factory (see :mod:`psgd.problems.plugin`) returns one ``TorchWorker`` per worker::

    def make(params, data, seed, n_workers):
        torch.manual_seed(seed)                       # the same initial model on every rank
        return [TorchWorker(Net(), torch.nn.functional.cross_entropy, loader_j,
                            evaluate=test_metrics) for loader_j in loaders]

Flat vectors without further copies: the module's parameters are re-pointed into one flat
tensor (``params_flat``) and their ``.grad`` into another (``grads_flat``), each allocated
once. A model from the server is copied into ``params_flat`` in one pass (converted to the
module's dtype on the way), autograd accumulates straight into ``grads_flat``, and the
gradient is handed to psgd as a NumPy view of it (psgd converts it to float64 for the
algorithm). No ``parameters_to_vector`` round trips.

``value_and_grad(x)``: the mean loss over the worker's whole loader (every batch, weighted by
its size) and its gradient. ``stochastic_grad(x, batch_size, rng)``: the next batch of the
loader (its own shuffling; ``algorithm.batch_size`` must equal the loader's batch size so
that epochs are counted right). ``evaluate(module) -> {name: float}``, if given, adds metrics.
"""

from __future__ import annotations

import numpy as np

try:
    import torch
except ImportError as exc:  # pragma: no cover - the extra is not installed
    raise ImportError("psgd.torch_adapter needs torch: pip install '.[torch]' (a pinned CPU "
                      "build)") from exc


class TorchWorker:
    """One worker's module, loss and data loader behind psgd's flat-vector interface."""

    def __init__(self, module, loss_fn, loader, *, weight=None, evaluate=None):
        self.module, self.loss_fn, self.loader = module, loss_fn, loader
        params = [p for p in module.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the module has no trainable parameters")
        dtypes = {p.dtype for p in params}
        if len(dtypes) != 1 or next(iter(dtypes)) not in (torch.float32, torch.float64):
            raise ValueError(f"parameters of dtype {sorted(map(str, dtypes))}; allowed: all "
                             "float32 or all float64")
        tdtype = params[0].dtype
        self.d = sum(p.numel() for p in params)
        self.params_flat = torch.empty(self.d, dtype=tdtype)
        self.grads_flat = torch.zeros(self.d, dtype=tdtype)
        at = 0
        with torch.no_grad():
            for p in params:  # each parameter and its gradient become views of the buffers
                n = p.numel()
                self.params_flat[at:at + n].copy_(p.reshape(-1))
                p.data = self.params_flat[at:at + n].view_as(p)
                p.grad = self.grads_flat[at:at + n].view_as(p)
                at += n
        self._params = params
        self.x0 = self.params_flat.double().numpy().copy()  # psgd takes worker 0's
        self.n_samples = len(loader.dataset) if hasattr(loader, "dataset") else None
        if weight is not None:
            self.weight = weight
        self._evaluate = evaluate
        self._batches = None

    # -- the buffers ---------------------------------------------------------------------

    def _load(self, x):
        """The model x (float64 NumPy) into the parameters: one pass, no temporary."""
        self.params_flat.copy_(torch.from_numpy(np.ascontiguousarray(x)))

    def _zero_grad(self):
        self.grads_flat.zero_()
        for p in self._params:  # autograd accumulates in place only into an existing .grad
            if p.grad is None or p.grad.data_ptr() != self._view_ptr(p):
                raise RuntimeError("a parameter's .grad no longer points into the flat "
                                   "gradient buffer (was it set to None or replaced?)")

    def _view_ptr(self, p):
        return p.data.data_ptr() - self.params_flat.data_ptr() + self.grads_flat.data_ptr()

    def _grad(self) -> np.ndarray:
        return self.grads_flat.numpy()  # a view: psgd reads it before the next call

    def _backward(self, inputs, targets, scale=1.0) -> float:
        loss = self.loss_fn(self.module(inputs), targets)
        (loss * scale).backward()
        return float(loss.detach())

    # -- the psgd interface ----------------------------------------------------------------

    def value_and_grad(self, x):
        self._load(x)
        self._zero_grad()
        self.module.train()
        batches = list(self.loader)  # one pass (a shuffling loader gives other batches next)
        total = sum(len(t) for _, t in batches)
        value = 0.0
        for inputs, targets in batches:
            share = len(targets) / total
            value += share * self._backward(inputs, targets, share)
        return value, self._grad()

    def stochastic_grad(self, x, batch_size, rng):
        loader_batch = getattr(self.loader, "batch_size", None)
        if loader_batch is not None and loader_batch != batch_size:
            raise ValueError(f"algorithm.batch_size is {batch_size} but the worker's loader "
                             f"draws batches of {loader_batch}; make them equal")
        self._load(x)
        self._zero_grad()
        self.module.train()
        try:
            inputs, targets = next(self._batches)
        except (StopIteration, TypeError):  # a new pass over the loader
            self._batches = iter(self.loader)
            inputs, targets = next(self._batches)
        self._backward(inputs, targets)
        return self._grad()

    def evaluate(self, x):
        if self._evaluate is None:
            return {}
        self._load(x)
        self.module.eval()
        with torch.no_grad():
            return {k: float(v) for k, v in self._evaluate(self.module).items()}
