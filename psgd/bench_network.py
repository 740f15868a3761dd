"""``psgd bench network``: time to accuracy on an emulated cluster network, against Allreduce GD.

Every rank runs in its own network namespace with a veth NIC shaped to ``--rate`` both ways
(:mod:`psgd.netemu`; MPI over TCP, no shared memory). On the same emulated nodes, in one
invocation, it measures:

* a calibration row: a ping-pong of one large message between two nodes (the link's real
  payload bandwidth at each rate);
* the baselines: data-parallel GD with ``MPI.Allreduce`` on n ranks in float64 and float32
  (:mod:`psgd.bench_network_mpi`), and psgd's parameter server uncompressed (``gd``);
* psgd configs: DIANA / DQGD / EF21 with compressed uplinks and downlinks (``--methods``,
  ``--configs``), each run as users run it: ``mpiexec ... python -m psgd run CFG``.

Problem: a diagonal quadratic (O(d) gradients) with the same seed, start and eps for every
method: stop when f(x_k) - f* <= eps (f(x0) - f*). Each method's step is the best of the
same grid (``--stepsizes``, in units of 1/L, plus its theory rule) found unshaped at
``--tune-dim``. Measured: iterations to eps (unshaped run; sync iterates do not depend on
timing), seconds per step (median over steps) unshaped and at every rate, counted bits
per step, the server's per-phase time. Derived: time to eps = iterations x seconds per step.
``--predict`` adds the cost model's (:mod:`psgd.costmodel`) predictions beside the
measurements and a projection to large clusters. The emulation has no added latency
(the kernel has no netem): latency is a model term only.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from . import mpiexec
import yaml

from . import costmodel, netemu
from .netemu import fmt_rate

PHASES = ("wait", "decode", "apply", "encode", "send")

TERNARY = {"name": "random_dithering", "levels": 1, "norm": "inf", "block_size": 1024}
NATURAL = {"name": "natural"}
TOPK = {"name": "top_k", "ratio": 0.05}
SIGN = {"name": "sign", "block_size": 1024}


def _rd(s):
    return {"name": "random_dithering", "levels": s, "norm": "inf", "block_size": 1024}


def _m(alg, comp=None, down=None):
    return {"kind": "psgd", "algorithm": {"name": alg},
            "compressor": comp or {"name": "identity", "dtype": "float64"}, "downlink": down}


#: the built-in methods; "+X" names the downlink compressor (none: the float64 model)
METHODS = {
    "allreduce-f64": {"kind": "allreduce", "dtype": "float64"},
    "allreduce-f32": {"kind": "allreduce", "dtype": "float32"},
    "gd": _m("gd"),
    "diana-natural+natural": _m("diana", NATURAL, NATURAL),
    "diana-ternary+ternary": _m("diana", TERNARY, TERNARY),
    "diana-ternary": _m("diana", TERNARY),
    "dqgd-ternary+ternary": _m("dqgd", TERNARY, TERNARY),
    "ef21-ternary+ternary": _m("ef21", TERNARY, TERNARY),
    "diana-rd4+rd4": _m("diana", _rd(4), _rd(4)),
    "diana-rd8+rd8": _m("diana", _rd(8), _rd(8)),
    "ef21-sign+sign": _m("ef21", SIGN, SIGN),
    "ef21-topk+topk": _m("ef21", TOPK, TOPK),
    "dqgd-natural+natural": _m("dqgd", NATURAL, NATURAL),
    "diana-ternary+natural": _m("diana", TERNARY, NATURAL),
}


class Usage(Exception):
    """Bad arguments: one line, exit 2."""


class Failed(Exception):
    """A run the table needs failed: one line, exit 1."""


# -- arguments ----------------------------------------------------------------------------

def _parser():
    p = argparse.ArgumentParser(prog="psgd bench network", description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", default="100mbit,1gbit,10gbit",
                   help="comma-separated link rates (kbit, mbit, gbit)")
    p.add_argument("--dims", default="1000000", help="comma-separated dimensions d")
    p.add_argument("--workers", type=int, default=4, help="n workers (psgd runs n + S ranks)")
    p.add_argument("--servers", default="1",
                   help="comma-separated server counts S (run.servers); each psgd method runs "
                        "at every S, S > 1 as METHOD@S<S> on S more emulated nodes, with the "
                        "step chosen for S = 1")
    p.add_argument("--methods", default=",".join(METHODS),
                   help=f"comma-separated built-in methods: {', '.join(METHODS)}")
    p.add_argument("--configs", default="", metavar="FILE,...",
                   help="psgd configs to add; their algorithm, compressor and run.downlink are "
                        "used (a numeric algorithm.stepsize is kept, else it is tuned)")
    p.add_argument("--stepsizes", default="theory,1.5,1,0.5,0.25,0.125",
                   help="the step grid in units of 1/L, and/or theory")
    p.add_argument("--tune-dim", type=float, default=None,
                   help="d at which the step grid is searched (default: the smallest --dims)")
    p.add_argument("--eps-dim", type=float, default=None,
                   help="d at which iterations to eps are measured (default: each d itself; "
                        "then the table says the count is carried over)")
    p.add_argument("--reuse", metavar="NETWORK.json",
                   help="take each method's step and iterations to eps from an earlier run's "
                        "network.json (same workers, eps and problem) instead of measuring "
                        "them again")
    p.add_argument("--from-json", metavar="NETWORK.json",
                   help="run nothing: the table, projection and PNG of an earlier (possibly "
                        "interrupted) run's network.json")
    p.add_argument("--eps", type=float, default=1e-6, help="relative to f(x0) - f*")
    p.add_argument("--mu", type=float, default=0.1)
    p.add_argument("--L", type=float, default=1.0)
    p.add_argument("--max-iters", type=int, default=1000,
                   help="iteration cap of a run to eps; a method that needs more is left out")
    p.add_argument("--steps", type=int, default=6, help="steps per shaped run (at most)")
    p.add_argument("--shaped-budget", type=float, default=60.0,
                   help="seconds a shaped run should take; fewer steps (>= 3) when slower")
    p.add_argument("--predict", action="store_true",
                   help="the cost model's predictions beside the measurements, and a projection")
    p.add_argument("--latency", default="20us", help="link latency a for the projection")
    p.add_argument("--timeout", type=float, default=1200.0, help="seconds per MPI job")
    p.add_argument("--out", default="runs/bench_network", help="directory for table, JSON, PNG")
    return p


def _floats(text, name):
    try:
        vals = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise Usage(f"{name}: got {text!r}; allowed: comma-separated numbers") from None
    if not vals or min(vals) <= 0:
        raise Usage(f"{name}: got {text!r}; allowed: comma-separated positive numbers")
    return vals


def _latency(text):
    units = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}
    for unit in ("ns", "us", "ms", "s"):
        if text.endswith(unit):
            try:
                v = float(text[: -len(unit)])
            except ValueError:
                break
            if v >= 0:
                return v * units[unit]
    raise Usage(f"--latency: got {text!r}; allowed: a number with ns, us, ms or s, e.g. 20us")


def parse_args(argv):
    args = _parser().parse_args(argv)
    try:
        args.rates = [netemu.parse_rate(r) for r in args.rate.split(",") if r.strip()]
    except ValueError as exc:
        raise Usage(str(exc)) from None
    if not args.rates:
        raise Usage(f"--rate: got {args.rate!r}; allowed: e.g. 100mbit,1gbit,10gbit")
    args.dim_list = [int(v) for v in _floats(args.dims, "--dims")]
    if args.workers < 2:
        raise Usage(f"--workers: got {args.workers}; allowed: an integer >= 2")
    for name in ("steps", "max_iters"):
        if getattr(args, name) < 1:
            raise Usage(f"--{name.replace('_', '-')}: got {getattr(args, name)}; allowed: >= 1")
    if not 0 < args.eps < 1:
        raise Usage(f"--eps: got {args.eps}; allowed: a number in (0, 1)")
    grid = []
    for v in args.stepsizes.split(","):
        v = v.strip()
        if v == "theory":
            grid.append("theory")
            continue
        try:
            c = float(v)
        except ValueError:
            c = -1
        if c <= 0:
            raise Usage(f"--stepsizes: got {v!r}; allowed: theory or positive multiples of 1/L")
        grid.append(c)
    # largest steps first (so a diverging one is found before the cap tightens), theory last
    args.grid = sorted((g for g in grid if g != "theory"), reverse=True) + \
        (["theory"] if "theory" in grid else [])
    args.tune_dim = int(args.tune_dim) if args.tune_dim else min(args.dim_list)
    args.eps_dim = int(args.eps_dim) if args.eps_dim else None
    args.latency_s = _latency(args.latency)
    args.server_list = sorted({int(v) for v in _floats(args.servers, "--servers")})
    if args.server_list[0] != 1 or any(v != int(v) for v in _floats(args.servers, "--servers")):
        raise Usage(f"--servers: got {args.servers!r}; allowed: integers, 1 among them "
                    f"(the S > 1 runs take the step chosen at S = 1), e.g. 1,2")
    args.method_specs = _methods(args)
    args.reused = _reused(args) if args.reuse else {}
    return args


def _methods(args):
    from .config import read_yaml, validate
    from .errors import ConfigError

    specs = {}
    names = [m.strip() for m in args.methods.split(",") if m.strip()]
    for name in names:
        if name not in METHODS:
            raise Usage(f"--methods: unknown method {name!r}; allowed: {', '.join(METHODS)}")
        specs[name] = dict(METHODS[name])
    for path in [p for p in args.configs.split(",") if p.strip()]:
        try:
            raw = read_yaml(path)
            down = (raw.get("run") or {}).get("downlink")
            spec = {"kind": "psgd", "algorithm": dict(raw.get("algorithm") or {}),
                    "compressor": raw.get("compressor") or {"name": "identity"},
                    "downlink": down["compressor"] if down else None}
            validate(_psgd_config(spec, 16, "theory", 1, None, args, "unused"))
        except (ConfigError, TypeError, KeyError) as exc:
            raise Usage(f"--configs {path}: {exc}") from None
        specs[os.path.splitext(os.path.basename(path))[0]] = spec
    if not specs:
        raise Usage("--methods/--configs: nothing to run")
    for name, spec in list(specs.items()):
        if spec["kind"] == "psgd":
            for servers in args.server_list[1:]:
                specs[f"{name}@S{servers}"] = dict(spec, servers=servers, step_from=name)
    return specs


def _servers(spec):
    return spec.get("servers", 1)


# -- configs and runs ---------------------------------------------------------------------

def _problem(d, args):
    return {"name": "quadratic", "n_features": d, "mu": args.mu, "L": args.L}


def _psgd_config(spec, d, step, iterations, target, args, out):
    alg = dict(spec["algorithm"])
    if step is not None:
        alg["stepsize"] = step if step == "theory" else step / args.L
    return {"seed": 0, "problem": _problem(d, args), "algorithm": alg,
            "compressor": spec["compressor"],
            "run": {"mode": "sync", "iterations": iterations, "target": target,
                    "log_every": _log_every(spec, iterations, target), "servers": _servers(spec),
                    "timeout_s": min(600.0, args.timeout),
                    "downlink": {"compressor": spec["downlink"]} if spec["downlink"] else None},
            "output": {"dir": out}}



def _log_every(spec, iterations, target):
    """Every step, except a timed run on S > 1 servers: there a logged step gathers the whole
    model on server 0 (a d-vector over the network that no training step sends), so it logs
    only its first and last step and its seconds per step are their mean. (A run to eps logs
    every step: sharded servers test the target at logged steps.)"""
    return 1 if target is not None or _servers(spec) == 1 else max(1, iterations)


def _tail(text):
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "(no output)"


class Runner:
    """Runs psgd, the Allreduce baseline and the ping-pong inside one emulated cluster."""

    def __init__(self, cluster, args, work):
        self.cl = cluster
        self.args = args
        self.work = work
        self.count = 0
        self.mpiexec = mpiexec.path()
        if self.mpiexec is None:
            raise Failed("mpiexec not found (install psgd with the mpich extra)")

    def _job(self, argvs, what):
        cmd = self.cl.mpmd(self.mpiexec, argvs)
        try:
            proc = netemu.run_job(cmd, self.args.timeout, env=self.cl.env(), cwd=self.work)
        except subprocess.TimeoutExpired:
            raise Failed(f"{what}: no end within --timeout {self.args.timeout:g} s; its ranks "
                         f"were killed") from None
        return proc

    def _dir(self, tag):
        self.count += 1
        return os.path.join(self.work, f"{self.count:03d}-{tag}")

    def psgd(self, spec, d, step, iterations, target, tag):
        """One psgd run; returns its measurements or {"failed": reason}."""
        out = self._dir(tag)
        cfg = _psgd_config(spec, d, step, iterations, target, self.args, out)
        path = out + ".yaml"
        with open(path, "w") as fh:
            yaml.safe_dump(cfg, fh)
        argv = [sys.executable, "-m", "psgd", "run", path, "--out", out]
        proc = self._job([argv] * (self.args.workers + _servers(spec)), f"psgd run {tag}")
        if proc.returncode != 0:
            return {"failed": f"exit {proc.returncode}: {_tail(proc.stderr)}"}
        with open(os.path.join(out, "summary.json")) as fh:
            s = json.load(fh)
        with open(os.path.join(out, "metrics.jsonl")) as fh:
            recs = [json.loads(line) for line in fh]
        k = s["iterations"]
        every_step = all(r["step"] == i for i, r in enumerate(recs))

        def per_step(key):
            if every_step:  # the median over steps
                return float(np.median(np.diff([r[key] for r in recs]))) if k else math.nan
            # logged at 0 and k only: the mean; k models went down, the first before step 1
            return (recs[-1][key] - (recs[0][key] if key == "time_s" else 0)) / k
        n = self.args.workers
        row = {"status": s["status"], "iterations": k, "stepsize": s["stepsize"],
               "stepsize_rule": s["stepsize_rule"], "run_dir": out,
               "s_per_step": per_step("time_s"),
               "bits_up_worker": per_step("bits_up") / n,
               "bits_down_worker": per_step("bits_down") / n,
               "server_ms": {ph: 1e3 * s["server_time_s"].get(ph, 0.0) / max(k, 1)
                             for ph in PHASES}}
        return row

    def allreduce(self, spec, d, step, iterations, target, tag):
        out = self._dir(tag)
        gamma = 1.0 / self.args.L if step == "theory" else step / self.args.L
        job = {"config": {"seed": 0, "problem": _problem(d, self.args)}, "dtype": spec["dtype"],
               "stepsize": gamma, "iterations": iterations, "target": target}
        with open(out + ".json", "w") as fh:
            json.dump(job, fh)
        argv = [sys.executable, "-m", "psgd.bench_network_mpi", "allreduce", out + ".json",
                out + ".out.json"]
        proc = self._job([argv] * self.args.workers, f"allreduce {tag}")
        if proc.returncode != 0:
            return {"failed": f"exit {proc.returncode}: {_tail(proc.stderr)}"}
        with open(out + ".out.json") as fh:
            r = json.load(fh)
        bits = r["bits_per_rank_per_step"]
        return {"status": r["status"], "iterations": r["iterations"], "stepsize": gamma,
                "stepsize_rule": "1/L (GD)" if step == "theory" else "grid",
                "s_per_step": float(np.median(r["step_s"])) if r["step_s"] else float("nan"),
                "bits_up_worker": bits, "bits_down_worker": bits, "server_ms": None}

    def run(self, spec, *a):
        return (self.allreduce if spec["kind"] == "allreduce" else self.psgd)(spec, *a)

    def pingpong(self, rate):
        # about 0.25 s per one-way trip at the rate, 1..64 MiB
        nbytes = int(min(64 << 20, max(1 << 20, (rate or 5e8) * 0.25 / 8)))
        out = self._dir(f"pingpong-{fmt_rate(rate)}") + ".json"
        argv = [sys.executable, "-m", "psgd.bench_network_mpi", "pingpong", str(nbytes), "3", out]
        proc = self._job([argv, argv], "ping-pong")
        if proc.returncode != 0:
            raise Failed(f"ping-pong at {fmt_rate(rate)} failed: {_tail(proc.stderr)}")
        with open(out) as fh:
            return json.load(fh)


# -- the benchmark ------------------------------------------------------------------------

def _target(d, args):
    """eps (f(x0) - f*) for the benchmark's problem at dimension d, computed as psgd does."""
    from . import config, problems

    cfg = config.validate({"seed": 0, "problem": _problem(d, args)})
    ps = problems.make_problem(cfg["problem"], cfg["data"], cfg["seed"], args.workers)
    _, f_star = problems.solve(ps)
    x0 = ps.initial_point()
    gap = float(ps.global_objective.value(x0) + ps.reg.value(x0) - f_star)
    return args.eps * gap, gap


