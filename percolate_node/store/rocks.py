"""Opening RocksDB (rocksdict, raw mode) for the store, its verification and its backups."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterable

from rocksdict import AccessType, Options, Rdict

from percolate_node.store.errors import StoreError
from percolate_node.store.layout import KEYS

# Files a read-only open must not see through the shadow directory: rocksdict rewrites
# its config on every open, and LOCK / LOG belong to whoever has the database open.
_NOT_SHADOWED = ("LOCK", "rocksdict-config.json")


def open_rw(path: Path, families: Iterable[str]) -> Rdict:
    """Open (or create) the database at ``path`` with these column families."""
    options = Options(raw_mode=True)
    options.create_if_missing(True)
    options.create_missing_column_families(True)
    try:
        return Rdict(str(path), options, column_families={cf: Options(raw_mode=True) for cf in families})
    except Exception as error:  # rocksdict raises bare Exception
        raise StoreError(f"cannot open RocksDB at {path}: {error}") from None


def close(db: Rdict, views: Iterable[Rdict] = ()) -> None:
    """Close column-family views first: any live view keeps RocksDB (and its LOCK) open."""
    for view in views:
        view.close()
    db.close()


def read_keys_readonly(path: Path) -> tuple[dict[bytes, bytes], bool]:
    """The ``keys`` family's records and whether any other family holds data, writing nothing under ``path``.

    Even a read-only rocksdict open rewrites ``rocksdict-config.json``, so the read goes
    through a temporary directory of symlinks to the database files. This is what lets a
    wrong KEK be refused with the data directory untouched.
    """
    with tempfile.TemporaryDirectory(prefix="percolate-verify-") as shadow:
        for entry in os.scandir(path):
            if entry.is_file() and entry.name not in _NOT_SHADOWED and not entry.name.startswith("LOG"):
                os.symlink(os.path.abspath(entry.path), os.path.join(shadow, entry.name))
        try:
            families = Rdict.list_cf(shadow, Options(raw_mode=True))
            db = Rdict(shadow, Options(raw_mode=True),
                       column_families={cf: Options(raw_mode=True) for cf in families},
                       access_type=AccessType.read_only())
        except Exception as error:
            raise StoreError(f"cannot read the RocksDB database at {path}: {error}") from None
        views = {cf: db.get_column_family(cf) for cf in families}
        try:
            records = dict(views[KEYS].items()) if KEYS in views else {}
            has_data = any(next(iter(view.keys()), None) is not None
                           for cf, view in views.items() if cf != KEYS)
        finally:
            close(db, views.values())
    return records, has_data
