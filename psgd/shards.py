"""Key ranges of sharded servers: which coordinates each server owns, and its codecs.

With ``run.servers: S`` the d coordinates split into S contiguous ranges, as equal as
possible, with every boundary on a multiple of the compressor's block size (so no block
straddles two servers and the codes are those of S = 1 wherever the blocks fit). A
worker encodes each range with its own codec header and sends it to that range's server;
each server runs the algorithm on its range. Compressor parameters given as an absolute
``k`` are split in proportion to the range sizes; ``ratio`` and block sizes apply as they
are. Shared-seed compressors key their streams by (seed, worker, seq, shard).
"""

from __future__ import annotations

from dataclasses import dataclass

from .compressors import get_compressor
from .errors import ConfigError


@dataclass(frozen=True)
class Shard:
    index: int
    lo: int
    hi: int

    @property
    def d(self) -> int:
        return self.hi - self.lo


def bounds(d: int, n_servers: int, align: int = 1) -> list:
    """S contiguous ranges covering 0..d, boundaries on multiples of ``align``."""
    blocks = -(-d // align)
    if blocks < n_servers:
        raise ConfigError(f"run.servers: got {n_servers}; allowed: at most {blocks} for d = {d} "
                          f"with blocks of {align} (every server needs a whole block)")
    out, start = [], 0
    for s in range(n_servers):
        end_block = (s + 1) * blocks // n_servers
        end = min(d, end_block * align)
        out.append(Shard(s, start, end))
        start = end
    return out


def shard_config(cfg: dict, shard: Shard, d: int) -> dict:
    """The compressor config for one range: an absolute k scaled to the range's size."""
    cfg = dict(cfg)
    if cfg.get("k") is not None and shard.d != d:
        cfg["k"] = max(1, round(cfg["k"] * shard.d / d))
    return cfg


class ShardedCompressor:
    """The S per-range compressors seen as one, for the step-size rules: independent
    per-range codes have variance sum_s omega_s ||x_s||^2 <= max_s omega_s ||x||^2 (and a
    contraction max_s delta_s), so omega and delta are the worst range's."""

    def __init__(self, parts: list, shards: list):
        self.parts, self.shards = parts, shards
        first = parts[0]
        self.name, self.unbiased = first.name, first.unbiased
        self.shared_randomness = first.shared_randomness

    def omega(self, d: int) -> float:
        return max(c.omega(s.d) for c, s in zip(self.parts, self.shards))

    def delta(self, d: int) -> float:
        return max(c.delta(s.d) for c, s in zip(self.parts, self.shards))


def block_align(compressor_cfg: dict) -> int:
    size = compressor_cfg.get("block_size")
    return size if isinstance(size, int) else 1


def split(compressor_cfg: dict, d: int, n_servers: int):
    """(shards, per-shard compressors)."""
    shards = bounds(d, n_servers, block_align(compressor_cfg))
    return shards, [get_compressor(shard_config(compressor_cfg, s, d)) for s in shards]
