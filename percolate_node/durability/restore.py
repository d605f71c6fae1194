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
from typing import Callable, Sequence

from percolate_common.files import sync_folder, sync_tree
from percolate_node.durability.epoch import write_epoch
from percolate_node.durability.errors import BackupError, CorruptObjectError
from percolate_node.durability.logchain import chain, records_after
from percolate_node.durability.objstore import ObjectStore
from percolate_node.durability.snapshots import SnapshotInfo, download_snapshot, list_snapshots
from percolate_node.store.kek import kek_source


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
            say: Callable[[str], None] = lambda line: None, previous_keks: Sequence = ()) -> RestoreReport:
    """Rebuild ``into`` (absent or empty) for ``target``; see the module docstring.

    ``kek`` is the tenant's current KEK (a file or the key); ``previous_keks`` are KEKs it
    replaced since the snapshot (a restore across ``rotate-kek``). The restored keyring is
    wrapped by ``kek`` either way."""

    started = time.monotonic()
    into = Path(into).resolve()  # a symlink restores where it points
    if into.exists() and (not into.is_dir() or any(into.iterdir())):
        raise BackupError(f"restore target {into} exists and is not empty: give a new folder")
    if into.exists() and os.path.ismount(into):
        raise BackupError(f"restore target {into} is a mount point, which cannot be replaced whole: restore "
                          f"into a new folder inside it (e.g. {into / 'data'}) and point the data directory there")
    log = chain(objects, tenant_id)
    problems: list[str] = []
    snapshots = list_snapshots(objects, tenant_id, problems)
    top_epoch = max([s.epoch for s in snapshots] + [log.newest_epoch, 1])
    try:
        snapshot = _choose(snapshots, log, target)
    except BackupError as error:
        if problems:  # say why the others did not count
            raise CorruptObjectError(f"{error}; {len(problems)} unreadable: " + "; ".join(problems[:3])) from None
        raise
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
        keks = [kek_source(k) for k in (kek, *previous_keks)]  # the store keeps these very objects
        with _open_with_any(partial, tenant_id, keks) as store:
            store.epoch = snapshot.epoch
            through = target.value if target.kind == "lsn" else None
            for lsn, _epoch, sealed in records_after(objects, tenant_id, log, snapshot.lsn, through):
                record = store.open_log_record(lsn, sealed)
                if target.kind == "time" and record.commit_time_ns > target.value:
                    break
                store.apply_log_record(lsn, sealed, keks)
                applied, last_ns = applied + 1, record.commit_time_ns
            last_lsn = store.last_lsn  # the shared history ends here; the new timeline starts after it
            say(f"applied {applied} log records (LSN {snapshot.lsn + 1}-{last_lsn}); verifying every value")
            verified = store.verify()
            epoch = top_epoch + 1
            store.epoch = epoch
            if store._kek is not keks[0]:  # the keyring ended wrapped by an older KEK: re-wrap it with the current one
                store.rotate_kek(keks[0])
            store.rotate_dek()  # the copy never adds seals to a DEK the original may still use
        write_epoch(partial, epoch, start_lsn=last_lsn + 1)
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


def _open_with_any(path: Path, tenant_id: str, keks: list):
    """The restored store opened with the first KEK that opens the snapshot's keyring."""
    from percolate_node.store.errors import WrongKeyError
    from percolate_node.store.store import EncryptedStore

    error = None
    for candidate in keks:
        try:
            store = EncryptedStore.open(path, tenant_id, candidate, create=False)
        except WrongKeyError as wrong:
            error = wrong
            continue
        return store
    raise error


def _choose(snapshots: list[SnapshotInfo], log, target: Target) -> SnapshotInfo | None:
    """The newest snapshot at or before the target that no newer epoch fenced off; None when the
    target is before every snapshot but the shipped log reaches back to the first record."""
    eligible = [s for s in snapshots if not log.is_fenced(s.epoch, s.lsn)]
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
