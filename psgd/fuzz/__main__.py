"""``python -m psgd.fuzz``: the command line (see :mod:`psgd.fuzz`)."""

from __future__ import annotations

import argparse
import json
import sys


from .harness import child_main, import_plugins, replay, run_fuzz
from .mutations import hexdump
from .targets import TARGETS

def _package_doc() -> str:
    from . import __doc__ as doc
    return doc


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return child_main(argv[1:])
    p = argparse.ArgumentParser(prog="python -m psgd.fuzz",
                                description=_package_doc().split("\n\n")[0])
    p.add_argument("--target", default="all", help="codecs, rounds, layered, wire, libsvm, config or all (comma-separated)")
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
        import_plugins(args.plugins)
        return replay(args.replay, args.seed, args.data_dir)
    targets = TARGETS if args.target == "all" else tuple(t.strip() for t in args.target.split(","))
    bad = [t for t in targets if t not in TARGETS]
    if bad or args.cases < 0:
        p.error(f"--target: got {','.join(bad)}; allowed: {', '.join(TARGETS)}, all" if bad
                else "--cases must be >= 0")
    comps = [c.strip() for c in args.compressors.split(",")] if args.compressors else None
    if comps:
        import_plugins(args.plugins)
        from ..compressors import available

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
              f"  reproducer: {hexdump(bytes.fromhex(f['hex']), 400) if f['hex'] else '-'}\n"
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
