"""``psgd reproduce NAME [--quick] --out DIR``: a seed paper's experiment, end to end.

Each reproduction runs real ``mpiexec`` runs (through :mod:`psgd.sweep`, so an interrupted
reproduction resumes: finished runs are kept), draws PNG figures and writes ``DIR/REPORT.md``
(the paper's claim with its confidence tag from the project's paper notes, the measured
numbers, a verdict and why) and ``DIR/result.json`` (the same numbers, for tests). Base
configs live in ``configs/papers/``. ``--quick`` runs a smaller version (under 2 minutes on
2 cores) that checks the same headline claim.

Reproductions that need methods or metrics psgd does not have yet are registered with what
is missing: ``psgd reproduce --list`` shows them, and running one exits 2 saying what.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


@dataclass(frozen=True)
class Reproduction:
    name: str
    paper: str
    what: str
    #: run(out: Path, quick: bool, jobs: int, extra=()) -> result dict; ``extra`` are --set
    #: overrides applied last (tests replace the data section with synthetic data)
    run: Callable | None = None
    missing: str | None = None   # why it cannot run yet


def registry() -> dict[str, Reproduction]:
    from . import albasyoni, diana, diana_fig4, flynn, khirirat

    items = [*diana.REPRODUCTIONS, *diana_fig4.REPRODUCTIONS, *khirirat.REPRODUCTIONS,
             *flynn.REPRODUCTIONS, *albasyoni.REPRODUCTIONS]
    return {r.name: r for r in items}


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        print(f"psgd: error: {message} (see psgd reproduce --help)", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def main(argv=None) -> int:
    p = _Parser(prog="psgd reproduce", description="Reproduce a seed paper's experiment.")
    p.add_argument("name", nargs="?", help="which reproduction (see --list)")
    p.add_argument("--list", action="store_true", help="list the reproductions")
    p.add_argument("--quick", action="store_true", help="the small version (CI, < 2 min)")
    p.add_argument("--out", help="output directory (the report, its figures and runs/)")
    p.add_argument("--jobs", type=int, default=2, help="mpiexec runs at once (default 2)")
    a = p.parse_args(argv)
    reg = registry()
    if a.list:
        for r in reg.values():
            state = "available" if r.missing is None else f"not yet: {r.missing}"
            print(f"{r.name:<14} {r.paper}: {r.what} [{state}]")
        return EXIT_OK
    if a.name is None:
        p.error("give a reproduction NAME or --list")
    if a.name not in reg:
        p.error(f"unknown reproduction {a.name!r}; allowed: {', '.join(reg)}")
    r = reg[a.name]
    if r.missing is not None:
        print(f"psgd: error: reproduce {r.name} cannot run yet: {r.missing}", file=sys.stderr)
        return EXIT_USAGE
    if not a.out:
        p.error("--out DIR is required")
    if a.jobs < 1:
        p.error(f"--jobs: got {a.jobs}; allowed: an integer >= 1")
    from .common import ReproduceError

    try:
        result = r.run(Path(a.out), a.quick, a.jobs)
    except ReproduceError as exc:
        print(f"psgd: error: reproduce {r.name}: {exc}", file=sys.stderr)
        return exc.code
    print(f"reproduce {r.name}: {result['verdict']} -- {Path(a.out) / 'REPORT.md'}")
    return EXIT_OK
