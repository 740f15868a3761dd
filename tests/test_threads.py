"""Each rank's BLAS/OpenMP threads default to the node's cores shared by its ranks."""

import os
import subprocess
import sys

import pytest

from psgd import mpiexec, threads


def test_threads_share_the_cores_among_the_ranks_and_keep_what_the_user_set():
    cores = threads.cores()
    env = {"MPI_LOCALNRANKS": "5"}
    assert threads.limit(env=env) == {k: str(max(1, cores // 5)) for k in threads.THREAD_VARS}
    env = {"OMPI_COMM_WORLD_LOCAL_SIZE": "1", "OPENBLAS_NUM_THREADS": "3"}
    set_ = threads.limit(env=env)
    assert env["OPENBLAS_NUM_THREADS"] == "3" and "OPENBLAS_NUM_THREADS" not in set_
    assert env["OMP_NUM_THREADS"] == str(cores)
    assert threads.limit(env={"SLURM_CPUS_PER_TASK": "4", "MPI_LOCALNRANKS": "9"}) \
        == {k: "4" for k in threads.THREAD_VARS}       # SLURM's per-task cores win
    assert threads.local_ranks({"SLURM_TASKS_PER_NODE": "3(x2),1"}) == 3
    assert threads.limit(env={}) == {}                  # not launched by MPI: unchanged


def test_psgd_run_sets_them_before_numpy_is_loaded():
    # OpenBLAS reads its thread count once, when NumPy loads it: the command line must be
    # parsed without NumPy, and psgd.cli.main sets the variables before importing the run
    code = ("import sys; from psgd.cli import _parser; _parser().parse_args(['run', 'c.yaml']); "
            "print('numpy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120).stdout.split()
    assert out == ["False"]


@pytest.mark.mpi
def test_a_rank_of_psgd_run_gets_its_share(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("problem: {name: quadratic, n_features: 8}\nalgorithm: {name: gd}\n"
                   "compressor: {name: identity}\nrun: {iterations: 2}\n")
    env = {k: v for k, v in os.environ.items() if k not in threads.THREAD_VARS}
    probe = ("import os, sys; from psgd.cli import main; "
             "code = main(['run', sys.argv[1], '--out', sys.argv[2]]); "
             "os.write(1, f\"threads {os.environ.get('OPENBLAS_NUM_THREADS')}\\n\".encode()); "
             "sys.exit(code)")
    res = subprocess.run([mpiexec.path(), "-n", "3", sys.executable, "-c", probe, str(cfg),
                          str(tmp_path / "out")], capture_output=True, text=True, env=env,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    lines = [l for l in res.stdout.splitlines() if l.startswith("threads")]
    assert len(lines) == 3, res.stdout
    assert all(l.split()[1] == str(max(1, threads.cores() // 3)) for l in lines), res.stdout
