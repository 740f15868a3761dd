"""``block_size: layer``: one block per layer of the model, for every compressor with a
block_size; the bytes, the framing checks, the config rules, the layer-aligned shards, and a
real mpiexec run on the MLP (sharded servers, layered uplink and downlink)."""

import struct

import numpy as np
import pytest

from psgd import config, shards
from psgd.compressors import compressor_classes, get_compressor
from psgd.compressors.layered import Layered, layer_key
from psgd.errors import ConfigError, WireFormatError

#: two layers of the same size: the codec is shared, the keys must still differ
LAYERS = [5, 12, 3, 12]
BLOCKED = sorted(name for name, cls in compressor_classes().items() if "block_size" in cls.params)


def layered_examples():
    """(name, params) of every example of every compressor with a block_size that builds for
    LAYERS (spherical's search refuses large blocks at small alpha: those are left out)."""
    out = []
    for name in BLOCKED:
        for ex in compressor_classes()[name].examples:
            cfg = {"name": name, **ex, "block_size": "layer"}
            try:
                get_compressor(cfg, LAYERS)
            except ConfigError:
                continue
            out.append(cfg)
    return out


EXAMPLES = layered_examples()


def test_every_compressor_with_a_block_size_has_a_layered_example():
    assert {"random_dithering", "sign", "natural_dithering", "rounding", "sparse_dithering",
            "spherical", "srht_sketch"} <= set(BLOCKED)
    assert {c["name"] for c in EXAMPLES} == set(BLOCKED)


def per_layer(cfg, x, seed, key):
    """The reference: each layer encoded alone by the codec with block_size = its length (one
    block), shared-seed keys (key, layer), a uint32 length before each variable-length piece."""
    rng = np.random.default_rng(seed)
    pieces, decoded, at = [], [], 0
    for layer, size in enumerate(LAYERS):
        codec = get_compressor({**cfg, "block_size": size})
        k = layer_key(key, layer)
        buf = codec.encode(x[at:at + size], rng, key=k)
        if codec.nbytes(size) is None:
            pieces.append(struct.pack("<I", buf.size))
        pieces.append(buf.tobytes())
        decoded.append(codec.decode(buf, key=k, d=size))
        at += size
    return b"".join(pieces), np.concatenate(decoded)


@pytest.mark.parametrize("cfg", EXAMPLES, ids=lambda c: repr({k: v for k, v in c.items()
                                                               if k != "block_size"}))
def test_layered_bytes_are_the_concatenated_per_layer_encodes(cfg):
    comp = get_compressor(cfg, LAYERS)
    assert isinstance(comp, Layered)
    d = sum(LAYERS)
    x = np.random.default_rng(3).standard_normal(d) * np.repeat([1.0, 10.0, 0.1, 3.0], LAYERS)
    key = 12345 if comp.shared_randomness else None
    want, want_y = per_layer(cfg, x, 7, key)
    buf = comp.encode(x, np.random.default_rng(7), key=key)
    assert buf.tobytes() == want
    # the bits the run counts are these bytes, within the bounds the buffers are sized by
    assert buf.size <= comp.max_nbytes(d)
    if comp.nbytes(d) is not None:
        assert comp.nbytes(d) == buf.size
        out = np.full(comp.nbytes(d) + 3, 0xAA, dtype=np.uint8)
        assert comp.encode_into(x, np.random.default_rng(7), out, key=key) == buf.size
        assert out[:buf.size].tobytes() == want and (out[buf.size:] == 0xAA).all()
    assert np.array_equal(comp.decode(buf, key=key, d=d), want_y)
    acc = np.ones(d)
    comp.decode_add(buf, acc, 0.5, key=key)
    assert np.allclose(acc, 1.0 + 0.5 * want_y)


def test_layers_are_their_own_blocks_and_shared_seed_layers_have_their_own_streams():
    # sign sends one scale per block: per layer, each layer's mean |x| (not one for all)
    x = np.concatenate([np.full(n, v) for n, v in zip(LAYERS, [1.0, -2.0, 4.0, 8.0])])
    y = get_compressor({"name": "sign", "block_size": "layer"}, LAYERS).decode(
        get_compressor({"name": "sign", "block_size": "layer"}, LAYERS).encode(
            x, np.random.default_rng(0)))
    assert np.array_equal(y, x)
    # layers 1 and 3 have the same size and the same values: a sketch must still draw two
    # different projections for them (keys (key, 1) and (key, 3)), or their errors correlate
    comp = get_compressor({"name": "srht_sketch", "ratio": 0.25, "block_size": "layer"}, LAYERS)
    x = np.random.default_rng(1).standard_normal(sum(LAYERS))
    x[20:32] = x[5:17]
    y = comp.decode(comp.encode(x, np.random.default_rng(0), key=99), key=99)
    assert not np.allclose(y[5:17], y[20:32])


def test_bad_layered_messages_are_wire_errors_before_anything_is_written():
    fixed = get_compressor({"name": "random_dithering", "levels": 1, "norm": "inf",
                            "block_size": "layer"}, LAYERS)
    var = get_compressor({"name": "random_dithering", "levels": 3, "encoding": "elias",
                          "block_size": "layer"}, LAYERS)
    x = np.random.default_rng(0).standard_normal(sum(LAYERS))
    for comp in (fixed, var):
        buf = comp.encode(x, np.random.default_rng(0))
        bad = {"truncated": buf[:-1], "trailing": np.append(buf, np.uint8(0)),
               "empty": buf[:0]}
        if comp is var:  # the first length prefix claims more than the layer can take
            big = buf.copy()
            big[:4] = np.frombuffer(struct.pack("<I", 10**6), np.uint8)
            bad["length"] = big
        else:  # the second layer's codec header says another d
            at = fixed.codecs[0].nbytes(LAYERS[0])
            wrong = buf.copy()
            wrong[at + 4:at + 8] = np.frombuffer(struct.pack("<I", 6), np.uint8)
            bad["header d"] = wrong
        for what, b in bad.items():
            out = np.full(sum(LAYERS), 2.0)
            with pytest.raises(WireFormatError) as exc:
                comp.decode_add(b, out)
            assert "\n" not in str(exc.value), what
            assert (out == 2.0).all(), f"{what}: the model was touched"


