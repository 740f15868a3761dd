"""Data: the ``data`` config section, data file paths, synthetic data and partitions.

Config section ``data`` (see :data:`DATA_SPEC`, checked by :func:`check_data_config`)::

    source:     synthetic | libsvm | digits | mnist1d
                (default synthetic; digits: scikit-learn's bundled 8x8 digit images; mnist1d:
                 the MNIST-1D signals, generated offline by the mnist1d package; both for the
                 networks)
    path:       LIBSVM file (see :func:`resolve_path`; .bz2/.gz/.xz read as such; libsvm only)
    n_features: libsvm: null = the largest index in the file; synthetic: default 50
    n_samples:  synthetic only, default 1000
    noise:      synthetic only, default 0.0 (std of the Gaussian noise, see :func:`synthetic`)
    condition:  synthetic only, default 1.0 (condition number of the feature covariance: its
                eigenvalues log-spaced in [1/condition, 1] in a random basis; 1 = isotropic)
    partition:  contiguous | shuffled           (default contiguous; see :func:`partition`)

The LIBSVM reader is :mod:`psgd.libsvm` (its names are re-exported here).
"""

from __future__ import annotations

import functools
import os
import random

import numpy as np

from .errors import ConfigError, DataFormatError
from .libsvm import (MAX_FEATURES, LibsvmInfo, clear_cache, count_rows,  # noqa: F401
                     labels_to_pm1, probe_libsvm, read_libsvm, scan_libsvm)
from .validation import Choice, Int, Nullable, Real, Str, check_params, shown

#: default sizes of a synthetic data set
SYNTHETIC_N_SAMPLES = 1000
SYNTHETIC_N_FEATURES = 50
#: fraction of synthetic logistic labels flipped at random (keeps the problem non-separable)
SYNTHETIC_LABEL_FLIP = 0.1

DATA_SPEC = {
    "source": Choice("synthetic", "libsvm", "digits", "mnist1d", default="synthetic",
                     doc="where samples come from (digits: scikit-learn's bundled 8x8 images, "
                         "1797 samples, 10 classes; mnist1d: 5000 generated 1-D signals of "
                         "length 40, 10 classes, pip install mnist1d)"),
    "path": Nullable(Str(), doc="LIBSVM file (libsvm only): absolute or ./relative as given, "
                                "a bare name in $PSGD_DATA; .bz2/.gz/.xz decompressed"),
    "n_features": Nullable(Int(1, MAX_FEATURES),
                           doc="feature count; libsvm: null = largest index in the file; "
                               f"synthetic: default {SYNTHETIC_N_FEATURES}"),
    # synthetic data are a dense m x d float64 array on every rank: 10^9 entries is 8 GB
    "n_samples": Nullable(Int(1, 10**8), doc=f"synthetic only; default {SYNTHETIC_N_SAMPLES}"),
    "noise": Nullable(Real(0, 1e6), doc="synthetic only; std of the Gaussian noise; default 0.0"),
    # real features are correlated and badly scaled, Gaussian ones are not: this lets a synthetic
    # stand-in need as many iterations as the real data set it replaces
    "condition": Nullable(Real(1, 1e12), doc="synthetic only; condition number of the feature "
                                             "covariance (eigenvalues log-spaced in "
                                             "[1/condition, 1], random basis); default 1.0"),
    "partition": Choice("contiguous", "shuffled", default="contiguous",
                        doc="how samples are split over workers"),
}

_SYNTHETIC_ONLY = ("n_samples", "noise", "condition")

#: the fixed data sets for the networks: source -> (samples, the shape of one sample)
BUNDLED = {"digits": (1797, (8, 8)), "mnist1d": (5000, (40,))}
#: the generation seed of data.source mnist1d: the package's own default, so the samples are
#: the published MNIST-1D set (the config's seed still draws the split and the partition)
MNIST1D_SEED = 42


