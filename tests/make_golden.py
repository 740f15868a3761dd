"""Write the golden wire encodings under tests/data/golden/ (run from the repository root).

    python tests/make_golden.py

One file per ``examples`` entry of every registered compressor (two for shared-seed
compressors: with the runtime's key, and without one, when the seed travels), plus one
message envelope. ``index.json`` says which input, parameters and key made each file.
``tests/test_golden_wire.py`` checks that today's encoders reproduce every file byte for byte,
so a change of any wire format fails until it is made on purpose and this script is rerun.

The inputs avoid anything that could differ between machines: the vector is exact dyadic
rationals (no libm), the randomness comes from ``np.random.default_rng(SEED)``, whose
streams NumPy keeps stable across versions.
"""

from __future__ import annotations

import json
import pathlib
import sys

import numpy as np

GOLDEN_DIR = pathlib.Path(__file__).resolve().parent / "data" / "golden"
#: odd, and not a multiple of any example's block size: every example has a short last block
D = 150
SEED = 2026
#: the shared key of shared-seed compressors (what the runtime derives from seed and step)
KEY = 0x5EED_0F_C0DEC


def golden_input(d: int = D) -> np.ndarray:
    """Values in [-3.125, 3.125] in steps of 1/16, a few zeros, no two neighbours alike."""
    i = np.arange(d)
    return ((i * 37) % 101 - 50) / 16.0


def file_name(name: str, index: int, keyed: bool) -> str:
    return f"{name}-{index:02d}{'-keyed' if keyed else ''}.bin"


def cases():
    """(name, example index, params, key or None) for every golden codec file."""
    from psgd.compressors import compressor_classes

    for name, cls in sorted(compressor_classes().items()):
        for index, params in enumerate(cls.examples):
            keys = (None, KEY) if cls.shared_randomness else (None,)
            for key in keys:
                yield name, index, params, key


def encode(name: str, params: dict, key) -> bytes:
    from psgd.compressors import get_compressor

    c = get_compressor({"name": name, **params})
    return c.encode(golden_input(), np.random.default_rng(SEED), key=key).tobytes()


def envelope() -> bytes:
    """A GRAD message from worker 3 at model version 7, sequence 11, around a small payload."""
    from psgd import wire

    return wire.message(wire.GRAD, 3, 7, 11, bytes(range(40))).tobytes()


def main() -> int:
    GOLDEN_DIR.mkdir(parents=True, exist_ok=True)
    for old in GOLDEN_DIR.glob("*.bin"):
        old.unlink()
    index = []
    for name, i, params, key in cases():
        fname = file_name(name, i, key is not None)
        (GOLDEN_DIR / fname).write_bytes(encode(name, params, key))
        index.append({"file": fname, "name": name, "params": params, "key": key})
    (GOLDEN_DIR / "envelope.bin").write_bytes(envelope())
    meta = {"d": D, "seed": SEED, "input": "((i * 37) % 101 - 50) / 16, float64",
            "codecs": index}
    (GOLDEN_DIR / "index.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"wrote {len(index)} codec files and envelope.bin to {GOLDEN_DIR}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
    sys.exit(main())
