"""The encrypted store against real RocksDB in temporary directories."""
from __future__ import annotations

import hashlib
import os
import queue
import random
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from rocksdict import Options, Rdict

from percolate_node.store import (Delete, EncryptedStore, Put, ShreddedError, StoreError, TamperedValueError,
                                  WrongKeyError, generate_kek, load_kek, restore)
from percolate_node.store.errors import DataLossError
from percolate_node.store import crypto
from percolate_node.store.crypto import Sealer
from percolate_node.store.layout import DATA_FAMILIES, DOCUMENTS, KEYS, RESOURCES

ROOT = Path(__file__).resolve().parents[1]


def fingerprint(root: Path) -> dict[str, tuple]:
    """Every file and directory under ``root`` with size, mtime and content hash."""
    found = {}
    for path in sorted([root, *root.rglob("*")]):
        info = path.stat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
        found[str(path.relative_to(root))] = (info.st_size, info.st_mtime_ns, digest)
    return found


def files_containing(root: Path, needles: list[bytes]) -> list[str]:
    return [f"{path.name}: {needle[:16]!r}" for path in root.rglob("*") if path.is_file()
            for needle in needles if needle in path.read_bytes()]


def raw_db(path: Path) -> Rdict:
    """The database with plain rocksdict, bypassing the store (the attacker's view)."""
    families = Rdict.list_cf(str(path), Options(raw_mode=True))
    return Rdict(str(path), Options(raw_mode=True), column_families={cf: Options(raw_mode=True) for cf in families})


def raw_edit(path: Path, edit) -> None:
    db = raw_db(path)
    views = {cf: db.get_column_family(cf) for cf in Rdict.list_cf(str(path), Options(raw_mode=True))}
    edit(views)
    for view in views.values():
        view.close()
    db.close()


def raw_keys_records(path: Path) -> list[bytes]:
    records = []
    raw_edit(path, lambda views: records.extend(views[KEYS].values()))
    return records


# -- round trips and writes ------------------------------------------------------------------


def test_round_trip_survives_reopen_and_values_are_sealed(tmp_path, kek):
    path = tmp_path / "db"
    with EncryptedStore.open(path, "tenant-a", kek) as store:
        store.write([Put(DOCUMENTS, b"doc-1", b"first value"), Put(DOCUMENTS, b"doc-2", b"second"),
                     Put(RESOURCES, b"res-1", b"r" * 5000)])
        store.write([Put(DOCUMENTS, b"doc-2", b"second, changed"), Delete(DOCUMENTS, b"doc-1")])
        assert store.get(DOCUMENTS, b"doc-1") is None
        assert store.get(DOCUMENTS, b"doc-2") == b"second, changed"
        assert store.contains(RESOURCES, b"res-1") and not store.contains(RESOURCES, b"nope")
    with EncryptedStore.open(path, "tenant-a", kek, create=False) as store:
        assert store.get(DOCUMENTS, b"doc-2") == b"second, changed"
        assert store.get(RESOURCES, b"res-1") == b"r" * 5000
        assert store.stats()["values"][DOCUMENTS] == 1
    with EncryptedStore.open(path, "tenant-a", kek) as store:
        store.write([Put(DOCUMENTS, b"same-%d" % i, b"same value") for i in range(100)])
    sealed = dict(zip(raw_db_keys(path, DOCUMENTS), raw_db_values(path, DOCUMENTS)))
    assert b"second" not in sealed[b"doc-2"] and len(sealed[b"doc-2"]) == len(b"second, changed") + 5 + 12 + 16
    nonces = {value[5:17] for key, value in sealed.items() if key.startswith(b"same-")}
    assert len(nonces) == 100, "every value gets its own random nonce"


def test_items_prefix_and_range(store):
    store.write([Put(DOCUMENTS, bytes([a, b]), bytes([a, b]) * 3) for a in (1, 2, 0xff) for b in (0, 1, 0xff)])
    assert [k for k, _ in store.items(DOCUMENTS, prefix=b"\x02")] == [b"\x02\x00", b"\x02\x01", b"\x02\xff"]
    assert [k for k, _ in store.items(DOCUMENTS, prefix=b"\xff")] == [b"\xff\x00", b"\xff\x01", b"\xff\xff"]
    assert [k for k, _ in store.items(DOCUMENTS, start=b"\x01\x01", end=b"\x02\x01")] == [
        b"\x01\x01", b"\x01\xff", b"\x02\x00"]
    assert dict(store.items(DOCUMENTS, prefix=b"\x01"))[b"\x01\xff"] == b"\x01\xff" * 3
    assert list(store.keys(DOCUMENTS, prefix=b"\x01", start=b"\x01\x01")) == [b"\x01\x01", b"\x01\xff"]


def test_write_refuses_bad_operations_and_writes_none_of_the_batch(store):
    cases = [[Put(DOCUMENTS, b"a", b"1"), Put("no-such-family", b"b", b"2")],
             [Put(DOCUMENTS, b"a", b"1"), Put(KEYS, b"b", b"2")],
             [Put(DOCUMENTS, b"a", b"1"), Put(DOCUMENTS, "b", b"2")],
             [Put(DOCUMENTS, b"a", b"1"), Put(DOCUMENTS, b"b", "not bytes")]]
    for ops in cases:
        with pytest.raises(StoreError):
            store.write(ops)
        assert store.get(DOCUMENTS, b"a") is None


def test_operations_are_small_values_and_the_last_on_a_key_wins(store):
    import copy
    import pickle

    put, delete = Put(DOCUMENTS, b"k", b"v"), Delete(DOCUMENTS, b"k")
    assert put == Put(cf=DOCUMENTS, key=b"k", value=b"v") and put != Put(DOCUMENTS, b"k", b"w") and put != delete
    assert repr(put) == "Put(cf='documents', key=b'k', value=b'v')" and repr(delete) == "Delete(cf='documents', key=b'k')"
    assert pickle.loads(pickle.dumps(put)) == put and copy.copy(delete) == delete
    with pytest.raises(AttributeError):
        put.value = b"changed"
    with pytest.raises(TypeError):
        Put(DOCUMENTS, b"k")
    with pytest.raises(TypeError):
        Delete(DOCUMENTS, b"k", b"v")
    with pytest.raises(TypeError):
        hash(put)
    nested = Put(DOCUMENTS, b"k", b"v")
    for _ in range(300_000):  # freed iteratively (the trashcan), not by 300,000 nested C calls
        nested = Put(DOCUMENTS, b"k", nested)
    del nested
    import gc
    import weakref

    class Box:
        pass

    box = Box()
    box.op = Put(DOCUMENTS, box, b"v")  # a cycle through an operation is still collected
    alive = weakref.ref(box)
    del box
    gc.collect()
    assert alive() is None
    # the batch reaches RocksDB in key order; operations on one key keep their order
    store.write([Put(DOCUMENTS, b"z", b"1"), Put(DOCUMENTS, b"k", b"first"), Delete(DOCUMENTS, b"k"),
                 Put(DOCUMENTS, b"a", b"2"), Put(DOCUMENTS, b"k", b"last"), Delete(DOCUMENTS, b"a"),
                 Put(RESOURCES, b"k", b"other family")])
    assert dict(store.items(DOCUMENTS)) == {b"k": b"last", b"z": b"1"}
    assert store.get(RESOURCES, b"k") == b"other family"


