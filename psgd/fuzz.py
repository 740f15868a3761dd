"""Fuzz the wire decoders (every compressor), the message envelope and the LIBSVM reader.

``python -m psgd.fuzz [--target codecs|wire|libsvm|all] [--cases N] [--compressors a,b]
[--seed S] [--timeout-per-case SECONDS] [--jobs J] [--json PATH]``

Every case is a deterministic function of ``(seed, target, name, case index)``: a valid input
(a compressor encoding of a random vector, an envelope, a few LIBSVM lines) is mutated
(truncations, appended and inserted bytes, bit flips, byte overwrites, header field rewrites,
payload length changes, "huge counts": runs of 0xFF, overlong varints, special float and
integer words, huge indices, NaN/Inf, binary noise, ...) and handed to the decoder. Outcomes:

* **rejected** with the project's error (:class:`~psgd.errors.WireFormatError`,
  :class:`~psgd.errors.DataFormatError`): good;
* **accepted**: allowed only when the header is intact. For a codec buffer that is the 8-byte
  codec header (magic, version, codec id, flags, d) of the valid encoding it came from, so a
  dense code may accept payload damage it cannot detect. Decoding *without* ``d=`` cannot
  verify a rewritten d field that the payload happens to be consistent with (the codec header
  has no checksum; every other field is checked): such cases are counted as ``d?`` and are not
  failures (the runtime always decodes with ``d=``). For the envelope, any change of the 32
  header bytes or of the length must be rejected (CRC-32). For LIBSVM, an accepted file must
  equal what a slow line-by-line reference of the documented grammar produces;
* **failure**: any other exception, a corrupted header that decodes, a result of the wrong
  shape or a non-finite one, decode and ``decode_add`` disagreeing, a LIBSVM result that
  differs from the reference, a **crash** (segfault, abort: the fuzz loop runs in child
  processes that publish the current case index in a shared file) or a **hang** (a watchdog
  kills a child that stays on one case longer than ``--timeout-per-case``).

Out-of-bounds reads are made loud: most codec buffers are placed so that they end at (or start
right after) a ``PROT_NONE`` guard page, so reading one byte past the end segfaults the child
instead of going unnoticed.

The exit status is 1 when any failure was found. Every failure is reported with its target,
compressor, parameters, seed, case index, the mutation and the reproducer bytes (hex);
``--replay TARGET:NAME:CASE`` re-runs one case in this process with a full traceback.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import math
import mmap
import os
import queue
import random
import select
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import zlib

import numpy as np

TARGETS = ("codecs", "wire", "libsvm")
#: vector lengths of the valid encodings that get mutated
DIMS = (0, 1, 7, 64, 1000)
#: the shared key of shared-randomness compressors (both ends)
FIXED_KEY = 0x9E3779B97F4A7C15
OTHER_KEY = 12345
#: cases per child task (a target's cases are split so that children share the work)
CHUNK = 20000
#: failures kept (with reproducers) per kind and task chunk; all are counted
KEEP_FAILURES = 25
#: the d claimed by the amplification check (decode without d= of a rewritten header)
AMPLIFY_D = 2**20
#: ... which may use at most this many times the memory of the float64 vector it claims
AMPLIFY_FACTOR = 2.0
#: seconds between partial results of a child (what a crash cannot take away)
FLUSH_S = 1.0

#: representative parameter sets per compressor (cheap at d <= 1000). A set that the installed
#: compressor refuses (ConfigError: e.g. an encoding not implemented yet) is skipped; a
#: compressor not listed here gets the first of GENERIC_PARAMS that works.
PARAM_SETS = {
    "identity": [{"dtype": "float64"}, {"dtype": "float32"}],
    "random_dithering": [{"levels": 1, "norm": "inf"},
                         {"levels": 5, "norm": "2", "block_size": 16},
                         {"levels": 3, "norm": "2", "encoding": "elias"},
                         {"levels": 1, "norm": "inf", "block_size": 8, "encoding": "elias"}],
    "sparse_dithering": [{"variant": "deterministic", "nu": 0.2, "block_size": 64},
                         {"variant": "randomized", "omega": 0.5}],
    "spherical": [{"alpha": 0.5, "block_size": 4}, {"alpha": 0.9, "block_size": 16}],
    "gaussian_sketch": [{"k": 3}, {"k": 3, "block_size": 16}, {"ratio": 0.25, "block_size": 32}],
    "haar_sketch": [{"k": 2}, {"k": 3, "block_size": 16}, {"ratio": 0.25, "block_size": 32}],
    "coordinate_sketch": [{"k": 2}, {"ratio": 0.25, "block_size": 16}],
    "rand_k": [{"k": 5}, {"ratio": 0.1, "send_indices": True}],
    "top_k": [{"k": 3}, {"ratio": 0.1}],
    "sign": [{}, {"block_size": 16}],
    "natural": [{}],
    "natural_dithering": [{"levels": 3, "norm": "inf"}, {"levels": 8, "norm": "2", "block_size": 32}],
    "rounding": [{"resolution": 0.01}, {"resolution": 0.5, "block_size": 16}],
}
GENERIC_PARAMS = [{}, {"k": 3}, {"ratio": 0.1}, {"levels": 2}, {"resolution": 0.01},
                  {"alpha": 0.5, "block_size": 4}, {"nu": 0.2}, {"omega": 0.5},
                  {"variant": "randomized", "omega": 0.5}]
#: targets/compressors that take longest per case go first (better packing over --jobs)
_SLOW_FIRST = ("libsvm", "spherical", "haar_sketch", "gaussian_sketch", "coordinate_sketch")

_U32_SPECIALS = (0x00000000, 0xFFFFFFFF, 0x7FFFFFFF, 0x80000000, 0x7F800000, 0xFF800000,
                 0x7FC00000, 0xFFC00000, 0x7F7FFFFF, 0x00000001, 0x00800000, 0x80000001,
                 0x3F800000, 0xBF800000, 0x0000FFFF, 0x00010000)
_U64_SPECIALS = (0, 2**64 - 1, 2**63, 2**63 - 1, 2**32, 2**32 - 1, 1, FIXED_KEY, 0x7FF0000000000000)
_BYTE_SPECIALS = (0x00, 0x01, 0x7F, 0x80, 0xF2, 0xF3, 0xFE, 0xFF, 32, 33, 64, 255, 243, 242)
_VARINTS = (b"\xff\xff\xff\xff\x0f", b"\xff\xff\xff\xff\x1f", b"\x80\x80\x80\x80\x80\x01",
            b"\xff" * 10, b"\x80\x00", b"\x80\x80\x00", b"\xe7\x07", b"\xff\xff\xff\xff\x7f",
            b"\x80", b"\xff")


# -- small helpers ----------------------------------------------------------------------------

def _salt(*parts) -> int:
    return zlib.crc32("\0".join(map(str, parts)).encode())


def _rng(seed, target, name, i) -> random.Random:
    return random.Random((int(seed) << 96) | (_salt(target, name) << 64) | int(i))


def _hex(data, limit=None) -> str:
    h = bytes(data).hex()
    return h if limit is None or len(h) <= limit else h[:limit] + f"...({len(data)} bytes)"


class Fence:
    """A scratch area between two PROT_NONE guard pages: a buffer placed so that it ends at
    the upper guard (or starts right after the lower one) segfaults on any read beyond it."""

    def __init__(self, nbytes: int):
        self.page = mmap.PAGESIZE
        self.area = -(-max(nbytes, 1) // self.page) * self.page
        self.size = self.area + 2 * self.page
        self.mm = mmap.mmap(-1, self.size)
        self.arr = np.frombuffer(self.mm, dtype=np.uint8)
        self.guarded = False
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
            self._anchor = ctypes.c_char.from_buffer(self.mm)
            base = ctypes.addressof(self._anchor)
            libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
            ok = (libc.mprotect(base, self.page, 0) == 0 and
                  libc.mprotect(base + self.page + self.area, self.page, 0) == 0)
            self.guarded = ok
        except (OSError, AttributeError, TypeError):  # no libc / no mprotect: plain buffers
            self.guarded = False

    def fits(self, n):
        return n <= self.area

    def place(self, data: bytes, where: str) -> np.ndarray:
        n = len(data)
        lo = self.page if where == "start" else self.page + self.area - n
        view = self.arr[lo:lo + n]
        view[:] = np.frombuffer(data, dtype=np.uint8)
        return view


def _present(fence: Fence | None, data: bytes, how: str):
    """The buffer as a decoder gets it: fenced (end/start), a fresh array, or bytes."""
    if how == "bytes":
        return bytes(data)
    if how in ("end", "start") and fence is not None and fence.guarded and fence.fits(len(data)):
        return fence.place(data, how)
    return np.frombuffer(bytearray(data), dtype=np.uint8)


def _offset(rnd: random.Random, lo: int, hi: int) -> int:
    """A position in [lo, hi), biased towards both ends (headers, scales, tails, padding)."""
    if hi <= lo:
        return lo
    r = rnd.random()
    if r < 0.35:
        return min(hi - 1, lo + rnd.randrange(16))
    if r < 0.65:
        return max(lo, hi - 1 - rnd.randrange(16))
    return rnd.randrange(lo, hi)


class Stats:
    """Counts of one (target, name): cases and outcomes, per mutation too."""

    FIELDS = ("cases", "rejected", "accepted", "d_unverified", "failures", "partial_writes")

    def __init__(self):
        self.c = dict.fromkeys(self.FIELDS, 0)
        self.ops: dict[str, list[int]] = {}
        self.elapsed = 0.0
        self.max_ms = 0.0
        self.max_case = -1
        self.failures: list[dict] = []
        self.kinds: dict[str, int] = {}
        self.notes: list[str] = []

    def fail(self, rec: dict, check: bool = False) -> None:
        """Keep a failure record; ``check``: it is no case (a setup or resource check) and is
        counted here (failing cases are counted by :meth:`count`)."""
        if check:
            self.c["failures"] += 1
        kind = rec["kind"]
        self.kinds[kind] = self.kinds.get(kind, 0) + 1
        if self.kinds[kind] <= KEEP_FAILURES:
            self.failures.append(rec)

    def count(self, op, outcome):
        self.c["cases"] += 1
        self.c[outcome] += 1
        row = self.ops.setdefault(op, [0, 0, 0, 0, 0])
        row[0] += 1
        row[{"rejected": 1, "accepted": 2, "d_unverified": 3, "failures": 4}[outcome]] += 1

    def to_json(self):
        return {"c": self.c, "ops": self.ops, "elapsed": self.elapsed, "max_ms": self.max_ms,
                "max_case": self.max_case, "failures": self.failures, "kinds": self.kinds,
                "notes": self.notes}

    def merge(self, js):
        for k, v in js["c"].items():
            self.c[k] = self.c.get(k, 0) + v
        for op, row in js["ops"].items():
            mine = self.ops.setdefault(op, [0, 0, 0, 0, 0])
            for i, v in enumerate(row):
                mine[i] += v
        self.elapsed += js["elapsed"]
        if js["max_ms"] > self.max_ms:
            self.max_ms, self.max_case = js["max_ms"], js["max_case"]
        for rec in js["failures"]:
            if sum(f["kind"] == rec["kind"] for f in self.failures) < KEEP_FAILURES:
                self.failures.append(rec)
        for k, v in js["kinds"].items():
            self.kinds[k] = self.kinds.get(k, 0) + v
        for n in js["notes"]:
            if n not in self.notes:
                self.notes.append(n)


# -- codecs -----------------------------------------------------------------------------------

def compressor_param_sets(name: str) -> tuple[list[dict], list[str]]:
    """(working parameter sets for the compressor ``name``, notes on the skipped ones)."""
    from .compressors import get_compressor
    from .errors import ConfigError

    notes, good = [], []
    for params in PARAM_SETS.get(name, GENERIC_PARAMS):
        try:
            c = get_compressor({"name": name, **params})
            key = FIXED_KEY if c.shared_randomness else None
            c.encode(np.linspace(-1.0, 1.0, 7), np.random.default_rng(0), key=key)
        except (ConfigError, ValueError, TypeError, NotImplementedError) as exc:
            notes.append(f"{name} {params}: skipped ({type(exc).__name__}: {exc})")
            continue
        good.append(params)
        if name not in PARAM_SETS:
            break
    return good, notes


def _vector(kind: str, d: int, gen: np.random.Generator) -> np.ndarray:
    if kind == "gauss":
        return gen.standard_normal(d)
    if kind == "zeros":
        return np.zeros(d)
    if kind == "onehot":
        x = np.zeros(d)
        if d:
            x[gen.integers(d)] = -3.5
        return x
    if kind == "sparse":
        return gen.standard_normal(d) * (gen.random(d) < 0.1)
    if kind == "heavy":
        return np.clip(gen.standard_cauchy(d), -1e6, 1e6)
    if kind == "tiny":
        return gen.standard_normal(d) * 1e-39
    if kind == "large":
        return gen.standard_normal(d) * 1e20
    if kind == "equal":
        return np.where(gen.random(d) < 0.5, -1.0, 1.0)
    if kind == "f32":
        return gen.standard_normal(d).astype(np.float32)
    raise ValueError(kind)


_VECTOR_KINDS = ("gauss", "zeros", "onehot", "sparse", "heavy", "tiny", "large", "equal", "f32")


class CodecTarget:
    """Valid encodings of one compressor (every working parameter set, d in DIMS), mutated."""

    target = "codecs"

    def __init__(self, name: str, seed: int):
        from .compressors import compressor_classes, get_compressor
        from .compressors import base

        self.base = base
        self.name, self.seed = name, int(seed)
        self.params, self.notes = compressor_param_sets(name)
        self.comps = [get_compressor({"name": name, **p}) for p in self.params]
        self.shared = any(c.shared_randomness for c in self.comps)
        self.codec_ids = sorted({cls.codec_id for cls in compressor_classes().values()})
        self.pool = []
        self.setup_failures = []
        gen = np.random.default_rng([self.seed, _salt("pool", name)])
        for p, c in enumerate(self.comps):
            keys = [FIXED_KEY, None] if c.shared_randomness else [None]
            for d in DIMS:
                kinds = ["gauss"] + list(gen.choice(_VECTOR_KINDS[1:], size=2, replace=False))
                for kind in (kinds[:1] if d == 0 else kinds):
                    x = _vector(kind, d, gen)
                    for key in keys:
                        self._add(p, c, d, kind, x, key, gen)
        if not self.comps:
            self.setup_failures.append(self._fail_record(-1, "setup", "no parameter set",
                                                         "no parameter set works: " + "; ".join(self.notes), b""))
        self.max_len = max((len(e["buf"]) for e in self.pool), default=64)
        self.fence = Fence(4 * self.max_len + 4096)

    def _add(self, p, c, d, kind, x, key, gen):
        from .errors import WireFormatError

        try:
            buf = c.encode(x, gen, key=key).tobytes()
        except ValueError:
            return  # x not encodable by this compressor (overflow etc.): documented ValueError
        except Exception as exc:  # noqa: BLE001
            self.setup_failures.append(self._fail_record(
                -1, "setup", "encode raised", f"{self._label(p)} encode of a {kind} vector, d={d}, "
                f"key={key}: {type(exc).__name__}: {exc}", b""))
            return
        try:
            y = c.decode(buf, key=key, d=d)
            assert y.shape == (d,), f"decoded shape {y.shape}"
        except Exception as exc:  # noqa: BLE001
            self.setup_failures.append(self._fail_record(
                -1, "setup", "valid encoding rejected", f"{self._label(p)} d={d} key={key} "
                f"{kind}: {type(exc).__name__}: {exc}", buf))
            return
        self.pool.append({"p": p, "d": d, "key": key, "buf": buf, "kind": kind})

    def setup_checks(self) -> list[dict]:
        """Failures found before the first case: encode/round-trip problems of the valid inputs,
        and the amplification check. Decoding without ``d=`` trusts a claimed d up to the codec's
        ``max_unchecked_dim``; that may cost O(d) (the output itself) but no more: a valid d=64
        buffer whose header claims d = AMPLIFY_D (2^20) must be rejected or decoded with at most
        AMPLIFY_FACTOR times the memory of that vector (measured with tracemalloc; the cost
        scales with d, so a claim of 2^26 costs 64 times as much)."""
        import tracemalloc

        from .errors import WireFormatError

        out = list(self.setup_failures)
        limit = AMPLIFY_FACTOR * 8 * AMPLIFY_D + (1 << 20)
        for p, c in enumerate(self.comps):
            for key in ([FIXED_KEY, None] if c.shared_randomness else [None]):
                for x in (np.zeros(64), np.linspace(-1.0, 1.0, 64)):
                    try:
                        buf = bytearray(c.encode(x, np.random.default_rng(0), key=key).tobytes())
                    except Exception:  # noqa: BLE001 - reported by the pool build
                        continue
                    struct.pack_into("<I", buf, 4, AMPLIFY_D)
                    tracemalloc.start()
                    t0 = time.perf_counter()
                    try:
                        c.decode(np.frombuffer(bytes(buf), np.uint8), key=key)
                        st = "accepted"
                    except WireFormatError:
                        st = "rejected"
                    except Exception as exc:  # noqa: BLE001
                        st = f"{type(exc).__name__}: {exc}"
                    dt = time.perf_counter() - t0
                    peak = tracemalloc.get_traced_memory()[1]
                    tracemalloc.stop()
                    if peak > limit or st not in ("accepted", "rejected"):
                        out.append(self._fail_record(
                            -1, "amplify", "amplification" if st in ("accepted", "rejected") else "exception",
                            f"{self._label(p)} key={key}: a {len(buf)}-byte buffer whose header claims "
                            f"d={AMPLIFY_D}, decoded without d=, was {st} after {dt * 1e3:.0f} ms with a "
                            f"peak of {peak / 2**20:.0f} MiB ({peak / (8 * AMPLIFY_D):.1f}x the claimed "
                            f"vector; allowed {AMPLIFY_FACTOR:g}x)", bytes(buf)))
                        break
        return out

    def _label(self, p):
        return f"{self.name}{json.dumps(self.params[p], sort_keys=True) if self.params[p] else ''}"

    def _fail_record(self, i, op, kind, detail, data):
        return {"target": self.target, "name": self.name, "seed": self.seed, "case": i, "op": op,
                "kind": kind, "detail": detail, "hex": _hex(data)}

    # -- mutations ----------------------------------------------------------------------------

    def make_case(self, i: int) -> dict:
        rnd = _rng(self.seed, self.target, self.name, i)
        e = self.pool[rnd.randrange(len(self.pool))]
        b = bytearray(e["buf"])
        n, H = len(b), self.base.HEADER_NBYTES
        ops = ("truncate", "payload_len", "append", "bitflip", "bitflips", "header_bitflip",
               "overwrite", "header_field", "special_byte", "special_run", "special_word",
               "special_u64", "varint", "splice", "insert", "delete", "random_payload",
               "garbage", "valid")
        weights = (8, 6, 6, 10, 6, 6, 8, 12, 6, 6, 6, 3, 5, 4, 3, 3, 4, 3, 1)
        op = rnd.choices(ops, weights)[0]
        desc = ""
        if op == "truncate":
            cut = rnd.randrange(n) if n else 0
            b, desc = b[:cut], f"cut at {cut} of {n}"
        elif op == "payload_len":
            k = rnd.choice((1, 1, 2, 3, 4, 5, 8, 9))
            if rnd.random() < 0.5 and n - k >= H:
                b, desc = b[:n - k], f"payload {k} bytes shorter"
            else:
                b += bytes(k)
                desc = f"payload {k} zero bytes longer"
        elif op == "append":
            extra = rnd.randbytes(rnd.choice((1, 1, 2, 4, 7, 8, 16, 33)))
            b += extra
            desc = f"appended {len(extra)} random bytes"
        elif op in ("bitflip", "bitflips", "header_bitflip"):
            m = 1 if op != "bitflips" else rnd.randrange(2, 17)
            hi = min(n, H) if op == "header_bitflip" else n
            bits = [rnd.randrange(8 * hi) for _ in range(m)] if hi else []
            for bit in bits:
                b[bit // 8] ^= 1 << (bit % 8)
            desc = f"flipped bits {bits}"
        elif op == "overwrite":
            pos = [_offset(rnd, 0, n) for _ in range(rnd.randrange(1, 9))] if n else []
            for q in pos:
                b[q] = rnd.randrange(256)
            desc = f"overwrote bytes {pos}"
        elif op == "header_field":
            b, desc = self._header_field(rnd, b, e)
        elif op == "special_byte" and n > H:
            q = _offset(rnd, H, n)
            b[q] = rnd.choice(_BYTE_SPECIALS)
            desc = f"byte {q} := {b[q]:#04x}"
        elif op == "special_run" and n > H:
            q = _offset(rnd, H, n)
            v, m = rnd.choice((0xFF, 0xFF, 0x00, 0x80, 0x7F, 0xF3)), rnd.choice((2, 4, 8, 16, 64, 512))
            m = min(m, n - q) if rnd.random() < 0.7 else m
            b[q:q + m] = bytes([v]) * m
            desc = f"bytes {q}..{q + m - 1} := {v:#04x} (length now {len(b)})"
        elif op == "special_word" and n >= H + 4:
            q = _offset(rnd, H, n - 3)
            w = rnd.choice(_U32_SPECIALS)
            struct.pack_into("<I", b, q, w)
            desc = f"u32 at {q} := {w:#010x}"
        elif op == "special_u64" and n >= H + 8:
            q = _offset(rnd, H, n - 7)
            w = rnd.choice(_U64_SPECIALS)
            struct.pack_into("<Q", b, q, w)
            desc = f"u64 at {q} := {w:#x}"
        elif op == "varint" and n > H:
            v = rnd.choice(_VARINTS)
            q = _offset(rnd, H, n)
            if rnd.random() < 0.5:
                b[q:q + len(v)] = v
                desc = f"varint {v.hex()} written at {q}"
            else:
                b[max(H, n - len(v)):] = v
                desc = f"tail replaced by varint {v.hex()}"
        elif op == "splice":
            other = self.pool[rnd.randrange(len(self.pool))]["buf"]
            if rnd.random() < 0.5:
                b = b[:H] + other[H:]
                desc = "payload of another pool entry"
            else:
                cut = rnd.randrange(n + 1)
                b = b[:cut] + other[min(cut, len(other)):]
                desc = f"prefix {cut} + suffix of another pool entry"
        elif op == "insert" and n:
            q = _offset(rnd, 0, n + 1)
            junk = rnd.randbytes(rnd.randrange(1, 9))
            b[q:q] = junk
            desc = f"inserted {junk.hex()} at {q}"
        elif op == "delete" and n:
            q = _offset(rnd, 0, n)
            m = rnd.randrange(1, 9)
            del b[q:q + m]
            desc = f"deleted {m} bytes at {q}"
        elif op == "random_payload":
            m = n - H if rnd.random() < 0.5 else rnd.randrange(0, 2 * n + 8)
            b = b[:H] + rnd.randbytes(max(m, 0))
            desc = f"valid header + {max(m, 0)} random payload bytes"
        elif op == "garbage":
            m = rnd.choice((0, 1, 7, 8, 9, 16, rnd.randrange(0, 2 * n + 16)))
            b = bytearray(rnd.randbytes(m))
            if m >= 4 and rnd.random() < 0.5:
                b[0] = self.base.CODEC_MAGIC
            desc = f"{m} random bytes"
        else:
            op, desc = "valid", "unchanged"
        key = e["key"]
        if self.comps[e["p"]].shared_randomness:
            r = rnd.random()
            if key is not None and r < 0.04:
                key, desc = None, desc + "; decoded without key"
            elif key is not None and r < 0.08:
                key, desc = OTHER_KEY, desc + "; decoded with another key"
            elif key is None and r < 0.08:
                key, desc = FIXED_KEY, desc + "; decoded with a key"
        how = rnd.choices(("end", "start", "array", "bytes"), (55, 20, 15, 10))[0]
        add = rnd.random() < 0.2
        return {"entry": e, "data": bytes(b), "op": op, "desc": desc, "key": key, "how": how,
                "add": add, "add_dtype": rnd.choice(("float64", "float32")),
                "weight": rnd.choice((1.0, 0.5, -2.0))}

    def _header_field(self, rnd, b, e):
        H = self.base.HEADER_NBYTES
        if len(b) < H:
            return b, "header too short to rewrite"
        field = rnd.choice(("magic", "version", "codec", "flags", "d", "d", "d", "d"))
        d = e["d"]
        if field == "magic":
            b[0] = rnd.choice([v for v in range(256) if v != self.base.CODEC_MAGIC])
            return b, f"magic := {b[0]:#04x}"
        if field == "version":
            b[1] = rnd.choice((0, 2, 3, 0x81, 255, rnd.randrange(256)))
            return b, f"version := {b[1]}"
        if field == "codec":
            b[2] = rnd.choice(self.codec_ids + [0, 255, rnd.randrange(256)])
            return b, f"codec id := {b[2]}"
        if field == "flags":
            b[3] = rnd.choice((1, 2, 0x80, 0xFF, rnd.randrange(256)))
            return b, f"flags := {b[3]:#04x}"
        # the largest d decode() takes from a header without d= (and one more); the limit itself
        # only where decoding that many coordinates is cheap (the amplification check scales it)
        lim = getattr(self.comps[e["p"]], "max_unchecked_dim", self.base.MAX_UNCHECKED_DIM)
        new = rnd.choice((0, 1, d - 1, d + 1, d + 1, d + 2, d + 4, d + 5, d + 8, 2 * d, d // 2,
                          2**32 - 1, 2**31, 2**31 - 1, lim + 1, min(lim, AMPLIFY_D),
                          2**16, AMPLIFY_D, rnd.randrange(2**32),
                          rnd.randrange(1, 5000), 1000, 64, 7))
        new %= 2**32
        struct.pack_into("<I", b, 4, new)
        return b, f"d := {new} (was {d})"

    # -- one case -------------------------------------------------------------------------------

    def run_case(self, i: int, stats: Stats) -> None:
        from .errors import WireFormatError

        case = self.make_case(i)
        e, data = case["entry"], case["data"]
        c = self.comps[e["p"]]
        ref = e["buf"][:self.base.HEADER_NBYTES]
        intact = data[:len(ref)] == ref and len(data) >= len(ref)
        buf = _present(self.fence, data, case["how"])
        problems = []

        def attempt(fn):
            try:
                return "ok", fn()
            except WireFormatError as exc:
                return "rejected", exc
            except Exception as exc:  # noqa: BLE001 - that is the finding
                return "error", exc

        t0 = time.perf_counter()
        st_d, y_d = attempt(lambda: c.decode(buf, key=case["key"], d=e["d"]))
        st_n, y_n = attempt(lambda: c.decode(buf, key=case["key"]))
        if case["add"]:
            out = np.full(e["d"], 0.25, dtype=case["add_dtype"])
            before = out.copy()
            st_a, y_a = attempt(lambda: c.decode_add(buf, out, case["weight"], key=case["key"]))
        ms = (time.perf_counter() - t0) * 1e3
        if ms > stats.max_ms:
            stats.max_ms, stats.max_case = ms, i

        for mode, st, y in (("with d", st_d, y_d), ("without d", st_n, y_n)) + \
                ((("decode_add", st_a, y_a),) if case["add"] else ()):
            if st == "error":
                problems.append(("exception", f"decode {mode}: {type(y).__name__}: {y}"))
        if st_d == "ok":
            if not intact:
                problems.append(("silent acceptance", "decode with d accepted a changed codec header"))
            problems += self._check_output(y_d, e["d"], "with d")
        d_unverified = False
        if st_n == "ok":
            hdr_d = struct.unpack_from("<I", data, 4)[0] if len(data) >= 8 else -1
            if not intact:
                if data[:4] != ref[:4]:
                    problems.append(("silent acceptance", "decode without d accepted a changed "
                                     "magic/version/codec id/flags"))
                else:
                    d_unverified = True   # only d changed, and the payload is consistent with it
            problems += self._check_output(y_n, hdr_d, "without d")
            if st_d == "ok" and y_n.shape == y_d.shape and not np.array_equal(y_n, y_d, equal_nan=True):
                problems.append(("inconsistent", "decode with d and without d differ"))
        if st_d != "error" and st_n != "error" and intact and (st_d == "ok") != (st_n == "ok"):
            problems.append(("inconsistent", f"with d: {st_d}, without d: {st_n} (intact header)"))
        if case["add"] and st_d != "error" and st_a != "error":
            if (st_a == "ok") != (st_d == "ok"):
                problems.append(("inconsistent", f"decode {st_d} but decode_add {st_a}"))
            elif st_a == "rejected" and not np.array_equal(out, before):
                stats.c["partial_writes"] += 1
                note = f"{self._label(e['p'])}: decode_add wrote into out before rejecting (case {i})"
                if len(stats.notes) < 5:
                    stats.notes.append(note)

        if problems:
            outcome = "failures"
            rec = self._fail_record(i, case["op"], problems[0][0],
                                    "; ".join(f"{k}: {v}" for k, v in problems), data)
            rec.update(params=self.params[e["p"]], d=e["d"], key=case["key"], mutation=case["desc"],
                       placement=case["how"])
            stats.fail(rec)
        elif st_d == "ok":
            outcome = "accepted"
        elif d_unverified:
            outcome = "d_unverified"
        else:
            outcome = "rejected"
        stats.count(case["op"], outcome)

    @staticmethod
    def _check_output(y, d, mode):
        if not isinstance(y, np.ndarray) or y.shape != (d,) or y.dtype != np.float64:
            return [("bad output", f"decode {mode} returned {type(y).__name__} "
                                   f"{getattr(y, 'shape', '')} {getattr(y, 'dtype', '')}, expected ({d},) float64")]
        if y.size <= 2**20 and not np.isfinite(y).all():
            return [("non-finite output", f"decode {mode} returned NaN or Inf")]
        return []


# -- envelope ---------------------------------------------------------------------------------

class WireTarget:
    """Envelopes (:mod:`psgd.wire`) with random fields and payloads, mutated."""

    target = "wire"

    def __init__(self, name: str, seed: int):
        from . import wire

        self.wire, self.name, self.seed = wire, name, int(seed)
        self.fence = Fence(8192)
        self.notes, self.setup_failures = [], []

    def make_case(self, i: int) -> dict:
        w = self.wire
        rnd = _rng(self.seed, self.target, self.name, i)
        kind = rnd.choice(sorted(w.KIND_NAMES))
        msg = w.message(kind, rnd.randrange(2**16), rnd.choice((0, 1, rnd.randrange(2**64))),
                        rnd.choice((0, 1, rnd.randrange(2**63))), rnd.randbytes(rnd.randrange(64)))
        orig = msg.tobytes()
        b = bytearray(orig)
        n, H = len(b), w.HEADER_NBYTES
        ops = ("header_bitflip", "header_bitflips", "header_overwrite", "field_nocrc", "forged",
               "truncate", "extend", "payload", "garbage", "valid")
        op = rnd.choices(ops, (14, 8, 12, 12, 12, 10, 10, 10, 8, 4))[0]
        nbytes, desc, forged_valid = n, "", False
        if op in ("header_bitflip", "header_bitflips"):
            bits = [rnd.randrange(8 * H) for _ in range(1 if op == "header_bitflip" else rnd.randrange(2, 4))]
            for bit in bits:
                b[bit // 8] ^= 1 << (bit % 8)
            desc = f"flipped header bits {bits}"
        elif op == "header_overwrite":
            q = rnd.randrange(H - 3)
            m = rnd.randrange(1, 5)
            b[q:q + m] = rnd.randbytes(m)
            desc = f"overwrote header bytes {q}..{q + m - 1}"
        elif op in ("field_nocrc", "forged"):
            field, value = self._bad_field(rnd, b, n)
            off, fmt = {"magic": (0, "<4s"), "version": (4, "<B"), "kind": (5, "<B"), "worker": (6, "<H"),
                        "mversion": (8, "<Q"), "seq": (16, "<Q"), "length": (24, "<I")}[field]
            struct.pack_into(fmt, b, off, value)
            if op == "forged":
                struct.pack_into("<I", b, 28, zlib.crc32(bytes(b[:28])))
                # a forged worker/version/seq is a valid envelope (the server checks those)
                forged_valid = field in ("worker", "mversion", "seq")
            desc = f"{field} := {value!r}" + (" with a recomputed CRC" if op == "forged" else "")
        elif op == "truncate":
            nbytes = rnd.randrange(n)
            desc = f"received {nbytes} of {n} bytes"
        elif op == "extend":
            m = rnd.choice((1, 2, 4, 8, 100))
            b += rnd.randbytes(m)
            nbytes = n + m
            desc = f"received {m} extra bytes"
        elif op == "payload":
            if n > H:
                q = rnd.randrange(H, n)
                b[q] ^= 1 << rnd.randrange(8)
                desc = f"payload byte {q} changed"
            else:
                desc = "no payload to change"
        elif op == "garbage":
            nbytes = rnd.choice((0, 1, 31, 32, 33, rnd.randrange(80)))
            b = bytearray(rnd.randbytes(nbytes))
            if nbytes >= 4 and rnd.random() < 0.5:
                b[:4] = w.MAGIC
            desc = f"{nbytes} random bytes"
        else:
            op, desc = "valid", "unchanged"
        slack = rnd.randbytes(rnd.choice((0, 0, 1, 64)))  # the receive buffer is usually larger
        return {"orig": orig, "data": bytes(b) + slack, "nbytes": nbytes, "op": op, "desc": desc,
                "forged_valid": forged_valid,
                "how": rnd.choices(("end", "start", "array"), (60, 20, 20))[0]}

    def _bad_field(self, rnd, b, n):
        w = self.wire
        field = rnd.choice(("magic", "version", "kind", "length", "length", "worker", "mversion", "seq"))
        if field == "magic":
            return field, bytes(rnd.randbytes(4)) if rnd.random() < 0.5 else b"PSGE"
        if field == "version":
            return field, rnd.choice((0, 2, 255))
        if field == "kind":
            return field, rnd.choice([0, 7, 8, 255] + [k for k in range(256) if k not in w.KIND_NAMES][:3])
        if field == "length":
            cur = n - w.HEADER_NBYTES
            return field, rnd.choice((cur + 1, max(cur - 1, 0) if cur else cur + 2, 2**32 - 1, 2**31,
                                      cur + 4096)) % 2**32
        # valid-looking fields: only the CRC can tell (field_nocrc); "forged" ones must not
        # change a valid-looking field, so use the current value plus one
        off, fmt, size = {"worker": (6, "<H", 16), "mversion": (8, "<Q", 64), "seq": (16, "<Q", 64)}[field]
        return field, (struct.unpack_from(fmt, b, off)[0] + 1) % 2**size

    def run_case(self, i: int, stats: Stats) -> None:
        from .errors import WireFormatError

        case = self.make_case(i)
        w, H = self.wire, self.wire.HEADER_NBYTES
        data, orig, nbytes = case["data"], case["orig"], case["nbytes"]
        must_accept = (nbytes == len(orig) and data[:H] == orig[:H]) or case["forged_valid"]
        buf = _present(self.fence, data, case["how"])
        problems = []
        t0 = time.perf_counter()
        try:
            header, payload = w.parse(buf, nbytes, sender="worker 5 (rank 6)")
            st = "ok"
        except WireFormatError as exc:
            st = "rejected"
            if "worker 5 (rank 6)" not in str(exc):
                problems.append(("unnamed sender", f"WireFormatError does not name the sender: {exc}"))
        except Exception as exc:  # noqa: BLE001
            st = "error"
            problems.append(("exception", f"{type(exc).__name__}: {exc}"))
        ms = (time.perf_counter() - t0) * 1e3
        if ms > stats.max_ms:
            stats.max_ms, stats.max_case = ms, i
        if st == "ok":
            if not must_accept:
                problems.append(("silent acceptance", "a changed envelope header or length was accepted"))
            else:
                fields = struct.unpack_from("<4sBBHQQI", data, 0)
                expect = w.Header(fields[2], fields[3], fields[4], fields[5], fields[6])
                if header != expect or bytes(payload) != data[H:nbytes]:
                    problems.append(("wrong result", f"parsed {header}, expected {expect}"))
        elif st == "rejected" and must_accept:
            problems.append(("valid rejected", "an intact envelope was rejected"))
        if problems:
            outcome = "failures"
            stats.fail({"target": self.target, "name": self.name, "seed": self.seed,
                        "case": i, "op": case["op"], "kind": problems[0][0],
                        "detail": "; ".join(f"{k}: {v}" for k, v in problems),
                        "mutation": case["desc"], "nbytes": nbytes,
                        "hex": _hex(data[:max(nbytes, 0)])})
        else:
            outcome = "accepted" if st == "ok" else "rejected"
        stats.count(case["op"], outcome)


# -- LIBSVM -----------------------------------------------------------------------------------

_LS_WS = b" \t\r\x0b\x0c"
_LS_ALLOWED = frozenset(b"0123456789+-.eE:\n" + _LS_WS)
_NASTY_TOKENS = (b"nan", b"inf", b"-inf", b"NaN", b"Infinity", b"1e309", b"-1e400", b"1e-400",
                 b"2147483647:1", b"2147483648:1", b"99999999999:1", b"0:1", b"-1:1",
                 b"00000000001:1", b"0000000001:1", b"1::1", b":1", b"1:", b"1:2:3", b"+1", b"--1",
                 b"1e", b".", b"e5", b"qid:3", b"#c", b"\x00", b"\xff", "\u00e9".encode(), b"\t",
                 b"\r\n", b"\n\n", b" ", b"1.5:2", b"1e3:2", b"4294967297:1", b"1:1e308",
                 b"1:-0", b"3:1 2:1", b"5:1 5:2", b"1:1e-320", b"1:+.5", b"1:5.", b"1_0:1", b"1:0x1",
                 b"\x0b", b"\x0c", b"1:1 1:1", b"2147483647:1e308")
_NASTY_VALUES = (b"nan", b"inf", b"1e309", b"1e308", b"-0", b"1e-320", b"", b"+", b"1.2.3",
                 b"-", b"e", b"1e+", b"0e0", b"+.5e-3", b"9" * 400)
_NASTY_INDICES = (b"0", b"2147483647", b"2147483648", b"99999999999", b"1", b"0001", b"",
                  b"-3", b"+3", b"1.0", b"1e3", b"4294967297", b"9" * 30)


def reference_libsvm(buf: bytes, n_features):
    """The documented grammar (psgd.data), one line at a time: ``(indptr, indices, data,
    labels, d)`` or a string saying why the file is invalid. Slow and simple on purpose."""
    if not buf:
        return "empty"
    if not _LS_ALLOWED.issuperset(buf):
        return "bad byte"
    indptr, indices, data, labels = [0], [], [], []
    for line in buf.split(b"\n"):
        toks = line.split()
        if not toks:
            continue
        label = toks[0]
        if b":" in label:
            return "label with a colon"
        try:
            lv = float(label)
        except ValueError:
            return "bad label"
        if not math.isfinite(lv):
            return "non-finite label"
        prev = 0
        for tok in toks[1:]:
            if tok.count(b":") != 1:
                return "not index:value"
            si, sv = tok.split(b":")
            if not si or not sv:
                return "empty index or value"
            if not si.isdigit():
                return "index not digits"
            if len(si) > 10:
                return "index too long"
            try:
                v = float(sv)
            except ValueError:
                return "bad value"
            if not math.isfinite(v):
                return "non-finite value"
            idx = int(si)
            if idx < 1:
                return "index < 1"
            if idx > (2**31 - 1 if n_features is None else n_features):
                return "index too large"
            if idx <= prev:
                return "not increasing"
            prev = idx
            indices.append(idx - 1)
            data.append(v)
        labels.append(lv)
        indptr.append(len(indices))
    if not labels:
        return "no rows"
    if n_features is None:
        if not indices:
            return "no features"
        d = max(indices) + 1
    else:
        d = n_features
    return indptr, indices, data, labels, d


def _synthetic_line(rnd: random.Random) -> bytes:
    label = rnd.choice((b"-1", b"+1", b"1", b"0", b"2", b"0.5", b"1e-3", b"-0.25"))
    idx, toks = 0, [label]
    for _ in range(rnd.randrange(0, 12)):
        idx += rnd.choice((1, 1, 2, 3, 10, 100))
        v = rnd.choice((b"1", b"0.5", b"-2", b"1e-3", b"3.25E+2", b"0", b".5", b"5.",
                        repr(rnd.uniform(-10, 10)).encode()))
        toks.append(b"%d:%s" % (idx, v))
    return rnd.choice((b" ", b"\t", b"  ")).join(toks)


def find_data_dir(explicit=None):
    """Where LIBSVM files come from: ``explicit``, $PSGD_DATA, or ../shared/data; or None."""
    for cand in (explicit, os.environ.get("PSGD_DATA"), os.path.join(os.getcwd(), "..", "shared", "data")):
        if cand and os.path.isdir(cand):
            return os.path.abspath(cand)
    return None


class LibsvmTarget:
    """A few LIBSVM lines (real ones from the data directory, else synthetic), mutated, read
    with :func:`psgd.data.read_libsvm` with ``n_features`` inferred and given."""

    target = "libsvm"

    def __init__(self, name: str, seed: int, data_dir=None, workdir=None):
        from . import data

        self.data, self.name, self.seed = data, name, int(seed)
        self.notes, self.setup_failures = [], []
        self.workdir = workdir or tempfile.mkdtemp(prefix="psgd-fuzz-")
        self.path = os.path.join(self.workdir, f"case-{os.getpid()}.svm")
        rnd = random.Random(_salt("libsvm-lines", seed))
        self.lines = []
        if data_dir:
            for fname in sorted(os.listdir(data_dir)):
                full = os.path.join(data_dir, fname)
                if not os.path.isfile(full) or "." in fname and fname.rsplit(".", 1)[1] in ("md", "txt") \
                        or fname.upper().startswith(("SHA", "README", "PROVENANCE")):
                    continue
                with open(full, "rb") as fh:
                    lines = fh.read(4 << 20).split(b"\n")[:-1]
                if lines and reference_libsvm(b"\n".join(lines[:50]), None).__class__ is tuple:
                    self.lines += rnd.sample(lines, min(300, len(lines)))
        self.source = f"{len(self.lines)} lines from {data_dir}" if self.lines else "synthetic lines"
        self.notes.append(f"libsvm: {self.source}")

    def make_case(self, i: int) -> dict:
        rnd = _rng(self.seed, self.target, self.name, i)
        lines = [rnd.choice(self.lines) if self.lines and rnd.random() < 0.75 else _synthetic_line(rnd)
                 for _ in range(rnd.choice((1, 1, 2, 3, 5, 8, 20)))]
        doc = b"\n".join(lines) + rnd.choice((b"\n", b"\n", b"", b"\n\n"))
        b = bytearray(doc)
        n = len(b)
        ops = ("valid", "bitflip", "overwrite", "truncate", "insert_garbage", "insert_token",
               "replace_index", "replace_value", "replace_label", "binary_noise", "empty",
               "whitespace", "merge_lines", "swap_tokens", "crlf", "separators", "long_line")
        op = rnd.choices(ops, (4, 10, 8, 8, 8, 14, 10, 10, 6, 3, 1, 2, 4, 4, 3, 3, 2))[0]
        desc = ""
        if op == "bitflip":
            bits = [rnd.randrange(8 * n) for _ in range(rnd.randrange(1, 9))]
            for bit in bits:
                b[bit // 8] ^= 1 << (bit % 8)
            desc = f"flipped bits {bits}"
        elif op == "overwrite":
            pos = [rnd.randrange(n) for _ in range(rnd.randrange(1, 6))]
            for q in pos:
                b[q] = rnd.choice((rnd.randrange(256), rnd.choice(b"0123456789:.+-eE \t\n")))
            desc = f"overwrote bytes {pos}"
        elif op == "truncate":
            cut = rnd.randrange(n + 1)
            b, desc = b[:cut], f"cut at {cut} of {n}"
        elif op == "insert_garbage":
            q = rnd.randrange(n + 1)
            junk = rnd.randbytes(rnd.randrange(1, 17)) if rnd.random() < 0.5 else \
                bytes(rnd.choice(b"0123456789:.+-eE \t\nx#") for _ in range(rnd.randrange(1, 17)))
            b[q:q] = junk
            desc = f"inserted {junk!r} at {q}"
        elif op == "insert_token":
            q = rnd.randrange(n + 1)
            tok = rnd.choice(_NASTY_TOKENS)
            b[q:q] = rnd.choice((b" ", b"")) + tok + rnd.choice((b" ", b""))
            desc = f"inserted {tok!r} at {q}"
        elif op in ("replace_index", "replace_value"):
            feats = [k for k in range(n) if b[k:k + 1] == b":"]
            if feats:
                c = rnd.choice(feats)
                if op == "replace_index":
                    s = c
                    while s > 0 and b[s - 1:s] not in (b" ", b"\t", b"\n", b"\r"):
                        s -= 1
                    new = rnd.choice(_NASTY_INDICES)
                    b[s:c] = new
                else:
                    e = c + 1
                    while e < len(b) and b[e:e + 1] not in (b" ", b"\t", b"\n", b"\r"):
                        e += 1
                    new = rnd.choice(_NASTY_VALUES)
                    b[c + 1:e] = new
                desc = f"{op.split('_')[1]} at byte {c} := {new[:20]!r}"
        elif op == "replace_label":
            e = 0
            while e < len(b) and b[e:e + 1] not in (b" ", b"\t", b"\n"):
                e += 1
            new = rnd.choice(_NASTY_VALUES + (b"1:1", b"+1", b"-1"))
            b[0:e] = new
            desc = f"first label := {new[:20]!r}"
        elif op == "binary_noise":
            b = bytearray(rnd.randbytes(rnd.randrange(0, 512)))
            desc = f"{len(b)} random bytes"
        elif op == "empty":
            b, desc = bytearray(), "empty file"
        elif op == "whitespace":
            b = bytearray(rnd.choice(b" \t\n\r\x0b\x0c") for _ in range(rnd.randrange(1, 40)))
            desc = "whitespace only"
        elif op == "merge_lines":
            nl = [k for k in range(len(b) - 1) if b[k] == 10]
            if nl:
                q = rnd.choice(nl)
                b[q] = 32
                desc = f"newline at {q} -> space"
        elif op == "swap_tokens":
            line = lines[0].split()
            if len(line) >= 3:
                a, c = rnd.sample(range(1, len(line)), 2)
                line[a], line[c] = line[c], line[a]
                b = bytearray(b" ".join(line)) + b"\n" + bytearray(b"\n".join(lines[1:]))
                desc = f"swapped features {a} and {c} of line 1"
        elif op == "crlf":
            b, desc = bytearray(bytes(b).replace(b"\n", b"\r\n")), "CRLF line ends"
        elif op == "separators":
            b = bytearray(bytes(b).replace(b" ", rnd.choice((b"\t", b"\x0b", b"\x0c", b"  \t"))))
            desc = "other whitespace separators"
        elif op == "long_line":
            idx = sorted(rnd.sample(range(1, rnd.choice((600, 10**6, 2**31 - 1))), 500))
            b += b"+1 " + b" ".join(b"%d:%d" % (k, rnd.randrange(-9, 10)) for k in idx) + b"\n"
            desc = "a 500-feature line appended"
        else:
            op, desc = "valid", "unchanged"
        ref = reference_libsvm(doc, None)
        dmax = ref[4] if isinstance(ref, tuple) else 1
        nf = rnd.choice((dmax, dmax, max(dmax - 1, 1), dmax + 1, 1, 2**31 - 1, rnd.randrange(1, 200)))
        return {"data": bytes(b), "op": op, "desc": desc, "n_features": int(nf)}

    def run_case(self, i: int, stats: Stats) -> None:
        from .errors import DataFormatError

        case = self.make_case(i)
        data = case["data"]
        with open(self.path, "wb") as fh:
            fh.write(data)
        problems = []
        t0 = time.perf_counter()
        results = []
        for nf in (None, case["n_features"]):
            try:
                A, labels = self.data.read_libsvm(self.path, nf)
                results.append((nf, "ok", (A, labels)))
            except DataFormatError as exc:
                results.append((nf, "rejected", exc))
            except Exception as exc:  # noqa: BLE001
                results.append((nf, "error", exc))
        ms = (time.perf_counter() - t0) * 1e3
        if ms > stats.max_ms:
            stats.max_ms, stats.max_case = ms, i
        for nf, st, res in results:
            what = f"n_features={nf}"
            ref = reference_libsvm(data, nf)
            if st == "error":
                problems.append(("exception", f"{what}: {type(res).__name__}: {res}"))
            elif st == "ok" and not isinstance(ref, tuple):
                problems.append(("accepted invalid", f"{what}: accepted; the grammar says: {ref}"))
            elif st == "rejected" and isinstance(ref, tuple):
                problems.append(("rejected valid", f"{what}: {res}"))
            elif st == "ok":
                A, labels = res
                indptr, indices, vals, labs, d = ref
                same = (A.shape == (len(labs), d) and np.array_equal(A.indptr, indptr)
                        and np.array_equal(A.indices, indices) and np.array_equal(A.data, vals)
                        and np.array_equal(labels, labs) and A.data.dtype == np.float64)
                if not same:
                    problems.append(("wrong result", f"{what}: CSR differs from the reference"))
        if problems:
            outcome = "failures"
            stats.fail({"target": self.target, "name": self.name, "seed": self.seed,
                        "case": i, "op": case["op"], "kind": problems[0][0],
                        "detail": "; ".join(f"{k}: {v}" for k, v in problems),
                        "mutation": case["desc"], "n_features": case["n_features"],
                        "hex": _hex(data)})
        else:
            outcome = "accepted" if results[0][1] == "ok" or results[1][1] == "ok" else "rejected"
        stats.count(case["op"], outcome)


def make_target(target: str, name: str, seed: int, data_dir=None, workdir=None):
    if target == "codecs":
        return CodecTarget(name, seed)
    if target == "wire":
        return WireTarget(name, seed)
    if target == "libsvm":
        return LibsvmTarget(name, seed, data_dir, workdir)
    raise ValueError(f"unknown target {target!r}")


# -- child process ------------------------------------------------------------------------------

_PROGRESS = struct.Struct("<qq")   # (task serial, case index; -1 while setting up)


def _import_plugins(paths):
    import importlib
    import importlib.util

    for spec in paths:
        if spec.endswith(".py") or os.sep in spec:
            mod_name = "psgd_fuzz_plugin_" + os.path.splitext(os.path.basename(spec))[0]
            if mod_name in sys.modules:
                continue
            s = importlib.util.spec_from_file_location(mod_name, spec)
            mod = importlib.util.module_from_spec(s)
            sys.modules[mod_name] = mod
            s.loader.exec_module(mod)
        else:
            importlib.import_module(spec)


def _child_main(argv) -> int:
    """``python -m psgd.fuzz --child PROGRESS_FILE``: run tasks read from stdin (JSON lines),
    write one JSON result line per task to stdout, publish (task, case) in PROGRESS_FILE."""
    import faulthandler
    import resource
    import warnings

    progress_path, limit_mb = argv[0], int(argv[1])
    plugins = json.loads(argv[2])
    faulthandler.enable(file=sys.stderr, all_threads=False)
    if limit_mb > 0:
        try:
            resource.setrlimit(resource.RLIMIT_AS, (limit_mb << 20, limit_mb << 20))
        except (ValueError, OSError):
            pass
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)                       # stray prints go to the log, not into the protocol
    sys.stdout = sys.stderr
    warnings.simplefilter("ignore")     # kernel fallbacks etc.: the parent reports the build
    _import_plugins(plugins)
    with open(progress_path, "r+b") as fh:
        mm = mmap.mmap(fh.fileno(), _PROGRESS.size)
    targets = {}
    for line in sys.stdin:
        task = json.loads(line)
        serial = task["serial"]
        _PROGRESS.pack_into(mm, 0, serial, -1)
        stats = Stats()
        key = (task["target"], task["name"])
        t0 = last = time.perf_counter()
        if key not in targets:
            try:
                targets[key] = make_target(task["target"], task["name"], task["seed"],
                                           task.get("data_dir"), os.path.dirname(progress_path))
            except Exception as exc:  # noqa: BLE001 - e.g. a compressor that cannot be built
                stats.fail({"target": task["target"], "name": task["name"], "seed": task["seed"],
                            "case": -1, "op": "setup", "kind": "setup error", "hex": "",
                            "detail": "".join(traceback.format_exception(exc)).strip()[-2000:]},
                           check=True)
                proto.write(json.dumps({"serial": serial, "stats": stats.to_json()}) + "\n")
                continue
        tgt = targets[key]
        stats.notes.extend(tgt.notes)
        if task.get("setup_checks"):
            for rec in (tgt.setup_checks() if hasattr(tgt, "setup_checks") else tgt.setup_failures):
                stats.fail(rec, check=True)
        runnable = getattr(tgt, "pool", True)
        for i in range(task["start"], task["stop"] if runnable else task["start"]):
            _PROGRESS.pack_into(mm, 0, serial, i)
            tgt.run_case(i, stats)
            now = time.perf_counter()
            if now - last > FLUSH_S:
                stats.elapsed = now - t0
                proto.write(json.dumps({"serial": serial, "partial": True, "upto": i + 1,
                                        "stats": stats.to_json()}) + "\n")
                stats, t0, last = Stats(), now, now
        stats.elapsed = time.perf_counter() - t0
        proto.write(json.dumps({"serial": serial, "stats": stats.to_json()}) + "\n")
    return 0


# -- parent ---------------------------------------------------------------------------------------

class _Child:
    def __init__(self, workdir, slot, limit_mb, plugins):
        self.dir = tempfile.mkdtemp(prefix=f"slot{slot}-", dir=workdir)
        self.progress = os.path.join(self.dir, "progress")
        with open(self.progress, "wb") as fh:
            fh.write(_PROGRESS.pack(-1, -1))
        self.log = os.path.join(self.dir, "stderr.log")
        import psgd

        root = os.path.dirname(os.path.dirname(os.path.abspath(psgd.__file__)))
        env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
                   PYTHONPATH=os.pathsep.join([root] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
        self.logfh = open(self.log, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "psgd.fuzz", "--child", self.progress, str(limit_mb), json.dumps(plugins)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.logfh, cwd=self.dir, env=env,
            text=True, bufsize=1)

    def read_progress(self):
        with open(self.progress, "rb") as fh:
            return _PROGRESS.unpack(fh.read(_PROGRESS.size))

    def log_tail(self, n=6):
        """The end of the child's stderr: the faulthandler report of a crash, trimmed."""
        try:
            with open(self.log, "rb") as fh:
                text = fh.read()[-8000:].decode("utf-8", "replace")
        except OSError:
            return ""
        lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("Extension modules")]
        at = max((k for k, ln in enumerate(lines) if ln.startswith("Fatal Python error")), default=None)
        return "\n".join(lines[at:at + n] if at is not None else lines[-n:])

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.logfh.close()

    def close(self):
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()
        self.logfh.close()