def _reused(args):
    """{method: (grid step, to-eps record)} from an earlier network.json."""
    try:
        with open(args.reuse) as fh:
            prev = json.load(fh)
        same = {k: prev[k] for k in ("workers", "eps", "mu", "L")}
        if same != {"workers": args.workers, "eps": args.eps, "mu": args.mu, "L": args.L}:
            raise Usage(f"--reuse {args.reuse}: made with {same}; this run has workers = "
                        f"{args.workers}, eps = {args.eps}, mu = {args.mu}, L = {args.L}")
        entry = prev["dims"][0]
        rows = [r for r in entry["rows"] if r["rate_bps"] is None]
    except (OSError, ValueError, KeyError, IndexError) as exc:
        raise Usage(f"--reuse {args.reuse}: not a network.json ({exc})") from None
    args.eps_dim = entry["eps_dim"]
    return {r["method"]: (r["grid_step"], {"status": "converged", "iterations": r["iterations"],
                                           "stepsize": r["stepsize"], "reused": args.reuse})
            for r in rows}


def tune(runner, name, spec, d, target, args, log, chosen):
    """The grid step with the fewest iterations to eps at d (unshaped); its run is kept.
    A method run on S > 1 servers takes its S = 1 form's step (the same math, other NICs)."""
    alg = spec.get("algorithm", {})
    fixed = alg.get("stepsize") not in (None, "theory") if spec["kind"] == "psgd" else False
    grid = [float(alg["stepsize"]) * args.L] if fixed else args.grid
    if spec.get("step_from"):
        if spec["step_from"] not in chosen:
            return None, [{"step": None, "iterations": None,
                           "why": f"{spec['step_from']} (its S = 1 form) has no step"}]
        grid = [chosen[spec["step_from"]]["step"]]
    best, tried = None, []
    skip_numeric = False
    for step in grid:
        if skip_numeric and step != "theory":
            continue
        cap = best["iterations"] if best else args.max_iters
        r = runner.run(spec, d, step, cap, target, f"{name}-tune-{step}")
        ok = "failed" not in r and r["status"] == "converged"
        tried.append({"step": step, "iterations": r.get("iterations") if ok else None,
                      "why": None if ok else r.get("failed", f"not at eps in {cap} steps")})
        log(f"  tune {name:<24} step {step!s:>6}: "
            + (f"{r['iterations']} iterations" if ok else tried[-1]["why"][:120]))
        if ok and (best is None or r["iterations"] < best["iterations"]):
            best = dict(r, grid_step=step)
        elif best is not None:
            # below the best step iterations grow again: smaller grid steps are slower still
            skip_numeric = True
    return best, tried


