"""Durability: the change log, snapshots and log segments in object storage, point-in-time
restore. The same matrix runs on a local folder and on a real S3-protocol server
(``moto_server`` on 127.0.0.1); the drill runs a real node (real Triton, real TLS)."""
from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from percolate.node.v1 import node_pb2 as pb
from percolate_common.background import BackgroundServer
from percolate_node.durability import segments
from percolate_node.durability.agent import BackupAgent, BackupMetrics, BackupPolicy
from percolate_node.durability.errors import (BackupError, CorruptObjectError, FencedError, ObjectExistsError,
                                              ObjectMissingError)
from percolate_node.durability.logchain import chain
from percolate_node.durability.objstore import LocalObjectStore, RemoteObjectStore
from percolate_node.durability.restore import Target, restore
from percolate_node.durability.snapshots import list_snapshots
from percolate_node.server import NodeServer
from percolate_node.store import EncryptedStore, Put, WrongKeyError, generate_kek
from percolate_node.store.errors import DataLossError
from percolate_node.store.layout import DOCUMENTS, KEYS, RESOURCES
from tests.durability_fixtures import FlakyProxy, MotoServer, free_port, new_bucket, s3_options
from tests.test_node import Caller, node_config

TENANT = "tenant-a"


@pytest.fixture(params=["local", "s3"])
def objects(request, tmp_path):
    """A fresh, empty object store of each kind."""
    if request.param == "local":
        return LocalObjectStore(tmp_path / "objects")
    moto = request.getfixturevalue("moto")
    return RemoteObjectStore(f"s3://{new_bucket(moto)}/backups", s3_options(moto.endpoint))


@pytest.fixture
def kek_file(tmp_path) -> Path:
    path = tmp_path / "kek.bin"
    generate_kek(path)
    return path


def open_store(path: Path, kek_file: Path, tenant: str = TENANT, epoch: int = 1) -> EncryptedStore:
    store = EncryptedStore.open(path, tenant, kek_file)
    store.epoch = epoch
    return store


def fast_policy(**overrides) -> BackupPolicy:
    return replace(BackupPolicy(ship_interval_s=0.05, max_backoff_s=1.0), **overrides)


def agent_for(store, objects, **policy) -> BackupAgent:
    from prometheus_client import CollectorRegistry

    agent = BackupAgent(store, objects, fast_policy(**policy), BackupMetrics(CollectorRegistry()))
    agent.start()
    assert agent.wait_ready(60)
    return agent


def write_steps(store, steps: int, per_step: int, start: int = 0) -> list[tuple[int, int, dict[bytes, bytes]]]:
    """Write in steps; after each: (time ns, last LSN, every document value at that moment)."""
    marks, state = [], dict(store.items(DOCUMENTS))
    for step in range(steps):
        for i in range(per_step):
            key = b"doc-%03d-%03d" % (start + step, i)
            value = os.urandom(8).hex().encode() * (1 + i % 5)
            store.write([Put(DOCUMENTS, key, value)])
            state[key] = value
        if step % 2 == 1:  # deletes and overwrites are restored exactly too
            victim = sorted(state)[0]
            from percolate_node.store import Delete

            store.write([Delete(DOCUMENTS, victim)])
            del state[victim]
        time.sleep(0.002)  # commit times strictly apart from the mark
        marks.append((time.time_ns(), store.last_lsn, dict(state)))
        time.sleep(0.002)
    return marks


def documents_of(path: Path, kek_file: Path) -> dict[bytes, bytes]:
    with EncryptedStore.open(path, TENANT, kek_file, create=False) as store:
        return dict(store.items(DOCUMENTS))


# -- the object store interface --------------------------------------------------------------


def test_object_store_writes_are_create_only(objects):
    objects.put_new("tenants/t/a/one", b"first")
    with pytest.raises(ObjectExistsError, match="never overwritten"):
        objects.put_new("tenants/t/a/one", b"second")
    assert objects.get("tenants/t/a/one") == b"first"
    objects.put_new("tenants/t/a/two", b"2")
    assert objects.list("tenants/t/a/") == ["tenants/t/a/one", "tenants/t/a/two"]
    with pytest.raises(ObjectMissingError, match="missing"):
        objects.get("tenants/t/nothing")
    objects.delete("tenants/t/a/two")
    assert objects.list("tenants/t/") == ["tenants/t/a/one"]


# -- the change log --------------------------------------------------------------------------


