"""Backups of a tenant node: snapshot upload, point-in-time restore, recovery point, and
what a snapshot costs the Search running beside it.

For each target (a local folder, and a real S3-protocol server: moto_server on 127.0.0.1)
and each size (10k chunks; 100k without --quick), on the same data:
  snapshot     percolate's snapshot (checkpoint, SHA-256, create-only uploads, manifest)
               beside the reference: a RocksDB checkpoint copied file by file (local) or
               uploaded with boto3's upload_file (S3), no checksums, no manifest;
  restore      percolate's restore to a point in time (download and check every object,
               replay 1,000 logged batches, open every sealed value) beside the reference:
               downloading the same snapshot's files alone;
  recovery     under a steady ingest (100 batches/s for 10 s, ship interval 1 s): seconds
               from each acknowledged write until the object store held it (median, p99, max);
  search       p99 of the node's Search (hybrid index query and the sealed reads of its hits;
               query vectors precomputed, as the embedding runs on the reading service,
               which a snapshot does not touch) alone, and while snapshots upload;
  write        p99 of one synced 2 KB write (an ingest's batch, change log included), the same way.

    python bench/backup.py [--quick]
"""
from __future__ import annotations

import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

import common  # noqa: E402  (puts the project root on sys.path)

from percolate_node.config import NodeConfig
from percolate_node.durability.agent import BackupAgent, BackupMetrics, BackupPolicy
from percolate_node.durability.objstore import LocalObjectStore, RemoteObjectStore
from percolate_node.durability.restore import Target, restore
from percolate_node.durability.snapshots import take_snapshot
from percolate_node.memory import NodeMemory
from percolate_node.store import generate_kek
from tests.durability_fixtures import S3_ENV, MotoServer, new_bucket, s3_options

from node_memory import WORDS, ingest_chunks  # noqa: E402  (the same chunks as that bench)


class QueryOnly:
    """The node's reading client for Search only: query vectors come from a fixed pool."""

    def __init__(self, vectors: np.ndarray) -> None:
        self.vectors, self.next = vectors, 0

    async def embed_query(self, query: str):
        self.next = (self.next + 1) % len(self.vectors)
        return self.vectors[self.next]