def shaped_steps(args, predicted_s):
    if not math.isfinite(predicted_s) or predicted_s <= 0:
        return args.steps
    return int(max(3, min(args.steps, args.shaped_budget / predicted_s)))


def predict_step(row, unshaped, bw_unshaped, bw, n):
    """The model's seconds per step at link payload rate bw, from the unshaped run."""
    link_u, link = costmodel.Link(bw_unshaped), costmodel.Link(bw)
    if row["kind"] == "allreduce":
        bits = unshaped["bits_up_worker"] / (2 * (n - 1) / n)
        net_u = costmodel.allreduce_network_s(bits, n, link_u)
        net = costmodel.allreduce_network_s(bits, n, link)
    else:
        b_up, b_down = unshaped["bits_up_worker"], unshaped["bits_down_worker"]
        servers = row.get("servers", 1)
        net_u = costmodel.ps_network_s(b_up, b_down, n, servers, link_u)
        net = costmodel.ps_network_s(b_up, b_down, n, servers, link)
    compute = costmodel.compute_from_unshaped(unshaped["s_per_step"], net_u)
    return compute + net, net


def bench(args, cluster, work, log, save=lambda result: None):
    """Method by method: step search, iterations to eps, then the unshaped and shaped rows at
    every d; ``save(result)`` after each method, so an interrupted run keeps what it measured."""
    runner = Runner(cluster, args, work)
    result = {"netns_prefix": cluster.prefix, "workers": args.workers, "eps": args.eps,
              "mu": args.mu, "L": args.L, "rates_bps": args.rates, "latency_note":
              "bandwidth only: the emulated links add no latency (no netem in this kernel); "
              "latency appears only in the cost model", "calibration": [], "dims": []}
    chosen, tuned_runs, left_out, to_eps_runs = {}, {}, {}, {}
    result.update(left_out=left_out, steps=chosen)
    for d in args.dim_list:
        target, gap = _target(d, args)
        result["dims"].append({"d": d, "target": target, "f0_minus_fstar": gap,
                               "eps_dim": args.eps_dim or d, "rows": []})
    tgt_tune = bw = None
    for name, spec in args.method_specs.items():
        if name in args.reused:
            step, to_eps = args.reused[name]
            chosen[name] = {"step": step, "tried": f"reused from {args.reuse}"}
            to_eps_runs[name, args.eps_dim] = to_eps
            log(f"  {name}: step and iterations to eps reused from {args.reuse}")
        else:
            if tgt_tune is None:  # steps: searched at tune_dim, unshaped
                tgt_tune, _ = _target(args.tune_dim, args)
                log(f"step sizes: grid {args.grid} (x 1/L) searched unshaped at "
                    f"d = {args.tune_dim}")
            best, tried = tune(runner, name, spec, args.tune_dim, tgt_tune, args, log, chosen)
            if best is None:
                left_out[name] = (f"no step of the grid reached eps at d = {args.tune_dim} "
                                  f"({tried[-1]['why']})")
                log(f"  left out {name}: {left_out[name]}")
                continue
            chosen[name] = {"step": best["grid_step"], "tried": tried}
            tuned_runs[name] = best
        if bw is None:
            bw = calibrate(runner, result, log)
        for entry in result["dims"]:
            try:
                entry["rows"] += measure(runner, name, spec, entry["d"], chosen[name],
                                         tuned_runs, to_eps_runs, bw, args, log)
            except Failed as exc:
                left_out[f"{name} at d = {entry['d']}"] = str(exc)
                log(f"  left out {name} at d = {entry['d']}: {exc}")
            _ratios(entry["rows"])
        save(result)
    if not chosen:
        raise Failed("no method reached eps: "
                     + "; ".join(f"{k}: {v}" for k, v in left_out.items()))
    return result


