"""``percolate-certs``: make and inspect the certificates for tenant mutual TLS."""
from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path
from typing import NoReturn

from cryptography import x509

from .ca import (DEFAULT_HOSTNAMES, DEFAULT_IPS, CertPaths, create_ca, dev_pki,
                 issue_server_cert, issue_tenant_cert)
from .identity import InvalidIdentityError, tenant_from_certificate

PROG = "percolate-certs"


class _Parser(argparse.ArgumentParser):
    """Usage errors are one line too, like every other error of this command."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        args.run(args)
    except (OSError, ValueError) as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return 2
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    init_ca = sub.add_parser("init-ca", help="create a CA (ca.pem, ca.key)")
    init_ca.add_argument("--out", type=Path, required=True, help="directory to write to")
    init_ca.add_argument("--name", default="Percolate dev CA", help="the CA's common name")
    init_ca.add_argument("--days", type=int, default=3650)
    init_ca.add_argument("--force", action="store_true",
                         help="replace an existing CA (invalidates what it issued)")
    init_ca.set_defaults(run=_init_ca)

    server = sub.add_parser("server", help="issue server.pem/server.key (serverAuth)")
    server.add_argument("--ca", type=Path, required=True,
                        help="directory holding ca.pem and ca.key")
    server.add_argument("--out", type=Path, required=True)
    server.add_argument("--host", action="append", dest="hosts", metavar="H",
                        help="DNS name (repeatable; default localhost)")
    server.add_argument("--ip", action="append", dest="ips", metavar="IP",
                        help="IP address (repeatable; default 127.0.0.1 and ::1)")
    server.add_argument("--days", type=int, default=365)
    server.set_defaults(run=_server)

    tenant = sub.add_parser("tenant", help="issue tenant-ID.pem/.key (clientAuth, tenant URI SAN)")
    tenant.add_argument("tenant_id", metavar="ID")
    tenant.add_argument("--ca", type=Path, required=True,
                        help="directory holding ca.pem and ca.key")
    tenant.add_argument("--out", type=Path, required=True)
    tenant.add_argument("--days", type=int, default=365)
    tenant.set_defaults(run=_tenant)

    dev = sub.add_parser("dev", help="CA, localhost server and tenant certificates in one "
                                     "directory; reuses files that are still valid")
    dev.add_argument("--out", type=Path, required=True)
    dev.add_argument("--tenant", action="append", default=[], metavar="ID",
                     help="repeat for several tenants")
    dev.set_defaults(run=_dev)

    show = sub.add_parser("show", help="print a certificate's subject, SANs, tenant and validity")
    show.add_argument("file", type=Path)
    show.set_defaults(run=_show)
    return parser


def _init_ca(args: argparse.Namespace) -> None:
    _report("CA", create_ca(args.out, args.name, args.days, overwrite=args.force))


def _server(args: argparse.Namespace) -> None:
    named = bool(args.hosts or args.ips)
    hosts = args.hosts or ([] if named else DEFAULT_HOSTNAMES)
    ips = args.ips or ([] if named else DEFAULT_IPS)
    _report("server", issue_server_cert(args.ca, args.out, hosts, ips, args.days))


def _tenant(args: argparse.Namespace) -> None:
    _report(f"tenant {args.tenant_id}",
            issue_tenant_cert(args.ca, args.out, args.tenant_id, days=args.days))


def _dev(args: argparse.Namespace) -> None:
    pki = dev_pki(args.out, args.tenant)
    _report("CA", pki.ca)
    _report("server", pki.server)
    for tenant_id, paths in pki.tenants.items():
        _report(f"tenant {tenant_id}", paths)


def _show(args: argparse.Namespace) -> None:
    try:
        certs = x509.load_pem_x509_certificates(args.file.read_bytes())
    except ValueError:
        raise ValueError(f"{args.file} holds no PEM certificate") from None
    now = dt.datetime.now(dt.timezone.utc)
    for index, cert in enumerate(certs, 1):
        print(f"{args.file}" + (f" [{index}/{len(certs)}]:" if len(certs) > 1 else ":"))
        print(f"  subject:  {cert.subject.rfc4514_string()}")
        print(f"  issuer:   {cert.issuer.rfc4514_string()}")
        print(f"  serial:   {cert.serial_number:x}")
        print(f"  SANs:     {', '.join(_sans(cert)) or 'none'}")
        print(f"  tenant:   {_tenant_of(cert)}")
        state = ("EXPIRED" if cert.not_valid_after_utc < now
                 else "NOT YET VALID" if cert.not_valid_before_utc > now else "valid")
        print(f"  validity: {cert.not_valid_before_utc:%Y-%m-%d %H:%M:%S} to "
              f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC ({state})")


def _sans(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    kinds = {x509.DNSName: "DNS", x509.IPAddress: "IP", x509.UniformResourceIdentifier: "URI"}
    return [f"{kinds.get(type(name), type(name).__name__)}:{name.value}" for name in san]


def _tenant_of(cert: x509.Certificate) -> str:
    try:
        return tenant_from_certificate(cert)
    except InvalidIdentityError as err:
        return f"none ({err})"


def _report(what: str, paths: CertPaths) -> None:
    trust = "" if paths.ca == paths.cert else f", trusts CA bundle {paths.ca}"
    print(f"{what}: certificate {paths.cert}, key {paths.key} (mode 600){trust}")


if __name__ == "__main__":
    sys.exit(main())
