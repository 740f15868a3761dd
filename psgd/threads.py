"""How many threads a rank's numerical libraries may use: the node's cores shared by its ranks.

MPI ranks are psgd's parallelism. OpenBLAS (NumPy's BLAS) otherwise starts one thread per
core in every rank, and its idle threads spin: with 5 ranks on 2 cores the server's
``axpy`` and ``dot`` spent 28 % of its CPU in OpenBLAS's thread servers (perf, d = 10^7),
time the other ranks needed. So a rank whose environment does not say otherwise gets
``cores // ranks on this node`` threads (at least 1). The variables must be set before
NumPy loads BLAS, which is why this module imports nothing heavy.
"""

from __future__ import annotations

import os

#: what OpenBLAS, OpenMP (and psgd's own OpenMP kernels) and MKL read
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def local_ranks(env=None) -> int | None:
    """This job's ranks on this node, as the launcher says (Hydra, Open MPI, SLURM), or None."""
    env = os.environ if env is None else env
    for key in ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "PMIX_LOCAL_SIZE"):
        if env.get(key, "").isdigit():
            return int(env[key])
    # SLURM_TASKS_PER_NODE reads like "5" or "3(x2),1": this node's count is not known, the
    # first is the usual case (one value for every node)
    tasks = env.get("SLURM_TASKS_PER_NODE", "").split("(")[0].split(",")[0]
    return int(tasks) if tasks.isdigit() else None


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # (not Linux)
        return os.cpu_count() or 1


def threads_per_rank(ranks: int | None = None, env=None) -> int | None:
    """The default thread count of one rank, or None when the rank count is unknown."""
    env = os.environ if env is None else env
    if env.get("SLURM_CPUS_PER_TASK", "").isdigit():  # SLURM gave each task its cores
        return max(1, int(env["SLURM_CPUS_PER_TASK"]))
    ranks = local_ranks(env) if ranks is None else ranks
    return None if not ranks else max(1, cores() // ranks)


def limit(ranks: int | None = None, env=None) -> dict:
    """Set every unset THREAD_VARS in ``env`` (default: this process's) to
    :func:`threads_per_rank`; return what was set. A value the user gave is kept."""
    env = os.environ if env is None else env
    n = threads_per_rank(ranks, env)
    if n is None:
        return {}
    chosen = {k: str(n) for k in THREAD_VARS if not env.get(k)}
    env.update(chosen)
    return chosen
