"""Who may call a tenant's node: a client certificate from the tenant's CA naming this
tenant, or (local use) the node's bearer token. Checked in every handler, where the
peer certificate is visible.

The token file is a key file: it must belong to this user (or root), allow no group or
other access (group read only with ``key_files_group_readable``), and hold 16 to 4096
characters. ``generate_token_file`` (``percolate keys token FILE``) makes one."""
from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

import grpc

from percolate_certs.identity import IdentityError, tenant_from_auth_context

from .errors import PermissionDeniedError, UnauthenticatedError
from .store.errors import StoreError
from .store.kek import read_secret_file

TOKEN_MIN_CHARS = 16
TOKEN_MAX_BYTES = 4096


class NodeAuthenticator:
    def __init__(self, tenant_id: str, token_file: Path | None, allow_group_read: bool = False) -> None:
        self.tenant_id = tenant_id
        self._token = read_token_file(token_file, allow_group_read) if token_file else None

    def check(self, context: grpc.aio.ServicerContext) -> str:
        """How the caller proved itself ("certificate" or "token"); raises otherwise."""
        header = dict(context.invocation_metadata() or ()).get("authorization", "")
        if header:
            scheme, _, token = header.partition(" ")
            if self._token is None or scheme.lower() != "bearer" or not hmac.compare_digest(
                    token.strip().encode(), self._token):
                raise UnauthenticatedError("the bearer token is missing or wrong")
            return "token"
        try:
            caller = tenant_from_auth_context(context.auth_context())
        except IdentityError as err:
            raise UnauthenticatedError(
                f"{err}; present a client certificate from the tenant's CA or a bearer token") from None
        if caller != self.tenant_id:
            raise PermissionDeniedError(
                f"this node belongs to tenant {self.tenant_id!r}, not to {caller!r}")
        return "certificate"


def read_token_file(path: Path, allow_group_read: bool = False) -> bytes:
    """The bearer token in ``path``, after the key-file checks; ValueError saying what is wrong."""
    try:
        token = read_secret_file(path, "bearer-token file", allow_group_read, TOKEN_MAX_BYTES).strip()
    except StoreError as err:
        raise ValueError(str(err)) from None
    if len(token) < TOKEN_MIN_CHARS:
        raise ValueError(f"{path}: the bearer token must be at least {TOKEN_MIN_CHARS} characters")
    if not all(0x21 <= byte < 0x7f for byte in token):
        raise ValueError(f"{path}: the bearer token must be printable ASCII without spaces")
    return token


def generate_token_file(path: Path) -> str:
    """Write a new random token (43 URL-safe characters) to ``path``, mode 0600, never over a file."""
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(token + "\n")
        file.flush()
        os.fsync(file.fileno())
    return token
