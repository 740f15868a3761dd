"""``block_size: layer``: a block-wise compressor with one block per layer of the model.

A network's parameter vector is its layers one after another (``ProblemSet.layers``); their
sizes differ, so no integer ``block_size`` fits them. With ``block_size: layer`` the vector
is cut at the layer boundaries and each layer is encoded by the compressor as a vector of its
own, with ``block_size`` set to the layer's length (one block: its own norm or scale, as each
integer block has). The message is the layers' messages one after another::

    [codec message of layer 0][codec message of layer 1]...

each a complete message of the existing codec (its 8-byte header carries the layer's d), so
the layered format adds no new byte layout: every piece is what ``encode`` of that codec
writes for the layer alone. A variable-length code (elias dithering, sparse dithering,
rounding, spherical) cannot be cut without its length, so each of its pieces is preceded by
its length as a little-endian uint32; fixed-length codes need no prefix. The bits counted are
those bytes, headers and prefixes included.

Shared-seed codecs (the sketches, spherical) key layer l by (key, l), so no two layers share
a stream. omega and delta are the worst layer's (independent per-layer codes, as for
sharded servers). ``k`` (the sketches) is per block, hence per layer, as with integer blocks.
"""

from __future__ import annotations

import struct

import numpy as np

from ..errors import ConfigError, WireFormatError

#: the ``block_size`` value that asks for one block per layer
LAYER = "layer"
_LENGTH = struct.Struct("<I")


def is_layered(config) -> bool:
    return isinstance(config, dict) and config.get("block_size") == LAYER


def layer_key(key: int | None, layer: int) -> int | None:
    """The shared-seed key of one layer: distinct per layer, the same on both ends."""
    if key is None:
        return None
    return int(np.random.SeedSequence([key, layer]).generate_state(1, np.uint64)[0])