def test_every_batch_writes_one_sealed_log_record_in_the_same_batch(tmp_path, kek_file):
    with open_store(tmp_path / "db", kek_file) as store:
        store.write([Put(DOCUMENTS, b"warm", b"up")])  # the first write also reserves seals (a keys record)
        assert any(cf == KEYS for _, sealed in store.log_records(0) for cf, _, _ in
                   store.open_log_record(_, sealed).ops)
        before = store.last_lsn
        from percolate_node.store import Delete

        store.write([Put(DOCUMENTS, b"a", b"1"), Put(RESOURCES, b"r", b"2")])
        store.write([Delete(DOCUMENTS, b"a")])
        records = store.log_records(before)
        assert [lsn for lsn, _ in records] == [before + 1, before + 2]
        first = store.open_log_record(*records[0])
        assert first.epoch == 1 and abs(first.commit_time_ns - time.time_ns()) < 60e9
        assert [(cf, key) for cf, key, _ in first.ops] == [(DOCUMENTS, b"a"), (RESOURCES, b"r")]
        # values in the record are exactly what is stored: sealed, never plaintext
        assert first.ops[0][2] != b"1" and b"1" != first.ops[0][2][-1:]
        assert store.open_log_record(*records[1]).ops == ((DOCUMENTS, b"a", None),)
        tampered = bytearray(records[0][1])
        tampered[-1] ^= 1
        with pytest.raises(DataLossError):
            store.open_log_record(records[0][0], bytes(tampered))
        last = store.last_lsn
    with open_store(tmp_path / "db", kek_file) as store:  # the LSN survives a restart
        store.write([Put(DOCUMENTS, b"b", b"3")])
        after = [lsn for lsn, _ in store.log_records(last)]
        assert after == list(range(last + 1, store.last_lsn + 1)) and len(after) >= 1


def test_key_changes_are_logged_and_replay_after_a_rotation(tmp_path, kek_file, objects):
    """A DEK rotated after the snapshot reaches a restore through the log."""
    with open_store(tmp_path / "db", kek_file) as store, agent_for(store, objects) as agent:
        store.write([Put(DOCUMENTS, b"before", b"old key")])
        agent.request_snapshot()
        store.rotate_dek()
        store.write([Put(DOCUMENTS, b"after", b"new key")])
        assert agent.wait_shipped(store.last_lsn, 60)
    restore(objects, TENANT, kek_file, tmp_path / "restored", Target("latest"))
    assert documents_of(tmp_path / "restored", kek_file) == {b"before": b"old key", b"after": b"new key"}


# -- point in time ------------------------------------------------------------------------------


def test_point_in_time_restore_to_each_moment_and_latest(tmp_path, kek_file, objects):
    with open_store(tmp_path / "db", kek_file) as store, agent_for(store, objects) as agent:
        marks = write_steps(store, 2, 20)
        snapshot = agent.request_snapshot()
        assert snapshot.info.lsn >= marks[-1][1]
        marks += write_steps(store, 3, 15, start=2)
        second = agent.request_snapshot()
        assert second.shared_files >= 1, "unchanged SSTs are referenced, not uploaded again"
        marks += write_steps(store, 2, 10, start=5)
        assert agent.wait_shipped(store.last_lsn, 60)
        final = dict(store.items(DOCUMENTS))
    for number, (moment, lsn, state) in enumerate(marks):
        into = tmp_path / f"at-{number}"
        report = restore(objects, TENANT, kek_file, into, Target("time", moment))
        assert report.last_lsn == lsn, (number, report)
        assert documents_of(into, kek_file) == state, number
    by_lsn = restore(objects, TENANT, kek_file, tmp_path / "by-lsn", Target("lsn", marks[3][1]))
    assert by_lsn.last_lsn == marks[3][1] and documents_of(tmp_path / "by-lsn", kek_file) == marks[3][2]
    latest = restore(objects, TENANT, kek_file, tmp_path / "latest", Target("latest"))
    assert documents_of(tmp_path / "latest", kek_file) == final and latest.values_verified >= len(final)


def test_target_before_the_first_snapshot_is_a_clear_error(tmp_path, kek_file, objects):
    early = time.time_ns()
    time.sleep(0.01)
    with open_store(tmp_path / "db", kek_file) as store, agent_for(store, objects):
        store.write([Put(DOCUMENTS, b"x", b"y")])
    with pytest.raises(BackupError, match="no snapshot at or before"):
        restore(objects, TENANT, kek_file, tmp_path / "r", Target("time", early))
    assert not (tmp_path / "r").exists()
    with pytest.raises(BackupError, match="RFC 3339"):
        Target.parse("yesterday")
    assert Target.parse("2026-11-27T10:02:00Z").kind == "time" and Target.parse("42") == Target("lsn", 42)


# -- damage, wrong keys, foreign prefixes ----------------------------------------------------------


@pytest.fixture
def backed_up(tmp_path, kek_file, objects):
    """A store with a snapshot and shipped log after it: (objects, final documents)."""
    with open_store(tmp_path / "db", kek_file) as store, agent_for(store, objects) as agent:
        write_steps(store, 2, 10)
        agent.request_snapshot()
        for start in (2, 4, 6):  # three shipped segments after the snapshot
            write_steps(store, 2, 10, start=start)
            assert agent.wait_shipped(store.last_lsn, 60)
        return objects, dict(store.items(DOCUMENTS))


def _leaves_nothing(folder: Path) -> None:
    assert not folder.exists()
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}.restore-")]


