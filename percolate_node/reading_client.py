"""The node's client of the shared reading service: mutual TLS with the tenant's
certificate, one channel reused, and the reading service's status passed on as is."""
from __future__ import annotations

import grpc

from percolate.reading.v1 import reading_pb2 as rpb
from percolate.reading.v1 import reading_pb2_grpc
from percolate_certs.tls import channel_credentials

from .config import NodeConfig
from .errors import ReadingServiceError

CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 128 << 20),
    ("grpc.max_send_message_length", 80 << 20),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


class ReadingClient:
    def __init__(self, config: NodeConfig) -> None:
        self.timeout_s = config.reading_timeout_s
        options = CHANNEL_OPTIONS + ([("grpc.service_config", config.reading_service_config)]
                                     if config.reading_service_config else [])
        if config.reading_cert is None:
            self._channel = grpc.aio.insecure_channel(config.reading_url, options=options)
            self._metadata = (("x-tenant-id", config.tenant_id),)
        else:
            credentials = channel_credentials(config.reading_ca, config.reading_cert, config.reading_key)
            self._channel = grpc.aio.secure_channel(config.reading_url, credentials, options=options)
            self._metadata = ()
        self._stub = reading_pb2_grpc.ReadingServiceStub(self._channel)
        self.tenant_id = config.tenant_id

    async def parse(self, content: bytes, filename: str, ocr: int = 0,
                    chunk_tokens: int = 0) -> rpb.ParseResponse:
        request = rpb.ParseRequest(
            tenant_id=self.tenant_id, content=content, filename=filename,
            options=rpb.ParseOptions(ocr=ocr, chunk_tokens=chunk_tokens, embed=True, normalize=True))
        return await self._call(self._stub.Parse, request)

    async def embed_query(self, text: str) -> list[float]:
        request = rpb.EmbedRequest(tenant_id=self.tenant_id, texts=[text], normalize=True, truncate=True)
        response = await self._call(self._stub.Embed, request)
        return list(response.embeddings[0].values)

    async def _call(self, method, request):
        try:
            return await method(request, timeout=self.timeout_s, metadata=self._metadata)
        except grpc.aio.AioRpcError as err:
            raise ReadingServiceError(err.code(), err.details() or err.code().name) from None

    async def close(self) -> None:
        await self._channel.close()
