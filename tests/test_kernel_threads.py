"""Threaded kernels (issue 11): the same bytes on any thread count; PSGD_THREADS parsing."""

import shutil
import subprocess

import numpy as np
import pytest

from psgd import kernels
from psgd import kernels_ref as ref
from psgd.errors import ConfigError

needs_ext = pytest.mark.skipif(not kernels.HAVE_CYTHON, reason="compiled kernels not built")
CHUNK = 1280   # the kernels' unit of work per thread (cython_ext/_dither.pyx)


def _run(x, bs, levels, weight=0.7, seed=123):
    """(scales, payload, out after decode_add) from the current kernels (compiled or twin)."""
    d = x.size
    sc = kernels.block_scales(x, bs, kernels.NORM_2)
    out = np.empty(4 * sc.size + ref.symbols_nbytes(d, levels), dtype=np.uint8)
    kernels.dither_encode(x, sc, bs, levels, seed, out)
    acc = np.linspace(-1, 1, d).astype(x.dtype)
    code = kernels.dither_decode_add(out, d, bs, levels, acc, weight)
    return sc.tobytes(), out.tobytes(), acc.tobytes(), tuple(code)


# odd lengths, lengths just off a chunk, chunk counts that do not divide by 2 or 3
LENGTHS = [1, 7, CHUNK - 1, CHUNK + 1, 2 * CHUNK + 3, 7 * CHUNK + 5, 100_003]


@needs_ext
@pytest.mark.parametrize("d", LENGTHS)
@pytest.mark.parametrize("levels", [1, 2, 7, 300])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_same_bytes_on_any_thread_count(d, levels, dtype):
    """min_size=0 puts even tiny vectors on the threads; 5 threads is above the cores here."""
    x = np.random.default_rng(d + levels).standard_normal(d).astype(dtype)
    for bs in sorted({1, 5, 16, 1000, CHUNK + 1, d}):
        with kernels.threads(1):
            serial = _run(x, bs, levels)
        with kernels.use_twins():
            twin = _run(x, bs, levels)
        assert twin[:2] == serial[:2] and np.array_equal(
            np.frombuffer(twin[2], dtype), np.frombuffer(serial[2], dtype))
        for n in (2, 3, 5):
            with kernels.threads(n, min_size=0):
                assert _run(x, bs, levels) == serial, (bs, n)


@needs_ext
def test_above_and_below_the_threshold():
    """At the real threshold: a vector below it and one above it (with an odd chunk count)."""
    for d in (kernels.PARALLEL_MIN_SIZE - 1, kernels.PARALLEL_MIN_SIZE + 3 * CHUNK + 7):
        x = np.random.default_rng(d).standard_normal(d).astype(np.float32)
        with kernels.threads(1):
            serial = [_run(x, bs, 4) for bs in (d, 4096)]
        for n in (2, 3):
            with kernels.threads(n):
                assert [_run(x, bs, 4) for bs in (d, 4096)] == serial


@needs_ext
@pytest.mark.parametrize("levels", [1, 5])   # 5: b = 4, code 15 is level 7 > 5
def test_first_error_reported_on_threads(levels):
    """A payload bad in several places reports the first, whichever thread finds it."""
    d, bs = 9 * CHUNK + 11, 100
    x = np.random.default_rng(0).standard_normal(d).astype(np.float32)
    sc = kernels.block_scales(x, bs, kernels.NORM_2)
    out = np.empty(4 * sc.size + ref.symbols_nbytes(d, levels), dtype=np.uint8)
    kernels.dither_encode(x, sc, bs, levels, 1, out)
    nb = 4 * sc.size
    for pos in (nb + out.size // 2, nb + out.size // 3 + 1, out.size - 40):
        out[pos] = 255                       # a trit byte >= 243 / an out-of-range level
    acc = np.zeros(d, np.float32)
    with kernels.threads(1):
        want = kernels.dither_decode_add(out, d, bs, levels, acc, 1.0)
    assert want[0] != kernels.ERR_OK
    for n in (2, 3, 5):
        with kernels.threads(n, min_size=0):
            assert kernels.dither_decode_add(out, d, bs, levels, acc, 1.0) == want
    assert not acc.any()                     # an invalid payload never touches out


@needs_ext
def test_threads_take_effect_when_openmp_is_built():
    from psgd import _dither
    info = _dither._openmp_info()
    assert _dither._team_size(3) == (3 if info["openmp"] else 1)
    assert (info["omp_max_threads"] > 0) == info["openmp"]


@needs_ext
def test_openmp_used_when_the_compiler_has_it(tmp_path):
    """setup.py adds -fopenmp when the compiler takes it: a build that silently dropped it
    fails here (set PSGD_OPENMP=0 at build and test time for a deliberate serial build)."""
    import os
    cc = shutil.which(os.environ.get("CC", "cc"))
    if os.environ.get("PSGD_OPENMP") == "0" or cc is None:
        pytest.skip("OpenMP disabled or no C compiler")
    src = tmp_path / "p.c"
    src.write_text("#include <omp.h>\nint main(void){return omp_get_max_threads() < 1;}\n")
    ok = subprocess.run([cc, "-fopenmp", str(src), "-o", str(tmp_path / "p")],
                        capture_output=True).returncode == 0
    if not ok:
        pytest.skip("this compiler has no OpenMP")
    assert kernels.openmp_available()


def test_env_parsing():
    assert kernels.threads_from_env({}) == 1
    assert kernels.threads_from_env({"PSGD_THREADS": ""}) == 1
    assert kernels.threads_from_env({"PSGD_THREADS": " 3 "}) == 3
    for bad in ("0", "-2", "two", "1.5", str(kernels.MAX_THREADS + 1)):
        with pytest.raises(ConfigError) as exc:
            kernels.threads_from_env({"PSGD_THREADS": bad})
        msg = str(exc.value)
        assert "\n" not in msg and "PSGD_THREADS" in msg and "1 (single-threaded)" in msg
        assert repr(bad) in msg


def test_set_threads_rejects_bad_counts():
    for n in (0, kernels.MAX_THREADS + 1):
        with pytest.raises(ValueError):
            kernels.set_threads(n)
    assert kernels.THREADS == 1              # the default stays: single-threaded


def test_bad_env_is_one_line_from_the_cli(tmp_path):
    import os
    import sys
    env = dict(os.environ, PSGD_THREADS="lots")
    # cwd away from the checkout: there `-m psgd` would import the uncompiled source tree
    proc = subprocess.run([sys.executable, "-m", "psgd", "bench", "codecs", "--dim", "10"],
                          env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "PSGD_THREADS" in lines[0] and "'lots'" in lines[0], proc.stderr
