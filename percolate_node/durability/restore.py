"""Point-in-time restore: the newest snapshot at or before the target plus the shipped log up to it.

``restore(...)`` builds the data directory under a temporary name beside ``into``, checks
every object against its manifest checksum or segment trailer, opens every sealed value
with the tenant's KEK, and only then renames it to ``into``: a failure (a corrupt or
missing object, a wrong KEK, a kill) never leaves a half-restored directory. The restored
copy starts a new epoch (a new timeline: see ``epoch``) and seals with a fresh DEK.
"""
from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable

from percolate_common.files import sync_folder, sync_tree
from percolate_node.durability.epoch import write_epoch
from percolate_node.durability.errors import BackupError
from percolate_node.durability.logchain import chain, records_after
from percolate_node.durability.objstore import ObjectStore
from percolate_node.durability.snapshots import SnapshotInfo, download_snapshot, list_snapshots


@dataclass(frozen=True)
class Target:
    """``latest``, a log sequence number, or a wall-clock time (ns since the epoch)."""

    kind: str
    value: int = 0

    @classmethod
    def parse(cls, text: str) -> "Target":
        text = text.strip()
        if text == "latest":
            return cls("latest")
        if text.isdigit():
            return cls("lsn", int(text))
        try:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise BackupError(f"--to {text!r}: give `latest`, a log sequence number, or an RFC 3339 time "
                              "such as 2026-11-27T10:02:00Z") from None
        if moment.tzinfo is None:
            raise BackupError(f"--to {text!r}: give the time zone (Z or +01:00)")
        return cls("time", int(moment.timestamp() * 1e9))

    def describe(self) -> str:
        if self.kind == "time":
            return datetime.fromtimestamp(self.value / 1e9).astimezone().isoformat(timespec="milliseconds")
        return "LSN %d" % self.value if self.kind == "lsn" else "latest"


@dataclass
class RestoreReport:
    snapshot: str
    snapshot_lsn: int
    last_lsn: int
    last_commit_time_ns: int
    records_applied: int
    values_verified: int
    epoch: int
    seconds: float
    into: Path
    notes: list[str] = field(default_factory=list)


def restore(objects: ObjectStore, tenant_id: str, kek, into: Path, target: Target,
            say: Callable[[str], None] = lambda line: None) -> RestoreReport:
    """Rebuild ``into`` (absent or empty) for ``target``; see the module docstring."""
    from percolate_node.store.store import EncryptedStore

    started = time.monotonic()
    into = Path(into)
    if into.exists() and (not into.is_dir() or any(into.iterdir())):
        raise BackupError(f"restore target {into} exists and is not empty: give a new folder")
    log = chain(objects, tenant_id)
    snapshots = list_snapshots(objects, tenant_id)
    top_epoch = max([s.epoch for s in snapshots] + [s.epoch for s in log.segments] + [1])
    snapshot = _choose(snapshots, log, target)
    if snapshot is None:
        say(f"restoring tenant {tenant_id} to {target.describe()}: before the first snapshot, so from an empty "
            f"database with the oldest snapshot's keyring and the log from LSN 1 ({objects.url})")
    else:
        say(f"restoring tenant {tenant_id} to {target.describe()} from snapshot {snapshot.id} "
            f"(LSN {snapshot.lsn}, {len(snapshot.files)} files, {snapshot.bytes / 1e6:.1f} MB) in {objects.url}")
    into.parent.mkdir(parents=True, exist_ok=True)
    for stale in into.parent.glob(f".{into.name}.restore-*"):
        shutil.rmtree(stale, ignore_errors=True)  # an interrupted earlier restore
    partial = into.parent / f".{into.name}.restore-{os.getpid()}-{time.monotonic_ns()}"
    try:
        if snapshot is None:
            snapshot = _empty_base(objects, snapshots[0], partial)
        else:
            download_snapshot(objects, snapshot, partial)
        applied, last_ns = 0, snapshot.commit_time_ns
        with EncryptedStore.open(partial, tenant_id, kek, create=False) as store:
            store.epoch = snapshot.epoch
            through = target.value if target.kind == "lsn" else None
            for lsn, _epoch, sealed in records_after(objects, tenant_id, log, snapshot.lsn, through):
                record = store.open_log_record(lsn, sealed)
                if target.kind == "time" and record.commit_time_ns > target.value:
                    break
                store.apply_log_record(lsn, sealed, kek)
                applied, last_ns = applied + 1, record.commit_time_ns
            last_lsn = store.last_lsn
            say(f"applied {applied} log records (LSN {snapshot.lsn + 1}-{last_lsn}); verifying every value")
            verified = store.verify()
            epoch = top_epoch + 1
            store.epoch = epoch
            store.rotate_dek()  # the copy never adds seals to a DEK the original may still use
        write_epoch(partial, epoch)
        sync_tree(partial)
        if into.exists():
            into.rmdir()
        os.rename(partial, into)
        sync_folder(into.parent)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    report = RestoreReport(snapshot.id, snapshot.lsn, last_lsn, last_ns, applied, verified, epoch,
                           time.monotonic() - started, into)
    say(f"restored {into}: state at LSN {last_lsn} (committed "
        f"{datetime.fromtimestamp(last_ns / 1e9).astimezone().isoformat(timespec='milliseconds')}), "
        f"{verified} values verified, new epoch {epoch}, in {report.seconds:.1f} s")
    return report


def _choose(snapshots: list[SnapshotInfo], log, target: Target) -> SnapshotInfo | None:
    """The newest snapshot at or before the target that no newer epoch fenced off; None when the
    target is before every snapshot but the shipped log reaches back to the first record."""
    starts: dict[int, int] = {}
    for name in log.segments:
        starts[name.epoch] = min(starts.get(name.epoch, name.first), name.first)

    def fenced(info: SnapshotInfo) -> bool:
        return any(epoch > info.epoch and start <= info.lsn for epoch, start in starts.items())

    eligible = [s for s in snapshots if not fenced(s)]
    if target.kind == "lsn":
        eligible = [s for s in eligible if s.lsn <= target.value]
    elif target.kind == "time":
        eligible = [s for s in eligible if s.commit_time_ns <= target.value]
    if not eligible and snapshots and log.segments and log.segments[0].first == 1:
        return None
    if not eligible:
        raise BackupError(f"no snapshot at or before {target.describe()} "
                          f"({len(snapshots)} snapshot(s) in the object store); nothing was written")
    return max(eligible, key=lambda s: (s.lsn, s.id))


def _empty_base(objects: ObjectStore, oldest: SnapshotInfo, dest: Path) -> SnapshotInfo:
    """An empty database holding the oldest snapshot's keyring (wrapped by the KEK; every DEK
    the first records could use), from which the whole log replays."""
    import tempfile

    from percolate_node.store import rocks
    from percolate_node.store.layout import COLUMN_FAMILIES, KEYS

    with tempfile.TemporaryDirectory(prefix="percolate-keyring-", dir=dest.parent) as scratch:
        download_snapshot(objects, oldest, Path(scratch) / "oldest")
        records, _ = rocks.read_keys_readonly(Path(scratch) / "oldest")
    db = rocks.open_rw(dest, COLUMN_FAMILIES)
    keys = db.get_column_family(KEYS)
    for name, blob in records.items():
        keys[name] = blob
    rocks.close(db, [keys])
    return SnapshotInfo("(empty base)", 0, 0, 1, "", [])
