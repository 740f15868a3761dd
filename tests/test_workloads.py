"""Real workloads: the python plug-in problem, entry-point plug-ins, and the NumPy network on
scikit-learn's digits (gradient, config rules, and real mpiexec runs)."""

import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pytest

from psgd import config, problems
from psgd.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

sklearn = pytest.importorskip("sklearn", reason="data.source digits needs scikit-learn "
                                                "(pip install '.[test]' installs it)")


def psgd_cli(*args, env=None, cwd=None, timeout=120):
    full = dict(os.environ)
    full.update(env or {})
    # outside the checkout by default: the installed psgd (with its kernels), not the source tree
    return subprocess.run([sys.executable, "-m", "psgd", *args], capture_output=True, text=True,
                          env=full, cwd=cwd or tempfile.gettempdir(), timeout=timeout)


def mlp_cfg(**alg):
    return {"seed": 1, "problem": {"name": "mlp", "hidden": [32], "l2": 1e-4},
            "data": {"source": "digits"},
            "algorithm": {"name": "diana", "stepsize": 0.1, "batch_size": 32, **alg},
            "compressor": {"name": "random_dithering", "levels": 1, "norm": "inf",
                           "block_size": 128},
            "run": {"iterations": 300, "log_every": 100, "timeout_s": 60}}


# -- the network ------------------------------------------------------------------------------


@pytest.mark.parametrize("hidden,activation", [([], "relu"), ([16], "relu"), ([8, 5], "tanh")])
def test_mlp_gradient_matches_finite_differences(hidden, activation, network_gradient_check):
    cfg = config.validate({"problem": {"name": "mlp", "hidden": hidden, "activation": activation,
                                       "l2": 1e-2},
                           "data": {"source": "digits"}, "algorithm": {"stepsize": 0.1}})
    ps = problems.make_problem(cfg["problem"], cfg["data"], 0, 3)
    rng = np.random.default_rng(1)
    f, x, grad = network_gradient_check(ps, rng, directions=8)
    # the minibatch gradient is unbiased: its mean over many draws approaches the full one
    g = np.mean([f.stochastic_grad(x, 64, rng) for _ in range(400)], axis=0)
    assert np.linalg.norm(g - grad) < 0.1 * np.linalg.norm(grad)


def test_mlp_split_metrics_and_unknown_constants():
    cfg = config.validate(mlp_cfg())
    ps = problems.make_problem(cfg["problem"], cfg["data"], cfg["seed"], 4)
    info = ps.describe()
    assert info["n_samples"] + info["n_test"] == 1797 and info["n_test"] == 359
    assert ps.weights.sum() == pytest.approx(1.0)
    assert problems.solve(ps) == (None, None)
    assert problems.constants(ps) == {"L": None, "L_i": None, "mu": None}
    m = ps.evaluate(ps.initial_point())
    assert set(m) == {"test_loss", "test_accuracy"} and 0 <= m["test_accuracy"] <= 1
    # the split is seeded: the same seed gives the same network and data, another does not
    again = problems.make_problem(cfg["problem"], cfg["data"], cfg["seed"], 4)
    assert np.array_equal(again.initial_point(), ps.initial_point())
    other = problems.make_problem(cfg["problem"], cfg["data"], cfg["seed"] + 1, 4)
    assert not np.array_equal(other.initial_point(), ps.initial_point())


