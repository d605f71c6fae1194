"""Document errors with one-line messages the server can return as they are.

All derive from ``DocumentError(ValueError)`` so callers can map the whole family to
INVALID_ARGUMENT (or RESOURCE_EXHAUSTED for ``DocumentTooLargeError``) in one place.
"""
from __future__ import annotations


class DocumentError(ValueError):
    """The document cannot be parsed; the message says why, on one line."""


class EmptyDocumentError(DocumentError):
    """No bytes were sent."""


class UnsupportedFormatError(DocumentError):
    """The content is not one of the formats this service reads."""


class CorruptDocumentError(DocumentError):
    """The format was recognised but the file is damaged or truncated."""


class EncryptedDocumentError(DocumentError):
    """The document needs a password we do not have."""


class DocumentTooLargeError(DocumentError):
    """The document exceeds a ParseLimits bound (pages, bytes, pixels, zip ratio)."""


def one_line(error: BaseException, limit: int = 200) -> str:
    """A library exception as a short single line: never a traceback or a multi-line dump."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"
