"""NumPy twin of ``cython_ext/_elias.pyx``: random dithering with the Elias-omega code."""

from __future__ import annotations

import numpy as np

from ._dither import _check_common, _levels_signs, nblocks
from ._quant import _bit_lengths
from .errors import (
    ERR_OK, ERR_PADDING, ERR_RANGE, ERR_SCALE, ERR_STREAM, ERR_TRAILING, ERR_ZERO_BLOCK)

# ====================================================================================
# Elias-omega random dithering (random_dithering, encoding: elias): twins of _elias.pyx
# ====================================================================================
#
# Levels and signs are those of the dense encoding (:func:`_levels_signs`: the same
# uniforms and rounding), so one seed gives the same C(x) under both encodings.
#
# Elias omega of n >= 1 (papers.md §A.0): starting from an empty code, while n > 1
# prepend bin(n) and set n = len(bin(n)) - 1; then append a 0 bit. Lengths: 1 -> 1,
# 2, 3 -> 3, 4..7 -> 6, 8..15 -> 7, 16 -> 11, 100 -> 13, 1000 -> 17. Decoding reads
# n = 1, then while the next bit is 1 reads that bit and n more as the new n; a 0 bit
# ends the code. Groups longer than 34 bits (n >= 2^34) are rejected (ERR_RANGE).
#
# Payload: ``nblocks`` little-endian float32 block scales (as the dense encoding), then
# one bit stream, MSB-first (bit k is bit 7 - k % 8 of byte k // 8):
#
#     omega(nnz + 1)                           nnz = number of nonzero levels in x
#     per nonzero coordinate i, in index order:
#         omega(i - i_prev)                    i_prev = the previous nonzero (-1 at first)
#         1 sign bit (1 = negative)
#         omega(level)                         1 <= level <= s
#
# padded with zero bits to a whole byte. This is QSGD's code (papers.md §A.0, the DIANA+
# ``standard_dithering`` count) with the block scales moved to the front and one gap
# sequence for the whole vector (a block boundary does not restart it), plus the nnz
# count that lets a decoder know where the stream ends. Bits:
#
#     32 nblocks + omega(nnz + 1) + sum_i (omega(gap_i) + 1 + omega(level_i)), rounded up to 8
#
# Upper bound (omega(g) <= g + 2 and sum of gaps <= d): 32 nblocks + d (4 + omega(s))
# + omega(d + 1) bits (:func:`elias_max_nbytes`).
#
# Decoding checks, in stream order: the scales (ERR_SCALE, where = block); the count
# (ERR_STREAM if cut short, ERR_RANGE if nnz > d; where = 0); per nonzero the gap code
# (ERR_STREAM / ERR_RANGE, also for an index >= d; where = bit offset of the code in the
# stream), the sign bit (ERR_STREAM at its offset), the level code (ERR_STREAM, or
# ERR_RANGE for level > s; at its offset), a nonzero in a block whose scale is 0
# (ERR_ZERO_BLOCK, where = coordinate); then 8 or more unused bits (ERR_TRAILING, where
# = the first unused byte) or nonzero padding (ERR_PADDING, where = the last byte).
# ``value = sign * (t * level / s)``; ``out_j += weight * value`` (cast as in the dense
# decoder). A payload shorter than the scales is ERR_STREAM at 0.

_OMEGA_MAX_GROUP = 34
_ELIAS_CHUNK = 2**18       # nonzeros packed per step (bounds the twin's memory)
_ELIAS_WINDOW = 2**15      # stream bits parsed per step by the twin decoder


def _check_elias(d, block_size, levels):
    _check_common(d, block_size, levels)
    if d > 2**32 - 1:
        raise ValueError(f"d must be in [0, 2**32 - 1], got {d}")


def omega_length(n: int) -> int:
    """Bits of the Elias-omega code of n >= 1."""
    n = int(n)
    if n < 1:
        raise ValueError("Elias omega codes n >= 1")
    total = 1
    while n > 1:
        length = n.bit_length()
        total += length
        n = length - 1
    return total


