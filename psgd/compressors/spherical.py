"""``spherical``: Spherical Compression of Albasyoni, Safaryan, Condat, Richtarik
(papers.md §A.12; biased, class C(alpha): ||C(x) - x||^2 <= alpha ||x||^2 always).

Per block x_b (``block_size`` coordinates; the last block may be shorter), both ends
replay the same stream of i.i.d. uniform directions v^1, v^2, ... (shared seed: the
runtime passes ``key``; without one, ``encode`` draws a seed from ``rng`` and ships
it). The encoder sends the index T of the first direction with
cos(v^T, x_b) >= sqrt(1 - alpha) -- the cap of the sphere of radius sqrt(1-alpha)
around the unit vector that lies within sqrt(alpha) of it -- and the decoder outputs
sigma v^T, where sigma = <x_b, v^T> is sent as a float32. That is the projection of x_b
onto v^T, so ||C(x)_b - x_b||^2 = (1 - cos^2) ||x_b||^2 <= alpha ||x_b||^2. (The poster's
C(x) = ||x|| sqrt(1-alpha) v^T accepts the same T and costs the same bits; the least-squares
scale only lowers the error.) A small margin (1e-10) on the acceptance test keeps the
bound exact after float32/float64 rounding.

T is geometric with success probability P(alpha, d_b) = 0.5 I_alpha((d_b-1)/2, 1/2)
(papers.md §C), so E[T] = 1/P and the encoder draws about d_b/P Gaussians per block.
That is exponential in d_b: the constructor refuses blocks with E[T] > 10^7
(ConfigError), and encode gives up after ceil(64/P) trials (probability e^-64).

Notes
-----
Payload after the 8-byte codec header (bit streams LSB-first, as in kernels_ref):

    1 byte   mode: 0 = keyed (runtime key), 1 = an 8-byte LE uint64 seed follows
    [8 bytes seed]
    nblocks  float32 sigma (LE), >= 0; 0 for a zero block (whose T is 1)
    bits     Golomb-Rice codes of T_b - 1 with parameter b(d_b) =
             max(0, round(log2(ln 2 / P(alpha, d_b)))): first the b-bit remainders of all
             blocks (LSB first, block order), then the quotients in unary (q one bits and
             a zero bit each), padded with zero bits to a byte.

(The remainders and quotients are kept apart so that both ends vectorize; the bit count
is that of interleaved Rice codes.) Message bits = 64 + 8 (+64) + 32 nblocks
+ 8 ceil(sum_b (b_b + q_b + 1) / 8). Expected code bits per block:
b + 1 + r/(1 - r), r = (1 - P)^(2^b), which is < -log2 P + 3.

Random directions: :func:`psgd.kernels_ref.sphere_points` (counter-based SplitMix64 and
Box-Muller), so the decoder computes v^T directly without replaying T draws.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import special

from .. import kernels
from ..errors import ConfigError
from ..validation import Int, Real
from .base import Compressor, register_compressor, resolve_block_size, wire_error

#: refuse block sizes whose expected number of trials exceeds this
MAX_EXPECTED_TRIALS = 1e7
#: encode gives up after ceil(CAP_FACTOR / P) trials: P(failure) = e^-CAP_FACTOR
CAP_FACTOR = 64.0
#: acceptance needs cos^2 >= 1 - alpha + MARGIN (absorbs float32/float64 rounding)
MARGIN = 1e-10


def log2_cap_probability(alpha: float, d: int) -> float:
    """log2 P(alpha, d), P = 0.5 I_alpha((d-1)/2, 1/2), accurate where P underflows.

    For small P it uses I_x(a, b) = x^a (1-x)^b / (a B(a, b)) 2F1(a+b, 1; a+1; x).
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if d < 1:
        raise ValueError(f"d must be >= 1, got {d}")
    if d == 1:
        return -1.0  # the 0-sphere {-1, +1}: the right sign half of the time
    a, b = (d - 1) / 2.0, 0.5
    p = 0.5 * special.betainc(a, b, alpha)
    if p > 1e-250:
        return math.log2(p)
    log_i = (a * math.log(alpha) + b * math.log1p(-alpha) - math.log(a) - special.betaln(a, b)
             + math.log(special.hyp2f1(a + b, 1.0, a + 1.0, alpha)))
    return (log_i + math.log(0.5)) / math.log(2.0)


def cap_probability(alpha: float, d: int) -> float:
    """P(alpha, d) (0.0 when it underflows)."""
    return 2.0 ** log2_cap_probability(alpha, d)


def rice_parameter(p: float) -> int:
    """The Golomb-Rice parameter for T - 1 with T ~ Geometric(p)."""
    return max(0, int(round(math.log2(math.log(2.0) / p))))


def expected_rice_bits(p: float) -> float:
    """E[length of the Rice code of T - 1], T ~ Geometric(p), parameter rice_parameter(p)."""
    b = rice_parameter(p)
    r = math.exp(2**b * math.log1p(-p)) if p < 1 else 0.0
    return b + 1 + r / (1.0 - r)


