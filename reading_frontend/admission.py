"""Bounded, per-tenant fair admission of requests (asyncio).

At most ``max_in_flight`` requests run at once. The rest wait in one queue per
tenant, and a freed slot goes to the next tenant in round-robin order, so a tenant
that floods the service waits behind itself, not in front of others. The total queue
and each tenant's share are bounded: past either bound a request is refused at once
(RESOURCE_EXHAUSTED) instead of waiting without end. While draining, new requests
are refused (UNAVAILABLE) and queued ones are let through to finish.

Bytes are budgeted as well as requests: every admitted request's size counts against a
total and a per-tenant budget from the moment it queues until it finishes, and a request
that would pass either is refused at once, before it waits, so queued payloads cannot
take gigabytes. After a burst of large requests the freed memory is handed back to the
operating system (``malloc_trim``): glibc otherwise keeps it for the process.

A request whose heavy part runs elsewhere (parsing in the worker pool) can ``park`` its
slot meanwhile: the slot goes to the next request, and comes back (ahead of the
queue's fairness, it has waited once) when the parked work is done.
"""
from __future__ import annotations

import asyncio
import contextvars
import gc
import ctypes
import ctypes.util
import logging
import time
from collections import OrderedDict, deque
from contextlib import asynccontextmanager
from typing import AsyncIterator, Callable

from .errors import BackendUnavailableError, QueueFullError

log = logging.getLogger("percolate.reading")


class _Held:
    """The slot a task holds: ``holding`` is False while it is parked (or was not given
    back after a failure in the parked work), so the slot is released exactly once."""

    def __init__(self, admission: "FairAdmission", tenant: str) -> None:
        self.admission, self.tenant, self.holding = admission, tenant, True


_HELD: contextvars.ContextVar[_Held | None] = contextvars.ContextVar("admission_slot", default=None)
TRIM_AFTER_BYTES = 32 << 20
"""Bytes of requests seen since the last trim that make a trim worth its few milliseconds."""
REQUEST_FLOOR_BYTES = 1 << 20
TRIM_DELAY_S = 1.0
"""The trim runs this long after the last large request: once per burst, after the
refused and finished requests' buffers have been freed."""


def current_tenant() -> str:
    """The tenant whose slot this task holds (empty outside ``FairAdmission.slot``)."""
    held = _HELD.get()
    return held.tenant if held else ""


@asynccontextmanager
async def parked() -> AsyncIterator[None]:
    """Give this task's slot to the next request while the body runs, then take it back
    (at the head of its tenant's queue). If the body fails the slot is not taken back:
    the request is ending. Outside a slot this does nothing (plain calls, tests)."""
    held = _HELD.get()
    if held is None or not held.holding:
        yield
        return
    admission = held.admission
    admission._release()
    held.holding = False
    admission._parked += 1
    try:
        yield
    finally:
        admission._parked -= 1
    await admission._acquire(held.tenant, resumed=True)
    held.holding = True


class _MemoryTrimmer:
    """Returns free heap memory to the OS once a burst of large requests is over."""

    def __init__(self) -> None:
        name = ctypes.util.find_library("c")
        libc = ctypes.CDLL(name) if name else None
        self._trim = getattr(libc, "malloc_trim", None)  # glibc only; musl has none
        self._seen = 0
        self._timer: asyncio.TimerHandle | None = None
        self.trims = 0

    def note(self, size: int) -> None:
        """``size``: a request's bytes; each counts as at least ``REQUEST_FLOOR_BYTES``, its
        decoded images, tensors and messages, so a burst of small requests trims too."""
        if self._trim is None:
            return
        self._seen += max(size, REQUEST_FLOOR_BYTES)
        if self._seen < TRIM_AFTER_BYTES:
            return
        if self._timer is not None:
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(TRIM_DELAY_S, self._run, loop)

    def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer, self._seen = None, 0
        loop.run_in_executor(None, self.trim_now)

    def trim_now(self) -> None:
        """Collect cycles first: a failed request's traceback (an asyncio future and the
        frames around it) can hold its payload until the next full collection."""
        if self._trim is not None:
            gc.collect()
            self._trim(0)
            self.trims += 1


