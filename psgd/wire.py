"""The message envelope that wraps every buffer handed to MPI.

Little-endian, 32 bytes, then the payload (a compressor's codec buffer)::

    offset  size  field
    0       4     magic b"PSGD"
    4       1     envelope format version (1)
    5       1     kind: GRAD=1 (worker->server), MODEL=2 (server->worker), STOP=3, BYE=4,
                  CKPT=5 (server asks a worker to write its checkpoint file), ACK=6 (done),
                  ROUND=11 (server->worker: a multi-round compressor's reply within a step);
                  between servers GATHER=7, SHARD=8, END=9, TALLY=10; GO=12 (server 0
                  lets workers compute again after an asynchronous sharded checkpoint)
    6       2     worker index (0-based; the server writes the destination worker, or
                  BROADCAST = 0xFFFF for a synchronous model or ROUND sent to every worker)
    8       8     model version: the server update count the message refers to
                  (GRAD: the version the gradient was computed at; MODEL: the version sent)
    16      8     sequence number of the sender's messages to this peer (detects loss/reorder)
    24      4     payload length in bytes
    28      4     CRC-32 of bytes 0..27 (a corrupted header is never accepted silently)

Parsing checks every field against what the receiver expects before the payload
is looked at, and raises :class:`~psgd.errors.WireFormatError`.
"""

from __future__ import annotations

import struct
import zlib
from typing import NamedTuple

import numpy as np

from .errors import WireFormatError

MAGIC = b"PSGD"
VERSION = 1
GRAD, MODEL, STOP, BYE, CKPT, ACK = 1, 2, 3, 4, 5, 6
# between sharded servers: the coordinator asks for a shard's model (GATHER), gets it
# (SHARD), ends the run (END, a JSON status), and collects each server's counters (TALLY)
GATHER, SHARD, END, TALLY = 7, 8, 9, 10
# within a step of a multi-round compressor (powersgd): the server's reply to a round of
# the workers' messages, the same bytes to every worker (psgd.steps.Rounds)
ROUND = 11
#: server 0 -> worker after an asynchronous sharded checkpoint: compute again (CKPT froze it)
GO = 12
KIND_NAMES = {GRAD: "GRAD", MODEL: "MODEL", STOP: "STOP", BYE: "BYE", CKPT: "CKPT", ACK: "ACK",
              GATHER: "GATHER", SHARD: "SHARD", END: "END", TALLY: "TALLY", ROUND: "ROUND",
              GO: "GO"}
#: the worker index of a message whose same bytes go to every worker (synchronous models)
BROADCAST = 0xFFFF

_FIELDS = struct.Struct("<4sBBHQQI")
_CRC = struct.Struct("<I")
HEADER_NBYTES = _FIELDS.size + _CRC.size  # 32


class Header(NamedTuple):
    kind: int
    worker: int
    version: int
    seq: int
    payload_nbytes: int


def pack_header(out: np.ndarray, kind: int, worker: int, version: int, seq: int,
                payload_nbytes: int) -> int:
    """Write the header for a payload already in ``out[32:]``; return the message length."""
    total = HEADER_NBYTES + payload_nbytes
    if out.size < total:
        raise ValueError(f"send buffer of {out.size} bytes cannot hold a {total}-byte message")
    _FIELDS.pack_into(out, 0, MAGIC, VERSION, kind, worker, version, seq, payload_nbytes)
    _CRC.pack_into(out, _FIELDS.size, zlib.crc32(out[:_FIELDS.size]))
    return total


def pack_into(out: np.ndarray, kind: int, worker: int, version: int, seq: int,
              payload) -> int:
    """Write header + payload into the preallocated uint8 ``out``; return the message length."""
    total = pack_header(out, kind, worker, version, seq, len(payload))
    out[HEADER_NBYTES:total] = np.frombuffer(payload, dtype=np.uint8)
    return total


def message(kind: int, worker: int, version: int, seq: int, payload=b"") -> np.ndarray:
    """A new uint8 array holding one whole message."""
    out = np.empty(HEADER_NBYTES + len(payload), dtype=np.uint8)
    pack_into(out, kind, worker, version, seq, payload)
    return out


def parse(buf: np.ndarray, nbytes: int, *, sender: str) -> tuple[Header, np.ndarray]:
    """Validate the envelope of the first ``nbytes`` of ``buf``; return (header, payload view).

    ``sender`` names the peer in error messages (e.g. "worker 3 (rank 4)").
    """
    if nbytes < HEADER_NBYTES:
        raise WireFormatError(f"message from {sender} has {nbytes} bytes, shorter than the "
                              f"{HEADER_NBYTES}-byte header")
    raw = buf[:nbytes]
    magic, version, kind, worker, model_version, seq, n = _FIELDS.unpack_from(raw, 0)
    (crc,) = _CRC.unpack_from(raw, _FIELDS.size)
    if magic != MAGIC:
        raise WireFormatError(f"message from {sender} has bad magic {magic!r}")
    if crc != zlib.crc32(raw[:_FIELDS.size]):
        raise WireFormatError(f"message from {sender} has a corrupted header (CRC mismatch)")
    if version != VERSION:
        raise WireFormatError(f"message from {sender} uses envelope version {version}, "
                              f"this psgd speaks {VERSION}")
    if kind not in KIND_NAMES:
        raise WireFormatError(f"message from {sender} has unknown kind {kind}")
    if n != nbytes - HEADER_NBYTES:
        raise WireFormatError(f"message from {sender} declares a {n}-byte payload but carries "
                              f"{nbytes - HEADER_NBYTES} bytes")
    return Header(kind, worker, model_version, seq, n), raw[HEADER_NBYTES:]
