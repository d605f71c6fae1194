"""Errors of the REM repository; the API maps them to gRPC status codes."""
from __future__ import annotations


class RemError(Exception):
    """Base of REM errors."""


class InvalidRecordError(RemError, ValueError):
    """A record or request is malformed (INVALID_ARGUMENT)."""


class NotFoundError(RemError, LookupError):
    """The id names no live record (NOT_FOUND)."""


class DamagedRecordError(RemError):
    """A record cannot be read back from disk (DATA_LOSS): its block or its seal is damaged.

    Names the record (kind and id) and where it lies (column family and key).
    """

    def __init__(self, kind: str, record_id: str, cause: Exception) -> None:
        self.kind = kind
        self.record_id = record_id
        self.cf = getattr(cause, "cf", "")
        self.key = getattr(cause, "key", b"")
        self.reason = str(cause)
        super().__init__(f"{kind} {record_id} is damaged on disk ({self.cf}/{self.key.hex()}): {cause}. "
                         "`percolate admin verify` lists all damage; the repair is a restore from a backup")