def test_tampered_snapshot_object_is_named_and_nothing_is_written(tmp_path, kek_file, backed_up):
    objects, _ = backed_up
    info = list_snapshots(objects, TENANT)[-1]
    victim = next(f for f in info.files if f["name"].endswith(".sst"))["object"]
    data = bytearray(objects.get(victim))
    data[len(data) // 2] ^= 0xFF
    objects.delete(victim)
    objects.put_new(victim, bytes(data))
    with pytest.raises(CorruptObjectError, match=victim.split("/")[-1]):
        restore(objects, TENANT, kek_file, tmp_path / "r", Target("latest"))
    _leaves_nothing(tmp_path / "r")


def test_tampered_or_missing_log_segment_is_named(tmp_path, kek_file, backed_up):
    objects, _ = backed_up
    snapshot_lsn = list_snapshots(objects, TENANT)[-1].lsn
    after = [s for s in chain(objects, TENANT).segments if s.last > snapshot_lsn]
    assert len(after) >= 2, "the fixture ships several segments after its snapshot"
    data = bytearray(objects.get(after[0].key))
    data[40] ^= 1
    objects.delete(after[0].key)
    objects.put_new(after[0].key, bytes(data))
    with pytest.raises(CorruptObjectError, match="SHA-256"):
        restore(objects, TENANT, kek_file, tmp_path / "r1", Target("latest"))
    _leaves_nothing(tmp_path / "r1")
    objects.delete(after[0].key)
    with pytest.raises(ObjectMissingError, match="missing"):
        restore(objects, TENANT, kek_file, tmp_path / "r2", Target("latest"))
    _leaves_nothing(tmp_path / "r2")


def test_wrong_kek_and_crypto_shred_make_every_backup_unreadable(tmp_path, kek_file, backed_up):
    objects, _ = backed_up
    other = tmp_path / "other-kek"
    generate_kek(other)
    for info in list_snapshots(objects, TENANT):
        with pytest.raises(WrongKeyError):
            restore(objects, TENANT, other, tmp_path / f"wrong-{info.lsn}", Target("lsn", info.lsn))
        _leaves_nothing(tmp_path / f"wrong-{info.lsn}")
    # crypto-shred: the KEK is destroyed; no snapshot or segment opens again
    kek_file.write_bytes(os.urandom(32))
    for number, info in enumerate(list_snapshots(objects, TENANT)):
        with pytest.raises(WrongKeyError):
            restore(objects, TENANT, kek_file, tmp_path / f"shred-{number}", Target("lsn", info.lsn))
        _leaves_nothing(tmp_path / f"shred-{number}")


def test_objects_hold_ciphertext_only(tmp_path, kek_file, objects):
    needle = b"unmistakable-plaintext-marker-7731"
    with open_store(tmp_path / "db", kek_file) as store, agent_for(store, objects) as agent:
        store.write([Put(DOCUMENTS, b"k", needle * 4)])
        agent.request_snapshot()
        store.write([Put(DOCUMENTS, b"k2", needle * 4)])
        assert agent.wait_shipped(store.last_lsn, 60)
    keys = objects.list("tenants/")
    assert any("/log/" in k for k in keys) and any("/snapshots/" in k for k in keys)
    for key in keys:
        assert needle not in objects.get(key), key
    assert kek_file.read_bytes() not in b"".join(objects.get(k) for k in keys)


def test_another_tenants_objects_are_refused(tmp_path, kek_file, backed_up):
    """A node pointed at another tenant's objects (copied under its own prefix) gets an error."""
    objects, _ = backed_up
    for key in objects.list("tenants/tenant-a/"):
        objects.put_new("tenants/tenant-b/" + key.removeprefix("tenants/tenant-a/"), objects.get(key))
    with pytest.raises((CorruptObjectError, WrongKeyError), match="tenant"):
        restore(objects, "tenant-b", kek_file, tmp_path / "b", Target("latest"))
    _leaves_nothing(tmp_path / "b")


# -- fencing and timelines -----------------------------------------------------------------------


def test_restore_forks_a_new_epoch_and_the_old_primary_is_fenced(tmp_path, kek_file, objects):
    with open_store(tmp_path / "db", kek_file) as store, agent_for(store, objects) as agent:
        marks = write_steps(store, 3, 5)
        agent.request_snapshot()
        marks += write_steps(store, 2, 5, start=3)
        assert agent.wait_shipped(store.last_lsn, 60)
    # restore to an earlier moment and carry on there: a new timeline (epoch 2)
    fork = tmp_path / "fork"
    report = restore(objects, TENANT, kek_file, fork, Target("time", marks[3][0]))
    assert report.epoch == 2
    from percolate_node.durability.epoch import read_epoch

    with open_store(fork, kek_file, epoch=read_epoch(fork)) as forked, agent_for(forked, objects) as agent:
        forked.write([Put(DOCUMENTS, b"only-on-the-new-timeline", b"yes")])
        assert agent.wait_shipped(forked.last_lsn, 60)
        expected = dict(forked.items(DOCUMENTS))
    # the old primary (epoch 1) comes back: it must not write over the fence
    with open_store(tmp_path / "db", kek_file, epoch=1) as old:
        old.write([Put(DOCUMENTS, b"from-the-fenced-primary", b"no")])
        agent = BackupAgent(old, objects, fast_policy(), BackupMetrics(__import__("prometheus_client").CollectorRegistry()))
        agent.start()
        assert agent.wait_ready(60)
        agent.stop()
        assert agent.fenced and "epoch 2" in agent.fenced
    latest = restore(objects, TENANT, kek_file, tmp_path / "latest", Target("latest"))
    assert latest.epoch == 3 and documents_of(tmp_path / "latest", kek_file) == expected


def test_apply_refuses_out_of_order_and_older_epoch_records(tmp_path, kek_file):
    with open_store(tmp_path / "a", kek_file) as source:
        shutil.copytree(tmp_path / "a", tmp_path / "b", ignore=shutil.ignore_patterns("LOCK"))
        start = source.last_lsn
        source.write([Put(DOCUMENTS, b"x", b"1")])
        source.write([Put(DOCUMENTS, b"y", b"2")])
        records = source.log_records(start)
    from percolate_node.store import StoreError

    with open_store(tmp_path / "b", kek_file) as copy:
        with pytest.raises(StoreError, match="out of order"):
            copy.apply_log_record(*records[1])
        copy.epoch = 5
        with pytest.raises(FencedError, match="older than 5"):
            copy.apply_log_record(*records[0])


# -- an object store that fails or is away ------------------------------------------------------------


def test_flaky_object_store_retries_and_writes_nothing_half(tmp_path, kek_file, moto):
    bucket = new_bucket(moto)
    proxy = FlakyProxy(moto.endpoint, fail_every=2)
    try:
        flaky = RemoteObjectStore(f"s3://{bucket}/b", s3_options(proxy.endpoint))
        with open_store(tmp_path / "db", kek_file) as store, agent_for(store, flaky) as agent:
            marks = write_steps(store, 3, 10)
            agent.request_snapshot()
            marks += write_steps(store, 2, 10, start=3)
            assert agent.wait_shipped(store.last_lsn, 120)
        assert proxy.failed > 3
    finally:
        proxy.stop()
    direct = RemoteObjectStore(f"s3://{bucket}/b", s3_options(moto.endpoint))
    restore(direct, TENANT, kek_file, tmp_path / "r", Target("latest"))
    assert documents_of(tmp_path / "r", kek_file) == marks[-1][2]


def test_unreachable_object_store_never_blocks_writes_and_catches_up(tmp_path, kek_file):
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    objects = RemoteObjectStore("s3://later/b", s3_options(endpoint))
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    with open_store(tmp_path / "db", kek_file) as store:
        agent = BackupAgent(store, objects, fast_policy(), BackupMetrics(registry)).start()
        try:
            for i in range(50):  # every write returns while the store is away
                store.write([Put(DOCUMENTS, b"k%02d" % i, b"v")])

            def lag() -> float:
                return registry.get_sample_value("percolate_backup_log_lag_seconds", {"tenant_id": TENANT}) or 0.0

            # the agent records the error, then updates the gauge: wait for both (a loaded
            # machine can read between the two)
            deadline = time.monotonic() + 60
            while (agent.last_error is None or lag() <= 0) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert agent.last_error and "cannot" in agent.last_error
            assert lag() > 0, "the unshipped writes' lag grows while the store is away"
            moto = MotoServer(port)  # the store comes back
            try:
                moto.create_bucket("later")
                assert agent.wait_shipped(store.last_lsn, 120), agent.last_error
                assert registry.get_sample_value("percolate_backup_failures_total",
                                                 {"tenant_id": TENANT, "kind": "ship"}) >= 1
                agent.stop()
                restore(objects, TENANT, kek_file, tmp_path / "r", Target("latest"))
                assert len(documents_of(tmp_path / "r", kek_file)) == 50
            finally:
                moto.stop()
        finally:
            agent.stop()


# -- retention ---------------------------------------------------------------------------------


def test_retention_keeps_the_newest_snapshots_and_what_they_reference(tmp_path, kek_file):
    objects = LocalObjectStore(tmp_path / "objects")
    with open_store(tmp_path / "db", kek_file) as store, agent_for(store, objects, keep_snapshots=2,
                                                                  log_retention_s=0) as agent:
        for round_ in range(4):
            write_steps(store, 1, 10, start=round_)
            store.flush(DOCUMENTS)
            agent.request_snapshot()
        final = dict(store.items(DOCUMENTS))
        assert agent.wait_shipped(store.last_lsn, 60)
    kept = list_snapshots(objects, TENANT)
    assert len(kept) == 2
    oldest = kept[0].lsn
    assert all(s.last > oldest for s in chain(objects, TENANT).segments), "log before the oldest snapshot goes"
    restore(objects, TENANT, kek_file, tmp_path / "r", Target("latest"))
    assert documents_of(tmp_path / "r", kek_file) == final
    with pytest.raises(BackupError, match="no snapshot"):
        restore(objects, TENANT, kek_file, tmp_path / "old", Target("lsn", oldest - 1))


# -- the real node: RPC, drill, kill -9 -----------------------------------------------------------------

TOPICS = ["harbour", "glacier", "orchard", "lantern", "compass", "meadow", "quarry", "beacon", "saffron"]


def note(i: int) -> bytes:
    return (f"# Note {i}\n\nThe {TOPICS[i % len(TOPICS)]} report number {i} says the "
            f"{TOPICS[(i * 5) % len(TOPICS)]} was inspected on day {i}.\n").encode()


def snapshot_of_api(caller, ids: list[str]) -> dict:
    """What the live node returns: every document and its chunks, and searches."""
    state = {}
    for document_id in ids:
        document = caller.GetDocument(pb.GetRequest(id=document_id))
        chunks = [caller.GetResource(pb.GetRequest(id=r)).text for r in document.resource_ids]
        state[document_id] = (document.title, document.uri, tuple(chunks))
    searches = {topic: [h.document_id for h in caller.Search(pb.SearchRequest(query=f"{topic} report",
                                                                             limit=3)).hits]
                for topic in TOPICS[:4]}
    stats = caller.Stats(pb.StatsRequest())
    return {"documents": state, "searches": searches, "counts": (stats.documents, stats.resources, stats.moments)}


def test_drill_node_restored_to_each_moment_serves_that_moment(reading, pki, tmp_path, objects):
    """Ingest through a real node in steps; restore to each noted moment and to latest; a node
    started on each restored folder answers every record and search as the live one did then."""
    if isinstance(objects, LocalObjectStore):
        backup = {"backup_url": str(objects.root)}
    else:  # credentials and endpoint from a mounted-Secret-style folder
        secret = tmp_path / "backup-secret"
        secret.mkdir()
        options = s3_options(objects.endpoint)
        for name in ("access_key_id", "secret_access_key", "endpoint"):
            (secret / name).write_text(options[name])
        backup = {"backup_url": objects.url, "backup_region": options["region"], "backup_credentials_dir": secret}
    config = replace(node_config(tmp_path, reading, pki), metrics_port=-1, backup_ship_interval_s=0.05, **backup)
    token = config.token_file.read_text()
    marks, ids = [], []
    with BackgroundServer(NodeServer(config)) as node, grpc.insecure_channel(node.address) as channel:
        caller = Caller(channel, token)
        for step in range(3):
            for i in range(3):
                ids.append(caller.Ingest(pb.IngestRequest(content=note(step * 3 + i),
                                                          filename=f"n{step}-{i}.md")).document_id)
            if step == 0:
                made = caller.CreateSnapshot(pb.CreateSnapshotRequest())
                assert made.snapshot_id and made.lsn > 0 and made.uploaded_files > 0 and made.location
            time.sleep(0.01)
            marks.append((time.time_ns(), list(ids), snapshot_of_api(caller, ids)))
            time.sleep(0.01)
        last = caller.Stats(pb.StatsRequest()).last_lsn
        deadline = time.monotonic() + 60
        while caller.Stats(pb.StatsRequest()).shipped_lsn < last and time.monotonic() < deadline:
            time.sleep(0.05)
        assert caller.Stats(pb.StatsRequest()).shipped_lsn >= last
    for number, (moment, known, expected) in enumerate(marks + [(None, ids, marks[-1][2])]):
        into = tmp_path / f"restored-{number}"
        restore(objects, TENANT, config.kek_file, into, Target("latest") if moment is None
                else Target("time", moment))
        restored = replace(config, data_dir=into, backup_url="")
        with BackgroundServer(NodeServer(restored)) as node, grpc.insecure_channel(node.address) as channel:
            caller = Caller(channel, token)
            assert snapshot_of_api(caller, known) == expected, number
            for missing in set(ids) - set(known):
                with pytest.raises(grpc.RpcError) as caught:
                    caller.GetDocument(pb.GetRequest(id=missing))
                assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_snapshot_rpc_without_backups_is_failed_precondition(reading, pki, tmp_path):
    config = replace(node_config(tmp_path, reading, pki), metrics_port=-1)
    with BackgroundServer(NodeServer(config)) as node, grpc.insecure_channel(node.address) as channel:
        caller = Caller(channel, config.token_file.read_text())
        with pytest.raises(grpc.RpcError) as caught:
            caller.CreateSnapshot(pb.CreateSnapshotRequest())
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "PERCOLATE_NODE_BACKUP_URL" in caught.value.details()


# -- kill -9 during uploads and during restore ------------------------------------------------------


def _whole(objects, tenant: str = TENANT) -> None:
    """Every snapshot's objects match their manifest and every segment its checksum."""
    from percolate_node.durability.snapshots import verify_snapshot

    for info in list_snapshots(objects, tenant):
        assert verify_snapshot(objects, info) == [], info.id
    for name in chain(objects, tenant).segments:
        segments.unpack(objects.get(name.key), name.key, tenant)


def test_kill_9_during_uploads_loses_no_acknowledged_write(reading, pki, tmp_path):
    from tests.test_node_faults import NodeProcess

    objects = LocalObjectStore(tmp_path / "objects")
    config = replace(node_config(tmp_path, reading, pki), backup_url=str(objects.root),
                     backup_ship_interval_s=0.02, backup_snapshot_interval_s=0.5)
    token = config.token_file.read_text()
    acknowledged: list[str] = []
    rng = random.Random(20261127)
    counter = 0
    for _ in range(4):
        node = NodeProcess(config)
        with grpc.insecure_channel(node.address) as channel:
            caller = Caller(channel, token)
            stop = False

            def load() -> None:
                nonlocal counter
                while not stop:
                    try:
                        reply = caller.Ingest(pb.IngestRequest(content=note(counter) + b"%d" % counter,
                                                               filename=f"k{counter}.md"), timeout=30)
                    except grpc.RpcError:
                        return  # killed under us: not acknowledged
                    acknowledged.append(reply.document_id)
                    counter += 1

            import threading

            worker = threading.Thread(target=load)
            worker.start()
            time.sleep(rng.uniform(0.5, 2.0))  # snapshots (every 0.5 s) and segments in flight
            node.process.send_signal(signal.SIGKILL)
            node.process.wait()
            stop = True
            worker.join()
    assert len(acknowledged) >= 4
    node = NodeProcess(config)  # the last start ships what the kills left unshipped
    try:
        with grpc.insecure_channel(node.address) as channel:
            caller = Caller(channel, token)
            last = caller.Stats(pb.StatsRequest()).last_lsn
            deadline = time.monotonic() + 120
            while caller.Stats(pb.StatsRequest()).shipped_lsn < last and time.monotonic() < deadline:
                time.sleep(0.05)
            assert caller.Stats(pb.StatsRequest()).shipped_lsn >= last
    finally:
        node.process.send_signal(signal.SIGTERM)
        node.process.wait(timeout=60)
    _whole(objects)
    into = tmp_path / "restored"
    restore(objects, TENANT, config.kek_file, into, Target("latest"))
    restored = replace(config, data_dir=into, backup_url="", metrics_port=-1)
    with BackgroundServer(NodeServer(restored)) as node, grpc.insecure_channel(node.address) as channel:
        caller = Caller(channel, token)
        for document_id in acknowledged:
            assert caller.GetDocument(pb.GetRequest(id=document_id)).id == document_id


def test_kill_9_during_restore_leaves_no_half_restored_folder(tmp_path, kek_file):
    objects = LocalObjectStore(tmp_path / "objects")
    with open_store(tmp_path / "db", kek_file) as store, agent_for(store, objects) as agent:
        for start in range(0, 12, 3):
            write_steps(store, 3, 40, start=start)
            store.flush(DOCUMENTS)
            agent.request_snapshot() if start == 0 else None
        assert agent.wait_shipped(store.last_lsn, 60)
        final = dict(store.items(DOCUMENTS))
    env = {**os.environ, "PERCOLATE_NODE_TENANT_ID": TENANT, "PERCOLATE_NODE_KEK_FILE": str(kek_file),
           "PERCOLATE_NODE_BACKUP_URL": str(objects.root), "PERCOLATE_NODE_DATA_DIR": str(tmp_path / "unused")}
    into = tmp_path / "restored"
    rng = random.Random(7)
    interrupted = 0
    for _ in range(5):
        process = subprocess.Popen([sys.executable, "-m", "percolate_node.cli", "restore", "--to", "latest",
                                    "--into", str(into)], env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
        # kill once it has started restoring (its first line), at a random moment after
        assert "restoring tenant" in process.stdout.readline()
        time.sleep(rng.uniform(0.0, 0.3))
        process.send_signal(signal.SIGKILL)
        process.wait()
        if into.exists():  # it finished before the kill: whole, or it would not be there
            assert documents_of(into, kek_file) == final
            shutil.rmtree(into)
        else:
            interrupted += 1
    done = subprocess.run([sys.executable, "-m", "percolate_node.cli", "restore", "--to", "latest", "--into",
                           str(into)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert documents_of(into, kek_file) == final
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".restored.restore-")], "stale partials removed"
    assert interrupted >= 1, "at least one kill landed mid-restore"


def test_backups_cli_lists_and_verifies(tmp_path, kek_file):
    objects = LocalObjectStore(tmp_path / "objects")
    with open_store(tmp_path / "db", kek_file) as store, agent_for(store, objects) as agent:
        write_steps(store, 2, 5)
        agent.request_snapshot()
        write_steps(store, 2, 5, start=2)
        assert agent.wait_shipped(store.last_lsn, 60)
    env = {**os.environ, "PERCOLATE_NODE_TENANT_ID": TENANT, "PERCOLATE_NODE_KEK_FILE": str(kek_file),
           "PERCOLATE_NODE_BACKUP_URL": str(objects.root), "PERCOLATE_NODE_DATA_DIR": str(tmp_path / "unused")}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "percolate_node.cli", *args], env=env, capture_output=True,
                              text=True, timeout=300)

    listed = cli("backups", "list")
    assert listed.returncode == 0 and listed.stdout.count("snapshot 0") == 2, listed.stdout + listed.stderr
    assert cli("backups", "verify").returncode == 0
    victim = next(k for k in objects.list("tenants/") if "/log/" in k)
    objects.delete(victim)
    objects.put_new(victim, b"garbage")
    broken = cli("backups", "verify")
    assert broken.returncode == 1 and victim in broken.stdout, broken.stdout


