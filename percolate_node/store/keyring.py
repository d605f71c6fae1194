"""The tenant keyring: DEKs and the name-hashing key, wrapped by the KEK in the ``keys`` family.

Records in ``keys``:
- ``header``: plain JSON ``{"format", "tenant_id"}`` (no secret) so a wrong tenant
  gets a clear message before any decryption is tried;
- ``hmac``: the key that turns user-supplied names into RocksDB keys, wrapped;
- ``dek/<id, 4 bytes>``: one data key each, wrapped; the highest id seals new writes;
- ``seals/<id, 4 bytes>``: plain JSON ``{"reserved": n}``: the DEK has sealed at most n
  values. The store raises it a block at a time before sealing, so a restart never
  counts from below what was used, and rotates before ``seal_limit`` (no secret, and
  like every record open to rollback by whoever can write the disk);
- ``shredded``: left alone after ``shred()``, so the store refuses to reopen.
Each wrapped record is bound to its tenant and record name, so wrapped keys cannot be
swapped between slots or tenants.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from percolate_common.files import sync_folder

from percolate_node.store.crypto import KEY_BYTES, unwrap, wrap
from percolate_node.store.errors import ShreddedError, StoreError, TamperedValueError, WrongKeyError
from percolate_node.store.layout import KEYS

KEYRING_FORMAT = 1
HEADER = b"header"
HMAC = b"hmac"
DEK_PREFIX = b"dek/"
SEALS_PREFIX = b"seals/"
SHREDDED = b"shredded"
EXPORT_KIND = "percolate-keyring"


def dek_record(dek_id: int) -> bytes:
    return DEK_PREFIX + dek_id.to_bytes(4, "big")


def seals_record(dek_id: int, reserved: int) -> tuple[bytes, bytes]:
    return SEALS_PREFIX + dek_id.to_bytes(4, "big"), json.dumps({"reserved": reserved}).encode()


def shredded_marker() -> bytes:
    return json.dumps({"shredded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}).encode()


@dataclass(repr=False)
class Keyring:
    """A tenant's secret keys in memory; on disk each is wrapped with the KEK.

    ``reserved`` holds each DEK's seal reservation (see ``seals/`` above); its repr names
    the DEK ids and never a key.
    """

    tenant_id: str
    hmac_key: bytes
    deks: dict[int, bytes]
    reserved: dict[int, int] = field(default_factory=dict)

    def __repr__(self) -> str:
        return (f"Keyring(tenant_id={self.tenant_id!r}, deks={sorted(self.deks)}, "
                f"reserved={self.reserved}, keys hidden)")

    @classmethod
    def new(cls, tenant_id: str) -> Keyring:
        return cls(tenant_id, os.urandom(KEY_BYTES), {1: os.urandom(KEY_BYTES)}, {1: 0})

    @property
    def active(self) -> int:
        return max(self.deks)

    def add_dek(self) -> int:
        dek_id = self.active + 1
        self.deks[dek_id] = os.urandom(KEY_BYTES)
        self.reserved[dek_id] = 0
        return dek_id

    def wrapped_dek(self, kek: bytes, dek_id: int) -> tuple[bytes, bytes]:
        name = dek_record(dek_id)
        return name, wrap(kek, self.deks[dek_id], self._context(name))

    def records(self, kek: bytes) -> dict[bytes, bytes]:
        """Every record of the ``keys`` family, wrapped with ``kek``."""
        records = {HEADER: json.dumps({"format": KEYRING_FORMAT, "tenant_id": self.tenant_id}).encode(),
                   HMAC: wrap(kek, self.hmac_key, self._context(HMAC))}
        records.update(self.wrapped_dek(kek, dek_id) for dek_id in self.deks)
        records.update(seals_record(dek_id, self.reserved[dek_id]) for dek_id in self.deks if dek_id in self.reserved)
        return records

    @classmethod
    def from_records(cls, tenant_id: str, kek: bytes, records: dict[bytes, bytes]) -> Keyring:
        """Unwrap a stored keyring; raises before anything else happens if the KEK is wrong."""
        if SHREDDED in records:
            when = json.loads(records[SHREDDED]).get("shredded_at", "?")
            raise ShreddedError(f"tenant keys were shredded at {when}; this data can never be read again")
        if HEADER not in records:
            raise StoreError("the keyring has no header: not a Percolate store")
        header = json.loads(records[HEADER])
        if header.get("format") != KEYRING_FORMAT:
            raise StoreError(f"keyring format {header.get('format')!r} is not supported by this version")
        if header.get("tenant_id") != tenant_id:
            raise WrongKeyError(f"this database belongs to tenant {header.get('tenant_id')!r}, not {tenant_id!r}")
        keyring = cls(tenant_id, b"", {})
        hmac_key = unwrap(kek, records.get(HMAC, b""), keyring._context(HMAC))
        if hmac_key is None:
            raise WrongKeyError(f"the KEK does not open the keyring of tenant {tenant_id!r} "
                                "(wrong KEK file?); nothing was changed")
        keyring.hmac_key = hmac_key
        for name, blob in records.items():
            if name.startswith(DEK_PREFIX):
                dek = unwrap(kek, blob, keyring._context(name))
                if dek is None:
                    raise TamperedValueError(KEYS, name, "wrapped DEK does not open with the KEK that opens the rest")
                keyring.deks[int.from_bytes(name[len(DEK_PREFIX):], "big")] = dek
            elif name.startswith(SEALS_PREFIX):
                try:
                    reserved = json.loads(blob)["reserved"]
                except (ValueError, KeyError, TypeError):
                    raise StoreError(f"the keyring's seal count {name!r} is unreadable") from None
                keyring.reserved[int.from_bytes(name[len(SEALS_PREFIX):], "big")] = int(reserved)
        if not keyring.deks:
            raise StoreError("the keyring holds no data key")
        return keyring

    def _context(self, name: bytes) -> bytes:
        return self.tenant_id.encode() + b"\0" + name


def write_keyring_file(path: Path, tenant_id: str, records: dict[bytes, bytes]) -> None:
    """Export wrapped keyring records (useless without the KEK) to ``path``, mode 0600, atomically.

    The body goes to a new file that ``mkstemp`` creates (O_EXCL, mode 0600: never an
    existing file or the target of a planted symlink), is fsynced, then renamed over
    ``path`` (a rename replaces a symlink at ``path``, never follows it) and the folder synced.
    """
    path = Path(path)
    body = json.dumps({"kind": EXPORT_KIND, "format": KEYRING_FORMAT, "tenant_id": tenant_id,
                       "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                       "records": {name.hex(): blob.hex() for name, blob in records.items()}}, indent=1)
    try:
        fd, partial = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    except OSError as error:
        raise StoreError(f"cannot write keyring file {path}: {error.strerror}") from None
    try:
        with os.fdopen(fd, "w") as file:
            file.write(body)
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, path)
    except BaseException as error:
        Path(partial).unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise StoreError(f"cannot write keyring file {path}: {error.strerror}") from None
        raise
    sync_folder(path.parent)


def read_keyring_file(path: Path) -> tuple[str, dict[bytes, bytes]]:
    """The tenant id and wrapped records of an exported keyring."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise StoreError(f"keyring file {path} does not exist") from None
    except (OSError, ValueError) as error:
        raise StoreError(f"cannot read keyring file {path}: {error}") from None
    if not isinstance(data, dict) or data.get("kind") != EXPORT_KIND or data.get("format") != KEYRING_FORMAT:
        raise StoreError(f"{path} is not an exported Percolate keyring (format {KEYRING_FORMAT})")
    records = {bytes.fromhex(name): bytes.fromhex(blob) for name, blob in data["records"].items()}
    return data["tenant_id"], records
