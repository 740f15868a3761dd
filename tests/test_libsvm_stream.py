"""The LIBSVM reader as a stream (issue 12) and user data files (issue 16): compressed files,
paths taken as given or looked up in PSGD_DATA, shards, and bounded memory."""

import bz2
import gzip
import lzma
import os
import subprocess
import sys

import numpy as np
import pytest

from psgd import data, libsvm
from psgd.errors import DataFormatError


def same_csr(a, b):
    return (a.shape == b.shape and np.array_equal(a.indptr, b.indptr)
            and np.array_equal(a.indices, b.indices) and np.array_equal(a.data, b.data))


@pytest.mark.parametrize("suffix, opener", [(".bz2", bz2.open), (".gz", gzip.open),
                                            (".xz", lzma.open)])
def test_compressed_mushrooms_parse_to_the_same_matrix(tmp_path, data_dir, suffix, opener):
    raw = (data_dir / "mushrooms").read_bytes()
    packed = tmp_path / f"mushrooms{suffix}"
    with opener(packed, "wb") as fh:
        fh.write(raw)
    A, y = data.read_libsvm(str(data_dir / "mushrooms"))
    B, z = data.read_libsvm(str(packed))
    assert same_csr(A, B) and np.array_equal(y, z) and B.shape == (8124, 112)


def test_corrupt_compressed_file_is_one_line(tmp_path):
    path = tmp_path / "bad.bz2"
    path.write_bytes(bz2.compress(b"1 1:1\n" * 1000)[:-20])
    with pytest.raises(DataFormatError, match=f"{path}: cannot decompress data file"):
        data.read_libsvm(str(path))
    path = tmp_path / "plain.gz"
    path.write_bytes(b"1 1:1\n")
    with pytest.raises(DataFormatError, match=f"{path}: cannot decompress data file") as exc:
        data.read_libsvm(str(path))
    assert "\n" not in str(exc.value)


# -- paths ---------------------------------------------------------------------------------


def test_dot_relative_path_is_taken_as_given(tmp_path, monkeypatch):
    (tmp_path / "here").mkdir()
    (tmp_path / "store").mkdir()
    (tmp_path / "here" / "mine.txt").write_bytes(b"1 1:1\n")
    (tmp_path / "store" / "mine.txt").write_bytes(b"1 1:2\n")
    monkeypatch.setenv("PSGD_DATA", str(tmp_path / "store"))
    monkeypatch.chdir(tmp_path / "here")
    assert data.resolve_path("./mine.txt") == str(tmp_path / "here" / "mine.txt")
    assert data.resolve_path("mine.txt") == str(tmp_path / "store" / "mine.txt")
    assert data.resolve_path("../store/mine.txt") == str(tmp_path / "store" / "mine.txt")
    with pytest.raises(DataFormatError, match="taken as given"):
        data.resolve_path("./absent.txt")


def test_bare_name_falls_back_to_the_current_directory_and_errors_list_both(tmp_path,
                                                                           monkeypatch):
    (tmp_path / "store").mkdir()
    (tmp_path / "local.txt").write_bytes(b"1 1:1\n")
    monkeypatch.setenv("PSGD_DATA", str(tmp_path / "store"))
    monkeypatch.chdir(tmp_path)
    assert data.resolve_path("local.txt") == str(tmp_path / "local.txt")
    with pytest.raises(DataFormatError) as exc:
        data.resolve_path("nowhere")
    msg = str(exc.value)
    assert str(tmp_path / "store" / "nowhere") in msg and str(tmp_path / "nowhere") in msg
    assert "PSGD_DATA=" in msg and "current directory" in msg


# -- streaming -----------------------------------------------------------------------------


TEXT = (b"+1 1:0.5 3:-2e-3\n\n-1\n  \n2 2:.25\t4:1E1\r\n"
        b"1 1:1 2:2 3:3 4:4 5:5\n-1 7:7\n\n\n1 2:9")


@pytest.mark.parametrize("block", [1, 5, 17, 64, 1 << 20])
def test_blocks_of_any_size_give_the_same_matrix(tmp_path, monkeypatch, block):
    path = tmp_path / "t.svm"
    path.write_bytes(TEXT)
    whole, y = data.read_libsvm(str(path))
    data.clear_cache()
    monkeypatch.setattr(libsvm, "BLOCK_BYTES", block)
    A, z = data.read_libsvm(str(path))
    assert same_csr(A, whole) and np.array_equal(y, z) and A.shape == (6, 7)
    assert data.count_rows(str(path)) == 6
    info = data.scan_libsvm(str(path))
    assert (info.m, info.d, info.nnz) == (6, 7, 11) and info.labels.tolist() == [-1, 1, 2]