def test_without_backups_the_local_log_stays_bounded(tmp_path, kek_file):
    from percolate_node.durability.agent import trim_unshipped_log

    with open_store(tmp_path / "db", kek_file) as store:
        for i in range(60):
            store.write([Put(DOCUMENTS, b"k%d" % i, b"v")])
        # a trim goes only as far as the values are flushed, and asks for the rest: later trims take it
        trimmed, deadline = trim_unshipped_log(store, keep=10), time.monotonic() + 120
        while len(store.log_records(0)) > 11 and time.monotonic() < deadline:
            time.sleep(0.02)
            trimmed += trim_unshipped_log(store, keep=10)
        assert trimmed >= 49
        kept = store.log_records(0)
        assert len(kept) <= 11 and kept[-1][0] == store.last_lsn
        assert trim_unshipped_log(store, keep=10) == 0


@pytest.mark.parametrize("name, obj", [
    ("../../escaped", None),
    ("/etc/passwd", None),
    ("CURRENT", "tenants/tenant-b/snapshots/x/CURRENT"),
    ("CURRENT", "tenants/tenant-a/snapshots/../../tenant-b/snapshots/x/CURRENT"),
])
def test_a_manifest_pointing_outside_the_tenant_is_refused(tmp_path, kek_file, backed_up, name, obj):
    """Whoever can write to the bucket cannot make a restore write outside its folder or read
    another tenant's objects through a manifest."""
    import json

    objects, final = backed_up
    info = list_snapshots(objects, TENANT)[-1]
    key = next(k for k in objects.list("tenants/tenant-a/snapshots/") if k.endswith(info.id + "/manifest.json"))
    manifest = json.loads(objects.get(key))
    manifest["files"][0]["name"] = name
    manifest["files"][0]["object"] = obj or manifest["files"][0]["object"]
    objects.delete(key)
    objects.put_new(key, json.dumps(manifest).encode())
    problems: list[str] = []
    assert info.id not in [s.id for s in list_snapshots(objects, TENANT, problems)]
    assert len(problems) == 1 and key in problems[0]  # named, never followed
    # the restore falls back on the older snapshot and the log: the same state, nothing written outside
    restore(objects, TENANT, kek_file, tmp_path / "r", Target("latest"))
    assert documents_of(tmp_path / "r", kek_file) == final
    assert not (tmp_path.parent / "escaped").exists() and not (tmp_path / "escaped").exists()