class FairAdmission:
    def __init__(self, max_in_flight: int, max_queue: int, max_queue_per_tenant: int,
                 on_depth_change: Callable[[int], None] = lambda depth: None, *,
                 max_bytes: int = 0, max_bytes_per_tenant: int = 0) -> None:
        """``max_bytes`` and ``max_bytes_per_tenant``: request bytes held at once (queued,
        running or parked), total and per tenant; 0 means unbounded."""
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self.max_in_flight = max_in_flight
        self.max_queue = max_queue
        self.max_queue_per_tenant = max_queue_per_tenant
        self.max_bytes = max_bytes
        self.max_bytes_per_tenant = max_bytes_per_tenant
        self._on_depth_change = on_depth_change
        self._bytes = 0
        self._tenant_bytes: dict[str, int] = {}
        self._trimmer = _MemoryTrimmer()
        self._parked = 0
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
        """Requests admitted and not finished: running, or parked while their heavy part
        runs elsewhere (draining waits for both)."""
        return self._in_flight + self._parked

    @property
    def bytes_held(self) -> int:
        """Request bytes queued, running or parked."""
        return self._bytes

    def drain(self) -> None:
        self._draining = True

    @asynccontextmanager
    async def slot(self, tenant: str, size: int = 0) -> AsyncIterator[None]:
        """Hold one of the ``max_in_flight`` slots for ``tenant``; ``size`` is the request's
        bytes, counted against the byte budgets until the block ends."""
        self._trimmer.note(size)
        self._take_bytes(tenant, size)
        try:
            await self._acquire(tenant)
            held = _Held(self, tenant)
            token = _HELD.set(held)
            try:
                yield
            finally:
                _HELD.reset(token)
                if held.holding:
                    self._release()
        finally:
            self._give_bytes(tenant, size)

    def _take_bytes(self, tenant: str, size: int) -> None:
        if size <= 0:
            return
        mine = self._tenant_bytes.get(tenant, 0)
        if self.max_bytes_per_tenant and mine + size > self.max_bytes_per_tenant:
            raise QueueFullError(
                f"tenant {tenant} has {mine:,} request bytes queued or running; {size:,} more "
                f"would pass its budget of {self.max_bytes_per_tenant:,} "
                "(max_request_bytes_per_tenant); retry later")
        if self.max_bytes and self._bytes + size > self.max_bytes:
            raise QueueFullError(
                f"the reading service holds {self._bytes:,} request bytes; {size:,} more would "
                f"pass its budget of {self.max_bytes:,} (max_request_bytes); retry later")
        self._bytes += size
        self._tenant_bytes[tenant] = mine + size

    def _give_bytes(self, tenant: str, size: int) -> None:
        if size <= 0:
            return
        self._bytes -= size
        left = self._tenant_bytes.get(tenant, 0) - size
        if left > 0:
            self._tenant_bytes[tenant] = left
        else:
            self._tenant_bytes.pop(tenant, None)
        self._trimmer.note(size)

    async def _acquire(self, tenant: str, resumed: bool = False) -> None:
        """``resumed``: a parked request taking its slot back; it was admitted once, so
        neither draining nor the queue bounds refuse it."""
        if self._draining and not resumed:
            self.last_refused_at = time.monotonic()
            raise BackendUnavailableError("the reading service is shutting down; retry on another replica")
        if self._in_flight < self.max_in_flight and not self._depth:
            self._in_flight += 1
            return
        queue = self._waiting.get(tenant)
        if resumed:
            pass  # admitted once already: no bound refuses it
        elif self._depth >= self.max_queue:
            raise QueueFullError(f"the reading service queue is full ({self.max_queue} waiting); retry later")
        if queue is not None and len(queue) >= self.max_queue_per_tenant:
            raise QueueFullError(
                f"tenant {tenant} already has {len(queue)} requests waiting "
                f"(limit {self.max_queue_per_tenant}); retry later")
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        waiting = self._waiting.setdefault(tenant, deque())
        waiting.appendleft(future) if resumed else waiting.append(future)
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
