"""The ``cnn`` problem (a NumPy convolutional network) on digits and MNIST-1D, and the ``mlp``
on MNIST-1D: gradients against finite differences, config rules, real mpiexec runs."""

import numpy as np
import pytest

from psgd import config, data, problems
from psgd.errors import ConfigError

sklearn = pytest.importorskip("sklearn", reason="data.source digits needs scikit-learn "
                                                "(pip install '.[test]' installs it)")

try:
    import mnist1d  # noqa: F401
    HAVE_MNIST1D = True
except ImportError:
    HAVE_MNIST1D = False
needs_mnist1d = pytest.mark.skipif(not HAVE_MNIST1D, reason="data.source mnist1d needs the "
                                   "mnist1d package (pip install '.[test]' or '.[mnist1d]')")


def build(problem, source, n=3, seed=0):
    cfg = config.validate({"problem": problem, "data": {"source": source},
                           "algorithm": {"stepsize": 0.1}})
    return problems.make_problem(cfg["problem"], cfg["data"], seed, n)


@pytest.fixture
def check_gradient(network_gradient_check):
    """The shared finite-difference check (4 directions), and [W; b] of each layer_shapes row
    has the layer's size."""
    def check(ps, rng):
        assert [m * n - n for m, n in ps.layer_shapes] == [s - n for s, (_, n) in
                                                           zip(ps.layers, ps.layer_shapes)]
        return network_gradient_check(ps, rng, directions=4)

    return check


CASES = [({"channels": [4], "kernel": 3, "pool": 2, "hidden": [6], "activation": "tanh"}),
         ({"channels": [3, 2], "kernel": 2, "pool": 1, "hidden": [], "activation": "relu"})]


@pytest.mark.parametrize("params", CASES)
def test_cnn_gradient_matches_finite_differences_on_images(params, check_gradient):
    ps = build({"name": "cnn", "l2": 1e-2, **params}, "digits")
    rng = np.random.default_rng(1)
    f, x, grad = check_gradient(ps, rng)
    # the minibatch gradient is unbiased: its mean over many draws approaches the full one
    g = np.mean([f.stochastic_grad(x, 64, rng) for _ in range(300)], axis=0)
    assert np.linalg.norm(g - grad) < 0.1 * np.linalg.norm(grad)


@needs_mnist1d
@pytest.mark.parametrize("params", CASES)
def test_cnn_gradient_matches_finite_differences_on_signals(params, check_gradient):
    ps = build({"name": "cnn", "l2": 1e-2, **{**params, "kernel": 5}}, "mnist1d")
    check_gradient(ps, np.random.default_rng(2))


def test_cnn_layers_split_and_metrics():
    problem = {"name": "cnn", "channels": [8], "kernel": 3, "hidden": [32]}
    ps = build(problem, "digits", n=4, seed=3)
    # conv: 3x3x1 -> 8 ([W; b] is 10 x 8); 6x6 pooled to 3x3, so 72 features -> 32 -> 10
    assert ps.layer_shapes == [[10, 8], [73, 32], [33, 10]]
    assert ps.layers == [80, 73 * 32, 33 * 10]
    raw = {"problem": problem, "data": {"source": "digits"}}
    assert problems.layers(config.validate({**raw, "algorithm": {"stepsize": 0.1}})["problem"],
                           data.check_data_config(raw["data"])) == ps.layers
    assert "cnn" in problems.with_layers()
    assert ps.describe()["n_samples"] == 1438 and ps.describe()["n_test"] == 359
    m = ps.evaluate(ps.initial_point())
    assert set(m) >= {"test_loss", "test_accuracy"} and m["test_accuracy"] < 0.3
    # seeded: the same seed gives the same start, another seed another one
    assert np.array_equal(ps.initial_point(), build(problem, "digits", 4, 3).initial_point())
    assert not np.array_equal(ps.initial_point(), build(problem, "digits", 4, 4).initial_point())


