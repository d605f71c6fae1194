"""A small PKI for tenant mutual TLS: one CA, server certificates, tenant client certificates.

The reading service authenticates nodes by the tenant URI SAN in their client certificate
(ARCHITECTURE.md); these functions make certificates that follow that contract. Files are
written atomically (temp file + rename) so a server re-reading them never sees half a file.
"""
from __future__ import annotations

import datetime as dt
import ipaddress
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .identity import TENANT_URI_PREFIX, replica_uri, validate_tenant_id

CA_CERT = "ca.pem"
CA_KEY = "ca.key"
SERVER_NAME = "server"
DEFAULT_HOSTNAMES = ("localhost",)
DEFAULT_IPS = ("127.0.0.1", "::1")
ORGANIZATION = "Percolate"
_BACKDATE = dt.timedelta(minutes=5)  # tolerate small clock skew between hosts
_REUSE_MARGIN = dt.timedelta(days=1)  # dev_pki reissues what would expire sooner than this


@dataclass(frozen=True)
class CertPaths:
    """A certificate, its private key, and the CA bundle its holder trusts."""

    cert: Path
    key: Path
    ca: Path


@dataclass(frozen=True)
class DevPki:
    """Everything a local run needs: the CA, the reading server's and each tenant's files."""

    root: Path
    ca: CertPaths
    server: CertPaths
    tenants: dict[str, CertPaths]


def create_ca(out_dir: str | os.PathLike[str], name: str = "Percolate dev CA",
              days: int = 3650, *, overwrite: bool = False) -> CertPaths:
    """Write a self-signed CA (``ca.pem``, ``ca.key``) to ``out_dir``.

    Refuses to replace an existing CA unless ``overwrite``: that would silently
    invalidate every certificate it issued.
    """
    paths = _ca_paths(Path(out_dir))
    if not overwrite and (paths.cert.exists() or paths.key.exists()):
        raise FileExistsError(f"a CA already exists in {paths.cert.parent}; replacing it "
                              "would invalidate every certificate it issued")
    key = ec.generate_private_key(ec.SECP256R1())
    subject = _name(name)
    not_before, not_after = _validity(days)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(digital_signature=True, key_cert_sign=True, crl_sign=True),
                       critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    _write(paths, cert, key)
    return paths


def issue_cert(ca_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], name: str, *,
               common_name: str, sans: list[x509.GeneralName],
               usage: Literal["server", "client"] | tuple[str, ...], days: int = 365,
               not_before: dt.datetime | None = None,
               not_after: dt.datetime | None = None) -> CertPaths:
    """Issue ``<name>.pem``/``<name>.key`` in ``out_dir`` from the CA in ``ca_dir``.

    The building block of the server and tenant helpers, for certificates they do not
    cover (an operator's client, a deliberately wrong one in a test). ``usage`` may name
    both ("server", "client"): a server whose own probe presents its certificate.
    """
    ca_cert, ca_key = _load_ca(Path(ca_dir))
    key = ec.generate_private_key(ec.SECP256R1())
    not_before, not_after = _validity(days, not_before, not_after)
    purposes = [{"server": ExtendedKeyUsageOID.SERVER_AUTH, "client": ExtendedKeyUsageOID.CLIENT_AUTH}[u]
                for u in ((usage,) if isinstance(usage, str) else usage)]
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage(purposes), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    paths = _leaf_paths(Path(ca_dir), Path(out_dir), name)
    _write(paths, builder.sign(ca_key, hashes.SHA256()), key)
    return paths


def issue_server_cert(ca_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str],
                      hostnames: Iterable[str] = DEFAULT_HOSTNAMES,
                      ips: Iterable[str] = DEFAULT_IPS, days: int = 365) -> CertPaths:
    """Issue ``server.pem``/``server.key`` (serverAuth) for the given DNS names and IPs."""
    sans = _server_sans(hostnames, ips)
    return issue_cert(ca_dir, out_dir, SERVER_NAME, common_name=str(sans[0].value),
                      sans=sans, usage="server", days=days)


def issue_tenant_cert(ca_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str],
                      tenant_id: str, days: int = 365, not_before: dt.datetime | None = None,
                      not_after: dt.datetime | None = None) -> CertPaths:
    """Issue ``tenant-<id>.pem``/``.key`` (clientAuth, one URI SAN naming the tenant)."""
    validate_tenant_id(tenant_id)
    return issue_cert(ca_dir, out_dir, _tenant_name(tenant_id), common_name=tenant_id,
                      sans=_tenant_sans(tenant_id), usage="client", days=days,
                      not_before=not_before, not_after=not_after)


def issue_replica_cert(ca_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], tenant_id: str,
                       hostnames: Iterable[str] = DEFAULT_HOSTNAMES, ips: Iterable[str] = DEFAULT_IPS,
                       days: int = 365) -> CertPaths:
    """Issue ``replica-<id>.pem``/``.key``: the node-to-node identity of a tenant's replicas.

    One URI SAN ``spiffe://percolate/tenant/<id>/replica`` (a replica, not a tenant client:
    the node API refuses it and the replication port accepts nothing else), DNS/IP SANs for
    the peer's host name check, and both serverAuth and clientAuth (each replica is the
    other's server and client, by role).
    """
    validate_tenant_id(tenant_id)
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(replica_uri(tenant_id))]
    sans += _server_sans(hostnames, ips)
    return issue_cert(ca_dir, out_dir, f"replica-{tenant_id}", common_name=f"{tenant_id} replica",
                      sans=sans, usage=("server", "client"), days=days)


