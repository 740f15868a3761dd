"""cgd (compressed GD / IAG with any compressor) in-process, its theory step rules (Khirirat's
Theorems A/B, the sketch rule lambda_S), and the sketch moments they rest on; the MPI runs are
in test_reproduce.py (khirirat, flynn)."""

import math
import subprocess
import sys

import numpy as np
import pytest

from psgd import algorithms
from psgd.algorithms.cgd import CGD
from psgd.compressors import get_compressor
from psgd.runtime import Streams
from psgd.steps import Uplink, decode_message, worker_step
from psgd.validation import check_params

ROUNDING = {"name": "rounding", "resolution": 0.01}


class LocalQuadratic:
    """f_i(x) = 1/2 (x - c_i)^T H (x - c_i)."""

    def __init__(self, H, c):
        self.H, self.c = H, c

    def grad(self, x):
        return self.H @ (x - self.c)


def quadratics(n=4, d=10, mu=0.5, L=1.0, seed=0):
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    H = (Q * np.linspace(mu, L, d)) @ Q.T
    locs = [LocalQuadratic(H, rng.standard_normal(d)) for _ in range(n)]
    x_star = np.mean([l.c for l in locs], axis=0)
    consts = algorithms.Constants(L=L, L_i=[L] * n, mu=mu, d=d, smoothness_matrix=lambda: H)
    return locs, x_star, consts


def cgd(comp, consts, n, tau=0, form="table", stepsize="theory"):
    a = check_params("algorithm", CGD.params, {"async_form": form, "stepsize": stepsize})
    cfg = {"algorithm": {"name": "cgd", **a}}
    w = np.full(n, 1.0 / n)
    hyper = CGD.resolve(cfg, comp, consts, w, tau)
    return CGD(cfg["algorithm"], hyper, w, synchronous=tau == 0)


def run_delayed(alg, comp, locs, steps, tau):
    """Cyclic compressed IAG with a constant delay: update k applies worker k mod n's message,
    computed at x_{k - tau} (the delay model of Theorem B), through the real message path."""
    n, d = len(locs), locs[0].c.size
    rng = np.random.default_rng(0)
    uplink = Uplink(comp, alg, Streams(0, n), d)
    ss = alg.server_init(np.zeros(d))
    ws = [alg.worker_init(d) for _ in locs]
    buf = np.empty(uplink.max_nbytes(), np.uint8)
    history = [ss.x.copy()]
    for k in range(steps):
        i = k % n
        stale = history[max(0, len(history) - 1 - tau)]
        m = worker_step(alg, uplink, ws[i], locs[i].grad(stale), i, k, rng, buf)
        alg.server_apply(ss, [decode_message(alg, uplink, buf[:m], i, k)], lambda x, g: x)
        history.append(ss.x.copy())
    return ss.x


def run_sync(alg, comp, locs, steps):
    """Synchronous CGD: every worker's fresh message each step."""
    n, d = len(locs), locs[0].c.size
    rng = np.random.default_rng(0)
    uplink = Uplink(comp, alg, Streams(0, n), d)
    ss = alg.server_init(np.zeros(d))
    ws = [alg.worker_init(d) for _ in locs]
    buf = np.empty(uplink.max_nbytes(), np.uint8)
    for k in range(steps):
        batch = []
        for i in range(n):
            m = worker_step(alg, uplink, ws[i], locs[i].grad(ss.x), i, k, rng, buf)
            batch.append(decode_message(alg, uplink, buf[:m], i, k))
        alg.server_apply(ss, batch, lambda x, g: x)
    return ss.x


def test_theorem_a_and_b_steps_and_ball_radii():
    _, _, c = quadratics(mu=0.5, L=1.0, d=16)
    comp = get_compressor(ROUNDING)
    eps = math.sqrt(16) * 0.01 / 2
    assert comp.epsilon(16) == pytest.approx(eps)
    sync = cgd(comp, c, 4).hyper
    assert sync.gamma == pytest.approx(2 / 1.5) and sync.ball_radius == pytest.approx(eps / 0.5)
    a = cgd(comp, c, 4, tau=5, form="direct").hyper
    assert a.gamma == pytest.approx(0.5 / (2 * 5))                  # mu/(2 tau L^2)
    assert a.ball_radius == pytest.approx(2 * eps * (1 + a.gamma * 5) / 0.5)
    assert a.ball_radius <= 3 * eps / 0.5
    b = cgd(comp, c, 4, tau=5, form="table").hyper
    assert b.gamma == pytest.approx(0.5 / (6 * 5))                  # mu/(6 tau L^2)
    assert b.ball_radius == pytest.approx(7 * eps / (3 * 0.5))
    assert "Thm B" in b.rule and "proven" in b.rule and "Thm A" in a.rule
    # a small tau: the cap 2/(mu + L) binds
    assert cgd(comp, c, 4, tau=1, form="direct").hyper.gamma == pytest.approx(0.5 / 2)
    # a relative-error compressor: no absolute eps, so no ball and the delayed step is heuristic
    sign = cgd(get_compressor({"name": "sign"}), c, 4, tau=2)
    assert sign.hyper.ball_radius is None and "heuristic" in sign.hyper.rule
    assert cgd(get_compressor({"name": "sign"}), c, 1).hyper.gamma == pytest.approx(1.0)
    # a numeric step is taken as given, with no ball claimed
    given = cgd(comp, c, 4, tau=5, stepsize=0.1).hyper
    assert given.gamma == 0.1 and given.ball_radius is None


