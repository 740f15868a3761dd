"""powersgd: its layouts and math, its two rounds in-process through psgd.steps.Rounds (every
rank a separate object, as under MPI), its config refusals, and real mpiexec runs on the MLP
whose bits per step are r (m + n) float32 values per layer, up and down."""

import numpy as np
import pytest

from psgd import algorithms, config
from psgd.compressors import get_compressor
from psgd.compressors.powersgd import layout, near_square
from psgd.errors import ConfigError, WireFormatError
from psgd.runtime import Streams
from psgd.steps import Received, Rounds, Uplink
from psgd.validation import check_params

CODEC_HEADER, WIRE_HEADER = 8, 32


def test_near_square_layout_pads_at_most_one_row():
    for d in range(1, 300):
        m, n = near_square(d)
        assert m * n >= d and m * n - d < m and abs(m - n) <= 1
    (L,) = layout(None, 10, 2)
    assert (L.m, L.n, L.r, L.size) == (4, 3, 2, 10)
    assert layout(None, 0, 2) == []
    a, b = layout([[3, 5], [5, 6]], 45, 4)
    assert (a.start, a.r, b.start, b.r) == (0, 3, 15, 4)  # r = min(rank, m, n)
    with pytest.raises(ValueError, match="cover 45 coordinates, the vector has 44"):
        layout([[3, 5], [5, 6]], 44, 1)


def test_bits_are_r_m_plus_n_float32_per_layer():
    c = get_compressor({"name": "powersgd", "rank": 2, "shapes": [[65, 32], [33, 10]]})
    d = 65 * 32 + 33 * 10
    x = np.random.default_rng(0).standard_normal(d)
    assert len(c.encode(x, np.random.default_rng(1))) == CODEC_HEADER + 4 * 2 * (97 + 43)
    assert c.p_size(d) == 2 * (65 + 33) and c.q_size(d) == 2 * (32 + 10)


def test_a_rank_r_matrix_is_recovered_and_the_error_is_a_projection():
    rng = np.random.default_rng(2)
    M = rng.standard_normal((12, 2)) @ rng.standard_normal((2, 9))
    c = get_compressor({"name": "powersgd", "rank": 2, "shapes": [[12, 9]]})
    y = c.decode(c.encode(M.ravel(), rng))
    assert np.abs(y - M.ravel()).max() < 1e-5 * np.abs(M).max()
    c1 = get_compressor({"name": "powersgd", "rank": 1, "shapes": [[12, 9]]})
    for _ in range(20):  # P^ P^^T M: never longer than M, and orthogonal to the residual
        X = rng.standard_normal((12, 9))
        y = c1.decode(c1.encode(X.ravel(), rng))
        assert y @ y <= X.ravel() @ X.ravel()
        assert abs(y @ (X.ravel() - y)) < 1e-5 * (X.ravel() @ X.ravel())


def test_round_messages_refuse_bad_bytes():
    c = get_compressor({"name": "powersgd", "rank": 2})
    d = 37
    good = c.factor_message(np.ones(c.p_size(d)), d)
    assert np.array_equal(c.round_values(0, good, d), np.ones(c.p_size(d)))
    for bad, why in ((good[:-1], "factor message of"), (good[:7], "shorter than"),
                     (c.factor_message(np.ones(c.q_size(d) + 1), d), "expected"),
                     (c.factor_message(np.full(c.p_size(d), np.nan), d), "NaN"),
                     (c.factor_message(np.ones(c.p_size(d)), d + 1), "d=38")):
        with pytest.raises(WireFormatError, match=why):
            c.round_values(0, bad, d)


class LS:
    """f_i(x) = 1/(2 m) ||A_i x - b_i||^2."""

    def __init__(self, A, b):
        self.A, self.b = A, b

    def grad(self, x):
        return self.A.T @ (self.A @ x - self.b) / len(self.b)


def make_alg(name, comp, n, d, gamma):
    cls = algorithms.get_algorithm_class(name)
    a = check_params("algorithm", cls.params, {"stepsize": gamma})
    cfg = {"algorithm": {"name": name, **a}, "compressor": comp.get_config(), "seed": 0}
    consts = algorithms.Constants(L=None, L_i=None, mu=None, d=d)
    return algorithms.build(cfg, comp, consts, np.full(n, 1.0 / n), tau=0)


