"""The node's data plane: the tenant's memory (encrypted store + REM repository), its
in-memory search indexes, and ingest through the reading service.

Plain Python called by the servicer. The store is the source of truth: an ingest is
written in one synced batch first and indexed after, and the indexes are rebuilt from
the store at start, so a crash between the two can never leave them disagreeing.
"""
from __future__ import annotations

import asyncio
import ctypes
import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from . import graph_snapshot
from .config import NodeConfig
from .errors import InvalidRequestError, NotFoundError
from .reading_client import ReadingClient
from .rem import (Document, Edge, Entity, MemoryRepository, Moment, Resource, Traversal, document_id,
                  resource_id)
from .rem.errors import DamagedRecordError
from .rem.integrity import DamageReport, name_damage
from .search import FusionParams, ResourceMeta, SearchFilters, SearchIndex
from .store import EncryptedStore, KekFile

log = logging.getLogger(__name__)

KINDS = ("document", "resource", "entity", "moment")
COMPACT_ABOVE_STALE = 0.25
COMPACTION_WAIT_S = 5.0  # at close, for a running graph compaction (else the current graph is saved)
UNKNOWN_CREATED = datetime(1970, 1, 1, tzinfo=timezone.utc)  # a chunk whose document is damaged


@dataclass(frozen=True)
class IngestOutcome:
    document_id: str
    created: bool
    resources: int
    pages: int
    format: str
    warnings: tuple[str, ...] = ()
    moment_id: str = ""


@dataclass(frozen=True)
class SearchResult:
    resource: Resource
    score: float
    semantic_rank: int
    keyword_rank: int