@pytest.mark.parametrize("comp", [
    {"name": "random_dithering", "levels": 1, "norm": "2", "block_size": "layer"},
    {"name": "powersgd", "rank": 2}])
def test_cnn_layers_feed_the_layer_compressors(comp):
    """block_size: layer cuts the cnn's vector at its layers; powersgd gets its layer matrices
    (what a run does, psgd.runtime), so a gradient goes through either and keeps its size."""
    from psgd import runtime
    from psgd.compressors import get_compressor

    ps = build({"name": "cnn"}, "digits", n=2)
    raw = config.validate({"problem": {"name": "cnn"}, "data": {"source": "digits"},
                           "algorithm": {"name": "ef", "stepsize": 0.1}, "compressor": comp})
    c = get_compressor(runtime.with_layer_shapes(raw["compressor"], ps), ps.layers)
    _, grad = ps.local(0).value_and_grad(ps.initial_point())
    out = c.decode(c.encode(grad, np.random.default_rng(0)), d=ps.d)
    assert out.shape == (ps.d,) and np.all(np.isfinite(out)) and np.any(out)


@pytest.mark.parametrize("change,message", [
    ({"channels": []}, "problem.channels: got []"),
    ({"channels": [0]}, "problem.channels: got [0]"),
    ({"channels": 8}, "problem.channels: got 8; allowed: a list"),
    ({"kernel": 9}, "problem.kernel: got 9; allowed: at most 8"),
    ({"channels": [4, 4, 4], "kernel": 4, "pool": 1}, "problem.kernel: got 4; allowed: at most 2"),
    ({"pool": 7}, "problem.pool: got 7; allowed: at most 6"),
    ({"pool": 0}, "problem.pool: got 0"),
    ({"activation": "sigmoid"}, "problem.activation: got 'sigmoid'"),
])
def test_cnn_config_errors_are_one_line(change, message):
    with pytest.raises(ConfigError) as err:
        config.validate({"problem": {"name": "cnn", **change}, "data": {"source": "digits"},
                         "algorithm": {"stepsize": 0.1}})
    text = str(err.value)
    assert "\n" not in text and text.startswith(message), text


def test_cnn_refuses_data_without_images():
    with pytest.raises(ConfigError, match=r"^data.source: got 'synthetic'; allowed: digits, "
                                          r"mnist1d \(for problem cnn\)$"):
        config.validate({"problem": {"name": "cnn"}, "algorithm": {"stepsize": 0.1}})


# -- MNIST-1D ---------------------------------------------------------------------------------


@needs_mnist1d
def test_mnist1d_is_generated_seeded_and_leaves_global_rngs_alone():
    import random

    np.random.seed(7)
    random.seed(7)
    X, y = data.mnist1d()
    assert X.shape == (5000, 40) and X.dtype == np.float64 and y.dtype == np.int64
    assert sorted(np.unique(y)) == list(range(10)) and not X.flags.writeable
    assert (np.random.random(), random.random()) == (np.random.RandomState(7).random_sample(),
                                                     random.Random(7).random())
    # the published set: the package's generator at its default seed (no download)
    from mnist1d.data import get_dataset_args, make_dataset

    ref = make_dataset(get_dataset_args())
    assert np.array_equal(X[:4000], ref["x"]) and np.array_equal(y[4000:], ref["y_test"])


@needs_mnist1d
def test_mlp_takes_its_input_size_from_the_data_source(check_gradient):
    ps = build({"name": "mlp", "hidden": [16]}, "mnist1d")
    assert ps.layer_shapes == [[41, 16], [17, 10]] and ps.describe()["n_test"] == 1000
    check_gradient(ps, np.random.default_rng(3))
    with pytest.raises(ConfigError, match=r"^data.n_features: got 40; allowed: null \(data.source "
                                          r"mnist1d is a fixed data set: 5000 samples, 40 "
                                          r"features\)$"):
        data.check_data_config({"source": "mnist1d", "n_features": 40})