def check_data_config(cfg) -> dict:
    """Validate the ``data`` section and fill the source-dependent defaults.

    Accepts a raw mapping or an already resolved one (idempotent): the result can be written to
    ``config.yaml`` and read back. Raises one-line :class:`ConfigError` messages.
    """
    out = check_params("data", DATA_SPEC, cfg)
    if out["source"] == "libsvm":
        if out["path"] is None:
            raise ConfigError("data.path: missing; allowed: a LIBSVM file path "
                              "(required when data.source is libsvm)")
        for key in _SYNTHETIC_ONLY:
            if out[key] is not None:
                raise ConfigError(f"data.{key}: got {shown(out[key])}; allowed: null "
                                  f"(data.{key} is only for data.source synthetic)")
    elif out["source"] in BUNDLED:
        m, shape = BUNDLED[out["source"]]
        for key in ("path", "n_features", *_SYNTHETIC_ONLY):
            if out[key] is not None:
                raise ConfigError(f"data.{key}: got {shown(out[key])}; allowed: null "
                                  f"(data.source {out['source']} is a fixed data set: {m} "
                                  f"samples, {int(np.prod(shape))} features)")
    else:
        if out["path"] is not None:
            raise ConfigError(f"data.path: got {shown(out['path'])}; allowed: null "
                              "(data.path is only for data.source libsvm)")
        if out["n_samples"] is None:
            out["n_samples"] = SYNTHETIC_N_SAMPLES
        if out["n_features"] is None:
            out["n_features"] = SYNTHETIC_N_FEATURES
        if out["noise"] is None:
            out["noise"] = 0.0
        if out["condition"] is None:
            out["condition"] = 1.0
    return out


# -- paths ------------------------------------------------------------------------------------


def resolve_path(path) -> str:
    """The absolute path of a data file.

    An absolute path (after ``~`` expansion) or one starting with ``./`` or ``../`` is taken as
    given (relative to the current directory). A bare name (``mushrooms``, ``sets/a9a``) is looked
    up in the directory in the environment variable ``PSGD_DATA`` (CONTRACT.md §3), then in the
    current directory. A missing or unreadable file raises :class:`DataFormatError` naming every
    place looked.
    """
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise DataFormatError(f"data.path: got {shown(path)}; expected a file path")
    path = os.path.expanduser(os.fspath(path))
    root = os.environ.get("PSGD_DATA")
    given = os.path.isabs(path) or path.split(os.sep, 1)[0] in (".", "..")
    if given:
        places = [os.path.abspath(path)]
        where = "taken as given"
    elif root:
        places = [os.path.abspath(os.path.join(os.path.expanduser(root), path)),
                  os.path.abspath(path)]
        where = f"looked in PSGD_DATA={root} and the current directory"
    else:
        places = [os.path.abspath(path)]
        where = ("looked in the current directory; the environment variable PSGD_DATA, where "
                 "bare names are looked up first, is not set")
    for full in places:
        if os.path.isfile(full):
            if not os.access(full, os.R_OK):
                raise DataFormatError(f"{full}: data file is not readable")
            return full
    tried = " and ".join(places)
    raise DataFormatError(f"{tried}: data file not found ({where})")


def check_split(m: int, n_workers: int) -> None:
    """Every worker needs at least one sample."""
    if m < n_workers:
        raise ConfigError(f"data: {m} samples cannot be split over {n_workers} workers "
                          "(each worker needs at least one sample)")


# -- synthetic data ---------------------------------------------------------------------------


#: the named streams that build a problem from its seed (independent of the run's streams,
#: psgd.runtime.Streams, so a problem is the same whatever the rank layout)
STREAM_SYNTHETIC = 1   # synthetic samples and labels
STREAM_SHUFFLE = 2     # the shuffled partition of samples over workers
STREAM_CENTERS = 3     # quadratic: worker i's center c_i (with i)
STREAM_ROTATION = 4    # quadratic: the random orthogonal basis
STREAM_COVARIANCE = 7  # synthetic: the eigenbasis of an ill-conditioned feature covariance
STREAM_SPLIT = 5       # the networks: the train/test split
STREAM_INIT = 6        # the networks: the initial weights


def _rng(seed, *stream) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed) % 2**64, *stream]))