def elias_max_nbytes(d: int, block_size: int, levels: int) -> int:
    """Upper bound on the payload: 4 nblocks + ceil((d (4 + omega(s)) + omega(d + 1)) / 8)."""
    _check_elias(d, block_size, levels)
    return 4 * nblocks(d, block_size) + -(-(d * (4 + omega_length(levels)) + omega_length(d + 1)) // 8)


def _omega_fields(n: np.ndarray):
    """(values, lengths), shape (N, 6): the groups of omega(n) in writing order + the 0 bit."""
    n = n.astype(np.uint64)
    vals, lens = [], []
    v = n
    for _ in range(5):                          # n < 2^34 needs at most 4 groups
        big = v > 1
        length = np.where(big, _bit_lengths(v), 0)
        vals.append(np.where(big, v, 0).astype(np.uint64))
        lens.append(length)
        v = np.where(big, length - 1, 1).astype(np.uint64)
    vals = vals[::-1] + [np.zeros_like(n)]
    lens = lens[::-1] + [np.ones(n.size, dtype=np.int64)]
    return np.stack(vals, axis=1), np.stack(lens, axis=1)


def _msb_pack_into(words: np.ndarray, vals: np.ndarray, lens: np.ndarray, start: int) -> None:
    """OR fields (values of lens <= 40 bits, in order) MSB-first into big-endian 64-bit words
    from stream bit ``start`` on. Fields never overlap, so sums are ORs."""
    keep = lens > 0
    vals, lens = vals[keep].astype(np.uint64), lens[keep].astype(np.int64)
    if not vals.size:
        return
    off = start + np.cumsum(lens) - lens
    wi, end = off >> 6, (off & 63) + lens
    fits = end <= 64
    part = np.where(fits, vals << (np.uint64(64) - np.minimum(end, 64).astype(np.uint64)),
                    vals >> (np.maximum(end - 64, 0).astype(np.uint64)))
    starts = np.flatnonzero(np.diff(wi, prepend=-1))
    words[wi[starts]] += np.add.reduceat(part, starts)
    spill = ~fits
    words[wi[spill] + 1] += vals[spill] << (np.uint64(128) - end[spill].astype(np.uint64))


def elias_encode(x: np.ndarray, scales: np.ndarray, block_size: int, levels: int, seed: int,
                 out: np.ndarray) -> int:
    """Quantize x (dense random-dithering levels) and write the Elias-omega payload into out
    (at least elias_max_nbytes bytes); return the payload length."""
    d = x.size
    _check_elias(d, block_size, levels)
    nb = nblocks(d, block_size)
    if scales.size != nb or out.size < elias_max_nbytes(d, block_size, levels):
        raise ValueError("elias_encode: scales or out has the wrong length")
    scales = scales.astype(np.float32) + np.float32(0.0)
    if not (np.isfinite(scales) & (scales >= 0)).all():
        raise ValueError("elias_encode: scales must be finite and >= 0")
    out[:4 * nb] = np.frombuffer(scales.astype("<f4").tobytes(), dtype=np.uint8)
    level, sign = _levels_signs(x, scales, block_size, levels, seed) if d else (
        np.zeros(0, np.uint64), np.zeros(0, bool))
    nz = np.flatnonzero(level)
    gaps = np.diff(nz, prepend=-1).astype(np.uint64)
    cv, cl = _omega_fields(np.array([nz.size + 1]))
    per = (omega_length_array(gaps) + 1 + omega_length_array(level[nz])) if nz.size else np.zeros(0, np.int64)
    total = int(cl.sum()) + int(per.sum())
    nbytes = -(-total // 8)
    words = np.zeros(nbytes // 8 + 2, dtype=np.uint64)
    _msb_pack_into(words, cv.ravel(), cl.ravel(), 0)
    offsets = int(cl.sum()) + np.cumsum(per) - per
    for a in range(0, nz.size, _ELIAS_CHUNK):   # bounded memory: one chunk of nonzeros at a time
        b = min(a + _ELIAS_CHUNK, nz.size)
        gv, gl = _omega_fields(gaps[a:b])
        lv, ll = _omega_fields(level[nz[a:b]])
        vals = np.concatenate([gv, sign[nz[a:b]].astype(np.uint64)[:, None], lv], axis=1)
        lens = np.concatenate([gl, np.ones((b - a, 1), np.int64), ll], axis=1)
        _msb_pack_into(words, vals.ravel(), lens.ravel(), int(offsets[a]))
    out[4 * nb:4 * nb + nbytes] = words.astype(">u8").view(np.uint8)[:nbytes]
    return 4 * nb + nbytes


def omega_length_array(n: np.ndarray) -> np.ndarray:
    """Elias-omega code lengths of an array of n >= 1 (int64)."""
    v = np.asarray(n, dtype=np.uint64)
    total = np.ones(v.size, dtype=np.int64)
    for _ in range(5):
        big = v > 1
        length = np.where(big, _bit_lengths(v), 0)
        total += length
        v = np.where(big, length - 1, 1).astype(np.uint64)
    return total


class _Bits:
    """Random access to an MSB-first bit stream: ``read(p, L)`` for L <= 40, p + L <= nbits."""

    def __init__(self, stream: np.ndarray):
        self.nbits = 8 * stream.size
        self.raw = np.zeros(stream.size + 16, dtype=np.uint8)
        self.raw[:stream.size] = stream
        self.win = np.lib.stride_tricks.sliding_window_view(self.raw, 9)

    def read(self, p: np.ndarray, length) -> np.ndarray:
        p = np.asarray(p, dtype=np.int64)
        w9 = self.win[p >> 3]                                   # 9 bytes from byte p // 8
        hi = np.ascontiguousarray(w9[:, :8]).view(">u8").ravel().astype(np.uint64)
        o = (p & 7).astype(np.uint64)
        top = (hi << o) | np.where(o > 0, w9[:, 8].astype(np.uint64) >> (np.uint64(8) - o), np.uint64(0))
        length = np.broadcast_to(np.asarray(length, dtype=np.uint64), p.shape)
        return np.where(length > 0, top >> (np.uint64(64) - np.maximum(length, 1)), np.uint64(0))


def _omega_at(bits: _Bits, p: np.ndarray):
    """Speculative Elias-omega decode at every position p: (status, end, value) with status
    0 ok, 1 cut short, 2 a group longer than 34 bits."""
    p = np.asarray(p, dtype=np.int64)
    status = np.full(p.size, -1, dtype=np.int8)              # -1: still reading
    pos, n = p.copy(), np.ones(p.size, dtype=np.uint64)
    for _ in range(8):                                       # <= 5 groups before n >= 2^34
        act = np.flatnonzero(status < 0)
        if not act.size:
            break
        q, m = pos[act], n[act]
        inside = q < bits.nbits
        b = np.where(inside, bits.read(np.minimum(q, bits.nbits - 1) if bits.nbits else q, 1), 0)
        status[act[~inside]] = 1
        stop = inside & (b == 0)
        status[act[stop]] = 0
        pos[act[stop]] = q[stop] + 1
        go = inside & (b == 1)
        long_ = go & (m + np.uint64(1) > _OMEGA_MAX_GROUP)
        status[act[long_]] = 2
        go &= ~long_
        short = go & (q + (m + np.uint64(1)).astype(np.int64) > bits.nbits)
        status[act[short]] = 1
        go &= ~short
        g = act[go]
        n[g] = bits.read(q[go], m[go] + np.uint64(1))
        pos[g] = q[go] + (m[go] + np.uint64(1)).astype(np.int64)
    status[status < 0] = 2
    return status, pos, n


def _triples_at(bits: _Bits, p: np.ndarray):
    """Speculative (gap, sign, level) parse at every position p."""
    sg, eg, g = _omega_at(bits, p)
    ps = eg                                                  # the sign bit
    s_ok = ps < bits.nbits
    sign = np.where(s_ok, bits.read(np.minimum(ps, max(bits.nbits - 1, 0)), 1), 0) if bits.nbits \
        else np.zeros(p.size, np.uint64)
    sl, el, lev = _omega_at(bits, ps + 1)
    ok = (sg == 0) & s_ok & (sl == 0)
    nxt = np.where(ok, el, -1)
    return dict(sg=sg, eg=eg, g=g, s_ok=s_ok, sign=sign, sl=sl, lev=lev, next=nxt)


def _follow_chain(bits: _Bits, start: int, count: int) -> np.ndarray:
    """The bit positions of the first ``count`` triples from ``start`` (fewer if one is
    malformed: the chain then ends with it). Windowed pointer doubling: each step parses
    every position of a window speculatively and finds the chain inside it in O(log W)
    vectorized rounds."""
    nodes = []
    cur, remaining = start, count
    while remaining > 0:
        if cur >= bits.nbits:                                # nothing left to read
            nodes.append(np.array([cur], dtype=np.int64))
            break
        lo, hi = cur, min(bits.nbits, cur + _ELIAS_WINDOW)
        m = hi - lo
        nxt = _triples_at(bits, np.arange(lo, hi))["next"]
        jump = np.where(nxt < 0, m + 1, np.where(nxt >= hi, m, nxt - lo))
        jump = np.concatenate([jump, [m, m + 1]])
        member = np.zeros(m + 2, dtype=bool)
        member[0] = True
        for _ in range(int(m).bit_length() + 1):
            member[jump[np.flatnonzero(member[:m])]] = True
            jump = jump[jump]
        local = np.flatnonzero(member[:m])[:remaining]
        nodes.append(lo + local)
        remaining -= local.size
        last = int(nxt[local[-1]])
        if last < 0:                                         # a malformed triple: stop
            break
        cur = last
    return np.concatenate(nodes) if nodes else np.zeros(0, dtype=np.int64)


def elias_decode_add(payload: np.ndarray, d: int, block_size: int, levels: int,
                     out: np.ndarray, weight: float) -> tuple[int, int]:
    """Validate the whole payload; if valid, out += weight * decoded. Returns (code, where)."""
    _check_elias(d, block_size, levels)
    if out.size != d:
        raise ValueError("elias_decode_add: out has the wrong length")
    nb = nblocks(d, block_size)
    if payload.size < 4 * nb:
        return ERR_STREAM, 0
    u = np.frombuffer(payload[:4 * nb].tobytes(), dtype="<u4")
    bad = ((u >> 23) & 0xFF == 0xFF) | (u >> 31 == 1)
    if bad.any():
        return ERR_SCALE, int(np.argmax(bad))
    scales = u.view("<f4").astype(np.float64)
    bits = _Bits(payload[4 * nb:])
    st, end, cnt = _omega_at(bits, np.array([0]))
    if st[0]:
        return (ERR_STREAM if st[0] == 1 else ERR_RANGE), 0
    if int(cnt[0]) > d + 1:
        return ERR_RANGE, 0
    nnz = int(cnt[0]) - 1
    nodes = _follow_chain(bits, int(end[0]), nnz)
    t = _triples_at(bits, nodes)
    g = np.where(t["sg"] == 0, t["g"], 0).astype(np.int64)
    idx = np.cumsum(g) - 1
    # the first problem in stream order: per node, in the kernel's order of checks
    checks = [
        (t["sg"] != 0, np.where(t["sg"] == 1, ERR_STREAM, ERR_RANGE), nodes),
        (idx >= d, np.full(nodes.size, ERR_RANGE), nodes),
        (~t["s_ok"], np.full(nodes.size, ERR_STREAM), t["eg"]),
        (t["sl"] != 0, np.where(t["sl"] == 1, ERR_STREAM, ERR_RANGE), t["eg"] + 1),
        (t["lev"] > np.uint64(levels), np.full(nodes.size, ERR_RANGE), t["eg"] + 1),
        ((idx >= 0) & (idx < d) & (scales[np.clip(idx // block_size, 0, max(nb - 1, 0))] == 0.0
                                   if nb else np.zeros(nodes.size, bool)),
         np.full(nodes.size, ERR_ZERO_BLOCK), idx),
    ]
    first_node = nodes.size
    for cond, _, _ in checks:
        if cond.any():
            first_node = min(first_node, int(np.argmax(cond)))
    if first_node < nodes.size:
        for cond, code, where in checks:
            if cond[first_node]:
                return int(code[first_node]), int(where[first_node])
    blk = idx // block_size
    stop = int(t["next"][-1]) if nnz else int(end[0])
    if bits.nbits - stop >= 8:
        return ERR_TRAILING, -(-stop // 8)
    if stop < bits.nbits and int(bits.read(np.array([stop]), bits.nbits - stop)[0]):
        return ERR_PADDING, stop >> 3
    if nnz:
        lev = t["lev"].astype(np.float64)
        v = scales[blk] * lev / float(levels)
        v = np.where(t["sign"] == 1, -v, v)
        with np.errstate(over="ignore"):
            out[idx] += (weight * v).astype(out.dtype, copy=False)
    return ERR_OK, -1
