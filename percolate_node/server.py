"""The tenant node process: NodeService, health and reflection on one grpc.aio server,
plus a Prometheus endpoint.

``NodeServer`` opens the encrypted store (a wrong key stops it before anything is
written), rebuilds the in-memory search indexes from the store, and then serves. It
binds port 0 by default so tests run real servers.
"""
from __future__ import annotations

import asyncio
import logging

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from percolate.node.v1 import node_pb2, node_pb2_grpc
from percolate_certs.ca import CertPaths
from percolate_certs.tls import server_credentials
from percolate_common.decoding import RejectUndecodableRequests
from percolate_common.health import HealthServicer

from .auth import NodeAuthenticator
from .config import MAX_REQUEST_BYTES, NodeConfig
from .durability.agent import trim_unshipped_log
from .durability.wiring import backup_agent
from .memory import NodeMemory
from .metrics import NodeMetrics
from .reading_client import ReadingClient
from .servicer import NodeServicer

log = logging.getLogger("percolate.node")
NODE_SERVICE = node_pb2.DESCRIPTOR.services_by_name["NodeService"].full_name
# Health detail: NOT_SERVING while the store is known to hold damaged records (the node
# still serves what is intact, so "" and NodeService stay SERVING for the probes).
INTEGRITY_SERVICE = "percolate.node.v1.Integrity"
# Health detail: SERVING while the process is up and started, whatever its replica role (a
# standby is NOT_SERVING on "" so the Service skips it, yet alive: the chart's liveness asks this).
LIVENESS_SERVICE = "percolate.node.v1.Liveness"
METRICS_REFRESH_S = 5.0


