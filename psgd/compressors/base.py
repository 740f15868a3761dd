"""The compressor codec shape (numcodecs' Codec, with explicit randomness).

A compressor turns a 1-D float vector into the exact bytes that travel and back.
Every buffer starts with an 8-byte codec header, little-endian::

    offset  size  field
    0       1     magic 0xC5
    1       1     codec format version (1)
    2       1     codec id (one per compressor class)
    3       1     flags (reserved, must be 0)
    4       4     d, the vector length (uint32)

followed by the compressor's payload. ``8 * len(encode(x, rng))`` is the true size
of the message. Decoding validates every field and every length before touching
memory and raises :class:`~psgd.errors.WireFormatError` on anything ``encode``
could not have produced.

Subclasses implement ``_encode``, ``_decode_add`` and ``_max_payload_nbytes``
(and ``_payload_nbytes`` when the code has a fixed length), plus ``omega``
(unbiased) or ``delta`` (biased). A fixed-length code may also define
``_encode_into(x, rng, key, out)`` to write its payload in place.
"""

from __future__ import annotations

import struct
from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np

from ..errors import ConfigError, WireFormatError
from ..registry import classes, register
from ..validation import check_params

CODEC_MAGIC = 0xC5
CODEC_VERSION = 1
_HEADER = struct.Struct("<BBBBI")
HEADER_NBYTES = _HEADER.size
MAX_DIM = 2**32 - 1
MAX_UNCHECKED_DIM = 2**26  # decode() without d= refuses larger claims


