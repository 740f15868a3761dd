"""Where ``mpiexec`` is, for everything that launches psgd (benchmarks, tests): the one beside
this Python (the PyPI mpich wheel's, in a virtual environment), else the one on PATH."""

from __future__ import annotations

import os
import shutil
import sys


def path() -> str | None:
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return here if os.path.exists(here) else shutil.which("mpiexec")
