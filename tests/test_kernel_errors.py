"""One table of kernel error codes (psgd/kernels_ref/errors.py), the same in C and Python."""

import re
from pathlib import Path

import pytest

from psgd import kernels
from psgd.kernels_ref import errors

HEADER = Path(__file__).resolve().parents[1] / "cython_ext" / "_errors.h"
TABLE = {k: v for k, v in vars(errors).items() if k.startswith("ERR_")}


def test_codes_are_distinct():
    assert len(set(TABLE.values())) == len(TABLE) and TABLE["ERR_OK"] == 0


@pytest.mark.skipif(not HEADER.exists(), reason="needs the source tree (cython_ext/)")
def test_the_c_header_is_the_table():
    """setup.py writes _errors.h from the table; the committed copy must be current."""
    found = dict(re.findall(r"PSGD_(ERR_\w+) = (\d+),", HEADER.read_text()))
    assert {k: int(v) for k, v in found.items()} == TABLE


@pytest.mark.parametrize("module", sorted(kernels._MODULES))
def test_every_module_returns_codes_from_the_table(module):
    """Compiled or twin, each kernel module's exported ERR_* equal the table's."""
    impl = __import__(f"psgd.{module}", fromlist=["x"]) if kernels._compiled[module] else None
    if impl is None:
        pytest.skip(f"psgd.{module} is not compiled")
    exported = {k: getattr(impl, k) for k in dir(impl) if k.startswith("ERR_")}
    assert exported and all(TABLE[k] == v for k, v in exported.items())
