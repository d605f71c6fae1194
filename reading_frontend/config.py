"""The reading frontend's configuration: one typed object, read once from the environment."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

MIB = 1 << 20
DEFAULT_IN_FLIGHT = max(2, len(os.sched_getaffinity(0)))
"""One request per core: the frontend's own work (tokenising, decoding, protobuf) is CPU
bound, and more at once only makes requests fight for the cores (measured on 2 cores:
4 in flight gave 0.78x the throughput of 2)."""


@dataclass(frozen=True)
class FrontendConfig:
    host: str = "127.0.0.1"
    port: int = 0
    """gRPC port; 0 picks a free one (tests, embedded default)."""
    metrics_port: int = 0
    """Prometheus /metrics HTTP port; 0 picks a free one, -1 disables it."""
    health_port: int = -1
    """A plaintext port serving only gRPC health, for the kubelet's gRPC probes (which
    cannot speak mutual TLS); -1 (default) serves none, 0 picks a free one."""
    max_connection_age_s: float = 600.0
    """Connections are closed (gracefully) after this long, so clients re-resolve and
    spread over new replicas and renewed certificates take effect."""
    triton_url: str = "127.0.0.1:8001"
    triton_metrics_url: str = ""
    """Triton's Prometheus endpoint, read for GPU utilisation; empty skips it."""
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    insecure: bool = False
    """Plaintext, tenant taken from the request: local experiments only."""
    max_message_bytes: int = 64 * MIB
    max_in_flight: int = DEFAULT_IN_FLIGHT
    """Requests processed at once; the rest wait in the fair queue."""
    max_queue_depth: int = 256
    max_queue_per_tenant: int = 128
    max_texts_per_embed: int = 1024
    max_image_pixels: int = 40_000_000
    max_pages: int = 2000
    max_audio_seconds: float = 7200.0
    """Longest audio accepted by Transcribe (and Parse): 2 hours by default."""
    default_chunk_tokens: int = 200
    drain_grace_s: float = 20.0
    """On SIGTERM: stop admitting, report NOT_SERVING, finish in-flight work within this."""
    drain_quiet_s: float = 0.5
    """While draining, the port stays open until no new request has come for this long
    (within ``drain_grace_s``): a client that has not yet seen NOT_SERVING gets a
    retryable UNAVAILABLE, where a closing server would answer CANCELLED."""
    triton_timeout_s: float = 120.0
    """Upper bound for one Triton call when the caller set no deadline."""
    triton_shared_memory_mb: int = 64
    """MiB of /dev/shm regions through which large tensors (OCR pages, their probability
    maps, line batches, audio windows) reach a Triton on this host or in this pod
    (``triton_shm.py``); 0 sends everything over gRPC. Ignored when ``triton_url`` is not
    a loopback address, and turned off by itself when Triton cannot map the regions."""
    worker_threads: int = 4
    """Threads for CPU-bound preprocessing in the frontend process (image decoding, audio)."""
    parse_workers: int = DEFAULT_IN_FLIGHT
    """Worker processes that parse and chunk documents (``parse_pool.py``); one request
    uses at most one, and they are shared round robin across tenants."""
    parse_cpu_budget_s: float = 30.0
    """CPU seconds one Parse may use in its worker before it is stopped
    (RESOURCE_EXHAUSTED); whole seconds, at least 1."""
    ocr_pages_in_flight: int = 2
    """Pages of one document a Parse has at OCR at once (``parsing/ocrpass.py``): two keep
    Triton's detection and recognition busy together; 1 sends them one at a time, which
    also halves one Parse's share of the OCR models beside other tenants' Ocr calls."""
    parse_worker_nice: int = 10
    """Scheduling niceness of the parse workers: long parses yield the cores to the
    frontend's own loop and to Triton, so small requests stay quick."""
    max_request_bytes: int = 512 * MIB
    """Request bytes held at once (queued, running, parked), all tenants together."""
    max_request_bytes_per_tenant: int = 256 * MIB

    def __post_init__(self) -> None:
        if self.triton_shared_memory_mb < 0:
            raise ValueError(f"PERCOLATE_READING_TRITON_SHARED_MEMORY_MB={self.triton_shared_memory_mb}: "
                             "give 0 (every tensor over gRPC) or more MiB")

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "FrontendConfig":
        env = os.environ if env is None else env

        def get(name: str, default, kind=str):
            raw = env.get(f"PERCOLATE_READING_{name}")
            if raw is None or raw == "":
                return default
            if kind is bool:
                return raw.lower() in ("1", "true", "yes", "on")
            return kind(raw)

        return cls(
            host=get("HOST", cls.host), port=get("PORT", cls.port, int),
            metrics_port=get("METRICS_PORT", cls.metrics_port, int),
            health_port=get("HEALTH_PORT", cls.health_port, int),
            max_connection_age_s=get("MAX_CONNECTION_AGE_S", cls.max_connection_age_s, float),
            triton_url=get("TRITON_URL", cls.triton_url),
            triton_metrics_url=get("TRITON_METRICS_URL", cls.triton_metrics_url),
            tls_cert=get("TLS_CERT", None, Path), tls_key=get("TLS_KEY", None, Path),
            tls_client_ca=get("TLS_CLIENT_CA", None, Path),
            insecure=get("INSECURE", False, bool),
            max_message_bytes=get("MAX_MESSAGE_BYTES", cls.max_message_bytes, int),
            max_in_flight=get("MAX_IN_FLIGHT", cls.max_in_flight, int),
            max_queue_depth=get("MAX_QUEUE_DEPTH", cls.max_queue_depth, int),
            max_queue_per_tenant=get("MAX_QUEUE_PER_TENANT", cls.max_queue_per_tenant, int),
            max_texts_per_embed=get("MAX_TEXTS_PER_EMBED", cls.max_texts_per_embed, int),
            max_image_pixels=get("MAX_IMAGE_PIXELS", cls.max_image_pixels, int),
            max_pages=get("MAX_PAGES", cls.max_pages, int),
            max_audio_seconds=get("MAX_AUDIO_SECONDS", cls.max_audio_seconds, float),
            drain_grace_s=get("DRAIN_GRACE_S", cls.drain_grace_s, float),
            drain_quiet_s=get("DRAIN_QUIET_S", cls.drain_quiet_s, float),
            triton_timeout_s=get("TRITON_TIMEOUT_S", cls.triton_timeout_s, float),
            triton_shared_memory_mb=get("TRITON_SHARED_MEMORY_MB", cls.triton_shared_memory_mb, int),
            worker_threads=get("WORKER_THREADS", cls.worker_threads, int),
            parse_workers=get("PARSE_WORKERS", cls.parse_workers, int),
            parse_cpu_budget_s=get("PARSE_CPU_BUDGET_S", cls.parse_cpu_budget_s, float),
            ocr_pages_in_flight=get("OCR_PAGES_IN_FLIGHT", cls.ocr_pages_in_flight, int),
            parse_worker_nice=get("PARSE_WORKER_NICE", cls.parse_worker_nice, int),
            max_request_bytes=get("MAX_REQUEST_BYTES", cls.max_request_bytes, int),
            max_request_bytes_per_tenant=get("MAX_REQUEST_BYTES_PER_TENANT",
                                             cls.max_request_bytes_per_tenant, int),
        )
