"""The shipped log as one chain: which records count, across epochs, for a restore.

Segments live under ``log/<epoch>/``. When a newer epoch (a new primary holding the lease)
starts at LSN n, anything an older epoch shipped at n or later was written by a fenced
primary and never counts, even where the newer epoch has no record (yet) at that LSN.
"""
from __future__ import annotations

from dataclasses import dataclass

from percolate_node.durability.errors import ObjectMissingError
from percolate_node.durability.objstore import ObjectStore
from percolate_node.durability.segments import SegmentName, log_prefix, parse_segment_key, unpack


@dataclass(frozen=True)
class LogChain:
    segments: list[SegmentName]
    """Valid segments in LSN order (fenced ones dropped)."""

    @property
    def last_lsn(self) -> int:
        return self.segments[-1].last if self.segments else 0


def chain(objects: ObjectStore, tenant_id: str) -> LogChain:
    names = [n for n in (parse_segment_key(tenant_id, k) for k in objects.list(log_prefix(tenant_id))) if n]
    starts: dict[int, int] = {}
    for name in names:
        starts[name.epoch] = min(starts.get(name.epoch, name.first), name.first)
    valid = []
    for name in names:
        newer = [start for epoch, start in starts.items() if epoch > name.epoch]
        fence = min(newer) if newer else None
        if fence is not None and name.first >= fence:
            continue
        valid.append(name)
    valid.sort(key=lambda n: (n.first, -n.epoch))
    return LogChain(valid)


def records_after(objects: ObjectStore, tenant_id: str, log: LogChain, after: int, through: int | None = None):
    """Yield (lsn, epoch, sealed record) for after < lsn <= through, contiguous, or raise
    ``ObjectMissingError`` naming the gap."""
    expected = after + 1
    for name in log.segments:
        if name.last < expected:
            continue
        if through is not None and expected > through:
            return
        if name.first > expected:
            raise ObjectMissingError(f"log records {expected}-{name.first - 1} are missing from "
                                     f"{objects.url}/{log_prefix(tenant_id)} (a segment was lost)")
        epoch, records = unpack(objects.get(name.key), f"{objects.url}/{name.key}", tenant_id)
        newer_fence = _fence_after(log, name)
        for lsn, sealed in records:
            if lsn < expected:
                continue
            if through is not None and lsn > through:
                return
            if newer_fence is not None and lsn >= newer_fence:
                break  # a newer epoch takes over from here
            yield lsn, epoch, sealed
            expected = lsn + 1
    if through is not None and expected <= through:
        raise ObjectMissingError(f"the shipped log ends at {expected - 1}, before the requested {through}")


def _fence_after(log: LogChain, name: SegmentName) -> int | None:
    starts = [s.first for s in log.segments if s.epoch > name.epoch and s.first > name.first]
    return min(starts) if starts else None
