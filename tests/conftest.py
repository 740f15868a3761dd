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