class Compressor(ABC):
    """Base class of every compressor; see the module docstring for the byte layout."""

    name: ClassVar[str]
    codec_id: ClassVar[int]
    unbiased: ClassVar[bool]
    #: declarative parameter constraints, see :mod:`psgd.validation`
    params: ClassVar[dict] = {}
    #: True when decode needs the same ``key`` that encode was given (shared-seed schemes)
    shared_randomness: ClassVar[bool] = False
    #: True when a header-only message (empty payload) is a valid message for every d
    #: (bernoulli's skipped rounds): a message cut to its header then decodes
    header_only_valid: ClassVar[bool] = False
    #: messages per step each way: 1, or more for a multi-round compressor (powersgd's P then
    #: Q), which implements the round hooks that psgd.steps.Rounds drives
    rounds: ClassVar[int] = 1
    #: bytes of every message that are framing, not payload (the metrics' payload_bits
    #: exclude them): the codec header; a layered code has one per layer
    header_nbytes: ClassVar[int] = HEADER_NBYTES
    #: the largest d that ``decode`` accepts from a header when the caller gives no ``d=``
    max_unchecked_dim: ClassVar[int] = MAX_UNCHECKED_DIM
    #: parameter sets worth exercising, each accepted by ``get_compressor({"name": name, **p})``.
    #: The one list that the codec-contract tests, the golden wire files, the fuzzer,
    #: ``psgd bench codecs`` and ``psgd bench frontier`` all run over, so defining it is all a
    #: new compressor needs to be covered by them. The first is the representative setting
    #: (what ``psgd bench codecs --compressors NAME`` measures)
    examples: ClassVar[tuple[dict, ...]] = ()

    def __init__(self, **params):
        self.config = check_params("compressor", self.params, params)
        for key, value in self.config.items():
            setattr(self, key, value)
        self._check_params()

    def _check_params(self) -> None:
        """Cross-parameter checks; raise ConfigError. Default: none."""

    # -- public API (CONTRACT.md §5) -------------------------------------------------

    def encode(self, x, rng: np.random.Generator, *, key: int | None = None) -> np.ndarray:
        """Compress ``x`` into the exact bytes that go on the wire (a uint8 array)."""
        x = self._as_input(x)
        fixed = self._payload_nbytes(x.size)
        if fixed is not None and hasattr(self, "_encode_into"):
            out = np.empty(HEADER_NBYTES + fixed, dtype=np.uint8)
            self.encode_into(x, rng, out, key=key)
            return out
        payload = np.frombuffer(self._encode(x, rng, key), dtype=np.uint8)
        out = np.empty(HEADER_NBYTES + payload.size, dtype=np.uint8)
        out[HEADER_NBYTES:] = payload
        _HEADER.pack_into(out, 0, CODEC_MAGIC, CODEC_VERSION, self.codec_id, 0, x.size)
        return out

    def encode_into(self, x, rng: np.random.Generator, out: np.ndarray, *,
                    key: int | None = None) -> int:
        """Write ``encode(x)`` into the preallocated uint8 ``out``; return its length.

        Fixed-length codes with ``_encode_into`` write in place (no temporary), which is
        what the runtime does with its send buffers; others encode and copy.
        """
        x = self._as_input(x)
        fixed = self._payload_nbytes(x.size)
        if fixed is None or not hasattr(self, "_encode_into"):
            buf = self.encode(x, rng, key=key)
            out[:buf.size] = buf
            return buf.size
        n = HEADER_NBYTES + fixed
        if out.size < n:
            raise ValueError(f"{self.name}: buffer of {out.size} bytes cannot hold {n}")
        self._encode_into(x, rng, key, out[HEADER_NBYTES:n])
        _HEADER.pack_into(out, 0, CODEC_MAGIC, CODEC_VERSION, self.codec_id, 0, x.size)
        return n

    def decode(self, buf, *, key: int | None = None, d: int | None = None,
               dtype=np.float64) -> np.ndarray:
        """Decompress ``buf`` into a new vector of length d (``d``, if given, is checked)."""
        payload, n = self._parse(buf, d)
        out = np.zeros(n, dtype=dtype)
        self._decode_add(payload, n, out, 1.0, key)
        return out

    def decode_add(self, buf, out: np.ndarray, weight: float = 1.0, *,
                   key: int | None = None) -> None:
        """``out += weight * decode(buf)`` without a temporary (what the server does)."""
        if out.ndim != 1 or out.dtype not in (np.float32, np.float64) or not out.flags.c_contiguous:
            raise TypeError("decode_add needs a contiguous 1-D float32 or float64 array")
        payload, n = self._parse(buf, out.size)
        self._decode_add(payload, n, out, float(weight), key)

    def decode_into(self, buf, out: np.ndarray, *, key: int | None = None) -> None:
        """``out[:] = decode(buf)`` into an existing vector: at d = 10^7 a new 80 MB vector a
        step costs more in the kernel's page zeroing than the decode (a worker's model)."""
        if out.ndim != 1 or out.dtype not in (np.float32, np.float64) or not out.flags.c_contiguous:
            raise TypeError("decode_into needs a contiguous 1-D float32 or float64 array")
        payload, n = self._parse(buf, out.size)
        self._decode_into(payload, n, out, key)

    def _decode_into(self, payload, d, out, key):
        """Overridden by codecs that can overwrite faster than zero-and-add."""
        out.fill(0.0)
        self._decode_add(payload, d, out, 1.0, key)

    def encode_decode(self, x, rng, *, key=None):
        """``(buf, decode(buf))``: what a worker needs to keep a memory that mirrors the server's."""
        buf = self.encode(x, rng, key=key)
        return buf, self.decode(buf, key=key, d=np.size(x))

    def max_nbytes(self, d: int) -> int:
        """An upper bound on ``len(encode(x))`` for any x of length d (receive buffers)."""
        return HEADER_NBYTES + self._max_payload_nbytes(d)

    def nbytes(self, d: int) -> int | None:
        """The exact message length for fixed-length codes, else None."""
        n = self._payload_nbytes(d)
        return None if n is None else HEADER_NBYTES + n

    def omega(self, d: int) -> float:
        """Variance parameter: E||C(x) - x||^2 <= omega ||x||^2 (unbiased compressors)."""
        raise NotImplementedError(f"{self.name} is biased; see delta()")

    def delta(self, d: int) -> float:
        """Contraction: ||C(x) - x||^2 <= delta ||x||^2 (biased compressors)."""
        raise NotImplementedError(f"{self.name} is unbiased; see omega()")

    def get_config(self) -> dict:
        return {"name": self.name, **self.config}

    @classmethod
    def from_config(cls, config: dict) -> "Compressor":
        config = dict(config)
        config.pop("name", None)
        return cls(**config)

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self):
        return hash((type(self), tuple(sorted(self.config.items(), key=str))))

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.config.items())
        return f"{type(self).__name__}({args})"

    # -- for subclasses -------------------------------------------------------------

    @abstractmethod
    def _encode(self, x: np.ndarray, rng: np.random.Generator, key: int | None):
        """Return the payload (bytes or uint8 array) for the contiguous 1-D float vector x."""

    @abstractmethod
    def _decode_add(self, payload: np.ndarray, d: int, out: np.ndarray, weight: float,
                    key: int | None) -> None:
        """Validate ``payload`` (raise WireFormatError) and add ``weight * C(x)`` into out."""

    @abstractmethod
    def _max_payload_nbytes(self, d: int) -> int:
        """An upper bound on the payload length for vectors of length d."""

    def _payload_nbytes(self, d: int) -> int | None:
        """Exact payload length for fixed-length codes; None for variable-length ones."""
        return None

    # -- helpers --------------------------------------------------------------------

    @staticmethod
    def _as_input(x) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim != 1:
            raise ValueError(f"compressors take 1-D vectors; got shape {x.shape}")
        if x.dtype not in (np.float32, np.float64):
            x = x.astype(np.float64)
        if x.size > MAX_DIM:
            raise ValueError(f"vector length {x.size} exceeds the wire limit {MAX_DIM}")
        return np.ascontiguousarray(x)

    def framed(self, payload: np.ndarray, d: int) -> np.ndarray:
        """A new message: this codec's header for length d, then the uint8 ``payload``
        (for codecs whose runs send other messages than ``encode``'s: powersgd's rounds)."""
        out = np.empty(HEADER_NBYTES + payload.size, dtype=np.uint8)
        _HEADER.pack_into(out, 0, CODEC_MAGIC, CODEC_VERSION, self.codec_id, 0, d)
        out[HEADER_NBYTES:] = payload
        return out

    def _parse(self, buf, expected_d: int | None, fixed: bool = True):
        """Check the codec header; return (payload view, d). ``fixed=False`` skips the
        payload-length rules (the caller checks the length of its own kind of message)."""
        try:
            raw = np.frombuffer(buf, dtype=np.uint8)
        except (TypeError, ValueError):
            raise WireFormatError(f"{self.name}: expected a bytes-like buffer, got {type(buf).__name__}") from None
        if raw.size < HEADER_NBYTES:
            raise WireFormatError(f"{self.name}: buffer of {raw.size} bytes is shorter than the "
                                  f"{HEADER_NBYTES}-byte codec header")
        magic, version, codec_id, flags, d = _HEADER.unpack_from(raw, 0)
        if magic != CODEC_MAGIC:
            raise WireFormatError(f"{self.name}: bad codec magic 0x{magic:02x} (expected 0x{CODEC_MAGIC:02x})")
        if version != CODEC_VERSION:
            raise WireFormatError(f"{self.name}: codec format version {version} is not supported "
                                  f"(this psgd writes version {CODEC_VERSION})")
        if codec_id != self.codec_id:
            raise WireFormatError(f"{self.name}: buffer was made by codec id {codec_id}, "
                                  f"expected {self.codec_id}")
        if flags != 0:
            raise WireFormatError(f"{self.name}: reserved codec flags are 0x{flags:02x}, expected 0")
        if expected_d is not None and d != expected_d:
            raise WireFormatError(f"{self.name}: message has d={d}, expected d={expected_d}")
        if expected_d is None and d > self.max_unchecked_dim:
            # the header's d is untrusted: a few bytes must not buy a huge allocation or a
            # long decode; callers that expect long vectors say so with d= (the runtime does)
            raise WireFormatError(f"{self.name}: message claims d={d}; pass d= to decode vectors "
                                  f"longer than {self.max_unchecked_dim}")
        payload = raw[HEADER_NBYTES:]
        if not fixed:
            return payload, d
        fixed = self._payload_nbytes(d)
        if fixed is not None and payload.size != fixed:
            raise WireFormatError(f"{self.name}: payload is {payload.size} bytes, "
                                  f"expected {fixed} for d={d}")
        if payload.size > self._max_payload_nbytes(d):
            raise WireFormatError(f"{self.name}: payload of {payload.size} bytes exceeds the "
                                  f"maximum {self._max_payload_nbytes(d)} for d={d}")
        return payload, d


