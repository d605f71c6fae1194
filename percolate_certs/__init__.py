"""Certificates and mutual TLS for tenant identity: a dev CA, gRPC credentials, peer tenant."""
from .ca import (CertPaths, DevPki, create_ca, dev_pki, issue_cert, issue_replica_cert,
                 issue_server_cert, issue_tenant_cert, key_matches)
from .identity import (TENANT_URI_PREFIX, IdentityError, InvalidIdentityError,
                       MissingIdentityError, TenantMismatchError, check_declared_tenant,
                       replica_tenant_from_auth_context, replica_uri,
                       tenant_from_auth_context, tenant_from_certificate, validate_tenant_id)
from .tls import channel_credentials, server_credentials

__all__ = [
    "TENANT_URI_PREFIX", "CertPaths", "DevPki", "IdentityError", "InvalidIdentityError",
    "MissingIdentityError", "TenantMismatchError", "channel_credentials",
    "check_declared_tenant", "create_ca", "dev_pki", "issue_cert", "issue_replica_cert", "issue_server_cert",
    "replica_tenant_from_auth_context", "replica_uri",
    "issue_tenant_cert", "key_matches", "server_credentials", "tenant_from_auth_context",
    "tenant_from_certificate", "validate_tenant_id",
]
