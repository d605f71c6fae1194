"""Log segments: consecutive sealed change-log records packed into one create-only object.

Object key: ``tenants/<tenant>/log/<epoch>/<first>-<last>`` (zero-padded, so keys sort by
epoch then LSN). The records inside are sealed by the store (bound to tenant, family and
LSN), so a segment is ciphertext; the framing adds the tenant, epoch and range, and a
SHA-256 trailer that catches truncation and bit rot before any record is opened.

Layout: ``PCLOGSG1`` | tenant_len u16 | tenant | epoch u64 | first u64 | last u64 | count u32
| count x (lsn u64 | len u32 | sealed record) | sha256 of all the preceding bytes.
"""
from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from percolate_node.durability.errors import CorruptObjectError

MAGIC = b"PCLOGSG1"
_HEAD = struct.Struct(">QQQI")
_REC = struct.Struct(">QI")


def tenant_prefix(tenant_id: str) -> str:
    return f"tenants/{tenant_id}/"


def log_prefix(tenant_id: str) -> str:
    return f"tenants/{tenant_id}/log/"


def segment_key(tenant_id: str, epoch: int, first: int, last: int) -> str:
    return f"{log_prefix(tenant_id)}{epoch:010d}/{first:020d}-{last:020d}"


@dataclass(frozen=True, slots=True)
class SegmentName:
    key: str
    epoch: int
    first: int
    last: int


def parse_segment_key(tenant_id: str, key: str) -> SegmentName | None:
    """The epoch and LSN range a segment key names (None for anything else under log/)."""
    rest = key[len(log_prefix(tenant_id)):] if key.startswith(log_prefix(tenant_id)) else ""
    try:
        epoch, span = rest.split("/")
        first, last = span.split("-")
        return SegmentName(key, int(epoch), int(first), int(last))
    except ValueError:
        return None


def pack(tenant_id: str, epoch: int, records: list[tuple[int, bytes]]) -> bytes:
    tenant = tenant_id.encode()
    parts = [MAGIC, struct.pack(">H", len(tenant)), tenant,
             _HEAD.pack(epoch, records[0][0], records[-1][0], len(records))]
    for lsn, sealed in records:
        parts += [_REC.pack(lsn, len(sealed)), sealed]
    body = b"".join(parts)
    return body + hashlib.sha256(body).digest()


def unpack(data: bytes, where: str, tenant_id: str) -> tuple[int, list[tuple[int, bytes]]]:
    """(epoch, [(lsn, sealed record)]) of a segment; ``CorruptObjectError`` naming ``where``."""
    if len(data) < len(MAGIC) + 2 + _HEAD.size + 32 or not data.startswith(MAGIC):
        raise CorruptObjectError(f"{where} is not a Percolate log segment")
    body, digest = data[:-32], data[-32:]
    if hashlib.sha256(body).digest() != digest:
        raise CorruptObjectError(f"{where} fails its SHA-256 check: truncated or altered")
    offset = len(MAGIC)
    (tenant_len,) = struct.unpack_from(">H", body, offset)
    offset += 2
    tenant = body[offset:offset + tenant_len].decode(errors="replace")
    offset += tenant_len
    if tenant != tenant_id:
        raise CorruptObjectError(f"{where} belongs to tenant {tenant!r}, not {tenant_id!r}")
    epoch, first, last, count = _HEAD.unpack_from(body, offset)
    offset += _HEAD.size
    records = []
    for _ in range(count):
        lsn, length = _REC.unpack_from(body, offset)
        offset += _REC.size
        records.append((lsn, body[offset:offset + length]))
        offset += length
    if offset != len(body) or not records or records[0][0] != first or records[-1][0] != last or any(
            b[0] != a[0] + 1 for a, b in zip(records, records[1:])):
        raise CorruptObjectError(f"{where} framing is inconsistent (records {first}-{last}, {count} announced)")
    return epoch, records
