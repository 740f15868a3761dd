"""The LIBSVM reader: streamed in blocks of whole lines, optionally keeping only some rows.

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

``.bz2``, ``.gz`` and ``.xz`` files (the forms LIBSVM sets are distributed in) are decompressed
on the fly with the standard library, chosen by the file name's suffix.

Memory: the file is read in blocks of :data:`BLOCK_BYTES` (256 KiB, whole lines); each block
is parsed
(about 40 bytes of temporaries per byte of block) and only its selected rows are kept, so the
peak is the returned CSR matrix twice (the kept parts and their concatenation) plus one
block's temporaries, whatever the file size. ``rows`` lets each worker keep only its shard.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import lzma
import os
import zlib
from collections import OrderedDict
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp

from .errors import ConfigError, DataFormatError

#: largest accepted feature index (CSR indices are int32)
MAX_FEATURES = 2**31 - 1
#: bytes read (after decompression) per parsed block; a longer line makes a longer block
BLOCK_BYTES = 1 << 18
#: lines :func:`probe_libsvm` parses
PROBE_LINES = 100

_OPENERS = {".bz2": bz2.open, ".gz": gzip.open, ".xz": lzma.open}
_READ_ERRORS = (OSError, EOFError, lzma.LZMAError, zlib.error, ValueError)

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


class LibsvmInfo(NamedTuple):
    """The whole file's shape: rows m, dimension d, stored values nnz, distinct labels."""

    m: int
    d: int
    nnz: int
    labels: np.ndarray


def clear_cache() -> None:
    """Forget every parsed file (tests; long-lived processes)."""
    _CACHE.clear()


def _check_n_features(n_features):
    if n_features is None:
        return None
    if isinstance(n_features, bool) or not isinstance(n_features, (int, np.integer)) \
            or not 1 <= n_features <= MAX_FEATURES:
        raise ConfigError(f"data.n_features: got {n_features!r}; "
                          f"allowed: null or an integer in [1, {MAX_FEATURES}]")
    return int(n_features)


def _open(full):
    opener = _OPENERS.get(os.path.splitext(full)[1].lower(), open)
    try:
        return opener(full, "rb")
    except OSError as exc:
        raise DataFormatError(f"{full}: cannot read data file: {exc.strerror or exc}") from None


def _blocks(full):
    """Yield ``(block, lines before it)``: the file's bytes, decompressed, cut after newlines."""
    carry, line0 = b"", 0
    with _open(full) as fh:
        while True:
            try:
                chunk = fh.read(BLOCK_BYTES)
            except _READ_ERRORS as exc:
                kind = _OPENERS.get(os.path.splitext(full)[1].lower())
                what = "decompress" if kind else "read"
                raise DataFormatError(f"{full}: cannot {what} data file "
                                      f"({' '.join(str(exc).split()) or type(exc).__name__})"
                                      ) from None
            if not chunk:
                break
            buf = carry + chunk if carry else chunk
            cut = buf.rfind(b"\n") + 1
            if cut == 0:  # no line end yet: the line continues in the next read
                carry = buf
                continue
            carry = buf[cut:]
            yield buf[:cut], line0
            line0 += buf.count(b"\n", 0, cut)
    if carry:
        yield carry, line0


