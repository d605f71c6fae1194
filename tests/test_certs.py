"""Tenant mutual TLS end to end: certificates from percolate_certs on a real gRPC server.

The server runs the standard Health service plus a tiny WhoAmI handler that answers with
the tenant it reads from the peer certificate, so each test sees what a reading frontend
would see.
"""
from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from percolate_certs import (TENANT_URI_PREFIX, CertPaths, DevPki, IdentityError,
                             InvalidIdentityError, MissingIdentityError, TenantMismatchError,
                             channel_credentials, check_declared_tenant, create_ca, dev_pki,
                             issue_cert, issue_server_cert, issue_tenant_cert,
                             server_credentials, tenant_from_auth_context)
from percolate_certs.cli import main

ROOT = Path(__file__).resolve().parents[1]
SERVICE = "percolate.test.Echo"
NOW = dt.datetime.now(dt.timezone.utc)


@dataclass(frozen=True)
class Ports:
    tls: int
    plaintext: int


def _whoami(request: bytes, context: grpc.ServicerContext) -> bytes:
    """Answers with the tenant the server sees; the request is the declared tenant."""
    try:
        tenant = tenant_from_auth_context(context.auth_context())
        return check_declared_tenant(tenant, request.decode()).encode()
    except IdentityError as err:
        context.abort(err.code, f"{type(err).__name__}: {err}")


@contextmanager
def serving(paths: CertPaths, require_client_auth: bool = True) -> Iterator[Ports]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
        SERVICE, {"WhoAmI": grpc.unary_unary_rpc_method_handler(_whoami)})])
    ports = Ports(tls=server.add_secure_port("127.0.0.1:0",
                                             server_credentials(paths, require_client_auth)),
                  plaintext=server.add_insecure_port("127.0.0.1:0"))
    server.start()
    try:
        yield ports
    finally:
        server.stop(None)


def creds(ca: Path, client: CertPaths | None = None) -> grpc.ChannelCredentials:
    if client is None:
        return channel_credentials(ca)
    return channel_credentials(ca, client.cert, client.key)


def whoami(port: int, credentials: grpc.ChannelCredentials | None, declared: str = "") -> str:
    """One call on a new channel (a channel keeps its handshake, so each check gets one)."""
    target = f"127.0.0.1:{port}"
    channel = (grpc.secure_channel(target, credentials) if credentials
               else grpc.insecure_channel(target))
    with channel:
        return channel.unary_unary(f"/{SERVICE}/WhoAmI")(declared.encode(), timeout=5).decode()


def rpc_error(port: int, credentials: grpc.ChannelCredentials | None,
              declared: str = "") -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        whoami(port, credentials, declared)
    return info.value