def unit(rng, rows: int) -> np.ndarray:
    vectors = rng.standard_normal((rows, 384)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def agent(memory, objects) -> BackupAgent:
    from prometheus_client import CollectorRegistry

    made = BackupAgent(memory.store, objects, BackupPolicy(snapshot_interval_s=1e9),
                       BackupMetrics(CollectorRegistry()))
    made.start()
    made.wait_ready(60)
    return made


def reference_snapshot(memory, target, scratch: Path, moto) -> float:
    started = time.perf_counter()
    checkpoint = scratch / f"ref-{time.monotonic_ns()}"
    memory.store.checkpoint(checkpoint)
    if target == "local":
        shutil.copytree(checkpoint, scratch / f"ref-copy-{time.monotonic_ns()}")
    else:
        import boto3

        client = boto3.client("s3", endpoint_url=moto.endpoint, aws_access_key_id=S3_ENV["AWS_ACCESS_KEY_ID"],
                              aws_secret_access_key=S3_ENV["AWS_SECRET_ACCESS_KEY"], region_name=S3_ENV["AWS_REGION"])
        bucket = new_bucket(moto)
        for path in checkpoint.iterdir():
            client.upload_file(str(path), bucket, f"ref/{path.name}")
    seconds = time.perf_counter() - started
    shutil.rmtree(checkpoint)
    return seconds


def new_objects(target: str, scratch: Path, moto):
    if target == "local":
        return LocalObjectStore(scratch / f"objects-{time.monotonic_ns()}")
    return RemoteObjectStore(f"s3://{new_bucket(moto)}/b", s3_options(moto.endpoint))


def search_p99(memory, seconds: float, during=None) -> tuple[float, int]:
    import asyncio

    loop = asyncio.new_event_loop()
    queries = [" ".join(WORDS[i:i + 3]) for i in range(0, 20)]
    try:
        return p99_of(lambda n: loop.run_until_complete(memory.search(queries[n % len(queries)], limit=10)),
                      seconds, during)
    finally:
        loop.close()


def write_p99(memory, seconds: float, during=None) -> tuple[float, int]:
    """A synced write of one 2 KB chunk-sized value, as an ingest's batch (the change log included)."""
    from percolate_node.store import Put
    from percolate_node.store.layout import DOCUMENTS

    payload = np.random.default_rng(9).bytes(2048)
    return p99_of(lambda n: memory.store.write([Put(DOCUMENTS, b"lat-%d" % n, payload)]), seconds, during)


def p99_of(call, seconds: float, during=None) -> tuple[float, int]:
    """p99 in ms of ``call(n)`` repeated for ``seconds``, with ``during(stop)`` on a thread meanwhile."""
    latencies, stop = [], threading.Event()
    background = None
    if during is not None:
        background = threading.Thread(target=during, args=(stop,))
        background.start()
    deadline = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        call(n)
        latencies.append(time.perf_counter() - started)
        n += 1
    stop.set()
    if background is not None:
        background.join()
    return float(np.percentile(latencies, 99)) * 1000, len(latencies)


def recovery_point(memory, objects) -> list[float]:
    """Seconds from each acknowledged batch to the object store holding it."""
    from percolate_node.store import Put
    from percolate_node.store.layout import DOCUMENTS

    backup = agent(memory, objects)
    backup.request_snapshot()
    acked: list[tuple[int, float]] = []
    shipped_at: dict[int, float] = {}
    stop = threading.Event()

    def watch():
        last = 0
        while not stop.is_set():
            now, shipped = time.perf_counter(), backup.shipped_lsn
            if shipped > last:
                for lsn in range(last + 1, shipped + 1):
                    shipped_at[lsn] = now
                last = shipped
            time.sleep(0.002)

    watcher = threading.Thread(target=watch)
    watcher.start()
    rng = np.random.default_rng(3)
    end = time.perf_counter() + 10
    while time.perf_counter() < end:
        memory.store.write([Put(DOCUMENTS, b"rpo-%d" % len(acked), rng.bytes(512))])
        acked.append((memory.store.last_lsn, time.perf_counter()))
        time.sleep(0.01)
    backup.wait_shipped(memory.store.last_lsn, 60)
    time.sleep(0.05)
    stop.set()
    watcher.join()
    backup.stop()
    return [shipped_at[lsn] - t for lsn, t in acked if lsn in shipped_at]


def run(target: str, chunks: int, scratch: Path, moto) -> dict:
    root = scratch / f"{target}-{chunks}"
    root.mkdir()
    generate_kek(root / "kek.bin")
    rng = np.random.default_rng(0)
    memory = NodeMemory.open(NodeConfig(tenant_id="bench", data_dir=root / "data", kek_file=root / "kek.bin"),
                             QueryOnly(unit(rng, 64)))
    try:
        ingest_chunks(memory.repository, chunks, rng)
        memory.rebuild_index()
        for family in ("resources", "documents", "document_resources"):
            memory.store.flush(family)
        result = {"chunks": chunks, "target": target}
        # snapshot beside the reference
        objects = new_objects(target, scratch, moto)
        backup = agent(memory, objects)  # its start takes the first snapshot
        report = backup.request_snapshot()  # an incremental one: what is shared
        backup.stop()
        fresh = new_objects(target, scratch, moto)
        full = take_snapshot(memory.store, fresh)  # everything uploads: nothing to share in a new store
        backup = agent(memory, fresh)
        result["snapshot"] = {"seconds": full.seconds, "mb": full.uploaded_bytes / 1e6, "files": len(full.info.files),
                              "incremental_seconds": report.seconds, "incremental_mb": report.uploaded_bytes / 1e6,
                              "reference_seconds": reference_snapshot(memory, target, scratch, moto)}
        # restore to a point in time: 1,000 logged batches after the snapshot, half of them before the target
        from percolate_node.store import Put
        from percolate_node.store.layout import DOCUMENTS

        for i in range(1000):
            memory.store.write([Put(DOCUMENTS, b"after-%d" % i, rng.bytes(256))])
            if i == 499:
                moment = time.time_ns()
        backup.wait_shipped(memory.store.last_lsn, 120)
        backup.stop()
        started = time.perf_counter()
        report_restore = restore(fresh, "bench", root / "kek.bin", root / "restored", Target("time", moment))
        restore_s = time.perf_counter() - started
        from percolate_node.durability.snapshots import download_snapshot, list_snapshots

        started = time.perf_counter()
        download_snapshot(fresh, list_snapshots(fresh, "bench")[-1], root / "downloaded")
        result["restore"] = {"seconds": restore_s, "records": report_restore.records_applied,
                             "values": report_restore.values_verified,
                             "reference_download_seconds": time.perf_counter() - started}
        shutil.rmtree(root / "restored")
        shutil.rmtree(root / "downloaded")
        # Search p99 alone and while snapshots upload (to fresh stores, so every SST goes up)
        alone, n_alone = search_p99(memory, 5)

        def snapshots(stop):  # as the agent's thread runs them: behind the request handlers
            from percolate_node.durability.agent import _lower_priority

            _lower_priority()
            while not stop.is_set():
                take_snapshot(memory.store, new_objects(target, scratch, moto))

        during, n_during = search_p99(memory, 5, during=snapshots)
        result["search"] = {"p99_ms_alone": alone, "p99_ms_during_snapshot": during,
                            "searches": [n_alone, n_during]}
        w_alone, _ = write_p99(memory, 5)
        w_during, _ = write_p99(memory, 5, during=snapshots)
        result["write"] = {"p99_ms_alone": w_alone, "p99_ms_during_snapshot": w_during}
        result["recovery_point_s"] = recovery_point(memory, new_objects(target, scratch, moto))
        return result
    finally:
        memory.close()


def main() -> None:
    args = common.arguments(__doc__.splitlines()[0])
    sizes = [10_000] if args.quick else [10_000, 100_000]
    moto = MotoServer()
    results = []
    try:
        with tempfile.TemporaryDirectory(prefix="bench-backup-") as tmp:
            for chunks in sizes:
                for target in ("local", "s3"):
                    print(f"{target}, {chunks:,} chunks ...", flush=True)
                    results.append(run(target, chunks, Path(tmp), moto))
    finally:
        moto.stop()
    rows = []
    for r in results:
        s, rs, q, rpo = r["snapshot"], r["restore"], r["search"], sorted(r["recovery_point_s"])
        rows.append([r["target"], r["chunks"], round(s["mb"], 1), round(s["seconds"], 2), round(s["reference_seconds"], 2),
                     f"{s['seconds'] / s['reference_seconds']:.2f}x", round(s["mb"] / s["seconds"], 1),
                     round(s["incremental_seconds"], 2), round(rs["seconds"], 2),
                     round(rs["reference_download_seconds"], 2), round(q["p99_ms_alone"], 2),
                     round(q["p99_ms_during_snapshot"], 2), f"{q['p99_ms_during_snapshot'] / q['p99_ms_alone']:.2f}x",
                     round(r["write"]["p99_ms_alone"], 2), round(r["write"]["p99_ms_during_snapshot"], 2),
                     round(statistics.median(rpo), 2), round(rpo[int(0.99 * (len(rpo) - 1))], 2), round(rpo[-1], 2)])
    common.print_table("backups (snapshot and restore in seconds; reference = plain checkpoint copy/upload; "
                       "search p99 in ms; recovery point in s)",
                       ["target", "chunks", "MB", "snapshot", "ref", "ratio", "MB/s", "incremental", "restore PIT",
                        "ref download", "search p99", "during", "ratio", "write p99", "during",
                        "RPO med", "RPO p99", "RPO max"], rows)
    common.write_results("backup", {"runs": results})


if __name__ == "__main__":
    main()