def test_a_database_from_before_the_meta_family_opens_and_gets_its_mark(tmp_path, kek):
    """Upgrading: before the split writes every value went through the WAL and there was no
    ``meta`` family; the first open creates it, marks the whole log durable and replays nothing."""
    from percolate_node.store.layout import META

    path = tmp_path / "db"
    with EncryptedStore.open(path, "tenant-a", kek) as store:
        store.write([Put(DOCUMENTS, b"old", b"written before")])
        last = store.last_lsn
    db = raw_db(path)
    db.drop_column_family(META)
    db.close()
    assert META not in Rdict.list_cf(str(path), Options(raw_mode=True))
    with EncryptedStore.open(path, "tenant-a", kek) as store:
        assert store.replayed == 0 and store._durable_lsn == last == store.last_lsn
        assert store.get(DOCUMENTS, b"old") == b"written before"
    assert META in Rdict.list_cf(str(path), Options(raw_mode=True))


def test_a_failed_commit_writes_nothing(store):
    store.write([Put(DOCUMENTS, b"kept", b"1")])

    class FailingDB:
        def write(self, batch, options):
            raise RuntimeError("disk full")

    real, store._db = store._db, FailingDB()
    try:
        with pytest.raises(StoreError, match="disk full"):
            store.write([Put(DOCUMENTS, b"a", b"1"), Put(DOCUMENTS, b"kept", b"2")])
    finally:
        store._db = real
    assert store.get(DOCUMENTS, b"a") is None and store.get(DOCUMENTS, b"kept") == b"1"


CHILD = textwrap.dedent("""
    import sys
    from pathlib import Path
    from percolate_node.store import EncryptedStore, Put
    path, kek, first = Path(sys.argv[1]), bytes.fromhex(sys.argv[2]), int(sys.argv[3])
    store = EncryptedStore.open(path, "tenant-a", kek)
    for batch in range(first, first + 100000):
        store.write([Put("documents", b"%08d-%03d" % (batch, i), b"v" * 300) for i in range(50)])
        print(batch, flush=True)
""")


def test_batches_are_all_or_nothing_across_kill_9(tmp_path, kek):
    path, first, acknowledged = tmp_path / "db", 0, -1
    rng = random.Random(5)
    for _ in range(5):
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(path), kek.hex(), str(first)],
                                 stdout=subprocess.PIPE, text=True, cwd=ROOT)
        wanted = rng.randint(3, 40)
        for line in child.stdout:
            acknowledged = int(line)
            wanted -= 1
            if wanted == 0:
                break
        child.send_signal(signal.SIGKILL)
        child.wait()
        with EncryptedStore.open(path, "tenant-a", kek) as store:
            per_batch: dict[int, int] = {}
            for key, value in store.items(DOCUMENTS):
                assert value == b"v" * 300
                batch = int(key[:8])
                per_batch[batch] = per_batch.get(batch, 0) + 1
        assert all(count == 50 for count in per_batch.values()), per_batch
        assert all(batch in per_batch for batch in range(acknowledged + 1))
        first = max(per_batch) + 1


# A child that writes, says which batches were acknowledged, then either waits to be killed
# or (``--die-between``) exits right after a batch's change-log record is synced and before
# its values reach the memtables: the two crash points of a split write.
SPLIT_CHILD = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from percolate_node.store import Delete, EncryptedStore, Put
    path, kek, mode = Path(sys.argv[1]), bytes.fromhex(sys.argv[2]), sys.argv[3]
    store = EncryptedStore.open(path, "tenant-a", kek)
    for batch in range(40):
        ops = [Put("documents", b"%03d-%02d" % (batch, i), b"value %d" % batch) for i in range(20)]
        if batch % 2:  # later batches overwrite and delete: replay must end on the newest state
            ops += [Put("resources", b"shared", b"from %d" % batch), Delete("documents", b"%03d-00" % (batch - 1))]
        store.write(ops)
        print(batch, store.last_lsn, store._durable_lsn, flush=True)
    if mode == "trim":  # trimming asks for a flush and trims only what is durable; later trims take the rest
        target, deadline = store.last_lsn, time.monotonic() + 120
        store.trim_log(target)
        while store.first_lsn() < target and time.monotonic() < deadline:
            time.sleep(0.02)
            store.trim_log(target)
        print("trimmed", store.first_lsn(), store._durable_lsn, flush=True)
    if mode == "die-between":
        real = store._db
        class DiesBeforeTheValues:
            def write(self, batch, options):
                if options is store._unlogged_wal:
                    print("record synced", flush=True)
                    os._exit(0)
                return real.write(batch, options)
        store._db = DiesBeforeTheValues()
        store.write([Put("documents", b"the-last", b"in the log only")])
    print("waiting", flush=True)
    time.sleep(600)
""")


def run_split_child(path: Path, kek: bytes, mode: str) -> list[list[str]]:
    """SPLIT_CHILD's lines, split into words, once it died (``die-between``) or was killed."""
    child = subprocess.Popen([sys.executable, "-c", SPLIT_CHILD, str(path), kek.hex(), mode],
                             stdout=subprocess.PIPE, text=True, cwd=ROOT)
    lines = []
    for line in child.stdout:
        lines.append(line.split())
        if line.startswith("waiting"):
            child.send_signal(signal.SIGKILL)
            break
    child.wait()
    assert child.returncode in (0, -signal.SIGKILL), lines
    return lines


def _expected_after(batches: int) -> tuple[dict[bytes, bytes], bytes | None]:
    documents, shared = {}, None
    for batch in range(batches):
        documents.update({b"%03d-%02d" % (batch, i): b"value %d" % batch for i in range(20)})
        if batch % 2:
            documents.pop(b"%03d-00" % (batch - 1))
            shared = b"from %d" % batch
    return documents, shared


@pytest.mark.parametrize("mode", ["kill", "trim", "die-between"])
def test_split_writes_lose_nothing_acknowledged_across_a_crash(tmp_path, kek, mode):
    """Values are written without the WAL after their synced change-log record: a crash
    loses the memtables, and open replays the records after ``durable-lsn``."""
    path = tmp_path / "db"
    lines = run_split_child(path, kek, mode)
    acknowledged = [line for line in lines if line[0].isdigit()]
    assert len(acknowledged) == 40
    last_lsn, durable_then = int(acknowledged[-1][1]), int(acknowledged[-1][2])
    assert durable_then < last_lsn  # the values really were only in memtables when it died
    with EncryptedStore.open(path, "tenant-a", kek) as store:
        documents, shared = _expected_after(40)
        if mode == "trim":
            assert lines[-2] == ["trimmed", str(last_lsn), str(last_lsn)]  # all trimmed, once durable
            assert store.replayed == 0
        elif mode == "die-between":
            assert ["record", "synced"] in lines
            documents[b"the-last"] = b"in the log only"
            assert store.replayed == store.last_lsn - durable_then >= 40
        else:
            assert store.replayed == last_lsn - durable_then > 0
        assert dict(store.items(DOCUMENTS)) == documents
        assert store.get(RESOURCES, b"shared") == shared
        assert store._durable_lsn == store.last_lsn  # replayed, flushed and marked
    with EncryptedStore.open(path, "tenant-a", kek) as store:
        assert store.replayed == 0 and dict(store.items(DOCUMENTS)) == documents


