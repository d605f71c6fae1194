"""The search graph saved in the tenant's store, so a restart need not rebuild it.

Building the HNSW graph is most of a node's start (about 7 s for 100k realistic chunks
on 2 cores, 30 s for random vectors); reading and decrypting the chunks is the rest.
The node seals ``SearchIndex.graph_snapshot()`` into the ``indexes`` column family (it
holds embeddings and resource ids, so it is sealed like any value) at a clean stop,
after a full build, and every few minutes while the graph changes. At start
``SearchIndex.rebuild`` checks it against the chunks read from the store and patches
what changed since, so a stale snapshot (after a kill -9) costs only the difference,
and a missing, damaged or unusable one only the old full build: it is a cache, never
a reason not to start.

Layout (keys hold no user content): ``graph/meta`` JSON (format, generation, parts,
sha256 of the graph), ``graph/slots`` the resource id in each slot (newline-separated,
empty: free), ``graph/<generation>/part/NNNNNN`` the graph in 4 MiB pieces. A save
writes the new generation's parts one small batch at a time (so no store write waits
long behind it), then switches ``graph/meta`` and drops every older part in one last
batch: a crash at any point leaves the previous snapshot whole.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os

from .search import GraphSnapshot
from .store import Delete, EncryptedStore, Put, StoreError
from .store.layout import INDEXES

log = logging.getLogger(__name__)

FORMAT = 2
PART_BYTES = 4 << 20
_META, _SLOTS = b"graph/meta", b"graph/slots"


def _part_key(generation: str, number: int) -> bytes:
    return b"graph/%s/part/%06d" % (generation.encode(), number)


def save(store: EncryptedStore, snapshot: GraphSnapshot) -> int:
    """Replace the saved graph with ``snapshot`` (see the module docstring); returns its bytes."""
    graph = snapshot.graph
    generation = os.urandom(8).hex()
    parts = 0
    for first in range(0, len(graph), PART_BYTES):
        store.write([Put(INDEXES, _part_key(generation, parts), bytes(graph[first:first + PART_BYTES]))])
        parts += 1
    meta = {"format": FORMAT, "generation": generation, "parts": parts,
            "sha256": hashlib.sha256(graph).hexdigest()}
    slots = "\n".join(id or "" for id in snapshot.slot_ids).encode()
    current = {_META, _SLOTS, *(_part_key(generation, n) for n in range(parts))}
    store.write([Delete(INDEXES, key) for key in store.keys(INDEXES) if key not in current]
                + [Put(INDEXES, _META, json.dumps(meta).encode()), Put(INDEXES, _SLOTS, slots)])
    store.flush(INDEXES)  # out of the memtable, which would otherwise hold the whole graph until its next flush
    return len(graph)


def load(store: EncryptedStore) -> GraphSnapshot | None:
    """The saved graph, or None (then: rebuild) when there is none or it is unusable."""
    try:
        raw_meta = store.get(INDEXES, _META)
        if raw_meta is None:
            return None
        meta = json.loads(raw_meta)
        if meta.get("format") != FORMAT:
            log.info("saved search graph has format %s, not %s: rebuilding it", meta.get("format"), FORMAT)
            return None
        parts = [store.get(INDEXES, _part_key(meta["generation"], n)) for n in range(meta["parts"])]
        slots = store.get(INDEXES, _SLOTS)
        if slots is None or any(part is None for part in parts):
            log.warning("saved search graph is incomplete: rebuilding it")
            return None
        graph = b"".join(parts)
        if hashlib.sha256(graph).hexdigest() != meta["sha256"]:
            log.warning("saved search graph does not match its checksum: rebuilding it")
            return None
    except (StoreError, ValueError, KeyError, TypeError) as error:  # TamperedValueError is a StoreError
        log.warning("saved search graph is unreadable (%s): rebuilding it", error)
        return None
    return GraphSnapshot([id or None for id in slots.decode().split("\n")] if slots else [], graph)


def drop(store: EncryptedStore) -> None:
    """Delete the saved graph (purge does: it may hold embeddings of purged chunks)."""
    store.write([Delete(INDEXES, key) for key in store.keys(INDEXES)])
