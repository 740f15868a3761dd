"""Algorithms in-process (no MPI): the server/worker hooks on small least-squares problems."""

import numpy as np
import pytest

from psgd import algorithms
from psgd.compressors import get_compressor
from psgd.runtime import Streams
from psgd.steps import Uplink, decode_message, worker_step
from psgd.validation import check_params


class LocalLS:
    """f_i(x) = 1/(2 m_i) ||A_i x - b_i||^2 + l2/2 ||x||^2."""

    def __init__(self, A, b, l2):
        self.A, self.b, self.l2 = A, b, l2

    def grad(self, x):
        return self.A.T @ (self.A @ x - self.b) / len(self.b) + self.l2 * x


def make_problem(n=4, m=40, d=12, l2=0.1, seed=0):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((n * m, d))
    b = rng.standard_normal(n * m)
    locs = [LocalLS(A[i * m:(i + 1) * m], b[i * m:(i + 1) * m], l2) for i in range(n)]
    H = A.T @ A / len(b) + l2 * np.eye(d)
    x_star = np.linalg.solve(H, A.T @ b / len(b))
    L_i = [np.linalg.eigvalsh(l.A.T @ l.A / m).max() + l2 for l in locs]
    ev = np.linalg.eigvalsh(H)
    consts = algorithms.Constants(L=ev.max(), L_i=L_i, mu=ev.min(), d=d)
    return locs, x_star, consts


def cfg_for(name, form=None, **alg):
    cls = algorithms.get_algorithm_class(name)
    params = check_params("algorithm", cls.params, {"async_form": form, **alg})
    return {"algorithm": {"name": name, **params}}


def simulate(alg, comp, locs, steps, seed=0, order=None):
    """Synchronous steps in-process through the same message path the MPI loops use."""
    d = locs[0].A.shape[1]
    rng = np.random.default_rng(seed)
    uplink = Uplink(comp, alg, Streams(seed, len(locs)), d)
    ss = alg.server_init(np.zeros(d))
    wss = [alg.worker_init(d) for _ in locs]
    buf = np.empty(uplink.max_nbytes(), np.uint8)
    for k in range(steps):
        batch = []
        for i in (order or range(len(locs))):
            n = worker_step(alg, uplink, wss[i], locs[i].grad(ss.x), i, k, rng, buf)
            batch.append(decode_message(alg, uplink, buf[:n], i, k))
        alg.server_apply(ss, sorted(batch, key=lambda m: m.worker), lambda x, g: x)
    return ss.x


def build(name, comp, consts, n=4, form=None, **alg):
    c = cfg_for(name, form, **alg)
    w = np.full(n, 1.0 / n)
    hyper = algorithms.get_algorithm_class(name).resolve(c, comp, consts, w, 0)
    return algorithms.get_algorithm_class(name)(c["algorithm"], hyper, w)


TERN = {"name": "random_dithering", "levels": 1, "norm": "inf"}


def test_diana_converges_exactly_where_dqgd_stalls():
    locs, x_star, consts = make_problem()
    comp = get_compressor(TERN)
    x_diana = simulate(build("diana", comp, consts), comp, locs, 3000)
    x_dqgd = simulate(build("dqgd", comp, consts), comp, locs, 3000)
    assert np.linalg.norm(x_diana - x_star) < 1e-9
    assert np.linalg.norm(x_dqgd - x_star) > 1e-4


def test_diana_theory_constants():
    _, _, consts = make_problem(d=112)
    comp = get_compressor(TERN)
    omega = (np.sqrt(112) - 1) / 2
    same = algorithms.Constants(L=consts.L, L_i=[consts.L] * 10, mu=consts.mu, d=112)
    alg = build("diana", comp, same, n=10)
    assert alg.hyper.alpha == pytest.approx(1 / (1 + omega))
    # papers.md E.9: gamma L = 1/(1 + 6 omega / n) = 0.258 for l-inf, d = 112, n = 10
    assert alg.hyper.gamma * consts.L == pytest.approx(1 / (1 + 6 * omega / 10))
    assert alg.hyper.gamma * consts.L == pytest.approx(0.258, abs=1e-3)
    # the variance term is bounded through the workers' own smoothness: L/n -> max_i w_i L_i
    alg = build("diana", comp, consts)
    assert alg.hyper.gamma == pytest.approx(1 / (consts.L + 6 * omega * max(consts.L_i) / 4))