def run_rounds(name, comp, locs, steps, gamma, seed=4):
    """The server's and every worker's Rounds, exchanging the bytes the loops would send."""
    n, d = len(locs), locs[0].A.shape[1]
    alg = make_alg(name, comp, n, d, gamma)
    uplink = Uplink(comp, alg, Streams(seed, n), d)
    ident = lambda x, g: x  # noqa: E731 - no regulariser
    server, ss = Rounds(comp, alg, d, seed, ident), alg.server_init(np.zeros(d))
    workers = [Rounds(comp, alg, d, seed, ident) for _ in range(n)]
    wss = [alg.worker_init(d) for _ in range(n)]
    xs = [None] * n
    out = np.empty(comp.max_nbytes(d) + 64, np.uint8)
    sizes = []
    model = out[:server.encode(ss.x, None, None, out)].copy()
    for k in range(steps):
        for i, w in enumerate(workers):
            xs[i] = w.apply(model, np.zeros(d))
        assert all(np.array_equal(x, ss.x) for x in xs), "a worker's replay left the server"
        assert all(np.array_equal(w.state.q, server.state.q) for w in workers)  # warm start
        batch = [Received(uplink, out[:w.first(wss[i], locs[i].grad(xs[i]), out)], i, 2 * k,
                          False) for i, w in enumerate(workers)]
        reply = server.reduce(batch)
        batch2 = [Received(uplink, out[:w.answer(wss[i], reply, out)], i, 2 * k + 1, False)
                  for i, w in enumerate(workers)]
        sizes.append([batch[0].payload.size, reply.size, batch2[0].payload.size])
        server.server_apply(ss, batch2, ident)
        model = out[:server.encode(ss.x, None, None, out)].copy()
        sizes[-1].append(model.size)
    return ss, wss, workers, alg, sizes


def least_squares(n=3, m=30, d=20, seed=0):
    rng = np.random.default_rng(seed)
    A, b = rng.standard_normal((n * m, d)), rng.standard_normal(n * m)
    x_star = np.linalg.lstsq(A, b, rcond=None)[0]
    return [LS(A[i * m:(i + 1) * m], b[i * m:(i + 1) * m]) for i in range(n)], x_star


@pytest.mark.parametrize("name", ["ef", "ef21"])
def test_rounds_in_process_keep_every_rank_on_one_model_and_converge(name):
    locs, x_star = least_squares()
    comp = get_compressor({"name": "powersgd", "rank": 1, "shapes": [[5, 4]]})
    ss, wss, workers, alg, sizes = run_rounds(name, comp, locs, 400, 0.1)
    # the bytes of each message: r (m + n) = 5 + 4 floats per step, each way
    assert sizes[0] == [CODEC_HEADER + 4 * 5, CODEC_HEADER + 4 * 5, CODEC_HEADER + 4 * 4,
                        CODEC_HEADER + 4 * 4]
    err0, err = np.linalg.norm(x_star), np.linalg.norm(ss.x - x_star)
    assert err < 1e-3 * err0, (name, err / err0)


def test_the_aggregate_is_the_sum_of_the_workers_decoded_messages():
    """sum_i w_i P^ Q_i^T (what the workers' memories moved by) equals P^ Q^T (what every
    rank applied) up to the float32 rounding of Q; so the EF invariant holds."""
    locs, _ = least_squares(d=12)
    comp = get_compressor({"name": "powersgd", "rank": 2, "shapes": [[4, 3]]})
    gamma = 0.1
    ss, wss, workers, alg, _ = run_rounds("ef", comp, locs, 1, gamma)
    # after one EF step from e = 0: e_i = gamma g_i - y_i, x = -P^ Q^T
    g = np.array([l.grad(np.zeros(12)) for l in locs])
    ys = np.array([gamma * gi - w.error for gi, w in zip(g, wss)])
    np.testing.assert_allclose(alg.weights @ ys, -ss.x, rtol=1e-6, atol=1e-9)


def test_full_rank_powersgd_with_ef_is_gradient_descent():
    """r = min(m, n): P^ spans the column space, so C(M) = M (up to float32) and EF is GD."""
    locs, _ = least_squares(d=12)
    comp = get_compressor({"name": "powersgd", "rank": 3, "shapes": [[4, 3]]})
    ss, _, _, _, _ = run_rounds("ef", comp, locs, 5, 0.1)
    x = np.zeros(12)
    for _ in range(5):
        x -= 0.1 * np.mean([l.grad(x) for l in locs], axis=0)
    np.testing.assert_allclose(ss.x, x, rtol=1e-5, atol=1e-7)


def test_a_worker_refuses_a_round_it_did_not_await():
    locs, _ = least_squares(d=12)
    comp = get_compressor({"name": "powersgd", "rank": 1, "shapes": [[4, 3]]})
    alg = make_alg("ef", comp, 3, 12, 0.1)
    w = Rounds(comp, alg, 12, 0, lambda x, g: x)
    with pytest.raises(WireFormatError, match="no round was awaited"):
        w.answer(alg.worker_init(12), comp.factor_message(np.ones(4), 12), np.empty(64, np.uint8))
    w.apply(comp.framed(np.zeros(0, np.uint8), 12), np.zeros(12))  # the start message
    with pytest.raises(WireFormatError, match="factor message of 0 bytes"):
        w.apply(comp.framed(np.zeros(0, np.uint8), 12), np.zeros(12))


def mlp_cfg(**alg):
    return {"seed": 0, "problem": {"name": "mlp", "hidden": [32]}, "data": {"source": "digits"},
            "algorithm": {"name": "ef", "stepsize": 0.5, **alg},
            "compressor": {"name": "powersgd", "rank": 2},
            "run": {"iterations": 150, "log_every": 50, "timeout_s": 30}}


