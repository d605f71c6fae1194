"""Snapshots: a RocksDB checkpoint of the whole store uploaded file by file.

``tenants/<tenant>/snapshots/<id>/`` holds the files this snapshot added and, written last,
``manifest.json``: every file of the checkpoint with its size, SHA-256 and the object that
holds it, plus the LSN (and its commit time and epoch) the checkpoint covers. An SST file
that an earlier snapshot already uploaded (same name and size: RocksDB never reuses an SST
number in a database) is referenced, not uploaded again, as RocksDB's BackupEngine shares
files. A snapshot without a manifest is unfinished and ignored. The files are ciphertext:
values are sealed and the ``keys`` family holds the keyring wrapped by the KEK.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from percolate_node.durability.errors import CorruptObjectError, ObjectExistsError, ObjectMissingError
from percolate_node.durability.objstore import ObjectStore
from percolate_node.durability.segments import tenant_prefix

FORMAT = 1
MANIFEST = "manifest.json"
log = logging.getLogger("percolate.backup")


def snapshots_prefix(tenant_id: str) -> str:
    return f"{tenant_prefix(tenant_id)}snapshots/"


@dataclass(frozen=True)
class SnapshotInfo:
    id: str
    lsn: int
    commit_time_ns: int
    epoch: int
    created_at: str
    files: list[dict]
    """[{name, object, size, sha256}]"""

    @property
    def bytes(self) -> int:
        return sum(f["size"] for f in self.files)


@dataclass(frozen=True)
class SnapshotReport:
    info: SnapshotInfo
    uploaded_files: int
    uploaded_bytes: int
    shared_files: int
    seconds: float


def list_snapshots(objects: ObjectStore, tenant_id: str, problems: list[str] | None = None) -> list[SnapshotInfo]:
    """Finished snapshots (those with a manifest), oldest first. An unreadable manifest is
    left out (named in ``problems`` and the log), so one damaged snapshot never blocks the rest."""
    prefix = snapshots_prefix(tenant_id)
    manifests = [key for key in objects.list(prefix) if key.endswith("/" + MANIFEST)]
    infos = []
    for key in manifests:
        try:
            infos.append(read_manifest(objects, tenant_id, key))
        except CorruptObjectError as error:
            log.warning("skipping snapshot: %s", error)
            if problems is not None:
                problems.append(str(error))
    return sorted(infos, key=lambda info: (info.lsn, info.id))


def read_manifest(objects: ObjectStore, tenant_id: str, key: str) -> SnapshotInfo:
    try:
        data = json.loads(objects.get(key))
        if data.get("format") != FORMAT:
            raise CorruptObjectError(f"{key}: snapshot format {data.get('format')!r} is not supported")
        if data.get("tenant_id") != tenant_id:
            raise CorruptObjectError(f"{key} belongs to tenant {data.get('tenant_id')!r}, not {tenant_id!r}")
        files = [dict(f) for f in data["files"]]
        for entry in files:
            _check_entry(tenant_id, key, entry)
        return SnapshotInfo(data["id"], int(data["lsn"]), int(data["commit_time_ns"]), int(data["epoch"]),
                            data["created_at"], files)
    except (ValueError, KeyError, TypeError) as error:
        raise CorruptObjectError(f"{key} is not a readable snapshot manifest ({error})") from None


_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def _check_entry(tenant_id: str, manifest_key: str, entry: dict) -> None:
    """A manifest names plain files of a RocksDB folder, held under this tenant's snapshots:
    anything else (``../``, absolute paths, another tenant's objects) is refused, never followed."""
    name, obj = entry.get("name"), entry.get("object")
    if not isinstance(name, str) or not _FILE_NAME.fullmatch(name) or name in (".", ".."):
        raise CorruptObjectError(f"{manifest_key} names a file {name!r} that is not a plain file name")
    if not isinstance(obj, str) or not obj.startswith(snapshots_prefix(tenant_id)) or ".." in obj.split("/") \
            or obj.rsplit("/", 1)[-1] != name:
        raise CorruptObjectError(f"{manifest_key} points {name!r} at {obj!r}, outside this tenant's snapshots")
    if not isinstance(entry.get("size"), int) or entry["size"] < 0 or \
            not re.fullmatch(r"[0-9a-f]{64}", str(entry.get("sha256", ""))):
        raise CorruptObjectError(f"{manifest_key}: {name!r} has no valid size and SHA-256")


def take_snapshot(store, objects: ObjectStore, work_dir: Path | None = None,
                  say: Callable[[str], None] = lambda line: None) -> SnapshotReport:
    """Checkpoint ``store`` (an ``EncryptedStore``) and upload what the newest snapshot lacks."""
    started = time.monotonic()
    tenant = store.tenant_id
    previous = list_snapshots(objects, tenant)
    # An SST is shared with an earlier snapshot only when its content is the same: name and
    # size alone collide across timelines (a restored copy numbers its files on from the same
    # RocksDB manifest, and sealed values have fixed lengths).
    known = {(f["name"], f["size"], f["sha256"]): f for info in previous for f in info.files
             if f["name"].endswith(".sst")}
    with tempfile.TemporaryDirectory(prefix="percolate-snapshot-", dir=work_dir) as scratch:
        checkpoint = Path(scratch) / "checkpoint"
        lsn = store.checkpoint(checkpoint)
        commit_ns, epoch = _commit_time(store, lsn), store.epoch
        snapshot_id = f"{lsn:020d}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{time.time_ns() % 10**6:06d}"
        folder = f"{snapshots_prefix(tenant)}{snapshot_id}/"
        files, uploaded, uploaded_bytes, shared = [], 0, 0, 0
        for path in sorted(checkpoint.iterdir()):
            if not path.is_file() or path.name == "LOCK" or path.name.startswith("LOG"):
                continue  # RocksDB's lock file and info logs are not part of the database
            data = path.read_bytes()
            size, digest = len(data), hashlib.sha256(data).hexdigest()
            reuse = known.get((path.name, size, digest))
            if reuse is not None:
                files.append(dict(reuse))
                shared += 1
                continue
            entry = {"name": path.name, "object": folder + path.name, "size": size, "sha256": digest}
            _put_or_same(objects, entry["object"], data)
            files.append(entry)
            uploaded += 1
            uploaded_bytes += size
        info = SnapshotInfo(snapshot_id, lsn, commit_ns, epoch,
                            time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), files)
        manifest = {"format": FORMAT, "tenant_id": tenant, "id": snapshot_id, "lsn": lsn,
                    "commit_time_ns": commit_ns, "epoch": epoch, "created_at": info.created_at, "files": files}
        objects.put_new(folder + MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode())
    report = SnapshotReport(info, uploaded, uploaded_bytes, shared, time.monotonic() - started)
    say(f"snapshot {snapshot_id} of tenant {tenant}: LSN {lsn}, {len(files)} files "
        f"({uploaded} uploaded, {uploaded_bytes / 1e6:.1f} MB; {shared} shared) in {report.seconds:.1f} s "
        f"to {objects.url}/{folder}")
    return report