def test_dqgd_theory_step_is_the_largest_theorem_10_allows():
    _, _, consts = make_problem(d=112)
    comp = get_compressor(TERN)
    omega = (np.sqrt(112) - 1) / 2
    same = algorithms.Constants(L=consts.L, L_i=[consts.L] * 4, mu=consts.mu, d=112)
    # DIANA paper Thm 10: gamma <= 2/((mu + L)(1 + 2 omega / n))
    assert build("dqgd", comp, same).hyper.gamma == pytest.approx(
        2 / ((consts.mu + consts.L) * (1 + 2 * omega / 4)))
    # unequal shards: the worker whose (L_i, w_i) binds sets the step
    w = np.array([0.1, 0.2, 0.3, 0.4])
    hyper = algorithms.DQGD.resolve(cfg_for("dqgd"), comp, consts, w, 0)
    expect = min(2 / ((consts.mu + L) * (1 + 2 * omega * wi)) for L, wi in zip(consts.L_i, w))
    assert hyper.gamma == pytest.approx(expect)
    # asynchronous: the heuristic 1/(1 + tau)
    assert algorithms.DQGD.resolve(cfg_for("dqgd"), comp, consts, w, 3).gamma == pytest.approx(
        expect / 4)


def test_gd_identity_matches_plain_gradient_descent():
    locs, x_star, consts = make_problem()
    comp = get_compressor({"name": "identity"})
    x = simulate(build("gd", comp, consts), comp, locs, 2000)
    assert np.linalg.norm(x - x_star) < 1e-10


@pytest.mark.parametrize("name", ["dqgd", "diana"])
def test_table_and_direct_forms_agree_with_full_batches(name):
    locs, _, consts = make_problem()
    comp = get_compressor(TERN)
    xt = simulate(build(name, comp, consts, form="table"), comp, locs, 50, seed=1)
    xd = simulate(build(name, comp, consts, form="direct"), comp, locs, 50, seed=1)
    assert np.max(np.abs(xt - xd)) < 1e-12


def test_ef21_and_ef_converge_with_a_contracted_unbiased_compressor():
    locs, x_star, consts = make_problem()
    comp = get_compressor(TERN)
    ef21 = build("ef21", comp, consts)
    assert ef21.hyper.message_scale == pytest.approx(1 / (1 + comp.omega(12)))
    assert np.linalg.norm(simulate(ef21, comp, locs, 4000) - x_star) < 1e-8
    # classic EF only reaches a neighbourhood here: with heterogeneous data grad f_i(x*) != 0,
    # so the error memories never vanish (the defect EF21 was designed to remove)
    x_ef = simulate(build("ef", comp, consts), comp, locs, 4000)
    err = np.linalg.norm(x_ef - x_star)
    assert 1e-6 < err < 0.2 * np.linalg.norm(x_star)


def test_diana_momentum_converges():
    locs, x_star, consts = make_problem()
    comp = get_compressor(TERN)
    x = simulate(build("diana", comp, consts, momentum=0.5), comp, locs, 4000)
    assert np.linalg.norm(x - x_star) < 1e-8


def test_diana_momentum_theory_step_is_theorem_7s_largest():
    """The heavy-ball step meets both of Theorem 7's conditions, the second with equality."""
    _, _, consts = make_problem()
    comp = get_compressor(TERN)
    n, beta = 4, 0.5
    alg = build("diana", comp, consts, momentum=beta)
    g, L, alpha = alg.hyper.gamma, consts.L, alg.hyper.alpha
    omega = comp.omega(12)
    alpha_p = 1 / (1 + omega)
    w = 1 + omega / n                                  # the theorem's (n-1)/n + 1/(n alpha_p)
    xi = max(1 - alpha, beta)
    zeta = w + alpha * (w - 1) / (1 - xi)
    delta = 1 + 2 / n * (1 / alpha_p - 1) * (1 + alpha / abs(1 - alpha - beta))
    assert g < (1 - beta**2) / (2 * L * zeta)
    assert beta**2 / ((1 - beta)**2 * (1 - xi)) == pytest.approx(
        (1 - beta**2 - 2 * L * g * zeta) / (g**2 * L**2 * delta))
    assert "Thm 7" in alg.hyper.rule and "heuristic" not in alg.hyper.rule


def test_unequal_weights_generalise_one_over_n_for_diana():
    _, _, consts = make_problem()
    comp = get_compressor(TERN)
    w = np.array([0.7, 0.1, 0.1, 0.1])
    h = algorithms.DIANA.resolve(cfg_for("diana"), comp, consts, w, 0)
    omega = comp.omega(12)
    assert h.gamma == pytest.approx(1 / (consts.L + 6 * omega * 0.7 * consts.L_i[0]))


