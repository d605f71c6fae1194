"""The reading service process: one grpc.aio server with ReadingService, the KServe v2
facade, health and reflection, plus a Prometheus endpoint.

``ReadingServer`` is an async context manager that binds port 0 by default, so tests
start real servers. Health is NOT_SERVING until Triton is ready, follows Triton while
running, and turns NOT_SERVING when draining. ``stop`` drains: new requests are
refused, in-flight and queued ones get ``drain_grace_s`` to finish.
"""
from __future__ import annotations

import asyncio
import logging
import time

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from tritonclient.grpc import service_pb2, service_pb2_grpc

from percolate.reading.v1 import reading_pb2, reading_pb2_grpc
from percolate_certs.ca import CertPaths
from percolate_certs.tls import server_credentials
from percolate_common.decoding import RejectUndecodableRequests
from percolate_common.health import HealthServicer
from percolate_models.paths import ProjectPaths

from .admission import FairAdmission
from .config import FrontendConfig
from .gate import RequestGate
from .kserve import KServeFacade
from .metrics import ReadingMetrics
from .pipelines import ReadingPipelines
from .servicer import ReadingServicer
from .triton_client import AsyncTriton

log = logging.getLogger("percolate.reading")
READING_SERVICE = reading_pb2.DESCRIPTOR.services_by_name["ReadingService"].full_name
KSERVE_SERVICE = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
WATCH_INTERVAL_S = 0.5
MESSAGE_SLACK = 1 << 20
"""Room above max_message_bytes for the envelope around the payload."""