def test_the_durable_mark_follows_closes_checkpoints_and_synced_writes(tmp_path, kek):
    from percolate_node.store.layout import INDEXES

    path = tmp_path / "db"
    with EncryptedStore.open(path, "tenant-a", kek) as store:
        store.write([Put(DOCUMENTS, b"a", b"1")])
        assert store._durable_lsn == store.last_lsn - 1  # split: the value waits in a memtable
        store.write([Put(DOCUMENTS, b"b", b"2"), Put(INDEXES, b"graph", b"x")])  # an unlogged family: one write
        assert store._durable_lsn == store.last_lsn - 2  # still behind: LSN before it is not flushed
        store.checkpoint(tmp_path / "copy")
        assert store._durable_lsn == store.last_lsn
        store.write([Put(DOCUMENTS, b"c", b"3"), Put(INDEXES, b"graph", b"y")])
        assert store._durable_lsn == store.last_lsn  # nothing pending: the synced write moves the mark

        class FailingDB:
            def write(self, batch, options):
                raise RuntimeError("disk full")

        real, store._db = store._db, FailingDB()
        with pytest.raises(StoreError, match="disk full"):
            store.write([Put(DOCUMENTS, b"d", b"4"), Put(INDEXES, b"graph", b"z")])
        store._db = real
        assert store._durable_lsn == store.last_lsn  # a failed write moves nothing
        store.write([Delete(DOCUMENTS, b"a")])
    with EncryptedStore.open(path, "tenant-a", kek) as store:
        assert store.replayed == 0  # close flushed and marked
        assert dict(store.items(DOCUMENTS)) == {b"b": b"2", b"c": b"3"}
    with EncryptedStore.open(tmp_path / "copy", "tenant-a", kek) as copy:
        assert copy.replayed == 0 and dict(copy.items(DOCUMENTS)) == {b"a": b"1", b"b": b"2"}


@pytest.mark.parametrize("flush_fails_too", [False, True])
def test_a_failed_values_write_closes_the_store_and_the_next_open_replays_it(tmp_path, kek, flush_fails_too):
    """The record is synced, its values never reach the memtables: the store closes itself
    (also when a full disk fails the flush too), marks nothing durable, and never hands the
    record's LSN to another batch."""
    path = tmp_path / "db"
    store = EncryptedStore.open(path, "tenant-a", kek)
    store.write([Put(DOCUMENTS, b"kept", b"1")])
    store.write([Put(DOCUMENTS, b"pending", b"only in a memtable")])  # split: not yet flushed
    real, real_view = store._db, store._views[DOCUMENTS]

    class ValuesFail:
        def write(self, batch, options):
            if options is store._unlogged_wal:
                raise RuntimeError("IO error: No space left on device")
            return real.write(batch, options)

        def __getattr__(self, name):
            return getattr(real, name)

    class FlushFails:
        def flush(self, wait=True):
            raise Exception("IO error: No space left on device: while appending to 000012.sst")

        def __getattr__(self, name):
            return getattr(real_view, name)

    mark = store._durable_lsn
    store._db = ValuesFail()
    if flush_fails_too:
        store._views[DOCUMENTS] = FlushFails()
    with pytest.raises(StoreError, match="closed itself, and reopening it replays the record"):
        store.write([Put(DOCUMENTS, b"logged", b"2")])
    failed_lsn = store.last_lsn
    with pytest.raises(StoreError, match="closed"):
        store.get(DOCUMENTS, b"kept")
    with pytest.raises(StoreError, match="closed"):
        store.write([Put(DOCUMENTS, b"next", b"3")])
    del real, real_view, store
    with EncryptedStore.open(path, "tenant-a", kek) as reopened:
        assert reopened.replayed == failed_lsn - mark >= 2  # nothing more was marked durable
        assert reopened.last_lsn == failed_lsn
        assert dict(reopened.items(DOCUMENTS)) == {b"kept": b"1", b"pending": b"only in a memtable", b"logged": b"2"}
        reopened.write([Put(DOCUMENTS, b"next", b"3")])
        assert reopened.last_lsn > failed_lsn
        lsn, sealed = reopened.log_records(failed_lsn - 1, limit=1)[0]
        assert lsn == failed_lsn and [op[1] for op in reopened.open_log_record(lsn, sealed).ops] == [b"logged"]


def test_values_past_the_limit_are_flushed_without_waiting_and_then_marked(tmp_path, kek, monkeypatch):
    import time

    import percolate_node.store.store as store_module
    from percolate_node.store.layout import DURABLE_LSN, META

    monkeypatch.setattr(store_module, "UNFLUSHED_LIMIT", 4096)
    with EncryptedStore.open(tmp_path / "db", "tenant-a", kek) as store:
        store.write([Put(DOCUMENTS, b"%04d" % i, b"x" * 100) for i in range(50)])  # over 4 KB: a flush starts
        candidate, flusher = store.last_lsn, store._flusher
        assert flusher is not None and store._durable_lsn < candidate
        flusher.join(120)
        assert store._flushed_through == candidate and store._durable_lsn < candidate  # flushed, not yet marked
        store.write([Put(RESOURCES, b"tick", b"t")])  # the next synced record carries the mark
        assert store._durable_lsn == candidate < store.last_lsn  # the tick itself waits in a memtable
        assert int.from_bytes(store._views[META].get(DURABLE_LSN), "big") == candidate
        store.write([Put(DOCUMENTS, b"more", b"m")])
        store._request_flush()
        store._flusher.join(120)
        assert store._durable_lsn < store.last_lsn == store._flushed_through
        store.write([Put(DOCUMENTS, b"more", b"m"), Put("indexes", b"graph", b"g")])  # through the WAL, all of it
        assert store._durable_lsn == store.last_lsn  # right after a flushed part, a WAL batch marks itself


def test_a_replayed_record_after_a_background_flush_marks_memory_and_disk_alike(tmp_path, kek):
    """apply_log_record and a finished background flush both want to move the mark: the disk
    and memory must agree, or a later trim passes the real mark and the store will not open."""
    from percolate_node.store.layout import DURABLE_LSN, META

    source = EncryptedStore.open(tmp_path / "source", "tenant-a", kek)
    source.write([Put(DOCUMENTS, b"s", b"v")])
    source.checkpoint(tmp_path / "copy")
    for i in range(3):
        source.write([Put(DOCUMENTS, b"t%d" % i, b"v")])
    with EncryptedStore.open(tmp_path / "copy", "tenant-a", kek) as copy:
        copy.write([Put(DOCUMENTS, b"own", b"v")])  # split: waits in a memtable
        copy._request_flush()
        copy._flusher.join(120)
        assert copy._flushed_through == copy.last_lsn > copy._durable_lsn
        lsn = copy.last_lsn + 1
        copy.apply_log_record(lsn, dict(source.log_records(lsn - 1, limit=1))[lsn], kek)
        assert int.from_bytes(copy._views[META].get(DURABLE_LSN), "big") == copy._durable_lsn == lsn
    source.close()


