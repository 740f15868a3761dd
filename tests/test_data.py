"""psgd.data: the data config section, the LIBSVM reader, synthetic data and partitions."""

import random

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from psgd import data
from psgd.errors import ConfigError, DataFormatError


@pytest.fixture(scope="module")
def libsvm_dir(data_dir):
    """The LIBSVM directory (conftest's data_dir skips with a reason when it is missing)."""
    return data_dir


def write(tmp_path, content: bytes, name="f.svm"):
    p = tmp_path / name
    p.write_bytes(content)
    return str(p)


# -- config section ---------------------------------------------------------------------------


def test_defaults_synthetic():
    cfg = data.check_data_config({})
    assert cfg == {"source": "synthetic", "path": None, "n_features": 50, "n_samples": 1000,
                   "noise": 0.0, "condition": 1.0, "partition": "contiguous"}
    assert data.check_data_config(cfg) == cfg  # resolved configs round-trip


def test_libsvm_config_round_trip():
    cfg = data.check_data_config({"source": "libsvm", "path": "a9a", "partition": "shuffled"})
    assert cfg["n_samples"] is None and cfg["noise"] is None and cfg["n_features"] is None
    assert data.check_data_config(cfg) == cfg


@pytest.mark.parametrize("cfg, key", [
    ({"source": "libsvm"}, "data.path"),
    ({"source": "libsvm", "path": "a9a", "n_samples": 10}, "data.n_samples"),
    ({"source": "libsvm", "path": "a9a", "noise": 0.1}, "data.noise"),
    ({"source": "libsvm", "path": "a9a", "condition": 10}, "data.condition"),
    ({"condition": 0.5}, "data.condition"),
    ({"source": "synthetic", "path": "a9a"}, "data.path"),
    ({"source": "csv"}, "data.source"),
    ({"n_samples": 0}, "data.n_samples"),
    ({"noise": -1.0}, "data.noise"),
    ({"partition": "random"}, "data.partition"),
    ({"n_sample": 10}, "data.n_sample"),
])
def test_config_errors(cfg, key):
    with pytest.raises(ConfigError) as exc:
        data.check_data_config(cfg)
    msg = str(exc.value)
    assert msg.startswith(key) and "\n" not in msg


# -- paths ------------------------------------------------------------------------------------


def test_resolve_relative_against_psgd_data(tmp_path, monkeypatch):
    p = write(tmp_path, b"1 1:1\n", "tiny")
    monkeypatch.setenv("PSGD_DATA", str(tmp_path))
    assert data.resolve_path("tiny") == p
    assert data.resolve_path(p) == p
    with pytest.raises(DataFormatError, match="PSGD_DATA=") as exc:
        data.resolve_path("missing")
    assert str(tmp_path / "missing") in str(exc.value)