@pytest.mark.parametrize("change,key,allowed", [
    ({"algorithm": {"name": "diana", "stepsize": 0.1}}, "algorithm.name", "ef or ef21"),
    ({"algorithm": {"name": "ef", "stepsize": "theory"}}, "algorithm.stepsize", "a number"),
    ({"run": {"mode": "async", "max_staleness": 2}}, "run.mode", "sync"),
    ({"run": {"servers": 2}}, "run.servers", "1"),
    ({"run": {"checkpoint_every": 10}}, "run.checkpoint_every", "null"),
    ({"run": {"downlink": {"compressor": {"name": "top_k", "k": 3}}}}, "run.downlink", "null"),
    ({"compressor": {"name": "powersgd", "shapes": [[3, 3]]}}, "compressor.shapes",
     "shapes whose m n add up to d = 2410"),
])
def test_config_refuses_what_the_rounds_do_not_support(change, key, allowed):
    cfg = mlp_cfg()
    for section, value in change.items():
        cfg[section] = value
    with pytest.raises(ConfigError) as exc:
        config.validate(cfg)
    text = str(exc.value)
    assert text.startswith(f"{key}: got ") and allowed in text and "\n" not in text


def test_config_accepts_ef_and_ef21():
    config.validate(mlp_cfg())
    config.validate(mlp_cfg(name="ef21"))


@pytest.mark.mpi
def test_powersgd_ef_trains_the_mlp_under_mpiexec_with_exact_bits(run_psgd):
    """Issue 15 acceptance: EF + powersgd (rank 2) on the MLP [64, 32, 10] over digits, 2
    workers: the training loss falls 10x and the held-out accuracy passes 90%; every step
    sends r (m + n) float32 values per layer up from each worker and down to it."""
    res = run_psgd(3, mlp_cfg(), timeout=180)
    assert res.returncode == 0, res.stderr
    s, rows = res.summary, res.metrics
    assert rows[-1]["loss"] < rows[0]["loss"] / 10, (rows[0]["loss"], rows[-1]["loss"])
    assert rows[-1]["test_accuracy"] > 0.9
    layers = [(65, 32), (33, 10)]            # [W; b] of each layer
    p = sum(2 * m for m, _ in layers)        # P floats per step (r = 2)
    q = sum(2 * n for _, n in layers)        # Q floats per step
    n_w, K = s["n_workers"], s["iterations"]
    # per logged step: exactly r (m + n) floats per layer each way, per worker
    for a, b in zip(rows, rows[1:]):
        steps = b["step"] - a["step"]
        assert b["payload_bits_up"] - a["payload_bits_up"] == steps * n_w * 32 * (p + q)
        if a["step"]:  # (the first model message carries no payload: every rank has x0)
            assert b["payload_bits_down"] - a["payload_bits_down"] == steps * n_w * 32 * (p + q)
    # the totals, headers included: 2 GRAD a step + BYE up; start, K ROUND, K - 1 MODEL, STOP down
    assert s["payload_bits_up_total"] == K * n_w * 32 * (p + q)
    assert s["payload_bits_down_total"] == n_w * 32 * (K * p + (K - 1) * q)
    assert s["bits_up_total"] == 8 * n_w * (2 * K * (WIRE_HEADER + CODEC_HEADER)
                                            + 4 * K * (p + q) + WIRE_HEADER)
    assert s["bits_down_total"] == 8 * n_w * (2 * K * (WIRE_HEADER + CODEC_HEADER)
                                              + 4 * (K * p + (K - 1) * q) + WIRE_HEADER)
    assert s["messages_up"] == n_w * (2 * K + 1) and s["messages_down"] == n_w * (2 * K + 1)


@pytest.mark.mpi
def test_a_stopped_powersgd_run_says_why_without_a_step_size_hint(tmp_path):
    """SIGTERM (SLURM's warning) stops a powersgd run, which writes no checkpoints: one line
    says so, and it does not end with the divergence advice to shrink the step size."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import yaml

    from psgd import mpiexec

    cfg = mlp_cfg()
    cfg["run"] = dict(cfg["run"], iterations=10**6, log_every=10)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    proc = subprocess.Popen([mpiexec.path(), "-n", "3", sys.executable, "-m", "psgd", "run",
                             str(tmp_path / "cfg.yaml"), "--out", str(out)], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not (out / "metrics.jsonl").exists() or (out / "metrics.jsonl").stat().st_size < 300:
            assert time.monotonic() < deadline and proc.poll() is None, "the run did not start"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    lines = [line for line in err.splitlines() if line.startswith("psgd:")]
    assert proc.returncode == 1 and len(lines) == 1, err
    assert "stopped by signal 15" in lines[0] and "writes no checkpoints" in lines[0], lines[0]
    assert "stepsize" not in lines[0], lines[0]
