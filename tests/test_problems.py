"""psgd.problems: objectives, the worker split, the reference solver and the constants."""


import numpy as np
import pytest
import scipy.sparse as sp

from psgd import data as D
from psgd import problems as P
from psgd.errors import ConfigError, UnknownComponentError
from psgd.registry import names


@pytest.fixture(scope="module")
def libsvm_dir(data_dir):
    """The LIBSVM directory (conftest's data_dir skips with a reason when it is missing)."""
    return data_dir


def libsvm(libsvm_dir, name, **kw):
    return {"source": "libsvm", "path": str(libsvm_dir / name), **kw}


def make(problem, data_cfg, seed, n_workers):
    """Resolve the sections as config.validate does, then build: make_problem's contract."""
    data_cfg = D.check_data_config(data_cfg)
    problem = P.check_problem_config(problem, data_cfg, n_workers)
    return P.make_problem(problem, data_cfg, seed, n_workers)


def fd_grad(f, x, h=1e-6):
    g = np.zeros_like(x)
    for j in range(x.size):
        e = np.zeros_like(x)
        e[j] = h
        g[j] = (f(x + e) - f(x - e)) / (2 * h)
    return g


def fd_hessian(grad, x, h=1e-6):
    H = np.zeros((x.size, x.size))
    for j in range(x.size):
        e = np.zeros_like(x)
        e[j] = h
        H[:, j] = (grad(x + e) - grad(x - e)) / (2 * h)
    return H


def small_glm(kind, sparse, l2=0.1, m=40, d=6, seed=0):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((m, d)) * (rng.random((m, d)) < 0.6)
    b = np.where(rng.random(m) < 0.5, -1.0, 1.0) if kind == "logistic" else rng.standard_normal(m)
    if sparse:
        A = sp.csr_matrix(A)
    cls = P.LogisticObjective if kind == "logistic" else P.LeastSquaresObjective
    return cls(A, b, l2)


def test_registered_problems():
    assert {"logistic", "least_squares", "quadratic", "rosenbrock"} <= set(names("problem"))


