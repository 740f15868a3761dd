"""The fuzz targets: valid inputs of one kind, mutated, decoded, and the outcome judged.

* :class:`CodecTarget`: the encodings of one compressor (every working entry of its
  ``examples``, several lengths and vector kinds);
* :class:`RoundsTarget`: the round messages of a multi-round compressor (powersgd's P and
  Q factors, both ways), read as the server and the workers read them;
* :class:`WireTarget`: message envelopes (:mod:`psgd.wire`);
* :class:`LibsvmTarget`: LIBSVM lines read by :func:`psgd.data.read_libsvm`, judged
  against :func:`reference_libsvm`, a slow line-by-line reading of the documented grammar.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import json
import math
import os
import random
import struct
import tempfile
import time
import zlib

import numpy as np

from .mutations import (
    BYTE_SPECIALS, FIXED_KEY, NASTY_INDICES, NASTY_TOKENS, NASTY_VALUES, U32_SPECIALS,
    U64_SPECIALS, VARINTS, VECTOR_KINDS, Fence, biased_offset, case_rng, hexdump,
    present_buffer, salt, synthetic_line, valid_vector)

if TYPE_CHECKING:  # a type only: the harness imports this module
    from .harness import Stats

TARGETS = ("codecs", "rounds", "layered", "wire", "libsvm", "config")
#: vector lengths of the valid encodings that get mutated
DIMS = (0, 1, 7, 64, 1000)
OTHER_KEY = 12345
#: the d claimed by the amplification check (decode without d= of a rewritten header)
AMPLIFY_D = 2**20
#: ... which may use at most this many times the memory of the float64 vector it claims
AMPLIFY_FACTOR = 2.0


# -- codecs -----------------------------------------------------------------------------------

def compressor_param_sets(name: str) -> tuple[list[dict], list[str]]:
    """(working parameter sets for the compressor ``name``, notes on the skipped ones).

    The sets are the class's ``examples``; one that the installed compressor refuses
    (ConfigError: e.g. an encoding not implemented yet) is skipped with a note. A compressor
    none of whose examples works (a plug-in without any) is fuzzed with its defaults.
    """
    from ..compressors import compressor_classes

    examples = list(compressor_classes()[name].examples)
    notes, good = [], []
    for params in examples + ([] if {} in examples else [{}]):
        if params == {} and good and {} not in examples:
            break                                   # the defaults are only the fallback
        problem = _param_set_problem(name, params)
        if problem:
            notes.append(f"{name} {params}: skipped ({problem})")
        else:
            good.append(params)
    return good, notes


def _param_set_problem(name: str, params: dict) -> str | None:
    """Why ``params`` cannot be fuzzed (construction or a small encode fails), or None."""
    from ..compressors import get_compressor
    from ..errors import ConfigError

    try:
        c = get_compressor({"name": name, **params})
        key = FIXED_KEY if c.shared_randomness else None
        c.encode(np.linspace(-1.0, 1.0, 7), np.random.default_rng(0), key=key)
    except (ConfigError, ValueError, TypeError, NotImplementedError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None



class CodecTarget:
    """Valid encodings of one compressor (every working parameter set, d in DIMS), mutated."""

    target = "codecs"
    dims = DIMS

    def _build(self, params):
        from ..compressors import get_compressor

        return get_compressor({"name": self.name, **params})

    def __init__(self, name: str, seed: int):
        from ..compressors import compressor_classes
        from ..compressors import base

        self.base = base
        self.name, self.seed = name, int(seed)
        self.params, self.notes = self._param_sets(name)
        self.comps = [self._build(p) for p in self.params]
        self.shared = any(c.shared_randomness for c in self.comps)
        self.codec_ids = sorted({cls.codec_id for cls in compressor_classes().values()})
        self.pool = []
        self.setup_failures = []
        gen = np.random.default_rng([self.seed, salt("pool", name)])
        for p, c in enumerate(self.comps):
            keys = [FIXED_KEY, None] if c.shared_randomness else [None]
            for d in self.dims:
                kinds = ["gauss"] + list(gen.choice(VECTOR_KINDS[1:], size=2, replace=False))
                for kind in (kinds[:1] if d == 0 else kinds):
                    x = valid_vector(kind, d, gen)
                    for key in keys:
                        self._add(p, c, d, kind, x, key, gen)
        if not self.comps:
            self.setup_failures.append(self._fail_record(-1, "setup", "no parameter set",
                                                         "no parameter set works: " + "; ".join(self.notes), b""))
        self.max_len = max((len(e["buf"]) for e in self.pool), default=64)
        self.fence = Fence(4 * self.max_len + 4096)

    @staticmethod
    def _param_sets(name):
        return compressor_param_sets(name)

    def _add(self, p, c, d, kind, x, key, gen):
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

        from ..errors import WireFormatError

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
                "kind": kind, "detail": detail, "hex": hexdump(data)}

    # -- mutations ----------------------------------------------------------------------------

    def make_case(self, i: int) -> dict:
        rnd = case_rng(self.seed, self.target, self.name, i)
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
            pos = [biased_offset(rnd, 0, n) for _ in range(rnd.randrange(1, 9))] if n else []
            for q in pos:
                b[q] = rnd.randrange(256)
            desc = f"overwrote bytes {pos}"
        elif op == "header_field":
            b, desc = self._header_field(rnd, b, e)
        elif op == "special_byte" and n > H:
            q = biased_offset(rnd, H, n)
            b[q] = rnd.choice(BYTE_SPECIALS)
            desc = f"byte {q} := {b[q]:#04x}"
        elif op == "special_run" and n > H:
            q = biased_offset(rnd, H, n)
            v, m = rnd.choice((0xFF, 0xFF, 0x00, 0x80, 0x7F, 0xF3)), rnd.choice((2, 4, 8, 16, 64, 512))
            m = min(m, n - q) if rnd.random() < 0.7 else m
            b[q:q + m] = bytes([v]) * m
            desc = f"bytes {q}..{q + m - 1} := {v:#04x} (length now {len(b)})"
        elif op == "special_word" and n >= H + 4:
            q = biased_offset(rnd, H, n - 3)
            w = rnd.choice(U32_SPECIALS)
            struct.pack_into("<I", b, q, w)
            desc = f"u32 at {q} := {w:#010x}"
        elif op == "special_u64" and n >= H + 8:
            q = biased_offset(rnd, H, n - 7)
            w = rnd.choice(U64_SPECIALS)
            struct.pack_into("<Q", b, q, w)
            desc = f"u64 at {q} := {w:#x}"
        elif op == "varint" and n > H:
            v = rnd.choice(VARINTS)
            q = biased_offset(rnd, H, n)
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
            q = biased_offset(rnd, 0, n + 1)
            junk = rnd.randbytes(rnd.randrange(1, 9))
            b[q:q] = junk
            desc = f"inserted {junk.hex()} at {q}"
        elif op == "delete" and n:
            q = biased_offset(rnd, 0, n)
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
        from ..errors import WireFormatError

        case = self.make_case(i)
        e, data = case["entry"], case["data"]
        c = self.comps[e["p"]]
        ref = e["buf"][:self.base.HEADER_NBYTES]
        intact = data[:len(ref)] == ref and len(data) >= len(ref)
        buf = present_buffer(self.fence, data, case["how"])
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


# -- the rounds of multi-round compressors -----------------------------------------------------

class RoundsTarget(CodecTarget):
    """A multi-round compressor's round messages (``rounds`` > 1: powersgd), mutated with the
    codec target's operations. The pool holds, for every parameter set and d, a step's four
    messages (a worker's round-0 and round-1 message, the server's reply and its last
    message); each case reads its message as the receiver does (``round_values`` of its
    round; the last round's also through ``final_total``): WireFormatError, or finite float64
    values of the length that round has, and never a changed codec header accepted."""

    target = "rounds"

    def _add(self, p, c, d, kind, x, key, gen):
        try:
            state = c.round_state(d, 0)
            up0 = c.worker_round(state, 0, x, None, d)
            reply = c.server_round(state, 0, [c.round_values(0, up0, d)], [1.0], d)
            up1 = c.worker_round(state, 1, x, reply, d)
            final = c.server_round(state, 1, [c.round_values(1, up1, d)], [1.0], d)
            c.final_total(state, final, d)
        except Exception as exc:  # noqa: BLE001 - a valid step must work
            self.setup_failures.append(self._fail_record(
                -1, "setup", "round failed", f"{self._label(p)} d={d} {kind}: "
                f"{type(exc).__name__}: {exc}", b""))
            return
        for t, role, buf in ((0, "worker", up0), (0, "server", reply), (1, "worker", up1),
                             (1, "server", final)):
            self.pool.append({"p": p, "d": d, "key": None, "buf": buf.tobytes(), "kind": kind,
                              "round": t, "role": role, "p_hat": state.p_hat.copy()})

    def setup_checks(self) -> list[dict]:
        return list(self.setup_failures)  # (round messages are always read with d=)

    def run_case(self, i: int, stats: Stats) -> None:
        from ..errors import WireFormatError

        case = self.make_case(i)
        e, data = case["entry"], case["data"]
        c, d, t = self.comps[e["p"]], e["d"], e["round"]
        ref = e["buf"][:self.base.HEADER_NBYTES]
        intact = data[:len(ref)] == ref and len(data) >= len(ref)
        buf = present_buffer(self.fence, data, case["how"])
        want = c.p_size(d) if t == 0 else c.q_size(d)
        problems, outcome = [], "rejected"
        t0 = time.perf_counter()
        reads = [("round_values", lambda: c.round_values(t, buf, d), want)]
        if t == 1:
            state = c.round_state(d, 0)
            state.p_hat = e["p_hat"].copy()
            reads.append(("final_total", lambda: c.final_total(state, buf, d), d))
        results = []
        for what, fn, n in reads:
            try:
                y = fn()
                results.append("ok")
                if not intact:
                    problems.append(("silent acceptance", f"{what} accepted a changed codec header"))
                if not isinstance(y, np.ndarray) or y.shape != (n,) or y.dtype != np.float64:
                    problems.append(("bad output", f"{what} returned {getattr(y, 'shape', y)}, "
                                                   f"expected ({n},) float64"))
                elif not np.isfinite(y).all():
                    problems.append(("non-finite output", f"{what} returned NaN or Inf"))
            except WireFormatError:
                results.append("rejected")
            except Exception as exc:  # noqa: BLE001 - that is the finding
                results.append("error")
                problems.append(("exception", f"{what}: {type(exc).__name__}: {exc}"))
        if len(set(results)) > 1 and "error" not in results:
            problems.append(("inconsistent", f"round_values {results[0]}, final_total {results[1]}"))
        ms = (time.perf_counter() - t0) * 1e3
        if ms > stats.max_ms:
            stats.max_ms, stats.max_case = ms, i
        if problems:
            outcome = "failures"
            rec = self._fail_record(i, case["op"], problems[0][0],
                                    "; ".join(f"{k}: {v}" for k, v in problems), data)
            rec.update(params=self.params[e["p"]], d=d, round=t, role=e["role"],
                       mutation=case["desc"], placement=case["how"])
            stats.fail(rec)
        elif results[0] == "ok":
            outcome = "accepted"
        stats.count(case["op"], outcome)


def multi_round_compressors() -> list[str]:
    """The registered compressors with more than one round (what the rounds target covers)."""
    from ..compressors import compressor_classes

    return sorted(n for n, cls in compressor_classes().items() if cls.rounds > 1)


# -- block_size: layer ------------------------------------------------------------------------

#: the layer sizes of the layered target's messages: one coordinate, odd and block-like sizes
LAYERS = (7, 64, 1, 30)


class LayeredTarget(CodecTarget):
    """``block_size: layer`` messages (the layers' codec messages one after another, with a
    uint32 length before each variable-length one) of one compressor, mutated with the codec
    target's operations. Each case decodes as the receiver does (with d, and decode_add into
    a model): WireFormatError, or finite float64 values of the layers' total length, the same
    answer from both. A message whose framing is bad (a length, a layer's header) is rejected
    before anything is written; one whose content is bad in a later layer (a code the layer's
    codec refuses) may have written the layers before it, counted as ``partial_writes`` as
    the codec target counts them (a rejected message ends the run, so the model is not used)."""

    target = "layered"
    dims = (sum(LAYERS),)  # (a layered code's d is its layers')

    @staticmethod
    def _param_sets(name):
        """The codec's sets with their block size replaced by 'layer' (duplicates dropped)."""
        from ..compressors import get_compressor
        from ..errors import ConfigError

        good, notes = compressor_param_sets(name)
        out = []
        for p in good:
            rest = {k: v for k, v in p.items() if k != "block_size"}
            if rest in out:
                continue
            try:  # some codecs refuse some layer sizes (spherical: large blocks)
                get_compressor({"name": name, **rest, "block_size": "layer"}, LAYERS)
                out.append(rest)
            except ConfigError as exc:
                notes.append(f"{name} {rest} per layer {LAYERS}: skipped ({exc})")
        return out, notes

    def _build(self, params):
        from ..compressors import get_compressor

        return get_compressor({"name": self.name, **params, "block_size": "layer"}, LAYERS)

    def setup_checks(self) -> list[dict]:
        return list(self.setup_failures)  # (d is the layers', never taken from a header)

    def run_case(self, i: int, stats: Stats) -> None:
        from ..errors import WireFormatError

        case = self.make_case(i)
        e, data = case["entry"], case["data"]
        c, d = self.comps[e["p"]], e["d"]
        buf = present_buffer(self.fence, data, case["how"])
        out = np.full(d, 0.25)
        before = out.copy()
        problems, results = [], []
        t0 = time.perf_counter()
        for what, fn in (("decode", lambda: c.decode(buf, key=case["key"], d=d)),
                         ("decode_add", lambda: c.decode_add(buf, out, case["weight"],
                                                             key=case["key"]))):
            try:
                y = fn()
                results.append("ok")
                if what == "decode":
                    problems += self._check_output(y, d, "with d")
            except WireFormatError:
                results.append("rejected")
            except Exception as exc:  # noqa: BLE001 - that is the finding
                results.append("error")
                problems.append(("exception", f"{what}: {type(exc).__name__}: {exc}"))
        ms = (time.perf_counter() - t0) * 1e3
        if ms > stats.max_ms:
            stats.max_ms, stats.max_case = ms, i
        if "error" not in results and results[0] != results[1]:
            problems.append(("inconsistent", f"decode {results[0]}, decode_add {results[1]}"))
        if results[1] == "rejected" and not np.array_equal(out, before):
            stats.c["partial_writes"] += 1
        if problems:
            rec = self._fail_record(i, case["op"], problems[0][0],
                                    "; ".join(f"{k}: {v}" for k, v in problems), data)
            rec.update(params=self.params[e["p"]], d=d, key=case["key"], mutation=case["desc"],
                       placement=case["how"])
            stats.fail(rec)
            outcome = "failures"
        else:
            outcome = "accepted" if results[0] == "ok" else "rejected"
        stats.count(case["op"], outcome)


def layered_compressors() -> list[str]:
    """The registered compressors with a ``block_size`` (what the layered target covers)."""
    from ..compressors import compressor_classes

    return sorted(n for n, cls in compressor_classes().items() if "block_size" in cls.params)


# -- envelope ---------------------------------------------------------------------------------

class WireTarget:
    """Envelopes (:mod:`psgd.wire`) with random fields and payloads, mutated."""

    target = "wire"

    def __init__(self, name: str, seed: int):
        from .. import wire

        self.wire, self.name, self.seed = wire, name, int(seed)
        self.fence = Fence(8192)
        self.notes, self.setup_failures = [], []

    def make_case(self, i: int) -> dict:
        w = self.wire
        rnd = case_rng(self.seed, self.target, self.name, i)
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
            unknown = [k for k in range(256) if k not in w.KIND_NAMES]  # kinds no psgd sends
            return field, rnd.choice([0, 255] + unknown[:4])
        if field == "length":
            cur = n - w.HEADER_NBYTES
            return field, rnd.choice((cur + 1, max(cur - 1, 0) if cur else cur + 2, 2**32 - 1, 2**31,
                                      cur + 4096)) % 2**32
        # valid-looking fields: only the CRC can tell (field_nocrc); "forged" ones must not
        # change a valid-looking field, so use the current value plus one
        off, fmt, size = {"worker": (6, "<H", 16), "mversion": (8, "<Q", 64), "seq": (16, "<Q", 64)}[field]
        return field, (struct.unpack_from(fmt, b, off)[0] + 1) % 2**size

    def run_case(self, i: int, stats: Stats) -> None:
        from ..errors import WireFormatError

        case = self.make_case(i)
        w, H = self.wire, self.wire.HEADER_NBYTES
        data, orig, nbytes = case["data"], case["orig"], case["nbytes"]
        must_accept = (nbytes == len(orig) and data[:H] == orig[:H]) or case["forged_valid"]
        buf = present_buffer(self.fence, data, case["how"])
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
                        "hex": hexdump(data[:max(nbytes, 0)])})
        else:
            outcome = "accepted" if st == "ok" else "rejected"
        stats.count(case["op"], outcome)