def mlp(**extra):
    return {"problem": {"name": "mlp", "hidden": [16]}, "data": {"source": "digits"},
            "algorithm": {"name": "ef", "stepsize": 0.1}, **extra}


@pytest.mark.parametrize("cfg,message", [
    ({"problem": {"name": "logistic"}, "compressor": {"name": "sign", "block_size": "layer"}},
     "compressor.block_size: got 'layer', but problem logistic has no layers; allowed: an "
     "integer >= 1 or null ('layer' needs a problem with layers: "),
    ({"problem": {"name": "quadratic"}, "run": {"downlink": {"compressor": {
        "name": "sign", "block_size": "layer"}}}},
     "run.downlink.compressor.block_size: got 'layer', but problem quadratic has no layers"),
    (mlp(compressor={"name": "sign", "block_size": "layers"}),
     "compressor.block_size: got 'layers'; allowed: an integer >= 1, null or 'layer'"),
    (mlp(compressor={"name": "top_k", "k": 5, "block_size": "layer"}),
     "compressor.block_size: unknown key"),
    (mlp(compressor={"name": "sign", "block_size": "layer"}, run={"servers": 3}),
     "run.servers: got 3; allowed: at most 2 with block_size: layer"),
    (mlp(compressor={"name": "spherical", "alpha": 0.5, "block_size": "layer"}),
     "compressor.block_size: got 'layer' (a layer of 1040 coordinates); spherical"),
])
def test_layer_config_errors_are_one_line(cfg, message):
    with pytest.raises(ConfigError) as exc:
        config.validate(cfg)
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_layered_config_resolves_and_keeps_layer():
    cfg = config.validate(mlp(compressor={"name": "sign", "block_size": "layer"},
                              run={"servers": 2, "downlink": {"compressor": {
                                  "name": "natural_dithering", "levels": 8,
                                  "block_size": "layer"}}}))
    assert cfg["compressor"] == {"name": "sign", "block_size": "layer"}
    assert cfg["run"]["downlink"]["compressor"]["block_size"] == "layer"
    assert config.validate(cfg) == cfg  # a resolved config validates to itself


def test_sharded_bounds_are_layer_boundaries():
    layers = [100, 10, 10, 300, 5, 80]
    ends = set(np.cumsum(layers).tolist())
    for s in range(1, len(layers) + 1):
        got = shards.layer_bounds(layers, s)
        assert got[0].lo == 0 and got[-1].hi == sum(layers)
        assert all(a.hi == b.lo for a, b in zip(got, got[1:]))
        assert all(sh.hi in ends and sh.d > 0 for sh in got)
        assert sum(len(shards.shard_layers(layers, sh)) for sh in got) == len(layers)
    # the cut nearest half of d (252.5): after the 3rd layer (120), not the 4th (420)
    assert [(sh.lo, sh.hi) for sh in shards.layer_bounds(layers, 2)] == [(0, 120), (120, 505)]
    assert [sh.hi for sh in shards.layer_bounds(layers, 3)] == [120, 420, 505]
    # the layered codecs of the ranges are those of their layers; k is per layer, not scaled
    cfg = {"name": "srht_sketch", "k": 4, "block_size": "layer"}
    got, parts = shards.split(cfg, sum(layers), 2, layers)
    assert [p.layers for p in parts] == [[100, 10, 10], [300, 5, 80]]
    assert all(c.k == 4 for p in parts for c in p.codecs)


@pytest.mark.mpi
def test_mlp_with_layer_blocks_converges_under_mpiexec_on_two_servers(run_psgd):
    """DIANA + ternary quantizer per layer up, natural dithering per layer down, the key
    ranges of 2 servers on the layer boundary; every message's size is exactly the envelope
    plus the layered code of its range."""
    from psgd import wire

    cfg = {"seed": 1, "problem": {"name": "mlp", "hidden": [32], "l2": 1e-4},
           "data": {"source": "digits"},
           "algorithm": {"name": "diana", "stepsize": 0.1, "batch_size": 32, "momentum": 0.9},
           "compressor": {"name": "random_dithering", "levels": 1, "norm": "inf",
                          "block_size": "layer"},
           "run": {"iterations": 200, "log_every": 100, "timeout_s": 60, "servers": 2,
                   "downlink": {"compressor": {"name": "natural_dithering", "levels": 8,
                                               "block_size": "layer"}}}}
    res = run_psgd(6, cfg, timeout=180)  # 2 servers, 4 workers
    assert res.returncode == 0, res.stderr
    first, last = res.metrics[0], res.metrics[-1]
    assert first["test_accuracy"] < 0.3 and last["test_accuracy"] > 0.9
    # layers [64*32 + 32, 32*10 + 10] = [2080, 330]: server 0 owns the first, server 1 the second
    up = [get_compressor(cfg["compressor"], [n]) for n in (2080, 330)]
    per_step = 4 * sum(wire.HEADER_NBYTES + c.nbytes(n) for c, n in zip(up, (2080, 330)))
    assert last["bits_up"] == 8 * per_step * last["step"]
    assert last["payload_bits_up"] == 8 * 4 * last["step"] * sum(
        c.nbytes(n) - 8 for c, n in zip(up, (2080, 330)))
