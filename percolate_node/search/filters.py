"""Per-resource metadata and the filters a search may apply to it.

Filters are evaluated as numpy masks over slots (time ranges on an array of creation
times; uris, documents and entity types through small inverted indexes), giving a
``Selection`` that the semantic and keyword indexes, sharing the same slots, apply
without looking up a single id.
"""
from __future__ import annotations

import bisect
import sys
from array import array
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np

from .slots import Selection, SlotMap, grow, position


@dataclass(frozen=True, slots=True)
class ResourceMeta:
    """What filters can ask about a resource. ``entity_types``: the types of the entities
    linked to it. ``created``: a naive datetime is taken as UTC."""

    uri: str
    document_id: str
    created: datetime
    entity_types: frozenset[str] = frozenset()


@dataclass(frozen=True)
class SearchFilters:
    """All given conditions must hold. ``uris``, ``document_ids`` and ``entity_types``
    match any of their values; ``uri_prefix`` is a plain string prefix; the time range
    is half-open: ``created_after <= created < created_before``."""

    uri_prefix: str | None = None
    uris: Collection[str] | None = None
    entity_types: Collection[str] | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    document_ids: Collection[str] | None = None

    def is_empty(self) -> bool:
        return all(value is None for value in (self.uri_prefix, self.uris, self.entity_types,
                                               self.created_after, self.created_before,
                                               self.document_ids))


def timestamp(moment: datetime) -> float:
    """Seconds since the epoch; naive datetimes are UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


class MetadataTable:
    """``ResourceMeta`` by resource id, indexed for ``select``. It owns its ``slots``: a
    resource's slot is freed when it is removed from here."""

    def __init__(self) -> None:
        self.slots = SlotMap()
        self._meta: list[ResourceMeta | None] = []
        self._created = np.zeros(0, dtype=np.float64)
        # inverted indexes: value -> slots holding it, as array('I') (4 bytes a slot, where
        # a set of ints costs about 60)
        self._by_uri: dict[str, array] = {}
        self._by_document: dict[str, array] = {}
        self._by_type: dict[str, array] = {}
        self._sorted_uris: list[str] = []  # distinct uris, for prefix ranges
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def __contains__(self, id: object) -> bool:
        slot = self.slots.get(id) if isinstance(id, str) else None
        return slot is not None and slot < len(self._meta) and self._meta[slot] is not None

    def add(self, id: str, meta: ResourceMeta) -> None:
        """Record ``meta`` for ``id``, replacing what ``id`` had (and keeping its slot)."""
        created = timestamp(meta.created)
        slot = self.slots.assign(id)
        self._meta.extend([None] * (slot + 1 - len(self._meta)))
        if self._meta[slot] is None:
            self._count += 1
        else:
            self._unindex(slot)
        self._meta[slot] = meta
        self._created = grow(self._created, slot + 1)
        self._created[slot] = created
        if meta.uri not in self._by_uri:
            bisect.insort(self._sorted_uris, meta.uri)
        self._by_uri.setdefault(meta.uri, array("I")).append(slot)
        self._by_document.setdefault(meta.document_id, array("I")).append(slot)
        for entity_type in meta.entity_types:
            self._by_type.setdefault(entity_type, array("I")).append(slot)

    def remove(self, id: str) -> bool:
        if id not in self:
            return False
        slot = self.slots.release(id)
        self._unindex(slot)
        self._meta[slot] = None
        self._count -= 1
        return True

    def select(self, filters: SearchFilters) -> Selection | None:
        """The ids ``filters`` allow; None when they allow everything."""
        if filters.is_empty():
            return None
        size = self.slots.high_water
        mask = self.slots.live_mask()
        if filters.uris is not None:
            mask &= self._any_of(self._by_uri, filters.uris, size)
        if filters.uri_prefix is not None:
            start = bisect.bisect_left(self._sorted_uris, filters.uri_prefix)
            end = start
            while end < len(self._sorted_uris) and self._sorted_uris[end].startswith(filters.uri_prefix):
                end += 1
            mask &= self._any_of(self._by_uri, self._sorted_uris[start:end], size)
        if filters.document_ids is not None:
            mask &= self._any_of(self._by_document, filters.document_ids, size)
        if filters.entity_types is not None:
            mask &= self._any_of(self._by_type, filters.entity_types, size)
        created = self._created[:size]
        if filters.created_after is not None:
            mask &= created >= timestamp(filters.created_after)
        if filters.created_before is not None:
            mask &= created < timestamp(filters.created_before)
        return Selection(self.slots, mask)

    def memory_bytes(self) -> int:
        """Containers, slot arrays, the resource id strings (shared with the other indexes,
        so counted here only) and 112 bytes a resource for its ``ResourceMeta``."""
        ids = sum(sys.getsizeof(id) for id in self.slots.ids())
        sets = sum(sys.getsizeof(slots) + sys.getsizeof(key)
                   for index in (self._by_uri, self._by_document, self._by_type)
                   for key, slots in index.items())
        return (ids + sets + sys.getsizeof(self._meta) + 112 * len(self.slots) + self._created.nbytes
                + sys.getsizeof(self._sorted_uris) + self.slots.memory_bytes())

    def _unindex(self, slot: int) -> None:
        meta = self._meta[slot]
        if _discard(self._by_uri, meta.uri, slot):
            del self._sorted_uris[bisect.bisect_left(self._sorted_uris, meta.uri)]
        _discard(self._by_document, meta.document_id, slot)
        for entity_type in meta.entity_types:
            _discard(self._by_type, entity_type, slot)

    @staticmethod
    def _any_of(index: dict[str, array], keys: Collection[str], size: int) -> np.ndarray:
        mask = np.zeros(size, dtype=bool)
        for key in keys:
            slots = index.get(key)
            if slots:
                mask[np.frombuffer(slots, dtype=np.uint32)] = True
        return mask


def _discard(index: dict[str, array], key: str, slot: int) -> bool:
    """Take ``slot`` out of ``index[key]``; True when that emptied (and dropped) the key."""
    slots = index[key]
    del slots[position(slots, slot)]
    if slots:
        return False
    del index[key]
    return True
