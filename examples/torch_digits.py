"""A torch model as a psgd problem: a small network on scikit-learn's digits, one
``psgd.torch_adapter.TorchWorker`` per worker (needs ``pip install '.[torch]'``).

    PYTHONPATH=examples mpiexec -n 3 psgd run examples/torch_digits.yaml
"""

import copy

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset

from psgd.torch_adapter import TorchWorker


def make(params, data, seed, n_workers):
    torch.manual_seed(seed)  # the same initial model on every rank (psgd uses worker 0's)
    torch.set_num_threads(1)  # one MPI rank per core
    digits = load_digits()
    X = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target, dtype=torch.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    test, train = order[:359], order[359:]
    X_test, y_test = X[test], y[test]

    def test_metrics(model):
        logits = model(X_test)
        return {"test_accuracy": (logits.argmax(1) == y_test).float().mean(),
                "test_loss": torch.nn.functional.cross_entropy(logits, y_test)}

    hidden = params.get("hidden", 32)
    model = torch.nn.Sequential(torch.nn.Linear(64, hidden), torch.nn.ReLU(),
                                torch.nn.Linear(hidden, 10))
    workers = []
    for j, rows in enumerate(np.array_split(train, n_workers)):
        shard = TensorDataset(X[rows], y[rows])
        loader = DataLoader(shard, batch_size=params.get("batch_size", 32), shuffle=True,
                            generator=torch.Generator().manual_seed(seed * 1000 + j))
        # each worker its own replica (every rank builds all of them; rank 0 evaluates them)
        workers.append(TorchWorker(copy.deepcopy(model), torch.nn.functional.cross_entropy, loader,
                                   weight=len(rows) / len(train), evaluate=test_metrics))
    return workers
