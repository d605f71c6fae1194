"""Record serialisation: ``version (1) | JSON length (4, big-endian) | JSON | float32 embedding``.

JSON keeps records readable and evolvable; the embedding goes as raw little-endian
float32 after it (1,536 bytes for 384 dimensions instead of ~8 KB of JSON numbers).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import struct
from datetime import datetime

import numpy as np

from percolate_node.rem.errors import InvalidRecordError, RemError
from percolate_node.rem.model import Edge, Record, Resource

CODEC_VERSION = 1
_HEAD = struct.Struct(">BI")
_DATETIMES = frozenset({"created", "updated", "start", "end"})


def encode(record: Record | Edge, deleted: bool | None = None) -> bytes:
    """The stored form of ``record``, with its ``deleted`` flag replaced when given."""
    fields, tail = {}, b""
    for name in _field_names(type(record)):
        value = getattr(record, name)
        if name == "embedding":
            tail = b"" if value is None else value.astype("<f4").tobytes()
        else:
            fields[name] = value.isoformat() if isinstance(value, datetime) else value
    if deleted is not None:
        fields["deleted"] = deleted
    try:
        body = json.dumps(fields, ensure_ascii=False, separators=(",", ":")).encode()
    except (TypeError, ValueError) as error:
        raise InvalidRecordError(f"{type(record).__name__} fields must be JSON-serialisable: {error}") from None
    return _HEAD.pack(CODEC_VERSION, len(body)) + body + tail


@functools.cache
def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def decode(cls: type, data: bytes):
    version, length = _HEAD.unpack_from(data)
    if version != CODEC_VERSION:
        raise RemError(f"record format {version} is not supported by this version")
    start = _HEAD.size + length
    fields = json.loads(data[_HEAD.size:start])
    for name in _DATETIMES & fields.keys():
        fields[name] = datetime.fromisoformat(fields[name])
    if cls is Resource and len(data) > start:
        fields["embedding"] = np.frombuffer(data, "<f4", offset=start).astype(np.float32)
    return cls(**fields)
