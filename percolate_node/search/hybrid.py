"""Hybrid search: one facade over the semantic, keyword and metadata indexes.

Semantic and keyword rankings are each taken ``fusion_depth`` deep, every candidate of
either is scored by both halves, and the two are fused as ``fusion.py`` says (by default
a weighted sum of normalised scores with a boost for chunks holding every query term;
reciprocal rank fusion on request).

Everything lives in memory and ``rebuild`` reloads it from the encrypted store at start.
The indexes hold tenant content, so nothing here writes to disk: the one thing worth
saving, the HNSW graph (the slow part of a rebuild), is handed out as a
``GraphSnapshot`` for the node to seal into its store.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike

from .filters import MetadataTable, ResourceMeta, SearchFilters
from .fusion import Evidence, FusionParams, convex_fusion, reciprocal_rank_fusion
from .keyword import STOP_WORDS, Bm25Params, KeywordIndex
from .slots import grow
from .vector import HnswParams, VectorIndex

Mode = Literal["semantic", "keyword", "hybrid"]


@dataclass(frozen=True, slots=True)
class Hit:
    """One result. ``score``: cosine similarity (semantic), BM25 (keyword) or the fused
    score (hybrid, see ``fusion.py``). Ranks start at 1; 0 means that ranking did not return the resource (or
    was not asked), which is also how the API's protobuf fields read."""

    resource_id: str
    score: float
    semantic_rank: int
    keyword_rank: int


@dataclass(frozen=True)
class RebuildProgress:
    phase: Literal["read", "graph"]
    done: int
    total: int | None  # unknown while the store is still being read


@dataclass(frozen=True)
class RebuildReport:
    resources: int
    seconds: float
    read_seconds: float   # reading the store, tokenising, metadata
    graph_seconds: float  # building the HNSW graph (or checking and patching a saved one)
    graph_patched: int | None = None  # vectors inserted into a saved graph; None: built afresh
    graph_dropped: int = 0  # vectors removed from the saved graph (gone or changed since)


@dataclass(frozen=True)
class GraphSnapshot:
    """The HNSW graph of a ``SearchIndex`` with the id in each slot (its keys are slots):
    saved at shutdown, it spares the next start the graph build. Holds embeddings."""

    slot_ids: list[str | None]
    graph: bytes | bytearray


