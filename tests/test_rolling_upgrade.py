"""Rolling-upgrade drill with real processes: `helm upgrade` must not drop a request.

What Kubernetes does to the reading Deployment (maxSurge 1, maxUnavailable 0) is played
out on loopback: two frontend processes (the old version) serve steady load behind one
real Triton; a new one starts and passes the chart's own readiness probe; an old one gets
SIGTERM and drains; and so on until every old one is replaced. The frontends run with the
settings of the rendered reading chart (its ConfigMap, drain grace included).

The client is what the tenant node chart configures: one gRPC channel with the node
chart's service config (round_robin, client-side health checking, gRPC's retry policy on
UNAVAILABLE). Python's grpc has no pluggable name resolver, so when the set of ready
addresses changes (what re-resolving the headless Service returns) the client opens a
channel on the new set and closes the old one once its calls are done. A draining
frontend stays in the client's set until it has exited, as it would for a real gRPC
client, which re-resolves only when a connection closes: health checking steers new
calls away from it, and the retry policy covers calls that race its NOT_SERVING.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from percolate.reading.v1 import reading_pb2 as pb
from percolate.reading.v1 import reading_pb2_grpc
from percolate_certs.tls import channel_credentials
from tests.test_helm import container, effective_env, node_values, pod_spec, render

ROOT = Path(__file__).resolve().parents[1]
WORKERS = 4
MAX_REQUESTS = 50_000
MAX_LOAD_S = 60.0
CALL_TIMEOUT_S = 20.0
# overridden per process: where it listens and what it talks to on this machine
LOCAL_SETTINGS = ("HOST", "PORT", "METRICS_PORT", "HEALTH_PORT", "TRITON_URL", "TRITON_METRICS_URL",
                  "TLS_CERT", "TLS_KEY", "TLS_CLIENT_CA")


@dataclass
class Chart:
    """What the drill takes from the rendered charts."""
    frontend_env: dict[str, str]
    drain_grace_s: float
    pre_stop_s: int
    termination_grace_s: int
    probe: dict
    service_config: dict

    @classmethod
    def render(cls) -> "Chart":
        reading = render("reading")
        frontend = container(reading, "frontend")
        env = effective_env(reading, "frontend")
        node_env = effective_env(render("node", node_values("tenant-a")), "node")
        return cls(frontend_env=env, drain_grace_s=float(env["PERCOLATE_READING_DRAIN_GRACE_S"]),
                   pre_stop_s=frontend["lifecycle"]["preStop"]["sleep"]["seconds"],
                   termination_grace_s=pod_spec(reading)["terminationGracePeriodSeconds"],
                   probe=frontend["readinessProbe"]["grpc"],
                   service_config=json.loads(node_env["PERCOLATE_READING_SERVICE_CONFIG"]))


class Frontend:
    """One frontend process, configured as the chart configures the pod's container."""

    def __init__(self, name: str, chart: Chart, triton, pki, logs: Path) -> None:
        self.name = name
        from tests.chart_harness import free_port

        self.health_port = free_port()  # the chart's health port, here one free on loopback
        env = {**os.environ, **{k: v for k, v in chart.frontend_env.items()
                                if k.removeprefix("PERCOLATE_READING_") not in LOCAL_SETTINGS},
               "PERCOLATE_READING_HEALTH_PORT": str(self.health_port)}
        command = [sys.executable, "-m", "reading_frontend.cli", "serve", "--host", "127.0.0.1",
                   "--port", "0", "--metrics-port", "0", "--triton-url", triton.grpc_url,
                   "--tls-cert", str(pki.server.cert), "--tls-key", str(pki.server.key),
                   "--tls-client-ca", str(pki.ca.cert)]
        self.log = logs / f"{name}.log"
        with self.log.open("w") as log:
            self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True, env=env, cwd=ROOT)
        line = self.process.stdout.readline()
        if not line.startswith("reading service on "):
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"{name} did not start: {self.log.read_text()}")
        self.address = line.split()[3]
        self.metrics_url = line.split("metrics ")[1].split(",")[0]
        self.stopped_at: float | None = None
        self.statuses: dict[str, float] = {}

    def probe(self, chart: Chart, pki) -> bool:
        """The chart's readiness probe as the kubelet runs it: plaintext gRPC health on
        the health-only port (the chart's port number -> this process's)."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        assert chart.probe["port"] == int(chart.frontend_env["PERCOLATE_READING_HEALTH_PORT"]), chart.probe
        with grpc.insecure_channel(f"127.0.0.1:{self.health_port}") as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=chart.probe.get("service", "")), timeout=10)
            except grpc.RpcError:
                return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    def wait_ready(self, chart: Chart, pki, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.probe(chart, pki):
            assert time.monotonic() < deadline, f"{self.name} never became ready: {self.log.read_text()}"
            time.sleep(0.2)

    def scrape(self) -> None:
        """Requests this process has answered, by status (kept from the last scrape that worked)."""
        try:
            text = urllib.request.urlopen(self.metrics_url, timeout=2).read().decode()
        except OSError:
            return
        statuses: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("percolate_reading_requests_total{"):
                status = line.split('status="')[1].split('"')[0]
                statuses[status] = statuses.get(status, 0) + float(line.rsplit(" ", 1)[1])
        self.statuses = statuses

    def terminate(self) -> None:
        self.stopped_at = time.monotonic()
        self.process.send_signal(signal.SIGTERM)

    def wait_exit(self, timeout_s: float) -> float:
        """Seconds from SIGTERM to exit; metrics are scraped while it drains."""
        while self.process.poll() is None:
            assert time.monotonic() - self.stopped_at < timeout_s, f"{self.name} still draining after {timeout_s} s"
            self.scrape()
            time.sleep(0.05)
        assert self.process.returncode == 0, self.log.read_text()
        return time.monotonic() - self.stopped_at


def wait_until(predicate, what: str, timeout_s: float = MAX_LOAD_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s} s"
        time.sleep(0.05)


@dataclass
class _Channel:
    channel: grpc.Channel
    stub: reading_pb2_grpc.ReadingServiceStub
    calls: int = 0
    retired: bool = False


class Client:
    """The tenant node's reading channel: round_robin over the ready addresses with the
    node chart's service config; a new address set gets a new channel."""

    def __init__(self, pki, service_config: dict) -> None:
        creds = pki.tenants["tenant-a"]
        self._credentials = channel_credentials(creds.ca, creds.cert, creds.key)
        self._options = [("grpc.service_config", json.dumps(service_config)), ("grpc.enable_retries", 1),
                         ("grpc.ssl_target_name_override", "localhost")]
        self._lock = threading.Lock()
        self._current: _Channel | None = None
        self.in_flight = 0

    def resolve(self, addresses: list[str]) -> None:
        channel = grpc.secure_channel("ipv4:" + ",".join(addresses), self._credentials, options=self._options)
        with self._lock:
            old, self._current = self._current, _Channel(channel, reading_pb2_grpc.ReadingServiceStub(channel))
            if old is not None:
                old.retired = True
                if old.calls:
                    old = None  # the last call on it closes it
        if old is not None:
            old.channel.close()

    def embed(self, texts: list[str]) -> pb.EmbedResponse:
        with self._lock:
            entry = self._current
            entry.calls += 1
            self.in_flight += 1
        try:
            return entry.stub.Embed(pb.EmbedRequest(texts=texts), timeout=CALL_TIMEOUT_S)
        finally:
            with self._lock:
                entry.calls -= 1
                self.in_flight -= 1
                close = entry.retired and not entry.calls
            if close:
                entry.channel.close()

    def close(self) -> None:
        with self._lock:
            entry, self._current = self._current, None
            if entry is None:
                return
            entry.retired = True
            close = not entry.calls
        if close:
            entry.channel.close()


