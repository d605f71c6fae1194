"""Fast protobuf encoding of float vectors.

Filling a ``repeated float`` field from Python turns every value into a Python float
(about 1.4 ms for 32 x 384 values); writing the packed wire bytes with numpy and
letting protobuf parse them takes about 0.04 ms. The result is the same message.
"""
from __future__ import annotations

import numpy as np

_WIRE_LENGTH_DELIMITED = 2


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | 0x80 if value else byte)
        if not value:
            return bytes(out)


def length_delimited(field: int, payload: bytes) -> bytes:
    """One field of wire type 2 (bytes, packed repeated scalars, or a sub-message)."""
    return _varint(field << 3 | _WIRE_LENGTH_DELIMITED) + _varint(len(payload)) + payload


def packed_floats(field: int, values: np.ndarray) -> bytes:
    """A packed ``repeated float`` field holding ``values`` (little-endian float32)."""
    return length_delimited(field, np.ascontiguousarray(values, dtype="<f4").tobytes())
