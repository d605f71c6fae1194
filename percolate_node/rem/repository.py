"""MemoryRepository: the REM model of one tenant over its EncryptedStore.

Keys (no user content; ``k(x)`` is ``store.name_key(x)``, 16 bytes):
- records: ``k("<kind>\\0<id>")`` in ``documents`` / ``resources`` / ``entities`` / ``moments``;
- ``document_resources``: document key + ordinal (4 bytes) -> resource id;
- ``uris``: ``k("uri\\0<uri>")`` -> the uri's current document id;
- ``names``: ``k("name\\0<normalised name>")`` + entity key -> entity id;
- ``edges``: node + ``>`` (out) or ``<`` (in) + other node + ``k("relation\\0<r>")`` ->
  the edge, stored under both endpoints (node = ``k("node\\0<id>")``, any kind);
- ``moment_times``: start (8 bytes, big-endian microseconds, offset) + moment key -> id, type;
- ``deleted``: kind code + record key -> id: the soft-deleted records ``purge`` removes.
Every change that belongs together (a whole ingest, an upsert with its index entries)
is one ``store.write`` call, so one synced RocksDB batch. Writers take a lock (they
read before they write); readers do not.
"""
from __future__ import annotations

import dataclasses
import json
import threading
from datetime import datetime, timezone
from typing import Iterable, Iterator

from percolate_node.rem.codec import decode, encode
from percolate_node.rem.errors import DamagedRecordError, InvalidRecordError, NotFoundError
from percolate_node.rem.model import (KINDS, RECORD_TYPES, Document, Edge, Entity, IngestResult, Kind, Moment,
                                      Record, Resource, Traversal, normalise_name, resource_id)
from percolate_node.store import Delete, EncryptedStore, Put
from percolate_node.store.errors import DataLossError
from percolate_node.store.store import NAME_KEY_BYTES, OnDamage
from percolate_node.store.layout import (DELETED, DOCUMENT_RESOURCES, DOCUMENTS, EDGES, ENTITIES, MOMENT_TIMES,
                                         MOMENTS, NAMES, RESOURCES, URIS)

Op = Put | Delete
FAMILY: dict[Kind, str] = {"document": DOCUMENTS, "resource": RESOURCES, "entity": ENTITIES, "moment": MOMENTS}
_CODE: dict[Kind, bytes] = {"document": b"d", "resource": b"r", "entity": b"e", "moment": b"m"}
_KIND_OF_CODE = {code: kind for kind, code in _CODE.items()}
_OUT, _IN = b">", b"<"
_NODE = NAME_KEY_BYTES
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
MAX_DEPTH = 5
PURGE_BATCH = 256


