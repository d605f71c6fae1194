"""gRPC TLS credentials from certificate files.

The server side uses ``grpc.dynamic_ssl_server_credentials``: gRPC asks the fetcher for
a configuration before every new handshake, so rotated files (cert-manager, a renewed
Kubernetes secret) take effect for new connections without a restart.
"""
from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from .ca import CertPaths, key_matches

log = logging.getLogger(__name__)

_FileStamp = tuple[int, int, int, int] | None  # (device, inode, mtime_ns, size); None: unreadable


def server_credentials(cert_paths: CertPaths,
                       require_client_auth: bool = True) -> grpc.ServerCredentials:
    """Server mTLS credentials that re-read the files when they change.

    With ``require_client_auth=False`` gRPC does not even request a client certificate,
    so no tenant identity reaches the handlers: use it only for tenant-less services.
    """
    fetcher = _ReloadingConfig(cert_paths)
    return grpc.dynamic_ssl_server_credentials(
        fetcher.initial, fetcher, require_client_authentication=require_client_auth)


def channel_credentials(ca: str | os.PathLike[str], cert: str | os.PathLike[str] | None = None,
                        key: str | os.PathLike[str] | None = None) -> grpc.ChannelCredentials:
    """Client credentials trusting ``ca``, presenting ``cert``/``key`` when given.

    A channel keeps its certificate for life: after rotating a client certificate, open
    a new channel with new credentials.
    """
    if (cert is None) != (key is None):
        raise ValueError("a client certificate needs both cert and key (or neither)")
    return grpc.ssl_channel_credentials(
        root_certificates=Path(ca).read_bytes(),
        private_key=Path(key).read_bytes() if key is not None else None,
        certificate_chain=Path(cert).read_bytes() if cert is not None else None)


class _ReloadingConfig:
    """The certificate-configuration fetcher: cheap stat() per connection, reload on change."""

    def __init__(self, paths: CertPaths) -> None:
        self._paths = paths
        self._lock = threading.Lock()  # gRPC may call the fetcher from several threads
        self._stamp = self._stat()
        self.initial, _ = _load(paths)  # raises: a server must not start without its files

    def __call__(self) -> grpc.ServerCertificateConfiguration | None:
        with self._lock:
            stamp = self._stat()
            if stamp == self._stamp:
                return None
            self._stamp = stamp  # a failed load is retried when the files change again
            try:
                config, cert = _load(self._paths)
            except Exception as err:  # gRPC would keep the old files too, but not say why
                log.warning("TLS files %s not reloaded, keeping the previous ones: %s",
                            self._paths.cert, err)
                return None
        log.info("reloaded TLS certificate %s (serial %x, subject %s, expires %s) "
                 "and CA bundle %s", self._paths.cert, cert.serial_number,
                 cert.subject.rfc4514_string(), cert.not_valid_after_utc.isoformat(),
                 self._paths.ca)
        return config

    def _stat(self) -> tuple[_FileStamp, ...]:
        return tuple(_file_stamp(p) for p in (self._paths.cert, self._paths.key, self._paths.ca))


def _file_stamp(path: Path) -> _FileStamp:
    """Inode is included: an atomic rename can keep mtime and size but never the inode."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size


def _load(paths: CertPaths) -> tuple[grpc.ServerCertificateConfiguration, x509.Certificate]:
    """Read and check the files, so a half-rotated set (new cert, old key) is not served."""
    cert_pem, key_pem, ca_pem = (p.read_bytes() for p in (paths.cert, paths.key, paths.ca))
    cert = x509.load_pem_x509_certificate(cert_pem)
    key = serialization.load_pem_private_key(key_pem, password=None)
    if not key_matches(cert, key):
        raise ValueError(f"{paths.key} is not the key of {paths.cert}")
    x509.load_pem_x509_certificates(ca_pem)  # raises on an empty or corrupt bundle
    config = grpc.ssl_server_certificate_configuration([(key_pem, cert_pem)],
                                                       root_certificates=ca_pem)
    return config, cert