class Layered:
    """The per-layer codecs of one compressor config seen as one compressor (same methods)."""

    header_only_valid = False
    rounds = 1  # (a multi-round code such as powersgd has its own per-layer matrices)

    def __init__(self, config: dict, layers, build):
        """``build(config)`` makes one codec (``get_compressor``); ``layers``: the sizes."""
        self.config = {k: v for k, v in config.items() if k != "name"}
        self.layers = [int(n) for n in layers]
        if not self.layers or min(self.layers) < 1:
            raise ConfigError(f"compressor.block_size: got 'layer' with layer sizes "
                              f"{self.layers}; allowed: one or more layers of >= 1 coordinates")
        self.d = sum(self.layers)
        self.bounds = np.concatenate([[0], np.cumsum(self.layers)]).tolist()
        by_size: dict = {}
        for size in self.layers:
            if size not in by_size:
                try:
                    by_size[size] = build({**config, "block_size": size})
                except ConfigError as exc:  # name what the user wrote, not the size it became
                    text = str(exc)
                    said = f"compressor.block_size: got {size}; "
                    raise ConfigError(f"compressor.block_size: got 'layer' (a layer of {size} "
                                      f"coordinates); {text.removeprefix(said)}") from None
        self.codecs = [by_size[size] for size in self.layers]
        first = self.codecs[0]
        self.name, self.unbiased = first.name, first.unbiased
        self.shared_randomness = first.shared_randomness
        # a piece's length: fixed by the codec, or None (it travels as a uint32 prefix)
        self.fixed = [c.nbytes(n) for c, n in zip(self.codecs, self.layers)]
        # framing, not payload: each layer's codec header and the length prefixes
        self.header_nbytes = sum(c.header_nbytes + (_LENGTH.size if f is None else 0)
                                 for c, f in zip(self.codecs, self.fixed))

    def _check_d(self, d: int) -> None:
        if d != self.d:
            raise ValueError(f"{self.name} (block_size: layer): vector of {d} coordinates, "
                             f"but the layers have {self.d}")

    # -- encoding ---------------------------------------------------------------------

    def encode(self, x, rng: np.random.Generator, *, key: int | None = None) -> np.ndarray:
        x = np.asarray(x)
        self._check_d(x.size)
        pieces = []
        for layer, (codec, fixed) in enumerate(zip(self.codecs, self.fixed)):
            lo, hi = self.bounds[layer], self.bounds[layer + 1]
            buf = codec.encode(x[lo:hi], rng, key=layer_key(key, layer))
            if fixed is None:
                pieces.append(np.frombuffer(_LENGTH.pack(buf.size), dtype=np.uint8))
            pieces.append(buf)
        return np.concatenate(pieces)

    def encode_into(self, x, rng, out: np.ndarray, *, key: int | None = None) -> int:
        """Fixed-length codes write each layer in place (the runtime's send buffers)."""
        if None in self.fixed:
            buf = self.encode(x, rng, key=key)
            out[:buf.size] = buf
            return buf.size
        x = np.asarray(x)
        self._check_d(x.size)
        at = 0
        for layer, codec in enumerate(self.codecs):
            lo, hi = self.bounds[layer], self.bounds[layer + 1]
            at += codec.encode_into(x[lo:hi], rng, out[at:], key=layer_key(key, layer))
        return at

    def encode_decode(self, x, rng, *, key=None):
        buf = self.encode(x, rng, key=key)
        return buf, self.decode(buf, key=key, d=np.size(x))

    # -- decoding ---------------------------------------------------------------------

    def _pieces(self, buf) -> list:
        """The layers' messages as views of ``buf``; every length checked before any decode."""
        try:
            raw = np.frombuffer(buf, dtype=np.uint8)
        except (TypeError, ValueError):
            raise WireFormatError(f"{self.name}: expected a bytes-like buffer, "
                                  f"got {type(buf).__name__}") from None
        out, at = [], 0
        for layer, (codec, fixed, size) in enumerate(zip(self.codecs, self.fixed, self.layers)):
            n = fixed
            if n is None:
                if raw.size - at < _LENGTH.size:
                    raise WireFormatError(f"{self.name} (block_size: layer): message of "
                                          f"{raw.size} bytes ends before layer {layer}'s length")
                (n,) = _LENGTH.unpack_from(raw, at)
                at += _LENGTH.size
                if n > codec.max_nbytes(size):
                    raise WireFormatError(f"{self.name} (block_size: layer): layer {layer} "
                                          f"claims {n} bytes, more than the "
                                          f"{codec.max_nbytes(size)} its {size} coordinates take")
            if raw.size - at < n:
                raise WireFormatError(f"{self.name} (block_size: layer): message of {raw.size} "
                                      f"bytes ends inside layer {layer}")
            piece = raw[at:at + n]
            codec._parse(piece, size)  # header and length, before anything is written
            out.append(piece)
            at += n
        if at != raw.size:
            raise WireFormatError(f"{self.name} (block_size: layer): {raw.size - at} bytes "
                                  f"after the last layer")
        return out

    def decode_add(self, buf, out: np.ndarray, weight: float = 1.0, *,
                   key: int | None = None) -> None:
        self._check_d(out.size)
        for layer, piece in enumerate(self._pieces(buf)):
            lo, hi = self.bounds[layer], self.bounds[layer + 1]
            self.codecs[layer].decode_add(piece, out[lo:hi], weight, key=layer_key(key, layer))

    def decode(self, buf, *, key: int | None = None, d: int | None = None,
               dtype=np.float64) -> np.ndarray:
        if d is not None and d != self.d:
            raise WireFormatError(f"{self.name} (block_size: layer): expected d={d}, "
                                  f"but the layers have {self.d}")
        out = np.zeros(self.d, dtype=dtype)
        self.decode_add(buf, out, 1.0, key=key)
        return out

    # -- sizes and constants ------------------------------------------------------------

    def max_nbytes(self, d: int) -> int:
        self._check_d(d)
        return sum(c.max_nbytes(n) + (_LENGTH.size if f is None else 0)
                   for c, n, f in zip(self.codecs, self.layers, self.fixed))

    def nbytes(self, d: int) -> int | None:
        self._check_d(d)
        return None if None in self.fixed else sum(self.fixed)

    def omega(self, d: int) -> float:
        """The worst layer's: the layer sizes, not ``d``, decide it."""
        return max(c.omega(n) for c, n in zip(self.codecs, self.layers))

    def delta(self, d: int) -> float:
        return max(c.delta(n) for c, n in zip(self.codecs, self.layers))

    def get_config(self) -> dict:
        return {"name": self.name, **self.config}

    def __repr__(self):
        return f"Layered({self.get_config()!r}, layers={self.layers})"