def dev_pki(root: str | os.PathLike[str], tenants: Iterable[str] = ()) -> DevPki:
    """A CA, a localhost server certificate and tenant certificates, all under ``root``.

    Idempotent: files that are still valid (matching key, issued by the CA, right SANs,
    not expiring within a day) are reused, so restarting a demo keeps its certificates.
    """
    root = Path(root)
    tenant_ids = [validate_tenant_id(t) for t in tenants]  # fail before writing anything
    ca = _ca_paths(root)
    if not _reusable(ca, set(), issuer=None):
        create_ca(root, overwrite=True)
    ca_cert = _load_cert(ca.cert)
    server = _leaf_paths(root, root, SERVER_NAME)
    if not _reusable(server, set(_server_sans(DEFAULT_HOSTNAMES, DEFAULT_IPS)), ca_cert):
        server = issue_server_cert(root, root)
    issued: dict[str, CertPaths] = {}
    for tenant_id in tenant_ids:
        paths = _leaf_paths(root, root, _tenant_name(tenant_id))
        if not _reusable(paths, set(_tenant_sans(tenant_id)), ca_cert):
            paths = issue_tenant_cert(root, root, tenant_id)
        issued[tenant_id] = paths
    return DevPki(root=root, ca=ca, server=server, tenants=issued)


def key_matches(cert: x509.Certificate, key: PrivateKeyTypes) -> bool:
    """Whether ``key`` is the private half of ``cert``'s public key."""
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    return (cert.public_key().public_bytes(serialization.Encoding.DER, spki)
            == key.public_key().public_bytes(serialization.Encoding.DER, spki))


def _ca_paths(out_dir: Path) -> CertPaths:
    return CertPaths(cert=out_dir / CA_CERT, key=out_dir / CA_KEY, ca=out_dir / CA_CERT)


def _leaf_paths(ca_dir: Path, out_dir: Path, name: str) -> CertPaths:
    return CertPaths(cert=out_dir / f"{name}.pem", key=out_dir / f"{name}.key",
                     ca=ca_dir / CA_CERT)


def _tenant_name(tenant_id: str) -> str:
    return f"tenant-{tenant_id}"


def _tenant_sans(tenant_id: str) -> list[x509.GeneralName]:
    return [x509.UniformResourceIdentifier(TENANT_URI_PREFIX + tenant_id)]


def _server_sans(hostnames: Iterable[str], ips: Iterable[str]) -> list[x509.GeneralName]:
    sans: list[x509.GeneralName] = [x509.DNSName(h) for h in hostnames]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    if not sans:
        raise ValueError("a server certificate needs at least one hostname or IP address")
    return sans


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key_usage(**granted: bool) -> x509.KeyUsage:
    flags = dict.fromkeys(("digital_signature", "content_commitment", "key_encipherment",
                           "data_encipherment", "key_agreement", "key_cert_sign", "crl_sign",
                           "encipher_only", "decipher_only"), False)
    return x509.KeyUsage(**(flags | granted))


def _validity(days: int, not_before: dt.datetime | None = None,
              not_after: dt.datetime | None = None) -> tuple[dt.datetime, dt.datetime]:
    now = dt.datetime.now(dt.timezone.utc)
    if not_after is None and days <= 0:
        raise ValueError(f"days must be positive, not {days}")
    start = _utc(not_before) if not_before else now - _BACKDATE
    end = _utc(not_after) if not_after else now + dt.timedelta(days=days)
    if end <= start:
        raise ValueError(f"certificate would expire ({end:%Y-%m-%d %H:%M}) "
                         f"before it starts ({start:%Y-%m-%d %H:%M})")
    return start, end


def _utc(moment: dt.datetime) -> dt.datetime:
    """Naive datetimes are taken as UTC, as cryptography does."""
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)


def _load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _load_ca(ca_dir: Path) -> tuple[x509.Certificate, PrivateKeyTypes]:
    paths = _ca_paths(ca_dir)
    try:
        cert = _load_cert(paths.cert)
        key = serialization.load_pem_private_key(paths.key.read_bytes(), password=None)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"no CA in {ca_dir}: {err.filename} is missing") from None
    except TypeError as err:  # an encrypted key: this dev tool does not take passwords
        raise ValueError(f"{paths.key}: {err}") from None
    if not key_matches(cert, key):
        raise ValueError(f"{paths.key} is not the key of {paths.cert}")
    return cert, key


def _reusable(paths: CertPaths, sans: set[x509.GeneralName],
              issuer: x509.Certificate | None) -> bool:
    """Whether ``paths`` hold a current certificate with its key, from ``issuer`` (None: self)."""
    try:
        cert = _load_cert(paths.cert)
        key = serialization.load_pem_private_key(paths.key.read_bytes(), password=None)
        cert.verify_directly_issued_by(issuer or cert)
    except (OSError, ValueError, TypeError, InvalidSignature):
        return False
    now = dt.datetime.now(dt.timezone.utc)
    return (key_matches(cert, key)
            and cert.not_valid_before_utc <= now
            and cert.not_valid_after_utc > now + _REUSE_MARGIN
            and _sans_of(cert) == sans)


def _sans_of(cert: x509.Certificate) -> set[x509.GeneralName]:
    try:
        return set(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        return set()


def _write(paths: CertPaths, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
    paths.cert.parent.mkdir(parents=True, exist_ok=True)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    _write_atomic(paths.key, key_pem, 0o600)
    _write_atomic(paths.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Readers see the old file or the new one, never a partial one; mode is set before data."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
