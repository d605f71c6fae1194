"""A synchronous client of a tenant node, for the CLI, the demo and tests."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import grpc

from percolate.node.v1 import node_pb2 as pb
from percolate.node.v1 import node_pb2_grpc
from percolate_certs.tls import channel_credentials

MODES = {"hybrid": pb.SEARCH_MODE_HYBRID, "semantic": pb.SEARCH_MODE_SEMANTIC,
         "keyword": pb.SEARCH_MODE_KEYWORD}


@dataclass(frozen=True)
class NodeTarget:
    """Where a node listens and how to prove who we are to it."""

    address: str
    token: str = ""
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "NodeTarget":
        env = os.environ if env is None else env

        def path(name: str) -> Path | None:
            return Path(env[name]) if env.get(name) else None

        token_file = path("PERCOLATE_NODE_TOKEN_FILE")
        return cls(address=env.get("PERCOLATE_NODE_URL", "127.0.0.1:7443"),
                   token=token_file.read_text().strip() if token_file else "",
                   ca=path("PERCOLATE_NODE_CA"), cert=path("PERCOLATE_NODE_CERT"),
                   key=path("PERCOLATE_NODE_KEY"))

    def channel(self) -> grpc.Channel:
        options = [("grpc.max_send_message_length", 80 << 20)]
        if self.ca is not None:
            return grpc.secure_channel(self.address, channel_credentials(self.ca, self.cert, self.key),
                                       options=options)
        return grpc.insecure_channel(self.address, options=options)


class NodeClient:
    def __init__(self, target: NodeTarget) -> None:
        self._channel = target.channel()
        self.stub = node_pb2_grpc.NodeServiceStub(self._channel)
        self._metadata = (("authorization", f"Bearer {target.token}"),) if target.token else ()

    def call(self, method: str, request, timeout: float = 300):
        return getattr(self.stub, method)(request, timeout=timeout, metadata=self._metadata)

    def ingest_file(self, path: Path, uri: str = "") -> pb.IngestResponse:
        return self.call("Ingest", pb.IngestRequest(content=path.read_bytes(), filename=path.name,
                                                   uri=uri or path.resolve().as_uri()))

    def search(self, query: str, mode: str = "hybrid", limit: int = 10) -> pb.SearchResponse:
        return self.call("Search", pb.SearchRequest(query=query, mode=MODES[mode], limit=limit))

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "NodeClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass(frozen=True)
class BulkOutcome:
    path: Path
    response: pb.IngestResponse | None = None
    error: str = ""


def files_under(paths: Iterable[Path]) -> list[Path]:
    found: list[Path] = []
    for path in paths:
        found.extend(sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path])
    return found


def bulk_ingest(client: NodeClient, files: list[Path],
                progress: Callable[[int, int, BulkOutcome], None] = lambda *_: None) -> Iterator[BulkOutcome]:
    """Ingest ``files`` one by one; a failure is reported and the next file goes on."""
    for number, path in enumerate(files, 1):
        try:
            outcome = BulkOutcome(path, response=client.ingest_file(path))
        except grpc.RpcError as err:
            outcome = BulkOutcome(path, error=f"{err.code().name}: {err.details()}")
        except OSError as err:
            outcome = BulkOutcome(path, error=f"cannot read: {err.strerror}")
        progress(number, len(files), outcome)
        yield outcome