def _digest(full):
    """A hash of the file's bytes as stored (cheap next to parsing: ~1 ms per MB)."""
    h = hashlib.blake2b(digest_size=16)
    try:
        with open(full, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    except OSError as exc:
        raise DataFormatError(f"{full}: cannot read data file: {exc.strerror or exc}") from None
    return h.digest()


def read_libsvm(path, n_features: int | None = None, rows=None):
    """Read a LIBSVM file: ``(A, labels)`` with ``A`` a float64 CSR matrix of shape (m, d).

    ``path`` goes through :func:`psgd.data.resolve_path`. ``d = n_features`` when given (an index
    above it is an error) or the largest index in the file. ``rows`` (sorted row numbers,
    0-based among the file's non-blank lines) keeps only those rows, in that order; the whole
    file is still checked. Results are cached per process; the returned arrays are read-only
    and shared, so copy before modifying. See the module docstring for the accepted format.

    The cache holds the last 8 results, keyed by path, ``n_features``, ``rows`` and a hash of
    the bytes (read on every call, ~ms per MB; parsing is what is saved).
    """
    from .data import resolve_path

    n_features = _check_n_features(n_features)
    full = resolve_path(path)
    if rows is not None:
        rows = np.asarray(rows, dtype=np.int64)
        if rows.ndim != 1 or (rows.size > 1 and np.any(np.diff(rows) <= 0)) \
                or (rows.size and rows[0] < 0):
            raise ValueError("rows: expected increasing row numbers >= 0")
    # Keyed by content, not mtime: a file rewritten within the file system's timestamp
    # granularity must not hit a stale entry.
    key = (full, n_features, None if rows is None else hashlib.blake2b(rows.tobytes()).digest(),
           os.path.getsize(full), _digest(full))
    hit = _CACHE.get(key)
    if hit is not None:
        _CACHE.move_to_end(key)
        return hit
    A, labels, _ = _stream(full, n_features, rows)
    for arr in (A.data, A.indices, A.indptr, labels):
        arr.flags.writeable = False
    _CACHE[key] = (A, labels)
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return A, labels


def scan_libsvm(path, n_features: int | None = None) -> LibsvmInfo:
    """Check the whole file and return its shape and labels, keeping no rows."""
    from .data import resolve_path

    _, _, info = _stream(resolve_path(path), _check_n_features(n_features),
                         np.empty(0, dtype=np.int64))
    return info


def probe_libsvm(path, n_features: int | None = None) -> None:
    """Check that the file exists and its first :data:`PROBE_LINES` lines parse (fast)."""
    from .data import resolve_path

    n_features = _check_n_features(n_features)
    full = resolve_path(path)
    for block, line0 in _blocks(full):
        end = 0
        for _ in range(PROBE_LINES):
            nl = block.find(b"\n", end)
            if nl < 0:
                end = len(block)
                break
            end = nl + 1
        _parse_block(block[:end], full, n_features, line0)
        return
    raise DataFormatError(f"{full}: empty file (no data rows)")


def count_rows(path) -> int:
    """The number of samples (non-blank lines), without parsing them."""
    from .data import resolve_path

    full = resolve_path(path)
    m = 0
    for block, _ in _blocks(full):
        arr = np.frombuffer(block, dtype=np.uint8)
        body = np.cumsum(_CLASS[arr] > _NL, dtype=np.int64)  # non-blank bytes so far
        ends = np.flatnonzero(arr == ord("\n"))
        if ends.size == 0 or ends[-1] != arr.size - 1:
            ends = np.append(ends, arr.size - 1)  # a last line without a newline
        m += int(np.count_nonzero(np.diff(body[ends], prepend=0)))
    return m


def _stream(full, n_features, rows):
    """Parse every block; keep the rows in ``rows`` (None: all). Returns (A, labels, info)."""
    keep_labels, keep_counts, keep_index, keep_vals = [], [], [], []
    m = nnz = 0
    dmax = 0
    label_values = np.empty(0)
    nbytes = 0
    for block, line0 in _blocks(full):
        nbytes += len(block)
        labels, counts, index, vals = _parse_block(block, full, n_features, line0)
        if labels.size == 0:
            continue
        label_values = np.union1d(label_values, labels)
        if index.size:
            dmax = max(dmax, int(index.max()))
        if rows is None:
            chosen = slice(None)
            mask = slice(None)
        else:
            lo, hi = np.searchsorted(rows, [m, m + labels.size])
            chosen = rows[lo:hi] - m
            selected = np.zeros(labels.size, dtype=bool)
            selected[chosen] = True
            mask = np.repeat(selected, counts)
        keep_labels.append(labels[chosen])
        keep_counts.append(counts[chosen])
        keep_index.append((index[mask] - 1).astype(np.int32))
        keep_vals.append(vals[mask])
        m += labels.size
        nnz += index.size
    if m == 0:
        raise DataFormatError(f"{full}: empty file (no data rows)" if nbytes == 0
                              else f"{full}: no data rows")
    if n_features is None:
        if nnz == 0:
            raise DataFormatError(f"{full}: no feature indices in the file; set data.n_features")
        d = dmax
    else:
        d = n_features
    if rows is not None and rows.size and rows[-1] >= m:
        raise ValueError(f"rows: row {int(rows[-1])} does not exist ({m} rows)")
    labels = _concat(keep_labels, np.float64)
    counts = _concat(keep_counts, np.int64)
    index = _concat(keep_index, np.int32)
    vals = _concat(keep_vals, np.float64)
    del keep_index, keep_vals
    indptr = np.zeros(labels.size + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    if index.size >= 2**31 - 1:
        index = index.astype(np.int64)
    else:
        indptr = indptr.astype(np.int32)
    A = sp.csr_matrix((vals, index, indptr), shape=(labels.size, d))
    A.has_sorted_indices = True
    return A, labels, LibsvmInfo(m, d, nnz, label_values)


def _concat(parts, dtype):
    return np.concatenate(parts).astype(dtype, copy=False) if parts else np.empty(0, dtype)


def _fail(name, line, msg):
    return DataFormatError(f"{name}:{int(line)}: {msg}")


_EMPTY_BLOCK = (np.empty(0), np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64),
                np.empty(0))


def _parse_block(buf: bytes, name: str, n_features, line0: int):
    """Parse whole lines: ``(labels, features per row, 1-based indices, values)``.

    ``line0`` lines precede ``buf`` in the file (for the line numbers of errors). Every check
    of the module docstring is made here, vectorised over the block's bytes.
    """
    arr = np.frombuffer(buf, dtype=np.uint8)
    if arr.size >= 2**31 - 1:
        raise DataFormatError(f"{name}:{line0 + 1}: a line longer than {2**31 - 2} bytes")
    cls = _CLASS[arr]
    newline = cls == _NL
    # lines_before[p] = number of newlines strictly before byte p
    lines_before = np.empty(arr.size, dtype=np.int64)
    lines_before[0] = line0
    np.cumsum(newline[:-1], dtype=np.int64, out=lines_before[1:])
    lines_before[1:] += line0

    bad = np.flatnonzero(cls == _BAD)
    if bad.size:
        p = bad[0]
        raise _fail(name, lines_before[p] + 1, f"unexpected byte {bytes([arr[p]])!r} "
                    "(allowed: digits, + - . e E, ':' and whitespace)")

    sep = cls <= _NL  # whitespace or newline (no _BAD left)
    body = ~sep
    if not body.any():
        return _EMPTY_BLOCK
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

    row = np.cumsum(first, dtype=np.int64)[feat] - 1      # row of each feature
    if index.size > 1:
        same = row[1:] == row[:-1]
        bad_order = same & (index[1:] <= index[:-1])
        if bad_order.any():
            t = np.flatnonzero(bad_order)[0] + 1
            kind = "duplicate" if index[t] == index[t - 1] else "decreasing"
            raise _fail(name, fline[t], f"{kind} feature index {int(index[t])} after "
                        f"{int(index[t - 1])} (indices must increase within a line)")
    counts = np.bincount(row, minlength=labels.size)
    return np.ascontiguousarray(labels), counts, index, np.ascontiguousarray(vals)


def _snippet(buf: bytes, start, end, limit=40) -> str:
    start, end = int(start), int(end)
    text = bytes(buf[start:min(end, start + limit)])
    return repr(text.decode("ascii", "replace")) + ("..." if end - start > limit else "")


def labels_to_pm1(labels, path="data", values=None) -> np.ndarray:
    """Map a two-valued labelling to -1/+1 (the larger value becomes +1).

    ``values`` are the distinct labels of the whole file when ``labels`` are one shard's.
    Raises :class:`DataFormatError` naming ``path`` unless there are exactly two distinct labels.
    """
    labels = np.asarray(labels, dtype=np.float64)
    values = np.unique(labels) if values is None else np.asarray(values, dtype=np.float64)
    if values.size != 2:
        shown = ", ".join(f"{v:g}" for v in values[:5]) + (", ..." if values.size > 5 else "")
        raise DataFormatError(f"{path}: logistic regression needs exactly two distinct labels; "
                              f"found {values.size} ({shown})")
    return np.where(labels == values[1], 1.0, -1.0)


