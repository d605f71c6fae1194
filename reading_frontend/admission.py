"""Bounded, per-tenant fair admission of requests (asyncio).

At most ``max_in_flight`` requests run at once. The rest wait in one queue per
tenant, and a freed slot goes to the next tenant in round-robin order, so a tenant
that floods the service waits behind itself, not in front of others. The total queue
and each tenant's share are bounded: past either bound a request is refused at once
(RESOURCE_EXHAUSTED) instead of waiting without end. While draining, new requests
are refused (UNAVAILABLE) and queued ones are let through to finish.
"""
from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from contextlib import asynccontextmanager
from typing import AsyncIterator, Callable

from .errors import BackendUnavailableError, QueueFullError


class FairAdmission:
    def __init__(self, max_in_flight: int, max_queue: int, max_queue_per_tenant: int,
                 on_depth_change: Callable[[int], None] = lambda depth: None) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self.max_in_flight = max_in_flight
        self.max_queue = max_queue
        self.max_queue_per_tenant = max_queue_per_tenant
        self._on_depth_change = on_depth_change
        self._in_flight = 0
        self._waiting: "OrderedDict[str, deque[asyncio.Future]]" = OrderedDict()
        self._depth = 0
        self._draining = False
        self.last_refused_at = 0.0  # time.monotonic() of the last request refused while draining

    @property
    def depth(self) -> int:
        """Requests waiting (not yet running)."""
        return self._depth

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def drain(self) -> None:
        self._draining = True

    @asynccontextmanager
    async def slot(self, tenant: str) -> AsyncIterator[None]:
        await self._acquire(tenant)
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, tenant: str) -> None:
        if self._draining:
            self.last_refused_at = time.monotonic()
            raise BackendUnavailableError("the reading service is shutting down; retry on another replica")
        if self._in_flight < self.max_in_flight and not self._depth:
            self._in_flight += 1
            return
        queue = self._waiting.get(tenant)
        if self._depth >= self.max_queue:
            raise QueueFullError(f"the reading service queue is full ({self.max_queue} waiting); retry later")
        if queue is not None and len(queue) >= self.max_queue_per_tenant:
            raise QueueFullError(
                f"tenant {tenant} already has {len(queue)} requests waiting "
                f"(limit {self.max_queue_per_tenant}); retry later")
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(tenant, deque()).append(future)
        self._set_depth(self._depth + 1)
        try:
            await future  # resolved by _release, which hands its slot over
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self._release()  # the slot was handed over just as we were cancelled
            else:
                self._forget(tenant, future)
            raise

    def _release(self) -> None:
        while self._waiting:
            tenant, queue = next(iter(self._waiting.items()))
            future = queue.popleft()
            if queue:
                self._waiting.move_to_end(tenant)  # round robin: this tenant goes last
            else:
                del self._waiting[tenant]
            self._set_depth(self._depth - 1)
            if not future.done():
                future.set_result(None)  # the slot passes on; in_flight is unchanged
                return
        self._in_flight -= 1

    def _forget(self, tenant: str, future: asyncio.Future) -> None:
        queue = self._waiting.get(tenant)
        if queue is not None and future in queue:
            queue.remove(future)
            self._set_depth(self._depth - 1)
            if not queue:
                del self._waiting[tenant]

    def _set_depth(self, depth: int) -> None:
        self._depth = depth
        self._on_depth_change(depth)