def calibrate(runner, result, log):
    """The ping-pong row at every condition; {rate or None: measured bits/s}."""
    for rate in [None] + list(runner.args.rates):
        runner.cl.shape(rate)
        pp = runner.pingpong(rate)
        result["calibration"].append({"rate_bps": rate, **pp})
        log(f"calibration ping-pong {fmt_rate(rate):>9}: {pp['bandwidth_bps'] / 1e6:9.1f} Mbit/s "
            f"({pp['nbytes'] >> 20} MiB messages, median of 3 round trips)")
    runner.cl.shape(None)
    return {c["rate_bps"]: c["bandwidth_bps"] for c in result["calibration"]}


def measure(runner, name, spec, d, chosen, tuned_runs, to_eps_runs, bw, args, log):
    """The rows of one method at d: unshaped, then every rate."""
    n = args.workers
    cluster = runner.cl
    eps_d = args.eps_dim or d
    step = chosen["step"]
    # iterations to eps: the unshaped run to eps (the tuning run when it is the same)
    if (name, eps_d) in to_eps_runs:
        to_eps = to_eps_runs[name, eps_d]
    elif eps_d == args.tune_dim:
        to_eps = tuned_runs[name]
    else:
        to_eps = runner.run(spec, eps_d, step, args.max_iters, _target(eps_d, args)[0],
                            f"{name}-eps-{eps_d}")
        to_eps_runs[name, eps_d] = to_eps
    if "failed" in to_eps or to_eps["status"] != "converged":
        raise Failed(f"{name} at d = {eps_d}: not at eps "
                     f"({to_eps.get('failed', to_eps['status'])})")
    iters = to_eps["iterations"]
    # unshaped timing at d: the to-eps run itself when it was at d, else a short run
    if d == eps_d and "reused" not in to_eps and _servers(spec) == 1:
        unshaped = to_eps
    else:
        unshaped = runner.run(spec, d, step, args.steps, None, f"{name}-unshaped-{d}")
    if "failed" in unshaped:
        raise Failed(f"{name} unshaped at d = {d}: {unshaped['failed']}")
    kind = spec["kind"]
    base = {"method": name, "kind": kind, "servers": _servers(spec), "d": d, "grid_step": step,
            "stepsize": to_eps["stepsize"], "iterations": iters,
            "iterations_source": f"measured unshaped at d = {eps_d}"
            + (f" by an earlier run ({to_eps['reused']})" if "reused" in to_eps else "")
            + (" (carried over to this d)" if eps_d != d else "")}
    rows = [dict(base, rate_bps=None, **_measured(unshaped))]
    for rate in args.rates:
        pred, _ = predict_step(rows[0], unshaped, bw[None], bw[rate], n)
        k = shaped_steps(args, pred)
        cluster.shape(rate)
        try:
            r = runner.run(spec, d, step, k, None, f"{name}-{fmt_rate(rate)}-{d}")
        finally:
            cluster.shape(None)
        if "failed" in r:
            raise Failed(f"{name} at {fmt_rate(rate)}, d = {d}: {r['failed']}")
        rows.append(dict(base, rate_bps=rate, steps_timed=k, **_measured(r)))
    for row in rows:
        row["t_eps_s"] = row["iterations"] * row["s_per_step"]
        pred, net = predict_step(row, unshaped, bw[None], bw[row["rate_bps"]], n)
        row["pred_s_per_step"], row["pred_network_share"] = pred, net / pred if pred else 0
        row["pred_t_eps_s"] = iters * pred
    log("  " + ", ".join(f"{fmt_rate(r['rate_bps'])} {r['s_per_step'] * 1e3:.1f} ms"
                         for r in rows) + f"  per step: {name}, d = {d}, {iters} iterations")
    return rows