class Report:
    """Per-(target, name) statistics of a fuzz run."""

    def __init__(self):
        self.stats: dict[tuple, Stats] = {}
        self.wall = 0.0
        self.header = ""

    @property
    def failures(self):
        return [f for s in self.stats.values() for f in s.failures]

    @property
    def n_failures(self):
        return sum(s.c["failures"] for s in self.stats.values())

    @property
    def ok(self):
        return self.n_failures == 0

    def table(self) -> str:
        rows = [("target", "name", "cases", "rejected", "accepted", "d?", "failures", "cases/s", "max ms")]
        for (t, n), s in sorted(self.stats.items(), key=lambda kv: (TARGETS.index(kv[0][0]), kv[0][1])):
            rate = s.c["cases"] / s.elapsed if s.elapsed else 0.0
            rows.append((t, n, s.c["cases"], s.c["rejected"], s.c["accepted"], s.c["d_unverified"],
                         s.c["failures"], f"{rate:.0f}", f"{s.max_ms:.1f}"))
        tot = [sum(s.c[k] for s in self.stats.values()) for k in ("cases", "rejected", "accepted",
                                                                   "d_unverified", "failures")]
        rows.append(("all", "", *tot, "", ""))
        widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
        lines = []
        for k, r in enumerate(rows):
            lines.append("  ".join(str(v).ljust(w) if j < 2 else str(v).rjust(w)
                                   for j, (v, w) in enumerate(zip(r, widths))))
            if k == 0 or k == len(rows) - 2:
                lines.append("  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def ops_table(self) -> str:
        lines = []
        for (t, n), s in sorted(self.stats.items()):
            parts = ", ".join(f"{op} {'/'.join(map(str, r))}" for op, r in sorted(s.ops.items()))
            lines.append(f"{t}/{n}: (cases/rejected/accepted/d?/failures) {parts}")
        return "\n".join(lines)

    def to_json(self):
        return {"wall_s": self.wall, "header": self.header,
                "stats": {f"{t}/{n}": s.to_json() for (t, n), s in self.stats.items()}}


def _tasks(targets, cases, compressors, seed, data_dir):
    from .compressors import available

    names = []
    for t in targets:
        if t == "codecs":
            comp = available() if not compressors else list(compressors)
            names += [("codecs", c) for c in comp]
        else:
            names.append((t, t))
    names.sort(key=lambda tn: (0 if tn[1] in _SLOW_FIRST else 1, _SLOW_FIRST.index(tn[1])
                               if tn[1] in _SLOW_FIRST else 0))
    out = []
    for t, n in names:
        for start in range(0, cases, CHUNK):
            out.append({"target": t, "name": n, "seed": seed, "start": start,
                        "stop": min(cases, start + CHUNK), "data_dir": data_dir})
        if cases == 0:
            out.append({"target": t, "name": n, "seed": seed, "start": 0, "stop": 0,
                        "data_dir": data_dir})
    return out


def _abnormal(task, case, kind, detail, plugins, data_dir):
    """A failure record for a crash or hang at ``case``, with the reproducer regenerated here."""
    rec = {"target": task["target"], "name": task["name"], "seed": task["seed"], "case": case,
           "kind": kind, "detail": detail, "op": "?", "hex": ""}
    if case < 0:
        rec["detail"] += " (while building the valid inputs)"
        return rec
    try:
        _import_plugins(plugins)
        tgt = make_target(task["target"], task["name"], task["seed"], data_dir)
        case_d = tgt.make_case(case)
        rec.update(op=case_d["op"], mutation=case_d["desc"], hex=_hex(case_d["data"]))
        if task["target"] == "codecs":
            e = case_d["entry"]
            rec.update(params=tgt.params[e["p"]], d=e["d"], key=case_d["key"], placement=case_d["how"])
    except Exception as exc:  # noqa: BLE001
        rec["detail"] += f" (reproducer not regenerated: {type(exc).__name__}: {exc})"
    return rec


def run_fuzz(targets=TARGETS, cases=1000, compressors=None, seed=0, timeout=10.0, jobs=None,
             data_dir=None, plugins=(), limit_mb=4096, progress=None) -> Report:
    """Run the fuzz targets in child processes; return the :class:`Report`."""
    plugins = [os.path.abspath(p) if p.endswith(".py") else p for p in plugins]
    _import_plugins(plugins)
    from . import kernels

    jobs = max(1, jobs or min(2, os.cpu_count() or 1))
    data_dir = find_data_dir(data_dir) if "libsvm" in targets else None
    tasks = _tasks(targets, cases, compressors, seed, data_dir)
    report = Report()
    import psgd

    report.header = (f"psgd {os.path.dirname(psgd.__file__)}; compiled kernels: "
                     f"{'yes' if kernels.HAVE_CYTHON and kernels.HAVE_CYTHON_SPARSE_SPHERE else 'NO (NumPy twins)'}"
                     f"; seed {seed}; {cases} cases per compressor/target; {jobs} jobs; "
                     f"timeout {timeout:g} s/case")
    for t in tasks:
        report.stats.setdefault((t["target"], t["name"]), Stats())
    work = queue.Queue()
    for t in tasks:
        work.put(t)
    lock = threading.Lock()
    workdir = tempfile.mkdtemp(prefix="psgd-fuzz-")
    serials = iter(range(1, 10**9))
    remaining = {(t["target"], t["name"]): 0 for t in tasks}
    for t in tasks:
        remaining[(t["target"], t["name"])] += 1

    def record(task, stats_json=None, failure=None):
        with lock:
            s = report.stats[(task["target"], task["name"])]
            if stats_json is not None:
                s.merge(stats_json)
            if failure is not None:
                s.c["cases"] += failure["case"] >= 0
                s.fail(failure, check=True)

    def slot(k):
        child = None
        while True:
            try:
                task = work.get_nowait()
            except queue.Empty:
                break
            # segments of [start, stop) still to run; after a crash or hang at case c, the cases
            # since the child's last partial result are re-run (they are deterministic) and the
            # run goes on at c + 1 in a new child
            segments = [(task["start"], task["stop"], task["start"] == 0)]
            while segments:
                start, stop, checks = segments.pop(0)
                if child is None:
                    child = _Child(workdir, k, limit_mb, plugins)
                with lock:
                    serial = next(serials)
                try:
                    child.proc.stdin.write(json.dumps({**task, "start": start, "stop": stop,
                                                       "serial": serial, "setup_checks": checks}) + "\n")
                    child.proc.stdin.flush()
                except OSError:
                    pass
                done, upto, where, why = _wait(child, serial, timeout, start,
                                               lambda msg: record(task, msg["stats"]))
                if done:
                    continue
                child.kill()
                if why == "hang":
                    detail = f"no progress for {timeout:g} s on this case (killed)"
                else:
                    rc = child.proc.returncode
                    sig = f"signal {-rc}" if rc is not None and rc < 0 else f"exit code {rc}"
                    detail = f"child process died ({sig}); last output:\n{child.log_tail()}"
                record(task, failure=_abnormal(task, where, why, detail, plugins, data_dir))
                child = None
                if where < 0:
                    continue                       # could not even set up: skip this segment
                rest = [(upto, where, False)] if upto < where else []
                if where + 1 < stop:
                    rest.append((where + 1, stop, False))
                segments = rest + segments
            with lock:
                key = (task["target"], task["name"])
                remaining[key] -= 1
                finished = remaining[key] == 0
            if finished and progress:
                s = report.stats[key]
                progress(f"done {key[0]}/{key[1]}: {s.c['cases']} cases, {s.c['failures']} failures, "
                         f"{s.elapsed:.1f} s")
        if child is not None:
            child.close()

    t0 = time.perf_counter()
    threads = [threading.Thread(target=slot, args=(k,), daemon=True) for k in range(jobs)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    report.wall = time.perf_counter() - t0
    shutil.rmtree(workdir, ignore_errors=True)
    return report


def _wait(child, serial, timeout, start, on_stats):
    """Follow one segment: ``(True, upto, None, None)`` when it completed, else
    ``(False, upto, case, "crash"|"hang")``; ``upto`` is the first case whose result was not
    received (partial results go to ``on_stats`` as they arrive)."""
    setup_timeout = max(120.0, 10 * timeout)
    last, since, upto = None, time.monotonic(), start
    fd = child.proc.stdout

    def consume(line):
        nonlocal upto
        msg = json.loads(line)
        if msg.get("serial") != serial:
            return False
        on_stats(msg)
        if msg.get("partial"):
            upto = msg["upto"]
            return False
        return True

    while True:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            line = fd.readline()
            if line:
                if consume(line):
                    return True, upto, None, None
                continue
            child.proc.wait()
            return False, upto, _case_of(child, serial), "crash"
        if child.proc.poll() is not None:
            for line in fd:
                if consume(line):
                    return True, upto, None, None
            return False, upto, _case_of(child, serial), "crash"
        cur = child.read_progress()
        now = time.monotonic()
        if cur != last:
            last, since = cur, now
        elif now - since > (timeout if cur[0] == serial and cur[1] >= 0 else setup_timeout):
            return False, upto, _case_of(child, serial), "hang"


def _case_of(child, serial):
    s, case = child.read_progress()
    return case if s == serial else -1


# -- replay / command line --------------------------------------------------------------------------

def replay(spec: str, seed: int, data_dir=None) -> int:
    """Re-run one case (``TARGET:NAME:CASE``) here, printing the input and every outcome."""
    target, name, case = spec.split(":")
    if target != "codecs":
        name = target
    case = int(case)
    tgt = make_target(target, name, seed, find_data_dir(data_dir))
    c = tgt.make_case(case)
    print(f"{target}/{name} seed {seed} case {case}: op {c['op']}: {c['desc']}")
    print(f"input ({len(c['data'])} bytes): {_hex(c['data'])}")
    stats = Stats()
    tgt.run_case(case, stats)
    for f in stats.failures:
        print(f"FAILURE {f['kind']}: {f['detail']}")
    if target == "codecs":
        e = c["entry"]
        comp = tgt.comps[e["p"]]
        print(f"compressor {comp!r}, d={e['d']}, key={c['key']}, valid buffer: {_hex(e['buf'], 200)}")
        for kw in ({"d": e["d"]}, {}):
            try:
                y = comp.decode(np.frombuffer(c["data"], np.uint8), key=c["key"], **kw)
                print(f"decode {kw}: accepted, {y.shape}")
            except Exception:  # noqa: BLE001
                print(f"decode {kw}:")
                traceback.print_exc(file=sys.stdout)
    return 1 if stats.failures else 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return _child_main(argv[1:])
    p = argparse.ArgumentParser(prog="python -m psgd.fuzz", description=__doc__.split("\n\n")[0])
    p.add_argument("--target", default="all", help="codecs, wire, libsvm or all (comma-separated)")
    p.add_argument("--cases", type=int, default=1000, help="cases per compressor (codecs) / per target")
    p.add_argument("--compressors", default=None, help="comma-separated subset (default: every registered one)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout-per-case", type=float, default=10.0, metavar="SECONDS",
                   help="a case taking longer is a hang (the child is killed)")
    p.add_argument("--jobs", type=int, default=None, help="child processes (default min(2, cores))")
    p.add_argument("--data-dir", default=None, help="LIBSVM files to take lines from "
                                                    "(default $PSGD_DATA, ../shared/data, else synthetic)")
    p.add_argument("--json", default=None, metavar="PATH", help="write the full report (failures with hex)")
    p.add_argument("--import", dest="plugins", action="append", default=[], metavar="MODULE|FILE.py",
                   help="import this first in every process (e.g. to register more compressors)")
    p.add_argument("--memory-limit-mb", type=int, default=4096, help="address-space limit of a child (0: none)")
    p.add_argument("--ops", action="store_true", help="also print the outcome counts per mutation")
    p.add_argument("--replay", default=None, metavar="TARGET:NAME:CASE", help="re-run one case here")
    args = p.parse_args(argv)
    if args.replay:
        _import_plugins(args.plugins)
        return replay(args.replay, args.seed, args.data_dir)
    targets = TARGETS if args.target == "all" else tuple(t.strip() for t in args.target.split(","))
    bad = [t for t in targets if t not in TARGETS]
    if bad or args.cases < 0:
        p.error(f"--target: got {','.join(bad)}; allowed: {', '.join(TARGETS)}, all" if bad
                else "--cases must be >= 0")
    comps = [c.strip() for c in args.compressors.split(",")] if args.compressors else None
    if comps:
        _import_plugins(args.plugins)
        from .compressors import available

        unknown = [c for c in comps if c not in available()]
        if unknown:
            p.error(f"--compressors: unknown {', '.join(unknown)}; allowed: {', '.join(available())}")
    report = run_fuzz(targets, args.cases, comps, args.seed, args.timeout_per_case, args.jobs,
                      args.data_dir, args.plugins, args.memory_limit_mb,
                      progress=lambda m: print(m, file=sys.stderr, flush=True))
    print(report.header)
    print(report.table())
    print(f"wall time {report.wall:.1f} s")
    notes = sorted({n for s in report.stats.values() for n in s.notes})
    for n in notes:
        print(f"note: {n}")
    for (t, n), s in sorted(report.stats.items()):
        if s.kinds:
            print(f"failures {t}/{n}: " + ", ".join(f"{k} {v}" for k, v in sorted(s.kinds.items())))
    pw = {k: s.c["partial_writes"] for k, s in report.stats.items() if s.c["partial_writes"]}
    for (t, n), v in sorted(pw.items()):
        print(f"note: {t}/{n}: {v} rejected decode_add calls had already written into out")
    if args.ops:
        print(report.ops_table())
    shown = {}
    for f in report.failures:
        tag = (f["target"], f["name"], f["kind"])
        shown[tag] = shown.get(tag, 0) + 1
        if shown[tag] > 3:
            continue
        extra = {k: f[k] for k in ("params", "d", "key", "placement", "n_features", "nbytes") if k in f}
        print(f"\nFAILURE {f['target']}/{f['name']} seed {f['seed']} case {f['case']} [{f['op']}] "
              f"{f['kind']}: {f['detail']}\n  mutation: {f.get('mutation', '')} {extra}\n"
              f"  reproducer: {_hex(bytes.fromhex(f['hex']), 400) if f['hex'] else '-'}\n"
              f"  replay: python -m psgd.fuzz --seed {f['seed']} --replay "
              f"{f['target']}:{f['name']}:{f['case']}")
    hidden = sum(max(0, v - 3) for v in shown.values())
    if hidden:
        print(f"\n({hidden} more failure records not shown; --json PATH writes them all)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report.to_json(), fh, indent=1)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
