"""The compressed downlink: the server's mirror of a worker's model and the worker's model
itself move by the same decoded message, so they agree bit for bit after any number of
steps, for every compressor a downlink may use; and the server's encode makes no d-sized
temporaries (it moves the mirror by decoding the sent code into it)."""

import tracemalloc

import numpy as np
import pytest

from psgd.compressors import compressor_classes
from psgd.runtime import Downlink


def _downlink_configs():
    """The first example of every compressor a downlink takes: one round, and unbiased or a
    contraction (the config's rule)."""
    out = []
    for name, cls in sorted(compressor_classes().items()):
        for example in getattr(cls, "examples", ())[:1]:
            cfg = {"name": name, **example}
            try:
                comp = Downlink({"downlink": {"compressor": cfg}}, 1000).compressor
            except Exception:  # noqa: BLE001 - needs a problem's layers, or other settings
                continue
            if comp.rounds == 1 and (comp.unbiased or comp.delta(1000) < 1.0):
                out.append(cfg)
    return out


CONFIGS = _downlink_configs()


def test_every_kind_of_downlink_is_covered():
    names = {c["name"] for c in CONFIGS}
    assert {"natural", "random_dithering", "top_k", "rand_k"} <= names, names


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c["name"])
def test_the_mirror_is_the_worker_s_model_bit_for_bit(cfg):
    d = 1000
    down = Downlink({"downlink": {"compressor": cfg}}, d)
    gen, rng = np.random.default_rng(1), np.random.default_rng(0)
    x, mirror, worker = gen.standard_normal(d), np.zeros(d), np.zeros(d)
    buf = np.zeros(down.max_nbytes(), np.uint8)
    for _ in range(25):
        x += 0.1 * gen.standard_normal(d)
        n = down.encode(x, mirror, rng, buf)
        down.apply(buf[:n], worker)
        assert np.array_equal(mirror, worker)
    assert np.linalg.norm(x - worker) < np.linalg.norm(x)  # the worker follows the model


def test_the_server_s_encode_makes_no_d_sized_temporary():
    d = 200_000
    down = Downlink({"downlink": {"compressor": {"name": "natural"}}}, d)
    gen, rng = np.random.default_rng(1), np.random.default_rng(0)
    x, mirror = gen.standard_normal(d), np.zeros(d)
    buf = np.zeros(down.max_nbytes(), np.uint8)
    down.encode(x, mirror, rng, buf)  # the first call allocates its one scratch vector
    tracemalloc.start()
    try:
        down.encode(x, mirror, rng, buf)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * d / 4, peak  # (before: x - mirror, its decode and scale * decode: 3 d)