def _measured(r):
    keys = ("s_per_step", "bits_up_worker", "bits_down_worker", "server_ms", "run_dir")
    return {k: r.get(k) for k in keys}


def _ratios(rows):
    ref = {r["rate_bps"]: r["t_eps_s"] for r in rows if r["method"] == "allreduce-f64"}
    for r in rows:
        r["vs_allreduce_f64"] = r["t_eps_s"] / ref[r["rate_bps"]] if r["rate_bps"] in ref \
            else None


# -- output -------------------------------------------------------------------------------

def _fmt_s(v):
    if v is None or not math.isfinite(v):
        return "-"
    return f"{v:.3g}" if v < 100 else f"{v:.0f}"


def table(result, predict):
    lines = [f"psgd bench network: {result['workers']} workers (+1 server for psgd, S for "
             f"METHOD@S<S>; Allreduce on {result['workers']} ranks), one network namespace per "
             f"rank, tbf both ways (prefix {result['netns_prefix']})",
             "measured: s/step (median over steps; @S runs: the mean of their timed steps, "
             "logging only the first and last, which gather the model), bits per step (counted; Allreduce: 2(n-1)/n "
             "of the vector per rank, derived), iterations to eps (unshaped run), server ms/step "
             "(mean); derived: t_eps = iterations x s/step, ratio = t_eps / Allreduce-f64's",
             result["latency_note"], "",
             "calibration (ping-pong, large message):"]
    for c in result["calibration"]:
        ok = "" if c["rate_bps"] is None else \
            f"  = {c['bandwidth_bps'] / c['rate_bps']:.0%} of the rate"
        lines.append(f"  {fmt_rate(c['rate_bps']):>9}: {c['bandwidth_bps'] / 1e6:9.1f} Mbit/s{ok}")
    for entry in result["dims"]:
        lines += ["", f"d = {entry['d']}, eps = {result['eps']:g} (f(x0) - f*) = "
                      f"{entry['target']:.3e}; mu = {result['mu']:g}, L = {result['L']:g}"]
        head = (f"{'method':<24} {'step':>6} {'iters':>5} {'up kb':>9} {'down kb':>9} "
                f"{'rate':>9} {'s/step':>8} {'t_eps s':>8} {'ratio':>6}")
        if predict:
            head += f" {'pred s':>8} {'p/m':>5} {'net%':>4}"
        head += f" | server ms/step: {'dec':>6} {'apply':>6} {'enc':>6} {'wait':>7}"
        lines.append(head)
        for r in entry["rows"]:
            ratio = "-" if r["vs_allreduce_f64"] is None else f"{r['vs_allreduce_f64']:.2f}"
            line = (f"{r['method']:<24} {r['stepsize']:>6.3g} {r['iterations']:>5} "
                    f"{r['bits_up_worker'] / 1e3:>9.1f} {r['bits_down_worker'] / 1e3:>9.1f} "
                    f"{fmt_rate(r['rate_bps']):>9} {_fmt_s(r['s_per_step']):>8} "
                    f"{_fmt_s(r['t_eps_s']):>8} {ratio:>6}")
            if predict:
                line += (f" {_fmt_s(r['pred_s_per_step']):>8} "
                         f"{r['pred_s_per_step'] / r['s_per_step']:>5.2f} "
                         f"{100 * r['pred_network_share']:>4.0f}")
            sm = r["server_ms"]
            line += " | " + (" " * 15 + " ".join(f"{sm[p]:>6.1f}" for p in PHASES[1:4])
                             + f" {sm['wait']:>7.1f}" if sm else " " * 15 + "-")
            lines.append(line)
        if any(r.get("iterations_source", "").endswith("(carried over to this d)")
               for r in entry["rows"]):
            lines.append(f"  iterations at this d are carried over from d = {entry['eps_dim']} "
                         f"(same spectrum and seed; see the README)")
        lines += _verdicts(entry)
    for name, why in result.get("left_out", {}).items():
        lines.append(f"left out: {name}: {why}")
    return "\n".join(lines)