@dataclass
class Load:
    """Steady load from a few threads, bounded in count and time; every failure kept."""
    client: Client
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self, worker: int) -> None:
        started, i = time.monotonic(), 0
        while not self.stop.is_set() and self.ok + len(self.failures) < MAX_REQUESTS \
                and time.monotonic() - started < MAX_LOAD_S:
            i += 1
            # mostly one short text; every 8th call a batch, so drains have work to finish
            texts = [f"worker {worker} request {i} sentence {j}" for j in range(64 if i % 8 == 0 else 1)]
            try:
                reply = self.client.embed(texts)
                assert len(reply.embeddings) == len(texts)
                with self._lock:
                    self.ok += 1
            except (grpc.RpcError, AssertionError) as err:
                detail = f"{err.code().name}: {err.details()}" if isinstance(err, grpc.RpcError) else repr(err)
                with self._lock:
                    self.failures.append(detail)
            time.sleep(0.005)


def test_rolling_upgrade_drops_no_request(triton, pki, tmp_path):
    chart = Chart.render()
    assert chart.drain_grace_s + chart.pre_stop_s <= chart.termination_grace_s
    client = Client(pki, chart.service_config)
    load = Load(client)
    workers: list[threading.Thread] = []
    started = time.monotonic()
    processes: list[Frontend] = []
    report: dict = {"drains": []}

    def answered(frontend: Frontend) -> int:
        frontend.scrape()
        return int(frontend.statuses.get("OK", 0))

    def more_load(count: int = 20) -> None:
        """Wait until ``count`` more calls have succeeded (the load is flowing)."""
        target = load.ok + count
        wait_until(lambda: load.ok >= target or load.failures or load_ended(), f"{count} more answered calls")

    def load_ended() -> bool:  # bounded load (MAX_LOAD_S): the final assertions judge it
        return bool(workers) and not any(worker.is_alive() for worker in workers)

    def start(name: str) -> Frontend:
        frontend = Frontend(name, chart, triton, pki, tmp_path)
        processes.append(frontend)
        return frontend

    try:
        serving = [start("v1-a"), start("v1-b")]
        for frontend in serving:
            frontend.wait_ready(chart, pki)
        client.resolve([f.address for f in serving])
        workers += [threading.Thread(target=load.run, args=(n,), daemon=True) for n in range(WORKERS)]
        for worker in workers:
            worker.start()
        more_load()

        for n, old in enumerate(list(serving)):
            new = start(f"v2-{'ab'[n]}")
            new.wait_ready(chart, pki)             # maxSurge 1: the new pod is ready first
            serving.append(new)
            client.resolve([f.address for f in serving])
            wait_until(lambda: answered(new) > 0 or load.failures or load_ended(), f"{new.name} taking load")
            old.scrape()
            in_flight = client.in_flight
            old.terminate()                        # the old pod gets SIGTERM and drains
            drain_s = old.wait_exit(timeout_s=chart.termination_grace_s)
            serving.remove(old)
            client.resolve([f.address for f in serving])  # its connection closed: re-resolved
            report["drains"].append({"process": old.name, "seconds": round(drain_s, 3),
                                     "client_calls_in_flight_at_sigterm": in_flight,
                                     "answered": {k: int(v) for k, v in old.statuses.items()}})
            more_load()

        more_load(max(20, 100 - load.ok))  # enough calls to prove something, however slow the machine
        load.stop.set()
        for worker in workers:
            worker.join(timeout=CALL_TIMEOUT_S + 5)
        for frontend in serving:
            frontend.scrape()
        report["new_versions_answered"] = {f.name: {k: int(v) for k, v in f.statuses.items()} for f in serving}
    finally:
        load.stop.set()
        for worker in workers:
            worker.join(timeout=CALL_TIMEOUT_S + 5)
        client.close()
        for frontend in processes:
            if frontend.process.poll() is None:
                frontend.process.send_signal(signal.SIGTERM)
        for frontend in processes:
            try:
                frontend.process.wait(timeout=chart.termination_grace_s)
            except subprocess.TimeoutExpired:
                frontend.process.kill()

    report.update(ok=load.ok, failed=len(load.failures), seconds=round(time.monotonic() - started, 1),
                  drain_grace_s=chart.drain_grace_s)
    print("rolling-upgrade drill:", json.dumps(report, indent=1))
    assert not load.failures, f"{len(load.failures)} failed requests, e.g. {load.failures[:3]}"
    assert load.ok >= 100, "the load was not steady enough to prove anything"
    for drain in report["drains"]:
        assert drain["seconds"] <= chart.drain_grace_s, drain
        assert drain["answered"].get("OK", 0) > 0, f"{drain['process']} was replaced without having served"
    for name, statuses in report["new_versions_answered"].items():
        assert statuses.get("OK", 0) > 0, f"{name} took no load"
