"""Run an asyncio server on a background event loop, for synchronous callers.

The demo, the tests, the benchmarks and the CLIs are synchronous programs; this starts
an async server (anything with ``start()``, ``stop(grace_s)`` and ``address``) in a
thread of its own, and stops it (draining) on exit.
"""
from __future__ import annotations

import asyncio
import threading
from typing import Awaitable, Generic, Protocol, TypeVar

T = TypeVar("T")


class AsyncServer(Protocol):
    address: str

    async def start(self) -> None: ...

    async def stop(self, grace_s: float | None = None) -> None: ...


S = TypeVar("S", bound=AsyncServer)


class BackgroundServer(Generic[S]):
    def __init__(self, server: S) -> None:
        self.server = server
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="server-loop", daemon=True)

    @property
    def address(self) -> str:
        return self.server.address

    def call(self, coroutine: Awaitable[T], timeout: float | None = 60) -> T:
        """Run ``coroutine`` on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def call_soon(self, callback, *args) -> None:
        """Schedule ``callback(*args)`` on the server's loop without waiting (safe from
        any thread, and after the server has stopped)."""
        self._loop.call_soon_threadsafe(callback, *args)

    def __enter__(self) -> "BackgroundServer[S]":
        self._thread.start()
        try:
            self.call(self.server.start())
        except BaseException:
            self._shutdown_loop()
            raise
        return self

    def stop(self, grace_s: float | None = None) -> None:
        if self._thread.is_alive():
            self.call(self.server.stop(grace_s), timeout=None)
            self._shutdown_loop()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _shutdown_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