def _best_psgd(rows, rate):
    cand = [r for r in rows if r["kind"] == "psgd" and r["rate_bps"] == rate]
    return min(cand, key=lambda r: r["t_eps_s"]) if cand else None


def _verdicts(entry):
    out = []
    for rate in sorted({r["rate_bps"] for r in entry["rows"] if r["rate_bps"]}):
        best = _best_psgd(entry["rows"], rate)
        if best is None or best["vs_allreduce_f64"] is None:
            continue
        out.append(f"  best psgd at {fmt_rate(rate)}: {best['method']}, "
                   f"{best['vs_allreduce_f64']:.2f} x Allreduce-f64's time to eps")
    return out


def crossover(rates, psgd_t, ar_t):
    """The rate where psgd's time to eps meets Allreduce's (log-log interpolation between
    measured rates), or None when one is faster at every measured rate."""
    r = np.log(np.asarray(rates, float))
    diff = np.log(np.asarray(psgd_t)) - np.log(np.asarray(ar_t))
    for i in range(len(r) - 1):
        if diff[i] == 0:
            return float(rates[i])
        if diff[i] * diff[i + 1] < 0:
            f = diff[i] / (diff[i] - diff[i + 1])
            return float(np.exp(r[i] + f * (r[i + 1] - r[i])))
    return None


def _model_curves(result, entry, points=40):
    """The cost model's time to eps over a continuous range of rates, per method (a = 0).
    The link's payload rate is the nominal rate times the calibrated efficiency."""
    cal = [c for c in result["calibration"] if c["rate_bps"]]
    eff = float(np.median([c["bandwidth_bps"] / c["rate_bps"] for c in cal]))
    bw_unshaped = next(c["bandwidth_bps"] for c in result["calibration"] if not c["rate_bps"])
    lo, hi = min(result["rates_bps"]) / 2, max(result["rates_bps"]) * 2
    rates = np.geomspace(lo, hi, points)
    curves = {}
    for u in (r for r in entry["rows"] if r["rate_bps"] is None):
        t = [u["iterations"] * predict_step(u, u, bw_unshaped, eff * b, result["workers"])[0]
             for b in rates]
        curves[u["method"]] = (rates, t)
    return curves


