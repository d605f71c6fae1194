"""A Prometheus ``/metrics`` endpoint for one registry, started and stopped with a server."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, start_http_server


class MetricsEndpoint:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._http = None

    def serve(self, host: str, port: int) -> int:
        """Serve ``registry`` on ``host:port`` (0 picks a free port); returns the port."""
        self._http, _thread = start_http_server(port, addr=host, registry=self.registry)
        return self._http.server_port

    def stop(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