@pytest.mark.parametrize("change,message", [
    ({"data": {"source": "synthetic"}}, "data.source: got 'synthetic'; allowed: digits"),
    ({"data": {"source": "digits", "n_samples": 10}}, "data.n_samples: got 10; allowed: null"),
    ({"problem": {"name": "mlp", "hidden": 64}}, "problem.hidden: got 64; allowed: a list"),
    ({"problem": {"name": "mlp", "hidden": [0]}}, "problem.hidden: got [0]"),
    ({"problem": {"name": "mlp", "activation": "gelu"}}, "problem.activation: got 'gelu'"),
    ({"problem": {"name": "logistic"}}, "data.source: got 'digits'; allowed: synthetic, libsvm"),
])
def test_mlp_config_errors_are_one_line(change, message):
    cfg = {**mlp_cfg(), **change}
    with pytest.raises(ConfigError) as exc:
        config.validate(cfg)
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_theory_stepsize_is_refused_where_constants_are_unknown():
    from psgd import algorithms
    from psgd.compressors import get_compressor

    cfg = config.validate({**mlp_cfg(), "algorithm": {"name": "diana", "stepsize": "theory"}})
    ps = problems.make_problem(cfg["problem"], cfg["data"], cfg["seed"], 2)
    c = problems.constants(ps)
    consts = algorithms.Constants(L=c["L"], mu=c["mu"], d=ps.d, L_i=c["L_i"])
    with pytest.raises(ConfigError, match="algorithm.stepsize: got 'theory', but this problem"):
        algorithms.build(cfg, get_compressor(cfg["compressor"]), consts, ps.weights, 0)


# -- the python plug-in -----------------------------------------------------------------------


PLUGIN = '''
import numpy as np

class Quad:
    """f_j(x) = ||x - c_j||^2 / 2, a failure injected where the test asks for one."""
    def __init__(self, c, weight, fail_after):
        self.c, self.weight, self.fail_after, self.calls = c, weight, fail_after, 0
        self.d, self.L, self.mu = c.size, 1.0, 1.0
    def value_and_grad(self, x):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise ValueError("injected failure")
        r = x - self.c
        return 0.5 * r @ r, r
    def evaluate(self, x):
        return {"dist_c": float(np.linalg.norm(x - self.c))}

def make(params, data, seed, n):
    rng = np.random.default_rng(seed)
    fail = params.get("fail_worker")
    return [Quad(rng.standard_normal(params.get("d", 6)), 1.0 + j, 
                 params.get("fail_after") if j == fail else None) for j in range(n)]

def raises(params, data, seed, n):
    raise RuntimeError("cannot open my data")

def too_few(params, data, seed, n):
    return make(params, data, seed, n)[:-1]

class Flat(Quad):
    def value_and_grad(self, x):
        return 0.0, np.zeros(self.d + 1)

def wrong_shape(params, data, seed, n):
    return [Flat(np.zeros(4), 1.0, None) for _ in range(n)]

class Nan(Quad):
    def value_and_grad(self, x):
        return float("nan"), x

def nan(params, data, seed, n):
    return [Nan(np.zeros(4), 1.0, None) for _ in range(n)]

def no_d(params, data, seed, n):
    return [object() for _ in range(n)]
'''


@pytest.fixture
def plugin_dir(tmp_path):
    (tmp_path / "plugmod.py").write_text(PLUGIN)
    return tmp_path


def plugin_cfg(factory="plugmod:make", **params):
    return {"seed": 2, "problem": {"name": "python", "factory": factory, **params},
            "algorithm": {"name": "diana", "stepsize": "theory"},
            "compressor": {"name": "random_dithering", "levels": 1, "norm": "inf"},
            "run": {"iterations": 60, "log_every": 20, "timeout_s": 30}}


@pytest.mark.parametrize("factory,message", [
    ("nomodule_xyz:make", "problem.factory: cannot import module 'nomodule_xyz'"),
    ("plugmod:absent", "module 'plugmod' has no 'absent'"),
    ("plugmod", "allowed: 'package.module:function'"),
    ("plugmod:raises", "raised RuntimeError: cannot open my data"),
    ("plugmod:too_few", "returned 2 objects; allowed: a list of 3 objects"),
    ("plugmod:wrong_shape", "gradient of shape (5,); allowed: shape (4,)"),
    ("plugmod:nan", "returned NaN or Inf"),
    ("plugmod:no_d", "worker 0's object has neither x0 nor an integer d"),
])
def test_broken_factory_is_one_line_and_exit_2_before_launch(plugin_dir, factory, message):
    import yaml

    path = plugin_dir / "cfg.yaml"
    path.write_text(yaml.safe_dump(plugin_cfg(factory)))
    proc = psgd_cli("validate", str(path), "-n", "3", env={"PYTHONPATH": str(plugin_dir)})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr


