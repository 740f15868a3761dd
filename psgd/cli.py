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


class _Override(argparse.Action):
    """``--set k=v`` and ``--unset k`` into one ordered list (``--unset k`` is ``k=~``)."""

    def __call__(self, parser, namespace, value, option_string=None):
        from .config import REMOVE

        items = list(getattr(namespace, self.dest) or [])
        items.append(value if option_string == "--set" else f"{value}={REMOVE}")
        setattr(namespace, self.dest, items)


def _add_overrides(p):
    p.add_argument("--set", action=_Override, dest="set", default=[], metavar="KEY.PATH=VALUE",
                   help="override a config value (repeatable; the value is YAML), e.g. "
                        "--set run.iterations=500; --set KEY.PATH=~ removes the key, so its "
                        "default applies (=null sets null)")
    p.add_argument("--unset", action=_Override, dest="set", metavar="KEY.PATH",
                   help="remove a key from the config (repeatable), e.g. --set "
                        "algorithm.name=dqgd --unset algorithm.alpha")


def _parser():
    from .bench import listing

    p = _Parser(prog="psgd", description="Distributed optimization with compressed gradients "
                                         "on MPI. README.md has the quick start.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    r = sub.add_parser("run", help="run an experiment under mpiexec/srun (rank 0 = server)",
                       description="Run an experiment: mpiexec -n N psgd run CONFIG (N - 1 "
                                   "workers); configs/ holds examples.")
    r.add_argument("config")
    _add_overrides(r)
    r.add_argument("--out", help="output directory (overrides output.dir)")
    r.add_argument("--resume", action="store_true",
                   help="continue from the latest checkpoint in the output directory")
    r.add_argument("--overwrite", action="store_true",
                   help="replace the results of an earlier run in the output directory")

    v = sub.add_parser("validate", help="check a config as psgd run would; print it resolved",
                       description="Load and check a config without MPI and print it with every "
                                   "default filled in. With -n N also what needs the worker "
                                   "count. Exit 2 and one line when psgd run would refuse it.")
    v.add_argument("config")
    _add_overrides(v)
    v.add_argument("-n", "--workers", type=int, default=None, metavar="N",
                   help="the number of workers (mpiexec -n N+1): also check the problem's "
                        "worker rules, the data's sample count and run.worker_delay")
    v.add_argument("--out", help="output directory to check (overrides output.dir)")

    lst = sub.add_parser("list", help="compressors, algorithms, problems and config sections "
                                      "with their parameters",
                         description="Every registered component and config section with each "
                                     "parameter's meaning, allowed range and default.")
    lst.add_argument("name", nargs="?", help="show only this entry (e.g. top_k, diana, run)")

    b = sub.add_parser("bench", help="benchmarks: " + ", ".join(_bench_names()),
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description=f"benchmarks (psgd bench WHAT --help for options):\n{listing()}",
                       )
    b.add_argument("what", nargs="?", help="which benchmark")
    b.add_argument("rest", nargs=argparse.REMAINDER, help="options of that benchmark")
    for name, (_, text) in TOOLS.items():
        sub.add_parser(name, help=text, add_help=False)
    return p


#: commands that parse their own arguments: name -> (module, help); each module has main(argv)
TOOLS = {"plot": ("plot", "runs on one axis (see psgd plot --help)"),
         "report": ("report", "iterations, bits and time to each eps, per run"),
         "sweep": ("sweep", "one run per grid point, K at a time, resumable"),
         "reproduce": ("reproduce", "a seed paper's experiment: figures and a report")}


def _bench_names():
    from .bench import BENCHMARKS

    return list(BENCHMARKS)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in TOOLS:
        import importlib

        return importlib.import_module(f".{TOOLS[argv[0]][0]}", __package__).main(argv[1:])
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            from . import threads

            threads.limit()  # before NumPy loads BLAS (psgd.threads says why)
            from .launch import run

            return run(args.config, args.set, out=args.out, resume=args.resume,
                       overwrite=args.overwrite)
        if args.command == "validate":
            return _validate(args)
        if args.command == "list":
            from .listing import show

            return show(args.name)
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


def _validate(args) -> int:
    from .config import check_launch, dump, load
    from .outdir import check_output_dir

    cfg = load(args.config, args.set)
    if args.out is not None:
        cfg["output"]["dir"] = args.out
    check_launch(cfg, args.workers)
    check_output_dir(cfg["output"]["dir"])
    print(dump(cfg), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
