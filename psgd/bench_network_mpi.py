"""The small MPI programs ``psgd bench network`` runs inside its emulated cluster.

``python -m psgd.bench_network_mpi allreduce SPEC.json OUT.json``
    data-parallel GD, the baseline a Horovod/DDP user runs: every rank computes its
    worker's gradient, ``MPI.Allreduce`` sums them (in float64 or float32 on the wire),
    every rank takes the same GD step. Rank 0 evaluates f at every iterate, as psgd's
    server does with ``log_every: 1``, so both carry the same monitoring cost and stop
    by the same rule (f(x_k) - f* <= target after k steps).
``python -m psgd.bench_network_mpi pingpong NBYTES REPS OUT.json``
    ranks 0 and 1 bounce one NBYTES message REPS times: the link's measured bandwidth.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np


def allreduce(spec_path: str, out_path: str) -> None:
    from mpi4py import MPI

    from psgd import config, problems

    with open(spec_path) as fh:
        spec = json.load(fh)
    comm = MPI.COMM_WORLD
    n, rank = comm.Get_size(), comm.Get_rank()
    cfg = config.validate(spec["config"])
    ps = problems.make_problem(cfg["problem"], cfg["data"], cfg["seed"], n)
    f = ps.local(rank)
    dtype = np.dtype(spec["dtype"])
    gamma, iterations, target = spec["stepsize"], spec["iterations"], spec["target"]
    f_star = glob = None
    if rank == 0:
        _, f_star = problems.solve(ps)
        glob = ps.global_objective
    d = ps.d
    x = ps.initial_point().astype(np.float64)
    w = np.asarray(ps.weights, dtype=np.float64)
    # one extra slot carries rank 0's "reached the target" flag inside the same Allreduce
    send = np.zeros(d + 1, dtype=dtype)
    total = np.empty(d + 1, dtype=dtype)
    subopts, stamps = [], []
    comm.Barrier()
    stamps.append(time.perf_counter())
    k = 0
    status = "max_iterations"
    while True:
        g = f.grad(x)
        send[:d] = w[rank] * g
        send[d] = 0
        if rank == 0:
            value, _ = glob.value_and_grad(x)  # the same evaluation psgd's metrics make
            subopts.append(float(value - f_star))
            send[d] = 1 if (target is not None and subopts[-1] <= target) else 0
        comm.Allreduce(send, total, op=MPI.SUM)
        if total[d] > 0:
            status = "converged"
            break
        if k >= iterations:
            break
        x -= gamma * total[:d]
        k += 1
        stamps.append(time.perf_counter())
    if rank == 0:
        steps = np.diff(stamps)
        with open(out_path, "w") as fh:
            json.dump({"status": status, "iterations": k, "subopt": subopts,
                       "step_s": steps.tolist(), "f_star": f_star,
                       "bits_per_rank_per_step": 2 * (n - 1) / n * 8 * dtype.itemsize * d}, fh)


def pingpong(nbytes: int, reps: int, out_path: str) -> None:
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    buf = np.zeros(nbytes, np.uint8)
    times = []
    for r in range(reps + 1):  # the first round trip sets up the connection: not timed
        comm.Barrier()
        t0 = time.perf_counter()
        if rank == 0:
            comm.Send(buf, dest=1)
            comm.Recv(buf, source=1)
        elif rank == 1:
            comm.Recv(buf, source=0)
            comm.Send(buf, dest=0)
        if r:
            times.append(time.perf_counter() - t0)
    if rank == 0:
        rt = float(np.median(times))
        with open(out_path, "w") as fh:
            json.dump({"nbytes": nbytes, "round_trip_s": times,
                       "bandwidth_bps": 2 * 8 * nbytes / rt}, fh)


def main(argv) -> int:
    if argv and argv[0] == "allreduce" and len(argv) == 3:
        allreduce(argv[1], argv[2])
        return 0
    if argv and argv[0] == "pingpong" and len(argv) == 4:
        pingpong(int(argv[1]), int(argv[2]), argv[3])
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
