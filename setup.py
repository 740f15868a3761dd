"""Build psgd: the Python packages plus the Cython kernels of cython_ext/.

Every ``cython_ext/NAME.pyx`` becomes the extension module ``psgd.NAME``.
``server/`` and ``workers/`` install as ``psgd.server`` and ``psgd.workers``
(never as top-level ``server`` / ``workers``, which would collide with anything).

PSGD_WITH_CYTHON controls the kernels (the PyYAML pattern):
  unset  try to build them; on failure warn and fall back to the NumPy twins
  1      the build must succeed (CI sets this)
  0      do not build them

PSGD_OPENMP controls OpenMP in the kernels (multi-threaded with PSGD_THREADS at run time):
  unset  use -fopenmp when the compiler accepts it, else build single-threaded (same bytes)
  1      OpenMP must work
  0      build without it
"""

import glob
import os
import sys
import tempfile

from setuptools import find_packages, setup
from setuptools.command.build_ext import build_ext

MODE = os.environ.get("PSGD_WITH_CYTHON", "").strip()
# every package under psgd/ (found, so a new subpackage needs no edit here), plus the
# two process folders mapped into it
PACKAGE_DIR = {"psgd": "psgd", "psgd.server": "server", "psgd.workers": "workers",
               **{f"psgd.{p}": os.path.join("psgd", *p.split("."))
                  for p in find_packages("psgd")}}
#: the one table of the decoders' error codes, and the C header written from it
ERROR_TABLE = "psgd/kernels_ref/errors.py"
ERROR_HEADER = "cython_ext/_errors.h"


def error_header() -> str:
    """``cython_ext/_errors.h`` as written from ERROR_TABLE (``ERR_X = n  # why`` lines)."""
    lines = ["/* The decoders' error codes, written by setup.py from psgd/kernels_ref/errors.py",
             "   (the one table: edit it there; tests check the committed copy is current). */",
             "#ifndef PSGD_ERRORS_H", "#define PSGD_ERRORS_H", "", "enum {"]
    with open(ERROR_TABLE) as fh:
        for line in fh:
            code, eq, rest = line.partition("=")
            if not eq or not code.startswith("ERR_"):
                continue
            value, _, why = rest.partition("#")
            if why.strip():
                lines.append(f"    /* {why.strip()} */")
            lines.append(f"    PSGD_{code.strip()} = {int(value)},")
    return "\n".join(lines + ["};", "", "#endif  /* PSGD_ERRORS_H */", ""])


def write_error_header() -> None:
    text = error_header()
    try:
        with open(ERROR_HEADER) as fh:
            if fh.read() == text:
                return                       # unchanged: keep its time stamp (no rebuild)
    except OSError:
        pass
    with open(ERROR_HEADER, "w") as fh:
        fh.write(text)


def extensions():
    if MODE == "0":
        return []
    try:
        import numpy
        from Cython.Build import cythonize
        from setuptools import Extension
    except ImportError as exc:
        if MODE == "1":
            raise SystemExit(f"PSGD_WITH_CYTHON=1 but the build needs Cython and NumPy: {exc}")
        print(f"WARNING: psgd kernels not built ({exc}); using the NumPy twins", file=sys.stderr)
        return []
    write_error_header()
    exts = []
    for pyx in sorted(glob.glob("cython_ext/*.pyx")):
        stem = os.path.splitext(os.path.basename(pyx))[0]
        exts.append(Extension(
            f"psgd.{stem}", [pyx],
            # cython_ext/ for the headers: _common.h (the C helpers shared by all kernels,
            # declared in _common.pxd), _errors.h and the module's own NAME.h; depends puts
            # them in an sdist and rebuilds on a change.
            include_dirs=[numpy.get_include(), "cython_ext"],
            depends=sorted(glob.glob("cython_ext/*.h")) + ["cython_ext/_common.pxd"],
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
            # -O3 for the bit loops; no -march=native (the wheel must run anywhere);
            # no FP contraction so kernels round exactly like their NumPy twins.
            extra_compile_args=["-O3", "-ffp-contract=off"],
        ))
    return cythonize(exts, language_level=3, include_path=["cython_ext"],
                     compiler_directives={"boundscheck": False, "wraparound": False,
                                          "cdivision": True, "initializedcheck": False})


OPENMP_MODE = os.environ.get("PSGD_OPENMP", "").strip()
OPENMP_FLAGS = ["-fopenmp"]
OPENMP_PROBE = """#include <omp.h>
int main(void) { int n = 0;
#pragma omp parallel reduction(+:n)
n += 1;
return n > 0 ? 0 : 1; }
"""


def compiler_has_openmp(compiler) -> bool:
    """Whether ``compiler`` compiles and links an OpenMP program with -fopenmp."""
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as fh:
            fh.write(OPENMP_PROBE)
        try:
            objs = compiler.compile([src], output_dir=tmp, extra_postargs=OPENMP_FLAGS)
            compiler.link_executable(objs, os.path.join(tmp, "probe"),
                                     extra_postargs=OPENMP_FLAGS)
        except Exception:  # noqa: BLE001 - any failure means no usable OpenMP
            return False
    return True


class OptionalBuildExt(build_ext):
    """Fall back to the NumPy twins (with a warning) unless PSGD_WITH_CYTHON=1.

    Adds -fopenmp to every kernel when the compiler supports it (PSGD_OPENMP above): the
    kernels' pragmas are then live; without it they are ignored and the kernels run on
    one thread, with the same bytes either way."""

    def build_extensions(self):
        if OPENMP_MODE != "0" and self.extensions:
            if compiler_has_openmp(self.compiler):
                for ext in self.extensions:
                    ext.extra_compile_args = list(ext.extra_compile_args) + OPENMP_FLAGS
                    ext.extra_link_args = list(ext.extra_link_args) + OPENMP_FLAGS
            elif OPENMP_MODE == "1":
                raise SystemExit("PSGD_OPENMP=1 but the compiler does not accept -fopenmp")
            else:
                print("WARNING: the compiler has no OpenMP (-fopenmp); psgd's kernels are "
                      "built single-threaded (PSGD_THREADS has no effect)", file=sys.stderr)
        super().build_extensions()

    def run(self):
        try:
            super().run()
        except Exception as exc:  # compiler missing, headers missing, ...
            self._fallback(exc)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:
            self._fallback(exc)

    def _fallback(self, exc):
        if MODE == "1":
            raise
        print(f"WARNING: building psgd's Cython kernels failed ({exc}); "
              "psgd will use the slower NumPy twins", file=sys.stderr)


setup(
    packages=list(PACKAGE_DIR),
    package_dir=PACKAGE_DIR,
    # the reproductions' base configs (configs/papers is a link to them in the checkout)
    package_data={"psgd.reproduce": ["configs/*.yaml"]},
    ext_modules=extensions(),
    cmdclass={"build_ext": OptionalBuildExt},
)
