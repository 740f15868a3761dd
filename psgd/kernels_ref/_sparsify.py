"""NumPy twin of ``cython_ext/_sparsify.pyx``: rand_k / top_k selection and index coding."""

from __future__ import annotations

import numpy as np

from .errors import ERR_INDEX, ERR_NONCANONICAL, ERR_OK, ERR_TRAILING, ERR_VALUE, ERR_VARINT
from .splitmix import splitmix64

# ====================================================================================
# Sparse codes (rand_k, top_k): twins of cython_ext/_sparse.pyx
# ====================================================================================
# rand_k index selection (exactly uniform k-subsets from a 64-bit seed)
# --------------------------------------------------------------------
# Draw j = 0, 1, 2, ... uses ``r_j = splitmix64(seed + (j+1) * GAMMA) >> 32`` (the top
# 32 bits of the same SplitMix64 output as above) and Lemire's multiply-shift with
# rejection: ``m = r_j * d``; the draw is rejected if ``m mod 2**32 < (2**32 - d) mod d``,
# else ``v_j = m >> 32`` is uniform on range(d). The selected set is the first
# ``n`` distinct values of the accepted v_j, with ``n = k`` if ``2k <= d`` and else
# ``n = d - k`` and the set is the complement (so at most d ln 2 draws are needed).
# Either way the result is a uniformly random k-subset, returned sorted.
#
# top_k selection
# ---------------
# The k coordinates with the largest |x_i| compared exactly in the input dtype (by the
# bit pattern of |x_i|, which orders finite floats), ties broken towards the LOWEST
# index; returned sorted. NaN or Inf in x is a ValueError.
#
# Index coding (top_k; rand_k when the indices travel)
# ----------------------------------------------------
# Sorted indices i_0 < i_1 < ... become gaps ``g_0 = i_0``, ``g_e = i_e - i_{e-1} - 1``,
# each written as an unsigned LEB128 varint (7 bits per byte, least significant group
# first, bit 7 set on every byte but the last): ``8 * ceil(max(1, bitlen(g)) / 7)``
# bits per index. Decoding rejects a varint longer than 5 bytes or >= 2**32
# (ERR_VARINT), one running past the buffer (ERR_VARINT), a redundant zero high
# byte (ERR_NONCANONICAL), an index >= d (ERR_INDEX) and bytes after the k-th
# varint (ERR_TRAILING); ``where`` is the byte offset of the varint, the entry
# number for ERR_INDEX, the offset of the first extra byte for ERR_TRAILING.

MAX_DIM = 2**32 - 1


def randk_indices(seed: int, d: int, k: int) -> np.ndarray:
    """The sorted k-subset of range(d) that the stream of ``seed`` selects (see above)."""
    if not 0 <= d <= MAX_DIM:
        raise ValueError(f"d must be in [0, {MAX_DIM}], got {d}")
    if not 0 <= k <= d:
        raise ValueError(f"k must be in [0, d={d}], got {k}")
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    complement = 2 * k > d
    n = d - k if complement else k
    chosen = np.zeros(0, dtype=np.uint64)
    if n:
        thresh = np.uint64((2**32 - d) % d)
        # expected draws for n distinct values: d (H_d - H_{d-n}) ~ -d log(1 - n/d); the
        # batch is regrown (rarely) until it holds n distinct accepted values
        expect = -d * np.log1p(-n / d)
        m = int(1.05 * expect + 6 * np.sqrt(expect) + 64)
        while True:
            r = splitmix64(seed, 0, m) >> np.uint64(32)
            prod = r * np.uint64(d)
            v = (prod >> np.uint64(32))[(prod & np.uint64(0xFFFFFFFF)) >= thresh]
            _, first = np.unique(v, return_index=True)
            if first.size >= n:
                chosen = v[np.sort(first)[:n]]
                break
            m *= 2
    mark = np.zeros(d, dtype=bool)
    mark[chosen.astype(np.int64)] = True
    if complement:
        mark = ~mark
    return np.flatnonzero(mark).astype(np.int64)


def _abs_keys(x: np.ndarray) -> np.ndarray:
    if x.dtype == np.float32:
        key = x.view(np.uint32) & np.uint32(0x7FFFFFFF)
        inf = np.uint32(0x7F800000)
    else:
        key = np.ascontiguousarray(x, dtype=np.float64).view(np.uint64) & np.uint64(0x7FFFFFFFFFFFFFFF)
        inf = np.uint64(0x7FF0000000000000)
    if key.size and key.max() >= inf:
        raise ValueError("topk_indices: x holds NaN or Inf")
    return key


def topk_indices(x: np.ndarray, k: int) -> np.ndarray:
    """Sorted indices of the k largest |x_i|, ties to the lowest index; ValueError on NaN/Inf."""
    d = x.size
    if not 0 <= k <= d:
        raise ValueError(f"k must be in [0, d={d}], got {k}")
    key = _abs_keys(x)
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    if k == d:
        return np.arange(d, dtype=np.int64)
    t = np.partition(key, d - k)[d - k]          # the k-th largest key
    take = key > t
    eq = np.flatnonzero(key == t)[:k - int(np.count_nonzero(take))]
    take[eq] = True
    return np.flatnonzero(take).astype(np.int64)