def plot(result, path, predict=False):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    dims = result["dims"]
    fig, axes = plt.subplots(1, len(dims), figsize=(6.5 * len(dims), 5), squeeze=False)
    for ax, entry in zip(axes[0], dims):
        rows = [r for r in entry["rows"] if r["rate_bps"]]
        rates = sorted({r["rate_bps"] for r in rows})
        model = _model_curves(result, entry) if predict else {}
        for name in dict.fromkeys(r["method"] for r in rows):
            pts = sorted((r["rate_bps"], r["t_eps_s"]) for r in rows if r["method"] == name)
            style = "-o" if name.startswith("allreduce") else "-s"
            lw = 2.5 if name in ("allreduce-f64", "gd") else 1.2
            (line,) = ax.plot([p[0] for p in pts], [p[1] for p in pts], style, lw=lw, ms=4,
                              label=name)
            if name in model:
                ax.plot(*model[name], ":", color=line.get_color(), lw=1)
        best = [_best_psgd(rows, rate) for rate in rates]
        ar = {r["rate_bps"]: r["t_eps_s"] for r in rows if r["method"] == "allreduce-f64"}
        if ar and all(best):
            x = crossover(rates, [b["t_eps_s"] for b in best], [ar[q] for q in rates])
            if x is not None:
                ax.axvline(x, color="k", ls=":", lw=1)
                ax.annotate(f"crossover ~{fmt_rate(float(f'{x:.2g}'))}", (x, ax.get_ylim()[1]),
                            fontsize=8,
                            ha="center", va="top")
            else:
                faster = best[0]["t_eps_s"] < ar[rates[0]]
                ax.set_title(("best psgd faster" if faster else "Allreduce faster")
                             + " at every measured rate", fontsize=9, loc="right")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(rates, [fmt_rate(q) for q in rates])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("link rate (bits/s), every node's NIC, both ways"
                      + ("; dotted: cost model" if predict else ""))
        ax.set_ylabel(f"time to eps = {result['eps']:g} (f(x0) - f*)  [s]")
        ax.set_title(f"d = {entry['d']}, {result['workers']} workers", loc="left")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- projection ---------------------------------------------------------------------------

PROJ_N = (8, 32, 128, 1024)
PROJ_D = (10 ** 6, 10 ** 7, 10 ** 8, 10 ** 9)
PROJ_B = (10e9, 25e9, 100e9)


