"""``psgd bench codecs``: codec throughput against the NumPy twins and the memory bandwidth.

For every compressor (default: every entry of every registered compressor's ``examples``;
``--compressors a,b`` (the first example of each) or ``name:key=value;key=value``) on one float32
Gaussian vector of length ``--dim`` (default 10^7) it measures, as the median of
``--repeats`` runs:

* encode and decode-and-accumulate (``decode_add`` into a float32 sum) throughput,
  in GB/s of float32 input (4 d bytes / time);
* the same for the NumPy twins (the compressor run inside :func:`psgd.kernels.use_twins`,
  which swaps every compiled kernel for its reference implementation);
* ``np.copyto`` of the input, the memory-bandwidth ceiling of a streaming pass;
* bits per coordinate from the actual message (``8 len(buf) / d``, header included),
  and the normalized error ``||C(x) - x||^2 / ||x||^2`` of that message beside the
  theoretical omega (unbiased) or delta (biased).

Ratios ``kernel/twin`` and ``kernel/copy`` are printed (throughput ratios: > 1 means
faster). ``same`` says whether kernel and twin produced the same bytes from the same
seed. ``--clock cpu`` times with the thread's CPU clock instead of the wall clock,
which is steadier on a shared machine (it does not count time the process waits).

Some examples only make sense at small d (a spherical code with 8-blocks draws ~10^4
Gaussians a coordinate): before measuring an example not named on the command line, encode
is timed at two small lengths and extrapolated (at least linearly) to ``--dim``; when the
prediction exceeds ``--budget`` seconds the example is skipped with a note.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time

import numpy as np

#: an example whose encode is predicted to take longer than this at --dim is skipped (a note
#: says so); one given with --compressors always runs
BUDGET_S = 20.0


def _parser():
    p = argparse.ArgumentParser(prog="psgd bench codecs",
                                description="Encode / decode_add throughput of every compressor "
                                            "against its NumPy twin and np.copyto.")
    p.add_argument("--dim", type=int, default=10**7, help="vector length d (default 10^7)")
    p.add_argument("--compressors", default=None,
                   help="comma-separated names, optionally name:key=value;key=value "
                        "(default: the examples of every registered compressor)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (median)")
    p.add_argument("--no-twins", action="store_true", help="skip the NumPy twin measurements")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="wall: time.perf_counter; cpu: time.thread_time (steadier when shared)")
    p.add_argument("--budget", type=float, default=BUDGET_S, metavar="SECONDS",
                   help="skip default examples whose encode is predicted to take longer "
                        f"(default {BUDGET_S:g})")
    p.add_argument("--threads", type=int, default=1, metavar="N",
                   help="also measure the kernels on N threads (PSGD_THREADS) and print "
                        "their throughput against 1 thread and against copy")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, metavar="FILE", help="write the rows here")
    return p


def _value(text: str):
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "null": None}.get(text.lower(), text)


def _examples(name: str) -> list[dict]:
    """The configs of a compressor's examples (an unknown name: for get_compressor to reject)."""
    from .compressors import compressor_classes
    cls = compressor_classes().get(name)
    return [dict(name=name, **p) for p in (cls.examples if cls and cls.examples else ({},))]


def _settings(spec: str | None, d: int) -> list[tuple[dict, bool]]:
    """(config, chosen explicitly) pairs; explicit ones are never skipped for time."""
    from .compressors import available
    if spec is None:
        chosen = [(cfg, False) for n in available() for cfg in _examples(n)]
    else:
        chosen = []
        for item in filter(None, (s.strip() for s in spec.split(","))):
            name, _, params = item.partition(":")
            cfg = {"name": name}
            for kv in filter(None, params.split(";")):
                key, _, val = kv.partition("=")
                cfg[key.strip()] = _value(val.strip())
            chosen.append((cfg if params else _examples(name)[0], True))
    for cfg, _ in chosen:                   # "sqrt": s = round(sqrt(d)) (QSGD Cor. 3.3)
        if cfg.get("levels") == "sqrt":
            cfg["levels"] = max(1, round(math.sqrt(d)))
    return chosen