def _gaps(idx: np.ndarray) -> np.ndarray:
    idx = np.asarray(idx, dtype=np.int64)
    g = np.diff(idx, prepend=np.int64(-1)) - 1
    if g.size and (g.min() < 0 or idx[-1] > MAX_DIM):
        raise ValueError("indices must be strictly increasing, in [0, 2**32 - 1)")
    return g.astype(np.uint64)


def _varint_lengths(g: np.ndarray) -> np.ndarray:
    n = np.ones(g.size, dtype=np.int64)
    for b in range(1, 10):                       # 7-bit groups of a uint64 (10 at most)
        n += g >= np.uint64(1 << (7 * b))
    return n


def gaps_nbytes(idx: np.ndarray) -> int:
    """Bytes of the LEB128 varints of the gaps of the sorted indices idx."""
    return int(_varint_lengths(_gaps(idx)).sum())


def gaps_encode(idx: np.ndarray, out: np.ndarray) -> None:
    """Write the gap varints of idx into out (exactly gaps_nbytes(idx) bytes)."""
    g = _gaps(idx)
    lens = _varint_lengths(g)
    total = int(lens.sum())
    if out.size != total:
        raise ValueError(f"gaps_encode: out has {out.size} bytes, expected {total}")
    start = np.cumsum(lens) - lens
    for b in range(int(lens.max(initial=0))):   # byte position within a varint (<= 5)
        sel = lens > b
        byte = (g[sel] >> np.uint64(7 * b)) & np.uint64(0x7F)
        byte |= np.where(lens[sel] > b + 1, np.uint64(0x80), np.uint64(0))
        out[start[sel] + b] = byte.astype(np.uint8)


def gaps_decode(buf: np.ndarray, d: int, idx: np.ndarray) -> tuple[int, int]:
    """Parse exactly idx.size gap varints filling buf into idx; return (code, where)."""
    buf = np.asarray(buf, dtype=np.uint8)
    n, k = buf.size, idx.size
    ends = np.flatnonzero(buf < 0x80)[:k]        # the last byte of each varint
    starts = np.concatenate(([0], ends[:-1] + 1)).astype(np.int64)[:ends.size]
    lens = ends - starts + 1
    # first malformed varint among the complete ones (stream order)
    bad_long = (lens > 5) | ((lens == 5) & (buf[ends] > 0x0F))
    bad_canon = (lens > 1) & (buf[ends] == 0)
    bad = bad_long | bad_canon
    nfirst = int(np.argmax(bad)) if bad.any() else ends.size
    # values of the well-formed ones before it
    ok_starts, ok_lens = starts[:nfirst], lens[:nfirst]
    nbytes_ok = int(ok_lens.sum())
    if nbytes_ok:
        shift = (np.arange(nbytes_ok) - np.repeat(ok_starts, ok_lens)) * 7
        parts = (buf[:nbytes_ok] & np.uint8(0x7F)).astype(np.uint64) << shift.astype(np.uint64)
        vals = np.add.reduceat(parts, ok_starts)   # groups never overlap: sum == OR
        pos = np.cumsum(vals + np.uint64(1)) - np.uint64(1)   # < k * 2^32 < 2^64
        over = np.flatnonzero(pos >= np.uint64(d))
    else:
        pos = np.zeros(0, dtype=np.uint64)
        over = np.zeros(0, dtype=np.int64)
    if over.size:
        return ERR_INDEX, int(over[0])
    if nfirst < ends.size:
        return (ERR_VARINT if bad_long[nfirst] else ERR_NONCANONICAL), int(starts[nfirst])
    if ends.size < k:                            # the next varint runs past the end
        start = int(ends[-1]) + 1 if ends.size else 0
        return ERR_VARINT, start
    end = int(ends[-1]) + 1 if k else 0
    if end != n:
        return ERR_TRAILING, end
    idx[:] = pos.astype(np.int64)
    return ERR_OK, -1


def sparse_add(idx: np.ndarray, values: np.ndarray, scale: float, out: np.ndarray,
               weight: float) -> tuple[int, int]:
    """Validate the little-endian float32 values; if all finite, out[idx] += weight*(scale*v)."""
    k = idx.size
    if values.size != 4 * k:
        raise ValueError(f"sparse_add: values has {values.size} bytes, expected {4 * k}")
    if k and (idx.min() < 0 or idx.max() >= out.size):
        raise ValueError(f"sparse_add: index out of range for d={out.size}")
    bits = np.frombuffer(values.tobytes(), dtype="<u4")
    bad = (bits >> 23) & 0xFF == 0xFF
    if bad.any():
        return ERR_VALUE, int(np.argmax(bad))
    v = scale * bits.view("<f4").astype(np.float64)
    out[idx] += (weight * v).astype(out.dtype, copy=False)
    return ERR_OK, -1
