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


PIT_QUERY = "GPU hours in Q2"


def _iso(ns: int) -> str:
    from datetime import datetime

    return datetime.fromtimestamp(ns / 1e9).astimezone().isoformat(timespec="milliseconds")


def demo_restore(config: NodeConfig, root: Path, moment: int, last_lsn: int, shipped: int, before) -> None:
    """Point-in-time restore from the backups folder to the noted moment; search before and after."""
    from dataclasses import replace

    from percolate_node.durability.objstore import LocalObjectStore
    from percolate_node.durability.restore import Target, restore

    print(f"\nbackups in {config.backup_url}: change log shipped through LSN {shipped} of {last_lsn}")
    print(f"restore to {_iso(moment)} (percolate restore --to <time> --into {root / 'restored'}):")
    report = restore(LocalObjectStore(Path(config.backup_url)), config.tenant_id, config.kek_file,
                     root / "restored", Target("time", moment), say=lambda line: print("  " + line))
    restored = replace(config, data_dir=root / "restored", backup_url="")
    with BackgroundServer(NodeServer(restored)) as node, \
            NodeClient(NodeTarget(address=node.address, token=config.token_file.read_text())) as client:
        after = client.search(PIT_QUERY, "keyword", limit=3).hits
        stats = client.call("Stats", npb.StatsRequest())
    print(f"search {PIT_QUERY!r} on the live node: {[h.uri for h in before] or 'no hits'}")
    print(f"the same on the node restored to that moment ({stats.documents} documents, LSN "
          f"{report.last_lsn}): {[h.uri for h in after] or 'no hits (budget.xlsx came later)'}")


def demo_node(reading_address: str, pki, tenant: str, root: Path, audio: Path, heading) -> None:
    heading(f"Tenant node for {tenant!r}: encrypted RocksDB, ingest through the reading service")
    for folder in ("data", "backups", "restored"):  # each demo starts from an empty memory
        shutil.rmtree(root / folder, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    if not (root / "kek.bin").exists():
        generate_kek(root / "kek.bin")
    token = root / "token"
    token.write_text(secrets.token_hex(16))
    token.chmod(0o600)  # a key file: the node refuses one others may read
    creds = pki.tenants[tenant]
    config = NodeConfig(tenant_id=tenant, data_dir=root / "data", kek_file=root / "kek.bin",
                        reading_url=reading_address, reading_ca=creds.ca, reading_cert=creds.cert,
                        reading_key=creds.key, token_file=token, metrics_port=-1,
                        # durability, embedded default: snapshots and the change log in a local folder
                        backup_url=str(root / "backups"), backup_ship_interval_s=0.2)
    moment = 0
    with BackgroundServer(NodeServer(config)) as node, \
            NodeClient(NodeTarget(address=node.address, token=token.read_text())) as client:
        print(f"node on {node.address}, data in {config.data_dir} (values sealed with AES-256-GCM)")
        inputs = files(audio)
        for number, (name, content) in enumerate(inputs):
            if number == 2:  # a snapshot, then the moment a restore goes back to
                made = client.call("CreateSnapshot", npb.CreateSnapshotRequest())
                print(f"  -- snapshot {made.snapshot_id}: LSN {made.lsn}, {made.files} files, "
                      f"{made.uploaded_bytes / 1024:.0f} KiB uploaded to {made.location}")
                time.sleep(0.01)
                moment = time.time_ns()
                print(f"  -- noted the moment {_iso(moment)}; everything below comes after it")
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
        before = client.search(PIT_QUERY, "keyword", limit=3).hits
        deadline = time.monotonic() + 30
        while client.call("Stats", npb.StatsRequest()).shipped_lsn < stats.last_lsn and time.monotonic() < deadline:
            time.sleep(0.05)
        shipped = client.call("Stats", npb.StatsRequest()).shipped_lsn
    demo_restore(config, root, moment, stats.last_lsn, shipped, before)
    print(f"\nmemory: {stats.documents} documents, {stats.resources} chunks, {stats.moments} moments, "
          f"{stats.storage_bytes / 1024:.0f} KiB on disk")
    phrases = [b"Signed by both parties", b"fellow Americans", b"GPU hours"]
    folders = [config.data_dir, root / "backups"]
    found = [p.decode() for p in phrases for folder in folders for f in folder.rglob("*")
             if f.is_file() and p in f.read_bytes()]
    print(f"scanned every file under {' and '.join(map(str, folders))} for {len(phrases)} phrases of the documents: "
          + ("none found in plaintext" if not found else f"FOUND {found}"))
