"""The search graph saved in the tenant's store, so a restart need not rebuild it.

Building the HNSW graph is most of a node's start (about 7 s for 100k realistic chunks
on 2 cores, 30 s for random vectors); reading and decrypting the chunks is the rest.
At a clean stop the node seals ``SearchIndex.graph_snapshot()`` into the ``indexes``
column family (it holds embeddings and resource ids, so it is sealed like any value);
at start ``SearchIndex.rebuild`` checks it against the chunks read from the store and
patches what changed since, so a stale snapshot (after a kill -9) costs only the
difference, and a missing or unusable one only the old full build.

Layout (keys hold no user content): ``graph/meta`` JSON (format, parts, sha256 of the
graph), ``graph/slots`` the resource id in each slot (newline-separated, empty: free),
``graph/part/NNNNNN`` the graph bytes in 4 MiB pieces. One synced batch replaces all.
"""
from __future__ import annotations

import hashlib
import json
import logging

from .search import GraphSnapshot
from .store import Delete, EncryptedStore, Put
from .store.layout import INDEXES

log = logging.getLogger(__name__)

FORMAT = 1
PART_BYTES = 4 << 20
_META, _SLOTS, _PART = b"graph/meta", b"graph/slots", b"graph/part/"


def save(store: EncryptedStore, snapshot: GraphSnapshot) -> int:
    """Replace the saved graph with ``snapshot`` in one synced batch; returns its bytes."""
    graph = snapshot.graph
    parts = [graph[i:i + PART_BYTES] for i in range(0, len(graph), PART_BYTES)]
    meta = {"format": FORMAT, "parts": len(parts), "sha256": hashlib.sha256(graph).hexdigest()}
    slots = "\n".join(id or "" for id in snapshot.slot_ids).encode()
    ops: list[Put | Delete] = [Delete(INDEXES, key) for key in store.keys(INDEXES)]
    ops += [Put(INDEXES, _META, json.dumps(meta).encode()), Put(INDEXES, _SLOTS, slots)]
    ops += [Put(INDEXES, _PART + b"%06d" % number, part) for number, part in enumerate(parts)]
    store.write(ops)
    store.flush(INDEXES)  # out of the memtable: it would hold the whole graph in memory until the next flush
    return len(graph)


def load(store: EncryptedStore) -> GraphSnapshot | None:
    """The saved graph, or None when there is none or it is incomplete (then: rebuild)."""
    raw_meta = store.get(INDEXES, _META)
    if raw_meta is None:
        return None
    meta = json.loads(raw_meta)
    if meta.get("format") != FORMAT:
        log.info("saved search graph has format %s, not %s: rebuilding it", meta.get("format"), FORMAT)
        return None
    parts = [store.get(INDEXES, _PART + b"%06d" % number) for number in range(meta["parts"])]
    slots = store.get(INDEXES, _SLOTS)
    if slots is None or any(part is None for part in parts):
        log.warning("saved search graph is incomplete: rebuilding it")
        return None
    graph = b"".join(parts)
    if hashlib.sha256(graph).hexdigest() != meta["sha256"]:
        log.warning("saved search graph does not match its checksum: rebuilding it")
        return None
    return GraphSnapshot([id or None for id in slots.decode().split("\n")] if slots else [], graph)


def drop(store: EncryptedStore) -> None:
    """Delete the saved graph (purge does: it may hold embeddings of purged chunks)."""
    store.write([Delete(INDEXES, key) for key in store.keys(INDEXES)])