class ReadingServer:
    def __init__(self, config: FrontendConfig, paths: ProjectPaths | None = None) -> None:
        self.config = config
        self.paths = paths or ProjectPaths.from_env()
        self.port = 0
        self.metrics_port = 0
        self.health_port = 0
        self.draining = False
        self._server: grpc.aio.Server | None = None
        self._health_server: grpc.aio.Server | None = None
        self._watch: asyncio.Task | None = None

    @property
    def address(self) -> str:
        return f"{self.config.host}:{self.port}"

    async def __aenter__(self) -> "ReadingServer":
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    async def start(self) -> None:
        config = self.config
        self.metrics = ReadingMetrics()
        self.admission = FairAdmission(config.max_in_flight, config.max_queue_depth,
                                       config.max_queue_per_tenant, self.metrics.queue_depth.set,
                                       max_bytes=config.max_request_bytes,
                                       max_bytes_per_tenant=config.max_request_bytes_per_tenant)
        self.triton = AsyncTriton(config.triton_url, config.triton_shared_memory_mb << 20)
        self.pipelines = ReadingPipelines(config, self.triton, self.paths)
        self.metrics.watch_parse_pool(self.pipelines.parse_pool)
        self.metrics.watch_triton_shared_memory(self.triton.shared_memory)
        gate = RequestGate(self.admission, self.metrics, config.insecure)
        limit = config.max_message_bytes + MESSAGE_SLACK
        self._server = grpc.aio.server(interceptors=[RejectUndecodableRequests()], options=[
            ("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit),
            # bounded connection life: rotated or revoked client certificates take effect,
            # and clients spread over new replicas after a rolling upgrade
            ("grpc.max_connection_age_ms", int(config.max_connection_age_s * 1000)),
            ("grpc.max_connection_age_grace_ms", int(config.drain_grace_s * 1000))])
        reading_pb2_grpc.add_ReadingServiceServicer_to_server(
            ReadingServicer(self.pipelines, gate, config), self._server)
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            KServeFacade(self.pipelines, gate, lambda: self.draining), self._server)
        self.health = HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        reflection.enable_server_reflection(
            (READING_SERVICE, KSERVE_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), self._server)
        await self._set_health(False)
        self.port = self._bind(f"{config.host}:{config.port}")
        await self._server.start()
        if config.health_port >= 0:  # health only, plaintext: the kubelet's gRPC probes
            self._health_server = grpc.aio.server()
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self._health_server)
            self.health_port = self._health_server.add_insecure_port(f"{config.host}:{config.health_port}")
            await self._health_server.start()
        if config.metrics_port >= 0:
            self.metrics_port = self.metrics.serve(config.host, config.metrics_port)
        self._watch = asyncio.create_task(self._watch_triton())
        log.info("reading service on %s (%s), metrics on %s, Triton at %s", self.address,
                 "PLAINTEXT" if config.insecure else "mutual TLS", self.metrics_port, config.triton_url)
        log.info("Triton tensors: %s", self.triton.shared_memory.describe())

    def _bind(self, address: str) -> int:
        config = self.config
        if config.insecure:
            log.warning("*** INSECURE MODE: plaintext gRPC, no client certificates, tenant taken "
                        "from the request. For local experiments only. ***")
            return self._server.add_insecure_port(address)
        missing = [n for n in ("tls_cert", "tls_key", "tls_client_ca") if getattr(config, n) is None]
        if missing:
            raise ValueError(f"mutual TLS needs {', '.join(missing)} (PERCOLATE_READING_TLS_*); "
                             "make them with `percolate-certs dev`, or pass --insecure for a local experiment")
        paths = CertPaths(cert=config.tls_cert, key=config.tls_key, ca=config.tls_client_ca)
        return self._server.add_secure_port(address, server_credentials(paths, require_client_auth=True))

    async def _set_health(self, serving: bool) -> None:
        status = (health_pb2.HealthCheckResponse.SERVING if serving
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        for service in ("", READING_SERVICE, KSERVE_SERVICE):
            await self.health.set(service, status)

    async def _watch_triton(self) -> None:
        """Keep health in step with Triton's readiness (and read GPU use, if any)."""
        serving = None
        ticks = 0
        loop = asyncio.get_running_loop()
        while not self.draining:
            ready = await self.triton.ready()
            if ready != serving and not self.draining:
                serving = ready
                await self._set_health(ready)
                log.info("Triton %s: health %s", "ready" if ready else "not ready",
                         "SERVING" if ready else "NOT_SERVING")
            if self.config.triton_metrics_url and ticks % 10 == 0:
                await loop.run_in_executor(None, self.metrics.scrape_triton_gpu,
                                           self.config.triton_metrics_url)
            ticks += 1
            await asyncio.sleep(WATCH_INTERVAL_S)

    async def stop(self, grace_s: float | None = None) -> None:
        """Drain: report NOT_SERVING and refuse new work at once, let admitted and queued
        work finish within the grace period, wait until ``drain_quiet_s`` has passed with
        no work running and no request refused, then close the port.

        Health keeps answering (NOT_SERVING) while the work finishes, so load balancers
        and Kubernetes see the pod leave before its connections close.
        """
        if self._server is None:
            return
        self.draining = True
        self.admission.drain()
        await self.health.enter_graceful_shutdown()
        if self._watch is not None:
            self._watch.cancel()
        grace = self.config.drain_grace_s if grace_s is None else grace_s
        started = time.monotonic()
        deadline = started + grace
        quiet = min(self.config.drain_quiet_s, grace)
        # Closing the port while clients still send (they have not seen NOT_SERVING yet)
        # turns their calls into CANCELLED, which they do not retry: first wait for the
        # work to finish, then for ``quiet`` seconds with neither work nor refusals
        # (retryable UNAVAILABLE). The quiet period starts when the work has finished too:
        # a client that last called while the work ran may be about to call again.
        idle_since: float | None = started
        while (now := time.monotonic()) < deadline:
            if self.admission.in_flight or self.admission.depth:
                idle_since = None
            elif idle_since is None:
                idle_since = now
            elif now - max(idle_since, self.admission.last_refused_at) >= quiet:
                break
            await asyncio.sleep(0.05)
        await self._server.stop(max(0.0, deadline - time.monotonic()))
        self._server = None
        if self._health_server is not None:  # answered NOT_SERVING until the port closed
            await self._health_server.stop(0)
            self._health_server = None
        await self.triton.close()
        self.pipelines.close()
        self.metrics.stop()
        log.info("reading service stopped")