def predicted_encode_s(cfg: dict, d: int, seed: int) -> float:
    """Encode time at length d extrapolated from lengths 2^12 and 2^14 (best of 3 each),
    with an exponent clipped to [1, 2]: linear codes scale linearly, a dense sketch of
    one block quadratically."""
    from .compressors import get_compressor
    c = get_compressor(cfg)
    key = 0x5EED_0F_C0DEC if c.shared_randomness else None
    gen = np.random.default_rng(seed)
    times = []
    for n in (2**12, 2**14):
        x = gen.standard_normal(n).astype(np.float32)
        best = math.inf
        for _ in range(3):
            t0 = time.perf_counter()
            c.encode(x, gen, key=key)
            best = min(best, time.perf_counter() - t0)
        times.append(max(best, 1e-7))
    slope = min(2.0, max(1.0, math.log(times[1] / times[0]) / math.log(4.0)))
    return times[1] * (d / 2**14) ** slope


def _timer(clock):
    return time.thread_time if clock == "cpu" else time.perf_counter


def _median_time(fn, repeats: int, clock) -> float:
    tick = _timer(clock)
    times = []
    for _ in range(repeats):
        t0 = tick()
        fn()
        times.append(tick() - t0)
    return statistics.median(times)


def _theory(c, d):
    try:
        return ("omega", float(c.omega(d))) if c.unbiased else ("delta", float(c.delta(d)))
    except Exception:  # noqa: BLE001 - not every compressor states one
        return ("omega" if c.unbiased else "delta", float("nan"))


def measure(cfg: dict, x: np.ndarray, repeats: int, clock: str, twins: bool, seed: int,
            threads: int = 1) -> dict:
    """One row: throughput of the compiled kernels and the twins, bits, error (see module doc)."""
    from . import kernels
    from .compressors import get_compressor
    c = get_compressor(cfg)
    d = x.size
    key = 0x5EED_0F_C0DEC if c.shared_randomness else None
    gb = 4.0 * d / 1e9

    def run():
        def enc():
            return c.encode(x, np.random.default_rng(seed), key=key)
        buf = enc()
        out = np.zeros(d, dtype=np.float32)

        def dec():
            c.decode_add(buf, out, 1.0, key=key)
        dec()                                 # warm up (and check it decodes)
        return buf, gb / _median_time(enc, repeats, clock), gb / _median_time(dec, repeats, clock)

    with kernels.threads(1):
        buf, enc_gbs, dec_gbs = run()
    y = c.decode(buf, key=key, d=d)
    x64 = x.astype(np.float64)
    err = float(((y - x64) ** 2).sum() / (x64 @ x64))
    kind, theo = _theory(c, d)
    row = {"compressor": cfg["name"], "params": {k: v for k, v in cfg.items() if k != "name"},
           "bits_per_coord": 8.0 * len(buf) / d, "err": err, "kind": kind, "theory": theo,
           "encode_gbs": enc_gbs, "decode_add_gbs": dec_gbs}
    if threads > 1:
        with kernels.threads(threads):
            pbuf, penc, pdec = run()
        row.update(threads=threads, threaded_encode_gbs=penc, threaded_decode_add_gbs=pdec,
                   threaded_same_bytes=bool(pbuf.tobytes() == buf.tobytes()))
    if twins:
        with kernels.use_twins():
            tbuf, tenc, tdec = run()
        row.update(twin_encode_gbs=tenc, twin_decode_add_gbs=tdec,
                   twin_same_bytes=bool(tbuf.tobytes() == buf.tobytes()))
    return row


def copy_gbs(x: np.ndarray, repeats: int, clock: str) -> float:
    y = np.empty_like(x)
    np.copyto(y, x)
    return 4.0 * x.size / 1e9 / _median_time(lambda: np.copyto(y, x), repeats, clock)


def _fmt_params(p: dict) -> str:
    return ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in p.items())


