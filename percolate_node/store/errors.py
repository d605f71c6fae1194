"""Errors of the encrypted store; the API maps them to gRPC status codes."""
from __future__ import annotations


class StoreError(Exception):
    """Anything the store refuses or cannot do; the message says what and where."""


class WrongKeyError(StoreError):
    """The KEK (or tenant id) given does not open this database's keyring."""


class ShreddedError(StoreError):
    """The tenant's keys were destroyed on purpose: the data can never be read again."""


class TamperedValueError(StoreError):
    """A sealed value failed authentication: it was modified, moved or corrupted on disk (DATA_LOSS)."""

    def __init__(self, cf: str, key: bytes, reason: str) -> None:
        self.cf = cf
        self.key = key
        super().__init__(f"value at {cf}/{key.hex()} failed authentication ({reason}): "
                         "it was modified, moved or corrupted on disk")