# -- LIBSVM -----------------------------------------------------------------------------------

_LS_WS = b" \t\r\x0b\x0c"
_LS_ALLOWED = frozenset(b"0123456789+-.eE:\n" + _LS_WS)


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
        from .. import data

        self.data, self.name, self.seed = data, name, int(seed)
        self.notes, self.setup_failures = [], []
        self.workdir = workdir or tempfile.mkdtemp(prefix="psgd-fuzz-")
        self.path = os.path.join(self.workdir, f"case-{os.getpid()}.svm")
        rnd = random.Random(salt("libsvm-lines", seed))
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
        rnd = case_rng(self.seed, self.target, self.name, i)
        lines = [rnd.choice(self.lines) if self.lines and rnd.random() < 0.75 else synthetic_line(rnd)
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
            tok = rnd.choice(NASTY_TOKENS)
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
                    new = rnd.choice(NASTY_INDICES)
                    b[s:c] = new
                else:
                    e = c + 1
                    while e < len(b) and b[e:e + 1] not in (b" ", b"\t", b"\n", b"\r"):
                        e += 1
                    new = rnd.choice(NASTY_VALUES)
                    b[c + 1:e] = new
                desc = f"{op.split('_')[1]} at byte {c} := {new[:20]!r}"
        elif op == "replace_label":
            e = 0
            while e < len(b) and b[e:e + 1] not in (b" ", b"\t", b"\n"):
                e += 1
            new = rnd.choice(NASTY_VALUES + (b"1:1", b"+1", b"-1"))
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
        from ..errors import DataFormatError

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
                        "hex": hexdump(data)})
        else:
            outcome = "accepted" if results[0][1] == "ok" or results[1][1] == "ok" else "rejected"
        stats.count(case["op"], outcome)


