"""Prometheus metrics of the reading service (names fixed by ARCHITECTURE.md).

Each server gets its own registry so several can run in one process (tests). The
GPU utilisation is read from Triton's own metrics endpoint (``nv_gpu_utilization``)
and exported only where Triton reports a GPU.
"""
from __future__ import annotations

import time
import urllib.request
from collections import deque

from percolate_common.metrics_http import MetricsEndpoint
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

THROUGHPUT_WINDOW_S = 10.0


class _GpuUtilization:
    """Collector: the mean ``nv_gpu_utilization`` over Triton's GPUs, when there are any."""

    def __init__(self) -> None:
        self.percent: float | None = None

    def collect(self):
        if self.percent is not None:
            family = GaugeMetricFamily("percolate_reading_gpu_utilization_percent",
                                       "GPU utilisation reported by Triton (mean over GPUs)")
            family.add_metric([], self.percent)
            yield family


class _LargeTensors:
    """Collector: the large tensors the frontend sent Triton, by how they went."""

    def __init__(self, pool) -> None:
        self.pool = pool

    def collect(self):
        family = CounterMetricFamily(
            "percolate_reading_triton_large_tensors",
            "Large tensors to and from Triton (inputs of 256 KiB or more, outputs of a size "
            "known in advance) by the way they went: shared_memory, or grpc (shared memory off "
            "or no region to be had: budget held, full /dev/shm, Triton unreachable, a retry)",
            labels=["path"])
        family.add_metric(["shared_memory"], self.pool.tensors_shared)
        family.add_metric(["grpc"], self.pool.tensors_over_grpc)
        yield family


class ReadingMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.queue_depth = Gauge("percolate_reading_queue_depth",
                                 "Requests waiting for admission", registry=self.registry)
        self.in_flight = Gauge("percolate_reading_in_flight", "Requests being processed",
                               registry=self.registry)
        self.duration = Histogram(
            "percolate_reading_processing_duration_seconds", "Time to process one request",
            ["operation"], registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
        self.requests = Counter("percolate_reading_requests", "Requests by outcome",
                                ["operation", "status", "tenant_id"], registry=self.registry)
        self._finished: deque[float] = deque()
        throughput = Gauge("percolate_reading_throughput_requests_per_second",
                           f"Requests finished per second over the last {THROUGHPUT_WINDOW_S:.0f} s",
                           registry=self.registry)
        throughput.set_function(self._throughput)
        self.gpu = _GpuUtilization()
        self.registry.register(self.gpu)
        self._endpoint = MetricsEndpoint(self.registry)

    def watch_parse_pool(self, pool) -> None:
        """Gauges read from the parse worker pool at each scrape."""
        Gauge("percolate_reading_parse_workers_busy", "Parse worker processes running a job",
              registry=self.registry).set_function(lambda: pool.busy)
        Gauge("percolate_reading_parse_queue_depth", "Parses waiting for a worker process",
              registry=self.registry).set_function(lambda: pool.waiting)
        replaced = Gauge("percolate_reading_parse_workers_replaced",
                         "Parse workers stopped (deadline, cancel, CPU budget, crash) and replaced",
                         registry=self.registry)
        replaced.set_function(lambda: pool.replaced)

    def watch_triton_shared_memory(self, pool) -> None:
        """Gauges read from the frontend's shared-memory pool (``triton_shm.py``) at each scrape."""
        Gauge("percolate_reading_triton_shared_memory_enabled",
              "1 while large tensors reach Triton through shared memory, 0 when all go over gRPC",
              registry=self.registry).set_function(lambda: int(pool.enabled))
        Gauge("percolate_reading_triton_shared_memory_bytes",
              "Bytes of /dev/shm the frontend holds for Triton, or Triton still maps for it",
              registry=self.registry).set_function(lambda: pool.held_bytes)
        self.registry.register(_LargeTensors(pool))

    def observe(self, operation: str, tenant: str, status: str, seconds: float) -> None:
        self.duration.labels(operation).observe(seconds)
        self.requests.labels(operation, status, tenant or "unknown").inc()
        self._finished.append(time.monotonic())

    def _throughput(self) -> float:
        horizon = time.monotonic() - THROUGHPUT_WINDOW_S
        while self._finished and self._finished[0] < horizon:
            self._finished.popleft()
        return len(self._finished) / THROUGHPUT_WINDOW_S

    def serve(self, host: str, port: int) -> int:
        """Serve /metrics over HTTP; returns the bound port."""
        return self._endpoint.serve(host, port)

    def stop(self) -> None:
        self._endpoint.stop()

    def scrape_triton_gpu(self, triton_metrics_url: str) -> None:
        """Read Triton's metrics once (blocking; run it in a thread)."""
        try:
            with urllib.request.urlopen(triton_metrics_url, timeout=2) as response:
                text = response.read().decode()
        except OSError:
            return
        values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                  if line.startswith("nv_gpu_utilization{")]
        self.gpu.percent = 100.0 * sum(values) / len(values) if values else None