def synthetic(problem_name: str, n_samples: int, n_features: int, seed: int, noise: float = 0.0,
              condition: float = 1.0):
    """A seeded planted-model data set ``(A, b)``; ``A`` is a dense (m, d) float64 array.

    Rows of ``A`` are i.i.d. N(0, C) with ``C = I_d`` when ``condition`` is 1; otherwise
    ``C = Q diag(c) Q^T`` with eigenvalues ``c`` log-spaced from 1 down to ``1 / condition`` and
    ``Q`` a Haar-random orthogonal basis (stream :data:`STREAM_COVARIANCE`, so the isotropic data
    are unchanged). The planted model is ``x_true ~ N(0, I_d / d)``, rescaled by
    ``sqrt(d / trace C)`` so ``A @ x_true`` has unit variance per sample either way.

    * ``logistic``: ``b = sign(A x_true + noise * N(0, 1))`` in {-1, +1}, then each label is flipped
      with probability :data:`SYNTHETIC_LABEL_FLIP` (0.1) so the data are not separable and the
      unregularised problem has a minimiser;
    * ``least_squares``: ``b = A x_true + noise * N(0, 1)``.

    The same arguments always give the same arrays.
    """
    if problem_name not in ("logistic", "least_squares"):
        raise ConfigError(f"problem.name: got {problem_name!r}; synthetic data are generated for "
                          "logistic and least_squares only")
    m, d = int(n_samples), int(n_features)
    rng = _rng(seed, STREAM_SYNTHETIC)
    A = rng.standard_normal((m, d))
    x_true = rng.standard_normal(d) / np.sqrt(d)
    if condition != 1.0:
        c = np.asarray(condition, float) ** -np.linspace(0.0, 1.0, d)
        q, r = np.linalg.qr(_rng(seed, STREAM_COVARIANCE).standard_normal((d, d)))
        q *= np.sign(np.diag(r))  # sign fix: Q is Haar-distributed
        A = (A * np.sqrt(c)) @ q.T
        x_true *= np.sqrt(d / c.sum())
    z = A @ x_true
    eps = rng.standard_normal(m)
    if problem_name == "least_squares":
        return A, z + noise * eps
    b = np.where(z + noise * eps >= 0, 1.0, -1.0)
    flip = rng.random(m) < SYNTHETIC_LABEL_FLIP
    b[flip] = -b[flip]
    return A, b


# -- bundled data sets ------------------------------------------------------------------------


def digits():
    """scikit-learn's bundled digits: ``(X, y)``, X (1797, 64) float64 in [0, 1], y int64 0..9.

    The images ship inside scikit-learn (no download). Without scikit-learn: ConfigError.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ConfigError("data.source: got 'digits', which needs scikit-learn (not installed); "
                          "allowed: pip install scikit-learn, or another data.source") from None
    bunch = load_digits()
    return np.asarray(bunch.data, dtype=np.float64) / 16.0, np.asarray(bunch.target, np.int64)


@functools.lru_cache(maxsize=1)
def mnist1d():
    """MNIST-1D: ``(X, y)``, X (5000, 40) float64 (standardised by the package), y int64 0..9.

    Generated procedurally by the ``mnist1d`` package's ``make_dataset`` with its default
    arguments and generation seed :data:`MNIST1D_SEED` (never its ``get_dataset``, which
    downloads); the package's train/test halves are pooled, the networks split them with the
    config's seed. Cached per process (generating takes about 2 s). Without the package:
    ConfigError. The arrays are read-only.
    """
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError:
        raise ConfigError("data.source: got 'mnist1d', which needs the mnist1d package (not "
                          "installed); allowed: pip install mnist1d, or another data.source") \
            from None
    args = get_dataset_args()
    args.seed = MNIST1D_SEED
    # make_dataset seeds the global random and numpy.random streams: restore them, so loading
    # the data does not change what any other code draws from them
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        ds = make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    X = np.ascontiguousarray(np.concatenate([ds["x"], ds["x_test"]]), dtype=np.float64)
    y = np.concatenate([ds["y"], ds["y_test"]]).astype(np.int64)
    X.flags.writeable = y.flags.writeable = False
    return X, y


def bundled(source: str):
    """``(X, y)`` of a fixed data set (:data:`BUNDLED`): X (m, features) flat, y int64 0..9."""
    return {"digits": digits, "mnist1d": mnist1d}[source]()


# -- partitions -------------------------------------------------------------------------------


def partition(m: int, n_workers: int, how: str = "contiguous", seed: int = 0) -> list:
    """Row indices of each worker's shard: a list of ``n_workers`` sorted int64 arrays.

    ``contiguous``: ``np.array_split(range(m))`` (shard sizes differ by at most one);
    ``shuffled``: a permutation seeded by ``seed``, then split the same way (each shard sorted).
    The shards are disjoint and cover ``range(m)``.
    """
    m, n_workers = int(m), int(n_workers)
    if n_workers < 1:
        raise ConfigError(f"n_workers: got {n_workers}; allowed: an integer >= 1")
    check_split(m, n_workers)
    if how == "contiguous":
        order = np.arange(m, dtype=np.int64)
        return [np.ascontiguousarray(s) for s in np.array_split(order, n_workers)]
    if how == "shuffled":
        order = _rng(seed, STREAM_SHUFFLE).permutation(m).astype(np.int64)
        return [np.sort(s) for s in np.array_split(order, n_workers)]
    raise ConfigError(f"data.partition: got {how!r}; allowed: one of contiguous, shuffled")
