"""Prometheus metrics of a tenant node (names fixed by ARCHITECTURE.md), by tenant."""
from __future__ import annotations

from percolate_common.metrics_http import MetricsEndpoint
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class NodeMetrics:
    def __init__(self, tenant_id: str) -> None:
        self.tenant_id = tenant_id
        self.registry = CollectorRegistry()
        self.memory_size = Gauge("percolate_memory_size_bytes",
                                 "Bytes of the tenant's encrypted store on disk", ["tenant_id"],
                                 registry=self.registry)
        self.records = Gauge("percolate_memory_records", "Live records by kind",
                             ["tenant_id", "kind"], registry=self.registry)
        self.storage = Gauge("percolate_storage_usage_bytes", "Disk used under the data directory",
                             ["tenant_id"], registry=self.registry)
        self.dek_seals = Gauge("percolate_dek_seals", "Values the active data key may have sealed "
                               "(reserved in the keyring); the store rotates at percolate_dek_seal_limit",
                               ["tenant_id"], registry=self.registry)
        self.dek_seal_limit = Gauge("percolate_dek_seal_limit", "Values one data key seals before rotation",
                                    ["tenant_id"], registry=self.registry)
        self.index_entries = Gauge("percolate_index_entries", "Resources in the search indexes",
                                   ["tenant_id"], registry=self.registry)
        self.corrupt_records = Gauge("percolate_corrupt_records",
                                     "Records found damaged on disk (at start and while serving); "
                                     "above 0 the node is degraded: run `percolate admin verify`",
                                     ["tenant_id"], registry=self.registry)
        self.request_duration = Histogram(
            "percolate_request_duration_seconds", "Time to serve one request",
            ["tenant_id", "method"], registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120))
        self.requests = Counter("percolate_requests", "Requests by method and status",
                                ["tenant_id", "method", "status"], registry=self.registry)
        # Agents (LLM tool use over the memory) are not built yet; the series exists so
        # dashboards and alerts can be written against the contract.
        self.agent_execution = Histogram("percolate_agent_execution_seconds",
                                         "Time of one agent execution", ["tenant_id"],
                                         registry=self.registry)
        self._endpoint = MetricsEndpoint(self.registry)

    def observe(self, method: str, status: str, seconds: float) -> None:
        self.request_duration.labels(self.tenant_id, method).observe(seconds)
        self.requests.labels(self.tenant_id, method, status).inc()

    def serve(self, host: str, port: int) -> int:
        """Serve /metrics over HTTP; returns the bound port."""
        return self._endpoint.serve(host, port)

    def stop(self) -> None:
        self._endpoint.stop()
