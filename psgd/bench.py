"""``psgd bench WHAT [options]``: dispatch to one benchmark module.

Each entry of :data:`BENCHMARKS` is a module with ``main(argv) -> int`` and the one-line
summary ``psgd bench`` and ``psgd bench --help`` print.
"""

from __future__ import annotations

import importlib
import sys

#: name -> (module, one-line summary)
BENCHMARKS = {
    "codecs": ("psgd.bench_codecs", "encode / decode-and-accumulate throughput, bits and omega of "
                                    "every compressor against its NumPy twin and np.copyto"),
    "frontier": ("psgd.bench_frontier", "measured bits per coordinate and variance of every "
                                        "compressor beside the lower bounds (--out FIG.png)"),
    "runtime": ("psgd.bench_runtime", "steps/s and each server's time split, sync and async, "
                                      "against an MPI.Allreduce data-parallel baseline"),
    "network": ("psgd.bench_network", "time to accuracy on an emulated cluster network (needs "
                                      "root) against Allreduce GD, with a cost model"),
}


def listing() -> str:
    """One line per benchmark, for the help texts."""
    width = max(map(len, BENCHMARKS))
    return "\n".join(f"  {name:<{width}}  {summary}" for name, (_, summary) in BENCHMARKS.items())


def usage() -> str:
    return ("usage: psgd bench WHAT [options]   (psgd bench WHAT --help for its options)\n\n"
            f"benchmarks:\n{listing()}")


def main(what: str | None, rest) -> int:
    """Run benchmark ``what`` with the remaining arguments; exit code 2 for an unknown one."""
    if what in (None, "-h", "--help"):
        print(usage())
        return 0
    if what not in BENCHMARKS:
        print(f"psgd bench: error: unknown benchmark {what!r}; known: {', '.join(BENCHMARKS)} "
              "(psgd bench --help lists them)", file=sys.stderr)
        return 2
    module = importlib.import_module(BENCHMARKS[what][0])
    return module.main(list(rest))
