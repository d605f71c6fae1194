"""Errors of the encrypted store; the API maps them to gRPC status codes."""
from __future__ import annotations


class StoreError(Exception):
    """Anything the store refuses or cannot do; the message says what and where."""


class WrongKeyError(StoreError):
    """The KEK (or tenant id) given does not open this database's keyring."""


class ShreddedError(StoreError):
    """The tenant's keys were destroyed on purpose: the data can never be read again."""


class DataLossError(StoreError):
    """Stored data cannot be read back as it was written (DATA_LOSS); ``cf`` and ``key`` say where.

    The repair is a restore from a backup; ``percolate admin verify`` lists all of it.
    """

    cf: str = ""
    key: bytes = b""


class TamperedValueError(DataLossError):
    """A sealed value failed authentication: it was modified, moved or corrupted on disk (DATA_LOSS)."""

    def __init__(self, cf: str, key: bytes, reason: str) -> None:
        self.cf = cf
        self.key = key
        super().__init__(f"value at {cf}/{key.hex()} failed authentication ({reason}): "
                         "it was modified, moved or corrupted on disk")


class CorruptBlockError(DataLossError):
    """RocksDB cannot read the block holding ``key`` (or, in a scan, the block after it): its
    checksum or format is wrong, so every value in that block is unreadable (DATA_LOSS)."""

    def __init__(self, cf: str, key: bytes, reason: str, scan: bool = False) -> None:
        self.cf = cf
        self.key = key
        where = (f"{cf} after key {key.hex() or '(start)'}" if scan else f"{cf}/{key.hex()}")
        super().__init__(f"cannot read {where}: RocksDB reports {reason}; the block is corrupted on disk")