def table(rows: list[dict], d: int, copy: float, repeats: int, clock: str, compiled: bool) -> str:
    head = ["compressor", "params", "bits/c", "err/|x|^2", "theory", "enc GB/s", "dec GB/s",
            "enc/copy", "dec/copy", "enc/twin", "dec/twin", "same"]
    lines, notes = [], []
    for r in rows:
        if "error" in r:
            notes.append(f"# note: {r['compressor']}({_fmt_params(r['params'])}) {r['error']}")
            continue
        tw = "twin_encode_gbs" in r
        lines.append([
            r["compressor"], _fmt_params(r["params"]), f"{r['bits_per_coord']:.3f}",
            f"{r['err']:.4g}", f"{r['kind']}={r['theory']:.4g}",
            f"{r['encode_gbs']:.3f}", f"{r['decode_add_gbs']:.3f}",
            f"{r['encode_gbs'] / copy:.3f}", f"{r['decode_add_gbs'] / copy:.3f}",
            f"{r['encode_gbs'] / r['twin_encode_gbs']:.1f}" if tw else "-",
            f"{r['decode_add_gbs'] / r['twin_decode_add_gbs']:.1f}" if tw else "-",
            ("yes" if r["twin_same_bytes"] else "NO") if tw else "-"])
        if "threads" in r:                  # --threads N: the threaded run beside it
            lines[-1] += [f"{r['threaded_encode_gbs'] / copy:.3f}",
                          f"{r['threaded_decode_add_gbs'] / copy:.3f}",
                          f"{r['threaded_encode_gbs'] / r['encode_gbs']:.2f}",
                          f"{r['threaded_decode_add_gbs'] / r['decode_add_gbs']:.2f}",
                          "yes" if r["threaded_same_bytes"] else "NO"]
    if any("threads" in r for r in rows):
        n = next(r["threads"] for r in rows if "threads" in r)
        head += [f"enc{n}t/copy", f"dec{n}t/copy", f"enc {n}t/1t", f"dec {n}t/1t", f"same{n}t"]
        lines = [l + ["-"] * (len(head) - len(l)) for l in lines]
    widths = [max(len(h), *(len(str(l[i])) for l in lines)) if lines else len(h)
              for i, h in enumerate(head)]
    out = [f"# psgd bench codecs: d={d}, float32 input, median of {repeats} ({clock} clock); "
           f"kernels: {'compiled' if compiled else 'NOT BUILT (twins)'}; "
           f"np.copyto {copy:.2f} GB/s",
           "# GB/s = 4 d bytes of float32 input / time; ratios are throughput ratios; "
           "err = ||C(x)-x||^2/||x||^2 of this message"]
    fmt = lambda cells: "  ".join(str(c).rjust(w) if i > 1 else str(c).ljust(w)  # noqa: E731
                                  for i, (c, w) in enumerate(zip(cells, widths)))
    out.append(fmt(head))
    out += [fmt(l) for l in lines] + notes
    return "\n".join(out)


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.dim < 1 or args.repeats < 1 or args.threads < 1:
        print("psgd bench codecs: error: --dim, --repeats and --threads must be >= 1",
              file=sys.stderr)
        return 2
    if args.threads > 1 and args.clock == "cpu":
        # thread_time counts the calling thread only: the other threads' work would be free
        print("psgd bench codecs: error: --threads needs --clock wall", file=sys.stderr)
        return 2
    from . import kernels
    from .errors import PsgdError
    try:
        settings = _settings(args.compressors, args.dim)
    except PsgdError as exc:
        print(f"psgd bench codecs: error: {exc}", file=sys.stderr)
        return 2
    x = np.random.default_rng(args.seed).standard_normal(args.dim).astype(np.float32)
    copy = copy_gbs(x, max(args.repeats, 5), args.clock)
    rows = []
    for cfg, explicit in settings:
        params = {k: v for k, v in cfg.items() if k != "name"}
        try:
            if not explicit and args.dim > 2**14:
                guess = predicted_encode_s(cfg, args.dim, args.seed)
                if guess > args.budget:
                    rows.append({"compressor": cfg["name"], "params": params,
                                 "error": f"skipped: encode predicted to take {guess:.3g} s at "
                                          f"d={args.dim} (--budget {args.budget:g}); name it "
                                          "with --compressors to run it"})
                    continue
            row = measure(cfg, x, args.repeats, args.clock, not args.no_twins, args.seed,
                          args.threads)
        except PsgdError as exc:
            if args.compressors is not None:
                print(f"psgd bench codecs: error: {exc}", file=sys.stderr)
                return 2
            row = {"compressor": cfg["name"], "params": params, "error": f"skipped: {exc}"}
        except (ValueError, MemoryError) as exc:
            row = {"compressor": cfg["name"], "params": params,
                   "error": f"failed: {type(exc).__name__}: {exc}"}
        rows.append(row)
        print(f"# measured {cfg['name']} {_fmt_params(params)}", file=sys.stderr, flush=True)
    compiled = all(v for k, v in vars(kernels).items() if k.startswith("HAVE_CYTHON"))
    print(table(rows, args.dim, copy, args.repeats, args.clock, compiled))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"dim": args.dim, "repeats": args.repeats, "clock": args.clock,
                       "copy_gbs": copy, "compiled": compiled, "rows": rows}, fh, indent=1,
                      default=float)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
