"""The torch adapter (extra ``.[torch]``): flat buffers without copies, gradients equal to
torch's own, and a torch model trained end to end under mpiexec by the same server."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (pip install '.[torch]': "
                                            "the pinned CPU wheel); the adapter is untested here")
pytest.importorskip("sklearn", reason="the example's data come from scikit-learn")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "examples"))


@pytest.fixture
def workers():
    import torch_digits

    return torch_digits.make({"hidden": 8, "batch_size": 16}, {}, 0, 3)


def test_parameters_and_gradients_live_in_one_flat_buffer_each(workers):
    w = workers[1]
    x = w.x0 + 0.01 * np.random.default_rng(0).standard_normal(w.d)
    value, g = w.value_and_grad(x)
    assert g.shape == (w.d,) and np.shares_memory(g, w.grads_flat.numpy())
    for p in w.module.parameters():  # views into the buffers, still after backward
        assert p.data_ptr() - w.params_flat.data_ptr() == p.grad.data_ptr() - \
            w.grads_flat.data_ptr()
        assert w.params_flat.data_ptr() <= p.data_ptr() < w.params_flat.data_ptr() + 4 * w.d
    assert np.allclose(w.params_flat.numpy(), x, atol=1e-7)
    # the same gradient as torch computes on an ordinary copy of the module
    ref = __import__("copy").deepcopy(w.module)
    batches = list(w.loader)  # one pass: a shuffling loader orders each pass differently
    X, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    ref.zero_grad()
    loss = torch.nn.functional.cross_entropy(ref(X), y)
    loss.backward()
    want = torch.cat([p.grad.reshape(-1) for p in ref.parameters()]).numpy()
    assert value == pytest.approx(float(loss.detach()), rel=1e-5)
    assert np.allclose(g, want, rtol=1e-4, atol=1e-6)
    sg = w.stochastic_grad(x, 16, None)
    assert np.shares_memory(sg, w.grads_flat.numpy()) and not np.allclose(sg, want)
    with pytest.raises(ValueError, match="algorithm.batch_size is 8 but"):
        w.stochastic_grad(x, 8, None)


@pytest.mark.mpi
def test_torch_model_trains_under_mpiexec(run_psgd):
    res = run_psgd(3, REPO / "examples" / "torch_digits.yaml", timeout=240,
                   env={"PYTHONPATH": str(REPO / "examples")})
    assert res.returncode == 0, res.stderr
    first, last = res.metrics[0], res.metrics[-1]
    assert first["test_accuracy"] < 0.3 and last["test_accuracy"] > 0.85, res.metrics
    assert last["loss"] < first["loss"] / 3