@dataclass
class NodeMemory:
    tenant_id: str
    data_dir: Path
    store: EncryptedStore
    repository: MemoryRepository
    index: SearchIndex
    reading: ReadingClient | None
    rebuild_seconds: float = 0.0
    rebuild_graph: str = ""  # how the start got its search graph: built, or saved and patched
    damage: DamageReport = field(default_factory=DamageReport)  # found at start and while serving
    _graph_version: int = 0  # counts changes to the search graph
    _saved_version: int = 0  # the version last saved (or loaded unchanged)
    _save_lock: threading.Lock = field(default_factory=threading.Lock)
    _compaction: threading.Thread | None = None
    _write_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    standby: bool = False
    """A replica's standby (HA): its store changes only by applying the active's log, so the
    search graph is not saved (a save seals values and logs the seal reservation, which would
    give the copy a record of its own). Every replica opens as one; promotion clears it."""

    @classmethod
    def open(cls, config: NodeConfig, reading: ReadingClient | None) -> "NodeMemory":
        """Open the store (a wrong key refuses before any write) and rebuild the indexes."""
        store = EncryptedStore.open(config.data_dir, config.tenant_id,
                                   KekFile(config.kek_file, config.key_files_group_readable),
                                   seal_limit=config.dek_seal_limit)
        repository = MemoryRepository(store)
        memory = cls(config.tenant_id, config.data_dir, store, repository, SearchIndex(), reading,
                     standby=bool(config.ha_lease_url))
        memory.rebuild_index()
        _return_freed_memory()
        return memory

    @property
    def index_size(self) -> int:
        return len(self.index)

    def _meta(self, resource: Resource, created: datetime | None = None,
              entity_types: set[str] | None = None) -> ResourceMeta:
        """Filter metadata of a chunk; ``created`` and ``entity_types`` are looked up when not given."""
        if created is None:
            document = self.repository.get_document(resource.document_id)
            created = document.created if document else datetime.now(timezone.utc)
        if entity_types is None:
            entity_types = self.repository.linked_entity_types(resource.id)
        return ResourceMeta(uri=resource.uri, document_id=resource.document_id, created=created,
                            entity_types=frozenset(entity_types))

    def rebuild_index(self) -> float:
        """Fill the in-memory indexes from the store (at start), reusing the search graph
        saved at the last stop when there is one (``graph_snapshot``)."""
        started = time.perf_counter()
        saved = graph_snapshot.load(self.store)
        # Damaged records (a bad block, a failed seal) are skipped and counted, never a reason
        # not to start: the node serves what is intact and says it is degraded.
        note = self.damage.add
        created = {d.id: d.created for d in self.repository.iter_documents(note)}
        types = self.repository.entity_types_by_record(note)
        report = self.index.rebuild(((r.id, r.embedding, r.text,
                                      self._meta(r, created.get(r.document_id, UNKNOWN_CREATED),
                                                 types.get(r.id, set())))
                                     for r in self.repository.iter_resources(note)), saved=saved)
        if self.damage:
            name_damage(self.repository, self.damage)
            log.warning("the store is damaged: %s; serving what is intact. Damaged: %s. Run `percolate admin "
                        "verify` on the stopped node for the whole store", self.damage.summary(),
                        "; ".join(r.describe() for r in self.damage.records()[:20]))
        if report.graph_patched is None:
            self.rebuild_graph = "built" + ("" if saved is None else " (the saved graph did not fit)")
            self._graph_version += 1
            self.save_graph()  # so that even a crash later restarts from a graph
        else:
            # (no ", " in it: `percolate serve` prints it at the end of a comma-separated line)
            self.rebuild_graph = (f"saved graph reused: {report.graph_patched} vectors added "
                                  f"and {report.graph_dropped} dropped since")
            self._graph_version += 1 if report.graph_patched or report.graph_dropped else 0
        self.rebuild_seconds = time.perf_counter() - started
        return self.rebuild_seconds

    @property
    def graph_unsaved(self) -> bool:
        """The search graph changed since it was last saved (or loaded)."""
        return self._graph_version != self._saved_version

    def save_graph(self) -> bool:
        """Seal the search graph into the store if it changed since it was saved or loaded.

        Safe beside ingests and searches (from any thread): the snapshot is taken under
        the index's lock, and a change made after it leaves the graph marked unsaved.
        """
        with self._save_lock:
            version = self._graph_version
            if version == self._saved_version or self.standby:
                return False
            if len(self.index):
                graph_snapshot.save(self.store, self.index.graph_snapshot())
            else:  # nothing left to search: no embeddings of deleted chunks stay behind
                graph_snapshot.drop(self.store)
            self._saved_version = version
            return True

    async def ingest(self, content: bytes, filename: str, uri: str = "", ocr: int = 0,
                     chunk_tokens: int = 0) -> IngestOutcome:
        if not content:
            raise InvalidRequestError("content is empty: send the bytes of a document")
        doc_id = document_id(content)
        existing = self.repository.get_document(doc_id)
        if existing is not None:
            return IngestOutcome(doc_id, False, len(self.repository.list_resources(doc_id)),
                                 int(existing.metadata.get("pages", 0)), existing.format)
        parsed = await self.reading.parse(content, filename, ocr=ocr, chunk_tokens=chunk_tokens)
        uri = uri or f"file://{filename or doc_id}"
        now = datetime.now(timezone.utc)
        metadata = {**parsed.metadata, "pages": str(len(parsed.pages)), "chunks": str(len(parsed.chunks)),
                    "filename": filename}
        document = Document(id=doc_id, uri=uri, title=parsed.metadata.get("title") or filename or uri,
                            format=parsed.format, mime=parsed.mime_type, metadata=metadata,
                            created=now, updated=now)
        resources = [Resource(document_id=doc_id, uri=uri, ordinal=chunk.ordinal, text=chunk.text,
                              embedding=np.asarray(chunk.embedding, dtype=np.float32),
                              page_span=(chunk.page_start, chunk.page_end),
                              heading_path=list(chunk.heading_path))
                     for chunk in parsed.chunks]
        moment = Moment(start=now, end=now, type="ingest", references=[doc_id],
                        summary=f"ingested {filename or uri} ({parsed.format}, {len(parsed.pages)} pages, "
                                f"{len(resources)} chunks)")
        async with self._write_lock:
            result = await asyncio.to_thread(self.repository.ingest, document, resources, (), moment)
            if result.new:
                stale = len(resources)  # same uri, new content: the old document's extra chunks go
                while resource_id(uri, stale) in self.index:
                    self.index.remove(resource_id(uri, stale))
                    stale += 1
                for resource in resources:
                    # a chunk written just now has no links yet
                    self.index.add(resource.id, resource.embedding, resource.text, self._meta(resource, now, set()))
                self._graph_version += 1
        return IngestOutcome(doc_id, result.new, len(resources), len(parsed.pages), parsed.format,
                             tuple(parsed.warnings), moment.id if result.new else "")

    async def search(self, query: str, mode: str = "hybrid", limit: int = 10,
                     filters: SearchFilters = SearchFilters(),
                     fusion: FusionParams = FusionParams()) -> list[SearchResult]:
        if not query.strip():
            raise InvalidRequestError("query is empty")
        if not 1 <= limit <= 1000:
            raise InvalidRequestError("limit must be between 1 and 1000")
        vector = None
        if mode in ("semantic", "hybrid"):
            vector = np.asarray(await self.reading.embed_query(query), dtype=np.float32)
        hits = self.index.search(vector, query if mode in ("keyword", "hybrid") else None,
                                 mode=mode, k=limit, filters=filters, fusion=fusion)
        results = []
        for hit in hits:
            try:
                resource = self.repository.get_resource(hit.resource_id)
            except DamagedRecordError as error:  # damaged since the start: out of the index, counted
                log.warning("search hit %s is damaged on disk, dropped from the index: %s", hit.resource_id, error)
                self.note_damage(error)
                if self.index.remove(hit.resource_id):
                    self._graph_version += 1
                continue
            if resource is not None:
                results.append(SearchResult(resource, hit.score, hit.semantic_rank, hit.keyword_rank))
        return results

    def note_damage(self, error: Exception) -> None:
        """Count a DATA_LOSS met while serving (the metric and the health detail follow)."""
        self.damage.add_error(error)

    def get(self, kind: str, record_id: str):
        getter = {"document": self.repository.get_document, "resource": self.repository.get_resource,
                  "entity": self.repository.get_entity, "moment": self.repository.get_moment}[kind]
        record = getter(record_id)
        if record is None:
            raise NotFoundError(f"no {kind} with id {record_id!r}")
        return record

    def put_entity(self, entity: Entity) -> Entity:
        stored = self.repository.put_entity(entity)
        self._refresh_links(entity.id)
        return stored

    def link(self, from_id: str, to_id: str, relation: str, properties: dict[str, str]) -> Edge:
        edge = self.repository.link(from_id, to_id, relation, properties)
        for endpoint in (from_id, to_id):
            self._refresh_links(endpoint)
        return edge

    def _refresh_links(self, record_id: str) -> None:
        """Entity types feed the search filters: update the resources linked to ``record_id``."""
        resource = self.repository.get_resource(record_id)
        targets = [resource] if resource is not None else [
            node for node in self.repository.traverse(record_id, 1).nodes if isinstance(node, Resource)]
        for target in targets:
            self.index.update_meta(target.id, self._meta(target))

    def traverse(self, start_id: str, depth: int, relation: str = "") -> Traversal:
        if not 1 <= depth <= 5:
            raise InvalidRequestError("depth must be between 1 and 5")
        return self.repository.traverse(start_id, depth, relation or None)

    def add_moment(self, moment: Moment) -> Moment:
        return self.repository.add_moment(moment)

    def list_moments(self, start: datetime, end: datetime, type_: str = "", limit: int = 0) -> list[Moment]:
        return self.repository.list_moments(start, end, type_ or None, limit or 1000)

    def delete(self, kind: str, record_id: str) -> bool:
        if kind not in KINDS:
            raise InvalidRequestError(f"unknown kind {kind!r}")
        chunks = self.repository.list_resources(record_id) if kind == "document" else []
        removed = self.repository.delete(kind, record_id)
        unindexed = [self.index.remove(id) for id in ([record_id] if kind == "resource" else [r.id for r in chunks])]
        if any(unindexed):
            self._graph_version += 1
        if self.index.stale_fraction > COMPACT_ABOVE_STALE:  # removals slowly degrade HNSW recall
            self._compact_in_background()
        return removed

    def _compact_in_background(self) -> None:
        """Rebuild the search graph on a thread (seconds at 100k chunks); searches go on meanwhile."""
        if self._compaction is not None and self._compaction.is_alive():
            return

        def compact() -> None:
            try:
                if self.index.compact():
                    self._graph_version += 1
            except Exception:  # the old graph keeps serving; the next delete past the mark tries again
                log.exception("compacting the search graph failed")

        self._compaction = threading.Thread(target=compact, name="search-graph-compaction", daemon=True)
        self._compaction.start()

    def stats(self) -> dict:
        repository = self.repository.stats()
        plural = {"document": "documents", "resource": "resources", "entity": "entities", "moment": "moments"}
        stats = {plural[kind]: count for kind, count in repository["live"].items()}
        stats["storage_bytes"] = repository["bytes_on_disk"]
        stats["data_dir_bytes"] = sum(p.stat().st_size for p in self.data_dir.rglob("*") if p.is_file())
        stats["index_entries"] = len(self.index)
        stats["index_rebuild_seconds"] = self.rebuild_seconds
        stats["dek_seals"], stats["dek_seal_limit"] = repository["store"]["seals"], repository["store"]["seal_limit"]
        return stats

    def close(self) -> None:
        """Save the search graph (a clean stop makes the next start fast), then close the store."""
        try:
            if self._compaction is not None:
                self._compaction.join(COMPACTION_WAIT_S)
            self.save_graph()
        finally:
            self.store.close()


def _return_freed_memory() -> None:
    """Hand the heap freed by the rebuild back to the OS (glibc keeps it otherwise: about
    100 MB at 100k chunks, which an idle node would hold for nothing). No-op elsewhere."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
