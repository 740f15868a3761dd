"""perm_k (correlated permutation sparsifiers) and threshold: the properties their docstrings
state, beyond the generic codec contract, and perm_k's key in the runtime message path."""

import math

import numpy as np
import pytest

from psgd.compressors import get_compressor
from psgd.compressors.base import HEADER_NBYTES
from psgd.errors import ConfigError, WireFormatError
from psgd.runtime import Streams
from psgd.steps import CORRELATED, Uplink


def _perm(n):
    return get_compressor({"name": "perm_k", "n": n})


def _messages(c, xs, step_key, rng):
    """Every worker's decoded message at one step (the same step key, its own index)."""
    out = []
    for j, x in enumerate(xs):
        key = c.worker_key(step_key, j)
        buf = c.encode(x, rng, key=key)
        out.append(c.decode(buf, key=key, d=x.size))
    return out


@pytest.mark.parametrize("n,d", [(4, 12), (3, 10), (5, 5), (8, 3), (1, 7)])
def test_slices_partition_the_coordinates(n, d):
    c = _perm(n)
    for step in (1, 2, 99):
        parts = [c.indices(step, j, d) for j in range(n)]
        if d >= n:
            assert sorted(np.concatenate(parts).tolist()) == list(range(d))     # disjoint cover
            assert {p.size for p in parts} <= {d // n, -(-d // n)}
        else:
            assert all(p.size == 1 for p in parts)
            assert {int(p[0]) for p in parts} == set(range(d))                # each used
    assert c.omega(d) == pytest.approx(d / (d // n if d >= n else 1) - 1)


def test_each_worker_is_unbiased_with_omega_n_minus_1():
    rng = np.random.default_rng(0)
    n, d, draws = 4, 16, 4000
    c = _perm(n)
    x = rng.standard_normal(d)
    for j in (0, 3):
        ys = np.array([c.decode(c.encode(x, rng, key=c.worker_key(s, j)), key=c.worker_key(s, j),
                                d=d) for s in range(draws)])
        se = ys.std(axis=0) / math.sqrt(draws)
        assert (np.abs(ys.mean(axis=0) - x) <= 5 * se).all()
        ratio = (((ys - x) ** 2).sum(axis=1) / (x @ x))
        assert np.allclose(ratio.mean(), n - 1, rtol=0.05) and c.omega(d) == n - 1


def test_average_meets_the_ab_inequality_with_a_equal_b_equal_1():
    """E||mean_j C_j(x_j) - xbar||^2 = mean_j ||x_j||^2 - ||xbar||^2 (n | d), and equal x_j
    average back exactly, every draw: what independent rand_k cannot do."""
    rng = np.random.default_rng(1)
    n, d = 4, 20
    c = _perm(n)
    same = rng.standard_normal(d)
    for step in range(20):
        avg = np.mean(_messages(c, [same] * n, step, rng), axis=0)
        assert np.allclose(avg, same.astype(np.float32), rtol=1e-7, atol=0)
    rk = get_compressor({"name": "rand_k", "k": d // n})        # independent, same bits
    for spread in (3.0, 0.3):                                  # dissimilar, similar workers
        xs = [same + spread * rng.standard_normal(d) for _ in range(n)]
        xbar = np.mean(xs, axis=0)
        errs = [((np.mean(_messages(c, xs, s, rng), axis=0) - xbar) ** 2).sum() for s in range(1500)]
        expect = np.mean([x @ x for x in xs]) - xbar @ xbar
        assert abs(np.mean(errs) - expect) < 5 * np.std(errs) / math.sqrt(1500) + 1e-9
        # independent rand_k: (n - 1)/n mean_j ||x_j||^2; PermK wins iff ||xbar||^2 > that / (n - 1)
        indep = np.mean([((np.mean([rk.decode(rk.encode(x, rng, key=1000 * s + j), key=1000 * s + j,
                                              d=d) for j, x in enumerate(xs)], axis=0) - xbar) ** 2).sum()
                         for s in range(500)])
        theirs = (n - 1) / n * np.mean([x @ x for x in xs])
        assert abs(indep - theirs) < 0.1 * theirs
        if spread < 1:
            assert indep > 5 * expect


def test_values_only_with_a_key_and_errors():
    c = _perm(4)
    x = np.arange(1.0, 13.0)
    rng = np.random.default_rng(2)
    buf = c.encode(x, rng, key=c.worker_key(5, 2))
    assert len(buf) == HEADER_NBYTES + 4 * 3                       # 3 float32 values, no indices
    with pytest.raises(WireFormatError, match="no indices"):
        c.decode(buf, d=12)
    with pytest.raises(WireFormatError, match="worker 4"):
        c.decode(buf, key=c.worker_key(5, 4), d=12)
    with pytest.raises(WireFormatError, match="worker 1's 3"):
        c.decode(buf[:-1], key=c.worker_key(5, 1), d=12)
    free = c.encode(x, rng)                                        # no key: indices travel
    assert len(free) > len(buf) and np.isfinite(c.decode(free, d=12)).all()


def test_uplink_gives_all_workers_one_step_stream():
    """The runtime's keys: the same low 64 bits for every worker at a seq, the worker above."""
    c = _perm(3)

    class Alg:
        sends_full = False

        class hyper:
            message_scale = 1.0

    up = Uplink(c, Alg, Streams(seed=7, n_workers=3), d=30)
    keys = [up.key(c, j, seq=4) for j in range(3)]
    assert len({k % 2**64 for k in keys}) == 1 and [k // 2**64 for k in keys] == [0, 1, 2]
    assert keys[0] % 2**64 == Streams(7, 3).shared_key(CORRELATED, 4)
    assert up.key(c, 0, seq=5) != keys[0]
    rk = get_compressor({"name": "rand_k", "k": 3})
    assert up.key(rk, 1, 4) == Streams(7, 3).shared_key(1, 4)       # others unchanged


def test_run_refuses_a_worker_count_other_than_n():
    from psgd.config import check_launch, validate
    cfg = validate({"seed": 0, "problem": {"name": "logistic"},
                       "data": {"source": "synthetic", "n_samples": 100, "n_features": 8},
                       "algorithm": {"name": "diana"}, "compressor": {"name": "perm_k", "n": 4}})
    check_launch(cfg, 4)
    with pytest.raises(ConfigError, match=r"compressor\.n: got 4; allowed: the run's worker count 3"):
        check_launch(cfg, 3)


# -- threshold -----------------------------------------------------------------------------

def test_threshold_keeps_exactly_the_large_coordinates():
    c = get_compressor({"name": "threshold", "threshold": 0.5})
    x = np.array([0.1, -0.7, 0.5, 0.49, 3.0, 0.0, -0.5, 0.2])
    buf = c.encode(x, np.random.default_rng(0))
    y = c.decode(buf)
    keep = np.abs(x) >= 0.5
    assert np.array_equal(y, np.where(keep, x.astype(np.float32), 0.0))
    assert len(buf) == HEADER_NBYTES + 4 + 4 * 4 + 4           # count, 4 values, 4 one-byte gaps
    err = ((y - x) ** 2).sum()
    assert err == pytest.approx(c.delta_of(x) * (x @ x)) and c.delta(8) == 1.0
    assert c.delta_of(np.full(5, 0.1)) == 1.0                  # nothing sent: no contraction


def test_threshold_dense_form_and_damage():
    c = get_compressor({"name": "threshold", "threshold": 1e-3})
    x = np.random.default_rng(1).standard_normal(100)
    buf = c.encode(x, np.random.default_rng(0))
    assert len(buf) == HEADER_NBYTES + 4 + 4 * 100 == c.max_nbytes(100)   # dense: shorter
    assert np.allclose(c.decode(buf), x.astype(np.float32))
    bad = buf.copy()
    bad[HEADER_NBYTES + 4:HEADER_NBYTES + 8] = np.array([1e-4], "<f4").view(np.uint8)
    with pytest.raises(WireFormatError, match="below the threshold"):
        c.decode(bad)


def test_threshold_is_refused_where_a_contraction_is_needed():
    from psgd.config import validate
    with pytest.raises(ConfigError, match="delta = 1"):
        validate({"seed": 0, "problem": {"name": "logistic"},
                     "data": {"source": "synthetic", "n_samples": 100, "n_features": 8},
                     "algorithm": {"name": "ef21", "stepsize": "theory"},
                     "compressor": {"name": "threshold", "threshold": 0.1}})


# -- a real run: 4 MPI workers, one permutation per step -----------------------------------

@pytest.mark.mpi
def test_perm_k_run_under_mpi_sends_d_over_n_values_and_converges(run_psgd):
    from psgd.problems import dimension
    cfg = {"seed": 3, "problem": {"name": "logistic", "l2": 0.05},
           "data": {"source": "synthetic", "n_samples": 600, "n_features": 32},
           "algorithm": {"name": "diana"}, "compressor": {"name": "perm_k", "n": 4},
           "run": {"iterations": 400, "log_every": 100, "timeout_s": 60}}
    d = dimension(cfg["problem"], cfg["data"])
    res = run_psgd(5, cfg, timeout=120)
    assert res.returncode == 0, res.stderr
    s = res.summary
    assert s["n_workers"] == 4 and s["omega"] == pytest.approx(d / (d // 4) - 1)
    grads = s["messages_up"] - 4                              # each worker also sends one BYE
    # every gradient message: envelope 32 + codec header 8 + its slice's float32 values
    slices = [(j + 1) * d // 4 - j * d // 4 for j in range(4)]
    assert grads % 4 == 0
    assert s["bits_up_total"] == 8 * (grads // 4 * sum(32 + 8 + 4 * k for k in slices) + 4 * 32)
    assert s["final_subopt"] < 1e-3 * res.metrics[0]["subopt"]
    bad = run_psgd(4, cfg, timeout=60, out="bad")             # 3 workers: refused, one line
    assert bad.returncode == 2 and "compressor.n: got 4" in bad.stderr
