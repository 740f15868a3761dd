"""``psgd bench WHAT [options]``: dispatch to one benchmark module.

* ``codecs``   :mod:`psgd.bench_codecs`   encode / decode-and-accumulate throughput of every
  compressor against its NumPy twin and the memory-bandwidth ceiling
* ``frontier`` :mod:`psgd.bench_frontier` measured bits per coordinate and variance against
  the lower bounds
* ``runtime``  :mod:`psgd.bench_runtime`  the parameter server against an MPI.Allreduce baseline
"""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = {"codecs": "psgd.bench_codecs", "frontier": "psgd.bench_frontier",
              "runtime": "psgd.bench_runtime",
              "network": "psgd.bench_network"}


def main(what: str, rest) -> int:
    """Run benchmark ``what`` with the remaining arguments; exit code 2 for an unknown one."""
    if what not in BENCHMARKS:
        print(f"psgd bench: error: unknown benchmark {what!r}; known: {', '.join(BENCHMARKS)}",
              file=sys.stderr)
        return 2
    module = importlib.import_module(BENCHMARKS[what])
    return module.main(list(rest))
