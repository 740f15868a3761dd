"""``psgd bench runtime``: the parameter server's speed against an MPI.Allreduce baseline.

For each (workers n, dimension d, mode) it runs ``mpiexec -n n+1 psgd run`` on a
diagonal quadratic (O(d) gradients, so the runtime itself is what is measured) with
DIANA and the ternary quantizer, and reads steps per second and the server's time
split (wait, decode, apply, encode, send per step) from summary.json. In the same run
it measures the baseline a Horovod or DDP user would run: uncompressed data-parallel
GD with ``MPI.Allreduce`` over n ranks on the same problem. Ratios are psgd / baseline.
Every number is the median over ``--repeats`` runs (the machines are noisy). On this 2-core
machine more than 1 rank per core is oversubscribed: say so when quoting.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from . import mpiexec, threads
import yaml

PHASES = ("wait", "decode", "apply", "encode", "send")



def _steps(d, n, budget):
    return int(max(5, min(2000, budget / (d * max(n, 1)))))


#: the model's way back (``--downlinks``): exact float64, or the uplink's ternary code
TERNARY = {"name": "random_dithering", "levels": 1, "norm": "inf"}
DOWNLINKS = ("exact", "ternary")


def _config(d, n, mode, tau, steps, out, servers=1, downlink="exact"):
    block = min(1024, -(-d // servers))
    down = None if downlink == "exact" else {"compressor": {**TERNARY, "block_size": block}}
    return {
        "seed": 0,
        "problem": {"name": "quadratic", "n_features": d, "mu": 0.1, "L": 1.0},
        "algorithm": {"name": "diana"},
        # blocks of 1024, or smaller when S servers could not each own a whole block
        "compressor": {**TERNARY, "block_size": block},
        "run": {"mode": mode, "max_staleness": tau if mode == "async" else 0, "iterations": steps,
                "log_every": steps, "timeout_s": 600, "servers": servers, "downlink": down},
        "output": {"dir": out},
    }


def run_psgd(d, n, mode, tau, steps, workdir, repeat=0, servers=1, downlink="exact"):
    out = os.path.join(workdir, f"ps-{n}-{d}-{mode}-{servers}-{downlink}-{repeat}")
    path = out + ".yaml"
    with open(path, "w") as fh:
        yaml.safe_dump(_config(d, n, mode, tau, steps, out, servers, downlink), fh)
    proc = subprocess.run([mpiexec.path(), "-n", str(n + servers), sys.executable, "-m", "psgd", "run",
                           path],
                          capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"psgd run failed (n={n}, d={d}, {mode}): {proc.stderr.strip()[-500:]}")
    with open(os.path.join(out, "summary.json")) as fh:
        s = json.load(fh)
    k = s["iterations"]
    row = {"steps_per_s": k / s["wall_s"], "bits_up_per_step": s["bits_up_total"] / k,
           "bits_down_per_step": s["bits_down_total"] / k,
           "server_rss_mb": _mb(s.get("server_peak_rss_mb"))}
    for phase in PHASES:
        row[f"{phase}_ms"] = 1e3 * s["server_time_s"].get(phase, 0.0) / k
    for r in s.get("shards", [])[1:]:  # the other servers' split (server 0's is above)
        for phase in PHASES:
            row[f"s{r['server']}_{phase}_ms"] = 1e3 * r["server_time_s"].get(phase, 0.0) / k
    return row


def _mb(value):
    return float("nan") if value is None else float(value)  # (not Linux: unknown)


def streaming_pass_ms(d, repeats=5):
    """One streaming pass over d float32 values into a float64 vector (out += x): the
    memory traffic of one message's fused decode-and-accumulate, the bound apply is held to."""
    x, out = np.ones(d, np.float32), np.zeros(d)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.add(out, x, out=out)
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def median_of(samples):
    """The per-key median of repeated measurements (dicts with the same numeric keys)."""
    return {k: float(np.median([s[k] for s in samples])) for k in samples[0]}


