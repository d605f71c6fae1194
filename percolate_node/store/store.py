"""EncryptedStore: one tenant's RocksDB database with every value sealed under its keys.

Envelope encryption: the tenant KEK (a file outside the database) wraps the DEKs and the
name-hashing key, which live in the ``keys`` column family; DEKs seal every value
(AES-256-GCM, see ``crypto``). RocksDB keys are chosen by callers and must not hold
user content: use ids that are hashes, and ``name_key()`` for anything a user typed.
One process owns a data directory; inside it the store is thread-safe.

Key lifetime: the KEK is read from its file only when it is needed (open, DEK rotation,
KEK rotation) and not kept; ``close()`` and ``shred()`` cleanse the DEKs' key schedules
and drop the keyring. Each DEK seals at most ``seal_limit`` values (2**31 by default,
half of GCM's random-nonce bound): seals are reserved in the keyring a block at a time
before they happen, and the store rotates to a new DEK when the next block would pass
the limit.

Writes: every batch also writes one sealed change-log record holding its operations
(``durability/changelog.py``). Writing the values twice through RocksDB's WAL (once in
their families, once inside the record) doubled the bytes every synced write sends to
disk, so a batch of logged families goes in two writes under the lock: the record alone,
synced through the WAL (the batch is durable, and acknowledged, from here), then the
values without the WAL (memtables only). The record is thus the values' write-ahead log.
``meta/durable-lsn`` says up to which LSN the data families are known to be in SST files;
``open`` replays the records after it, so a crash (``kill -9``, power loss) loses nothing
acknowledged. The mark moves with a synced write that carries a whole batch when nothing
before it waits in memtables, with the next synced write or trim after a background flush
(``_request_flush``), and with ``_make_durable`` (flush and wait), which runs before a
checkpoint, a backup, retiring DEKs, compaction (KEK rotation, purge) and close. The log
is trimmed only through the mark. Batches with an unlogged family (``indexes``) and the
store's own writes (keys, re-seal, trim) keep the single synced write.
"""
from __future__ import annotations

import hmac
import logging
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

from rocksdict import BottommostLevelCompaction, CompactOptions, Rdict, WriteBatch, WriteOptions

from percolate_node.store import _gcm, rocks
from percolate_node.store.crypto import (KEY_BYTES, Sealer, check_cipher_setting, seal_error, sealed_dek_id,
                                         sealing_context, unwrap)
from percolate_node.store.errors import (CorruptBlockError, DataLossError, StoreError, TamperedValueError,
                                        WrongKeyError)
from percolate_node.store.kek import KekFile, kek_bytes, kek_source
from percolate_node.store.keyring import (HMAC, SHREDDED, Keyring, dek_record, seals_record, shredded_marker,
                                          write_keyring_file)
from percolate_node.store.layout import (COLUMN_FAMILIES, DATA_FAMILIES, DURABLE_LSN, KEYS, LOG,
                                        LOGGED_DATA_FAMILIES, META, UNLOGGED_FAMILIES)

TENANT_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
NAME_KEY_BYTES = 16
DEFAULT_SEAL_LIMIT = 2**31
"""Seals per DEK before the store rotates: half of the 2**32 random-nonce bound (NIST SP 800-38D)."""
log = logging.getLogger(__name__)

SEAL_BLOCK = 2**20
"""Seals reserved in the keyring at a time: one synced keyring write per block."""
UNFLUSHED_LIMIT = 64 * 2**20
"""Bytes of values written without the WAL after which a background thread flushes them
(``_request_flush``), which bounds what ``open`` replays after a crash."""
FLUSH_RETRY_S = 10.0
"""After a background flush failed, how long before the store asks for another."""
KekSource = bytes | Path | str | KekFile


Put = _gcm.Put
"""``Put(cf, key, value)``: an operation of ``write``; native (``_gcm.c``), since a batch makes one
per value and a dataclass instance cost about six times as much. Read-only fields, equality by value."""
Delete = _gcm.Delete
"""``Delete(cf, key)``: an operation of ``write``; native like ``Put``."""


@dataclass(frozen=True, slots=True)
class Damage:
    """What a scan given ``on_damage`` could not read, and skipped.

    One value (``block`` False: its seal failed at ``key``), or a run of RocksDB blocks
    (``block`` True) after ``key`` (the last key read; ``b""``: from the start of the
    range) up to ``resume``, the next key read (None: to the end). How many values such
    a run held is unknown: RocksDB cannot read them, nor their keys.
    """

    cf: str
    key: bytes
    reason: str
    block: bool = False
    resume: bytes | None = None


OnDamage = Callable[[Damage], None]


@dataclass(frozen=True, slots=True)
class ResealProgress:
    """Where a re-seal pass is: values looked at, values moved to the active DEK, of about ``total``."""

    scanned: int
    resealed: int
    total: int
    done: bool


