"""The wire formats are frozen: today's encoders reproduce tests/data/golden byte for byte.

The files were written by ``tests/make_golden.py`` (which also defines the inputs). A failing
test here means a message format changed: if that is intended, bump the codec (or envelope)
format version, rerun the script and say so in the commit.
"""

import importlib.util
import json
import pathlib

import numpy as np
import pytest

from psgd import wire
from psgd.compressors import compressor_classes, get_compressor


def _load_script():
    """tests/make_golden.py (pytest runs in importlib mode: tests/ is not on sys.path)."""
    path = pathlib.Path(__file__).with_name("make_golden.py")
    spec = importlib.util.spec_from_file_location("make_golden", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_golden = _load_script()

INDEX = json.loads((make_golden.GOLDEN_DIR / "index.json").read_text())
ENTRIES = INDEX["codecs"]


def test_the_index_describes_the_script_inputs():
    assert INDEX["d"] == make_golden.D and INDEX["seed"] == make_golden.SEED
    assert len({e["file"] for e in ENTRIES}) == len(ENTRIES)


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e["file"])
def test_encoder_reproduces_the_golden_file(entry):
    golden = (make_golden.GOLDEN_DIR / entry["file"]).read_bytes()
    now = make_golden.encode(entry["name"], entry["params"], entry["key"])
    assert now == golden, \
        f"{entry['name']} {entry['params']} key={entry['key']}: the wire bytes changed"
    # and the frozen bytes still decode (to the same vector as a fresh encoding)
    c = get_compressor({"name": entry["name"], **entry["params"]})
    y = c.decode(golden, key=entry["key"], d=make_golden.D)
    assert y.shape == (make_golden.D,) and np.isfinite(y).all()


def test_every_example_has_a_golden_file():
    """A new compressor (or example) gets its format frozen on purpose: rerun the script."""
    have = {(e["name"], json.dumps(e["params"], sort_keys=True), e["key"]) for e in ENTRIES}
    missing = [(name, params, key) for name, _, params, key in make_golden.cases()
               if (name, json.dumps(params, sort_keys=True), key) not in have]
    assert not missing, f"no golden file for {missing[:5]}; run python tests/make_golden.py"
    assert compressor_classes()          # (the loop above ran over something)


def test_envelope_reproduces_the_golden_file():
    golden = (make_golden.GOLDEN_DIR / "envelope.bin").read_bytes()
    assert make_golden.envelope() == golden
    header, payload = wire.parse(np.frombuffer(golden, np.uint8), len(golden), sender="golden")
    assert header == wire.Header(wire.GRAD, 3, 7, 11, 40)
    assert bytes(payload) == bytes(range(40))