@register_compressor
class Spherical(Compressor):
    """Spherical compression per block (biased, delta = alpha); shared-seed."""

    name = "spherical"
    codec_id = 21
    unbiased = False
    shared_randomness = True
    # encode draws about 1/P(alpha, d_b) Gaussians per coordinate: 11 for (0.5, 4), 406 for
    # (0.3, 8); (0.5, 16) would take 1331 and (0.1, 8) 20867, too slow for the fuzzer's and
    # the tests' many encodes (measure those with psgd bench frontier --only spherical ...)
    examples = (
        {"alpha": 0.5, "block_size": 4}, {"alpha": 0.2, "block_size": 4},
        {"alpha": 0.1, "block_size": 4}, {"alpha": 0.3, "block_size": 8},
        {"alpha": 0.9, "block_size": 16},
    )
    params = {
        "alpha": Real(0.0, 1.0, closed="neither", required=True,
                      doc="||C(x)-x||^2 <= alpha ||x||^2"),
        "block_size": Int(1, required=True,
                          doc="search cost grows like 1/P(alpha, block_size)"),
    }

    def _check_params(self):
        if self.alpha <= 1e3 * MARGIN:
            raise ConfigError(f"compressor.alpha: got {self.alpha}; allowed: a number in "
                              f"({1e3 * MARGIN:g}, 1) (the acceptance test keeps a {MARGIN:g} margin)")
        lp = log2_cap_probability(self.alpha, self.block_size)
        if -lp > math.log2(MAX_EXPECTED_TRIALS):
            raise ConfigError(
                f"compressor.block_size: got {self.block_size}; spherical with alpha={self.alpha} "
                f"needs E[T] = 1/P = 2^{-lp:.1f} trials per block (-log2 P = {-lp:.1f}); allowed: "
                f"a block size with at most {MAX_EXPECTED_TRIALS:.0e} expected trials "
                f"(try {self.largest_block(self.alpha)} or a larger alpha)")

    @staticmethod
    def largest_block(alpha: float) -> int:
        """The largest block size the constructor accepts for this alpha."""
        ok = lambda d: -log2_cap_probability(alpha, d) <= math.log2(MAX_EXPECTED_TRIALS)  # noqa: E731
        lo, hi = 1, 2
        while ok(hi) and hi < 2**32:
            lo, hi = hi, 2 * hi
        while hi - lo > 1:  # -log2 P grows with d: bisect
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if ok(mid) else (lo, mid)
        return lo

    def delta(self, d):
        return self.alpha

    # -- per block length ---------------------------------------------------------------

    def _shape(self, d):
        """[(count, d_b)] for the full blocks and a short last block."""
        bs = resolve_block_size(self.block_size, d)
        out = []
        if d // bs:
            out.append((d // bs, bs))
        if d % bs:
            out.append((1, d % bs))
        return out

    def block_stats(self, d_b: int) -> dict:
        """P, E[T], the Rice parameter, the trial cap and the expected code bits."""
        p = cap_probability(self.alpha, d_b)
        return {"P": p, "log2P": log2_cap_probability(self.alpha, d_b), "ET": 1.0 / p,
                "rice": rice_parameter(p), "cap": int(math.ceil(CAP_FACTOR / p)),
                "expected_code_bits": expected_rice_bits(p)}

    def expected_bits(self, d: int, keyed: bool = True) -> float:
        """Expected message bits (up to the final byte padding, <= 7 bits)."""
        code = sum(n * self.block_stats(db)["expected_code_bits"] for n, db in self._shape(d))
        nb = sum(n for n, _ in self._shape(d))
        return 64 + 8 + (0 if keyed else 64) + 32 * nb + code

    def _per_block(self, d, field):
        shape = self._shape(d)
        vals = [self.block_stats(db)[field] for _, db in shape]
        return np.concatenate([np.full(n, v, dtype=np.int64) for (n, _), v in zip(shape, vals)]) \
            if shape else np.zeros(0, dtype=np.int64)

    def _max_payload_nbytes(self, d):
        bits = sum(n * (s["rice"] + ((s["cap"] - 1) >> s["rice"]) + 1)
                   for n, s in ((n, self.block_stats(db)) for n, db in self._shape(d)))
        nb = sum(n for n, _ in self._shape(d))
        return 9 + 4 * nb + -(-bits // 8)

    # -- codec ----------------------------------------------------------------------

    def _encode(self, x, rng, key):
        d = x.size
        if key is None:
            seed = int(rng.integers(0, 2**64, dtype=np.uint64))
            head = b"\x01" + np.array([seed], dtype="<u8").tobytes()
        else:
            seed, head = int(key) & (2**64 - 1), b"\x00"
        if not np.isfinite(x).all():
            raise ValueError(f"{self.name}: x holds NaN or Inf")
        shape = self._shape(d)
        bs = resolve_block_size(self.block_size, d)
        caps = {db: self.block_stats(db)["cap"] for _, db in shape}
        T, sigma = kernels.sphere_search(x, bs, 1.0 - self.alpha + MARGIN, seed,
                                         caps.get(bs, 1), caps.get(d % bs, 1))
        if (T == 0).any():
            b = int(np.argmax(T == 0))
            raise RuntimeError(f"{self.name}: no direction within alpha={self.alpha} of block {b} "
                               f"after {caps[min(bs, d - b * bs)]} trials (E[T] = 1/P); "
                               "this has probability e^-64 -- check the RNG")
        if not np.isfinite(sigma).all():
            raise ValueError(f"{self.name}: a block norm overflows float32")
        rice = self._per_block(d, "rice").astype(np.uint64)
        tm1 = T - np.uint64(1)
        r = tm1 & ((np.uint64(1) << rice) - np.uint64(1))
        q = (tm1 >> rice).astype(np.int64)
        nbits_r = rice.astype(np.int64)
        R = int(nbits_r.sum())
        owner = np.repeat(np.arange(T.size), nbits_r)
        pos = np.arange(R) - np.repeat(np.cumsum(nbits_r) - nbits_r, nbits_r)
        rbits = ((r[owner] >> pos.astype(np.uint64)) & np.uint64(1)).astype(np.uint8)
        Q = int((q + 1).sum())
        ubits = np.ones(Q, dtype=np.uint8)
        ubits[np.cumsum(q + 1) - 1] = 0
        bits = np.zeros(-(-(R + Q) // 8) * 8, dtype=np.uint8)
        bits[:R] = rbits
        bits[R:R + Q] = ubits
        return head + sigma.astype("<f4").tobytes() + np.packbits(bits, bitorder="little").tobytes()

    def _decode_add(self, payload, d, out, weight, key):
        if payload.size < 1 or payload[0] > 1:
            raise wire_error(self.name, "missing or unknown mode byte (expected 0 or 1)")
        if payload[0] == 1:
            if payload.size < 9:
                raise wire_error(self.name, "payload ends inside the seed")
            seed = int(payload[1:9].view("<u8")[0])
            rest = payload[9:]
        else:
            if key is None:
                raise wire_error(self.name, "message was encoded with the runtime's shared key; "
                                            "decode needs key=")
            seed, rest = int(key) & (2**64 - 1), payload[1:]
        shape = self._shape(d)
        nb = sum(n for n, _ in shape)
        if rest.size < 4 * nb:
            raise wire_error(self.name, f"payload too short for {nb} block scales")
        sbits = rest[:4 * nb].view("<u4") if nb else np.zeros(0, "<u4")
        if ((sbits >> 23) & 0xFF == 0xFF).any() or (sbits >> 31).any():
            raise wire_error(self.name, "a block scale is NaN, infinite or negative")
        sigma = sbits.view("<f4").astype(np.float64)
        rice = self._per_block(d, "rice")
        R = int(rice.sum())
        bits = np.unpackbits(rest[4 * nb:], bitorder="little")
        if bits.size < R:
            raise wire_error(self.name, "payload ends inside the Rice remainders")
        owner = np.repeat(np.arange(nb), rice)
        pos = np.arange(R) - np.repeat(np.cumsum(rice) - rice, rice)
        r = np.zeros(nb, dtype=np.uint64)
        np.add.at(r, owner, bits[:R].astype(np.uint64) << pos.astype(np.uint64))
        ends = np.flatnonzero(bits[R:] == 0)[:nb] + 1
        if ends.size < nb:
            raise wire_error(self.name, "payload ends inside the Rice quotients")
        used = R + (int(ends[-1]) if nb else 0)
        if bits.size != -(-used // 8) * 8:
            raise wire_error(self.name, "payload length does not match its Rice codes")
        if bits[used:].any():
            raise wire_error(self.name, "padding bits are not zero")
        q = np.diff(ends, prepend=0) - 1
        cap = self._per_block(d, "cap")
        if (q > (cap - 1) >> rice).any():
            raise wire_error(self.name, "a trial index exceeds the encoder's cap")
        T = ((q.astype(np.uint64) << rice.astype(np.uint64)) | r) + np.uint64(1)
        if (T > cap.astype(np.uint64)).any():
            raise wire_error(self.name, "a trial index exceeds the encoder's cap")
        if ((sigma == 0) & (T != 1)).any():
            raise wire_error(self.name, "a zero block must carry T = 1")
        seeds = kernels.sphere_block_seeds(seed, np.arange(nb))
        start = blk = 0
        for n, db in shape:  # at most two groups: full blocks and a short last block
            z = kernels.sphere_points(seeds[blk:blk + n], T[blk:blk + n], db)
            zz = np.einsum("ij,ij->i", z, z)
            s = sigma[blk:blk + n]
            if ((zz == 0) & (s != 0)).any():
                raise wire_error(self.name, "a trial index names a degenerate direction")
            with np.errstate(invalid="ignore", divide="ignore"):
                y = np.where(s[:, None] != 0, z * (s / np.sqrt(zz))[:, None], 0.0)
            out[start:start + n * db] += (weight * y.ravel()).astype(out.dtype, copy=False)
            start += n * db
            blk += n