class EncryptedStore:
    """A tenant database whose values are all sealed; open it with ``EncryptedStore.open``."""

    def __init__(self, path: Path, db: Rdict, keyring: Keyring, kek: KekSource,
                 seal_limit: int = DEFAULT_SEAL_LIMIT, seal_block: int = SEAL_BLOCK) -> None:
        if not 0 < seal_limit <= DEFAULT_SEAL_LIMIT * 2 or seal_block < 1:
            raise StoreError(f"seal_limit is in (0, 2**32] and seal_block positive, got {seal_limit}, {seal_block}")
        self.path = path
        self.tenant_id = keyring.tenant_id
        self.seal_limit = seal_limit
        self._seal_block = min(seal_block, seal_limit)
        self._db = db
        self._keyring: Keyring | None = keyring
        self._kek: bytes | KekFile | None = kek_source(kek)
        self._sealer = Sealer(keyring.tenant_id, keyring.deks, budget=0)  # reserve before sealing
        self._views = {cf: db.get_column_family(cf) for cf in COLUMN_FAMILIES}
        self._handles = {cf: db.get_column_family_handle(cf) for cf in COLUMN_FAMILIES}
        self._data_views = {cf: self._views[cf] for cf in DATA_FAMILIES}  # what callers may touch
        self._targets = {cf: (self._handles[cf], sealing_context(self.tenant_id, cf)) for cf in DATA_FAMILIES}
        self._sync = WriteOptions()
        self._sync.sync = True
        self._unlogged_wal = WriteOptions()  # the values of a batch whose change-log record is already synced
        self._unlogged_wal.disable_wal = True
        self._lock = threading.RLock()  # serialises writers with re-seal and key changes
        self._closed = False
        # The change log (durability/changelog.py): every committed batch also writes one sealed
        # record under the next LSN (alone first, for a split write; see the module docstring);
        # ``epoch`` fences it (the lease's generation, or the data directory's
        # ``percolate-epoch`` file, 1 when absent).
        from percolate_node.durability.epoch import read_epoch

        self.epoch = read_epoch(path)  # the node replaces it with the lease's generation where there is one
        self._log_context = sealing_context(self.tenant_id, LOG)
        from percolate_node.durability.changelog import FAMILY_INDEX

        # what write() hands _gcm.seal_batch: family -> (handle, context, change-log code; -1 unlogged)
        self._batch_targets = {cf: (handle, context, -1 if cf in UNLOGGED_FAMILIES else FAMILY_INDEX[cf])
                               for cf, (handle, context) in self._targets.items()}
        last = next(iter(self._views[LOG].keys(backwards=True)), None)
        self._next_lsn = (int.from_bytes(last, "big") + 1) if last else 1
        self._log_listeners: list[Callable[[int], None]] = []
        durable = self._views[META].get(DURABLE_LSN)
        # None: a database from before split writes (every value went through the WAL) or a new one
        self._durable_lsn: int | None = int.from_bytes(durable, "big") if durable else None
        self._unflushed = 0  # bytes written without the WAL since the data families were last flushed
        self._recovered = False  # until _recover has replayed the log, nothing may be marked durable
        self._flusher: threading.Thread | None = None  # the background flush, while one runs
        self._flushed_through = 0  # what the last background flush put in SST files (set by its thread)
        self._flush_retry_at = 0.0
        self._flush_failed = False  # the last background flush failed: ask again once _flush_retry_at passed
        # Only one flusher runs at a time (started under the lock once the last one ended), so it
        # alone writes _flushed_through, _flush_failed and _flush_retry_at; a stale read delays a mark.
        self.replayed = 0
        """Change-log records ``open`` replayed into the data families (values lost with the memtables)."""

    @classmethod
    def open(cls, data_dir: Path, tenant_id: str, kek: KekSource, create: bool = True,
             seal_limit: int = DEFAULT_SEAL_LIMIT, seal_block: int = SEAL_BLOCK) -> EncryptedStore:
        """Open the tenant's database, creating it (and its keyring) if ``create`` and absent.

        ``kek`` is the KEK file (a path or ``KekFile``: read now and again only when a DEK
        rotates) or the key itself (then held until ``close``). An existing database is
        verified read-only first: a wrong KEK or tenant raises ``WrongKeyError`` with
        nothing under ``data_dir`` written.
        """
        data_dir = Path(data_dir)
        check_cipher_setting()  # before anything is opened
        if not TENANT_ID.fullmatch(tenant_id):
            raise StoreError(f"tenant id {tenant_id!r} does not match {TENANT_ID.pattern}")
        source = kek_source(kek)
        kek = kek_bytes(source)
        _check_kek(kek)
        keyring = None
        if (data_dir / "CURRENT").exists():
            records, has_data = rocks.read_keys_readonly(data_dir)
            if records:
                keyring = Keyring.from_records(tenant_id, kek, records)
            elif has_data or not create:
                raise StoreError(f"{data_dir} holds a RocksDB database without a Percolate keyring; "
                                 "refusing to open it")
        elif not create:
            raise StoreError(f"no store at {data_dir}")
        store = cls(data_dir, rocks.open_rw(data_dir, COLUMN_FAMILIES), keyring or Keyring.new(tenant_id), source,
                    seal_limit, seal_block)
        try:
            if keyring is None:  # a new store: its first snapshot carries the keyring, not the log
                store._put_keys(store._keyring.records(kek), logged=False)
            store._recover()
            if keyring is not None and keyring.active not in keyring.reserved:  # from before seal counting
                store._rotate_dek(kek, logged=False)
        except BaseException:
            store.close()
            raise
        log.info("opened the store at %s: values sealed with %s", data_dir, store._sealer.keys.engine)
        return store

    def __enter__(self) -> EncryptedStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- values ---------------------------------------------------------------------

    def write(self, ops: Sequence[Put | Delete]) -> None:
        """Apply ``ops`` atomically and durably: all of them are on disk when this returns, or none is.

        A ``StoreError`` after the batch's change-log record was synced (the store then
        closes itself, saying so) leaves the batch applied at the next open: do not retry
        it blindly.
        """
        ops = tuple(ops)  # one fixed length for the split decision below, whatever the caller's sequence does
        batch = WriteBatch(raw_mode=True)
        with self._lock:
            self._check_open()
            if self._sealer.keys.budget < len(ops) + 2:  # the values, the log record, one spare
                self._reserve(len(ops) + 1)
            # The hot loop of every ingest, in one native call: seals each Put (as seal() does,
            # same budget and nonces), adds it to the batch and frames the change-log operations.
            try:
                framed = self._sealer.keys.seal_batch(ops, self._batch_targets, Put, Delete, batch.put, batch.delete)
            except _gcm.BatchError as failed:
                index, error = failed.args
                raise self._write_error(ops[index], error) from None
            # every operation is in the record (no unlogged family): the record is their WAL
            self._commit(batch, framed=framed, split=bool(framed[0]) and framed[0] == len(ops))

    def get(self, cf: str, key: bytes) -> bytes | None:
        view = self._data_views.get(cf)
        if view is None:
            raise self._unknown(cf)
        sealed = self._read(cf, view, key)
        return None if sealed is None else self._sealer.open(cf, key, sealed)

    def contains(self, cf: str, key: bytes) -> bool:
        """Whether ``key`` holds a value, without opening it."""
        return self._read(cf, self._data_view(cf), key) is not None

    def items(self, cf: str, prefix: bytes = b"", start: bytes | None = None,
              end: bytes | None = None, on_damage: OnDamage | None = None) -> Iterator[tuple[bytes, bytes]]:
        """Opened values in key order, with ``prefix`` and within ``[start, end)``.

        Damage raises ``DataLossError`` (a value failing its seal, a block RocksDB cannot
        read); given ``on_damage``, it is reported there and skipped, and the scan goes on.
        """
        sealer = self._sealer
        for key, sealed in self._iterate(cf, prefix, start, end, on_damage, values=True):
            if on_damage is None:
                yield key, sealer.open(cf, key, sealed)
                continue
            try:
                value = sealer.open(cf, key, sealed)
            except TamperedValueError as error:
                on_damage(Damage(cf, key, str(error)))
                continue
            yield key, value

    def keys(self, cf: str, prefix: bytes = b"", start: bytes | None = None,
             end: bytes | None = None, on_damage: OnDamage | None = None) -> Iterator[bytes]:
        """Keys only, without opening values (cheap scans for indexes and counts); damage as in ``items``."""
        for key, _ in self._iterate(cf, prefix, start, end, on_damage, values=False):
            yield key

    def name_key(self, name: str) -> bytes:
        """A 16-byte keyed hash of a user-supplied string, for use inside RocksDB keys.

        Equal names give equal keys; without the tenant's keyring nobody can guess or
        confirm a name from its key. Callers prefix a domain (``"uri\\0..."``).
        """
        self._check_open()
        return hmac.digest(self._keyring.hmac_key, name.encode(), "sha256")[:NAME_KEY_BYTES]

    def verify(self) -> int:
        """Open every value (restore runs this); returns how many, raises on the first bad one."""
        missing: Counter[int] = Counter()
        checked = 0
        for cf in DATA_FAMILIES:
            for key, sealed in self._raw_items(cf):
                dek_id = sealed_dek_id(sealed)
                if dek_id is not None and dek_id not in self._sealer:
                    missing[dek_id] += 1
                    continue
                self._sealer.open(cf, key, sealed)
                checked += 1
        if missing:
            raise StoreError(f"{sum(missing.values())} values are sealed with DEK(s) {sorted(missing)} that this "
                             "keyring no longer holds (retired after the backup was taken?)")
        return checked

    def flush(self, cf: str) -> None:
        """Write ``cf``'s memtable to an SST file now (frees its memory after a large write)."""
        self._data_view(cf).flush()

    def compact(self) -> None:
        """Flush and fully compact every family, so deleted and overwritten values leave the disk."""
        with self._lock:
            self._check_open()
            self._compact(COLUMN_FAMILIES)

    # -- keys -------------------------------------------------------------------------

    def rotate_dek(self) -> int:
        """Seal new writes with a fresh DEK from now on; returns its id. Old values stay readable.

        The store also does this on its own when the active DEK nears ``seal_limit``.
        """
        with self._lock:
            self._check_open()
            return self._rotate_dek()

    def seal_count(self) -> int:
        """How many values the active DEK may have sealed (reserved and not handed back)."""
        with self._lock:
            self._check_open()
            return self._keyring.reserved[self._sealer.active] - max(self._sealer.keys.budget, 0)

    def reseal(self, progress: Callable[[ResealProgress], None] | None = None,
               stop: threading.Event | None = None, batch_size: int = 256) -> ResealProgress:
        """Re-encrypt every value not sealed with the active DEK, in small synced batches.

        Runs alongside reads and writes (for example in a background thread); ``stop``
        ends it between batches. It is resumable because it is idempotent: every batch
        leaves the store consistent and a later pass skips values already moved. A
        tampered value stops it with ``TamperedValueError`` rather than being re-sealed.
        Stop and join a background pass before ``close()``: its iterator keeps RocksDB open.
        """
        total = sum(self._count(cf) for cf in DATA_FAMILIES)
        scanned = resealed = 0
        for cf in DATA_FAMILIES:
            pending: list[bytes] = []
            for key, sealed in self._raw_items(cf):
                scanned += 1
                if sealed_dek_id(sealed) != self._sealer.active:
                    pending.append(key)
                if scanned % batch_size == 0:
                    resealed += self._reseal_keys(cf, pending)
                    pending = []
                    if progress:
                        progress(ResealProgress(scanned, resealed, total, False))
                    if stop is not None and stop.is_set():
                        return ResealProgress(scanned, resealed, total, False)
            resealed += self._reseal_keys(cf, pending)
        final = ResealProgress(scanned, resealed, max(total, scanned), True)
        if progress:
            progress(final)
        return final

    def retire_old_deks(self) -> list[int]:
        """Destroy every DEK but the active one; refuses while any value is still sealed with one.

        Backups taken before the re-seal hold values under the retired DEKs: those
        values become unreadable, as after a shred.
        """
        with self._lock:
            self._check_open()
            old = [dek_id for dek_id in self._keyring.deks if dek_id != self._sealer.active]
        if not old:
            return []
        # New writes only use the active DEK, so the count below can only go down.
        in_use = Counter(sealed_dek_id(sealed) for cf in DATA_FAMILIES for _, sealed in self._raw_items(cf))
        still = {dek_id: in_use[dek_id] for dek_id in old if in_use[dek_id]}
        if still:
            raise StoreError(f"DEK(s) {sorted(still)} still seal {sum(still.values())} values; "
                             "run reseal() to completion first")
        with self._lock:
            self._check_open()
            self._make_durable()  # a crash after this must not need to replay records sealed with these DEKs
            self._delete_keys([name for dek_id in old for name in (dek_record(dek_id), seals_record(dek_id, 0)[0])])
            for dek_id in old:
                del self._keyring.deks[dek_id]
                self._keyring.reserved.pop(dek_id, None)
            self._sealer = Sealer(self.tenant_id, self._keyring.deks, budget=self._sealer.keys.budget)
            self._compact([KEYS])
        return old

    def rotate_kek(self, new_kek: KekSource) -> None:
        """Re-wrap the keyring with ``new_kek`` (its file, or the key); no value is re-encrypted.

        Put the new KEK in place (its own file) before calling, and keep the old one
        until this returns: a crash in between leaves the store openable with one of them.
        Given a file, the store reads the KEK from it from now on.
        """
        source = kek_source(new_kek)
        kek = kek_bytes(source)
        _check_kek(kek)
        with self._lock:
            self._check_open()
            self._put_keys(self._keyring.records(kek))
            self._kek = source
            self._compact([KEYS])

    def shred(self) -> None:
        """Destroy the tenant's wrapped keys: this data and every backup of it become unreadable.

        The keys family is emptied, flushed and compacted so no wrapped key stays on
        disk, and the store closes, cleansing the keys in memory (a sealer still held
        elsewhere opens nothing more). Exported keyring files are copies of the keys:
        destroy them too, or destroy the KEK, which makes every copy useless.
        """
        with self._lock:
            self._check_open()
            batch = WriteBatch(raw_mode=True)
            handle = self._handles[KEYS]
            for name in list(self._views[KEYS].keys()):
                batch.delete(name, handle)
            batch.put(SHREDDED, shredded_marker(), handle)
            self._commit(batch)
            self._compact([KEYS], make_durable=False)  # the data is unreadable from here: only the keys matter
            self._close(make_durable=False)

    def export_keyring(self, path: Path) -> None:
        """Write the wrapped keyring (not the KEK) to ``path``: what ``restore`` needs besides a backup.

        Keep it apart from the backups; it is as sensitive as the ``keys`` family. The
        records are copied as stored (wrapped), so the KEK is not needed.
        """
        with self._lock:
            self._check_open()
            write_keyring_file(path, self.tenant_id, dict(self._views[KEYS].items()))

    def backup(self, dest: Path) -> Path:
        """A consistent copy of the sealed data at ``dest``, without the keyring (see ``backup``)."""
        from percolate_node.store.backup import create_backup

        with self._lock:
            self._check_open()
            self._make_durable()  # the copy then holds every value and has nothing to replay
            return create_backup(self._db, self.tenant_id, Path(dest))

    # -- change log (durability/) ----------------------------------------------------------

    @property
    def last_lsn(self) -> int:
        """The LSN of the newest committed batch (0 before the first)."""
        return self._next_lsn - 1

    def add_log_listener(self, listener: Callable[[int], None]) -> None:
        """Call ``listener(lsn)`` after each logged batch is on disk (under the store lock: be quick)."""
        self._log_listeners.append(listener)

    def log_records(self, after: int, limit: int = 10_000) -> list[tuple[int, bytes]]:
        """Up to ``limit`` sealed records with LSN > ``after``, in order, exactly as stored."""
        from percolate_node.durability.changelog import key_lsn, lsn_key

        self._check_open()
        out = []
        for key, sealed in self._views[LOG].items(from_key=lsn_key(after + 1)):
            out.append((key_lsn(key), sealed))
            if len(out) >= limit:
                break
        return out

    def first_lsn(self) -> int:
        """The oldest LSN still in the local log (0 when empty)."""
        from percolate_node.durability.changelog import key_lsn

        first = next(iter(self._views[LOG].keys()), None)
        return key_lsn(first) if first else 0

    def open_log_record(self, lsn: int, sealed: bytes):
        """A sealed record opened and parsed (``TamperedValueError`` when it was altered)."""
        from percolate_node.durability import changelog

        self._check_open()
        record = changelog.decode(self._sealer.open(LOG, changelog.lsn_key(lsn), sealed), f"log record {lsn}")
        if record.lsn != lsn:
            raise DataLossError(f"log record stored at {lsn} says it is {record.lsn}")
        return record

    def apply_log_record(self, lsn: int, sealed: bytes, kek: KekSource | None = None):
        """Replay one record from another copy of this tenant's log (restore, standby): its
        operations as stored plus the record itself, in one synced batch.

        Records apply in order (``lsn`` must be the next one) and never from an epoch older
        than one already applied. A record that changes the keyring (a new DEK) reloads it,
        which needs the KEK. Returns the parsed record.
        """
        from percolate_node.durability import changelog

        with self._lock:
            self._check_open()
            if lsn != self._next_lsn:
                raise StoreError(f"log record {lsn} out of order: this store expects {self._next_lsn}")
            record = self.open_log_record(lsn, sealed)
            if record.epoch < self.epoch:
                from percolate_node.durability.errors import FencedError

                raise FencedError(f"log record {lsn} is from epoch {record.epoch}, older than {self.epoch}")
            batch = self._batch_of(record.ops)
            keys_changed = any(cf == KEYS for cf, _, _ in record.ops)
            batch.put(changelog.lsn_key(lsn), sealed, self._handles[LOG])
            self._commit(batch, carries=lsn)
            self._next_lsn = lsn + 1
            self.epoch = max(self.epoch, record.epoch)
            if keys_changed:
                self._reload_keyring(kek)
            return record

    def checkpoint(self, dest: Path) -> int:
        """A consistent RocksDB checkpoint of everything (keyring wrapped, values sealed) at
        ``dest``; returns the LSN it covers. Writers wait only while the checkpoint is cut."""
        from rocksdict import Checkpoint

        with self._lock:
            self._check_open()
            self._make_durable()  # the copy then holds every value and has nothing to replay
            Checkpoint(self._db).create_checkpoint(str(dest))
            return self._next_lsn - 1

    def trim_log(self, through: int) -> int:
        """Delete local log records with LSN <= ``through`` (the newest always stays, so the
        LSN survives a restart); returns how many went."""
        from percolate_node.durability.changelog import lsn_key

        with self._lock:
            self._check_open()
            through = min(through, self._next_lsn - 2)
            first = self.first_lsn()
            if not first or through < first:
                return 0
            if through > self._durable_lsn:  # a trimmed record must never be the only copy of its values
                if self._flushed_through > self._durable_lsn:
                    self._set_durable(self._flushed_through)
                if through > self._durable_lsn:
                    self._request_flush()  # a later trim takes the rest; nobody waits for it
                through = min(through, self._durable_lsn)
                if through < first:
                    return 0
            batch = WriteBatch(raw_mode=True)
            batch.delete_range(lsn_key(first), lsn_key(through + 1), self._handles[LOG])
            self._commit(batch)
            return through - first + 1

    def _reload_keyring(self, kek: KekSource | Sequence[KekSource] | None) -> None:
        """After a replayed keyring change: rebuild the keyring and sealer from the keys family.

        ``kek`` may list several KEKs (a restore across a KEK rotation: the snapshot's keyring
        is wrapped by the old one, the replayed rotation re-wraps it with the new one); the
        first that opens the keyring is kept as the store's KEK from then on.
        """
        candidates = kek if isinstance(kek, (list, tuple)) else [kek if kek is not None else self._kek]
        records = dict(self._views[KEYS].items())
        error: Exception | None = None
        for source in candidates:
            source = kek_source(source)
            key = kek_bytes(source)
            try:
                keyring = Keyring.from_records(self.tenant_id, key, records)
            except WrongKeyError as wrong:
                error = wrong
                continue
            self._keyring, self._kek = keyring, source
            self._sealer.destroy()
            self._sealer = Sealer(self.tenant_id, self._keyring.deks, budget=0)
            return
        raise error or WrongKeyError("no KEK given opens the replayed keyring")

    # -- housekeeping -------------------------------------------------------------------

    def stats(self) -> dict:
        """Values per data family, bytes under the data directory, and the DEKs in use."""
        return {"tenant_id": self.tenant_id,
                "values": {cf: self._count(cf) for cf in DATA_FAMILIES},
                "bytes_on_disk": sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file()),
                "active_dek": self._sealer.active,
                "deks": sorted(self._keyring.deks),
                "seals": self.seal_count(),
                "seal_limit": self.seal_limit}

    def close(self) -> None:
        self._close(make_durable=True)

    def _close(self, make_durable: bool) -> None:
        with self._lock:
            if self._closed:
                return
            if self._flusher is not None and self._flusher.is_alive():
                self._flusher.join()  # it uses the views: let it finish before RocksDB closes
            if make_durable:
                try:
                    self._make_durable()  # so the next open has nothing to replay
                except Exception as error:  # the values stay in the change log; the next open replays them
                    log.warning("closing %s without flushing (the next open replays the log): %s", self.path, error)
            self._closed = True
            self._sealer.destroy()  # whoever still holds it (an iterator, a thread) opens nothing more
            self._keyring = self._kek = None
            views = list(self._views.values())
            for family in (self._views, self._handles, self._data_views, self._targets, self._batch_targets):
                family.clear()
            rocks.close(self._db, views)

    # -- internals ------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"the store at {self.path} is closed")

    def _data_view(self, cf: str) -> Rdict:
        view = self._data_views.get(cf)
        if view is None:
            raise self._unknown(cf)
        return view

    def _write_error(self, op: object, error: BaseException) -> StoreError:
        """The store's error for the operation ``seal_batch`` stopped at, and what it raised."""
        if type(op) not in (Put, Delete):
            return StoreError(f"write takes Put and Delete operations, not {type(op).__name__}")
        if isinstance(error, (OverflowError, RuntimeError, MemoryError)):  # over ~1 GiB; OpenSSL; destroyed
            return seal_error(op.cf, op.key, error)
        if isinstance(error, (TypeError, KeyError, AttributeError)):  # unknown family, key or value not bytes
            return self._bad_operation(op)
        return StoreError(f"cannot write {op.cf}/{op.key.hex() if isinstance(op.key, bytes) else op.key!r}: {error}")

    def _bad_operation(self, op: Put | Delete) -> StoreError:
        """What is wrong with an operation ``write`` refused."""
        if op.cf not in self._targets:
            return self._unknown(op.cf)
        if type(op.key) is not bytes or not op.key:
            return StoreError(f"keys are non-empty bytes, got {type(op.key).__name__} for {op.cf}")
        return StoreError(f"values are bytes, got {type(op.value).__name__} for {op.cf}/{op.key.hex()}")

    def _unknown(self, cf: str) -> StoreError:
        return StoreError(f"the store at {self.path} is closed" if self._closed else f"unknown column family {cf!r}")

    def _raw_items(self, cf: str, prefix: bytes = b"", start: bytes | None = None,
                   end: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        return self._iterate(cf, prefix, start, end, None, values=True)

    def _read(self, cf: str, view: Rdict, key: bytes) -> bytes | None:
        """One raw value; a block RocksDB cannot read is ``CorruptBlockError`` naming the key."""
        try:
            return view.get(key)
        except TypeError:
            raise
        except Exception as error:  # rocksdict raises bare Exception
            if _is_corruption(error):
                raise CorruptBlockError(cf, key, _reason(error)) from None
            raise StoreError(f"cannot read {cf}/{key.hex()}: {error}") from None

    def _iterate(self, cf: str, prefix: bytes, start: bytes | None, end: bytes | None,
                 on_damage: OnDamage | None, values: bool) -> Iterator[tuple[bytes, bytes | None]]:
        """Raw (key, sealed) pairs in key order within the range, past damaged blocks if ``on_damage``.

        rocksdict 0.3.29's ``items()`` and ``keys()`` end quietly at a block RocksDB cannot
        read (a checksum mismatch), as if the family ended there. So where one ends, a raw
        iterator is asked why: a clean end, or an error. An error is ``CorruptBlockError``,
        or, with ``on_damage``, reported and skipped: the scan resumes at the next key
        RocksDB can read (``_readable_after``). The fast path stays rocksdict's own loop.
        """
        lower, upper = _range(prefix, start, end)
        view = self._data_view(cf)
        position, last = lower, None
        while True:
            if values:
                pairs = view.items(from_key=position)
            else:
                pairs = ((key, None) for key in view.keys(from_key=position))
            for key, sealed in pairs:
                if upper is not None and key >= upper:
                    return
                last = key
                yield key, sealed
            after = last if last is not None else (position or b"")
            reason = _stopped_by(cf, view, after, last is not None)
            if reason is None:
                return
            if on_damage is None:
                raise CorruptBlockError(cf, after, reason, scan=True)
            resume = _readable_after(cf, view, after)
            on_damage(Damage(cf, after, f"cannot read {cf} after key {after.hex() or '(start)'}: "
                                        f"RocksDB reports {reason}", block=True, resume=resume))
            if resume is None:
                return
            position, last = resume, None

    def _count(self, cf: str) -> int:
        """Readable keys of ``cf`` (damaged blocks are not counted: ``percolate admin verify`` lists them)."""
        return sum(1 for _ in self.keys(cf, on_damage=lambda damage: None))

    def _commit(self, batch: WriteBatch, logged: Sequence[tuple[str, bytes, bytes | None]] | None = None,
                framed: tuple[int, bytes] | None = None, split: bool = False, carries: int = 0) -> None:
        """Write ``batch`` synced, with the change-log record of ``logged`` in it (None: unlogged),
        or of ``framed``: (count, operations already framed), what ``seal_batch`` returns.

        ``split`` (``framed`` holds every operation of ``batch``): the record goes alone in
        the synced write, and ``batch`` follows without the WAL (see the module docstring).
        ``carries``: the LSN of a record the caller already put in ``batch`` (a replayed one),
        for the durable mark, which is decided here only.
        Under the lock. The record takes one seal from the active DEK's budget, which
        writers keep at least one above what they seal themselves.
        """
        lsn = 0
        record_batch = WriteBatch(raw_mode=True) if split else batch
        logged = [op for op in logged or () if op[0] not in UNLOGGED_FAMILIES]
        if logged or (framed and framed[0]):
            from percolate_node.durability import changelog

            if self._sealer.keys.budget == 0:  # a key change right after open: reserve (its own record first)
                self._reserve(0)
            lsn = self._next_lsn
            if framed and framed[0]:
                record = changelog.encode_framed(lsn, self.epoch, time.time_ns(), *framed)
            else:
                record = changelog.encode(lsn, self.epoch, time.time_ns(), logged)
            key = changelog.lsn_key(lsn)
            try:
                record_batch.put(key, self._sealer.keys.seal(self._log_context, key, record), self._handles[LOG])
            except (OverflowError, RuntimeError, MemoryError) as error:
                raise seal_error(LOG, key, error) from None
        mark = self._mark_for(lsn or carries, split)
        if mark:
            record_batch.put(DURABLE_LSN, mark.to_bytes(8, "big"), self._handles[META])
        self._write_synced(record_batch)
        if lsn:
            self._next_lsn = lsn + 1  # on disk: this LSN is taken, whatever happens next
        if split:
            size = batch.size_in_bytes()  # a written batch is consumed
            try:
                self._db.write(batch, self._unlogged_wal)
            except Exception as error:
                # Durable in the log but missing from the memtables: stop serving reads that would
                # miss it, and mark nothing durable; the next open replays the record.
                self._close(make_durable=False)
                raise StoreError(f"RocksDB write failed at {self.path} after the batch's change-log record "
                                 f"(LSN {lsn}) was synced: {error}; the store closed itself, and reopening it "
                                 "replays the record (the batch is then applied)") from None
            self._unflushed += size
        if mark:
            self._marked(mark)
        if lsn:
            for listener in self._log_listeners:
                listener(lsn)
        if self._unflushed >= UNFLUSHED_LIMIT or (self._flush_failed and time.monotonic() >= self._flush_retry_at):
            self._request_flush()

    def _mark_for(self, lsn: int, split: bool) -> int:
        """The ``durable-lsn`` a synced write of LSN ``lsn`` may carry (0: none): ``lsn`` itself when
        it carries all of it and everything before is durable or flushed, else what the last
        background flush covers. The caller moves ``_durable_lsn`` after the write."""
        if not self._recovered:
            return 0
        base = max(self._durable_lsn, self._flushed_through)
        if lsn and not split and base == lsn - 1:
            return lsn
        return base if base > self._durable_lsn else 0

    def _marked(self, lsn: int) -> None:
        self._durable_lsn = lsn if self._durable_lsn is None else max(lsn, self._durable_lsn)

    def _request_flush(self) -> None:
        """Flush the logged data families in a background thread, unless one runs already.

        ``flush`` can wait for RocksDB's previous flush (it refuses to stall writes), so it never
        runs in the writer or under the lock. When it returns, everything written before the
        request is in SST files; ``_flushed_through`` says so, and the next synced write or trim
        carries it as the mark.
        """
        if (self._flusher is not None and self._flusher.is_alive()) or time.monotonic() < self._flush_retry_at:
            return
        candidate, views = self._next_lsn - 1, [self._views[cf] for cf in LOGGED_DATA_FAMILIES]
        flusher = threading.Thread(target=self._flush_in_background, args=(views, candidate),
                                   name="percolate-store-flush", daemon=True)
        self._unflushed, self._flush_failed = 0, False  # before it starts: it may fail at once and say so
        try:
            flusher.start()
        except RuntimeError as error:  # no thread to be had: the values stay in the log, asked again later
            log.warning("cannot start a flush thread for %s: %s", self.path, error)
            self._flush_failed, self._flush_retry_at = True, time.monotonic() + FLUSH_RETRY_S
            return
        self._flusher = flusher

    def _flush_in_background(self, views: list[Rdict], candidate: int) -> None:
        try:
            for view in views:
                view.flush()
        except Exception as error:  # rocksdict raises bare Exception; the values stay in the log
            self._flush_retry_at, self._flush_failed = time.monotonic() + FLUSH_RETRY_S, True
            log.warning("flushing %s in the background failed (tried again in %.0f s): %s", self.path,
                        FLUSH_RETRY_S, error)
            return
        self._flushed_through = max(self._flushed_through, candidate)

    def _make_durable(self) -> None:
        """Flush the data families to SST files, then record that every logged batch so far is
        durable there (``durable-lsn``); under the lock. Later crashes replay only what follows."""
        last = self._next_lsn - 1
        if not self._recovered or (self._durable_lsn == last and not self._unflushed):
            return
        for cf in LOGGED_DATA_FAMILIES:  # the unlogged families always go through the WAL
            try:
                self._views[cf].flush()
            except Exception as error:  # rocksdict raises bare Exception (a full disk, a background error)
                raise StoreError(f"RocksDB could not flush {cf} at {self.path}: {error}") from None
        self._set_durable(last)
        self._unflushed = 0

    def _set_durable(self, lsn: int) -> None:
        """Write ``durable-lsn`` = ``lsn`` (never lower than it is), synced."""
        lsn = max(lsn, self._durable_lsn or 0)  # the mark never goes back
        batch = WriteBatch(raw_mode=True)
        batch.put(DURABLE_LSN, lsn.to_bytes(8, "big"), self._handles[META])
        self._write_synced(batch)
        self._marked(lsn)

    def _write_synced(self, batch: WriteBatch) -> None:
        try:
            self._db.write(batch, self._sync)
        except Exception as error:  # rocksdict raises bare Exception
            raise StoreError(f"RocksDB write failed at {self.path}: {error}") from None

    def _batch_of(self, ops: Sequence[tuple[str, bytes, bytes | None]], families: Sequence[str] | None = None
                  ) -> WriteBatch:
        """A WriteBatch of change-log operations as stored (value None: a delete), only those in
        ``families`` when given."""
        batch = WriteBatch(raw_mode=True)
        for cf, key, value in ops:
            if families is not None and cf not in families:
                continue
            if value is None:
                batch.delete(key, self._handles[cf])
            else:
                batch.put(key, value, self._handles[cf])
        return batch

    def _recover(self) -> None:
        """At open: replay the change-log records after ``durable-lsn`` into the data families.

        Their values went to memtables only (split writes), so a crash may have lost them;
        applying the records again in order is harmless where it did not (each operation is
        a plain put or delete of the value as stored). The keyring is left alone: it always
        goes through the WAL. A database without the mark (new, or from before split
        writes, when every value went through the WAL) has nothing to replay.
        """
        last = self._next_lsn - 1
        if self._durable_lsn is None:
            self._set_durable(last)
        elif self._durable_lsn > last:
            raise DataLossError(f"the change log at {self.path} ends at LSN {last} but the data was durable "
                                f"through LSN {self._durable_lsn}: records are missing; restore the tenant")
        else:
            self._replay(self._durable_lsn, last)
        self._recovered = True
        if self.replayed:
            self._make_durable()
            log.warning("replayed %d change-log records into %s (LSN %d-%d): their values were lost with the "
                        "memtables at an unclean stop", self.replayed, self.path, last - self.replayed + 1, last)

    def _replay(self, after: int, last: int) -> None:
        """Apply records ``after`` + 1 .. ``last`` to the data families, each exactly once and in
        order; a record that cannot be read or is missing (rocksdict ends a scan quietly at a
        damaged block, and a trim may have gone too far) is DATA_LOSS: it holds acknowledged writes."""
        def missing(lsn: int) -> DataLossError:
            return DataLossError(f"cannot read change-log record {lsn} at {self.path} (the log ends at {last}); "
                                 "it holds acknowledged writes not yet in the data: restore the tenant")

        while after < last:
            records = self.log_records(after, limit=1000)
            if not records:
                raise missing(after + 1)
            for lsn, sealed in records:
                if lsn != after + 1:
                    raise missing(after + 1)
                batch = self._batch_of(self.open_log_record(lsn, sealed).ops, LOGGED_DATA_FAMILIES)
                self._unflushed += batch.size_in_bytes()
                try:
                    self._db.write(batch, self._unlogged_wal)
                except Exception as error:
                    raise StoreError(f"RocksDB write failed at {self.path} replaying LSN {lsn}: {error}") from None
                self.replayed += 1
                after = lsn

    def _put_keys(self, records: dict[bytes, bytes], logged: bool = True) -> None:
        batch = WriteBatch(raw_mode=True)
        for name, blob in records.items():
            batch.put(name, blob, self._handles[KEYS])
        self._commit(batch, [(KEYS, name, blob) for name, blob in records.items()] if logged else None)

    def _kek_now(self) -> bytes:
        """The KEK, read from its file if that is where it is, checked against the keyring."""
        kek = self._kek.read() if isinstance(self._kek, KekFile) else self._kek
        if unwrap(kek, self._views[KEYS].get(HMAC) or b"", self._keyring._context(HMAC)) is None:
            raise WrongKeyError(f"the KEK ({self._kek.path if isinstance(self._kek, KekFile) else 'given'}) "
                                "no longer opens this keyring; nothing was changed")
        return kek

    def _rotate_dek(self, kek: bytes | None = None, logged: bool = True) -> int:
        """Add a DEK (its seal count at 0) and seal with it from now on; under the lock.

        The rotation's log record is sealed with the old DEK (a restore must open it to
        learn the new one): writers keep one seal of the old budget spare for it.
        """
        kek = kek or self._kek_now()
        dek_id = self._keyring.add_dek()
        if logged and self._sealer.keys.budget == 0:
            self._sealer.keys.budget = 1  # only after an open with nothing reserved: one seal past the count
        try:
            self._put_keys(dict([self._keyring.wrapped_dek(kek, dek_id), seals_record(dek_id, 0)]), logged)
        except BaseException:
            del self._keyring.deks[dek_id], self._keyring.reserved[dek_id]
            raise
        self._sealer = Sealer(self.tenant_id, self._keyring.deks, budget=0)
        return dek_id

    def _reserve(self, seals: int) -> None:
        """Record in the keyring (synced) that the active DEK may seal ``seals`` more values,
        rotating first when that would take it past ``seal_limit``; under the lock."""
        if seals + 2 > self.seal_limit:
            raise StoreError(f"a batch of {seals} seals is over the {self.seal_limit} one data key may seal")
        active = self._sealer.active
        used = self._keyring.reserved[active] - max(self._sealer.keys.budget, 0)
        if used + seals + 2 > self.seal_limit:  # + this reservation's log record + the rotation's
            active, used = self._rotate_dek(), 0
        end = min(used + max(seals + 2, self._seal_block), self.seal_limit)  # keeps one spare
        before = self._keyring.reserved[active], self._sealer.keys.budget
        # counted before the write: the reservation's own log record is sealed from it
        self._keyring.reserved[active], self._sealer.keys.budget = end, end - used
        try:
            self._put_keys(dict([seals_record(active, end)]))
        except BaseException:
            self._keyring.reserved[active], self._sealer.keys.budget = before
            raise

    def _delete_keys(self, names: list[bytes]) -> None:
        batch = WriteBatch(raw_mode=True)
        for name in names:
            batch.delete(name, self._handles[KEYS])
        self._commit(batch, [(KEYS, name, None) for name in names])

    def _reseal_keys(self, cf: str, keys: list[bytes]) -> int:
        """Re-seal ``keys`` under the lock, re-reading each so a concurrent write is never undone."""
        if not keys:
            return 0
        with self._lock:
            self._check_open()
            if self._sealer.keys.budget < len(keys) + 2:
                self._reserve(len(keys) + 1)
            sealer, view, handle = self._sealer, self._views[cf], self._handles[cf]
            batch = WriteBatch(raw_mode=True)
            logged = []
            for key in keys:
                sealed = view.get(key)
                if sealed is None or sealed_dek_id(sealed) == sealer.active:
                    continue
                resealed = sealer.seal(cf, key, sealer.open(cf, key, sealed))
                batch.put(key, resealed, handle)
                logged.append((cf, key, resealed))
            moved = len(logged)
            if moved:
                self._commit(batch, logged)
            return moved

    def _compact(self, families: Sequence[str], make_durable: bool = True) -> None:
        """Flush every family (so old WAL files go) and force-compact ``families``; with
        ``make_durable``, move the durable mark first (flushing alone does not)."""
        options = CompactOptions()
        options.set_bottommost_level_compaction(BottommostLevelCompaction.force())
        if make_durable:
            self._make_durable()
        for view in self._views.values():
            view.flush()
        for cf in families:
            self._views[cf].compact_range(None, None, options)


_SEEK_WIDTH = 64  # bytes; longer than every key the REM layer writes (at most 49)


def _is_corruption(error: Exception) -> bool:
    return str(error).startswith("Corruption")


def _reason(error: Exception) -> str:
    """RocksDB's message, with the data directory left out of file names (callers see it)."""
    return re.sub(r"\S*/(?=[^/\s]+\.sst\b)", "", str(error).strip())


def _stopped_by(cf: str, view: Rdict, after: bytes, inclusive: bool) -> str | None:
    """Why a scan that read up to ``after`` ended: None for a clean end, else RocksDB's error.

    ``inclusive``: ``after`` is a key that was read (look past it); else a seek position.
    """
    iterator = view.iter()
    if inclusive:
        iterator.seek(after)
        if iterator.valid():
            iterator.next()
    elif after:
        iterator.seek(after)
    else:
        iterator.seek_to_first()
    if iterator.valid():  # a key written since the scan ended; the scan was not cut short
        return None
    try:
        iterator.status()
    except Exception as error:
        if _is_corruption(error):
            return _reason(error)
        raise StoreError(f"cannot read {cf}: {error}") from None
    return None


def _readable_after(cf: str, view: Rdict, after: bytes) -> bytes | None:
    """The first key RocksDB can read past the unreadable block(s) following ``after`` (None: none).

    RocksDB does not say where a bad block ends and a seek into it fails, so seek targets
    (keys read as big-endian integers of a fixed width) are probed: doubling steps until a
    seek succeeds, then bisection down to the first target that does. A few hundred
    seeks, each failing fast on the bad block. Limit: two bad blocks close together can
    hide a readable block between them (counted as one damaged run).
    """
    width = max(_SEEK_WIDTH, len(after) + 1)
    top = (1 << (8 * width)) - 1

    def seek(target: int) -> tuple[bool, bytes | None]:
        iterator = view.iter()  # a fresh one each time: after a failed seek, later seeks may fail too
        iterator.seek(target.to_bytes(width, "big"))
        if iterator.valid():
            return True, iterator.key()
        try:
            iterator.status()
        except Exception as error:
            if _is_corruption(error):
                return False, None
            raise StoreError(f"cannot read {cf}: {error}") from None
        return True, None  # past the last key

    bad, step = int.from_bytes(after.ljust(width, b"\0"), "big"), 1
    while True:
        good = min(bad + step, top)
        readable, key = seek(good)
        if readable:
            break
        if good == top:
            return None
        bad, step = good, step * 2
    while good - bad > 1:
        middle = (bad + good) // 2
        readable, found = seek(middle)
        if readable:
            good, key = middle, found
        else:
            bad = middle
    return key


def _check_kek(kek: bytes) -> None:
    if type(kek) is not bytes or len(kek) != KEY_BYTES:
        raise StoreError(f"a KEK is exactly {KEY_BYTES} bytes (use load_kek)")


def _range(prefix: bytes, start: bytes | None, end: bytes | None) -> tuple[bytes | None, bytes | None]:
    """The seek key and the exclusive upper bound for a prefix and a ``[start, end)`` range.

    The bound is checked in Python: rocksdict 0.3.29's ``ReadOptions.set_iterate_upper_bound``
    hands RocksDB a pointer to a buffer it frees at once, so iterators stop at random places.
    """
    lower = max(prefix, start or b"")
    uppers = [bound for bound in (end, _successor(prefix)) if bound is not None]
    return (lower or None), (min(uppers) if uppers else None)


def _successor(prefix: bytes) -> bytes | None:
    """The smallest key greater than every key starting with ``prefix`` (None: no bound)."""
    trimmed = prefix.rstrip(b"\xff")
    if not trimmed:
        return None
    return trimmed[:-1] + bytes([trimmed[-1] + 1])