class MemoryRepository:
    """Documents, Resources, Entities, Edges and Moments of one tenant."""

    def __init__(self, store: EncryptedStore) -> None:
        self._store = store
        self._lock = threading.Lock()

    # -- ingest -------------------------------------------------------------------------

    def ingest(self, document: Document, resources: Iterable[Resource], entities: Iterable[Entity] = (),
               moment: Moment | None = None, edges: Iterable[Edge] = ()) -> IngestResult:
        """Write a document with its chunks (and entities, edges, a moment) in one synced batch.

        The same content twice is one document: the second call writes nothing and
        returns ``new=False``. New content at a uri that already has a document
        soft-deletes the old one (its chunk ids, hashes of uri and ordinal, are reused).
        """
        resources, entities, edges = list(resources), list(entities), list(edges)
        self._check_ingest(document, resources, entities)
        with self._lock:
            existing = self._load("document", document.id)
            if existing is not None and not existing.deleted:
                return IngestResult(document.id, False, [r.id for r in self._document_resources(document.id)])
            ops: list[Op] = []
            doc_key = self._key("document", document.id)
            ops += [Delete(DOCUMENT_RESOURCES, key) for key in self._store.keys(DOCUMENT_RESOURCES, prefix=doc_key)]
            replaced = self._supersede(document, {r.id for r in resources}, ops)
            ops += self._put_ops("document", document)
            ops.append(Put(URIS, self._uri_key(document.uri), document.id.encode()))
            for resource in resources:
                ops += self._put_ops("resource", resource)
                ops.append(Put(DOCUMENT_RESOURCES, doc_key + resource.ordinal.to_bytes(4, "big"), resource.id.encode()))
            for entity in entities:
                ops += self._entity_ops(entity)
            if moment is not None:
                ops += self._moment_ops(moment)
            known: dict[str, Kind] = {document.id: "document", **{r.id: "resource" for r in resources},
                                      **{e.id: "entity" for e in entities}}
            if moment is not None:
                known[moment.id] = "moment"
            for edge in edges:
                ops += self._edge_ops(self._resolve_edge(edge, known))
            self._store.write(ops)
            return IngestResult(document.id, True, [r.id for r in resources], replaced)

    # -- reads ----------------------------------------------------------------------------

    def get_document(self, document_id: str) -> Document | None:
        return self._live("document", document_id)

    def get_resource(self, resource_id: str) -> Resource | None:
        return self._live("resource", resource_id)

    def get_entity(self, entity_id: str) -> Entity | None:
        return self._live("entity", entity_id)

    def get_moment(self, moment_id: str) -> Moment | None:
        return self._live("moment", moment_id)

    def list_resources(self, document_id: str) -> list[Resource]:
        """A live document's chunks in order (empty if the document is unknown or deleted)."""
        if self.get_document(document_id) is None:
            return []
        return [r for r in self._document_resources(document_id) if not r.deleted]

    def iter_resources(self, on_damage: OnDamage | None = None) -> Iterator[Resource]:
        """Every live chunk with its embedding, for rebuilding in-memory search indexes at start.

        Damage raises ``DataLossError``, or with ``on_damage`` is reported there and skipped.
        """
        for _, data in self._store.items(RESOURCES, on_damage=on_damage):
            resource = decode(Resource, data)
            if not resource.deleted:
                yield resource

    def iter_documents(self, on_damage: OnDamage | None = None) -> Iterator[Document]:
        """Every live document (consistency checks, listings); damage as in ``iter_resources``."""
        for _, data in self._store.items(FAMILY["document"], on_damage=on_damage):
            document = decode(Document, data)
            if not document.deleted:
                yield document

    def entity_types_by_record(self, on_damage: OnDamage | None = None) -> dict[str, set[str]]:
        """For every record linked to a live entity, the types of those entities: one pass
        over the entities (few) instead of an edge scan per chunk when indexes are rebuilt."""
        types: dict[str, set[str]] = {}
        for _, data in self._store.items(ENTITIES, on_damage=on_damage):
            entity = decode(Entity, data)
            if entity.deleted:
                continue
            for edge in self._edges_of(entity.id, on_damage):
                other = edge.to_id if edge.from_id == entity.id else edge.from_id
                types.setdefault(other, set()).add(entity.type)
        return types

    def linked_entity_types(self, record_id: str) -> set[str]:
        """Types of the live entities linked to ``record_id`` (search filters by them)."""
        types = set()
        for edge in self._edges_of(record_id):
            other, kind = (edge.to_id, edge.to_kind) if edge.from_id == record_id else (edge.from_id, edge.from_kind)
            if kind == "entity":
                entity = self.get_entity(other)
                if entity is not None:
                    types.add(entity.type)
        return types

    def find_entities(self, name: str) -> list[Entity]:
        """Live entities whose name or an alias matches ``name`` (normalised)."""
        found = []
        for _, value in list(self._store.items(NAMES, prefix=self._name_key(normalise_name(name)))):
            entity = self.get_entity(value.decode())
            if entity is not None:
                found.append(entity)
        return found

    # -- entities, edges, moments --------------------------------------------------------------

    def put_entity(self, entity: Entity) -> Entity:
        """Insert or replace an entity; its name index follows (stale aliases are removed)."""
        with self._lock:
            self._store.write(self._entity_ops(entity))
        return dataclasses.replace(entity, deleted=False)

    def link(self, from_id: str, to_id: str, relation: str, properties: dict | None = None) -> Edge:
        """Create or replace the ``relation`` edge between two live records of any kind."""
        with self._lock:
            edge = self._resolve_edge(Edge(from_id=from_id, to_id=to_id, relation=relation,
                                           properties=properties or {}), {})
            self._store.write(self._edge_ops(edge))
        return edge

    def traverse(self, start_id: str, depth: int, relation: str | None = None, limit: int = 1000) -> Traversal:
        """Breadth-first walk over edges in both directions, up to ``depth`` hops and ``limit`` nodes."""
        if not 0 <= depth <= MAX_DEPTH:
            raise InvalidRecordError(f"traversal depth must be within 0..{MAX_DEPTH}, got {depth}")
        _, start = self._find_node(start_id)
        nodes: dict[str, Record] = {start_id: start}
        edges: dict[tuple[str, str, str], Edge] = {}
        frontier, truncated = [start_id], False
        for _ in range(depth):
            following = []
            for node_id in frontier:
                for edge in self._edges_of(node_id):
                    if relation is not None and edge.relation != relation:
                        continue
                    outgoing = edge.from_id == node_id
                    other, other_kind = (edge.to_id, edge.to_kind) if outgoing else (edge.from_id, edge.from_kind)
                    if other not in nodes:
                        record = self._live(other_kind, other)
                        if record is None:
                            continue
                        if len(nodes) >= limit:
                            truncated = True
                            continue
                        nodes[other] = record
                        following.append(other)
                    edges[(edge.from_id, edge.to_id, edge.relation)] = edge
            frontier = following
        return Traversal(list(nodes.values()), list(edges.values()), truncated)

    def add_moment(self, moment: Moment) -> Moment:
        """Insert or replace a moment and its time index entry."""
        with self._lock:
            self._store.write(self._moment_ops(moment))
        return dataclasses.replace(moment, deleted=False)

    def list_moments(self, start: datetime, end: datetime, type: str | None = None,
                     limit: int | None = None) -> list[Moment]:
        """Live moments that start within ``[start, end)``, oldest first."""
        found: list[Moment] = []
        index = self._store.items(MOMENT_TIMES, start=_time_key(start), end=_time_key(end))
        for _, value in list(index):
            entry = json.loads(value)
            if type is not None and entry["type"] != type:
                continue
            moment = self.get_moment(entry["id"])
            if moment is not None:
                found.append(moment)
                if limit is not None and len(found) >= limit:
                    break
        return found

    # -- delete and purge -----------------------------------------------------------------------

    def delete(self, kind: Kind, record_id: str) -> bool:
        """Soft-delete a record (a document takes its chunks along); False if it was already deleted."""
        _check_kind(kind)
        with self._lock:
            record = self._load(kind, record_id)
            if record is None:
                raise NotFoundError(f"no {kind} {record_id}")
            if record.deleted:
                return False
            self._store.write(self._soft_delete_ops(kind, record))
            return True

    def purge(self) -> dict[str, int]:
        """Physically remove soft-deleted records with their index entries and edges; counts by kind.

        Each record goes with all its entries in one batch; the store is compacted after,
        so the sealed bytes leave the disk too.
        """
        counts = dict.fromkeys(KINDS, 0)
        with self._lock:
            entries = list(self._store.items(DELETED))
            for first in range(0, len(entries), PURGE_BATCH):
                ops: list[Op] = []
                for tombstone, value in entries[first:first + PURGE_BATCH]:
                    kind = _KIND_OF_CODE[tombstone[:1]]
                    ops.append(Delete(DELETED, tombstone))
                    record = self._load(kind, value.decode())
                    if record is not None and record.deleted:
                        ops += self._purge_ops(kind, record)
                        counts[kind] += 1
                self._store.write(ops)
        if entries:
            self._store.compact()
        return counts

    def stats(self) -> dict:
        """Live and soft-deleted records per kind, edges, and the store's own figures."""
        store = self._store.stats()
        deleted = dict.fromkeys(KINDS, 0)
        for tombstone in self._store.keys(DELETED, on_damage=_counted_elsewhere):
            deleted[_KIND_OF_CODE[tombstone[:1]]] += 1
        return {"live": {kind: store["values"][FAMILY[kind]] - deleted[kind] for kind in KINDS},
                "deleted": deleted,
                "edges": store["values"][EDGES] // 2,
                "bytes_on_disk": store["bytes_on_disk"],
                "store": store}

    # -- damage --------------------------------------------------------------------------------------

    def load_record(self, kind: Kind, record_id: str) -> Record | None:
        """A record whether soft-deleted or not (None: no such record); damage raises ``DamagedRecordError``."""
        return self._load(kind, record_id)

    def record_key(self, kind: Kind, record_id: str) -> tuple[str, bytes]:
        """The column family and key a record is stored under."""
        return FAMILY[kind], self._key(kind, record_id)

    def referenced_ids(self, kind: Kind, on_damage: OnDamage | None = None) -> Iterator[str]:
        """Ids of ``kind`` the index families point at, so that a record whose own bytes are
        unreadable can still be named: chunk lists (resources), uris (documents), names
        (entities), the time index (moments), and soft-delete tombstones. May repeat ids."""
        family = {"resource": DOCUMENT_RESOURCES, "document": URIS, "entity": NAMES, "moment": MOMENT_TIMES}[kind]
        for _, value in self._store.items(family, on_damage=on_damage):
            yield json.loads(value)["id"] if kind == "moment" else value.decode()
        for _, value in self._store.items(DELETED, prefix=_CODE[kind], on_damage=on_damage):
            yield value.decode()

    # -- operations ---------------------------------------------------------------------------------

    def _put_ops(self, kind: Kind, record: Record) -> list[Op]:
        key = self._key(kind, record.id)
        ops: list[Op] = [Put(FAMILY[kind], key, encode(record, deleted=False))]
        if self._store.contains(DELETED, _CODE[kind] + key):  # writing a soft-deleted record revives it
            ops.append(Delete(DELETED, _CODE[kind] + key))
        return ops

    def _entity_ops(self, entity: Entity) -> list[Op]:
        key = self._key("entity", entity.id)
        previous = self._load("entity", entity.id)
        stale = previous.names() - entity.names() if previous is not None else set()
        return (self._put_ops("entity", entity)
                + [Put(NAMES, self._name_key(name) + key, entity.id.encode()) for name in entity.names()]
                + [Delete(NAMES, self._name_key(name) + key) for name in stale])

    def _moment_ops(self, moment: Moment) -> list[Op]:
        key = self._key("moment", moment.id)
        previous = self._load("moment", moment.id)
        ops = self._put_ops("moment", moment)
        ops.append(Put(MOMENT_TIMES, _time_key(moment.start) + key,
                       json.dumps({"id": moment.id, "type": moment.type}).encode()))
        if previous is not None and previous.start != moment.start:
            ops.append(Delete(MOMENT_TIMES, _time_key(previous.start) + key))
        return ops

    def _edge_ops(self, edge: Edge) -> list[Op]:
        a, b, rel = self._node_key(edge.from_id), self._node_key(edge.to_id), self._relation_key(edge.relation)
        value = encode(edge)
        return [Put(EDGES, a + _OUT + b + rel, value), Put(EDGES, b + _IN + a + rel, value)]

    def _soft_delete_ops(self, kind: Kind, record: Record, keep: set[str] = frozenset()) -> list[Op]:
        key = self._key(kind, record.id)
        ops: list[Op] = [Put(FAMILY[kind], key, encode(record, deleted=True)),
                         Put(DELETED, _CODE[kind] + key, record.id.encode())]
        if kind == "document":
            for resource in self._document_resources(record.id):
                if resource.id not in keep and not resource.deleted:
                    ops += self._soft_delete_ops("resource", resource)
        return ops

    def _purge_ops(self, kind: Kind, record: Record) -> list[Op]:
        key = self._key(kind, record.id)
        ops: list[Op] = [Delete(FAMILY[kind], key)]
        node = self._node_key(record.id)
        for edge_key in list(self._store.keys(EDGES, prefix=node)):
            direction, other, rel = edge_key[_NODE:_NODE + 1], edge_key[_NODE + 1:2 * _NODE + 1], edge_key[2 * _NODE + 1:]
            mirror = other + (_IN if direction == _OUT else _OUT) + node + rel
            ops += [Delete(EDGES, edge_key), Delete(EDGES, mirror)]
        if kind == "document":
            ops += [Delete(DOCUMENT_RESOURCES, k) for k in list(self._store.keys(DOCUMENT_RESOURCES, prefix=key))]
            uri_key = self._uri_key(record.uri)
            if self._store.get(URIS, uri_key) == record.id.encode():
                ops.append(Delete(URIS, uri_key))
        elif kind == "resource":
            entry = self._key("document", record.document_id) + record.ordinal.to_bytes(4, "big")
            if self._store.get(DOCUMENT_RESOURCES, entry) == record.id.encode():
                ops.append(Delete(DOCUMENT_RESOURCES, entry))
        elif kind == "entity":
            ops += [Delete(NAMES, self._name_key(name) + key) for name in record.names()]
        else:
            ops.append(Delete(MOMENT_TIMES, _time_key(record.start) + key))
        return ops

    def _supersede(self, document: Document, keep: set[str], ops: list[Op]) -> str | None:
        """Soft-delete the uri's previous document (not the chunks about to be overwritten)."""
        current = self._store.get(URIS, self._uri_key(document.uri))
        if current is None or current.decode() == document.id:
            return None
        previous = self._load("document", current.decode())
        if previous is None or previous.deleted:
            return None
        ops += self._soft_delete_ops("document", previous, keep)
        return previous.id

    # -- lookups ---------------------------------------------------------------------------------------

    def _load(self, kind: Kind, record_id: str) -> Record | None:
        """A record, soft-deleted or not; ``DamagedRecordError`` (DATA_LOSS) names it if unreadable."""
        try:
            data = self._store.get(FAMILY[kind], self._key(kind, record_id))
        except DataLossError as error:
            raise DamagedRecordError(kind, record_id, error) from None
        return None if data is None else decode(RECORD_TYPES[kind], data)

    def _live(self, kind: Kind, record_id: str) -> Record | None:
        record = self._load(kind, record_id)
        return None if record is None or record.deleted else record

    def _find_node(self, record_id: str) -> tuple[Kind, Record]:
        for kind in ("entity", "resource", "document", "moment"):
            record = self._live(kind, record_id)
            if record is not None:
                return kind, record
        raise NotFoundError(f"no live record {record_id}")

    def _resolve_edge(self, edge: Edge, known: dict[str, Kind]) -> Edge:
        """The edge with both endpoints' kinds, from this ingest's records or the store."""
        from_kind = known.get(edge.from_id) or self._find_node(edge.from_id)[0]
        to_kind = known.get(edge.to_id) or self._find_node(edge.to_id)[0]
        return dataclasses.replace(edge, from_kind=from_kind, to_kind=to_kind)

    def _edges_of(self, node_id: str, on_damage: OnDamage | None = None) -> list[Edge]:
        entries = list(self._store.items(EDGES, prefix=self._node_key(node_id), on_damage=on_damage))
        return [decode(Edge, value) for _, value in entries]

    def _document_resources(self, document_id: str) -> list[Resource]:
        """A document's chunks in ordinal order, soft-deleted ones included."""
        entries = list(self._store.items(DOCUMENT_RESOURCES, prefix=self._key("document", document_id)))
        found = (self._load("resource", value.decode()) for _, value in entries)
        return [r for r in found if r is not None and r.document_id == document_id]

    def _check_ingest(self, document: Document, resources: list[Resource], entities: list[Entity]) -> None:
        ordinals = set()
        for r in resources:
            if r.document_id != document.id:
                raise InvalidRecordError(f"resource {r.ordinal} belongs to document {r.document_id}, not {document.id}")
            if r.id != resource_id(r.uri, r.ordinal):
                raise InvalidRecordError(f"resource {r.ordinal} has id {r.id}; chunk ids are resource_id(uri, ordinal)")
            if r.ordinal in ordinals:
                raise InvalidRecordError(f"two resources with ordinal {r.ordinal}")
            ordinals.add(r.ordinal)
        if len({e.id for e in entities}) != len(entities):
            raise InvalidRecordError("the same entity twice in one ingest")

    def _key(self, kind: Kind, record_id: str) -> bytes:
        return self._store.name_key(f"{kind}\0{record_id}")

    def _node_key(self, record_id: str) -> bytes:
        return self._store.name_key(f"node\0{record_id}")

    def _name_key(self, normalised: str) -> bytes:
        return self._store.name_key(f"name\0{normalised}")

    def _relation_key(self, relation: str) -> bytes:
        return self._store.name_key(f"relation\0{relation}")

    def _uri_key(self, uri: str) -> bytes:
        return self._store.name_key(f"uri\0{uri}")


def _time_key(moment: datetime) -> bytes:
    """Microseconds since 1970 plus 2**63, big-endian: byte order is time order, before 1970 too."""
    if moment.tzinfo is None:
        raise InvalidRecordError(f"time bounds must be timezone-aware, got {moment!r}")
    delta = moment - _EPOCH
    micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    return (micros + (1 << 63)).to_bytes(8, "big")


def _counted_elsewhere(damage) -> None:
    """Statistics count what is readable; damage is reported by ``percolate admin verify`` and the node."""


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise InvalidRecordError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
