"""Start-up of a node holding 100k chunks: index rebuild time and resident memory.

Writes 100,000 chunks (20,000 with --quick) as documents of 100 chunks each, with
384-d unit embeddings and ~40-word texts, into a fresh encrypted store; then starts a
fresh process that opens the node's memory exactly as ``percolate serve`` does
(unwrap keys, decrypt every chunk, rebuild HNSW + BM25 + filters) and reports the time
and the resident memory before and after; then starts it once more, when the graph
that the first start saved (sealed, in the store) is reused instead of built. Reference: the same process reading the same
records without building indexes, to split decryption from indexing.

    python bench/node_memory.py [--quick]
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import common  # noqa: E402  (puts the project root on sys.path)

from percolate_node.rem import Document, MemoryRepository, Resource, document_id
from percolate_node.store import EncryptedStore, generate_kek, load_kek

WORDS = ("memory tenant private encrypted search chunk reading service triton pipeline document page "
         "table report quarterly budget invoice contract meeting summary harbour glacier orchard").split()
PER_DOCUMENT = 100

PROBE = """
import json, sys, time
from pathlib import Path
def rss():
    return int(next(l for l in open('/proc/self/status') if l.startswith('VmRSS')).split()[1]) * 1024
from percolate_node.config import NodeConfig
from percolate_node.memory import NodeMemory
from percolate_node.rem import MemoryRepository
from percolate_node.store import EncryptedStore, load_kek
root, mode = Path(sys.argv[1]), sys.argv[2]
before = rss()
started = time.perf_counter()
if mode == "node":
    memory = NodeMemory.open(NodeConfig(tenant_id="bench", data_dir=root / "data", kek_file=root / "kek.bin"), None)
    count = memory.index_size
else:
    store = EncryptedStore.open(root / "data", "bench", load_kek(root / "kek.bin"), create=False)
    count = sum(1 for _ in MemoryRepository(store).iter_resources())
seconds = time.perf_counter() - started
print(json.dumps({"seconds": seconds, "rss_before": before, "rss_after": rss(), "count": count}))
"""


def ingest_chunks(repository: MemoryRepository, chunks: int, rng: np.random.Generator) -> None:
    """``chunks`` random chunks (unit vectors, 40 words each) in documents of ``PER_DOCUMENT``."""
    for d in range(chunks // PER_DOCUMENT):
        uri = f"file://bench/{d}.txt"
        doc_id = document_id(uri.encode())
        vectors = rng.standard_normal((PER_DOCUMENT, 384)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        resources = [Resource(document_id=doc_id, uri=uri, ordinal=i, embedding=vectors[i],
                              text=" ".join(rng.choice(WORDS, 40)), page_span=(1, 1))
                     for i in range(PER_DOCUMENT)]
        repository.ingest(Document(id=doc_id, uri=uri, title=f"doc {d}", format="text"), resources)


def fill(root: Path, chunks: int) -> float:
    generate_kek(root / "kek.bin")
    started = time.perf_counter()
    with EncryptedStore.open(root / "data", "bench", load_kek(root / "kek.bin")) as store:
        ingest_chunks(MemoryRepository(store), chunks, np.random.default_rng(0))
    return time.perf_counter() - started


def probe(root: Path, mode: str) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE, str(root), mode], capture_output=True, text=True,
                          cwd=common.ROOT, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    args = common.arguments(__doc__.splitlines()[0])
    chunks = 20_000 if args.quick else 100_000
    with tempfile.TemporaryDirectory(prefix="bench-node-memory-") as tmp:
        root = Path(tmp)
        write_seconds = fill(root, chunks)
        read = probe(root, "read")
        node = probe(root, "node")  # no saved graph: builds it, and saves it sealed
        restart = probe(root, "node")  # reuses the saved graph
    mib = 1 << 20
    rows = [
        ["write (ingest batches)", chunks, round(write_seconds, 2), "-", "-"],
        ["open + decrypt all (reference)", read["count"], round(read["seconds"], 2),
         round(read["rss_after"] / mib, 1), round((read["rss_after"] - read["rss_before"]) / mib, 1)],
        ["first start: rebuild indexes, build graph", node["count"], round(node["seconds"], 2),
         round(node["rss_after"] / mib, 1), round((node["rss_after"] - node["rss_before"]) / mib, 1)],
        ["restart: rebuild indexes, reuse saved graph", restart["count"], round(restart["seconds"], 2),
         round(restart["rss_after"] / mib, 1), round((restart["rss_after"] - restart["rss_before"]) / mib, 1)],
    ]
    common.print_table(f"a node holding {chunks:,} chunks (384-d, ~40 words each)",
                       ["step", "chunks", "seconds", "RSS MiB", "RSS added MiB"], rows)
    common.write_results("node_memory", {"chunks": chunks, "write_seconds": write_seconds,
                                         "read_only": read, "node_start": node, "node_restart": restart})


if __name__ == "__main__":
    main()
