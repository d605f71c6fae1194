"""Backups hold sealed data only; restoring one needs an exported keyring and the KEK.

Design:
- ``EncryptedStore.backup(dest)`` takes a RocksDB checkpoint (consistent across column
  families, hard links where possible) under a temporary name beside ``dest``, drops the
  ``keys`` family from the copy, writes ``percolate-backup.json`` (tenant id, time; no
  secret), and only then renames it to ``dest``: a crash before the drop leaves the
  keyring in a ``.<dest>.partial-*`` folder (which the next backup to ``dest`` removes),
  never in a folder that looks like a finished backup. A backup on its own cannot be
  read by anyone, including us: shredding the live keyring kills it too.
- ``EncryptedStore.export_keyring(path)`` writes the wrapped keyring (safe without the
  KEK, but keep it apart from backups, e.g. in the secret store next to the KEK).
  Re-export after ``rotate_dek``/``retire_old_deks``/``rotate_kek``.
- ``restore(backup_dir, data_dir, kek, keyring)`` checks the keyring against the KEK
  and the backup's tenant before writing anything, copies the backup, installs the
  keyring, opens every value, and rotates to a fresh DEK (the exported seal counts may be
  older than the original's, and the copy must never add to the original DEK's count).
  A backup taken before a DEK was retired needs a keyring exported before the
  retirement; ``restore`` says so when that is the case.
- Crypto-shredding is complete once the live keyring and every exported keyring are
  gone, or once the KEK is gone (which makes every copy of the keyring useless).
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Callable

from rocksdict import Checkpoint, Rdict

from percolate_node.store import rocks
from percolate_node.store.errors import StoreError, WrongKeyError
from percolate_common.files import sync_folder
from percolate_node.store.keyring import Keyring, read_keyring_file
from percolate_node.store.layout import COLUMN_FAMILIES, KEYS

MANIFEST = "percolate-backup.json"
BACKUP_FORMAT = 1

_after_checkpoint: Callable[[Path], None] | None = None
"""Tests: called with the temporary folder between the checkpoint and dropping ``keys``."""


def create_backup(db: Rdict, tenant_id: str, dest: Path) -> Path:
    """Checkpoint ``db`` beside ``dest`` (which must not exist), strip the keyring, then rename it to ``dest``."""
    if dest.exists() or dest.is_symlink():
        raise StoreError(f"backup destination {dest} already exists")
    for stale in dest.parent.glob(f".{dest.name}.partial-*"):  # left by a crash: may hold the keyring
        shutil.rmtree(stale, ignore_errors=True)
    partial = dest.with_name(f".{dest.name}.partial-{os.getpid()}-{time.monotonic_ns()}")
    try:
        Checkpoint(db).create_checkpoint(str(partial))
        if _after_checkpoint is not None:
            _after_checkpoint(partial)
        copy = rocks.open_rw(partial, COLUMN_FAMILIES)
        copy.drop_column_family(KEYS)
        rocks.close(copy)
        (partial / MANIFEST).write_text(json.dumps({
            "format": BACKUP_FORMAT, "tenant_id": tenant_id,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}) + "\n")
        sync_folder(partial)
        os.rename(partial, dest)
        sync_folder(dest.parent)
    except BaseException as error:
        shutil.rmtree(partial, ignore_errors=True)
        if isinstance(error, StoreError) or not isinstance(error, Exception):
            raise
        raise StoreError(f"backup to {dest} failed: {error}") from None
    return dest


def restore(backup_dir: Path, data_dir: Path, kek: bytes, keyring: Path) -> None:
    """Rebuild a store at ``data_dir`` (absent or empty) from a backup and an exported keyring.

    Nothing is written until the KEK opens the keyring and the backup is the same
    tenant's; if anything fails afterwards, ``data_dir`` is removed again.
    """
    from percolate_node.store.store import EncryptedStore

    backup_dir, data_dir = Path(backup_dir), Path(data_dir)
    tenant_id, records = read_keyring_file(keyring)
    Keyring.from_records(tenant_id, kek, records)
    try:
        manifest = json.loads((backup_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        raise StoreError(f"{backup_dir} is not a Percolate backup (no readable {MANIFEST})") from None
    if manifest.get("format") != BACKUP_FORMAT:
        raise StoreError(f"backup format {manifest.get('format')!r} is not supported by this version")
    if manifest.get("tenant_id") != tenant_id:
        raise WrongKeyError(f"the backup belongs to tenant {manifest.get('tenant_id')!r}, "
                            f"the keyring to {tenant_id!r}")
    if data_dir.exists() and any(data_dir.iterdir()):
        raise StoreError(f"restore target {data_dir} is not empty")
    shutil.copytree(backup_dir, data_dir, ignore=shutil.ignore_patterns(MANIFEST, "LOCK", "LOG*"),
                    dirs_exist_ok=True)
    try:
        db = rocks.open_rw(data_dir, COLUMN_FAMILIES)
        keys = db.get_column_family(KEYS)
        for name, blob in records.items():
            keys[name] = blob
        rocks.close(db, [keys])
        with EncryptedStore.open(data_dir, tenant_id, kek, create=False) as store:
            store.verify()
            store.rotate_dek()
    except BaseException:
        shutil.rmtree(data_dir, ignore_errors=True)
        raise
