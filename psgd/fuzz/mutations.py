"""The fuzzer's vocabulary: per-case randomness, the valid inputs it starts from, the
special values its mutations write, and how a mutated buffer is placed before a decoder
sees it (guard pages make a read past the end a segfault)."""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import random
import zlib

import numpy as np

#: the shared key of shared-randomness compressors (both ends)
FIXED_KEY = 0x9E3779B97F4A7C15
U32_SPECIALS = (0x00000000, 0xFFFFFFFF, 0x7FFFFFFF, 0x80000000, 0x7F800000, 0xFF800000,
                 0x7FC00000, 0xFFC00000, 0x7F7FFFFF, 0x00000001, 0x00800000, 0x80000001,
                 0x3F800000, 0xBF800000, 0x0000FFFF, 0x00010000)
U64_SPECIALS = (0, 2**64 - 1, 2**63, 2**63 - 1, 2**32, 2**32 - 1, 1, FIXED_KEY, 0x7FF0000000000000)
BYTE_SPECIALS = (0x00, 0x01, 0x7F, 0x80, 0xF2, 0xF3, 0xFE, 0xFF, 32, 33, 64, 255, 243, 242)
VARINTS = (b"\xff\xff\xff\xff\x0f", b"\xff\xff\xff\xff\x1f", b"\x80\x80\x80\x80\x80\x01",
            b"\xff" * 10, b"\x80\x00", b"\x80\x80\x00", b"\xe7\x07", b"\xff\xff\xff\xff\x7f",
            b"\x80", b"\xff")



def salt(*parts) -> int:
    return zlib.crc32("\0".join(map(str, parts)).encode())


def case_rng(seed, target, name, i) -> random.Random:
    return random.Random((int(seed) << 96) | (salt(target, name) << 64) | int(i))


def hexdump(data, limit=None) -> str:
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


def present_buffer(fence: Fence | None, data: bytes, how: str):
    """The buffer as a decoder gets it: fenced (end/start), a fresh array, or bytes."""
    if how == "bytes":
        return bytes(data)
    if how in ("end", "start") and fence is not None and fence.guarded and fence.fits(len(data)):
        return fence.place(data, how)
    return np.frombuffer(bytearray(data), dtype=np.uint8)


def biased_offset(rnd: random.Random, lo: int, hi: int) -> int:
    """A position in [lo, hi), biased towards both ends (headers, scales, tails, padding)."""
    if hi <= lo:
        return lo
    r = rnd.random()
    if r < 0.35:
        return min(hi - 1, lo + rnd.randrange(16))
    if r < 0.65:
        return max(lo, hi - 1 - rnd.randrange(16))
    return rnd.randrange(lo, hi)



def valid_vector(kind: str, d: int, gen: np.random.Generator) -> np.ndarray:
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


VECTOR_KINDS = ("gauss", "zeros", "onehot", "sparse", "heavy", "tiny", "large", "equal", "f32")


NASTY_TOKENS = (b"nan", b"inf", b"-inf", b"NaN", b"Infinity", b"1e309", b"-1e400", b"1e-400",
                 b"2147483647:1", b"2147483648:1", b"99999999999:1", b"0:1", b"-1:1",
                 b"00000000001:1", b"0000000001:1", b"1::1", b":1", b"1:", b"1:2:3", b"+1", b"--1",
                 b"1e", b".", b"e5", b"qid:3", b"#c", b"\x00", b"\xff", "\u00e9".encode(), b"\t",
                 b"\r\n", b"\n\n", b" ", b"1.5:2", b"1e3:2", b"4294967297:1", b"1:1e308",
                 b"1:-0", b"3:1 2:1", b"5:1 5:2", b"1:1e-320", b"1:+.5", b"1:5.", b"1_0:1", b"1:0x1",
                 b"\x0b", b"\x0c", b"1:1 1:1", b"2147483647:1e308")
NASTY_VALUES = (b"nan", b"inf", b"1e309", b"1e308", b"-0", b"1e-320", b"", b"+", b"1.2.3",
                 b"-", b"e", b"1e+", b"0e0", b"+.5e-3", b"9" * 400)
NASTY_INDICES = (b"0", b"2147483647", b"2147483648", b"99999999999", b"1", b"0001", b"",
                  b"-3", b"+3", b"1.0", b"1e3", b"4294967297", b"9" * 30)




def synthetic_line(rnd: random.Random) -> bytes:
    label = rnd.choice((b"-1", b"+1", b"1", b"0", b"2", b"0.5", b"1e-3", b"-0.25"))
    idx, toks = 0, [label]
    for _ in range(rnd.randrange(0, 12)):
        idx += rnd.choice((1, 1, 2, 3, 10, 100))
        v = rnd.choice((b"1", b"0.5", b"-2", b"1e-3", b"3.25E+2", b"0", b".5", b"5.",
                        repr(rnd.uniform(-10, 10)).encode()))
        toks.append(b"%d:%s" % (idx, v))
    return rnd.choice((b" ", b"\t", b"  ")).join(toks)
