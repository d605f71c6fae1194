"""Errors of backups and restores; each message names the object or record concerned."""
from __future__ import annotations

from percolate_node.store.errors import StoreError


class BackupError(StoreError):
    """A backup, shipping or restore step failed; the message says which object and what to do."""


class ObjectExistsError(BackupError):
    """A create-only write found the object already there (another writer, or a retry)."""


class ObjectMissingError(BackupError):
    """An object a manifest or the log chain needs is not in the object store."""


class ObjectStoreUnavailableError(BackupError):
    """The object store could not be reached or refused the request; retried with backoff."""


class CorruptObjectError(BackupError):
    """An object's bytes do not match its manifest checksum or its own framing."""


class FencedError(BackupError):
    """A write from an older epoch than one already in the object store: refused."""
