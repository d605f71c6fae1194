"""Who may call a tenant's node: a client certificate from the tenant's CA naming this
tenant, or (local use) the node's bearer token. Checked in every handler, where the
peer certificate is visible."""
from __future__ import annotations

import hmac
from pathlib import Path

import grpc

from percolate_certs.identity import IdentityError, tenant_from_auth_context

from .errors import PermissionDeniedError, UnauthenticatedError


class NodeAuthenticator:
    def __init__(self, tenant_id: str, token_file: Path | None) -> None:
        self.tenant_id = tenant_id
        self._token = token_file.read_text().strip().encode() if token_file else None
        if token_file and len(self._token) < 16:
            raise ValueError(f"{token_file}: the bearer token must be at least 16 characters")

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