@pytest.mark.parametrize("block", [3, 1 << 20])
def test_error_line_numbers_survive_block_boundaries(tmp_path, monkeypatch, block):
    monkeypatch.setattr(libsvm, "BLOCK_BYTES", block)
    path = tmp_path / "t.svm"
    path.write_bytes(b"1 1:1\n\n-1 2:1\n1 3:1 2:1\n")
    with pytest.raises(DataFormatError, match=f"^{path}:4: decreasing feature index 2 after 3"):
        data.read_libsvm(str(path))


def test_rows_keep_only_a_shard(tmp_path, data_dir):
    full, y = data.read_libsvm(str(data_dir / "mushrooms"))
    for rows in (np.arange(1000, 2625), np.array([0, 5, 8123]), np.arange(0)):
        A, z = data.read_libsvm(str(data_dir / "mushrooms"), rows=rows)
        assert same_csr(A, full[rows]) and np.array_equal(z, y[rows])
        assert A.shape == (rows.size, 112)  # d is the whole file's
    with pytest.raises(ValueError, match="rows"):
        data.read_libsvm(str(data_dir / "mushrooms"), rows=[3, 2])


def test_probe_checks_only_the_first_lines(tmp_path):
    path = tmp_path / "t.svm"
    path.write_bytes(b"1 1:1\n" * 150 + b"1 x\n")
    data.probe_libsvm(str(path))  # line 151 is beyond the probe
    with pytest.raises(DataFormatError, match=":151: unexpected byte"):
        data.read_libsvm(str(path))
    path.write_bytes(b"1 1:1\n" * 50 + b"1 x\n")
    with pytest.raises(DataFormatError, match=":51: unexpected byte"):
        data.probe_libsvm(str(path))
    path.write_bytes(b"")
    with pytest.raises(DataFormatError, match="empty file"):
        data.probe_libsvm(str(path))


def synthetic_file(path, rows, seed=0):
    """A LIBSVM file like the real sets: ~40 features per row out of 5000."""
    rng = np.random.default_rng(seed)
    with open(path, "wb") as fh:
        for _ in range(rows // 1000):
            lines = []
            for _ in range(1000):
                idx = np.sort(rng.choice(5000, 40, replace=False)) + 1
                lines.append(b"%d " % rng.choice((-1, 1)) + b" ".join(
                    b"%d:%.6g" % (i, v) for i, v in zip(idx, rng.random(40))))
            fh.write(b"\n".join(lines) + b"\n")


def peak_rss_of_read(path, shard_of=None):
    """(extra peak RSS in bytes, CSR bytes) of read_libsvm in a fresh process, as the OS sees
    it; with ``shard_of = n`` only worker 1's contiguous shard of n is kept."""
    # VmHWM, not ru_maxrss: Linux keeps ru_maxrss across exec, so a child of a large pytest
    # process would start at its parent's peak
    hwm = ("int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1])")
    code = (f"import sys; from psgd import data; hwm = lambda: {hwm}; "
            "base = hwm(); n = int(sys.argv[2]); "
            "rows = data.partition(data.count_rows(sys.argv[1]), n)[1] if n else None; "
            "A, y = data.read_libsvm(sys.argv[1], rows=rows); "
            "print(hwm() - base, "
            "A.data.nbytes + A.indices.nbytes + A.indptr.nbytes + y.nbytes)")
    out = subprocess.run([sys.executable, "-c", code, str(path), str(shard_of or 0)],
                         capture_output=True, text=True, timeout=600, check=True).stdout.split()
    return int(out[0]) * 1024, int(out[1])


def test_peak_memory_is_a_small_multiple_of_the_result(tmp_path):
    """Issue 12 measured ~55x the file size; now the parts, their concatenation and one
    block's temporaries (tens of bytes per byte of block)."""
    path = tmp_path / "big.svm"
    synthetic_file(path, 30_000)  # ~13 MB of text, ~15 MB of CSR
    size = os.path.getsize(path)
    extra, result = peak_rss_of_read(path)
    assert extra < 4 * result and extra < 5 * size, (extra, result, size)
    shard_extra, shard = peak_rss_of_read(path, shard_of=4)
    assert shard < result / 3
    assert shard_extra < 4 * shard + 64 * libsvm.BLOCK_BYTES, (shard_extra, shard)
    assert shard_extra < extra, (shard_extra, extra)