class ConfigTarget:
    """The config loader: the mutated YAML documents of :mod:`psgd.config_fuzz` (its configs
    and rules), loaded with ``config.load``: a rejection must be one short line, an acceptance
    a fixed point of ``validate``, and every case under a second."""

    target = "config"
    max_ms = 1000.0

    def __init__(self, name: str, seed: int, workdir=None):
        from .. import config, config_fuzz

        config._components()  # the imports (scipy, the kernels) are start-up, not a case
        self.fuzz, self.name, self.seed = config_fuzz, name, int(seed)
        self.docs = config_fuzz.seed_documents()
        self.notes, self.setup_failures = [f"config: {len(self.docs)} seed documents"], []
        self.workdir = workdir or tempfile.mkdtemp(prefix="psgd-fuzz-")
        self.path = os.path.join(self.workdir, f"case-{os.getpid()}.yaml")

    def make_case(self, i: int) -> dict:
        rnd = case_rng(self.seed, self.target, self.name, i)
        blob, overrides, op = self.fuzz.mutate(rnd.choice(self.docs), rnd)
        return {"data": blob, "op": op, "desc": f"overrides {overrides}", "overrides": overrides}

    def run_case(self, i: int, stats: Stats) -> None:
        case = self.make_case(i)
        blob, overrides, op = case["data"], case["overrides"], case["op"]
        with open(self.path, "wb") as fh:
            fh.write(blob)
        t0 = time.perf_counter()
        try:
            outcome, problem = self.fuzz.check_case(self.path, overrides), None
        except AssertionError as exc:
            outcome, problem = "failures", ("contract", str(exc))
        except Exception as exc:  # noqa: BLE001 - a traceback is what we look for
            outcome, problem = "failures", ("exception", f"{type(exc).__name__}: {exc}"[:300])
        ms = (time.perf_counter() - t0) * 1e3
        if ms > stats.max_ms:
            stats.max_ms, stats.max_case = ms, i
        if problem is None and ms > self.max_ms:
            outcome, problem = "failures", ("slow", f"{ms:.0f} ms (allowed {self.max_ms:.0f})")
        if problem is not None:
            stats.fail({"target": self.target, "name": self.name, "seed": self.seed, "case": i,
                        "op": op, "kind": problem[0], "detail": problem[1],
                        "mutation": case["desc"], "hex": hexdump(blob)})
        stats.count(op, outcome)


def make_target(target: str, name: str, seed: int, data_dir=None, workdir=None):
    if target == "codecs":
        return CodecTarget(name, seed)
    if target == "rounds":
        return RoundsTarget(name, seed)
    if target == "layered":
        return LayeredTarget(name, seed)
    if target == "wire":
        return WireTarget(name, seed)
    if target == "libsvm":
        return LibsvmTarget(name, seed, data_dir, workdir)
    if target == "config":
        return ConfigTarget(name, seed, workdir)
    raise ValueError(f"unknown target {target!r}")