def test_a_failed_background_flush_is_retried_and_close_waits_for_a_running_one(tmp_path, kek, monkeypatch):
    import percolate_node.store.store as store_module

    monkeypatch.setattr(store_module, "FLUSH_RETRY_S", 0.0)
    store = EncryptedStore.open(tmp_path / "db", "tenant-a", kek)
    store.write([Put(DOCUMENTS, b"a", b"1")])
    real_view, release = store._views[DOCUMENTS], threading.Event()

    class FlushFails:
        def flush(self, wait=True):
            raise Exception("IO error: No space left on device")

    class FlushWaits:
        def flush(self, wait=True):
            release.wait(120)
            return real_view.flush(wait)

    store._views[DOCUMENTS] = FlushFails()
    store._request_flush()
    store._flusher.join(120)
    assert store._flush_failed and store._flushed_through == 0
    store._views[DOCUMENTS] = real_view
    failed = store._flusher
    store.write([Put(DOCUMENTS, b"b", b"2")])  # a write after the retry time asks again, without 64 MiB
    assert store._flusher is not failed
    store._flusher.join(120)
    assert not store._flush_failed and store._flushed_through == store.last_lsn  # the retry covers "b" too
    store._views[DOCUMENTS] = FlushWaits()
    store.write([Put(DOCUMENTS, b"c", b"3")])
    store._request_flush()
    flusher = store._flusher
    store._views[DOCUMENTS] = real_view  # the running flush holds the waiting one
    assert flusher.is_alive()
    closing = threading.Thread(target=store.close)
    closing.start()
    closing.join(1.0)
    assert closing.is_alive()  # close waits for the running flush before RocksDB closes
    release.set()
    closing.join(120)
    assert not closing.is_alive() and not flusher.is_alive()
    with EncryptedStore.open(tmp_path / "db", "tenant-a", kek) as reopened:
        assert reopened.replayed == 0 and dict(reopened.items(DOCUMENTS)) == {b"a": b"1", b"b": b"2", b"c": b"3"}


def test_the_durable_mark_never_goes_back_and_compact_holds_the_lock(tmp_path, kek):
    with EncryptedStore.open(tmp_path / "db", "tenant-a", kek) as store:
        for i in range(3):
            store.write([Put(DOCUMENTS, b"%d" % i, b"v")])
        store.trim_log(store.last_lsn)
        mark = store._durable_lsn
        store._set_durable(mark - 2)  # what a compaction that read an older LSN would write
        assert store._durable_lsn == mark
        entered, real_compact = threading.Event(), store._compact

        def compact(*args, **kwargs):
            entered.set()
            return real_compact(*args, **kwargs)

        store._compact = compact
        store._lock.acquire()
        worker = threading.Thread(target=store.compact)
        worker.start()
        assert not entered.wait(1.0)  # waits for the lock a writer or a trim holds
        store._lock.release()
        assert entered.wait(120)
        worker.join(120)
        assert not worker.is_alive()


DAMAGED_LOG_CHILD = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    from percolate_node.store import EncryptedStore, Put
    store = EncryptedStore.open(Path(sys.argv[1]), "tenant-a", bytes.fromhex(sys.argv[2]))
    for batch in range(300):
        store.write([Put("documents", b"%05d-%02d" % (batch, i), os.urandom(100)) for i in range(10)])
    store._views["log"].flush()  # as RocksDB does by itself once the log's memtable is full
    print(store.last_lsn, store._durable_lsn, flush=True)
    os._exit(0)  # a crash: the values' memtables are lost
""")

OPEN_CHILD = textwrap.dedent("""
    import sys
    from pathlib import Path
    from percolate_node.store import EncryptedStore
    from percolate_node.store.errors import DataLossError
    try:
        EncryptedStore.open(Path(sys.argv[1]), "tenant-a", bytes.fromhex(sys.argv[2]))
        print("opened")
    except DataLossError as error:
        print("DataLossError", error)
""")


def test_a_damaged_log_block_to_replay_fails_the_open_instead_of_hanging(tmp_path, kek):
    """rocksdict ends a scan quietly at a block it cannot read; the replay must notice the gap."""
    path = tmp_path / "db"
    done = subprocess.run([sys.executable, "-c", DAMAGED_LOG_CHILD, str(path), kek.hex()], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    last, durable = map(int, done.stdout.split())
    assert durable < last - 100
    sst = max(path.glob("*.sst"), key=lambda p: p.stat().st_size)  # the log's: the only large one
    data = bytearray(sst.read_bytes())
    data[len(data) // 3] ^= 0xFF
    sst.write_bytes(bytes(data))
    opened = subprocess.run([sys.executable, "-c", OPEN_CHILD, str(path), kek.hex()], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)  # a hang fails here
    assert opened.stdout.startswith("DataLossError") and "restore the tenant" in opened.stdout, opened


def test_a_damaged_record_to_replay_fails_the_open_and_marks_nothing(tmp_path, kek):
    from percolate_node.durability.changelog import lsn_key
    from percolate_node.store.layout import LOG

    path = tmp_path / "db"
    lines = run_split_child(path, kek, "kill")
    last, durable = int(lines[-2][1]), int(lines[-2][2])

    def flip(views):
        key = lsn_key(last)
        sealed = bytearray(views[LOG][key])
        sealed[-1] ^= 1
        views[LOG][key] = bytes(sealed)

    raw_edit(path, flip)
    for _ in range(2):  # the failed open marked nothing durable: it fails the same way again
        with pytest.raises(DataLossError):
            EncryptedStore.open(path, "tenant-a", kek)
    from percolate_node.store.layout import DURABLE_LSN, META
    marks = []
    raw_edit(path, lambda views: marks.append(views[META][DURABLE_LSN]))
    assert int.from_bytes(marks[0], "big") == durable


# -- keys ----------------------------------------------------------------------------------------


def test_wrong_kek_refuses_and_modifies_nothing(tmp_path, kek):
    path = tmp_path / "db"
    with EncryptedStore.open(path, "tenant-a", kek) as store:
        store.write([Put(DOCUMENTS, b"k", b"v")])
    before = fingerprint(path)
    with pytest.raises(WrongKeyError, match="does not open the keyring of tenant 'tenant-a'.*nothing was changed"):
        EncryptedStore.open(path, "tenant-a", os.urandom(32))
    assert fingerprint(path) == before
    with pytest.raises(StoreError, match="no store at"):
        EncryptedStore.open(tmp_path / "absent", "tenant-a", kek, create=False)
    assert not (tmp_path / "absent").exists()
    with EncryptedStore.open(path, "tenant-a", kek) as store:
        assert store.get(DOCUMENTS, b"k") == b"v"


def test_another_tenants_database_refuses_this_tenants_key(tmp_path):
    kek_a, kek_b = os.urandom(32), os.urandom(32)
    EncryptedStore.open(tmp_path / "b", "tenant-b", kek_b).close()
    before = fingerprint(tmp_path / "b")
    with pytest.raises(WrongKeyError, match="belongs to tenant 'tenant-b', not 'tenant-a'"):
        EncryptedStore.open(tmp_path / "b", "tenant-a", kek_a)
    with pytest.raises(WrongKeyError, match="does not open the keyring"):
        EncryptedStore.open(tmp_path / "b", "tenant-b", kek_a)
    assert fingerprint(tmp_path / "b") == before


def test_tampered_value_is_detected_and_names_the_key(tmp_path, kek):
    path = tmp_path / "db"
    with EncryptedStore.open(path, "tenant-a", kek) as store:
        store.write([Put(RESOURCES, b"\x01chunk", b"some text " * 20), Put(RESOURCES, b"\x02chunk", b"fine")])

    def flip(views):
        sealed = bytearray(views[RESOURCES][b"\x01chunk"])
        sealed[40] ^= 0x01
        views[RESOURCES][b"\x01chunk"] = bytes(sealed)

    raw_edit(path, flip)
    with EncryptedStore.open(path, "tenant-a", kek) as store:
        with pytest.raises(TamperedValueError, match=r"resources/016368756e6b failed authentication") as raised:
            store.get(RESOURCES, b"\x01chunk")
        assert raised.value.cf == RESOURCES and raised.value.key == b"\x01chunk"
        assert store.get(RESOURCES, b"\x02chunk") == b"fine"
        with pytest.raises(TamperedValueError):
            list(store.items(RESOURCES))
        with pytest.raises(TamperedValueError):
            store.verify()


def test_value_moved_to_another_key_or_family_fails_to_open(tmp_path, kek):
    path = tmp_path / "db"
    with EncryptedStore.open(path, "tenant-a", kek) as store:
        store.write([Put(DOCUMENTS, b"original", b"secret")])

    def move(views):
        sealed = views[DOCUMENTS][b"original"]
        views[DOCUMENTS][b"moved"] = sealed
        views[RESOURCES][b"original"] = sealed

    raw_edit(path, move)
    with EncryptedStore.open(path, "tenant-a", kek) as store:
        assert store.get(DOCUMENTS, b"original") == b"secret"
        with pytest.raises(TamperedValueError, match="documents/6d6f766564"):
            store.get(DOCUMENTS, b"moved")
        with pytest.raises(TamperedValueError, match="resources/"):
            store.get(RESOURCES, b"original")


def test_sealed_values_are_bound_to_tenant_family_key_and_dek():
    dek = os.urandom(32)
    sealed = Sealer("tenant-a", {1: dek}).seal(DOCUMENTS, b"key", b"value")
    assert Sealer("tenant-a", {1: dek}).open(DOCUMENTS, b"key", sealed) == b"value"
    for sealer, cf, key in [(Sealer("tenant-b", {1: dek}), DOCUMENTS, b"key"),
                            (Sealer("tenant-a", {1: dek}), RESOURCES, b"key"),
                            (Sealer("tenant-a", {1: dek}), DOCUMENTS, b"key2")]:
        with pytest.raises(TamperedValueError):
            sealer.open(cf, key, sealed)
    relabelled = sealed[:1] + (2).to_bytes(4, "big") + sealed[5:]  # claims another DEK (holding the same key)
    with pytest.raises(TamperedValueError, match="tag mismatch"):
        Sealer("tenant-a", {1: dek, 2: dek}).open(DOCUMENTS, b"key", relabelled)


def _reference_seal(dek: bytes, dek_id: int, context: bytes, key: bytes, value: bytes) -> bytes:
    """The sealed format built with ``cryptography``'s AESGCM, independently of ``_gcm``."""
    header, nonce = bytes([1]) + dek_id.to_bytes(4, "big"), os.urandom(12)
    return header + nonce + AESGCM(dek).encrypt(nonce, value, header + context + key)


