"""Dense integer slots for string ids, and filters as masks over them.

Every index here keeps its per-resource data in numpy arrays indexed by a small
integer, so that scoring, masking and gathering run in numpy instead of in Python
dictionaries. ``SearchIndex`` gives its semantic, keyword and metadata indexes one
shared ``SlotMap``, so a filter evaluated on the metadata (a ``Selection``) is a boolean
mask that the other two apply as is, with no per-id translation. A slot freed by a
removal is handed to the next new id, so the arrays stay as long as the largest number
of resources ever held at once.
"""
from __future__ import annotations

import sys
from array import array
from collections.abc import Collection, Iterator, Sequence

import numpy as np


def grow(array: np.ndarray, length: int, fill=0) -> np.ndarray:
    """``array`` if it already has ``length`` rows, else a copy half as long again (a
    factor of 2 would leave a freshly rebuilt 100k-vector matrix 150 MB of slack)."""
    if len(array) >= length:
        return array
    bigger = np.full((max(length, len(array) + len(array) // 2, 1024), *array.shape[1:]), fill,
                     dtype=array.dtype)
    bigger[:len(array)] = array
    return bigger


def position(slots: array, slot: int) -> int:
    """Where ``slot`` sits in an ``array('I')`` of slots (a list of postings or of the
    resources with one uri), found by numpy rather than a Python-level scan."""
    return int(np.flatnonzero(np.frombuffer(slots, dtype=np.uint32) == slot)[0])


class SlotMap:
    """Two-way map between string ids and slots, with a mask of the slots in use."""

    def __init__(self) -> None:
        self._slot: dict[str, int] = {}
        self._ids: list[str | None] = []
        self._free: list[int] = []
        self._live = np.zeros(0, dtype=bool)

    def __len__(self) -> int:
        return len(self._slot)

    @property
    def high_water(self) -> int:
        """One past the largest slot ever handed out: the length arrays must cover."""
        return len(self._ids)

    def get(self, id: str) -> int | None:
        return self._slot.get(id)

    def id_of(self, slot: int) -> str:
        id = self._ids[slot]
        if id is None:
            raise KeyError(f"slot {slot} is free")
        return id

    def ids(self) -> Iterator[str]:
        return iter(self._slot)

    def assign(self, id: str) -> int:
        """The slot of ``id``, taking the most recently freed one for a new id."""
        slot = self._slot.get(id)
        if slot is not None:
            return slot
        if self._free:
            slot = self._free.pop()
            self._ids[slot] = id
        else:
            slot = len(self._ids)
            self._ids.append(id)
            self._live = grow(self._live, slot + 1, False)
        self._slot[id] = slot
        self._live[slot] = True
        return slot

    def table(self) -> list[str | None]:
        """The id in each slot (None: free), over ``high_water`` slots: what ``reserve`` takes."""
        return list(self._ids)

    def reserve(self, table: Sequence[str | None]) -> None:
        """Give each id of ``table`` the slot it had there (None: a free slot), on an empty map.

        This is how a saved HNSW graph, whose keys are slots, is reused after a restart.
        """
        if self._ids:
            raise ValueError("reserve fills an empty SlotMap")
        self._ids = list(table)
        self._slot = {id: slot for slot, id in enumerate(table) if id is not None}
        if len(self._slot) != sum(id is not None for id in table):
            raise ValueError("an id appears in two slots")
        self._free = [slot for slot in range(len(table) - 1, -1, -1) if table[slot] is None]
        self._live = np.array([id is not None for id in table], dtype=bool)

    def release(self, id: str) -> int | None:
        """Free the slot of ``id`` (None when unknown) and return it."""
        slot = self._slot.pop(id, None)
        if slot is not None:
            self._ids[slot] = None
            self._live[slot] = False
            self._free.append(slot)
        return slot

    def live_mask(self) -> np.ndarray:
        """A copy: True for the slots in use, over ``high_water`` slots."""
        return self._live[:self.high_water].copy()

    def mask_of(self, allowed: Collection[str]) -> np.ndarray:
        """``allowed`` as a mask over ``high_water`` slots: a ``Selection`` made over this
        map as it is, anything else by looking its ids up (unknown ids are ignored)."""
        size = self.high_water
        if isinstance(allowed, Selection) and allowed.slots is self:
            mask = allowed.mask[:size]
            return mask if len(mask) == size else np.pad(mask, (0, size - len(mask)))
        mask = np.zeros(size, dtype=bool)
        mask[np.fromiter((s for s in map(self._slot.get, allowed) if s is not None), dtype=np.int64)] = True
        return mask

    def memory_bytes(self) -> int:
        """Containers only: the id strings are counted once, by ``MetadataTable``."""
        int_objects = 32 * len(self._slot)  # a slot number above 256 is an object of its own
        return (sys.getsizeof(self._slot) + sys.getsizeof(self._ids) + sys.getsizeof(self._free)
                + 8 * len(self._free) + self._live.nbytes + int_objects)


class Selection(Collection[str]):
    """The ids a filter allows, as a boolean mask over a ``SlotMap``'s slots: constant
    time membership and size, and no strings built. Valid until the map next changes."""

    def __init__(self, slots: SlotMap, mask: np.ndarray) -> None:
        self.slots = slots
        self.mask = mask
        self._count = int(np.count_nonzero(mask))

    def __len__(self) -> int:
        return self._count

    def __contains__(self, id: object) -> bool:
        slot = self.slots.get(id) if isinstance(id, str) else None
        return slot is not None and slot < len(self.mask) and bool(self.mask[slot])

    def __iter__(self) -> Iterator[str]:
        return map(self.slots.id_of, np.flatnonzero(self.mask).tolist())