def test_plugin_keys_pass_through_and_constants_are_bounds(plugin_dir, monkeypatch):
    monkeypatch.syspath_prepend(str(plugin_dir))
    cfg = config.validate(plugin_cfg(d=3, anything={"nested": [1, 2]}))
    assert cfg["problem"] == {"name": "python", "factory": "plugmod:make", "anything":
                              {"nested": [1, 2]}, "d": 3}
    ps = problems.make_problem(cfg["problem"], cfg["data"], cfg["seed"], 3)
    assert ps.d == 3 and np.allclose(ps.weights, [1 / 6, 2 / 6, 3 / 6])
    assert problems.constants(ps) == {"L": 1.0, "L_i": [1.0, 1.0, 1.0], "mu": 1.0}
    x = np.ones(3)
    cs = [ps.local(j).obj.c for j in range(3)]
    want = sum(w * 0.5 * np.sum((x - c) ** 2) for w, c in zip(ps.weights, cs))
    assert ps.loss(x) == pytest.approx(want)  # the weighted mean of the workers' values
    assert ps.evaluate(x)["dist_c"] == pytest.approx(
        sum(w * np.linalg.norm(x - c) for w, c in zip(ps.weights, cs)))
    with pytest.raises(ConfigError, match="algorithm.batch_size: got 8, but worker 0"):
        config.check_launch(config.validate({**plugin_cfg(), "algorithm": {
            "name": "diana", "stepsize": 0.1, "batch_size": 8}}), 3)