def replace_file(path: Path, data: bytes) -> None:
    """Rotate like a secret mount or cert-manager would: a complete new file, renamed in."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_bytes(data)
    os.replace(tmp, path)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    return dev_pki(tmp_path_factory.mktemp("pki"), ["acme", "globex"])


@pytest.fixture(scope="module")
def ports(pki: DevPki) -> Iterator[Ports]:
    with serving(pki.server) as ports:
        yield ports


def test_tenant_certificate_is_accepted_and_names_its_tenant(pki: DevPki, ports: Ports) -> None:
    assert whoami(ports.tls, creds(pki.ca.cert, pki.tenants["acme"])) == "acme"
    assert whoami(ports.tls, creds(pki.ca.cert, pki.tenants["globex"])) == "globex"
    with grpc.secure_channel(f"127.0.0.1:{ports.tls}",
                             creds(pki.ca.cert, pki.tenants["acme"])) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                          timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_no_client_certificate_fails_the_handshake(pki: DevPki, ports: Ports) -> None:
    assert rpc_error(ports.tls, creds(pki.ca.cert)).code() == grpc.StatusCode.UNAVAILABLE


def test_certificate_from_another_ca_fails(pki: DevPki, ports: Ports, tmp_path: Path) -> None:
    create_ca(tmp_path, name="Intruder CA")
    intruder = issue_tenant_cert(tmp_path, tmp_path, "acme")
    error = rpc_error(ports.tls, creds(pki.ca.cert, intruder))
    assert error.code() == grpc.StatusCode.UNAVAILABLE


def test_expired_certificate_fails(pki: DevPki, ports: Ports, tmp_path: Path) -> None:
    expired = issue_tenant_cert(pki.root, tmp_path, "acme",
                                not_before=NOW - dt.timedelta(days=30),
                                not_after=NOW - dt.timedelta(days=1))
    error = rpc_error(ports.tls, creds(pki.ca.cert, expired))
    assert error.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize(("sans", "problem"), [
    ([x509.UniformResourceIdentifier("https://percolate.example/tenant/acme")],
     "is not a tenant identity"),
    ([x509.DNSName("acme.percolate.example")], "has 0 URI SANs"),
    ([x509.UniformResourceIdentifier(TENANT_URI_PREFIX + "acme"),
      x509.UniformResourceIdentifier(TENANT_URI_PREFIX + "globex")], "has 2 URI SANs"),
    ([x509.UniformResourceIdentifier(TENANT_URI_PREFIX + "Acme_Corp")], "invalid tenant id"),
], ids=["other-uri", "no-uri", "two-tenants", "bad-tenant-id"])
def test_certificate_without_one_valid_tenant_uri_is_rejected_by_the_server(
        pki: DevPki, ports: Ports, tmp_path: Path, sans: list[x509.GeneralName],
        problem: str) -> None:
    client = issue_cert(pki.root, tmp_path, "client", common_name="acme", sans=sans,
                        usage="client")
    error = rpc_error(ports.tls, creds(pki.ca.cert, client))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error.details().startswith("InvalidIdentityError: ")
    assert problem in error.details()


def test_declared_tenant_must_match_the_certificate(pki: DevPki, ports: Ports) -> None:
    acme = creds(pki.ca.cert, pki.tenants["acme"])
    assert whoami(ports.tls, acme, declared="acme") == "acme"
    error = rpc_error(ports.tls, acme, declared="globex")
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error.details() == ("TenantMismatchError: request is for tenant 'globex' "
                               "but the client certificate is for tenant 'acme'")
    assert check_declared_tenant("acme", "") == "acme"
    assert check_declared_tenant("acme", None) == "acme"
    with pytest.raises(TenantMismatchError, match="x" * 40 + r"\.\.\."):
        check_declared_tenant("acme", "x" * 10_000)  # untrusted input is cut in the message


def test_plaintext_connection_has_no_identity(ports: Ports) -> None:
    error = rpc_error(ports.plaintext, None)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error.details().startswith("MissingIdentityError: connection is not TLS")


def test_without_required_client_auth_grpc_does_not_ask_for_a_certificate(pki: DevPki) -> None:
    """grpcio's require_client_auth=False means "do not request", not "optional"."""
    with serving(pki.server, require_client_auth=False) as ports:
        error = rpc_error(ports.tls, creds(pki.ca.cert, pki.tenants["acme"]))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "no client certificate" in error.details()


def test_auth_context_edge_cases() -> None:
    with pytest.raises(MissingIdentityError):
        tenant_from_auth_context({})
    with pytest.raises(MissingIdentityError, match="no client certificate"):
        tenant_from_auth_context({"transport_security_type": [b"ssl"]})
    with pytest.raises(InvalidIdentityError, match="not a tenant identity"):
        tenant_from_auth_context({"peer_spiffe_id": [b"spiffe://other/tenant/acme"]})
    with pytest.raises(InvalidIdentityError, match="unreadable"):
        tenant_from_auth_context({"x509_pem_cert": [b"not a certificate"]})
    assert tenant_from_auth_context({"peer_spiffe_id": [b"spiffe://percolate/tenant/a-1"]}) == "a-1"


