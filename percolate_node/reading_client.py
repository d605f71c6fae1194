"""The node's client of the shared reading service: mutual TLS with the tenant's
certificate, one channel reused, and the reading service's status passed on as is."""
from __future__ import annotations

import logging
import time
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from percolate.reading.v1 import reading_pb2 as rpb
from percolate.reading.v1 import reading_pb2_grpc
from percolate_certs.ca import key_matches
from percolate_certs.tls import channel_credentials

from .config import NodeConfig
from .errors import ReadingServiceError

log = logging.getLogger(__name__)
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 128 << 20),
    ("grpc.max_send_message_length", 80 << 20),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


class ReadingClient:
    """One channel to the reading service. A gRPC channel keeps its client certificate
    for life, so the certificate files are watched (a stat per call): when cert-manager
    renews them, the next call opens a new channel with the new files and the old one
    is closed once its calls are done (after the call timeout)."""

    def __init__(self, config: NodeConfig) -> None:
        self.timeout_s = config.reading_timeout_s
        self.tenant_id = config.tenant_id
        self._config = config
        self._options = CHANNEL_OPTIONS + ([("grpc.service_config", config.reading_service_config)]
                                           if config.reading_service_config else [])
        self._files = tuple(p for p in (config.reading_cert, config.reading_key, config.reading_ca) if p)
        self._retired: list[tuple[float, grpc.aio.Channel]] = []
        if config.reading_cert is None:
            self._channel = grpc.aio.insecure_channel(config.reading_url, options=self._options)
            self._metadata = (("x-tenant-id", config.tenant_id),)
            self._stamp = None
        else:
            self._stamp = _stamps(self._files)
            self._channel = self._secure_channel()
            self._metadata = ()
        self._stub = reading_pb2_grpc.ReadingServiceStub(self._channel)

    def _secure_channel(self) -> grpc.aio.Channel:
        config = self._config
        _check_pair(config.reading_cert, config.reading_key)
        credentials = channel_credentials(config.reading_ca, config.reading_cert, config.reading_key)
        return grpc.aio.secure_channel(config.reading_url, credentials, options=self._options)

    async def _reload_if_renewed(self) -> None:
        now = time.monotonic()
        while self._retired and self._retired[0][0] <= now:
            await self._retired.pop(0)[1].close()
        if self._stamp is None or (stamp := _stamps(self._files)) == self._stamp:
            return
        self._stamp = stamp  # a half-written set is tried again when the files change again
        try:
            channel = self._secure_channel()
        except (OSError, ValueError) as err:
            log.warning("reading-service certificate files changed but were not loaded, keeping the "
                        "current channel: %s", err)
            return
        self._retired.append((now + self.timeout_s + 5, self._channel))
        self._channel, self._stub = channel, reading_pb2_grpc.ReadingServiceStub(channel)
        log.info("reading-service client certificate %s changed: new channel", self._config.reading_cert)

    async def parse(self, content: bytes, filename: str, ocr: int = 0,
                    chunk_tokens: int = 0) -> rpb.ParseResponse:
        request = rpb.ParseRequest(
            tenant_id=self.tenant_id, content=content, filename=filename,
            options=rpb.ParseOptions(ocr=ocr, chunk_tokens=chunk_tokens, embed=True, normalize=True))
        return await self._call("Parse", request)

    async def embed_query(self, text: str) -> list[float]:
        request = rpb.EmbedRequest(tenant_id=self.tenant_id, texts=[text], normalize=True, truncate=True)
        response = await self._call("Embed", request)
        return list(response.embeddings[0].values)

    async def _call(self, method: str, request):
        await self._reload_if_renewed()
        method = getattr(self._stub, method)  # looked up after a possible reload
        try:
            return await method(request, timeout=self.timeout_s, metadata=self._metadata)
        except grpc.aio.AioRpcError as err:
            raise ReadingServiceError(err.code(), err.details() or err.code().name) from None

    async def close(self) -> None:
        for _, channel in self._retired:
            await channel.close()
        self._retired.clear()
        await self._channel.close()


def _stamps(paths: tuple[Path, ...]) -> tuple:
    """(inode, mtime, size) per file: Kubernetes swaps a Secret's files by renaming a folder."""
    stamps = []
    for path in paths:
        try:
            st = path.stat()
            stamps.append((st.st_ino, st.st_mtime_ns, st.st_size))
        except OSError:
            stamps.append(None)
    return tuple(stamps)


def _check_pair(cert: Path, key: Path) -> None:
    """Refuse a half-renewed pair (new certificate, old key) before gRPC would fail every call."""
    certificate = x509.load_pem_x509_certificate(cert.read_bytes())
    if not key_matches(certificate, serialization.load_pem_private_key(key.read_bytes(), password=None)):
        raise ValueError(f"{key} is not the key of {cert}")
