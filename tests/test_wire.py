"""The message envelope: round trip, and every corruption of a header is rejected."""

import numpy as np
import pytest

from psgd import wire
from psgd.errors import WireFormatError


def test_round_trip():
    payload = np.arange(10, dtype=np.uint8)
    msg = wire.message(wire.GRAD, 3, 17, 5, payload)
    assert msg.size == wire.HEADER_NBYTES + 10 == 42
    header, body = wire.parse(msg, msg.size, sender="t")
    assert header == wire.Header(wire.GRAD, 3, 17, 5, 10)
    assert bytes(body) == bytes(payload)


def test_parse_uses_only_the_received_count():
    buf = np.zeros(100, np.uint8)
    n = wire.pack_into(buf, wire.MODEL, 0, 1, 2, b"abc")
    header, body = wire.parse(buf, n, sender="t")
    assert bytes(body) == b"abc" and header.payload_nbytes == 3


@pytest.mark.parametrize("bit", range(8 * wire.HEADER_NBYTES))
def test_every_single_bit_flip_in_the_header_is_rejected(bit):
    msg = wire.message(wire.GRAD, 1, 2, 3, b"xyz")
    msg[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(WireFormatError):
        wire.parse(msg, msg.size, sender="worker 1")


@pytest.mark.parametrize("cut", [0, 1, 31, 32, 34])
def test_truncated_messages_are_rejected(cut):
    msg = wire.message(wire.GRAD, 1, 2, 3, b"xyz")
    with pytest.raises(WireFormatError, match="worker 1"):
        wire.parse(msg, cut, sender="worker 1")


def test_send_buffer_too_small():
    with pytest.raises(ValueError):
        wire.pack_into(np.zeros(10, np.uint8), wire.GRAD, 0, 0, 0, b"")


def test_random_garbage_never_crashes():
    rng = np.random.default_rng(0)
    for _ in range(2000):
        n = int(rng.integers(0, 80))
        buf = rng.integers(0, 256, n, dtype=np.uint8)
        with pytest.raises(WireFormatError):
            wire.parse(buf, n, sender="fuzz")
