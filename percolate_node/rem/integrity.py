"""Damage on disk: what a tenant's store cannot give back, named as records where possible.

Two kinds of damage reach the node. A value whose seal fails (changed through RocksDB,
or on disk where the block checksum still matched) is one record at a known key. A
block RocksDB cannot read (checksum mismatch) hides every value in it, keys included:
scans skip it (``EncryptedStore.items(on_damage=...)``) and report the run of keys it
lies in. Keys are HMACs, so a damaged record is named by its references instead: the
chunk lists, uris, names, time index and tombstones hold the ids, and a referenced
record whose key is damaged, or lies in an unreadable run and fails to read, is named
(kind and id). A run in which no record can be named counts as one damaged record.

The node keeps one ``DamageReport`` (start-up scan plus every DATA_LOSS served since),
exported as ``percolate_corrupt_records`` and the ``percolate.node.v1.Integrity``
health status; ``percolate admin verify`` builds one over the whole store. Nothing
repairs in place: the repair is a restore from a backup.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

from percolate_node.rem.errors import DamagedRecordError
from percolate_node.rem.model import Kind
from percolate_node.rem.repository import FAMILY, MemoryRepository
from percolate_node.store.errors import DataLossError
from percolate_node.store.layout import DATA_FAMILIES
from percolate_node.store.store import Damage

_KIND_OF_FAMILY = {family: kind for kind, family in FAMILY.items()}
REPAIR = ("the repair is a restore: stop the node, restore the data directory from the last good backup "
          "with the tenant's exported keyring (percolate_node/store/README.md), then run "
          "`percolate admin verify` again")


@dataclass(frozen=True)
class DamagedRecord:
    """One damaged record: where it lies, why, and which record it is when that is known."""

    table: str
    key: bytes
    reason: str
    kind: str = ""  # "document", "resource", ...; "" when no reference named it
    record_id: str = ""
    run_end: bytes | None = None  # an unnamed unreadable run: the next readable key (None: the end)
    run: bool = False

    def describe(self) -> str:
        if self.record_id:
            return f"{self.kind} {self.record_id} ({self.table}/{self.key.hex()}): {self.reason}"
        if self.run:
            end = self.run_end.hex() if self.run_end is not None else "(end)"
            return (f"{self.table}: unreadable keys after {self.key.hex() or '(start)'} up to {end}, "
                    f"records in it unknown: {self.reason}")
        return f"{self.table}/{self.key.hex()}: {self.reason}"


class DamageReport:
    """Damaged records of one store, each once (by family and key); safe across threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: dict[tuple[str, bytes], DamagedRecord] = {}
        self._runs: dict[tuple[str, bytes], Damage] = {}  # unreadable runs no record was named in yet
        self._named_runs: set[tuple[str, bytes]] = set()

    def add(self, damage: Damage) -> None:
        """A scan's report (``on_damage``)."""
        with self._lock:
            if damage.block:
                if (damage.cf, damage.key) not in self._named_runs:
                    self._runs.setdefault((damage.cf, damage.key), damage)
            else:
                self._records.setdefault((damage.cf, damage.key), DamagedRecord(damage.cf, damage.key, damage.reason))

    def add_error(self, error: Exception) -> None:
        """A DATA_LOSS met while serving (``DamagedRecordError`` or the store's ``DataLossError``)."""
        cf, key = getattr(error, "cf", ""), getattr(error, "key", b"")
        if not cf:
            return
        if isinstance(error, DamagedRecordError):
            self.name(error.kind, error.record_id, cf, key, error.reason)
            return
        with self._lock:
            self._records.setdefault((cf, key), DamagedRecord(cf, key, str(error)))

    def name(self, kind: str, record_id: str, cf: str, key: bytes, reason: str) -> None:
        with self._lock:
            known = self._records.get((cf, key))
            if known is None or not known.record_id:
                self._records[(cf, key)] = DamagedRecord(cf, key, known.reason if known else reason, kind, record_id)
            for run_key, run in list(self._runs.items()):
                if _within(run, cf, key):
                    del self._runs[run_key]
                    self._named_runs.add(run_key)

    def pending(self) -> list[Damage]:
        """Damage not yet named as a record: unreadable runs, and values with no id to them."""
        with self._lock:
            values = [Damage(r.table, r.key, r.reason) for r in self._records.values() if not r.record_id]
            return values + list(self._runs.values())

    def records(self) -> list[DamagedRecord]:
        with self._lock:
            runs = [DamagedRecord(d.cf, d.key, d.reason, run_end=d.resume, run=True) for d in self._runs.values()]
            return sorted([*self._records.values(), *runs], key=lambda r: (r.table, r.key))

    @property
    def count(self) -> int:
        """Damaged records: each named one, each unnamed damaged value, each unreadable run with none named."""
        with self._lock:
            return len(self._records) + len(self._runs)

    def __bool__(self) -> bool:
        return self.count > 0

    def summary(self) -> str:
        tables = sorted({r.table for r in self.records()})
        return f"{self.count} damaged record(s) in {', '.join(tables) or 'no table'}"


def name_damage(repository: MemoryRepository, report: DamageReport) -> None:
    """Name the report's pending damage as records, from the ids the index families hold."""
    pending = report.pending()
    kinds = sorted({_KIND_OF_FAMILY[d.cf] for d in pending if d.cf in _KIND_OF_FAMILY})
    for kind in kinds:
        places = [d for d in pending if d.cf == FAMILY[kind]]
        for record_id in set(repository.referenced_ids(kind, on_damage=report.add)):
            cf, key = repository.record_key(kind, record_id)
            for damage in places:
                if damage.block and _within(damage, cf, key):
                    _confirm(repository, report, kind, record_id)
                elif not damage.block and damage.key == key:
                    report.name(kind, record_id, cf, key, damage.reason)


def verify(repository: MemoryRepository, store, report: DamageReport) -> int:
    """Read and open every value of every data family into ``report``, then name what is damaged.

    Returns how many values were read intact.
    """
    intact = 0
    for cf in DATA_FAMILIES:
        for _ in store.items(cf, on_damage=report.add):
            intact += 1
    name_damage(repository, report)
    return intact


def _within(run: Damage, cf: str, key: bytes) -> bool:
    return run.block and run.cf == cf and key > run.key and (run.resume is None or key < run.resume)


def _confirm(repository: MemoryRepository, report: DamageReport, kind: Kind, record_id: str) -> None:
    """A referenced record inside an unreadable run: named if reading it fails."""
    try:
        repository.load_record(kind, record_id)
    except DamagedRecordError as error:
        report.name(kind, record_id, error.cf, error.key, error.reason)