def test_rotation_is_picked_up_by_new_connections_without_restart(
        pki: DevPki, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="percolate_certs.tls")
    live = tmp_path / "live"
    live.mkdir()
    for source in (pki.server.cert, pki.server.key, pki.ca.cert):
        shutil.copy(source, live / source.name)
    served = CertPaths(cert=live / "server.pem", key=live / "server.key", ca=live / "ca.pem")
    new_ca = create_ca(tmp_path / "ca2", name="Percolate rotated CA")
    initech = issue_tenant_cert(new_ca.cert.parent, tmp_path / "ca2", "initech")
    acme = creds(pki.ca.cert, pki.tenants["acme"])

    with serving(served) as ports:
        assert whoami(ports.tls, acme) == "acme"
        error = rpc_error(ports.tls, creds(pki.ca.cert, initech))
        assert error.code() == grpc.StatusCode.UNAVAILABLE

        # 1. the trust bundle gains the new CA: its tenants get in, the old ones still do
        replace_file(served.ca, pki.ca.cert.read_bytes() + new_ca.cert.read_bytes())
        assert whoami(ports.tls, creds(pki.ca.cert, initech)) == "initech"
        assert whoami(ports.tls, acme) == "acme"

        # 2. a half-rotated pair (key no longer matches the cert) is not served
        replace_file(served.key, initech.key.read_bytes())
        assert whoami(ports.tls, acme) == "acme"

        # 3. a server certificate from the new CA: only a client that trusts nothing but
        #    the new CA proves the server now presents it
        trusts_new_ca_only = creds(new_ca.cert, initech)
        old_serial = x509.load_pem_x509_certificate(served.cert.read_bytes()).serial_number
        issue_server_cert(new_ca.cert.parent, live)
        assert x509.load_pem_x509_certificate(served.cert.read_bytes()).serial_number != old_serial
        assert whoami(ports.tls, trusts_new_ca_only) == "initech"
        assert rpc_error(ports.tls, acme).code() == grpc.StatusCode.UNAVAILABLE  # old trust

    messages = [r.getMessage() for r in caplog.records]
    assert sum(m.startswith("reloaded TLS certificate") for m in messages) == 2
    assert sum("not reloaded" in m and "is not the key of" in m for m in messages) == 1


def test_tenant_certificate_follows_the_identity_contract(pki: DevPki) -> None:
    cert = x509.load_pem_x509_certificate(pki.tenants["acme"].cert.read_bytes())
    ext = cert.extensions
    assert ext.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert list(ext.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH]
    assert ext.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier) == ["spiffe://percolate/tenant/acme"]
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "acme"
    ca = x509.load_pem_x509_certificate(pki.ca.cert.read_bytes())
    cert.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True


@pytest.mark.parametrize("bad", ["Bad_ID", "-leading-hyphen", "", "a" * 64, "acme/../x"])
def test_tenant_ids_are_validated(pki: DevPki, tmp_path: Path, bad: str) -> None:
    with pytest.raises(ValueError, match="invalid tenant id"):
        issue_tenant_cert(pki.root, tmp_path, bad)
    assert not list(tmp_path.iterdir())


def test_dev_pki_reuses_valid_files_and_replaces_expired_ones(tmp_path: Path) -> None:
    first = dev_pki(tmp_path, ["acme"])
    ca_pem, acme_pem = first.ca.cert.read_bytes(), first.tenants["acme"].cert.read_bytes()
    again = dev_pki(tmp_path, ["acme", "globex"])
    assert again.ca.cert.read_bytes() == ca_pem
    assert again.tenants["acme"].cert.read_bytes() == acme_pem
    issue_tenant_cert(tmp_path, tmp_path, "acme", not_before=NOW - dt.timedelta(days=3),
                      not_after=NOW - dt.timedelta(days=1))
    dev_pki(tmp_path, ["acme"])
    renewed = x509.load_pem_x509_certificate(first.tenants["acme"].cert.read_bytes())
    assert renewed.not_valid_after_utc > NOW + dt.timedelta(days=300)
    assert first.ca.cert.read_bytes() == ca_pem


def test_cli_dev_writes_the_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "certs"
    assert main(["dev", "--out", str(out), "--tenant", "acme", "--tenant", "globex"]) == 0
    printed = capsys.readouterr().out
    for name in ("ca", "server", "tenant-acme", "tenant-globex"):
        assert (out / f"{name}.pem").is_file()
        assert stat.S_IMODE((out / f"{name}.key").stat().st_mode) == 0o600
        assert str(out / f"{name}.pem") in printed
    assert main(["show", str(out / "tenant-globex.pem")]) == 0
    shown = capsys.readouterr().out
    assert "tenant:   globex" in shown
    assert "URI:spiffe://percolate/tenant/globex" in shown
    assert "(valid)" in shown


def test_cli_bad_tenant_id_exits_2_with_one_line(pki: DevPki, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "percolate_certs", "tenant", "Bad_ID", "--ca", str(pki.root),
         "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("percolate-certs: invalid tenant id 'Bad_ID'")


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tenant", "acme", "--ca", str(tmp_path / "none"), "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"percolate-certs: no CA in {tmp_path / 'none'}: " \
                                      f"{tmp_path / 'none' / 'ca.pem'} is missing\n"
    assert main(["init-ca", "--out", str(tmp_path)]) == 0
    assert main(["init-ca", "--out", str(tmp_path)]) == 2  # never silently replace a CA
    assert "a CA already exists" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main(["tenant"])
    assert exited.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1