def run_allreduce(d, n, steps):
    env = dict(os.environ)
    threads.limit(n, env)  # the BLAS threads psgd's ranks get (psgd.threads)
    proc = subprocess.run([mpiexec.path(), "-n", str(n), sys.executable, "-m", "psgd.bench_runtime",
                           "--allreduce-rank", str(d), str(steps)],
                          capture_output=True, text=True, timeout=1800, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"allreduce baseline failed (n={n}, d={d}): {proc.stderr.strip()[-500:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def allreduce_rank(d, steps):
    """One rank of the baseline: local gradient, Allreduce(SUM) in float64, GD step."""
    from mpi4py import MPI

    from psgd import config, problems

    comm = MPI.COMM_WORLD
    n, rank = comm.Get_size(), comm.Get_rank()
    cfg = config.validate(_config(d, n, "sync", 0, steps, "unused"))
    ps = problems.make_problem(cfg["problem"], cfg["data"], cfg["seed"], n)
    f = ps.local(rank)
    x = np.zeros(d)
    g, total = np.empty(d), np.empty(d)  # reused, as psgd's workers reuse theirs
    comm.Barrier()
    t0 = time.perf_counter()
    for _ in range(steps):
        grad = f.grad_into(x, g)
        comm.Allreduce(grad, total, op=MPI.SUM)
        total *= 1.0 / n
        x -= total
    comm.Barrier()
    wall = time.perf_counter() - t0
    from psgd.metrics import peak_rss_mb

    rss = comm.reduce(_mb(peak_rss_mb()), op=MPI.MAX)  # the largest rank's
    if rank == 0:
        print(json.dumps({"steps_per_s": steps / wall, "bits_per_step": 64 * d * n,
                          "rss_mb": rss}))


def _row(d, n, mode, n_servers, steps, base, pass_ms, args, work, downlink="exact"):
    runs = [run_psgd(d, n, mode, args.tau, steps, work, r, n_servers, downlink)
            for r in range(args.repeats)]
    row = {"n": n, "servers": n_servers, "d": d, "mode": mode, "downlink": downlink,
           "steps": steps, **median_of(runs),
           "steps_per_s_runs": [r["steps_per_s"] for r in runs],
           "allreduce_steps_per_s": base["steps_per_s"],
           "allreduce_bits_per_step": base["bits_per_step"], "allreduce_rss_mb": base["rss_mb"],
           "pass_ms": pass_ms}
    row["ratio"] = row["steps_per_s"] / row["allreduce_steps_per_s"]
    # a synchronous update applies n messages; an asynchronous one about one
    per_msg = row["apply_ms"] / (n if mode == "sync" else 1)
    print(f"{n:>2} {n_servers:>2} {d:>9} {mode:>5} {downlink:>7} {row['steps_per_s']:>9.1f} "
          + " ".join(f"{row[f'{ph}_ms']:>8.3f}" for ph in PHASES)
          + f" {row['allreduce_steps_per_s']:>9.1f} {row['ratio']:>6.2f}"
          f" {row['bits_up_per_step']:>10.0f} {per_msg:>9.3f} {pass_ms:>7.3f}"
          f" {row['server_rss_mb']:>8.0f} {row['allreduce_rss_mb']:>8.0f}", flush=True)
    for s in range(1, n_servers):
        print(f"{'':>2} {'s' + str(s):>2} {'':>9} {'':>5} {'':>7} {'':>9} "
              + " ".join(f"{row[f's{s}_{ph}_ms']:>8.3f}" for ph in PHASES), flush=True)
    return row


def main(argv) -> int:
    p = argparse.ArgumentParser(prog="psgd bench runtime", description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", default="1,2,4,8", help="comma-separated worker counts")
    p.add_argument("--dims", default="1000,100000,10000000", help="comma-separated dimensions")
    p.add_argument("--modes", default="sync,async")
    p.add_argument("--tau", type=int, default=2, help="max_staleness for async runs")
    p.add_argument("--servers", default="1", help="comma-separated server counts (run.servers)")
    p.add_argument("--downlinks", default="exact",
                   help="comma-separated: exact (the float64 model) and/or ternary (the model "
                        "delta in the uplink's code, run.downlink)")
    p.add_argument("--budget", type=float, default=3e8,
                   help="coordinates x workers per run; sets the step count (5..2000)")
    p.add_argument("--repeats", type=int, default=3, help="runs per row; the table shows medians")
    p.add_argument("--json", help="write the rows (medians and every run's steps/s) to this file")
    p.add_argument("--allreduce-rank", nargs=2, type=int, metavar=("D", "STEPS"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.allreduce_rank:
        allreduce_rank(*args.allreduce_rank)
        return 0
    try:
        workers = [int(v) for v in args.workers.split(",")]
        dims = [int(float(v)) for v in args.dims.split(",")]
        modes = args.modes.split(",")
        servers = [int(v) for v in args.servers.split(",")]
        downlinks = args.downlinks.split(",")
        if (any(m not in ("sync", "async") for m in modes) or min(workers) < 1 or min(dims) < 1
                or args.repeats < 1 or min(servers) < 1
                or any(v not in DOWNLINKS for v in downlinks)):
            raise ValueError
    except ValueError:
        print("psgd: error: --workers/--dims/--repeats/--servers take positive integers, --modes "
              "sync and/or async, --downlinks exact and/or ternary", file=sys.stderr)
        return 2
    rows = []
    header = (f"{'n':>2} {'S':>2} {'d':>9} {'mode':>5} {'down':>7} {'steps/s':>9} {'wait':>8} {'decode':>8} "
              f"{'apply':>8} {'encode':>8} {'send':>8} {'allred/s':>9} {'ratio':>6} "
              f"{'bits/step':>10} {'apply/msg':>9} {'pass':>7} {'rss MiB':>8} {'allred':>8}")
    print("per-step server time in ms (server 0; the other servers' split on the lines below); "
          "decode = receive checks and copy, apply = the fused decode-and-accumulate of every "
          "message plus the step; down = how the model goes back (exact float64, or the "
          "ternary code of its change); allred/s = uncompressed MPI.Allreduce data-parallel GD on n "
          "ranks; ratio = psgd / allreduce; pass = one streaming pass over d float32 values "
          "(the bound for apply/msg); rss = server 0's peak resident memory, allred = the "
          "largest Allreduce rank's (MiB); "
          f"medians of {args.repeats} runs; {os.cpu_count()} cores "
          "(oversubscribed beyond that)")
    print(header)
    with tempfile.TemporaryDirectory() as work:
        for d in dims:
            for n in workers:
                steps = _steps(d, n, args.budget)
                base = median_of([run_allreduce(d, n, steps) for _ in range(args.repeats)])
                pass_ms = streaming_pass_ms(d)
                for mode in modes:
                    for downlink in downlinks:
                        for n_servers in servers:
                            rows.append(_row(d, n, mode, n_servers, steps, base, pass_ms, args,
                                             work, downlink))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
