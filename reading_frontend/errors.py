"""The reading service's errors, and the one place they become gRPC status codes.

Plain functions raise these (or the parsing/OCR/tokenizer errors mapped below); the
servicers never choose status codes themselves. Messages say what was wrong and are
safe to return: no stack traces, no request content.
"""
from __future__ import annotations

import grpc


class ReadingError(Exception):
    code = grpc.StatusCode.INTERNAL


class InvalidInputError(ReadingError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class TooLargeError(ReadingError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class QueueFullError(ReadingError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class UnauthenticatedError(ReadingError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDeniedError(ReadingError):
    code = grpc.StatusCode.PERMISSION_DENIED


class BackendUnavailableError(ReadingError):
    """Triton is unreachable or not ready, or the service is draining."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineError(ReadingError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class NotFoundError(ReadingError):
    code = grpc.StatusCode.NOT_FOUND


class CpuBudgetError(ReadingError):
    """A request used up its CPU budget (the message names the setting)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


def status_for(error: BaseException) -> tuple[grpc.StatusCode, str]:
    """The gRPC status and message for any error a handler may meet."""
    from percolate_certs.identity import (InvalidIdentityError, MissingIdentityError,
                                          TenantMismatchError)

    from .parsing import DocumentTooLargeError, DocumentError
    from .speech import AudioTooLongError, UnreadableAudioError
    from .text import TextTooLongError

    if isinstance(error, ReadingError):
        return error.code, str(error)
    if isinstance(error, AudioTooLongError):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, str(error)
    if isinstance(error, UnreadableAudioError):
        return grpc.StatusCode.INVALID_ARGUMENT, str(error)
    if isinstance(error, DocumentTooLargeError):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, str(error)
    if isinstance(error, (DocumentError, TextTooLongError)):
        return grpc.StatusCode.INVALID_ARGUMENT, str(error)
    if isinstance(error, (MissingIdentityError, InvalidIdentityError)):
        return grpc.StatusCode.UNAUTHENTICATED, str(error)
    if isinstance(error, TenantMismatchError):
        return grpc.StatusCode.PERMISSION_DENIED, str(error)
    return grpc.StatusCode.INTERNAL, f"internal error ({type(error).__name__}); it has been logged"
