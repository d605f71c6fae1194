"""gRPC health checking (grpc.health.v1: Check and Watch) for grpc.aio servers.

Why not grpcio-health-checking's ``health.aio.HealthServicer``: its Watch deletes the
service's shared condition when any one watch stream ends, so every other stream still
waiting on that condition never hears of a later change. A client that closes one
channel (after re-resolving, say) thereby blinds its other channels' health checks on
the same server: they never see NOT_SERVING when it drains and keep sending it calls.
Here one condition serves every watcher for the life of the servicer.
"""
from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ServingStatus = health_pb2.HealthCheckResponse.ServingStatus
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


class HealthServicer(health_pb2_grpc.HealthServicer):
    """Statuses by service name ("" is the whole server); set them with ``set``."""

    def __init__(self) -> None:
        self._status: dict[str, ServingStatus] = {"": SERVING}
        self._changed = asyncio.Condition()  # notified on every change; never replaced
        self._shutting_down = False
        self.watching = 0
        """Watch streams open now (tests wait on it instead of sleeping)."""

    async def Check(self, request: health_pb2.HealthCheckRequest, context) -> health_pb2.HealthCheckResponse:
        status = self._status.get(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(self, request: health_pb2.HealthCheckRequest, context) -> None:
        """The service's status now, then each change, until the caller goes away."""
        sent = None
        self.watching += 1
        try:
            while True:
                async with self._changed:
                    while (status := self._status.get(request.service, SERVICE_UNKNOWN)) == sent:
                        await self._changed.wait()
                await context.write(health_pb2.HealthCheckResponse(status=status))
                sent = status
        finally:
            self.watching -= 1

    async def set(self, service: str, status: ServingStatus) -> None:
        """Set a service's status; ignored once ``enter_graceful_shutdown`` was called."""
        if not self._shutting_down:
            await self._set(service, status)

    async def enter_graceful_shutdown(self) -> None:
        """Every service NOT_SERVING, for good: watchers learn it at once."""
        self._shutting_down = True
        for service in list(self._status):
            await self._set(service, NOT_SERVING)

    async def _set(self, service: str, status: ServingStatus) -> None:
        async with self._changed:
            self._status[service] = status
            self._changed.notify_all()
