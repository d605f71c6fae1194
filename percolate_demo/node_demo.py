"""The demo's second half: a tenant node over an encrypted store ingests generated files
through the reading service (mutual TLS with the tenant's certificate), then answers
searches from its own indexes."""
from __future__ import annotations

import secrets
import shutil
import time
from pathlib import Path

import grpc

from percolate.node.v1 import node_pb2 as npb
from percolate_common.background import BackgroundServer
from percolate_node.client import NodeClient, NodeTarget
from percolate_node.config import NodeConfig
from percolate_node.server import NodeServer
from percolate_node.store import generate_kek

from . import samples

SEARCHES = [
    ("how are values sealed and with which keys", "hybrid"),
    ("GPU hours in Q2", "keyword"),
    ("ask what you can do for your country", "semantic"),
    ("which contract was signed by both parties", "hybrid"),
]


def files(audio: Path) -> list[tuple[str, bytes]]:
    made = [("architecture.pdf", samples.text_pdf()), ("scanned-contract.pdf", samples.scanned_pdf()),
            ("report.docx", samples.docx_report()), ("budget.xlsx", samples.budget_xlsx()),
            ("whiteboard.png", samples.text_image())]
    if audio.is_file():
        made.append((audio.name, audio.read_bytes()))
    return made


def demo_node(reading_address: str, pki, tenant: str, root: Path, audio: Path, heading) -> None:
    heading(f"Tenant node for {tenant!r}: encrypted RocksDB, ingest through the reading service")
    shutil.rmtree(root / "data", ignore_errors=True)  # each demo starts from an empty memory
    root.mkdir(parents=True, exist_ok=True)
    if not (root / "kek.bin").exists():
        generate_kek(root / "kek.bin")
    token = root / "token"
    token.write_text(secrets.token_hex(16))
    token.chmod(0o600)  # a key file: the node refuses one others may read
    creds = pki.tenants[tenant]
    config = NodeConfig(tenant_id=tenant, data_dir=root / "data", kek_file=root / "kek.bin",
                        reading_url=reading_address, reading_ca=creds.ca, reading_cert=creds.cert,
                        reading_key=creds.key, token_file=token, metrics_port=-1)
    with BackgroundServer(NodeServer(config)) as node, \
            NodeClient(NodeTarget(address=node.address, token=token.read_text())) as client:
        print(f"node on {node.address}, data in {config.data_dir} (values sealed with AES-256-GCM)")
        inputs = files(audio)
        for name, content in inputs:
            started = time.perf_counter()
            try:
                response = client.call("Ingest", npb.IngestRequest(content=content, filename=name))
            except grpc.RpcError as err:
                print(f"  {name:22s} failed: {err.code().name}: {err.details()}")
                continue
            print(f"  {name:22s} {response.format:6s} {response.pages:2d} page(s) {response.resources:2d} "
                  f"chunk(s) in {(time.perf_counter() - started) * 1000:5.0f} ms")
        again = client.call("Ingest", npb.IngestRequest(content=inputs[3][1], filename="budget-copy.xlsx"))
        print(f"  the same spreadsheet again: created={again.created} (one document per content)")
        for query, mode in SEARCHES:
            print(f"\nsearch ({mode}): {query!r}")
            for rank, hit in enumerate(client.search(query, mode, limit=3).hits, 1):
                text = " ".join(hit.text.split())
                print(f"  {rank}. {hit.score:.4f}  {hit.uri} p{hit.page_start}"
                      f"{'-' + str(hit.page_end) if hit.page_end != hit.page_start else ''}: "
                      f"{text[:90]}{'...' if len(text) > 90 else ''}")
        stats = client.call("Stats", npb.StatsRequest())
    print(f"\nmemory: {stats.documents} documents, {stats.resources} chunks, {stats.moments} moments, "
          f"{stats.storage_bytes / 1024:.0f} KiB on disk")
    phrases = [b"Signed by both parties", b"fellow Americans", b"GPU hours"]
    found = [p.decode() for p in phrases for f in config.data_dir.rglob("*") if f.is_file() and p in f.read_bytes()]
    print(f"scanned every file under {config.data_dir} for {len(phrases)} phrases of the documents: "
          + ("none found in plaintext" if not found else f"FOUND {found}"))