# -- regressions from the attack review --------------------------------------------------------------


def test_a_forked_timeline_snapshots_restore_and_follow_it_after_retention(tmp_path, kek_file):
    """Restore to an earlier moment, write on the new timeline, snapshot it: its SSTs share
    names and sizes with the old timeline's but not content, and a restore of `latest` follows
    the new timeline even after retention removed the log segments that started it."""
    objects = LocalObjectStore(tmp_path / "objects")
    from percolate_node.durability.epoch import read_epoch

    with open_store(tmp_path / "db", kek_file) as store, agent_for(store, objects) as agent:
        marks = write_steps(store, 4, 10)
        store.flush(DOCUMENTS)
        agent.request_snapshot()
        write_steps(store, 2, 10, start=4)
        assert agent.wait_shipped(store.last_lsn, 60)
    fork = tmp_path / "fork"
    restore(objects, TENANT, kek_file, fork, Target("time", marks[1][0]))
    with open_store(fork, kek_file, epoch=read_epoch(fork)) as forked, \
            agent_for(forked, objects, log_retention_s=0, keep_snapshots=1) as agent:
        forked.write([Put(DOCUMENTS, b"new-timeline", b"only here")])
        forked.flush(DOCUMENTS)
        agent.request_snapshot()  # retention with a zero window: the fork's early segments go
        forked.write([Put(DOCUMENTS, b"after-the-fork-snapshot", b"also here")])
        assert agent.wait_shipped(forked.last_lsn, 60)
        expected = dict(forked.items(DOCUMENTS))
    assert objects.list(f"tenants/{TENANT}/timelines/")  # the fence outlives the segments
    restore(objects, TENANT, kek_file, tmp_path / "latest", Target("latest"))
    assert documents_of(tmp_path / "latest", kek_file) == expected


