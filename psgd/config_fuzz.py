"""Fuzzing the config loader: random YAML mutations of the configs in ``configs/``.

Every case is a mutated config file (and sometimes ``--set`` / ``--unset`` items) loaded with
:func:`psgd.config.load`. The loader must either return a resolved config that is a fixed
point (dumping and validating it again gives it back) or raise ConfigError / DataFormatError
with one line of at most :data:`MAX_MESSAGE` characters. Anything else is a failure:
another exception (a traceback for the user), a case slower than ``time_limit`` seconds (a
hang) or one that needs more than ``mem_limit_mb`` MB.

Cases run in a child process under ``RLIMIT_AS`` (its size at start plus the memory limit);
the parent gives each case its time limit, and when the child hangs or dies it records the
case and starts a new child at the next one. ``python -m psgd.config_fuzz --cases N``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .fuzz.pipe import LineReader

#: longest accepted error line (the value shown is cut to ~80 characters)
MAX_MESSAGE = 400

_FALLBACK_SEED = b"""seed: 0
problem: {name: logistic, l2: 0.01}
data: {source: synthetic, n_samples: 100, n_features: 5}
algorithm: {name: diana, stepsize: theory}
compressor: {name: random_dithering, levels: 1, norm: "2", block_size: 25}
run: {mode: sync, iterations: 10, log_every: 5, downlink: {compressor: {name: top_k, k: 2}}}
output: {dir: runs/x}
"""

_NASTY_VALUES = ["1e308", "1.0e+308", "-1", "0", "-0.0", ".inf", "-.inf", ".nan", "~", "null",
                 "yes", "no", "on", "2001-12-14", "0x7fffffffffffffff", "1" * 400, "9" * 25,
                 "''", '"\\u0000"', "[]", "{}", "[1, [2, [3]]]", "{a: {b: {c: d}}}",
                 "!!binary aGk=",
                 "!!python/object:os.system x", "!!set {a, b}", "!!omap [a: 1]", "&x [*x]",
                 "*undefined", "? [a, b]\n: c", "x" * 5000, "\t", "'\xe9'", "-", ":", "|\n  a",
                 "@", "`", "%TAG ! x", "0o17", "1_000", "+12", "12:30:00"]
_NASTY_KEYS = ["name", "<<", "seed", "run", "", "~", "1", "dir", "x" * 300, "[a]", "? k"]
_NASTY_BYTES = [b"\xff", b"\xef\xbb\xbf", b"\x00", b"\t", b"\r", b"&a ", b"*a ", b"!!", b"<<: ",
                b"{", b"}", b"[", b"]", b": ", b"- ", b"'", b'"', b"\\", b"%YAML 1.1\n",
                b"---\n", b"...\n", b"#", b"\xc3", b"\xed\xa0\x80"]


def seed_documents() -> list[bytes]:
    """The configs of a checkout's configs/ (the current directory's, as in a source tree or
    CI, else the one beside the package in an editable install), else a built-in one."""
    for root in (Path.cwd() / "configs", Path(__file__).resolve().parents[1] / "configs"):
        found = [p.read_bytes() for p in sorted(root.glob("*.yaml"))] if root.is_dir() else []
        if found:
            return found
    return [_FALLBACK_SEED]


def _bomb(rnd) -> bytes:
    width, depth = rnd.randint(2, 12), rnd.randint(2, 12)
    lines = ["b0: &b0 [" + ", ".join(["x"] * width) + "]"]
    lines += [f"b{i}: &b{i} [" + ", ".join([f"*b{i - 1}"] * width) + "]" for i in range(1, depth)]
    return ("\n".join(lines) + f"\nseed: *b{depth - 1}\n").encode()


def mutate(doc: bytes, rnd: random.Random):
    """One case: ``(file bytes, overrides, description)``."""
    b = bytearray(doc)
    lines = doc.split(b"\n")
    overrides = []
    op = rnd.choice(("bitflip", "bytes", "delete", "truncate", "dup_line", "swap_lines",
                     "value", "value", "value", "key", "indent", "nest", "bomb", "override",
                     "override", "unset", "valid"))
    if op == "bitflip" and b:
        for _ in range(rnd.randint(1, 8)):
            q = rnd.randrange(8 * len(b))
            b[q // 8] ^= 1 << (q % 8)
    elif op == "bytes":
        for _ in range(rnd.randint(1, 4)):
            q = rnd.randrange(len(b) + 1)
            b[q:q] = rnd.choice(_NASTY_BYTES) if rnd.random() < 0.7 else rnd.randbytes(4)
    elif op == "delete" and b:
        q = rnd.randrange(len(b))
        del b[q:q + rnd.randint(1, 40)]
    elif op == "truncate":
        b = b[:rnd.randrange(len(b) + 1)]
    elif op in ("dup_line", "swap_lines") and len(lines) > 1:
        i, j = rnd.randrange(len(lines)), rnd.randrange(len(lines))
        if op == "dup_line":
            lines.insert(j, lines[i])
        else:
            lines[i], lines[j] = lines[j], lines[i]
        b = bytearray(b"\n".join(lines))
    elif op in ("value", "key", "indent"):
        i = rnd.randrange(len(lines))
        line = lines[i].decode("utf-8", "replace")
        if op == "value" and ":" in line:
            head = line.rsplit(":", 1)[0] if rnd.random() < 0.5 else line.split(":", 1)[0]
            line = f"{head}: {rnd.choice(_NASTY_VALUES)}"
        elif op == "key":
            indent = len(line) - len(line.lstrip())
            line = " " * indent + f"{rnd.choice(_NASTY_KEYS)}: {rnd.choice(_NASTY_VALUES)}"
        else:
            line = " " * rnd.randint(0, 9) + line.lstrip()
        lines[i] = line.encode("utf-8", "surrogateescape")
        b = bytearray(b"\n".join(lines))
    elif op == "nest":
        depth = rnd.choice((10, 40, 300, 3000, 30000))
        open_, close = rnd.choice((("[", "]"), ("{a: ", "}")))
        b += f"\nx: {open_ * depth}1{close * depth}\n".encode()
    elif op == "bomb":
        b = bytearray(_bomb(rnd)) + b"\n" + bytearray(doc.replace(b"seed:", b"x-seed:"))
    elif op in ("override", "unset"):
        sections = ("seed", "problem", "data", "algorithm", "compressor", "run", "output")
        keys = [rnd.choice(sections)] + [rnd.choice(("name", "levels", "alpha", "iterations",
                                                     "path", "downlink", "x", "dir"))
                                         for _ in range(rnd.randint(0, 2))]
        value = "~" if op == "unset" else rnd.choice(_NASTY_VALUES)
        overrides.append(f"{'.'.join(keys)}={value}")
    return bytes(b), overrides, op


def check_case(path: str, overrides) -> str:
    """Load one case; return "accepted" or "rejected", raise AssertionError on a violation."""
    from . import config
    from .errors import ConfigError, DataFormatError

    try:
        cfg = config.load(path, overrides)
    except (ConfigError, DataFormatError) as exc:
        text = str(exc)
        if "\n" in text or len(text) > MAX_MESSAGE:
            raise AssertionError(f"error message is {len(text)} chars / several lines: "
                                 f"{text[:200]!r}") from None
        return "rejected"
    again = config.validate(config._load_text(config.dump(cfg)))
    if again != cfg:
        raise AssertionError("the resolved config is not a fixed point of validate")
    return "accepted"


def _child(seed: int, start: int, stop: int, mem_limit_mb: int, target: str) -> None:
    """Run cases [start, stop) and report each on stdout (the parent's protocol)."""
    import importlib

    module, _, func = target.partition(":")
    check = getattr(importlib.import_module(module), func)
    from . import config

    config._components()  # the imports (scipy, the kernels) are start-up, not the first case
    docs = seed_documents()
    vm = _vm_bytes()
    resource.setrlimit(resource.RLIMIT_AS, (vm + mem_limit_mb * 2**20, resource.RLIM_INFINITY))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    work = tempfile.mkdtemp(prefix="psgd-config-fuzz-")
    path = os.path.join(work, "case.yaml")
    for i in range(start, stop):
        rnd = random.Random(f"{seed}:{i}")
        blob, overrides, op = mutate(rnd.choice(docs), rnd)
        with open(path, "wb") as fh:
            fh.write(blob)
        print(json.dumps({"start": i, "op": op}), flush=True)
        t = time.perf_counter()
        try:
            status, detail = check(path, overrides), ""
        except MemoryError:
            status, detail = "memory", "MemoryError"
        except Exception as exc:  # noqa: BLE001 - every other exception is what we look for
            status, detail = "exception", f"{type(exc).__name__}: {exc}"[:300]
        grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
        if grown > mem_limit_mb and status in ("accepted", "rejected"):
            status, detail = "memory", f"peak RSS grew {grown:.0f} MB"
        print(json.dumps({"done": i, "status": status, "op": op, "detail": detail,
                          "ms": 1e3 * (time.perf_counter() - t), "overrides": overrides,
                          "hex": blob[:400].hex() if detail else ""}), flush=True)


def _vm_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def run(cases: int = 1000, seed: int = 0, time_limit: float = 1.0, mem_limit_mb: int = 200,
        target: str = "psgd.config_fuzz:check_case", startup_s: float = 60.0) -> dict:
    """Run ``cases`` cases; return counts, the slowest case and every failure."""
    stats = {"cases": 0, "accepted": 0, "rejected": 0, "max_ms": 0.0, "failures": []}
    i = 0
    while i < cases:
        proc = subprocess.Popen([sys.executable, "-m", "psgd.config_fuzz", "--child", str(seed),
                                 str(i), str(cases), str(mem_limit_mb), target],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        current, limit, op = None, startup_s, None
        lines = LineReader(proc.stdout)
        try:
            while i < cases:
                line = lines.readline(limit)
                if line is None:  # the case (or the child's start-up) took too long
                    stats["failures"].append({"case": current, "status": "hang", "op": op})
                    break
                if not line:  # the child died inside a case
                    stats["failures"].append({"case": current, "status": "died", "op": op,
                                              "returncode": proc.wait()})
                    break
                msg = json.loads(line)
                if "start" in msg:
                    current, limit, op = msg["start"], time_limit, msg["op"]
                    continue
                stats["cases"] += 1
                stats["max_ms"] = max(stats["max_ms"], msg["ms"])
                if msg["status"] in ("accepted", "rejected"):
                    stats[msg["status"]] += 1
                    if msg["ms"] > 1e3 * time_limit:
                        stats["failures"].append({**msg, "case": msg["done"], "status": "slow"})
                else:
                    stats["failures"].append({**msg, "case": msg["done"]})
                i, current, limit = msg["done"] + 1, None, time_limit
        finally:
            proc.kill()
            proc.wait()
        if current is not None:  # that case failed: go on with a new child after it
            stats["cases"] += 1
            i = current + 1
        elif i < cases:
            break  # the child failed before its first case: a new one would too
    return stats


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        _child(int(argv[1]), int(argv[2]), int(argv[3]), int(argv[4]), argv[5])
        return 0
    p = argparse.ArgumentParser(prog="python -m psgd.config_fuzz", description=__doc__.split(
        "\n\n")[0])
    p.add_argument("--cases", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--time-limit", type=float, default=1.0, help="seconds per case")
    p.add_argument("--mem-limit-mb", type=int, default=200, help="MB per case")
    args = p.parse_args(argv)
    stats = run(args.cases, args.seed, args.time_limit, args.mem_limit_mb)
    print(json.dumps({k: v for k, v in stats.items() if k != "failures"}))
    for failure in stats["failures"][:20]:
        print(json.dumps(failure))
    return 1 if stats["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
