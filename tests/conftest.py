"""Shared fixtures: the LIBSVM data directory and a launcher for real MPI runs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


def find_data_dir():
    """$PSGD_DATA if set, else ../shared/data beside the checkout; None if neither exists."""
    env = os.environ.get("PSGD_DATA")
    for cand in ([Path(env)] if env else []) + [REPO.parent / "shared" / "data"]:
        if (cand / "mushrooms").is_file():
            return cand
    return None


@pytest.fixture(scope="session")
def data_dir():
    found = find_data_dir()
    if found is None:
        pytest.skip("LIBSVM data not found: set PSGD_DATA to a directory holding mushrooms, a9a, ... "
                    "(CI has them in ../shared/data)")
    return found


def mpiexec_path():
    """The mpiexec beside this Python (the mpich wheel's), else the one on PATH."""
    from psgd import mpiexec

    return mpiexec.path()


class RunResult:
    def __init__(self, proc, out):
        self.proc, self.out = proc, out
        self.returncode = proc.returncode
        self.stdout, self.stderr = proc.stdout, proc.stderr

    @property
    def summary(self):
        return json.loads((self.out / "summary.json").read_text())

    @property
    def metrics(self):
        return [json.loads(l) for l in (self.out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def run_psgd(tmp_path, data_dir_optional):
    """Run ``mpiexec -n N python -m psgd run CONFIG --out DIR --set ...`` with a timeout."""

    def run(n, cfg, *sets, timeout=240, out=None, extra_args=(), env=None):
        if isinstance(cfg, dict):
            path = tmp_path / f"cfg{len(list(tmp_path.glob('cfg*.yaml')))}.yaml"
            path.write_text(yaml.safe_dump(cfg))
            cfg = path
        out = tmp_path / (out or "out")
        cmd = [mpiexec_path(), "-n", str(n), sys.executable, "-m", "psgd", "run", str(cfg),
               "--out", str(out), *extra_args]
        for s in sets:
            cmd += ["--set", s]
        full_env = dict(os.environ)
        if data_dir_optional is not None:
            full_env.setdefault("PSGD_DATA", str(data_dir_optional))
        full_env.update(env or {})
        try:
            proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True,
                                  timeout=timeout, env=full_env)
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"mpiexec run did not finish within {timeout} s (hang?): {' '.join(cmd)}\n"
                        f"stdout: {exc.stdout}\nstderr: {exc.stderr}")
        return RunResult(proc, out)

    return run


@pytest.fixture(scope="session")
def data_dir_optional():
    return find_data_dir()


@pytest.fixture
def network_gradient_check():
    """``check(ps, rng, directions)``: a network problem's (mlp, cnn) gradient against central
    differences at a point off the initial one (biases nonzero), along ``directions`` random
    directions and at the first and last coordinate of every layer (its first weight and its
    last bias). Returns (f, x, grad) of the last worker's objective."""
    import numpy as np

    def check(ps, rng, directions):
        f = ps.local(ps.n_workers - 1)
        x = ps.initial_point() + 0.1 * rng.standard_normal(ps.d)
        _, grad = f.value_and_grad(x)
        assert grad.shape == (ps.d,) and ps.d == sum(ps.layers)
        h = 1e-6
        for _ in range(directions):
            v = rng.standard_normal(ps.d)
            fd = (f.value(x + h * v) - f.value(x - h * v)) / (2 * h)
            assert fd == pytest.approx(grad @ v, rel=1e-5, abs=1e-7)
        at = 0
        for size in ps.layers:
            for i in (at, at + size - 1):
                e = np.zeros(ps.d)
                e[i] = h
                assert (f.value(x + e) - f.value(x - e)) / (2 * h) == \
                    pytest.approx(grad[i], abs=1e-6)
            at += size
        return f, x, grad

    return check


@pytest.fixture
def tmpfs(tmp_path):
    """``mount(size)``: a fresh tmpfs of ``size`` (e.g. "2m") under tmp_path, a real disk that
    can be filled (needs root and mount; skips otherwise); unmounted after the test."""
    mounted = []

    def mount(size):
        mnt = tmp_path / f"disk{len(mounted)}"
        mnt.mkdir()
        if os.geteuid() != 0:
            pytest.skip("filling a real disk needs root to mount a small tmpfs")
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
        mounted.append(mnt)
        return mnt

    yield mount
    for mnt in mounted:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