@pytest.mark.mpi
def test_plugin_trains_under_mpiexec_and_a_late_failure_names_the_rank(plugin_dir, run_psgd):
    env = {"PYTHONPATH": str(plugin_dir)}
    res = run_psgd(4, plugin_cfg(), env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    s, last = res.summary, res.metrics[-1]
    assert s["final_subopt"] is None and s["f_star"] is None and s["L"] == 1.0
    assert last["subopt"] is None and "dist_c" in last
    # the minimiser of sum w_j ||x - c_j||^2 / 2 is the weighted mean of the centers
    sys.path.insert(0, str(plugin_dir))
    try:
        import plugmod
    finally:
        sys.path.remove(str(plugin_dir))
    objs = plugmod.make({}, {}, 2, 3)
    w = np.array([o.weight for o in objs]) / sum(o.weight for o in objs)
    x_opt = sum(wj * o.c for wj, o in zip(w, objs))
    x = np.load(res.out / "model.npy")
    assert np.linalg.norm(x - x_opt) < 1e-3 * np.linalg.norm(x_opt)
    bad = run_psgd(4, plugin_cfg(fail_worker=1, fail_after=5), env=env, timeout=120, out="bad")
    assert bad.returncode != 0
    assert "error on rank 2 (worker 1)" in bad.stderr and "injected failure" in bad.stderr, \
        bad.stderr


@pytest.mark.mpi
def test_readme_plugin_command_runs_as_written(tmp_path):
    """The README's command, copied from the README, in a copy of the repository's examples."""
    text = (REPO / "README.md").read_text()
    cmd = re.search(r"^    (PYTHONPATH=examples mpiexec .*my_problem\.yaml)$", text, re.M)
    assert cmd, "README lost the plug-in command"
    shutil.copytree(REPO / "examples", tmp_path / "examples")
    from psgd import mpiexec

    env = dict(os.environ)
    # `mpiexec` and `psgd` as a user's shell finds them: this venv's, first on PATH
    env["PATH"] = f"{Path(mpiexec.path()).parent}{os.pathsep}{BIN}{os.pathsep}{env['PATH']}"
    proc = subprocess.run(["bash", "-c", cmd.group(1)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "runs" / "my_problem" / "summary.json").is_file()
    assert "test_rmse" in (tmp_path / "runs" / "my_problem" / "metrics.jsonl").read_text()


# -- entry points -----------------------------------------------------------------------------


def test_entry_point_plugins_are_found_listed_and_refused_when_broken(tmp_path):
    """A package installed the ordinary way (a dist-info with entry_points.txt on sys.path)
    registers a problem and a compressor without psgd knowing its name."""
    (tmp_path / "psgd_extra.py").write_text(textwrap.dedent('''
        from psgd.compressors.identity import Identity
        from psgd.problems.quadratic import Quadratic

        class Twice(Identity):
            """Identity under another name (a plug-in compressor)."""
            name = "twice_identity"
            codec_id = 201

        class MyQuad(Quadratic):
            """The quadratic under another name (a plug-in problem)."""
            name = "my_quad"
    '''))
    dist = tmp_path / "psgd_extra-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: psgd-extra\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[psgd.problems]\nmy_quad = psgd_extra:MyQuad\nbroken = psgd_extra:Missing\n\n"
        "[psgd.compressors]\ntwice_identity = psgd_extra:Twice\n")
    env = {"PYTHONPATH": str(tmp_path)}
    listed = psgd_cli("list", env=env)
    assert listed.returncode == 2 and "entry point broken = psgd_extra:Missing" in listed.stderr
    (dist / "entry_points.txt").write_text(
        "[psgd.problems]\nmy_quad = psgd_extra:MyQuad\n\n"
        "[psgd.compressors]\ntwice_identity = psgd_extra:Twice\n")
    listed = psgd_cli("list", env=env)
    assert listed.returncode == 0, listed.stderr
    assert "my_quad" in listed.stdout and "twice_identity" in listed.stdout
    cfg = tmp_path / "c.yaml"
    cfg.write_text("problem: {name: my_quad}\nalgorithm: {name: diana}\n"
                   "compressor: {name: twice_identity}\n")
    ok = psgd_cli("validate", str(cfg), "-n", "2", env=env)
    assert ok.returncode == 0, ok.stderr
    assert "name: my_quad" in ok.stdout and "name: twice_identity" in ok.stdout
    # without the package on the path the names are unknown, in one line
    gone = psgd_cli("validate", str(cfg))
    assert gone.returncode == 2 and "problem.name: got 'my_quad'" in gone.stderr


# -- the network under mpiexec ----------------------------------------------------------------


@pytest.mark.mpi
def test_mlp_trains_under_mpiexec_with_test_metrics(run_psgd):
    res = run_psgd(5, mlp_cfg(momentum=0.9), timeout=180)
    assert res.returncode == 0, res.stderr
    first, last = res.metrics[0], res.metrics[-1]
    for rec in (first, last):
        assert {"loss", "test_loss", "test_accuracy", "epoch"} <= set(rec)
        assert rec["subopt"] is None
    assert first["test_accuracy"] < 0.3 and last["test_accuracy"] > 0.85
    assert last["loss"] < first["loss"] / 4
    # 300 steps x 4 workers x 32 samples over 1438 training samples
    assert last["epoch"] == pytest.approx(300 * 4 * 32 / 1438, rel=1e-6)
    assert "test_accuracy" in res.stdout and "subopt n/a" in res.stdout


@pytest.mark.mpi
@pytest.mark.slow
def test_diana_ternary_matches_sgd_accuracy_at_over_10x_fewer_uplink_bits(run_psgd):
    """The acceptance run (configs/mlp_digits.yaml, 4 workers, 1500 steps = 133.5 epochs):
    DIANA with the ternary quantizer within 1 point of uncompressed SGD's test accuracy at the
    same epochs, sending more than 10x fewer bits up. Quick form: test_mlp_trains_... above."""
    cfg = REPO / "configs" / "mlp_digits.yaml"
    diana = run_psgd(5, cfg, timeout=300, out="diana")
    sgd = run_psgd(5, cfg, "algorithm.name=gd", "compressor={name: identity}", timeout=300,
                   out="sgd")
    assert diana.returncode == 0 and sgd.returncode == 0, diana.stderr + sgd.stderr
    d, s = diana.metrics[-1], sgd.metrics[-1]
    assert d["epoch"] == s["epoch"]
    assert d["test_accuracy"] >= s["test_accuracy"] - 0.01
    assert diana.summary["bits_up_total"] * 10 < sgd.summary["bits_up_total"]