def register_compressor(cls):
    """Class decorator: register ``cls`` by its ``name`` after checking its ``codec_id``.

    The codec id is the third byte of every message, the only thing that tells one codec's
    buffers from another's, so two classes must never share one (and it must fit a byte).
    """
    if not isinstance(cls.codec_id, int) or not 1 <= cls.codec_id <= 255:
        raise TypeError(f"compressor {cls.__qualname__}: codec_id must be an int in [1, 255], "
                        f"got {cls.codec_id!r}")
    for other in classes("compressor", plugins=False).values():
        if other.codec_id == cls.codec_id and other.name != cls.name:
            raise RuntimeError(
                f"codec id {cls.codec_id} of {cls.__module__}.{cls.__qualname__} "
                f"({cls.name!r}) is already taken by {other.__module__}.{other.__qualname__} "
                f"({other.name!r}); pick an unused id")
    return register("compressor")(cls)


def all_finite(x: np.ndarray) -> bool:
    """Whether x holds no NaN or Inf, in one read pass and without a temporary in the usual
    case: any NaN or Inf makes the sum NaN or Inf; only then (or on an overflowing sum of
    finite values) is every element tested."""
    with np.errstate(over="ignore", invalid="ignore"):
        total = np.add.reduce(x, axis=None)
    return bool(np.isfinite(total)) or bool(np.isfinite(x).all())


def wire_error(name: str, what: str) -> WireFormatError:
    """Shorthand used by payload decoders: ``raise wire_error(self.name, 'scale is NaN')``."""
    return WireFormatError(f"{name}: {what}")


def check_kernel(name: str, code: int, where: int, messages=None) -> None:
    """Raise the decoder's WireFormatError for a kernel's error ``code`` (at ``where``):
    ``messages[code]`` where the codec words it, else the generic rejection."""
    from .. import kernels

    if code != kernels.ERR_OK:
        raise wire_error(name, (messages or {}).get(
            code, f"payload rejected (kernel error {code} at {where})"))


def resolve_block_size(block_size: int | None, d: int) -> int:
    """``block_size`` null (one block) or larger than d means the whole vector."""
    if block_size is None or block_size >= d:
        return max(d, 1)
    return block_size


def check_positive_int_or_ratio(obj, path: str = "compressor") -> None:
    """For rand_k / top_k / sketches: exactly one of ``k`` and ``ratio`` must be set."""
    if (obj.config.get("k") is None) == (obj.config.get("ratio") is None):
        raise ConfigError(f"{path}: set exactly one of k and ratio; got k={obj.config.get('k')!r}, "
                          f"ratio={obj.config.get('ratio')!r}")
