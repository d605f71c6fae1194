"""Semantic index: cosine nearest neighbours over unit embeddings.

An HNSW graph (usearch) answers unfiltered queries in well under a millisecond at 100k
chunks. It keeps its own half-precision copy of the vectors to walk the graph; this
module keeps the float32 vectors too, because three things need them exactly: the
final scores (candidates from the graph are rescored in float32, so scores do not
depend on which path found them), exact search over a filtered subset (a graph walk
cannot be told to visit only allowed nodes), and compaction (rebuilding the graph after
many removals, which slowly degrade an HNSW graph's recall).
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from usearch.index import Index, MetricKind, ScalarKind

from .ranking import Ranked, top_k
from .slots import SlotMap, grow

log = logging.getLogger(__name__)

_GRAPH_METRIC, _GRAPH_DTYPE = MetricKind.IP, ScalarKind.F16  # inner product of unit vectors, half precision


@dataclass(frozen=True)
class HnswParams:
    """Graph and filter settings, chosen on 100k clustered 384-d vectors (see
    bench/search.py): recall@10 above 0.99 at about 0.2 ms a query; a wider
    ``expansion_add`` buys little recall for a much slower build."""

    connectivity: int = 16
    expansion_add: int = 128
    expansion_search: int = 64
    exact_below: int = 4096
    """Filters allowing at most this many vectors are answered by exact search (under a
    millisecond at this size)."""
    max_fetch: int = 2048
    """Most candidates fetched from the graph for a filtered query before going exact."""


class VectorIndex:
    """Cosine ANN over ``dim``-dimensional vectors keyed by string ids.

    ``slots``: share one ``SlotMap`` between indexes so that a ``Selection`` made over it
    filters them all as a mask; whoever passes it owns it (this index then never frees
    slots). Not thread-safe: ``SearchIndex`` serialises calls.
    """

    def __init__(self, dim: int = 384, params: HnswParams = HnswParams(), slots: SlotMap | None = None) -> None:
        self.dim = dim
        self.params = params
        self._owns_slots = slots is None
        self._slots = SlotMap() if slots is None else slots
        self._vectors = np.zeros((0, dim), dtype=np.float32)  # float32 unit rows, by slot
        self._has = np.zeros(0, dtype=bool)  # by slot: holds a vector here
        self._count = 0
        self._graph = self._new_graph()
        self._removed_since_build = 0
        self._touched: set[int] | None = None  # slots changed while a compaction runs
        self._removed_during = 0

    def __len__(self) -> int:
        return self._count

    def __contains__(self, id: object) -> bool:
        slot = self._slots.get(id) if isinstance(id, str) else None
        return slot is not None and slot < len(self._has) and bool(self._has[slot])

    def unit(self, vector: ArrayLike) -> np.ndarray:
        """``vector`` as a float32 unit vector; ValueError for a wrong shape, NaN or zero."""
        array = np.asarray(vector, dtype=np.float32)
        if array.shape != (self.dim,):
            raise ValueError(f"expected a vector of {self.dim} floats, got shape {array.shape}")
        return _unit_rows(array[None, :])[0]

    def add(self, id: str, vector: ArrayLike) -> None:
        """Index ``vector`` under ``id``, replacing what ``id`` had."""
        unit = self.unit(vector)
        self.remove(id)
        slot = self._slots.assign(id)
        self._vectors = grow(self._vectors, slot + 1)
        self._has = grow(self._has, slot + 1, False)
        self._vectors[slot] = unit
        self._has[slot] = True
        self._count += 1
        self._graph.add(slot, unit, threads=1)
        if self._touched is not None:
            self._touched.add(slot)

    def remove(self, id: str) -> bool:
        """Drop ``id``; False when it held no vector."""
        if id not in self:
            return False
        slot = self._slots.release(id) if self._owns_slots else self._slots.get(id)
        self._has[slot] = False
        self._count -= 1
        self._graph.remove(slot)
        self._removed_since_build += 1
        if self._touched is not None:
            self._touched.add(slot)
            self._removed_during += 1
        return True

    def build(self, ids: Sequence[str], vectors: np.ndarray, threads: int = 0,
              progress: Callable[[int, int], None] | None = None,
              saved_graph: bytes | bytearray | None = None) -> tuple[int, int] | None:
        """Replace the whole index with ``ids``/``vectors`` (one row each, ids unique),
        inserting into the graph on ``threads`` threads (0: all cores).

        A multi-threaded build is fast (100k in seconds) but its graph depends on thread
        timing; ``threads=1`` builds exactly the graph that adding one by one in the same
        order would, which is what makes results reproducible.

        ``saved_graph`` (``graph_bytes()`` of an earlier index whose slots this index's
        ``SlotMap`` reproduces) is reused instead when it fits: its vectors are checked
        against ``vectors`` and only what differs is removed and re-inserted. Returns how
        many vectors were (inserted into, removed from) the saved graph, or None when it
        was built afresh.
        """
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.shape != (len(ids), self.dim):
            raise ValueError(f"expected {len(ids)} vectors of {self.dim} floats, got {vectors.shape}")
        if len(set(ids)) != len(ids):
            raise ValueError("ids must be unique")
        units = _unit_rows(vectors)
        if self._owns_slots:
            self._slots = SlotMap()
        slots = np.fromiter(map(self._slots.assign, ids), dtype=np.int64, count=len(ids))
        size = self._slots.high_water
        if np.array_equal(slots, np.arange(size)):
            self._vectors = units
        else:
            self._vectors = np.zeros((size, self.dim), dtype=np.float32)
            self._vectors[slots] = units
        self._has = np.zeros(size, dtype=bool)
        self._has[slots] = True
        self._count = len(ids)
        self._removed_since_build = 0
        self._touched = None  # a compaction running on the old contents will not be swapped in
        if saved_graph is not None:
            reused = self._reuse(saved_graph, slots, units, threads)
            if reused is not None:
                self._graph, inserted, dropped = reused
                # removed nodes stay in a usearch graph, across save and restore too, until a compaction
                self._removed_since_build = int(self._graph.stats.nodes) - len(self._graph)
                return inserted, dropped
        self._graph = self._new_graph()
        if len(ids):
            self._graph.add(slots.astype(np.uint64), units, threads=threads, progress=_graph_progress(progress))
        return None

    def graph_bytes(self) -> bytearray:
        """The HNSW graph serialised (keys are slots, vectors half precision): what
        ``build(saved_graph=...)`` reuses. It holds the tenant's embeddings: seal it."""
        return self._graph.save()

    def _reuse(self, saved: bytes | bytearray, slots: np.ndarray, units: np.ndarray,
               threads: int) -> tuple[Index, int, int] | None:
        """(graph, vectors inserted, vectors removed) from ``saved`` patched to hold exactly
        ``units`` at ``slots``; None when it does not fit these settings or differs in more
        than a quarter of the vectors (a fresh build is then as fast, and a better graph)."""
        try:
            return self._patch(Index.restore(saved), slots, units, threads)
        except Exception as error:  # a damaged or foreign buffer: build afresh
            log.warning("saved search graph unusable (%s: %s): building it afresh", type(error).__name__, error)
            return None

    def _patch(self, graph: Index | None, slots: np.ndarray, units: np.ndarray,
               threads: int) -> tuple[Index, int, int] | None:
        if (graph is None or graph.ndim != self.dim or graph.connectivity != self.params.connectivity
                or graph.dtype != _GRAPH_DTYPE or graph.metric != _GRAPH_METRIC):
            return None
        graph.expansion_add, graph.expansion_search = self.params.expansion_add, self.params.expansion_search
        keys = np.array(graph.keys, dtype=np.int64)
        size = max(self._slots.high_water, int(keys.max()) + 1 if len(keys) else 0)
        row_of_slot = np.full(size, -1, dtype=np.int64)
        row_of_slot[slots] = np.arange(len(slots))
        rows = row_of_slot[keys]
        same = rows >= 0
        # half precision, in the order of ``keys`` (usearch cannot stack zero rows)
        saved_vectors = graph.vectors if len(keys) else np.zeros((0, self.dim), dtype=np.float16)
        for first in range(0, len(keys), 8192):  # changed embeddings, a block at a time
            block = slice(first, first + 8192)
            kept = same[block]
            difference = np.abs(saved_vectors[block][kept].astype(np.float32) - units[rows[block][kept]])
            changed = np.flatnonzero(kept)[difference.max(axis=1, initial=0) > _HALF_PRECISION_TOLERANCE]
            same[first + changed] = False
        stale = keys[~same]
        current = np.zeros(size, dtype=bool)
        current[keys[same]] = True
        missing = slots[~current[slots]]
        if len(stale) + len(missing) > max(1, len(slots)) // 4:
            return None
        if len(stale):
            graph.remove(stale.astype(np.uint64))
        if len(missing):
            graph.add(missing.astype(np.uint64), units[row_of_slot[missing]], threads=threads)
        return graph, len(missing), len(stale)

    @property
    def stale_fraction(self) -> float:
        """Removals (replacements included) since the graph was built, per live vector:
        past about 0.25 recall starts to slip and ``compact`` is worth its cost."""
        return self._removed_since_build / max(1, len(self))

    def start_compaction(self) -> Compaction:
        """Begin a compaction whose slow part, ``Compaction.build``, needs no lock: it works
        on a copy of the live vectors, and this index records the slots that change
        meanwhile so that ``finish_compaction`` can replay them onto the new graph."""
        if self._touched is not None:
            raise RuntimeError("a compaction of this index is already running")
        live = self._live_slots()
        self._touched = set()
        self._removed_during = 0
        return Compaction(self, live, self._vectors[live].copy(), self._touched)

    def abandon_compaction(self, job: Compaction) -> None:
        """Forget ``job`` (its build failed), so that a later compaction can start."""
        if job.token is self._touched:
            self._touched = None

    def finish_compaction(self, job: Compaction, graph: Index) -> bool:
        """Swap in ``graph`` (from ``job.build``) after replaying the changes made since
        ``start_compaction``; False (and nothing changed) when a ``build`` replaced this
        index's contents in between."""
        if job.index is not self or self._touched is None or job.token is not self._touched:
            return False
        for slot in sorted(self._touched):
            if graph.contains(slot):
                graph.remove(slot)
            if slot < len(self._has) and self._has[slot]:
                graph.add(slot, self._vectors[slot], threads=1)
        self._graph = graph
        self._removed_since_build = self._removed_during
        self._touched = None
        return True

    def search(self, query: ArrayLike, k: int, allowed: Collection[str] | None = None) -> Ranked:
        """The ``k`` nearest ids by cosine similarity, best first, ties by id.

        With ``allowed``, only those ids are returned, and still ``k`` of them when that
        many are indexed: a small allowed set is searched exactly; a larger one by
        fetching enough graph candidates that about 2k should pass (``k`` over the
        allowed fraction, twice), and exactly when fewer than k do (a filter whose
        resources lie far from the query).
        """
        unit = self.unit(query)
        if k <= 0 or self._count == 0:
            return []
        if allowed is None:
            hits = self._graph_search(unit, k, None, k)
            return hits if len(hits) >= min(k, self._count) else self._exact(unit, k, None)
        mask = self._allowed_mask(allowed)
        count = int(np.count_nonzero(mask))
        if count == 0:
            return []
        fetch = k * math.ceil(2 * self._count / count)
        if count > self.params.exact_below and fetch <= self.params.max_fetch:
            hits = self._graph_search(unit, min(fetch, self._count), mask, k)
            if len(hits) >= min(k, count):
                return hits
        return self._exact(unit, k, mask)

    def exact_search(self, query: ArrayLike, k: int, allowed: Collection[str] | None = None) -> Ranked:
        """Brute force in numpy over every indexed vector (or only ``allowed``): the
        reference that recall is measured against."""
        return self._exact(self.unit(query), k, None if allowed is None else self._allowed_mask(allowed))

    def cosines(self, unit: np.ndarray, ids: Iterable[str]) -> dict[str, float]:
        """Exact cosine of ``unit`` (already a unit vector) to each id of ``ids`` that holds
        a vector: hybrid fusion scores the keyword half's candidates with it."""
        held = [(id, self._slots.get(id)) for id in ids if id in self]
        if not held:
            return {}
        scores = self._vectors[np.fromiter((slot for _, slot in held), dtype=np.int64, count=len(held))] @ unit
        return {id: float(score) for (id, _), score in zip(held, scores.tolist())}

    def memory_bytes(self) -> int:
        slots = self._slots.memory_bytes() if self._owns_slots else 0
        return self._vectors.nbytes + self._has.nbytes + self._graph.memory_usage + slots

    def _allowed_mask(self, allowed: Collection[str]) -> np.ndarray:
        size = self._slots.high_water
        return self._slots.mask_of(allowed) & grow(self._has, size, False)[:size]

    def _live_slots(self) -> np.ndarray:
        return np.flatnonzero(self._has[:self._slots.high_water])

    def _graph_search(self, unit: np.ndarray, fetch: int, mask: np.ndarray | None, k: int) -> Ranked:
        slots = self._graph.search(unit, fetch, threads=1).keys.astype(np.int64)
        if mask is not None:
            slots = slots[mask[slots]]
        return top_k(slots, self._vectors[slots] @ unit, k, self._slots.id_of)

    def _exact(self, unit: np.ndarray, k: int, mask: np.ndarray | None) -> Ranked:
        size = self._slots.high_water
        slots = self._live_slots() if mask is None else np.flatnonzero(mask)
        if 3 * len(slots) < size:  # gathering a few rows beats one pass over all of them
            scores = self._vectors[slots] @ unit
        else:
            scores = (self._vectors[:size] @ unit)[slots]
        return top_k(slots, scores, k, self._slots.id_of)

    def _new_graph(self) -> Index:
        return Index(ndim=self.dim, metric=_GRAPH_METRIC, dtype=_GRAPH_DTYPE, connectivity=self.params.connectivity,
                     expansion_add=self.params.expansion_add,
                     expansion_search=self.params.expansion_search)