# -- derivatives ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["logistic", "least_squares"])
@pytest.mark.parametrize("sparse", [False, True])
def test_glm_gradient_and_hessian_vs_finite_differences(kind, sparse):
    obj = small_glm(kind, sparse)
    x = np.random.default_rng(1).standard_normal(obj.d)
    f, g = obj.value_and_grad(x)
    assert f == pytest.approx(obj.value(x), rel=1e-14)
    np.testing.assert_allclose(g, obj.grad(x), rtol=1e-14)
    np.testing.assert_allclose(g, fd_grad(obj.value, x), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(obj.hessian(x), fd_hessian(obj.grad, x), rtol=1e-5, atol=1e-7)


def test_logistic_is_numerically_stable():
    obj = P.LogisticObjective(np.array([[1.0], [-1.0]]), np.array([1.0, 1.0]), 0.0)
    x = np.array([1000.0])  # margins +-1000: log1p(exp(1000)) must not overflow
    f, g = obj.value_and_grad(x)
    assert np.isfinite(f) and np.isfinite(g).all()
    assert f == pytest.approx(500.0)


@pytest.mark.parametrize("rotate", [False, True])
@pytest.mark.parametrize("spectrum", ["linear", "log", "cubic", "power", "lowrank"])
def test_quadratic_derivatives_and_spectrum(rotate, spectrum):
    ps = make({"name": "quadratic", "n_features": 8, "mu": 0.5, "L": 4.0, "rank": 3,
                         "spectrum": spectrum, "rotate": rotate}, {}, seed=0, n_workers=3)
    obj = ps.local(1)
    x = np.random.default_rng(2).standard_normal(8)
    np.testing.assert_allclose(obj.grad(x), fd_grad(obj.value, x), rtol=1e-6, atol=1e-8)
    H = obj.hessian(x)
    np.testing.assert_allclose(H, fd_hessian(obj.grad, x), rtol=1e-6, atol=1e-8)
    ev = np.linalg.eigvalsh(H)
    assert ev[0] == pytest.approx(0.5) and ev[-1] == pytest.approx(4.0)
    assert rotate or np.count_nonzero(H - np.diag(np.diag(H))) == 0
    c = P.constants(ps)
    assert {k: c[k] for k in ("L", "L_i", "mu")} == {"L": 4.0, "L_i": [4.0] * 3, "mu": 0.5}
    np.testing.assert_allclose(c["smoothness_matrix"](), H, atol=1e-12)  # the sketch rule's L


def test_quadratic_power_law_and_low_rank_spectra():
    from psgd.problems.quadratic import quadratic_spectrum

    lam = quadratic_spectrum(0.0, 2.0, 5, "power", exponent=2.0)
    np.testing.assert_allclose(lam, 2.0 * np.arange(5, 0, -1, dtype=float) ** -2.0)
    lam = quadratic_spectrum(0.3, 1.0, 4, "power", exponent=1.0)  # floored at mu
    np.testing.assert_allclose(lam, [0.3, 1 / 3, 0.5, 1.0])
    assert quadratic_spectrum(0.01, 1.0, 6, "lowrank", rank=2).tolist() == [0.01] * 4 + [1.0] * 2
    # the old 'power' (mu + (L - mu) t^3) lives on as 'cubic'
    np.testing.assert_allclose(quadratic_spectrum(0.0, 1.0, 3, "cubic"), [0.0, 0.125, 1.0])


def test_rosenbrock_split():
    ps = make({"name": "rosenbrock"}, {}, seed=0, n_workers=2)
    f1, f2, f = ps.local(0), ps.local(1), ps.global_objective
    rng = np.random.default_rng(0)
    for _ in range(5):
        x, y = rng.uniform(-3, 3, size=2)
        v = np.array([x, y])
        assert f1.value(v) == pytest.approx((x + 16) ** 2 + 10 * (y - x * x) ** 2 + 16 * y)
        assert f2.value(v) == pytest.approx((x - 18) ** 2 + 10 * (y - x * x) ** 2 - 16 * y - 578)
        assert f.value(v) == pytest.approx((f1.value(v) + f2.value(v)) / 2)
        assert f.value(v) == pytest.approx((x - 1) ** 2 + 10 * (y - x * x) ** 2)
        np.testing.assert_allclose(f.grad(v), (f1.grad(v) + f2.grad(v)) / 2, atol=1e-12)
        for o in (f1, f2, f):
            np.testing.assert_allclose(o.grad(v), fd_grad(o.value, v), rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(o.hessian(v), fd_hessian(o.grad, v), rtol=1e-6, atol=1e-6)
    x_star, f_star = P.solve(ps)
    assert x_star.tolist() == [1.0, 1.0] and f_star == 0.0
    assert np.linalg.norm(f.grad(x_star)) == 0.0
    assert np.linalg.norm(f1.grad(x_star)) > 1  # no worker's own optimum
    assert ps.initial_point().tolist() == [-1.2, 1.0]
    c = P.constants(ps)
    assert c["L"] == pytest.approx(101.606, abs=1e-3) and c["mu"] == pytest.approx(0.3937, abs=1e-4)


# -- the split: weighted local gradients are the global gradient ------------------------------


def check_split(ps, x):
    g = ps.global_objective.grad(x)
    s = sum(w * ps.local(i).grad(x) for i, w in enumerate(ps.weights))
    np.testing.assert_allclose(s, g, rtol=1e-12, atol=1e-14)
    fv = sum(w * ps.local(i).value(x) for i, w in enumerate(ps.weights))
    assert fv == pytest.approx(ps.global_objective.value(x), rel=1e-12)
    assert ps.weights.sum() == pytest.approx(1.0, abs=1e-15)


@pytest.mark.parametrize("name", ["logistic", "least_squares"])
@pytest.mark.parametrize("how", ["contiguous", "shuffled"])
def test_weighted_local_gradients_equal_global_synthetic(name, how):
    ps = make({"name": name, "l2": 0.01}, {"n_samples": 1003, "n_features": 7,
                                                     "partition": how}, seed=5, n_workers=4)
    assert [ps.local(i).n_samples for i in range(4)] == [251, 251, 251, 250]
    check_split(ps, np.random.default_rng(0).standard_normal(7))


def test_weighted_local_gradients_equal_global_mushrooms(libsvm_dir):
    ps = make({"name": "logistic", "l2": 0.05}, libsvm(libsvm_dir, "mushrooms"),
                        seed=0, n_workers=5)
    assert ps.describe()["shard_sizes"] == [1625, 1625, 1625, 1625, 1624]
    assert ps.n_samples == 8124 and ps.d == 112
    np.testing.assert_allclose(ps.weights, np.array([1625] * 4 + [1624]) / 8124)
    check_split(ps, np.random.default_rng(0).standard_normal(112) * 0.1)


def test_quadratic_split_and_optimum():
    ps = make({"name": "quadratic", "n_features": 20, "mu": 0.1, "L": 2.0}, {},
                        seed=1, n_workers=4)
    check_split(ps, np.random.default_rng(0).standard_normal(20))
    x_star, f_star = P.solve(ps)
    assert np.linalg.norm(ps.global_objective.grad(x_star)) < 1e-14
    assert f_star == pytest.approx(ps.loss(x_star), rel=1e-14) and f_star > 0
    assert all(np.linalg.norm(ps.local(i).grad(x_star)) > 1e-2 for i in range(4))


def test_quadratic_huge_diagonal_is_cheap():
    ps = make({"name": "quadratic", "n_features": 10**6}, {}, seed=0, n_workers=2)
    x = ps.initial_point()
    g = ps.local(0).grad(x)
    assert g.shape == (10**6,) and np.isfinite(g).all()
    assert P.constants(ps)["L"] == 1.0


def test_quadratic_streams_what_the_server_evaluates():
    # d spans several chunks plus a partial one, so every chunk boundary is crossed
    from psgd.problems.quadratic import CHUNK
    d = 2 * CHUNK + 123
    ps = make({"name": "quadratic", "n_features": d, "mu": 0.1, "L": 2.0}, {}, seed=2, n_workers=3)
    obj = ps.global_objective
    x = np.random.default_rng(1).standard_normal(d)
    u = x - obj.center
    value, grad_norm = obj.value_and_grad_norm(x)
    assert value == pytest.approx(0.5 * u @ (obj.lam * u) + obj.const, rel=1e-12)
    assert grad_norm == pytest.approx(np.linalg.norm(obj.lam * u), rel=1e-12)
    assert obj.value(x) == value
    # the server's x* and x0 are the problem's own arrays, read-only; the API's are copies
    x_star, f_star = P.solve(ps, copy=False)
    assert np.shares_memory(x_star, obj.center) and not x_star.flags.writeable
    assert obj.center.flags.writeable  # the view is read-only, not the problem's array
    mine, _ = P.solve(ps)
    assert mine.flags.writeable and not np.shares_memory(mine, obj.center)
    assert f_star == pytest.approx(ps.loss(mine), rel=1e-14)
    assert not ps.x0.flags.writeable and ps.initial_point().flags.writeable


def test_deterministic_build():
    cfgs = ({"name": "logistic", "l2": 0.01}, {"partition": "shuffled", "n_samples": 100})
    a = make(*cfgs, seed=3, n_workers=3)
    b = make(*cfgs, seed=3, n_workers=3)
    x = np.ones(50) * 0.1
    for i in range(3):
        np.testing.assert_array_equal(a.local(i).grad(x), b.local(i).grad(x))
    assert a.describe() == b.describe()
    c = make(*cfgs, seed=4, n_workers=3)
    assert not np.array_equal(a.local(0).grad(x), c.local(0).grad(x))


# -- stochastic gradients -----------------------------------------------------------------------


@pytest.mark.parametrize("sparse", [False, True])
def test_stochastic_grad_unbiased(sparse):
    obj = small_glm("logistic", sparse, m=30, d=4)
    x = np.array([0.3, -0.2, 0.5, 0.1])
    rng = np.random.default_rng(0)
    n = 4000
    draws = np.array([obj.stochastic_grad(x, 5, rng) for _ in range(n)])
    mean, se = draws.mean(axis=0), draws.std(axis=0) / np.sqrt(n)
    assert np.all(np.abs(mean - obj.grad(x)) <= 5 * se + 1e-12)
    # one full "batch" of every row is not the exact gradient (with replacement) but is close
    assert obj.stochastic_grad(x, 1, rng).shape == (4,)
    with pytest.raises(ValueError):
        obj.stochastic_grad(x, 0, rng)


# -- regularizer --------------------------------------------------------------------------------


def test_l1_prox():
    r = P.L1Reg(0.5)
    np.testing.assert_array_equal(r.prox(np.array([2.0, -0.3, -1.0, 0.0]), 2.0), [1.0, 0.0, 0.0, 0.0])
    assert r.value(np.array([1.0, -2.0])) == 1.5
    x = np.array([1.0])
    assert P.L1Reg(0.0).prox(x, 1.0) is x and P.L1Reg(0.0).value(x) == 0.0


# -- reference solver -------------------------------------------------------------------------


def check_l1_optimality(ps, x, tol=1e-10):
    g = ps.global_objective.grad(x)
    l1 = ps.reg.l1
    nz = x != 0
    assert np.all(np.abs(g[nz] + l1 * np.sign(x[nz])) <= tol)
    assert np.all(np.abs(g[~nz]) <= l1 + tol)
    assert 0 < nz.sum() < x.size  # a genuinely sparse solution


@pytest.mark.parametrize("name", ["logistic", "least_squares"])
def test_solve_synthetic(name):
    ps = make({"name": name, "l2": 0.01}, {"noise": 0.1}, seed=0, n_workers=3)
    x, f, info = P.solve(ps, return_info=True)
    assert info["converged"] and np.linalg.norm(ps.global_objective.grad(x)) <= 1e-10
    assert f == pytest.approx(ps.loss(x), rel=1e-15)
    ps1 = make({"name": name, "l2": 0.01, "l1": 0.02}, {"noise": 0.1}, seed=0,
                         n_workers=3)
    x1, f1 = P.solve(ps1)
    check_l1_optimality(ps1, x1)
    assert f1 == pytest.approx(ps1.loss(x1), rel=1e-15)


def test_solve_mushrooms(libsvm_dir):
    ps = make({"name": "logistic", "l2": 0.05}, libsvm(libsvm_dir, "mushrooms"),
                        seed=0, n_workers=5)
    x, f, info = P.solve(ps, return_info=True)
    assert np.linalg.norm(ps.global_objective.grad(x)) <= 1e-10 and info["converged"]
    assert ps.loss(x) == f
    # nothing nearby is better (first-order optimality at the found point)
    for d in np.eye(112)[:5]:
        assert ps.loss(x + 1e-4 * d) > f and ps.loss(x - 1e-4 * d) > f

    ps1 = make({"name": "logistic", "l2": 0.05, "l1": 1e-3},
                         libsvm(libsvm_dir, "mushrooms"), seed=0, n_workers=5)
    x1, f1, info1 = P.solve(ps1, return_info=True)
    assert info1["converged"] and info1["residual"] <= 1e-12
    check_l1_optimality(ps1, x1)
    assert f1 > f


def test_constants_mushrooms(libsvm_dir):
    ps = make({"name": "logistic", "l2": 0.05}, libsvm(libsvm_dir, "mushrooms"),
                        seed=0, n_workers=5)
    c = P.constants(ps)
    from psgd.data import read_libsvm
    A, _ = read_libsvm(str(libsvm_dir / "mushrooms"))
    lmax = np.linalg.eigvalsh((A.T @ A).toarray())[-1]
    assert c["L"] == pytest.approx(lmax / (4 * 8124) + 0.05, rel=1e-12)
    assert c["mu"] == 0.05 and len(c["L_i"]) == 5
    assert max(c["L_i"]) >= c["L"] - 1e-12  # L <= max L_i (sum of w_i L_i >= L, in fact)
    assert sum(w * L for w, L in zip(ps.weights, c["L_i"])) >= c["L"] - 1e-12


def test_constants_bound_the_hessian():
    for name in ("logistic", "least_squares"):
        ps = make({"name": name, "l2": 0.02}, {"n_samples": 300, "n_features": 8},
                            seed=2, n_workers=3)
        c = P.constants(ps)
        for x in np.random.default_rng(0).standard_normal((3, 8)):
            ev = np.linalg.eigvalsh(ps.global_objective.hessian(x))
            assert c["mu"] - 1e-12 <= ev[0] and ev[-1] <= c["L"] + 1e-12
        if name == "least_squares":  # exact for a quadratic
            assert ev[-1] == pytest.approx(c["L"]) and ev[0] == pytest.approx(c["mu"])


# -- config errors ------------------------------------------------------------------------------


@pytest.mark.parametrize("problem, data, n, key", [
    ({"name": "rosenbrock"}, {}, 3, "problem.name"),
    ({"name": "quadratic"}, {"source": "libsvm", "path": "x"}, 2, "data.source"),
    ({"name": "quadratic", "mu": 2.0, "L": 1.0}, {}, 2, "problem.mu"),
    ({"name": "quadratic", "mu": 0.0, "spectrum": "log"}, {}, 2, "problem.mu"),
    ({"name": "quadratic", "n_features": 5, "spectrum": "lowrank", "rank": 6}, {}, 2,
     "problem.rank"),
    ({"name": "quadratic", "n_features": 5000, "rotate": True}, {}, 2, "problem.n_features"),
    ({"name": "logistic", "l2": -1.0}, {}, 2, "problem.l2"),
    ({"name": "logistic", "lambda": 1.0}, {}, 2, "problem.lambda"),
    ({"l2": 1.0}, {}, 2, "problem.name"),
    ({"name": "logistic"}, {"n_samples": 3}, 5, "data"),
])
def test_config_errors(problem, data, n, key):
    with pytest.raises(ConfigError) as exc:
        make(problem, data, seed=0, n_workers=n)
    assert str(exc.value).startswith(key) and "\n" not in str(exc.value)


def test_unknown_problem():
    with pytest.raises(UnknownComponentError, match="problem.name: got 'svm'"):
        P.make_problem({"name": "svm"}, {}, 0, 2)


def test_check_problem_config_fills_defaults():
    assert P.check_problem_config({"name": "logistic"}) == {"name": "logistic", "l2": 1e-3,
                                                            "l1": 0.0}
    cfg = P.check_problem_config({"name": "quadratic"})
    assert P.check_problem_config(cfg) == cfg


def test_logistic_labels_from_libsvm(libsvm_dir):
    ps = make({"name": "logistic"}, libsvm(libsvm_dir, "phishing"), 0, 2)
    assert ps.describe()["label_map"] == {"0": -1, "1": 1}
    ps = make({"name": "least_squares"}, libsvm(libsvm_dir, "mushrooms"), 0, 2)
    assert set(np.unique(ps.local(0).b)) <= {1.0, 2.0}  # raw labels for regression


# -- the extension surface: unknown constants, shards -----------------------------------------


class _Opaque(P.Objective):
    """A problem that knows its gradient but neither f*, L nor mu."""

    d = 3

    def value_and_grad(self, x):
        return float(x @ x), 2 * x


def test_a_problem_may_answer_unknown():
    ps = P.ProblemSet(name="opaque", params={}, d=3, weights=[0.5, 0.5], n_samples=None,
                      local_factory=lambda i: _Opaque(), global_factory=_Opaque,
                      reg=P.L1Reg(0.0), x0=np.zeros(3), info={}, kind="opaque", family=P.Problem)
    assert P.solve(ps) == (None, None)
    assert P.solve(ps, return_info=True)[2]["method"] == "unknown"
    assert P.constants(ps) == {"L": None, "L_i": None, "mu": None}


def test_workers_load_only_their_shard(libsvm_dir):
    cfg = libsvm(libsvm_dir, "mushrooms")
    full = make({"name": "logistic", "l2": 0.05}, cfg, seed=0, n_workers=4)
    data_cfg = D.check_data_config(cfg)
    problem = P.check_problem_config({"name": "logistic", "l2": 0.05})
    one = P.make_problem(problem, data_cfg, 0, 4, workers=[2])
    assert one.d == full.d and np.array_equal(one.weights, full.weights)
    x = np.random.default_rng(0).standard_normal(full.d) * 0.1
    np.testing.assert_array_equal(one.local(2).grad(x), full.local(2).grad(x))
    assert one.local(2).A.shape[0] == full.local(2).A.shape[0] == 2031
    with pytest.raises(Exception, match="not loaded on this rank"):
        one.local(0)
    with pytest.raises(Exception, match="needs every shard"):
        one.global_objective


def test_grad_into_is_grad_written_into_the_given_vector():
    from psgd.problems.objectives import Objective
    from psgd.problems.quadratic import QuadraticObjective

    rng = np.random.default_rng(0)
    lam, c, x = rng.random(50), rng.standard_normal(50), rng.standard_normal(50)
    f = QuadraticObjective(lam, c)
    out = np.full(50, np.nan)
    assert f.grad_into(x, out) is out and np.array_equal(out, f.grad(x))
    Q = np.linalg.qr(rng.standard_normal((50, 50)))[0]
    rotated = QuadraticObjective(lam, c, Q=Q)
    assert np.array_equal(rotated.grad_into(x, out), rotated.grad(x))
    assert Objective.grad_into is not QuadraticObjective.grad_into
