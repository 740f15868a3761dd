"""Key ranges of sharded servers: which coordinates each server owns, and its codecs.

With ``run.servers: S`` the d coordinates split into S contiguous ranges, as equal as
possible, with every boundary on a multiple of the compressor's block size (so no block
straddles two servers and the codes are those of S = 1 wherever the blocks fit), or, when
either link compresses with ``block_size: layer``, on a layer boundary (each server owns whole
layers, so a layer is still one block; at least one layer per server). A
worker encodes each range with its own codec header and sends it to that range's server;
each server runs the algorithm on its range. Compressor parameters given as an absolute
``k`` are split in proportion to the range sizes; ``ratio`` and block sizes apply as they
are (a layered code's ``k`` is per layer). Shared-seed compressors key their streams by
(seed, worker, seq, shard).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .compressors import get_compressor
from .compressors.layered import is_layered
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


def layer_bounds(layers: list, n_servers: int) -> list:
    """S contiguous ranges of whole layers, each as near d/S coordinates as the layers allow."""
    if len(layers) < n_servers:
        raise ConfigError(f"run.servers: got {n_servers}; allowed: at most {len(layers)} with "
                          f"block_size: layer (the problem has {len(layers)} layers and every "
                          f"server needs a whole layer)")
    ends = np.cumsum(layers)
    d, cut, out = int(ends[-1]), 0, []
    for s in range(1, n_servers):
        # the layer boundary nearest s*d/S that leaves a layer for each server after this one
        lo, hi = cut + 1, len(layers) - (n_servers - s)
        cut = min(range(lo, hi + 1), key=lambda i: abs(ends[i - 1] - s * d / n_servers))
        out.append(int(ends[cut - 1]))
    edges = [0, *out, d]
    return [Shard(s, edges[s], edges[s + 1]) for s in range(n_servers)]


def shard_layers(layers, shard: Shard):
    """The sizes of the layers inside ``shard`` (its bounds are layer boundaries), or None."""
    if layers is None:
        return None
    ends = np.concatenate([[0], np.cumsum(layers)])
    return [int(n) for n, lo in zip(layers, ends) if shard.lo <= lo < shard.hi]


def check_layer_servers(cfg: dict, layers) -> None:
    """Validation: with block_size: layer on either link, enough layers for the servers."""
    if layers and cfg["run"]["servers"] > 1 and _any_layered(cfg):
        layer_bounds(layers, cfg["run"]["servers"])


def _any_layered(cfg: dict) -> bool:
    down = (cfg["run"]["downlink"] or {}).get("compressor")
    return is_layered(cfg["compressor"]) or is_layered(down)


def shard_config(cfg: dict, shard: Shard, d: int) -> dict:
    """The compressor config for one range: an absolute k scaled to the range's size (not
    for a layered code, whose k is per layer as it is per block)."""
    cfg = dict(cfg)
    if cfg.get("k") is not None and shard.d != d and not is_layered(cfg):
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


def split(compressor_cfg: dict, d: int, n_servers: int, layers=None, downlink_cfg=None):
    """(shards, per-shard compressors); ``layers``: the problem's layer sizes, which decide
    the bounds when either compressor config is ``block_size: layer``."""
    if layers and (is_layered(compressor_cfg) or is_layered(downlink_cfg)):
        shards = layer_bounds(layers, n_servers)
    else:
        shards = bounds(d, n_servers, block_align(compressor_cfg))
    return shards, [get_compressor(shard_config(compressor_cfg, s, d), shard_layers(layers, s))
                    for s in shards]