class SearchIndex:
    """Semantic, keyword and hybrid search over a tenant's resources, with filters.

    Thread-safe: one lock serialises changes and queries (each query takes well under
    a few milliseconds). A resource without an embedding (``vector`` None or empty) is
    searchable by keyword only.
    """

    def __init__(self, dim: int = 384, hnsw: HnswParams = HnswParams(), bm25: Bm25Params = Bm25Params(),
                 stop_words: Iterable[str] = STOP_WORDS, fusion_depth: int = 100) -> None:
        self.dim = dim
        self.hnsw = hnsw
        self.bm25 = bm25
        self.stop_words = frozenset(stop_words)
        self.fusion_depth = fusion_depth
        self._lock = threading.Lock()
        self._vector, self._keyword, self._meta = self._empty_parts()

    def __len__(self) -> int:
        return len(self._meta)

    def __contains__(self, resource_id: object) -> bool:
        return resource_id in self._meta

    def add(self, resource_id: str, vector: ArrayLike | None, text: str, meta: ResourceMeta) -> None:
        """Index a resource, replacing what ``resource_id`` had. A malformed vector is a
        ValueError raised before anything changes."""
        unit = self._unit_or_none(vector)
        with self._lock:
            self._meta.add(resource_id, meta)  # first: it owns the slots the others share
            self._keyword.add(resource_id, text)
            if unit is None:
                self._vector.remove(resource_id)
            else:
                self._vector.add(resource_id, unit)

    def remove(self, resource_id: str) -> bool:
        """Drop a resource (a soft delete in the store); False when it was not indexed."""
        with self._lock:
            self._vector.remove(resource_id)
            self._keyword.remove(resource_id)
            return self._meta.remove(resource_id)  # last: it frees the slot

    def update_meta(self, resource_id: str, meta: ResourceMeta) -> bool:
        """Replace a resource's metadata (say, a new entity link) without re-indexing its
        text or vector; False when it is not indexed."""
        with self._lock:
            if resource_id not in self._meta:
                return False
            self._meta.add(resource_id, meta)
            return True

    def search(self, query_vector: ArrayLike | None, query_text: str | None, mode: Mode = "hybrid",
               k: int = 10, filters: SearchFilters | None = None,
               fusion: FusionParams = FusionParams()) -> list[Hit]:
        """The ``k`` best resources passing ``filters``, best first, ties by id.

        ``semantic`` needs ``query_vector``, ``keyword`` needs ``query_text``, ``hybrid``
        both (a text with no known term then ranks by meaning alone).
        """
        if mode not in ("semantic", "keyword", "hybrid"):
            raise ValueError(f"unknown search mode {mode!r}")
        if mode != "keyword" and query_vector is None:
            raise ValueError(f"{mode} search needs a query vector")
        if mode != "semantic" and query_text is None:
            raise ValueError(f"{mode} search needs a query text")
        unit = None if query_vector is None else self._vector.unit(query_vector)
        with self._lock:
            allowed = self._meta.select(filters or SearchFilters())
            if mode == "semantic":
                return [Hit(id, score, rank, 0)
                        for rank, (id, score) in enumerate(self._vector.search(unit, k, allowed), 1)]
            if mode == "keyword":
                return [Hit(id, score, 0, rank)
                        for rank, (id, score) in enumerate(self._keyword.search(query_text, k, allowed), 1)]
            depth = max(k, self.fusion_depth)
            semantic = [id for id, _ in self._vector.search(unit, depth, allowed)]
            keyword = [id for id, _ in self._keyword.search(query_text, depth, allowed)]
            if fusion.method == "rrf":
                fused = reciprocal_rank_fusion([semantic, keyword], fusion.rrf_k)
            else:
                candidates = list(dict.fromkeys(semantic + keyword))
                cosines = self._vector.cosines(unit, candidates)
                matches = self._keyword.evidence(query_text, candidates)
                fused = convex_fusion({id: Evidence(cosines.get(id), *matches[id]) for id in candidates}, fusion)
        semantic_rank = {id: rank for rank, id in enumerate(semantic, 1)}
        keyword_rank = {id: rank for rank, id in enumerate(keyword, 1)}
        return [Hit(id, score, semantic_rank.get(id, 0), keyword_rank.get(id, 0)) for id, score in fused[:k]]

    def exact_search(self, query_vector: ArrayLike, k: int = 10, filters: SearchFilters | None = None) -> list[Hit]:
        """Semantic search by brute force over every vector: the reference that the
        graph's recall is measured against (milliseconds per query at 100k, not sub-ms)."""
        unit = self._vector.unit(query_vector)
        with self._lock:
            allowed = self._meta.select(filters or SearchFilters())
            return [Hit(id, score, rank, 0)
                    for rank, (id, score) in enumerate(self._vector.exact_search(unit, k, allowed), 1)]

    def graph_snapshot(self) -> GraphSnapshot:
        """The graph and slot table, for ``rebuild(saved=...)`` in a later process."""
        with self._lock:
            return GraphSnapshot(self._meta.slots.table(), self._vector.graph_bytes())

    def rebuild(self, resources: Iterable[tuple[str, ArrayLike | None, str, ResourceMeta]],
                progress: Callable[[RebuildProgress], None] | None = None, threads: int = 0,
                progress_every: int = 10_000, saved: GraphSnapshot | None = None) -> RebuildReport:
        """Replace the whole index with ``resources`` (id, vector, text, meta), as read
        from the store at start; a repeated id keeps its last entry.

        With ``saved`` (an earlier ``graph_snapshot()``), resources keep their saved slots
        and the saved graph is reused after checking it against ``resources``: vectors
        added, removed or changed since are patched in; when more than a quarter differ,
        or the graph does not fit, it is built afresh. Results are the same either way.

        Builds new indexes beside the current ones and swaps them in at the end, so
        searches keep answering (from the old content) meanwhile; a change made during
        the rebuild is lost with the old indexes. The graph is built on ``threads``
        threads (0: all cores); ``threads=1`` gives exactly the graph that adding the
        resources one by one would (slower, reproducible).
        """
        started = time.perf_counter()
        vector, keyword, meta = self._empty_parts()
        if saved is not None:
            meta.slots.reserve(saved.slot_ids)
        rows: dict[str, int] = {}  # id -> its row of matrix
        texts: dict[str, str] = {}  # id -> its last text, indexed in bulk after the loop
        used = 0
        matrix = np.zeros((0, self.dim), dtype=np.float32)
        done = 0
        for resource_id, embedding, text, resource_meta in resources:
            unit = self._unit_or_none(embedding)
            if unit is None:
                rows.pop(resource_id, None)  # a repeat without a vector drops the earlier one
            else:
                row = rows.get(resource_id)
                if row is None:
                    row = rows[resource_id] = used
                    used += 1
                matrix = grow(matrix, used)
                matrix[row] = unit
            meta.add(resource_id, resource_meta)
            texts[resource_id] = text
            done += 1
            if progress is not None and done % progress_every == 0:
                progress(RebuildProgress("read", done, None))
        if saved is not None:  # saved ids gone from the store free their slots
            for id in saved.slot_ids:
                if id is not None and id not in texts:
                    meta.slots.release(id)
        keyword.build(texts.items())
        del texts
        read_seconds = time.perf_counter() - started
        ids = sorted(rows, key=rows.__getitem__)
        vectors = matrix[:used] if len(ids) == used else matrix[[rows[id] for id in ids]]
        reported = 0

        def graph_progress(built: int, total: int) -> None:  # usearch calls this every few items
            nonlocal reported
            if built >= reported + progress_every or built == total != reported:
                reported = built
                progress(RebuildProgress("graph", built, total))

        patched = vector.build(ids, vectors, threads=threads, progress=None if progress is None else graph_progress,
                               saved_graph=None if saved is None else saved.graph)
        inserted, dropped = (None, 0) if patched is None else patched
        with self._lock:
            self._vector, self._keyword, self._meta = vector, keyword, meta
        seconds = time.perf_counter() - started
        return RebuildReport(len(meta), seconds, read_seconds, seconds - read_seconds, inserted, dropped)

    @property
    def stale_fraction(self) -> float:
        """See ``VectorIndex.stale_fraction``: when above about 0.25, call ``compact``."""
        return self._vector.stale_fraction

    def compact(self, threads: int = 0) -> bool:
        """Rebuild the HNSW graph from the live vectors, dropping what removals left behind.

        The build (about as long as the graph part of ``rebuild``) runs without the lock:
        searches and changes go on meanwhile, against the old graph, and the changes are
        replayed onto the new one before it is swapped in. False when it was not swapped
        in: another compaction was running, or a ``rebuild`` replaced the contents.
        """
        with self._lock:
            vector = self._vector
            try:
                job = vector.start_compaction()
            except RuntimeError:
                return False
        try:
            graph = job.build(threads)
        except BaseException:
            with self._lock:
                vector.abandon_compaction(job)
            raise
        with self._lock:
            return vector is self._vector and vector.finish_compaction(job, graph)

    def memory_bytes(self) -> int:
        """Estimated bytes held: arrays exactly, Python objects approximately."""
        with self._lock:
            return self._vector.memory_bytes() + self._keyword.memory_bytes() + self._meta.memory_bytes()

    def _unit_or_none(self, vector: ArrayLike | None) -> np.ndarray | None:
        if vector is None or np.size(vector) == 0:
            return None
        return self._vector.unit(vector)

    def _empty_parts(self) -> tuple[VectorIndex, KeywordIndex, MetadataTable]:
        meta = MetadataTable()
        return (VectorIndex(self.dim, self.hnsw, meta.slots), KeywordIndex(self.bm25, self.stop_words, meta.slots),
                meta)

