"""The node's change log: one record per committed write batch, durable before the batch's values.

rocksdict has no WAL iterator, so the log is ours; it is also the values' write-ahead log
(the store writes the record alone, synced, then the values without RocksDB's WAL, and
replays records after ``meta/durable-lsn`` at open: ``store/store.py``). A record holds the batch's operations
exactly as stored (values already sealed, keys already hashed), its log sequence number
(LSN), commit time and epoch (the lease generation: a fencing token). The store seals the
whole record like any other value, in the ``log`` column family under the big-endian LSN,
so it is bound to its tenant and position. The same records feed the object store (point-
in-time restore) and a standby (replication).

Record layout (before sealing), all integers big-endian::

    version u8 | lsn u64 | epoch u64 | commit_time_ns u64 | count u32
    count x ( op u8 (1 put, 2 delete) | family u8 (index in FAMILY_CODES)
              | key_len u32 | key | value_len u32 | value )
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from percolate_node.store import layout
from percolate_node.store.errors import DataLossError

VERSION = 1
PUT, DELETE = 1, 2
_HEADER = struct.Struct(">BQQQI")
_OP = struct.Struct(">BBI")
_LEN = struct.Struct(">I")
FAMILY_CODES = (layout.KEYS, layout.DOCUMENTS, layout.RESOURCES, layout.DOCUMENT_RESOURCES, layout.URIS,
                layout.ENTITIES, layout.NAMES, layout.EDGES, layout.MOMENTS, layout.MOMENT_TIMES, layout.DELETED)
"""Wire codes of the families a record may touch (append only: stored records use them)."""
FAMILY_INDEX = {cf: i for i, cf in enumerate(FAMILY_CODES)}


def lsn_key(lsn: int) -> bytes:
    return lsn.to_bytes(8, "big")


def key_lsn(key: bytes) -> int:
    return int.from_bytes(key, "big")


@dataclass(frozen=True, slots=True)
class LogRecord:
    lsn: int
    epoch: int
    commit_time_ns: int
    ops: tuple[tuple[str, bytes, bytes | None], ...]
    """(column family, key, stored value or None for a delete), in batch order."""


def encode_framed(lsn: int, epoch: int, commit_time_ns: int, count: int, framed_ops: bytes) -> bytes:
    """A record from ``count`` operations already framed as below (the store's ``_gcm.seal_batch``
    frames them while sealing; ``tests/test_store.py`` checks it agrees with ``encode``)."""
    return _HEADER.pack(VERSION, lsn, epoch, commit_time_ns, count) + framed_ops


def encode(lsn: int, epoch: int, commit_time_ns: int, ops: list[tuple[str, bytes, bytes | None]]) -> bytes:
    parts = [_HEADER.pack(VERSION, lsn, epoch, commit_time_ns, len(ops))]
    for cf, key, value in ops:
        if value is None:
            parts += [_OP.pack(DELETE, FAMILY_INDEX[cf], len(key)), key, _LEN.pack(0)]
        else:
            parts += [_OP.pack(PUT, FAMILY_INDEX[cf], len(key)), key, _LEN.pack(len(value)), value]
    return b"".join(parts)


def decode(data: bytes, where: str = "log record") -> LogRecord:
    """Parse an opened record; ``DataLossError`` on any framing fault (the AEAD tag already
    passed, so that means a bug or a foreign format, never silently skipped)."""
    try:
        version, lsn, epoch, commit_ns, count = _HEADER.unpack_from(data, 0)
        if version != VERSION:
            raise ValueError(f"version {version}")
        offset = _HEADER.size
        ops = []
        for _ in range(count):
            op, family, key_len = _OP.unpack_from(data, offset)
            offset += _OP.size
            key = data[offset:offset + key_len]
            offset += key_len
            (value_len,) = _LEN.unpack_from(data, offset)
            offset += _LEN.size
            value = data[offset:offset + value_len]
            offset += value_len
            if op not in (PUT, DELETE) or len(key) != key_len or len(value) != value_len:
                raise ValueError("truncated operation")
            ops.append((FAMILY_CODES[family], bytes(key), bytes(value) if op == PUT else None))
        if offset != len(data):
            raise ValueError(f"{len(data) - offset} trailing bytes")
    except (struct.error, ValueError, IndexError) as error:
        raise DataLossError(f"{where} is malformed: {error}") from None
    return LogRecord(lsn, epoch, commit_ns, tuple(ops))
