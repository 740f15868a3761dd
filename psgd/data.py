"""Data: the ``data`` config section, a LIBSVM reader, synthetic data and partitions.

Config section ``data`` (see :data:`DATA_SPEC`, checked by :func:`check_data_config`)::

    source:     synthetic | libsvm              (default synthetic)
    path:       LIBSVM file; absolute, or relative to the directory in $PSGD_DATA (libsvm only)
    n_features: libsvm: null = the largest index in the file; synthetic: default 50
    n_samples:  synthetic only, default 1000
    noise:      synthetic only, default 0.0 (std of the Gaussian noise, see :func:`synthetic`)
    partition:  contiguous | shuffled           (default contiguous; see :func:`partition`)

LIBSVM format accepted by :func:`read_libsvm` (one sample per line)::

    <label> <index>:<value> <index>:<value> ...

* separators are any ASCII whitespace (space, tab, CR, VT, FF); blank lines are skipped;
* the label and the values are decimal numbers (``-1``, ``2``, ``0.18257``, ``1e-3``) and must be
  finite; ``nan``/``inf`` spellings and any character other than digits, ``+-.eE:`` and
  whitespace are rejected;
* indices are 1-based decimal integers (digits only) and must be **strictly increasing** within a
  line, as LIBSVM itself requires; a duplicate or decreasing index is an error (this keeps the CSR
  matrix canonical: no silent summing of duplicates);
* a line may have a label and no features (an all-zero row, as in w8a);
* ``qid:``, comments and other extensions are not supported.

Every problem raises :class:`~psgd.errors.DataFormatError` naming the file and the 1-based line
number, and nothing else: the reader works on raw bytes and never decodes text, so arbitrary bytes
cannot crash or hang it.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict

import numpy as np
import scipy.sparse as sp

from .errors import ConfigError, DataFormatError
from .validation import Choice, Int, Nullable, Real, Str, check_params

#: default sizes of a synthetic data set
SYNTHETIC_N_SAMPLES = 1000
SYNTHETIC_N_FEATURES = 50
#: fraction of synthetic logistic labels flipped at random (keeps the problem non-separable)
SYNTHETIC_LABEL_FLIP = 0.1
#: largest accepted feature index (CSR indices are int32)
MAX_FEATURES = 2**31 - 1

DATA_SPEC = {
    "source": Choice("synthetic", "libsvm", default="synthetic",
                     doc="where samples come from"),
    "path": Nullable(Str(), doc="LIBSVM file: absolute, or relative to $PSGD_DATA (libsvm only)"),
    "n_features": Nullable(Int(1), doc="feature count; libsvm: null = largest index in the file; "
                                       f"synthetic: default {SYNTHETIC_N_FEATURES}"),
    "n_samples": Nullable(Int(1), doc=f"synthetic only; default {SYNTHETIC_N_SAMPLES}"),
    "noise": Nullable(Real(0), doc="synthetic only; std of the Gaussian noise; default 0.0"),
    "partition": Choice("contiguous", "shuffled", default="contiguous",
                        doc="how samples are split over workers"),
}

_SYNTHETIC_ONLY = ("n_samples", "noise")


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
                raise ConfigError(f"data.{key}: got {out[key]!r}; allowed: null "
                                  f"(data.{key} is only for data.source synthetic)")
    else:
        if out["path"] is not None:
            raise ConfigError(f"data.path: got {out['path']!r}; allowed: null "
                              "(data.path is only for data.source libsvm)")
        if out["n_samples"] is None:
            out["n_samples"] = SYNTHETIC_N_SAMPLES
        if out["n_features"] is None:
            out["n_features"] = SYNTHETIC_N_FEATURES
        if out["noise"] is None:
            out["noise"] = 0.0
    return out


# -- paths ------------------------------------------------------------------------------------


def resolve_path(path) -> str:
    """The absolute path of a data file.

    Absolute paths (after ``~`` expansion) are used as given. A relative path is resolved against
    the directory in the environment variable ``PSGD_DATA`` (CONTRACT.md §3); only when
    ``PSGD_DATA`` is unset is it tried relative to the current directory. A missing or unreadable
    file raises :class:`DataFormatError` naming the path and ``PSGD_DATA``.
    """
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise DataFormatError(f"data.path: got {path!r}; expected a file path")
    path = os.path.expanduser(os.fspath(path))
    root = os.environ.get("PSGD_DATA")
    if os.path.isabs(path):
        full = path
        where = ""
    elif root:
        full = os.path.join(os.path.expanduser(root), path)
        where = f" (relative paths resolve against PSGD_DATA={root})"
    else:
        full = os.path.abspath(path)
        where = (" (relative paths resolve against the directory in the environment variable "
                 "PSGD_DATA, which is not set; tried the current directory)")
    full = os.path.abspath(full)
    if not os.path.isfile(full):
        raise DataFormatError(f"{full}: data file not found{where}")
    if not os.access(full, os.R_OK):
        raise DataFormatError(f"{full}: data file is not readable{where}")
    return full


# -- LIBSVM reader ----------------------------------------------------------------------------

# byte classes
_BAD, _WS, _NL, _COLON, _DIGIT, _NUM = 0, 1, 2, 3, 4, 5
_CLASS = np.zeros(256, dtype=np.uint8)
for _c in b" \t\r\x0b\x0c":
    _CLASS[_c] = _WS
_CLASS[ord("\n")] = _NL
_CLASS[ord(":")] = _COLON
for _c in b"0123456789":
    _CLASS[_c] = _DIGIT
for _c in b"+-.eE":
    _CLASS[_c] = _NUM
del _c

_CACHE: OrderedDict = OrderedDict()
_CACHE_SIZE = 8  # parsed files kept per process (least recently used dropped)


def clear_cache() -> None:
    """Forget every parsed file (tests; long-lived processes)."""
    _CACHE.clear()


def read_libsvm(path, n_features: int | None = None):
    """Read a LIBSVM file: ``(A, labels)`` with ``A`` a float64 CSR matrix of shape (m, d).

    ``path`` goes through :func:`resolve_path`. ``d = n_features`` when given (an index above it is
    an error) or the largest index in the file. Results are cached per process; the returned
    arrays are read-only and shared, so copy before modifying. See the module docstring for the accepted format.

    The cache holds the last 8 parsed files, keyed by path, ``n_features`` and a hash of the
    bytes (the file is read on every call, ~ms; parsing is what is saved).
    """
    if n_features is not None:
        if isinstance(n_features, bool) or not isinstance(n_features, (int, np.integer)) \
                or not 1 <= n_features <= MAX_FEATURES:
            raise ConfigError(f"data.n_features: got {n_features!r}; "
                              f"allowed: null or an integer in [1, {MAX_FEATURES}]")
        n_features = int(n_features)
    full = resolve_path(path)
    try:
        with open(full, "rb") as fh:
            buf = fh.read()
    except OSError as exc:
        raise DataFormatError(f"{full}: cannot read data file: {exc.strerror or exc}") from None
    # Keyed by content, not mtime: a file rewritten within the file system's timestamp
    # granularity must not hit a stale entry. Hashing costs ~1 ms per MB; parsing ~50x more.
    key = (full, n_features, len(buf), hashlib.blake2b(buf, digest_size=16).digest())
    hit = _CACHE.get(key)
    if hit is not None:
        _CACHE.move_to_end(key)
        return hit
    A, labels = _parse_libsvm(buf, full, n_features)
    for arr in (A.data, A.indices, A.indptr, labels):
        arr.flags.writeable = False
    _CACHE[key] = (A, labels)
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return A, labels


def _fail(name, line, msg):
    return DataFormatError(f"{name}:{int(line)}: {msg}")


def _parse_libsvm(buf: bytes, name: str, n_features):
    arr = np.frombuffer(buf, dtype=np.uint8)
    if arr.size == 0:
        raise DataFormatError(f"{name}: empty file (no data rows)")
    if arr.size >= 2**31 - 1:
        raise DataFormatError(f"{name}: file too large ({arr.size} bytes)")
    cls = _CLASS[arr]
    newline = cls == _NL
    # lines_before[p] = number of newlines strictly before byte p
    lines_before = np.empty(arr.size, dtype=np.int32)
    lines_before[0] = 0
    np.cumsum(newline[:-1], dtype=np.int32, out=lines_before[1:])

    bad = np.flatnonzero(cls == _BAD)
    if bad.size:
        p = bad[0]
        raise _fail(name, lines_before[p] + 1, f"unexpected byte {bytes([arr[p]])!r} "
                    "(allowed: digits, + - . e E, ':' and whitespace)")

    sep = cls <= _NL  # whitespace or newline (no _BAD left)
    body = ~sep
    if not body.any():
        raise DataFormatError(f"{name}: no data rows")
    prev_sep = np.empty_like(sep)
    prev_sep[0] = True
    prev_sep[1:] = sep[:-1]
    next_sep = np.empty_like(sep)
    next_sep[-1] = True
    next_sep[:-1] = sep[1:]
    starts = np.flatnonzero(body & prev_sep)
    ends = np.flatnonzero(body & next_sep) + 1           # exclusive
    tok_line = lines_before[starts] + 1                   # 1-based line of each token
    first = np.empty(starts.size, dtype=bool)
    first[0] = True
    first[1:] = tok_line[1:] != tok_line[:-1]

    colon = cls == _COLON
    ccum = np.zeros(arr.size + 1, dtype=np.int32)
    np.cumsum(colon, dtype=np.int32, out=ccum[1:])
    ncolon = ccum[ends] - ccum[starts]

    bad_label = first & (ncolon != 0)
    if bad_label.any():
        t = np.flatnonzero(bad_label)[0]
        raise _fail(name, tok_line[t], "a line must start with a label, got "
                    f"{_snippet(buf, starts[t], ends[t])}")
    feat = ~first
    bad_feat = feat & (ncolon != 1)
    if bad_feat.any():
        t = np.flatnonzero(bad_feat)[0]
        raise _fail(name, tok_line[t], "expected index:value, got "
                    f"{_snippet(buf, starts[t], ends[t])}")

    fstart, fend, fline = starts[feat], ends[feat], tok_line[feat]
    cpos = np.flatnonzero(colon)                          # exactly one per feature token, in order
    bad_shape = (cpos == fstart) | (cpos == fend - 1)
    if bad_shape.any():
        t = np.flatnonzero(bad_shape)[0]
        raise _fail(name, fline[t], "expected index:value, got "
                    f"{_snippet(buf, fstart[t], fend[t])}")
    nondigit = np.zeros(arr.size + 1, dtype=np.int32)
    np.cumsum(cls != _DIGIT, dtype=np.int32, out=nondigit[1:])
    bad_index = nondigit[cpos] - nondigit[fstart] != 0
    if bad_index.any():
        t = np.flatnonzero(bad_index)[0]
        raise _fail(name, fline[t], "feature index must be a positive integer, got "
                    f"{_snippet(buf, fstart[t], cpos[t])}")
    long_index = cpos - fstart > 10  # > MAX_FEATURES for sure; keeps float parsing exact
    if long_index.any():
        t = np.flatnonzero(long_index)[0]
        raise _fail(name, fline[t], f"feature index {_snippet(buf, fstart[t], cpos[t])} is too "
                    f"large (at most {MAX_FEATURES})")

    # Numbers: split the buffer with ':' as a separator too; each label is one token, each
    # feature two (index, value), in file order.
    toks = buf.replace(b":", b" ").split()
    width = np.where(first, 1, 2)
    if len(toks) != int(width.sum()):  # cannot happen: the same whitespace set on both sides
        raise DataFormatError(f"{name}: inconsistent tokenization")
    try:
        values = np.fromiter(map(float, toks), dtype=np.float64, count=len(toks))
    except (ValueError, OverflowError):
        offset = np.cumsum(width) - width
        for i, tok in enumerate(toks):
            try:
                float(tok)
            except (ValueError, OverflowError):
                t = int(np.searchsorted(offset, i, side="right")) - 1
                what = "label" if first[t] else "feature value"
                raise _fail(name, tok_line[t], f"bad {what} {_snippet(tok, 0, len(tok))}") from None
        raise DataFormatError(f"{name}: cannot parse numbers")  # pragma: no cover
    offset = np.cumsum(width) - width
    label_pos = offset[first]
    feat_pos = offset[feat]
    labels = values[label_pos]
    index = values[feat_pos]
    vals = values[feat_pos + 1]
    row_line = tok_line[first]

    nonfinite = ~np.isfinite(labels)
    if nonfinite.any():
        r = np.flatnonzero(nonfinite)[0]
        raise _fail(name, row_line[r], f"label is not finite ({float(labels[r])!r})")
    nonfinite = ~np.isfinite(vals)
    if nonfinite.any():
        t = np.flatnonzero(nonfinite)[0]
        raise _fail(name, fline[t], f"feature value is not finite ({float(vals[t])!r})")
    low = index < 1
    if low.any():
        t = np.flatnonzero(low)[0]
        raise _fail(name, fline[t], f"feature index must be >= 1 (1-based), got {int(index[t])}")
    limit = MAX_FEATURES if n_features is None else n_features
    high = index > limit
    if high.any():
        t = np.flatnonzero(high)[0]
        if n_features is None:
            raise _fail(name, fline[t], f"feature index {int(index[t])} is too large "
                        f"(at most {MAX_FEATURES})")
        raise _fail(name, fline[t], f"feature index {int(index[t])} exceeds "
                    f"n_features={n_features}")
    index = index.astype(np.int64)

    m = labels.size
    row = np.cumsum(first, dtype=np.int64)[feat] - 1      # row of each feature
    if index.size > 1:
        same = row[1:] == row[:-1]
        bad_order = same & (index[1:] <= index[:-1])
        if bad_order.any():
            t = np.flatnonzero(bad_order)[0] + 1
            kind = "duplicate" if index[t] == index[t - 1] else "decreasing"
            raise _fail(name, fline[t], f"{kind} feature index {int(index[t])} after "
                        f"{int(index[t - 1])} (indices must increase within a line)")
    if n_features is None:
        if index.size == 0:
            raise DataFormatError(f"{name}: no feature indices in the file; set data.n_features")
        d = int(index.max())
    else:
        d = n_features
    counts = np.bincount(row, minlength=m)
    indptr = np.zeros(m + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    idx_dtype = np.int32 if max(d, index.size) < 2**31 - 1 else np.int64
    A = sp.csr_matrix((vals, (index - 1).astype(idx_dtype), indptr.astype(idx_dtype)),
                      shape=(m, d))
    A.has_sorted_indices = True
    return A, np.ascontiguousarray(labels)


def _snippet(buf: bytes, start, end, limit=40) -> str:
    start, end = int(start), int(end)
    text = bytes(buf[start:min(end, start + limit)])
    return repr(text.decode("ascii", "replace")) + ("..." if end - start > limit else "")


def labels_to_pm1(labels, path="data") -> np.ndarray:
    """Map a two-valued labelling to -1/+1 (the larger value becomes +1).

    Raises :class:`DataFormatError` naming ``path`` unless there are exactly two distinct labels.
    """
    labels = np.asarray(labels, dtype=np.float64)
    values = np.unique(labels)
    if values.size != 2:
        shown = ", ".join(f"{v:g}" for v in values[:5]) + (", ..." if values.size > 5 else "")
        raise DataFormatError(f"{path}: logistic regression needs exactly two distinct labels; "
                              f"found {values.size} ({shown})")
    return np.where(labels == values[1], 1.0, -1.0)


# -- synthetic data ---------------------------------------------------------------------------


def _rng(seed, *stream) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed) % 2**64, *stream]))


def synthetic(problem_name: str, n_samples: int, n_features: int, seed: int, noise: float = 0.0):
    """A seeded planted-model data set ``(A, b)``; ``A`` is a dense (m, d) float64 array.

    Rows of ``A`` are i.i.d. N(0, I_d); the planted model is ``x_true ~ N(0, I_d / d)`` (so
    ``A @ x_true`` has unit variance per sample).

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
    rng = _rng(seed, 1)
    A = rng.standard_normal((m, d))
    x_true = rng.standard_normal(d) / np.sqrt(d)
    z = A @ x_true
    eps = rng.standard_normal(m)
    if problem_name == "least_squares":
        return A, z + noise * eps
    b = np.where(z + noise * eps >= 0, 1.0, -1.0)
    flip = rng.random(m) < SYNTHETIC_LABEL_FLIP
    b[flip] = -b[flip]
    return A, b


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
    if m < n_workers:
        raise ConfigError(f"data: {m} samples cannot be split over {n_workers} workers "
                          "(each worker needs at least one sample)")
    if how == "contiguous":
        order = np.arange(m, dtype=np.int64)
        return [np.ascontiguousarray(s) for s in np.array_split(order, n_workers)]
    if how == "shuffled":
        order = _rng(seed, 2).permutation(m).astype(np.int64)
        return [np.sort(s) for s in np.array_split(order, n_workers)]
    raise ConfigError(f"data.partition: got {how!r}; allowed: one of contiguous, shuffled")