def test_log_retention_removes_segments_before_the_window(tmp_path, kek_file):
    objects = LocalObjectStore(tmp_path / "objects")
    with open_store(tmp_path / "db", kek_file) as store, \
            agent_for(store, objects, log_retention_s=0, keep_snapshots=1) as agent:
        for start in range(3):
            write_steps(store, 1, 10, start=start)
            assert agent.wait_shipped(store.last_lsn, 60)
        first_segments = {s.key for s in chain(objects, TENANT).segments}
        agent.request_snapshot()
        write_steps(store, 1, 5, start=9)
        assert agent.wait_shipped(store.last_lsn, 60)
        final = dict(store.items(DOCUMENTS))
    kept = list_snapshots(objects, TENANT)
    assert len(kept) == 1
    assert not first_segments & {s.key for s in chain(objects, TENANT).segments}, "old log removed"
    restore(objects, TENANT, kek_file, tmp_path / "r", Target("latest"))
    assert documents_of(tmp_path / "r", kek_file) == final


def test_a_redundancy_copy_that_is_away_never_holds_up_the_home_region(tmp_path, kek_file):
    from prometheus_client import CollectorRegistry

    home = LocalObjectStore(tmp_path / "home")
    (tmp_path / "away").write_text("not a folder")  # every write to the copy fails
    away = LocalObjectStore(tmp_path / "away" / "store")
    registry = CollectorRegistry()
    with open_store(tmp_path / "db", kek_file) as store:
        agent = BackupAgent(store, home, fast_policy(), BackupMetrics(registry), replicas=(away,)).start()
        try:
            assert agent.wait_ready(60)
            write_steps(store, 2, 10)
            agent.request_snapshot()
            assert agent.wait_shipped(store.last_lsn, 60), agent.last_error
            assert list_snapshots(home, TENANT), "the home region got its snapshots"
            assert registry.get_sample_value("percolate_backup_replica_pending_objects", {"tenant_id": TENANT}) > 0
            (tmp_path / "away").unlink()  # the copy region is back: it catches up
            store.write([Put(DOCUMENTS, b"wake", b"up")])
            deadline = time.monotonic() + 60
            while registry.get_sample_value("percolate_backup_replica_pending_objects",
                                            {"tenant_id": TENANT}) and time.monotonic() < deadline:
                store.write([Put(DOCUMENTS, b"wake", b"up")])
                time.sleep(0.1)
            assert agent.wait_shipped(store.last_lsn, 60)
        finally:
            agent.stop()
    assert set(home.list("tenants/")) <= set(away.list("tenants/"))
    restore(away, TENANT, kek_file, tmp_path / "from-copy", Target("latest"))
    assert len(documents_of(tmp_path / "from-copy", kek_file)) >= 19