@pytest.mark.parametrize("name", ["gd", "dqgd", "diana", "ef21", "ef", "marina"])
def test_a_problem_without_constants_needs_a_numeric_step(name):
    from psgd.errors import ConfigError

    comp = get_compressor({"name": "identity"} if name == "gd" else TERN)
    unknown = algorithms.Constants(L=None, L_i=None, mu=None, d=12)
    with pytest.raises(ConfigError, match=r"algorithm.stepsize: got 'theory'.*allowed: a number"):
        build(name, comp, unknown)
    assert build(name, comp, unknown, stepsize=0.1).hyper.gamma == 0.1


def _messages(alg, comp, d, n, seed=0):
    """n encoded random messages of step 0, as the server receives them."""
    rng = np.random.default_rng(seed)
    uplink = Uplink(comp, alg, Streams(seed, n), d)
    batch = []
    for i in range(n):
        buf = np.empty(uplink.max_nbytes(), np.uint8)
        k = comp.encode_into(rng.standard_normal(d), rng, buf, key=uplink.key(comp, i, 0))
        batch.append(decode_message(alg, uplink, buf[:k], i, 0))
    return batch


@pytest.mark.parametrize("momentum", [0.0, 0.5])
def test_fused_diana_sync_step_is_the_unfused_step_bit_for_bit(momentum):
    # the chunked pass must do the same operations on every coordinate as the whole-vector
    # step (Algorithm.step), chunk edges and the last partial chunk included
    from psgd.algorithms.base import CHUNK, Algorithm, axpy

    d, n = 2 * CHUNK + 7, 3
    comp = get_compressor({"name": "random_dithering", "levels": 3, "norm": "2",
                           "block_size": 100})
    consts = algorithms.Constants(L=1.0, L_i=[1.0] * n, mu=0.1, d=d)
    alg = build("diana", comp, consts, n=n, momentum=momentum)
    a = alg.hyper.alpha
    rng = np.random.default_rng(5)
    fused = alg.server_init(rng.standard_normal(d))
    fused.shift[:] = rng.standard_normal(d)
    plain = alg.server_init(fused.x)
    plain.shift[:] = fused.shift
    for _ in range(2):
        batch = _messages(alg, comp, d, n)
        alg.sync_step(fused, batch, lambda x, g: x)
        g = alg.aggregate(batch, np.empty(d))  # the unfused step, one vector pass each
        g += plain.shift
        plain.shift *= 1.0 - a
        axpy(a, g, plain.shift)
        Algorithm.step(alg, plain, g, lambda x, g: x)
    assert np.array_equal(fused.x, plain.x) and np.array_equal(fused.shift, plain.shift)
    if momentum:
        assert np.array_equal(fused.velocity, plain.velocity) and fused.velocity.any()
    assert not np.array_equal(fused.x, alg.server_init(np.zeros(d)).x)  # it did step


def test_async_diana_server_shifts_stay_bit_equal_to_the_workers():
    # the worker decodes its message straight into h_i (memory_step); the table form's
    # copy of h_i must move by the very same operation, or the two drift apart
    locs, _, consts = make_problem()
    comp = get_compressor({"name": "random_dithering", "levels": 5, "norm": "2"})
    c = cfg_for("diana", "table")
    w = np.full(len(locs), 1.0 / len(locs))
    cls = algorithms.get_algorithm_class("diana")
    alg = cls(c["algorithm"], cls.resolve(c, comp, consts, w, 2), w, synchronous=False)
    d = locs[0].A.shape[1]
    rng = np.random.default_rng(0)
    uplink = Uplink(comp, alg, Streams(0, len(locs)), d)
    ss = alg.server_init(np.zeros(d))
    wss = [alg.worker_init(d) for _ in locs]
    buf = np.empty(uplink.max_nbytes(), np.uint8)
    for k in range(30):
        i = k % len(locs)  # one worker at a time: the table's incremental path
        n = worker_step(alg, uplink, wss[i], locs[i].grad(ss.x), i, k // len(locs), rng, buf)
        alg.server_apply(ss, [decode_message(alg, uplink, buf[:n], i, k // len(locs))],
                         lambda x, g: x)
    for i, ws in enumerate(wss):
        assert np.array_equal(ss.shifts[i], ws.shift) and np.any(ws.shift != 0)
