"""The shipped log as one chain: which records count, across epochs, for a restore.

Segments live under ``log/<epoch>/``. When a newer epoch (a new primary holding the lease,
or a timeline forked by a restore) starts at LSN n, anything an older epoch shipped at n
or later was written by a fenced primary and never counts, even where the newer epoch has
no record (yet) at that LSN. Where an epoch starts comes from its first segment and from
its marker ``timelines/<epoch>`` (``{"epoch", "start_lsn"}``, create-only, never removed
by retention), so the fence survives the deletion of old segments.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from percolate_node.durability.errors import CorruptObjectError, ObjectMissingError
from percolate_node.durability.objstore import ObjectStore
from percolate_node.durability.segments import SegmentName, log_prefix, parse_segment_key, tenant_prefix, unpack


def timelines_prefix(tenant_id: str) -> str:
    return f"{tenant_prefix(tenant_id)}timelines/"


def timeline_key(tenant_id: str, epoch: int) -> str:
    return f"{timelines_prefix(tenant_id)}{epoch:010d}"


def timeline_marker(epoch: int, start_lsn: int) -> bytes:
    return (json.dumps({"epoch": epoch, "start_lsn": start_lsn}) + "\n").encode()


def read_markers(objects: ObjectStore, tenant_id: str) -> dict[int, int]:
    """epoch -> first LSN of that epoch, from the timeline markers."""
    markers = {}
    for key in objects.list(timelines_prefix(tenant_id)):
        try:
            data = json.loads(objects.get(key))
            markers[int(data["epoch"])] = int(data["start_lsn"])
        except (ValueError, KeyError, TypeError):
            raise CorruptObjectError(f"{objects.url}/{key} is not a readable timeline marker") from None
    return markers


@dataclass(frozen=True)
class LogChain:
    segments: list[SegmentName]
    """Valid segments in LSN order (fenced ones dropped)."""
    starts: dict[int, int] = field(default_factory=dict)
    """epoch -> its first LSN (segments and timeline markers)."""
    fenced_segments: list[SegmentName] = field(default_factory=list)

    @property
    def last_lsn(self) -> int:
        return self.segments[-1].last if self.segments else 0

    @property
    def newest_epoch(self) -> int:
        return max(self.starts, default=0)

    def fence(self, epoch: int) -> int | None:
        """The LSN from which a newer epoch owns the log (None: ``epoch`` is the newest)."""
        newer = [start for other, start in self.starts.items() if other > epoch]
        return min(newer) if newer else None

    def is_fenced(self, epoch: int, lsn: int) -> bool:
        fence = self.fence(epoch)
        return fence is not None and lsn >= fence


def chain(objects: ObjectStore, tenant_id: str) -> LogChain:
    names = [n for n in (parse_segment_key(tenant_id, k) for k in objects.list(log_prefix(tenant_id))) if n]
    starts: dict[int, int] = dict(read_markers(objects, tenant_id))
    for name in names:
        starts[name.epoch] = min(starts.get(name.epoch, name.first), name.first)
    probe = LogChain([], starts)
    valid = [n for n in names if not probe.is_fenced(n.epoch, n.first)]
    fenced = [n for n in names if probe.is_fenced(n.epoch, n.first)]
    valid.sort(key=lambda n: (n.first, -n.epoch))
    return LogChain(valid, starts, fenced)


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
        newer_fence = log.fence(name.epoch)
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
