"""The tenant a gRPC peer is, read from its client certificate (ARCHITECTURE.md contract).

A node's client certificate carries exactly one URI SAN ``spiffe://percolate/tenant/<id>``.
Server interceptors cannot see certificates, so handlers call
``tenant_from_auth_context(context.auth_context())`` themselves and abort with the
error's ``code`` when it raises.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import grpc
from cryptography import x509

TENANT_URI_PREFIX = "spiffe://percolate/tenant/"
TENANT_ID_PATTERN = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_SHOWN_CHARS = 80  # untrusted strings echoed in messages are cut so a status never balloons


class IdentityError(Exception):
    """The peer's tenant identity is unusable; ``code`` is the gRPC status to answer with."""

    code = grpc.StatusCode.UNAUTHENTICATED


class MissingIdentityError(IdentityError):
    """No client certificate: a plaintext connection, or TLS without client auth."""


class InvalidIdentityError(IdentityError):
    """A certificate that does not name exactly one valid tenant."""


class TenantMismatchError(IdentityError):
    """The request declares a tenant other than the certificate's."""

    code = grpc.StatusCode.PERMISSION_DENIED


def validate_tenant_id(tenant_id: str) -> str:
    """Return ``tenant_id`` unchanged, or raise ValueError saying what the rule is."""
    if not isinstance(tenant_id, str) or not TENANT_ID_PATTERN.fullmatch(tenant_id):
        raise ValueError(
            f"invalid tenant id {_shown(tenant_id)}: use 1-63 lowercase letters, digits "
            "and hyphens, not starting with a hyphen ([a-z0-9][a-z0-9-]{0,62})")
    return tenant_id


def tenant_from_uri(uri: str) -> str:
    """The tenant id in a ``spiffe://percolate/tenant/<id>`` URI."""
    if not uri.startswith(TENANT_URI_PREFIX):
        raise InvalidIdentityError(
            f"certificate URI SAN {_shown(uri)} is not a tenant identity "
            f"(expected {TENANT_URI_PREFIX}<tenant_id>)")
    try:
        return validate_tenant_id(uri[len(TENANT_URI_PREFIX):])
    except ValueError as err:
        raise InvalidIdentityError(f"certificate has an {err}") from None


def tenant_from_certificate(cert: x509.Certificate) -> str:
    """The tenant a certificate names; it must carry exactly one URI SAN."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    if len(uris) != 1:
        raise InvalidIdentityError(
            f"certificate has {len(uris)} URI SANs; a tenant certificate has exactly one, "
            f"{TENANT_URI_PREFIX}<tenant_id>")
    return tenant_from_uri(uris[0])


def tenant_from_auth_context(auth_context: Mapping[str, Sequence[bytes]]) -> str:
    """The tenant of the peer behind ``grpc.ServicerContext.auth_context()``.

    gRPC fills ``peer_spiffe_id`` only when the certificate has exactly one URI SAN;
    otherwise the PEM certificate is parsed so the error can say what is wrong.
    """
    spiffe_id = _first(auth_context, "peer_spiffe_id")
    if spiffe_id:
        return tenant_from_uri(spiffe_id.decode("utf-8", "replace"))
    pem = _first(auth_context, "x509_pem_cert")
    if not pem:
        transport = (_first(auth_context, "transport_security_type") or b"none").decode()
        if transport != "ssl":
            raise MissingIdentityError(
                f"connection is not TLS (transport security: {transport}); "
                "mutual TLS with a tenant certificate is required")
        raise MissingIdentityError("peer presented no client certificate; "
                                   "a tenant certificate is required")
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError as err:
        raise InvalidIdentityError(f"peer certificate is unreadable: {err}") from None
    return tenant_from_certificate(cert)


REPLICA_SUFFIX = "/replica"


def replica_uri(tenant_id: str) -> str:
    """The URI SAN of a tenant's replica certificate (node-to-node replication)."""
    return TENANT_URI_PREFIX + validate_tenant_id(tenant_id) + REPLICA_SUFFIX


def replica_tenant_from_auth_context(auth_context: Mapping[str, Sequence[bytes]]) -> str:
    """The tenant whose replica the peer is: its certificate's one URI SAN must be
    ``spiffe://percolate/tenant/<id>/replica``; a tenant client certificate is refused."""
    spiffe_id = _first(auth_context, "peer_spiffe_id")
    if not spiffe_id:
        if _first(auth_context, "x509_pem_cert"):
            raise InvalidIdentityError("peer certificate does not carry exactly one URI SAN; a replica "
                                       f"certificate names {TENANT_URI_PREFIX}<tenant_id>{REPLICA_SUFFIX}")
        raise MissingIdentityError("peer presented no client certificate; a replica certificate is required")
    uri = spiffe_id.decode("utf-8", "replace")
    if not uri.endswith(REPLICA_SUFFIX):
        raise InvalidIdentityError(f"certificate URI SAN {_shown(uri)} is not a replica identity "
                                   f"(expected {TENANT_URI_PREFIX}<tenant_id>{REPLICA_SUFFIX})")
    return tenant_from_uri(uri[:-len(REPLICA_SUFFIX)])


def check_declared_tenant(cert_tenant: str, declared: str | None) -> str:
    """Return the certificate's tenant; a non-empty declared tenant must equal it."""
    if declared and declared != cert_tenant:
        raise TenantMismatchError(
            f"request is for tenant {_shown(declared)} but the client certificate "
            f"is for tenant {cert_tenant!r}")
    return cert_tenant


def _first(auth_context: Mapping[str, Sequence[bytes]], key: str) -> bytes | None:
    values = auth_context.get(key) or ()
    return values[0] if values else None


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "..."