class NodeServer:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.port = 0
        self.metrics_port = 0
        self._server: grpc.aio.Server | None = None
        self._health_server: grpc.aio.Server | None = None
        self.health_port = 0
        self._refresh: asyncio.Task | None = None
        self._graph_saver: asyncio.Task | None = None
        self._stopping = asyncio.Event()

    @property
    def address(self) -> str:
        return f"{self.config.host}:{self.port}"

    async def start(self) -> None:
        config = self.config
        self.metrics = NodeMetrics(config.tenant_id)
        self.reading = ReadingClient(config)
        self.memory = NodeMemory.open(config, self.reading)
        # durability: the agent ships the change log and snapshots in the background (never
        # blocking writes); the store's epoch (percolate-epoch in the data directory) fences them
        # with a leader lease (HA) only the active replica ships backups: started at promotion
        self.replication = None
        self.backup = None if config.ha_lease_url else backup_agent(config, self.memory.store, self.metrics.registry)
        authenticator = NodeAuthenticator(config.tenant_id, config.token_file, config.key_files_group_readable)
        self._server = grpc.aio.server(interceptors=[RejectUndecodableRequests()], options=[
            ("grpc.max_receive_message_length", MAX_REQUEST_BYTES), ("grpc.max_send_message_length", MAX_REQUEST_BYTES)])
        self.servicer = NodeServicer(self.memory, authenticator, self.metrics, lambda: self.backup,
                                     lambda: self.replication)
        node_pb2_grpc.add_NodeServiceServicer_to_server(self.servicer, self._server)
        self.health = HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        reflection.enable_server_reflection(
            (NODE_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), self._server)
        self.port = self._bind(f"{config.host}:{config.port}")
        await self._server.start()
        if config.health_port >= 0:  # health only, plaintext: the kubelet's gRPC probes
            self._health_server = grpc.aio.server()
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self._health_server)
            self.health_port = self._health_server.add_insecure_port(f"{config.host}:{config.health_port}")
            await self._health_server.start()
        for service in ("", NODE_SERVICE, LIVENESS_SERVICE):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        await self._report_integrity()
        if config.ha_lease_url:  # a replica: NOT_SERVING until it holds the lease
            from .replication.controller import ReplicaController

            self.replication = ReplicaController(self)
            await self.replication.start()
        damage = self.memory.damage
        self.metrics.corrupt_records.labels(config.tenant_id).set_function(lambda: damage.count)
        if config.metrics_port >= 0:
            self.metrics_port = self.metrics.serve(config.host, config.metrics_port)
        self._refresh = asyncio.create_task(self._refresh_metrics())
        if config.graph_save_interval_s > 0:  # 0 or less: saved only at a clean stop
            self._graph_saver = asyncio.create_task(self._save_graph_periodically())
        log.info("node for tenant %s on %s; %d resources indexed in %.2f s (%s)", config.tenant_id,
                 self.address, self.memory.index_size, self.memory.rebuild_seconds, self.memory.rebuild_graph)

    def _bind(self, address: str) -> int:
        config = self.config
        if config.tls_cert is None:
            if config.token_file is None:
                raise ValueError("the node needs TLS files (PERCOLATE_NODE_TLS_*) or a bearer "
                                 "token file (PERCOLATE_NODE_TOKEN_FILE) for plaintext local use")
            if config.host not in ("127.0.0.1", "localhost", "::1"):
                raise ValueError("plaintext with a bearer token is for local use: bind to 127.0.0.1")
            log.warning("plaintext gRPC on %s with bearer-token authentication (local use only)", address)
            return self._server.add_insecure_port(address)
        paths = CertPaths(cert=config.tls_cert, key=config.tls_key, ca=config.tls_client_ca)
        return self._server.add_secure_port(address, server_credentials(paths, require_client_auth=True))

    async def _pause(self, seconds: float) -> bool:
        """Sleep ``seconds`` unless the node is stopping; True when it is."""
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
            return True
        except asyncio.TimeoutError:
            return False

    async def _refresh_metrics(self) -> None:
        # Ends at stop between rounds (never cancelled inside one): a cancelled to_thread would
        # leave its thread reading the store, and a live iterator keeps RocksDB's LOCK after close.
        while not self._stopping.is_set():
            try:
                stats = await asyncio.get_running_loop().run_in_executor(None, self.memory.stats)
                tenant = self.config.tenant_id
                self.metrics.memory_size.labels(tenant).set(stats["storage_bytes"])
                self.metrics.storage.labels(tenant).set(stats["data_dir_bytes"])
                self.metrics.index_entries.labels(tenant).set(stats["index_entries"])
                self.metrics.dek_seals.labels(tenant).set(stats["dek_seals"])
                self.metrics.dek_seal_limit.labels(tenant).set(stats["dek_seal_limit"])
                for kind in ("documents", "resources", "entities", "moments"):
                    self.metrics.records.labels(tenant, kind).set(stats[kind])
                await self._report_integrity()
                if self.replication is not None:  # bounded by what the standby confirmed or applied
                    await asyncio.to_thread(self.replication.trim_log)
                elif self.backup is None:  # nothing consumes the change log
                    await asyncio.to_thread(trim_unshipped_log, self.memory.store)
            except Exception:  # the next round tries again; the node goes on serving
                log.exception("refreshing the node's metrics failed")
            if await self._pause(METRICS_REFRESH_S):
                return

    async def _report_integrity(self) -> None:
        damaged = bool(self.memory.damage)
        await self.health.set(INTEGRITY_SERVICE, health_pb2.HealthCheckResponse.NOT_SERVING if damaged
                              else health_pb2.HealthCheckResponse.SERVING)

    async def _save_graph_periodically(self) -> None:
        """Save a changed search graph every ``graph_save_interval_s`` (on a thread: about
        0.5 s at 100k chunks, searches and ingests going on)."""
        while not await self._pause(self.config.graph_save_interval_s):
            if self.memory.graph_unsaved:
                try:
                    await asyncio.to_thread(self.memory.save_graph)
                except Exception:  # the next round or the stop tries again
                    log.exception("saving the search graph failed")

    # -- replication hooks (percolate_node/replication/controller.py) ---------------------------

    def start_backups(self) -> None:
        """On promotion: the new active ships the log and snapshots under its epoch."""
        if self.backup is None:
            self.backup = backup_agent(self.config, self.memory.store, self.metrics.registry)

    async def stop_backups(self) -> None:
        """On demotion: a standby never writes to the object store."""
        agent, self.backup = self.backup, None
        if agent is not None:
            await asyncio.to_thread(agent.stop)

    async def reopen_memory(self, swap, epoch: int) -> None:
        """Close the memory, run ``swap()`` (a standby installing a snapshot), open and index it again."""
        old = self.memory
        await asyncio.to_thread(old.close)
        await asyncio.to_thread(swap)
        self.memory = await asyncio.to_thread(NodeMemory.open, self.config, self.reading)
        self.memory.store.epoch = max(self.memory.store.epoch, epoch)
        self.servicer.memory = self.memory
        damage = self.memory.damage
        self.metrics.corrupt_records.labels(self.config.tenant_id).set_function(lambda: damage.count)

    async def stop(self, grace_s: float | None = None) -> None:
        if self._server is None:
            return
        await self.health.enter_graceful_shutdown()
        if self.replication is not None:  # hands the lease back so the standby takes over at once
            await self.replication.stop()
        self._stopping.set()
        for task in (self._refresh, self._graph_saver):  # each ends after its current round
            if task is not None:
                await asyncio.gather(task, return_exceptions=True)
        await self._server.stop(self.config.drain_grace_s if grace_s is None else grace_s)
        self._server = None
        if self._health_server is not None:
            await self._health_server.stop(0)
            self._health_server = None
        await self.reading.close()
        if self.backup is not None:  # ships what is pending first (bounded), then stops
            await asyncio.to_thread(self.backup.stop)
        self.memory.close()
        self.metrics.stop()
        log.info("node stopped")