def _cpu_has_aes_ni() -> bool:
    with open("/proc/cpuinfo") as cpuinfo:
        flags = next((line.split(":", 1)[1].split() for line in cpuinfo if line.startswith("flags")), [])
    return "aes" in flags and "sse4_1" in flags


@pytest.fixture(params=["aes-ni", "evp"])
def engine(request):
    """Both ways ``_gcm`` seals: OpenSSL's GCM mode over AES-NI (the default where the CPU has
    it) and OpenSSL's EVP; the sealed format and every byte of it must be the same."""
    from percolate_node.store import _gcm

    if not _gcm._use_aes_ni(request.param == "aes-ni") and request.param == "aes-ni":
        _gcm._use_aes_ni(True)
        assert not (_gcm.AES_NI_BUILT and _cpu_has_aes_ni()), "the CPU has AES-NI but _gcm would not use it"
        pytest.skip("no AES-NI on this CPU, or _gcm built without it (not x86-64 with GCC or Clang)")
    yield request.param
    crypto._choose_cipher()  # back to what PERCOLATE_STORE_CIPHER says


def test_the_store_seals_with_aes_ni_where_the_cpu_has_it(store):
    from percolate_node.store import _gcm

    wanted = os.environ.get(crypto.CIPHER_ENV, "").strip().lower() != "evp"  # a developer's shell may say evp
    assert store._sealer.keys.engine == ("aes-ni" if wanted and _gcm.AES_NI_BUILT and _cpu_has_aes_ni() else "evp")
    assert _gcm.AES_NI_MAX_BYTES == 4096  # the sizes below straddle it


def test_percolate_store_cipher_evp_turns_aes_ni_off_and_a_wrong_value_is_refused_by_name(tmp_path, kek):
    """Read once at import, so each setting runs in a fresh interpreter that opens a store."""
    from percolate_node.store import _gcm

    script = ("import sys; from percolate_node.store import EncryptedStore; "
              "store = EncryptedStore.open(sys.argv[1], 'tenant-a', bytes.fromhex(sys.argv[2])); "
              "print(store._sealer.keys.engine); store.close()")
    default_engine = "aes-ni" if _gcm.AES_NI_BUILT and _cpu_has_aes_ni() else "evp"
    for setting, engine in [("", default_engine), ("auto", default_engine), ("evp", "evp"), (" EVP ", "evp")]:
        env = {**os.environ, "PERCOLATE_STORE_CIPHER": setting}
        done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "db"), kek.hex()], env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and done.stdout.split() == [engine], (setting, done.stderr)
    env = {**os.environ, "PERCOLATE_STORE_CIPHER": "fast"}
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "db"), kek.hex()], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "PERCOLATE_STORE_CIPHER='fast'" in done.stderr and "auto" in done.stderr
    # refused when a store opens, not at import: a command that opens none (help, a client) still runs,
    # and one that does says so in one line
    help_run = subprocess.run([sys.executable, "-m", "percolate_node.cli", "--help"], env=env,
                              capture_output=True, text=True, timeout=120)
    assert help_run.returncode == 0 and "percolate serve" in help_run.stdout, help_run.stderr


