"""The ``psgd`` command line (also ``python -m psgd``).

Exit codes: 0 success; 2 bad usage or bad config (one line on stderr, no
traceback); 1 run-time failure (the message names the rank and why).
"""

from __future__ import annotations

import argparse
import sys

from .errors import ConfigError, DataFormatError, PsgdError

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse prints usage too; keep it short)
        print(f"psgd: error: {message} (see psgd {self.prog.split()[-1]} --help)"
              if " " in self.prog else f"psgd: error: {message} (see psgd --help)", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def _parser():
    p = _Parser(prog="psgd", description="Distributed optimization with compressed gradients on MPI.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    r = sub.add_parser("run", help="run an experiment under mpiexec/srun (rank 0 = server)")
    r.add_argument("config")
    r.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a config value (repeatable), e.g. --set run.iterations=500")
    r.add_argument("--out", help="output directory (overrides output.dir)")
    r.add_argument("--resume", action="store_true",
                   help="continue from the latest checkpoint in the output directory")
    r.add_argument("--overwrite", action="store_true",
                   help="replace the results of an earlier run in the output directory")

    v = sub.add_parser("validate", help="load and validate a config; print the resolved config")
    v.add_argument("config")
    v.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE")

    sub.add_parser("list", help="the registered compressors, algorithms and problems")

    b = sub.add_parser("bench", help="benchmarks (see psgd bench --help)")
    b.add_argument("what", help="which benchmark")
    b.add_argument("rest", nargs=argparse.REMAINDER)
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            from .launch import run

            return run(args.config, args.set, out=args.out, resume=args.resume,
                       overwrite=args.overwrite)
        if args.command == "validate":
            from .config import dump, load

            print(dump(load(args.config, args.set)), end="")
            return 0
        if args.command == "list":
            return _list()
        if args.command == "bench":
            from .bench import main as bench_main

            return bench_main(args.what, args.rest)
    except (ConfigError, DataFormatError) as exc:
        print(f"psgd: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except PsgdError as exc:
        print(f"psgd: error: {exc}", file=sys.stderr)
        return 1
    return 0


def _list() -> int:
    from . import algorithms, compressors, problems  # noqa: F401  (fill the registry)
    from .registry import classes

    for kind in ("compressor", "algorithm", "problem"):
        print(f"{kind}s:")
        for name, cls in sorted(classes(kind).items()):
            params = ", ".join(f"{k}={c.default!r}" for k, c in cls.params.items())
            extra = ""
            if kind == "compressor":
                extra = " [unbiased]" if cls.unbiased else " [biased]"
            print(f"  {name}{extra}: {params or 'no parameters'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