def download_snapshot(objects: ObjectStore, info: SnapshotInfo, dest: Path,
                      progress: Callable[[int, int], None] = lambda done, total: None) -> None:
    """Every file of ``info`` into ``dest`` (which must not exist), each checked against its SHA-256."""
    dest.mkdir(parents=True)
    for done, entry in enumerate(info.files, 1):
        try:
            data = objects.get(entry["object"])
        except ObjectMissingError:
            raise ObjectMissingError(f"snapshot {info.id} needs {entry['object']}, which is missing") from None
        if len(data) != entry["size"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise CorruptObjectError(f"{entry['object']} does not match snapshot {info.id}'s manifest "
                                     "(size or SHA-256): it was altered or damaged")
        (dest / entry["name"]).write_bytes(data)
        progress(done, len(info.files))


def verify_snapshot(objects: ObjectStore, info: SnapshotInfo) -> list[str]:
    """Problems with ``info``'s objects (missing, wrong size or checksum); empty when whole."""
    problems = []
    for entry in info.files:
        try:
            data = objects.get(entry["object"])
        except ObjectMissingError:
            problems.append(f"{entry['object']}: missing")
            continue
        if len(data) != entry["size"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
            problems.append(f"{entry['object']}: size or SHA-256 differs from the manifest")
    return problems


def _commit_time(store, lsn: int) -> int:
    if lsn == 0:
        return time.time_ns()
    records = store.log_records(lsn - 1, limit=1)
    if records and records[0][0] == lsn:
        return store.open_log_record(lsn, records[0][1]).commit_time_ns
    return time.time_ns()


def _put_or_same(objects: ObjectStore, key: str, data: bytes) -> None:
    """Create ``key``; if a crashed earlier attempt left it, accept it only when identical."""
    try:
        objects.put_new(key, data)
    except ObjectExistsError:
        if objects.get(key) != data:
            raise
