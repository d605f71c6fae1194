"""The node's errors and the one place they become gRPC status codes."""
from __future__ import annotations

import grpc


class NodeError(Exception):
    code = grpc.StatusCode.INTERNAL


class InvalidRequestError(NodeError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFoundError(NodeError):
    code = grpc.StatusCode.NOT_FOUND


class UnauthenticatedError(NodeError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDeniedError(NodeError):
    code = grpc.StatusCode.PERMISSION_DENIED


class ReadingServiceError(NodeError):
    """The reading service refused or failed; its status is passed on unchanged."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"reading service: {details}")
        self.code = code


class BackupsNotConfiguredError(NodeError):
    code = grpc.StatusCode.FAILED_PRECONDITION

    def __init__(self) -> None:
        super().__init__("backups are not configured on this node: set PERCOLATE_NODE_BACKUP_URL")


def status_for(error: BaseException) -> tuple[grpc.StatusCode, str]:
    from .rem import InvalidRecordError
    from .rem import NotFoundError as RecordNotFound
    from .rem.errors import DamagedRecordError
    from .store.errors import DataLossError, StoreError

    if isinstance(error, NodeError):
        return error.code, str(error)
    if isinstance(error, InvalidRecordError):
        return grpc.StatusCode.INVALID_ARGUMENT, str(error)
    if isinstance(error, RecordNotFound):
        return grpc.StatusCode.NOT_FOUND, str(error)
    if isinstance(error, (DataLossError, DamagedRecordError)):  # damaged on disk; names the record or key
        return grpc.StatusCode.DATA_LOSS, str(error)
    from .durability.errors import ObjectStoreUnavailableError

    if isinstance(error, ObjectStoreUnavailableError):
        return grpc.StatusCode.UNAVAILABLE, str(error)
    if isinstance(error, StoreError):
        return grpc.StatusCode.FAILED_PRECONDITION, str(error)
    return grpc.StatusCode.INTERNAL, f"internal error ({type(error).__name__}); it has been logged"