@pytest.mark.parametrize("tau", [0, 2, 5, 7])
def test_rounding_iag_ends_inside_the_theorem_b_ball_for_every_tau(tau):
    locs, x_star, c = quadratics(n=8, d=10)
    comp = get_compressor({"name": "rounding", "resolution": 0.05})
    alg = cgd(comp, c, 8, tau=tau, form="table")
    R = alg.hyper.ball_radius
    x = run_delayed(alg, comp, locs, 3000, tau) if tau else run_sync(alg, comp, locs, 200)
    assert np.linalg.norm(x - x_star) <= R
    assert np.linalg.norm(x - x_star) < 0.2 * np.linalg.norm(x_star)   # and it did move


def test_biased_compressors_converge_on_one_worker():
    locs, x_star, c = quadratics(n=1, d=10)
    for spec in ({"name": "sign"}, {"name": "top_k", "k": 3}):
        comp = get_compressor(spec)
        x = run_sync(cgd(comp, c, 1), comp, locs, 400)
        assert np.linalg.norm(x - x_star) < 1e-6 * np.linalg.norm(x_star), spec


@pytest.mark.parametrize("name", ["haar_sketch", "gaussian_sketch", "coordinate_sketch"])
def test_sketch_moment_matches_monte_carlo(name):
    """E[(S^T S) L (S^T S)] from the formulas against the codec's own S^T S (decode(encode))."""
    d, k = 8, 3
    rng = np.random.default_rng(1)
    A = rng.standard_normal((d, d))
    L = A @ A.T / d + np.diag(np.arange(1, d + 1.0))
    comp = get_compressor({"name": name, "k": k})
    M = comp.smoothness_moment(L)
    v = rng.standard_normal(d)
    est = []
    for key in range(20000):
        y = comp.decode(comp.encode(v, rng, key=key), key=key, d=d)
        est.append(y @ L @ y)
    assert np.mean(est) == pytest.approx(v @ M @ v, rel=0.03)
    assert comp.smoothness_norm(L) == pytest.approx(np.linalg.eigvalsh(M)[-1])


def test_sketch_moment_coefficients_papers_e13():
    # papers.md E.13: Haar d = 1000, k = 10 -> c1 = 1.09870, c2 = 0.098901
    L = np.diag([1.0] + [0.0] * 999)
    haar = get_compressor({"name": "haar_sketch", "k": 10})
    assert haar.smoothness_norm(L) == pytest.approx(1.09870 + 0.098901, abs=1e-5)
    # rand-k coordinates: (0.90090, 99.0991): a diagonal L = e_1 e_1^T is the worst case d/k
    coord = get_compressor({"name": "coordinate_sketch", "k": 10})
    assert coord.smoothness_norm(L) == pytest.approx(0.90090 + 99.0991, abs=1e-3)
    # blocks: independent per block, so off-diagonal blocks keep L's own entries
    blocked = get_compressor({"name": "haar_sketch", "k": 2, "block_size": 4})
    full = np.ones((8, 8))
    M = blocked.smoothness_moment(full)
    assert np.all(M[:4, 4:] == 1.0) and M[0, 0] > 1.0


def test_sketch_theory_step_is_one_over_lambda_s():
    H = np.diag([1.0, 0.01] + [0.001] * 10)  # effective rank ~1: the sketch costs little
    c = algorithms.Constants(L=1.0, L_i=[1.0], mu=0.001, d=12, smoothness_matrix=lambda: H)
    comp = get_compressor({"name": "haar_sketch", "k": 3})
    alg = cgd(comp, c, 1)
    assert alg.hyper.gamma == pytest.approx(1 / comp.smoothness_norm(H))
    assert "lambda_S" in alg.hyper.rule and "proven" in alg.hyper.rule
    # well above the worst case 1/(L (1 + omega)) = 1/(L d/k): it is what the problem allows
    assert alg.hyper.gamma > 2 / (c.L * 12 / 3)
    # without the matrix the unbiased rule (omega) applies
    blind = algorithms.Constants(L=1.0, L_i=[1.0], mu=0.001, d=12)
    assert "omega" in cgd(comp, blind, 1).hyper.rule


def test_cgd_accepts_biased_compressors_where_dqgd_refuses(tmp_path):
    cfg = tmp_path / "c.yaml"
    for comp in ("{name: rounding, resolution: 0.01}", "{name: sign}", "{name: top_k, k: 2}",
                 "{name: spherical, alpha: 0.2, block_size: 5}"):
        cfg.write_text(f"problem: {{name: quadratic, n_features: 10}}\nalgorithm: {{name: cgd}}\n"
                       f"compressor: {comp}\n")
        # (outside the checkout: the installed psgd, not the kernel-less source tree)
        r = subprocess.run([sys.executable, "-m", "psgd", "validate", str(cfg), "-n", "2"],
                           capture_output=True, text=True, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        r = subprocess.run([sys.executable, "-m", "psgd", "validate", str(cfg), "-n", "2",
                            "--set", "algorithm.name=dqgd"], capture_output=True, text=True,
                           cwd=tmp_path)
        assert r.returncode == 2 and "biased" in r.stderr and len(r.stderr.splitlines()) == 1
