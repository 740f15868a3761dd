"""The codec table of README.md ("## Compressors"): what each peer sends, beside psgd's bytes.

``python -m psgd.codec_table`` prints the table. psgd's column is measured, not computed
from formulas: one standard Gaussian float32 vector of length d = 10^6 (seed 0) is encoded
with each setting and ``len(buf) / d`` reported (the 8-byte codec header included; with a
shared key for shared-seed codecs, as the runtime sends them). The peers' columns come from
their code as read in /work/shared/notes/anchors.md (GRACE's PyTorch compressors, BytePS's
C++ core, DeepSpeed, PyTorch DDP hooks, CGX/Bagua, FL_PyTorch and the KAUST/MARINA research
codes, ATOMO). ``tests/test_codec_table.py`` checks that README.md holds this exact table.
"""

from __future__ import annotations

import sys

import numpy as np

D = 10**6

#: (psgd setting, peers that have it and how they send it, peer bytes per coordinate)
ROWS = [
    ({"name": "identity", "dtype": "float32"},
     "everyone: raw float32", "4"),
    ({"name": "cast", "format": "bf16"},
     "GRACE fp16, Horovod `Compression.fp16`, PyTorch DDP `fp16/bf16_compress_hook`, BytePS "
     "(intra-node): one 16-bit float each", "2"),
    ({"name": "minmax", "bits": 8, "bucket_size": 512},
     "CGX: 8 values x b bits per uint64, 512-element buckets + bucket meta; Bagua ByteGrad: "
     "uint8 + min/max; hivemind Uniform8Bit: uint8 + 256-float codebook", "about 1.016 (CGX)"),
    ({"name": "minmax", "bits": 4, "bucket_size": 512},
     "CGX at b = 4 (GRACE, Bagua: no sub-byte widths)", "about 0.516 (CGX)"),
    ({"name": "random_dithering", "levels": 1, "norm": "inf", "block_size": None},
     "TernGrad in GRACE: int8 + scale; FedLab QSGD: int32 level + bool sign; FL_PyTorch: "
     "simulated (dense tensor)", "1 (GRACE), 5 (FedLab)"),
    ({"name": "random_dithering", "levels": 127, "norm": "2", "block_size": None},
     "GRACE qsgd (`quantum_num` 127): int8 levels + norm; ATOMO: (2+s)-bit shift-or in "
     "uint64", "1 (GRACE)"),
    ({"name": "sign", "block_size": None},
     "GRACE signsgd: uint8 each; BytePS onebit, DeepSpeed `packbits`: 1 bit + scale",
     "1 (GRACE), 0.125 (BytePS)"),
    ({"name": "natural"},
     "GRACE natural: uint8 (sign + 7 exponent bits, a narrower range); FL_PyTorch: counted "
     "as 9 bits", "1 (GRACE)"),
    ({"name": "natural_dithering", "levels": 8, "block_size": None},
     "BytePS dithering (natural partition): Elias-delta gaps + sign + level; FL_PyTorch "
     "`nat.dithering`: simulated", "data-dependent (BytePS)"),
    ({"name": "top_k", "ratio": 0.01},
     "GRACE topk: float32 values + int64 indices; BytePS topk: (index, value) pairs",
     "0.12 (GRACE), 0.08 (BytePS)"),
    ({"name": "threshold", "threshold": 2.576},
     "GRACE threshold: values + int64 indices (about 1 % kept at this lambda); LBANN "
     "threshold", "0.12 (GRACE)"),
    ({"name": "rand_k", "ratio": 0.01},
     "GRACE randomk: values, indices from a seed; BytePS randomk: (index, value) pairs",
     "0.04 (GRACE), 0.08 (BytePS)"),
    ({"name": "perm_k", "n": 4},
     "KAUST `distributed_optimization_library` permutation compressors: simulated (no wire)",
     "(counted as 1)"),
    ({"name": "powersgd", "rank": 4},
     "PyTorch DDP `powerSGD_hook`, GRACE powersgd: allreduce of float32 P and Q, r (m + n) "
     "per m x n matrix (here one 1000 x 1000 matrix, each way)", "0.032 (the same factors)"),
    ({"name": "bernoulli", "p": 0.25},
     "FL_PyTorch `bernulli:p` (lazy): simulated, counted as p d floats", "(counted as 1, expected)"),
]


def psgd_bytes_per_coord(cfg: dict, d: int = D, seed: int = 0) -> float:
    """len(encode(x)) / d for one standard Gaussian float32 x (bernoulli: its expectation)."""
    from .compressors import get_compressor
    c = get_compressor(cfg)
    gen = np.random.default_rng(seed)
    x = gen.standard_normal(d).astype(np.float32)
    if cfg["name"] == "bernoulli":      # all or nothing: report the expected size
        return (8 + c.expected_payload_bits(d) / 8) / d
    key = 0x5EED_0F_C0DEC if c.shared_randomness else None
    return len(c.encode(x, gen, key=key)) / d


def _setting(cfg: dict) -> str:
    params = ", ".join(f"{k}={v}" for k, v in cfg.items() if k != "name")
    return f"`{cfg['name']}`" + (f" ({params})" if params else "")


def table(d: int = D) -> str:
    lines = ["| psgd setting | psgd bytes/coord at d = 10^6 | peers that have it: how they send it "
             "| peer bytes/coord |", "|---|---|---|---|"]
    for cfg, peers, theirs in ROWS:
        lines.append(f"| {_setting(cfg)} | {psgd_bytes_per_coord(cfg, d):.4f} | {peers} | {theirs} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(table())