def test_restore_across_a_kek_rotation_with_the_previous_kek(tmp_path, kek_file):
    objects = LocalObjectStore(tmp_path / "objects")
    new_kek = tmp_path / "kek-2"
    generate_kek(new_kek)
    with open_store(tmp_path / "db", kek_file) as store, agent_for(store, objects) as agent:
        store.write([Put(DOCUMENTS, b"before", b"1")])
        agent.request_snapshot()
        store.rotate_kek(new_kek)
        store.write([Put(DOCUMENTS, b"after", b"2")])
        assert agent.wait_shipped(store.last_lsn, 60)
    with pytest.raises(WrongKeyError):
        restore(objects, TENANT, new_kek, tmp_path / "only-new", Target("latest"))
    restore(objects, TENANT, new_kek, tmp_path / "r", Target("latest"), previous_keks=[kek_file])
    with EncryptedStore.open(tmp_path / "r", TENANT, new_kek, create=False) as restored:  # wrapped by the new KEK
        assert dict(restored.items(DOCUMENTS)) == {b"before": b"1", b"after": b"2"}


def test_a_fenced_agent_says_so_in_its_metrics(tmp_path, kek_file):
    from prometheus_client import CollectorRegistry

    objects = LocalObjectStore(tmp_path / "objects")
    with open_store(tmp_path / "db", kek_file) as store, agent_for(store, objects) as agent:
        write_steps(store, 1, 5)
        assert agent.wait_shipped(store.last_lsn, 60)
    restore(objects, TENANT, kek_file, tmp_path / "fork", Target("latest"))
    from percolate_node.durability.epoch import read_epoch

    with open_store(tmp_path / "fork", kek_file, epoch=read_epoch(tmp_path / "fork")) as forked, \
            agent_for(forked, objects) as agent:
        forked.write([Put(DOCUMENTS, b"x", b"y")])
        assert agent.wait_shipped(forked.last_lsn, 60)
    registry = CollectorRegistry()
    with open_store(tmp_path / "db", kek_file, epoch=1) as old:
        agent = BackupAgent(old, objects, fast_policy(), BackupMetrics(registry)).start()
        try:
            assert agent.wait_ready(60) and agent.fenced
            old.write([Put(DOCUMENTS, b"unbacked", b"write")])
            deadline = time.monotonic() + 30
            while not registry.get_sample_value("percolate_backup_log_lag_seconds", {"tenant_id": TENANT}) \
                    and time.monotonic() < deadline:
                time.sleep(0.05)
            assert registry.get_sample_value("percolate_backup_fenced", {"tenant_id": TENANT}) == 1
            assert registry.get_sample_value("percolate_backup_failures_total",
                                             {"tenant_id": TENANT, "kind": "fenced"}) >= 1
            assert registry.get_sample_value("percolate_backup_log_lag_seconds", {"tenant_id": TENANT}) > 0
        finally:
            agent.stop()


def test_restore_into_a_symlink_or_a_mount_point(tmp_path, backed_up, kek_file, monkeypatch):
    objects, final = backed_up
    (tmp_path / "target").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "target")
    restore(objects, TENANT, kek_file, tmp_path / "link", Target("latest"))
    assert documents_of(tmp_path / "target", kek_file) == final
    (tmp_path / "volume").mkdir()
    monkeypatch.setattr(os.path, "ismount", lambda path: Path(path) == (tmp_path / "volume").resolve())
    with pytest.raises(BackupError, match="mount point.*inside it"):
        restore(objects, TENANT, kek_file, tmp_path / "volume", Target("latest"))


def test_snapshot_scratch_stays_on_the_data_volume(tmp_path):
    from percolate_node.durability.wiring import snapshot_scratch

    (tmp_path / "data").mkdir()
    assert snapshot_scratch(tmp_path / "data") == (tmp_path / ".data.snapshots").resolve()