# 48-80: around the four-block stride of the AES-NI counter loop, with and without a tail;
# 4096/4097: the last value AES-NI seals and the first that goes through EVP
@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 48, 63, 64, 65, 80, 2048, 4096, 4097, 100_003])
# 104/105 (with this 19-byte context): the last associated data _gcm hashes in one joined piece
# (AAD_JOINED_BYTES, 128 with the 5-byte header) and the first it feeds in three
@pytest.mark.parametrize("key_size", [1, 16, 104, 105, 300])  # 300: associated data past the one-update buffer
def test_native_sealing_matches_an_independent_aes_gcm(size, key_size, engine):
    deks = {1: os.urandom(32), 7: os.urandom(32)}
    sealer, key, value = Sealer("tenant-a", deks), os.urandom(key_size), os.urandom(size)
    assert sealer.keys.engine == engine
    context = b"tenant-a\0" + DOCUMENTS.encode() + b"\0"
    sealed = sealer.seal(DOCUMENTS, key, value)
    assert sealed[:5] == bytes([1, 0, 0, 0, 7]) and len(sealed) == 5 + 12 + size + 16, "active DEK = highest id"
    assert AESGCM(deks[7]).decrypt(sealed[5:17], sealed[17:], sealed[:5] + context + key) == value
    for dek_id in deks:
        assert sealer.open(DOCUMENTS, key, _reference_seal(deks[dek_id], dek_id, context, key, value)) == value
    flipped = bytearray(sealed)
    flipped[-1 - size // 2] ^= 1  # a ciphertext (or, when empty, tag) bit
    with pytest.raises(TamperedValueError, match="tag mismatch"):
        sealer.open(DOCUMENTS, key, bytes(flipped))


def test_native_sealing_refuses_malformed_values_and_keeps_nonces_unique_across_fork():
    sealer = Sealer("tenant-a", {3: os.urandom(32)})
    for sealed, reason in [(b"", "malformed header"), (b"\x02" + bytes(40), "malformed header"),
                           (bytes([1, 0, 0, 0, 9]) + bytes(40), "DEK 9, which this keyring does not hold"),
                           (bytes([1, 0, 0, 0, 3]) + bytes(20), "truncated")]:
        with pytest.raises(TamperedValueError, match=reason):
            sealer.open(DOCUMENTS, b"key", sealed)
    with pytest.raises(StoreError, match="seal takes bytes, got str"):
        sealer.seal(DOCUMENTS, b"key", "text")
    from percolate_node.store._gcm import Keys

    with pytest.raises(RuntimeError, match="not initialised"):
        Keys.__new__(Keys).seal(b"", b"key", b"value")
    for deks, active in [({}, 1), ({1: b"short"}, 1), ({1: bytes(32)}, 2), ({2**32: bytes(32)}, 2**32),
                         ({1: bytes(32)}, 2**64 + 1), ({1: bytes(32), 2: b"short"}, 1)]:
        half_made = Keys.__new__(Keys)
        with pytest.raises(ValueError):
            half_made.__init__(deks, active)
        with pytest.raises(RuntimeError, match="not initialised"):  # a failed __init__ leaves it unusable
            half_made.open(b"", b"key", bytes([1, 0, 0, 0, 1]) + bytes(40))
    sealer.seal(DOCUMENTS, b"key", b"fills the nonce pool")
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # the child's nonces must not repeat the parent's pool
        os.write(write_end, b"".join(sealer.seal(DOCUMENTS, b"key", b"x")[5:17] for _ in range(8)))
        os._exit(0)
    os.waitpid(child, 0)
    os.close(write_end)
    theirs = os.read(read_end, 8 * 12)
    ours = b"".join(sealer.seal(DOCUMENTS, b"key", b"x")[5:17] for _ in range(8))
    os.close(read_end)
    assert len(theirs) == 96
    assert not {theirs[i:i + 12] for i in range(0, 96, 12)} & {ours[i:i + 12] for i in range(0, 96, 12)}


def test_batch_sealing_orders_a_large_batch_like_a_stable_sort():
    """Past the sort's insertion runs (16) its merges decide the order: thousands of operations
    over three families, keys sharing 8-byte prefixes (the sort's first comparison) and differing
    in length, several operations on one key, all reach the callbacks as a stable sort by
    (family by first appearance, key) would give them."""
    from percolate_node.durability import changelog
    from percolate_node.store._gcm import Keys

    rng = random.Random(13)
    targets = {cf: (cf, f"t\0{cf}\0".encode(), changelog.FAMILY_INDEX[cf]) for cf in (DOCUMENTS, RESOURCES, KEYS)}
    stems = [rng.randbytes(8) for _ in range(40)] + [b"same-pre"]
    ops = []
    for index in range(3001):
        cf = rng.choice((DOCUMENTS, RESOURCES, KEYS)) if index else RESOURCES
        key = rng.choice(stems) + rng.randbytes(rng.choice((0, 0, 1, 3, 8)))
        ops.append(Delete(cf, key) if rng.random() < 0.1 else Put(cf, key, b"%d" % index))
    calls, dek = [], os.urandom(32)
    Keys({1: dek}, 1).seal_batch(ops, targets, Put, Delete,
                                 lambda key, sealed, handle: calls.append((handle, key, sealed)),
                                 lambda key, handle: calls.append((handle, key, None)))
    first_seen = list(dict.fromkeys(op.cf for op in ops))
    expected = sorted(range(len(ops)), key=lambda i: (first_seen.index(ops[i].cf), ops[i].key))
    assert [(handle, key) for handle, key, _ in calls] == [(ops[i].cf, ops[i].key) for i in expected]
    # operations on one key keep their batch order: each value says which operation it is
    opened = [None if sealed is None else AESGCM(dek).decrypt(sealed[5:17], sealed[17:],
                                                              sealed[:5] + targets[handle][1] + key)
              for handle, key, sealed in calls]
    assert opened == [None if isinstance(ops[i], Delete) else b"%d" % i for i in expected]
    assert sum(1 for op in ops if op.key.startswith(b"same-pre")) > 50, "ties on the prefix are exercised"


def test_batch_sealing_seals_like_seal_and_frames_the_log_as_changelog_encode():
    """``seal_batch`` (the store's write loop in one native call): each Put sealed as ``seal``
    seals it (opens with an independent AES-GCM, fresh nonces, one budget seal each), the batch
    callbacks get the stored values in key order per family (families by first appearance;
    stable, so the last operation on a key comes last), and the framed log operations are
    ``changelog.encode``'s, in the batch's order."""
    from percolate_node.durability import changelog
    from percolate_node.store._gcm import BatchError, Keys

    dek = os.urandom(32)
    context, unlogged = b"tenant-a\0documents\0", b"tenant-a\0indexes\0"
    targets = {DOCUMENTS: ("H", context, changelog.FAMILY_INDEX[DOCUMENTS]), "indexes": ("I", unlogged, -1)}
    ops = [Put(DOCUMENTS, b"a", b"one"), Delete(DOCUMENTS, b"b"), Put("indexes", b"g", b"graph"),
           Put(DOCUMENTS, b"k" * 300, b""), Put(DOCUMENTS, b"c", os.urandom(5000)), Put(DOCUMENTS, b"b", b"again"),
           Put("indexes", b"a", b"first"), Put(DOCUMENTS, b"ab", b"longer")]
    calls = []
    keys = Keys({4: dek}, 4, 9)
    count, framed = keys.seal_batch(ops, targets, Put, Delete, lambda *a: calls.append(("put", *a)),
                                    lambda *a: calls.append(("delete", *a)))
    assert keys.budget == 9 - 7, "one seal per Put, none per Delete"
    assert [(c[0], c[1], c[-1]) for c in calls] == [
        ("put", b"a", "H"), ("put", b"ab", "H"), ("delete", b"b", "H"), ("put", b"b", "H"), ("put", b"c", "H"),
        ("put", b"k" * 300, "H"), ("put", b"a", "I"), ("put", b"g", "I")]
    stored = {(c[-1], c[1]): c[2] for c in calls if c[0] == "put"}
    for op in ops:
        if isinstance(op, Put):
            sealed = stored["I" if op.cf == "indexes" else "H", op.key]
            ad = sealed[:5] + (unlogged if op.cf == "indexes" else context) + op.key
            assert sealed[:5] == bytes([1, 0, 0, 0, 4])
            assert AESGCM(dek).decrypt(sealed[5:17], sealed[17:], ad) == op.value
    assert len({sealed[5:17] for sealed in stored.values()}) == 7, "a fresh nonce per value"
    logged = [(DOCUMENTS, b"a", stored["H", b"a"]), (DOCUMENTS, b"b", None),
              (DOCUMENTS, b"k" * 300, stored["H", b"k" * 300]), (DOCUMENTS, b"c", stored["H", b"c"]),
              (DOCUMENTS, b"b", stored["H", b"b"]), (DOCUMENTS, b"ab", stored["H", b"ab"])]
    assert count == 6
    assert changelog.encode_framed(7, 2, 99, count, framed) == changelog.encode(7, 2, 99, logged)
    # the budget holds across the batch: the second Put of this one finds it spent
    with pytest.raises(BatchError) as failed:
        keys.seal_batch([Put(DOCUMENTS, b"x", b"1"), Put(DOCUMENTS, b"y", b"2"), Put(DOCUMENTS, b"z", b"3")],
                        targets, Put, Delete, lambda *a: None, lambda *a: None)
    index, error = failed.value.args
    assert index == 2 and isinstance(error, RuntimeError) and "budget spent" in str(error) and keys.budget == 0
    # keys destroyed by a callback: every value was sealed before the first one, the next seal refuses
    keys = Keys({4: dek}, 4)
    keys.seal_batch([Put(DOCUMENTS, b"x", b"1"), Put(DOCUMENTS, b"y", b"2")], targets, Put, Delete,
                    lambda *a: keys.destroy(), lambda *a: None)
    with pytest.raises(RuntimeError, match="destroyed"):
        keys.seal(context, b"x", b"1")
    # the store's own types are read by what they are: passed the other way round, nothing breaks
    keys = Keys({4: dek}, 4)
    swapped = []
    keys.seal_batch([Delete(DOCUMENTS, b"d"), Put(DOCUMENTS, b"p", b"v")], targets, Delete, Put,
                    lambda *a: swapped.append(("put", a[0])), lambda *a: swapped.append(("delete", a[0])))
    assert swapped == [("delete", b"d"), ("put", b"p")]
    # a callback that fails names the operation by its place in the batch, not in the sorted order
    keys = Keys({4: dek}, 4)

    def refuse_y(key, sealed, handle):
        if key == b"y":
            raise ValueError("no y")

    with pytest.raises(BatchError) as failed:
        keys.seal_batch([Put(DOCUMENTS, b"z", b"1"), Put(DOCUMENTS, b"y", b"2"), Put(DOCUMENTS, b"x", b"3")],
                        targets, Put, Delete, refuse_y, None)
    assert failed.value.args[0] == 1 and "no y" in str(failed.value.args[1])
    # a forked child's batches draw their own nonces
    keys = Keys({4: dek}, 4)
    keys.seal(context, b"key", b"fills the nonce pool")

    def nonces() -> set[bytes]:
        got = []
        keys.seal_batch([Put(DOCUMENTS, b"k%d" % i, b"x") for i in range(8)], targets, Put, Delete,
                        lambda key, sealed, handle: got.append(sealed[5:17]), None)
        return set(got)

    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:
        os.write(write_end, b"".join(nonces()))
        os._exit(0)
    os.waitpid(child, 0)
    os.close(write_end)
    theirs = os.read(read_end, 8 * 12)
    os.close(read_end)
    assert len(theirs) == 96 and not {theirs[i:i + 12] for i in range(0, 96, 12)} & nonces()


def test_write_logs_what_it_stored_and_maps_batch_errors(store):
    from percolate_node.store.layout import INDEXES

    after = store.last_lsn
    store.write([Put(DOCUMENTS, b"a", b"1"), Put(INDEXES, b"graph", b"derived"), Delete(RESOURCES, b"gone"),
                 Put(RESOURCES, b"r", b"x" * 64)])
    lsn, sealed = store.log_records(after)[-1]  # after the seal reservation's own record
    record = store.open_log_record(lsn, sealed)
    raw = {key: store._views[cf].get(key) for cf, key in [(DOCUMENTS, b"a"), (RESOURCES, b"r")]}  # as stored
    assert record.ops == ((DOCUMENTS, b"a", raw[b"a"]), (RESOURCES, b"gone", None), (RESOURCES, b"r", raw[b"r"]))
    assert store.get(INDEXES, b"graph") == b"derived" and store.get(RESOURCES, b"r") == b"x" * 64
    with pytest.raises(StoreError, match="write takes Put and Delete operations, not tuple"):
        store.write([Put(DOCUMENTS, b"b", b"2"), (DOCUMENTS, b"c", b"3")])
    with pytest.raises(StoreError, match="keys are non-empty bytes"):
        store.write([Delete(DOCUMENTS, b"")])
    with pytest.raises(StoreError, match="values are bytes, got memoryview"):
        store.write([Put(DOCUMENTS, b"b", memoryview(b"2"))])
    assert store.get(DOCUMENTS, b"b") is None and store.last_lsn == lsn


def test_dek_rotation_online(store):
    values = {b"%05d" % i: b"old %d" % i for i in range(3000)}
    store.write([Put(DOCUMENTS, k, v) for k, v in values.items()])
    assert store.rotate_dek() == 2
    store.write([Put(DOCUMENTS, b"new", b"sealed with DEK 2")])
    with pytest.raises(StoreError, match=r"DEK\(s\) \[1\] still seal 3000 values"):
        store.retire_old_deks()
    # The pass pauses after each batch until this thread has read and written: the
    # interleaving is fixed by hand-offs, not by how fast either thread runs.
    reports, paused, resume = [], queue.Queue(), queue.Queue()

    def report(progress):
        reports.append(progress)
        if not progress.done:
            paused.put(progress)
            resume.get(timeout=120)

    worker = threading.Thread(target=store.reseal, kwargs={"progress": report, "batch_size": 64})
    worker.start()
    reads = writes = 0
    rng = random.Random(1)
    for _ in range(3001 // 64):
        paused.get(timeout=120)
        for _ in range(10):
            key = b"%05d" % rng.randrange(3000)
            assert store.get(DOCUMENTS, key) == values[key]
            reads += 1
        values[key] = b"rewritten during reseal %d" % reads
        store.write([Put(DOCUMENTS, key, values[key])])
        writes += 1
        resume.put(None)
    worker.join(120)
    assert not worker.is_alive() and reads == 460 and writes == 46
    assert reports[-1].done and reports[-1].scanned == 3001 and len(reports) == 47
    assert store.retire_old_deks() == [1]
    stats = store.stats()
    assert stats["active_dek"] == 2 and stats["deks"] == [2]
    assert dict(store.items(DOCUMENTS)) == {**values, b"new": b"sealed with DEK 2"}
    assert store.verify() == 3001


def test_reseal_resumes_after_being_stopped(store):
    store.write([Put(RESOURCES, b"%04d" % i, b"x%d" % i) for i in range(1000)])
    store.rotate_dek()
    stop = threading.Event()
    first = store.reseal(progress=lambda p: stop.set(), stop=stop, batch_size=100)
    assert not first.done and first.resealed == 100
    with pytest.raises(StoreError, match="still seal 900 values"):
        store.retire_old_deks()
    second = store.reseal()
    assert second.done and second.resealed == 900 and second.scanned == 1000
    assert store.retire_old_deks() == [1]
    assert store.get(RESOURCES, b"0999") == b"x999"


def test_kek_rotation_rewraps_keys_only(tmp_path, kek):
    path, new_kek = tmp_path / "db", os.urandom(32)
    with EncryptedStore.open(path, "tenant-a", kek) as store:
        store.write([Put(DOCUMENTS, b"k", b"v")])
        key_before = store.name_key("alice")
    old_records = raw_keys_records(path)
    assert files_containing(path, old_records), "the scan below would prove nothing"
    raw_sealed = raw_db_values(path, DOCUMENTS)
    with EncryptedStore.open(path, "tenant-a", kek) as store:
        store.rotate_kek(new_kek)
        assert store.get(DOCUMENTS, b"k") == b"v"
    with pytest.raises(WrongKeyError):
        EncryptedStore.open(path, "tenant-a", kek)
    with EncryptedStore.open(path, "tenant-a", new_kek) as store:
        assert store.get(DOCUMENTS, b"k") == b"v"
        assert store.name_key("alice") == key_before
    assert raw_db_values(path, DOCUMENTS) == raw_sealed, "KEK rotation must not re-encrypt values"
    wrapped = [blob for blob in old_records if not blob.startswith(b"{")]
    assert files_containing(path, wrapped) == [], "old wrapped keys are still on disk"


def test_shred_makes_data_and_earlier_backups_unreadable(tmp_path, kek):
    path = tmp_path / "db"
    with EncryptedStore.open(path, "tenant-a", kek) as store:
        store.write([Put(DOCUMENTS, b"k%d" % i, b"v" * 100) for i in range(100)])
        store.rotate_dek()
        store.write([Put(DOCUMENTS, b"late", b"v")])
        backup = store.backup(tmp_path / "backup")
    wrapped = [blob for blob in raw_keys_records(path) if not blob.startswith(b"{")]
    assert len(wrapped) == 3  # hmac key and two DEKs
    assert files_containing(path, wrapped), "the scan below would prove nothing"
    store = EncryptedStore.open(path, "tenant-a", kek)
    store.shred()
    with pytest.raises(StoreError, match="closed"):
        store.get(DOCUMENTS, b"k1")
    with pytest.raises(ShreddedError, match="shredded at"):
        EncryptedStore.open(path, "tenant-a", kek)
    assert files_containing(path, wrapped) == []
    assert files_containing(backup, wrapped) == []
    # The sealed data is still there, and nothing anywhere can open it any more.
    assert len(raw_db_values(backup, DOCUMENTS)) == 101


def raw_db_keys(path: Path, cf: str) -> list[bytes]:
    keys = []
    raw_edit(path, lambda views: keys.extend(views[cf].keys()))
    return keys


def raw_db_values(path: Path, cf: str) -> list[bytes]:
    values = []
    raw_edit(path, lambda views: values.extend(views[cf].values()))
    return values


def test_backup_has_no_keys_and_restores_with_exported_keyring(tmp_path, kek):
    path = tmp_path / "db"
    with EncryptedStore.open(path, "tenant-a", kek) as store:
        store.write([Put(DOCUMENTS, b"before", b"in the backup")])
        key = store.name_key("alice")
        backup = store.backup(tmp_path / "backup")
        store.export_keyring(tmp_path / "keyring.json")
        store.write([Put(DOCUMENTS, b"after", b"not in the backup")])
        with pytest.raises(StoreError, match="already exists"):
            store.backup(backup)
    assert KEYS not in Rdict.list_cf(str(backup), Options(raw_mode=True))
    assert (tmp_path / "keyring.json").stat().st_mode & 0o777 == 0o600
    with pytest.raises(StoreError, match="without a Percolate keyring"):
        EncryptedStore.open(backup, "tenant-a", kek)
    with pytest.raises(WrongKeyError):
        restore(backup, tmp_path / "wrong", os.urandom(32), tmp_path / "keyring.json")
    assert not (tmp_path / "wrong").exists()
    restore(backup, tmp_path / "restored", kek, tmp_path / "keyring.json")
    with EncryptedStore.open(tmp_path / "restored", "tenant-a", kek, create=False) as restored:
        assert restored.get(DOCUMENTS, b"before") == b"in the backup"
        assert restored.get(DOCUMENTS, b"after") is None
        assert restored.name_key("alice") == key
        restored.write([Put(DOCUMENTS, b"more", b"writable")])
    with pytest.raises(StoreError, match="not empty"):
        restore(backup, tmp_path / "restored", kek, tmp_path / "keyring.json")


def test_restore_needs_the_deks_the_backup_was_sealed_with(tmp_path, kek):
    with EncryptedStore.open(tmp_path / "db", "tenant-a", kek) as store:
        store.write([Put(DOCUMENTS, b"k", b"v")])
        backup = store.backup(tmp_path / "backup")
        store.export_keyring(tmp_path / "keyring-at-backup.json")
        store.rotate_dek()
        store.reseal()
        store.retire_old_deks()
        store.export_keyring(tmp_path / "keyring-now.json")
    with pytest.raises(StoreError, match=r"sealed with DEK\(s\) \[1\] that this keyring no longer holds"):
        restore(backup, tmp_path / "restored", kek, tmp_path / "keyring-now.json")
    assert not (tmp_path / "restored").exists()
    restore(backup, tmp_path / "restored", kek, tmp_path / "keyring-at-backup.json")


def test_keys_hold_no_user_content(tmp_path, kek):
    marker = "MARKER-7f3a-confidential"
    path = tmp_path / "db"
    with EncryptedStore.open(path, "tenant-a", kek) as store:
        name_key = store.name_key(marker)
        assert len(name_key) == 16 and name_key == store.name_key(marker) != store.name_key(marker + "x")
        store.write([Put(DOCUMENTS, store.name_key(f"{marker}-{i}"), f"{marker} value {i} ".encode() * 50)
                     for i in range(200)])
        store.write([Put(RESOURCES, name_key, marker.encode())])
    with EncryptedStore.open(tmp_path / "other", "tenant-a", kek) as other:
        assert other.name_key(marker) != name_key  # each database has its own name key
    assert files_containing(path, [marker.encode(), marker.encode("utf-16-le")]) == []


def test_opening_something_that_is_not_a_store(tmp_path, kek):
    raw = Rdict(str(tmp_path / "plain"), Options(raw_mode=True))
    raw[b"k"] = b"v"
    raw.close()
    with pytest.raises(StoreError, match="without a Percolate keyring"):
        EncryptedStore.open(tmp_path / "plain", "tenant-a", kek)
    with pytest.raises(StoreError, match="tenant id"):
        EncryptedStore.open(tmp_path / "x", "Tenant A", kek)
    with pytest.raises(StoreError, match="exactly 32 bytes"):
        EncryptedStore.open(tmp_path / "x", "tenant-a", b"short")


def test_closed_store_refuses(tmp_path, kek):
    store = EncryptedStore.open(tmp_path / "db", "tenant-a", kek)
    store.close()
    store.close()
    for call in (lambda: store.get(DOCUMENTS, b"k"), lambda: store.write([Put(DOCUMENTS, b"k", b"v")]),
                 store.rotate_dek):
        with pytest.raises(StoreError, match="closed"):
            call()


def test_stats(store):
    store.write([Put(cf, b"k%d" % i, b"v") for cf in DATA_FAMILIES[:3] for i in range(3)])
    stats = store.stats()
    assert stats["values"][DATA_FAMILIES[0]] == 3 and stats["values"][DATA_FAMILIES[5]] == 0
    assert stats["bytes_on_disk"] > 0 and stats["tenant_id"] == "tenant-a"


# -- the KEK file -----------------------------------------------------------------------------------


def test_kek_files(tmp_path):
    path = tmp_path / "kek"
    kek = generate_kek(path)
    assert path.stat().st_mode & 0o777 == 0o600 and load_kek(path) == kek
    with pytest.raises(StoreError, match="already exists; refusing to overwrite"):
        generate_kek(path)
    with pytest.raises(StoreError, match="does not exist"):
        load_kek(tmp_path / "missing")
    (tmp_path / "short").write_bytes(b"x" * 31)
    (tmp_path / "short").chmod(0o600)
    with pytest.raises(StoreError, match="holds 31 bytes"):
        load_kek(tmp_path / "short")
