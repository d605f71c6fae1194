"""What every RPC passes through, whichever API it came by: identity, admission,
deadline, metrics, and the mapping of errors to a gRPC status.

gRPC server interceptors cannot see the client certificate, so identity is checked
here, where the handler's ``context`` is available.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Awaitable, Callable, TypeVar

import grpc

from percolate_certs.identity import (check_declared_tenant, tenant_from_auth_context,
                                      validate_tenant_id)

from .admission import FairAdmission
from .errors import PermissionDeniedError, UnauthenticatedError, status_for
from .metrics import ReadingMetrics

T = TypeVar("T")
TENANT_HEADER = "x-tenant-id"
log = logging.getLogger("percolate.reading")


class RequestGate:
    def __init__(self, admission: FairAdmission, metrics: ReadingMetrics, insecure: bool) -> None:
        self.admission = admission
        self.metrics = metrics
        self.insecure = insecure

    def tenant(self, context: grpc.aio.ServicerContext, declared: str = "") -> str:
        """The caller's tenant: from its certificate, checked against every tenant the
        call declares (the request's ``tenant_id`` and each ``x-tenant-id`` header): one
        that differs is PERMISSION_DENIED, never ignored."""
        headers = [value for key, value in (context.invocation_metadata() or ()) if key == TENANT_HEADER]
        claims = [claim for claim in (declared, *headers) if claim]
        if self.insecure:
            if not claims:
                raise UnauthenticatedError(
                    "insecure mode: name the tenant in the request or the x-tenant-id header")
            if len(set(claims)) > 1:
                raise PermissionDeniedError("the request and its x-tenant-id header name different tenants")
            try:
                return validate_tenant_id(claims[0])
            except ValueError as err:
                raise UnauthenticatedError(str(err)) from None
        tenant = tenant_from_auth_context(context.auth_context())
        for claim in claims:
            check_declared_tenant(tenant, claim)
        return tenant

    async def run(self, operation: str, context: grpc.aio.ServicerContext, declared_tenant: str,
                  work: Callable[[str, float | None], Awaitable[T]], size: int = 0) -> T:
        """Authenticate, admit fairly, run ``work(tenant, deadline)``, record, map errors.
        ``size``: the request's bytes, for the admission's byte budgets."""
        started = time.perf_counter()
        tenant, status = "", "OK"
        try:
            tenant = self.tenant(context, declared_tenant)
            remaining = context.time_remaining()
            deadline = None if remaining is None else time.monotonic() + remaining
            async with self.admission.slot(tenant, size):
                self.metrics.in_flight.set(self.admission.in_flight)
                return await work(tenant, deadline)
        except asyncio.CancelledError:
            status = "CANCELLED"
            raise
        except Exception as error:  # every failure becomes a status; none escapes as a trace
            code, message = status_for(error)
            status = code.name
            if code == grpc.StatusCode.INTERNAL:
                log.error("%s failed for tenant %s: %s", operation, tenant or "?", type(error).__name__,
                          exc_info=error)
        finally:
            self.metrics.in_flight.set(self.admission.in_flight)
            self.metrics.observe(operation, tenant, status, time.perf_counter() - started)
        await context.abort(code, message)