def test_mnist1d_without_the_package_is_one_line(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "mnist1d", None)  # an import of it raises ImportError
    monkeypatch.setitem(sys.modules, "mnist1d.data", None)
    data.mnist1d.cache_clear()
    try:
        with pytest.raises(ConfigError, match=r"^data.source: got 'mnist1d', which needs the "
                                              r"mnist1d package \(not installed\); allowed: pip "
                                              r"install mnist1d, or another data.source$"):
            data.mnist1d()
    finally:
        data.mnist1d.cache_clear()


# -- under mpiexec ----------------------------------------------------------------------------


def cnn_cfg(iterations, **alg):
    return {"seed": 1, "problem": {"name": "cnn", "channels": [8], "kernel": 3, "hidden": [32]},
            "data": {"source": "digits"},
            "algorithm": {"name": "diana", "stepsize": 0.3, "batch_size": 32, **alg},
            "compressor": {"name": "random_dithering", "levels": 1, "norm": "2",
                           "block_size": "layer"},
            "run": {"iterations": iterations, "log_every": iterations // 2, "timeout_s": 60}}


@pytest.mark.mpi
def test_cnn_trains_under_mpiexec_with_diana_ternary_per_layer(run_psgd):
    res = run_psgd(5, cnn_cfg(400), timeout=180)
    assert res.returncode == 0, res.stderr
    first, last = res.metrics[0], res.metrics[-1]
    assert {"loss", "test_loss", "test_accuracy", "epoch"} <= set(last)
    # chance is 0.1; measured 0.930 at step 400 (seed 1; 0.933 at step 200)
    assert first["test_accuracy"] < 0.3 and last["test_accuracy"] > 0.85
    assert last["loss"] < first["loss"] / 3
    assert "cnn on d=2746" in res.stdout


@pytest.mark.mpi
@needs_mnist1d
def test_mlp_trains_on_mnist1d_under_mpiexec(run_psgd):
    cfg = {"seed": 1, "problem": {"name": "mlp", "hidden": [64]}, "data": {"source": "mnist1d"},
           "algorithm": {"name": "diana", "stepsize": 0.05, "batch_size": 32},
           "compressor": {"name": "random_dithering", "levels": 1, "norm": "2",
                          "block_size": "layer"},
           "run": {"iterations": 400, "log_every": 200, "timeout_s": 60}}
    res = run_psgd(5, cfg, timeout=180)
    assert res.returncode == 0, res.stderr
    first, last = res.metrics[0], res.metrics[-1]
    # chance is 0.1; measured 0.341 at step 400 (seed 1): MNIST-1D is hard for a dense network
    # (its authors report about 0.68 for an MLP trained to the end), the run only shows learning
    assert first["test_accuracy"] < 0.2 and last["test_accuracy"] > 0.25
    assert "dataset=mnist1d" in res.stdout


@pytest.mark.mpi
@pytest.mark.slow
@pytest.mark.full
def test_cnn_digits_config_diana_ternary_matches_sgd_at_over_30x_fewer_uplink_bits(run_psgd):
    """configs/cnn_digits.yaml (4 workers, 2000 steps = 178 epochs): DIANA with the ternary
    quantizer per layer within 1.5 points of uncompressed SGD's test accuracy at the same
    epochs (measured 0.9638 vs 0.9666), sending more than 30x fewer bits up (measured 35.6x)."""
    from pathlib import Path

    cfg = Path(__file__).resolve().parents[1] / "configs" / "cnn_digits.yaml"
    diana = run_psgd(5, cfg, timeout=300, out="diana")
    sgd = run_psgd(5, cfg, "algorithm.name=gd", "compressor={name: identity}", timeout=300,
                   out="sgd")
    assert diana.returncode == 0 and sgd.returncode == 0, diana.stderr + sgd.stderr
    d, s = diana.metrics[-1], sgd.metrics[-1]
    assert d["epoch"] == s["epoch"]
    assert d["test_accuracy"] >= s["test_accuracy"] - 0.015 and d["test_accuracy"] > 0.94
    assert diana.summary["bits_up_total"] * 30 < sgd.summary["bits_up_total"]

