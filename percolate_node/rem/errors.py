"""Errors of the REM repository; the API maps them to gRPC status codes."""
from __future__ import annotations


class RemError(Exception):
    """Base of REM errors."""


class InvalidRecordError(RemError, ValueError):
    """A record or request is malformed (INVALID_ARGUMENT)."""


class NotFoundError(RemError, LookupError):
    """The id names no live record (NOT_FOUND)."""