@dataclass
class Compaction:
    """A graph rebuild in progress (``VectorIndex.start_compaction``): the live slots and
    a copy of their vectors, so ``build`` can run while the index keeps changing."""

    index: VectorIndex
    slots: np.ndarray
    vectors: np.ndarray
    token: set[int]  # the index's record of changed slots for this compaction: which one it is

    def build(self, threads: int = 0) -> Index:
        graph = self.index._new_graph()
        if len(self.slots):
            graph.add(self.slots.astype(np.uint64), self.vectors, threads=threads)
        return graph


_HALF_PRECISION_TOLERANCE = 1e-3
"""A unit vector's components differ from their float16 copies by under 5e-4; a
changed embedding differs by far more."""


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, the same way one at a time as in bulk, so a vector
    added alone scores bit for bit as it does after a bulk build."""
    norms = np.linalg.norm(vectors, axis=1)
    if not np.all(np.isfinite(norms) & (norms > 0)):
        raise ValueError("a vector must be finite and non-zero to have a direction")
    return vectors / norms[:, None]


def _graph_progress(progress: Callable[[int, int], None] | None):
    if progress is None:
        return None

    def report(done, total):
        progress(done, total)
        return True  # usearch stops the build when a callback returns False

    # usearch checks the annotations themselves, which this module's
    # ``from __future__ import annotations`` would turn into strings.
    report.__annotations__ = {"done": int, "total": int, "return": bool}
    return report