def worker_compute_s(spec, d, n, args, reps=3):
    """One worker's compute per step, timed alone (a cluster node has its own cores):
    gradient, the algorithm's vector, encode (and decode where the worker keeps memory),
    and decoding a compressed model."""
    from . import config, steps
    from .runtime import build_context
    from .transport import Roles

    grad_only = spec["kind"] == "allreduce"
    if grad_only:
        spec = METHODS["gd"]
    cfg = config.validate(_psgd_config(spec, d, "theory", 1, None, args, "unused"))
    ctx = build_context(cfg, Roles.layout(n + 1))
    obj = ctx.ps.local(0)
    ws = ctx.alg.worker_init(d)
    rng = np.random.default_rng(0)
    x = ctx.x0.astype(np.float64) + 0.1
    out = np.empty(ctx.uplink.max_nbytes(), np.uint8)
    down = None
    if not ctx.downlink.exact:  # a compressed model message, as the worker decodes it
        buf = np.empty(ctx.downlink.max_nbytes(), np.uint8)
        down = buf[:ctx.downlink.encode(x, np.zeros_like(x), rng, buf)]
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        g = obj.grad(x)
        if grad_only:
            times.append(time.perf_counter() - t0)
            continue
        steps.worker_step(ctx.alg, ctx.uplink, ws, g, 0, 0, rng, out)
        if down is not None:
            ctx.downlink.apply(down, x.copy())
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def projection(result, args, log):
    """Time to eps on paper for large clusters, from the largest measured d's rows."""
    entry = max(result["dims"], key=lambda e: e["d"])
    d0, n0 = entry["d"], result["workers"]
    unshaped = {r["method"]: r for r in entry["rows"] if r["rate_bps"] is None}
    per = {}
    for name, r in unshaped.items():
        spec = args.method_specs.get(name) or METHODS.get(name)
        if spec is None or _servers(spec) > 1:  # a --configs method of an earlier run (its
            continue  # spec is not stored), or an S > 1 run (the projection models S itself)
        t_w = worker_compute_s(spec, d0, n0, args) / d0
        sm = r["server_ms"]
        t_s = 0.0 if sm is None else 1e-3 * (sm["decode"] + sm["apply"] + sm["encode"]) / d0
        per[name] = {"kind": r["kind"], "iters": r["iterations"], "t_worker_per_coord": t_w,
                     "t_server_per_coord": t_s, "up_per_coord": r["bits_up_worker"] / d0,
                     "down_per_coord": r["bits_down_worker"] / d0}
    ar = per.get("allreduce-f64")
    rows = []
    for bw in PROJ_B:
        for n in PROJ_N:
            for d in PROJ_D:
                link = costmodel.Link(bw, args.latency_s)
                row = {"rate_bps": bw, "n": n, "d": d}
                if ar:
                    t = costmodel.allreduce_step_s(ar["t_worker_per_coord"] * d, 64 * d, n, link)
                    row["allreduce_f64_t_eps_s"] = ar["iters"] * t
                for key, servers in (("S1", 1), ("S_n/8", max(1, n // 8))):
                    best = None
                    for name, p in per.items():
                        if p["kind"] != "psgd":
                            continue
                        args_m = (p["t_worker_per_coord"] * d, p["t_server_per_coord"] * d, n0,
                                  p["up_per_coord"] * d, p["down_per_coord"] * d, n, servers, link)
                        t = p["iters"] * costmodel.ps_step_s(*args_m)
                        if best is None or t < best[1]:
                            best = (name, t, costmodel.ps_bottleneck(*args_m))
                    if best and (key == "S1" or servers > 1):
                        row[key] = {"servers": servers, "method": best[0],
                                              "t_eps_s": best[1], "bottleneck": best[2]}
                rows.append(row)
    return {"from_d": d0, "from_n": n0, "latency_s": args.latency_s, "inputs": per, "rows": rows}


def projection_table(proj):
    lines = ["", f"projection on paper (cost model; inputs measured at d = {proj['from_d']}, "
                 f"n = {proj['from_n']}: bits per coordinate, compute per coordinate, iterations "
                 f"to eps kept at the n = {proj['from_n']} count; latency a = "
                 f"{proj['latency_s'] * 1e6:g} us; S = servers)",
             f"{'link':>8} {'n':>5} {'d':>6} {'AR-f64 s':>9} | {'S':>3} {'best psgd':<24} "
             f"{'t_eps s':>9} {'ratio':>6} {'bound by':<10} | {'S':>3} {'best psgd':<24} "
             f"{'t_eps s':>9} {'ratio':>6} {'bound by':<10}"]
    for r in proj["rows"]:
        ar = r.get("allreduce_f64_t_eps_s")
        line = f"{fmt_rate(r['rate_bps']):>8} {r['n']:>5} {r['d']:>6.0e} {_fmt_s(ar):>9}"
        for key in ("S1", "S_n/8"):
            b = r.get(key)
            if b is None:
                line += " | " + "-".center(64)
                continue
            ratio = f"{b['t_eps_s'] / ar:.2f}" if ar else "-"
            line += (f" | {b['servers']:>3} {b['method']:<24} {_fmt_s(b['t_eps_s']):>9} "
                     f"{ratio:>6} {b['bottleneck']:<10}")
        lines.append(line)
    return lines


def main(argv) -> int:
    try:
        args = parse_args(argv)
        if args.from_json:
            result = _load_json(args)
            return finish(result, args, print)
        netemu.check_available()
    except Usage as exc:
        print(f"psgd bench network: error: {exc}", file=sys.stderr)
        return 2
    except netemu.EmulationUnavailable as exc:
        print(f"psgd bench network: error: {exc}", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)

    def log(msg):
        print(msg, flush=True)

    try:
        with tempfile.TemporaryDirectory(prefix="psgd-bench-network-") as work, \
                netemu.Cluster(args.workers + max(args.server_list)) as cluster:
            log(f"emulated cluster: {cluster.n} namespaces {cluster.prefix}0..{cluster.n - 1} on "
                f"bridge namespace {cluster.bridge}; removed when the benchmark ends")
            result = bench(args, cluster, work, log, lambda res: _save(res, args))
            # keep the run directories: they are the evidence behind every row
            kept = os.path.join(args.out, "runs")
            _keep_runs(result, work, kept)
    except Failed as exc:
        print(f"psgd bench network: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"psgd bench network: interrupted; emulated network removed; what was measured "
              f"is in {args.out}/network.json (psgd bench network --from-json it)",
              file=sys.stderr)
        return 130
    return finish(result, args, log)


def _load_json(args):
    try:
        with open(args.from_json) as fh:
            result = json.load(fh)
        args.workers, args.rates = result["workers"], result["rates_bps"]
        args.out = os.path.dirname(os.path.abspath(args.from_json))
    except (OSError, ValueError, KeyError) as exc:
        raise Usage(f"--from-json {args.from_json}: not a network.json ({exc})") from None
    return result


def finish(result, args, log):
    """Table (+ predictions and projection), JSON and PNG of a result; exit code 0."""
    text = table(result, args.predict)
    if args.predict:
        result["projection"] = projection(result, args, log)
        text += "\n" + "\n".join(projection_table(result["projection"]))
    print(text)
    _save(result, args, final=result.get("complete", True))
    with open(os.path.join(args.out, "table.txt"), "w") as fh:
        fh.write(text + "\n")
    try:
        plot(result, os.path.join(args.out, "network.png"), args.predict)
    except ImportError as exc:
        print(f"psgd bench network: no PNG (needs matplotlib: {exc})", file=sys.stderr)
    print(f"wrote {args.out}/table.txt, network.json, network.png")
    return 0


def _save(result, args, final=False):
    """network.json and table.txt as they stand (after every method, and at the end)."""
    with open(os.path.join(args.out, "network.json"), "w") as fh:
        json.dump(dict(result, complete=final), fh, indent=1)
    with open(os.path.join(args.out, "table.txt"), "w") as fh:
        fh.write(table(result, args.predict) + "\n")


def _keep_runs(result, work, dest):
    import shutil

    os.makedirs(dest, exist_ok=True)
    for entry in result["dims"]:
        for r in entry["rows"]:
            src = r.get("run_dir")
            if src and src.startswith(work) and os.path.isdir(src):
                target = os.path.join(dest, os.path.basename(src))
                if not os.path.exists(target):
                    shutil.copytree(src, target, ignore=shutil.ignore_patterns("model.npy"))
                r["run_dir"] = target


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