def test_missing_file_without_psgd_data(tmp_path, monkeypatch):
    monkeypatch.delenv("PSGD_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataFormatError, match="PSGD_DATA.*not set"):
        data.read_libsvm("no_such_file")
    with pytest.raises(DataFormatError, match="not found"):
        data.read_libsvm(str(tmp_path / "absent"))


# -- LIBSVM reader ----------------------------------------------------------------------------


def test_parse_small_file(tmp_path):
    p = write(tmp_path, b"+1 1:0.5 3:-2e-3\n\n-1\n  \n2 2:.25\t4:1E1\r\n")
    A, y = data.read_libsvm(p)
    assert sp.isspmatrix_csr(A) and A.dtype == np.float64 and y.dtype == np.float64
    np.testing.assert_array_equal(y, [1.0, -1.0, 2.0])
    np.testing.assert_array_equal(A.toarray(), [[0.5, 0, -2e-3, 0], [0, 0, 0, 0], [0, 0.25, 0, 10.0]])
    A2, _ = data.read_libsvm(p, n_features=6)
    assert A2.shape == (3, 6)


def test_cache_returns_same_read_only_arrays(tmp_path):
    p = write(tmp_path, b"1 1:1\n-1 2:1\n")
    A1, y1 = data.read_libsvm(p)
    A2, y2 = data.read_libsvm(p)
    assert A1 is A2 and y1 is y2
    assert not y1.flags.writeable and not A1.data.flags.writeable
    # rewriting the file (same size, same second) must not hit the stale entry
    write(tmp_path, b"1 1:2\n-1 2:1\n")
    A3, _ = data.read_libsvm(p)
    assert A3[0, 0] == 2.0


@pytest.mark.parametrize("content, line, what", [
    (b"1 1:1\n2 3:1 2:1\n", 2, "decreasing feature index"),
    (b"1 1:1\n2 3:1 3:1\n", 2, "duplicate feature index"),
    (b"1 1:1\n\nx 2:1\n", 3, "unexpected byte"),
    (b"1 1:1\n1 0:1\n", 2, "must be >= 1"),
    (b"1 1:1\n1 2:nan\n", 2, "unexpected byte"),
    (b"1 1:1\n1 2:1e999\n", 2, "not finite"),
    (b"1e999 1:1\n", 1, "label is not finite"),
    (b"1 1:1\n1 2:\n", 2, "expected index:value"),
    (b"1:1 2:1\n", 1, "must start with a label"),
    (b"1 1:1 2\n", 1, "expected index:value"),
    (b"1 1.5:1\n", 1, "positive integer"),
    (b"1 -3:1\n", 1, "positive integer"),
    (b"1 1:1:1\n", 1, "expected index:value"),
    (b"1 1:1\n1 2:1e\n", 2, "bad feature value"),
    (b"1 1:1\n- 2:1\n", 2, "bad label"),
    (b"1 99999999999:1\n", 1, "too large"),
    (b"1 1:1\xff\n", 1, "unexpected byte"),
])
def test_malformed_line_names_file_and_line(tmp_path, content, line, what):
    p = write(tmp_path, content)
    with pytest.raises(DataFormatError) as exc:
        data.read_libsvm(p)
    msg = str(exc.value)
    assert msg.startswith(f"{p}:{line}: ") and what in msg and "\n" not in msg


@pytest.mark.parametrize("content, what", [
    (b"", "empty file"), (b"\n \n\t", "no data rows"), (b"1\n-1\n", "set data.n_features")])
def test_file_level_errors(tmp_path, content, what):
    p = write(tmp_path, content)
    with pytest.raises(DataFormatError, match=what):
        data.read_libsvm(p)


def test_index_above_n_features(tmp_path):
    p = write(tmp_path, b"1 1:1\n1 5:1\n")
    with pytest.raises(DataFormatError, match=r":2: feature index 5 exceeds n_features=4"):
        data.read_libsvm(p, n_features=4)


def test_empty_feature_rows_with_n_features(tmp_path):
    A, y = data.read_libsvm(write(tmp_path, b"1\n-1\n"), n_features=3)
    assert A.shape == (2, 3) and A.nnz == 0


def test_fuzz_only_data_format_errors(tmp_path):
    """A small in-suite version of the fuzz run: mutated inputs only ever raise DataFormatError."""
    seeds = [b"1 6:1 8:1 15:1 21:1\n2 6:1 8:1 20:1\n", b"0 1:0.18257 2:-1e-3\n1 3:.5\n",
             b"-1 41:1 54:1\n-1 \n+1 2:3\r\n"]
    alphabet = b" \t\n\r:.-+eE0123456789\x00\xffxn"
    rnd = random.Random(1234)
    path = tmp_path / "fuzz"
    for _ in range(1000):
        b = bytearray(rnd.choice(seeds))
        for _ in range(rnd.randint(1, 5)):
            p = rnd.randrange(len(b)) if b else 0
            op = rnd.random()
            if not b or op < 0.3:
                b.insert(p, rnd.choice(alphabet))
            elif op < 0.6:
                b[p] = rnd.choice(alphabet)
            elif op < 0.8:
                del b[p]
            else:
                b = b[:p]
        path.write_bytes(bytes(b))
        try:
            A, y = data.read_libsvm(str(path), rnd.choice([None, 60]))
        except DataFormatError as exc:
            assert "\n" not in str(exc)
        else:
            assert A.shape[0] == y.size and np.isfinite(A.data).all() and np.isfinite(y).all()


def test_real_files(libsvm_dir):
    A, y = data.read_libsvm(str(libsvm_dir / "mushrooms"))
    assert A.shape == (8124, 112)
    pm = data.labels_to_pm1(y, "mushrooms")
    assert set(np.unique(y)) == {1.0, 2.0}
    assert (pm == 1).sum() == 4208 and (pm == -1).sum() == 3916  # label 2 -> +1

    A, y = data.read_libsvm(str(libsvm_dir / "phishing"))
    assert A.shape == (11055, 68)
    pm = data.labels_to_pm1(y, "phishing")
    assert (pm == 1).sum() == 6157 and (pm == -1).sum() == 4898
    np.testing.assert_allclose(spla.norm(A, axis=1), 1.0, atol=1e-4)

    A, y = data.read_libsvm(str(libsvm_dir / "a9a.t"), n_features=123)
    assert A.shape == (16281, 123)
    assert data.read_libsvm(str(libsvm_dir / "a9a.t"))[0].shape == (16281, 122)

    A, y = data.read_libsvm(str(libsvm_dir / "a9a"))
    assert A.shape == (32561, 123) and (y == 1).sum() == 7841


def test_labels_to_pm1_errors():
    np.testing.assert_array_equal(data.labels_to_pm1([0, 1, 1, 0]), [-1, 1, 1, -1])
    np.testing.assert_array_equal(data.labels_to_pm1([-1, 1]), [-1, 1])
    with pytest.raises(DataFormatError, match="myfile: .*exactly two distinct labels; found 3"):
        data.labels_to_pm1([1, 2, 3], "myfile")
    with pytest.raises(DataFormatError, match="found 1"):
        data.labels_to_pm1([1, 1], "myfile")


# -- synthetic data and partitions ------------------------------------------------------------


def test_synthetic_deterministic_by_seed():
    A1, b1 = data.synthetic("logistic", 200, 10, seed=3, noise=0.1)
    A2, b2 = data.synthetic("logistic", 200, 10, seed=3, noise=0.1)
    A3, b3 = data.synthetic("logistic", 200, 10, seed=4, noise=0.1)
    np.testing.assert_array_equal(A1, A2)
    np.testing.assert_array_equal(b1, b2)
    assert not np.array_equal(A1, A3)
    assert A1.shape == (200, 10) and set(np.unique(b1)) == {-1.0, 1.0}


def test_synthetic_least_squares_noise():
    A, b0 = data.synthetic("least_squares", 500, 5, seed=0, noise=0.0)
    _, b1 = data.synthetic("least_squares", 500, 5, seed=0, noise=0.5)
    x = np.linalg.lstsq(A, b0, rcond=None)[0]
    assert np.allclose(A @ x, b0)  # noise-free: exactly linear
    assert 0.3 < np.std(b1 - b0) < 0.7
    with pytest.raises(ConfigError):
        data.synthetic("quadratic", 10, 2, 0)


def test_synthetic_condition():
    A0, b0 = data.synthetic("least_squares", 300, 8, seed=1, noise=0.1)
    A1, b1 = data.synthetic("least_squares", 300, 8, seed=1, noise=0.1, condition=1.0)
    np.testing.assert_array_equal(A0, A1)  # the isotropic data are what they always were
    np.testing.assert_array_equal(b0, b1)
    A, b = data.synthetic("least_squares", 20000, 8, seed=1, noise=0.0, condition=1000.0)
    eig = np.linalg.eigvalsh(A.T @ A / len(A))
    np.testing.assert_allclose(eig, 1000.0 ** -np.linspace(1, 0, 8), rtol=0.1)
    # the planted model keeps unit variance per sample on average over seeds (one seed's x_true
    # has only d = 8 random components, so its own variance spreads widely)
    var = [np.var(data.synthetic("least_squares", 2000, 8, seed=s, condition=1000.0)[1])
           for s in range(40)]
    assert 0.8 < np.mean(var) < 1.2
    # the eigenbasis is random, not the coordinate axes
    assert np.abs(np.corrcoef(A.T) - np.eye(8)).max() > 0.2
    Al, bl = data.synthetic("logistic", 300, 8, seed=1, noise=0.1, condition=100.0)
    assert set(np.unique(bl)) == {-1.0, 1.0} and not np.array_equal(Al, A0)


@pytest.mark.parametrize("how", ["contiguous", "shuffled"])
def test_partition_sizes_and_coverage(how):
    shards = data.partition(8124, 5, how, seed=7)
    sizes = [s.size for s in shards]
    assert sizes == [1625, 1625, 1625, 1625, 1624]
    allrows = np.concatenate(shards)
    assert np.array_equal(np.sort(allrows), np.arange(8124))
    if how == "contiguous":
        assert np.array_equal(allrows, np.arange(8124))
    else:
        assert not np.array_equal(allrows, np.arange(8124))
        again = data.partition(8124, 5, how, seed=7)
        assert all(np.array_equal(a, b) for a, b in zip(shards, again))


def test_partition_too_few_samples():
    with pytest.raises(ConfigError, match="3 samples cannot be split over 5 workers"):
        data.partition(3, 5)
    assert [s.tolist() for s in data.partition(2, 2)] == [[0], [1]]
