"""Fair admission: bounded, round-robin across tenants, refuses when full or draining."""
from __future__ import annotations

import asyncio

import pytest

from reading_frontend.admission import FairAdmission
from reading_frontend.errors import BackendUnavailableError, QueueFullError


async def _flood(admission: FairAdmission, order: list[str], tenant: str, count: int,
                 release: asyncio.Event) -> None:
    async def one() -> None:
        async with admission.slot(tenant):
            order.append(tenant)
            await release.wait()
    await asyncio.gather(*(one() for _ in range(count)))


def test_flooding_tenant_does_not_starve_another():
    async def scenario() -> list[str]:
        admission = FairAdmission(max_in_flight=1, max_queue=100, max_queue_per_tenant=60)
        order: list[str] = []
        release = asyncio.Event()
        flood = asyncio.create_task(_flood(admission, order, "tenant-a", 50, release))
        await asyncio.sleep(0.01)  # tenant-a: one request running, 49 queued
        late = asyncio.create_task(_flood(admission, order, "tenant-b", 3, release))
        await asyncio.sleep(0.01)
        assert admission.depth == 52
        release.set()
        await asyncio.gather(flood, late)
        return order

    order = asyncio.run(scenario())
    assert len(order) == 53
    positions = [i for i, tenant in enumerate(order) if tenant == "tenant-b"]
    # served within the first few slots after arriving, alternating with tenant-a,
    # not after all 50 of tenant-a's requests
    assert positions[-1] < 10, order


def test_queue_bounds_refuse_at_once():
    async def scenario() -> None:
        admission = FairAdmission(max_in_flight=1, max_queue=3, max_queue_per_tenant=2)
        hold = asyncio.Event()
        tasks = [asyncio.create_task(_flood(admission, [], "a", 1, hold)) for _ in range(3)]
        await asyncio.sleep(0.01)  # one running, two waiting: tenant a is at its share
        assert admission.in_flight == 1 and admission.depth == 2
        with pytest.raises(QueueFullError, match="tenant a already has 2 requests waiting"):
            async with admission.slot("a"):
                pass
        tasks.append(asyncio.create_task(_flood(admission, [], "b", 1, hold)))
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFullError, match="queue is full"):
            async with admission.slot("c"):
                pass
        hold.set()
        await asyncio.gather(*tasks)
        assert admission.in_flight == 0 and admission.depth == 0

    asyncio.run(scenario())


def test_cancelled_waiter_leaves_the_queue():
    async def scenario() -> None:
        depths: list[int] = []
        admission = FairAdmission(1, 10, 10, on_depth_change=depths.append)
        hold = asyncio.Event()
        running = asyncio.create_task(_flood(admission, [], "a", 1, hold))
        await asyncio.sleep(0.01)
        waiter = asyncio.create_task(_flood(admission, [], "b", 1, hold))
        await asyncio.sleep(0.01)
        assert admission.depth == 1
        waiter.cancel()  # e.g. the caller's deadline passed while queued
        await asyncio.sleep(0.01)
        assert admission.depth == 0
        hold.set()
        await running
        assert admission.in_flight == 0 and depths[-1] == 0

    asyncio.run(scenario())


def test_draining_refuses_new_work_but_finishes_queued():
    async def scenario() -> None:
        admission = FairAdmission(1, 10, 10)
        hold = asyncio.Event()
        order: list[str] = []
        first = asyncio.create_task(_flood(admission, order, "a", 2, hold))
        await asyncio.sleep(0.01)
        admission.drain()
        with pytest.raises(BackendUnavailableError, match="shutting down"):
            async with admission.slot("b"):
                pass
        hold.set()
        await first
        assert order == ["a", "a"]

    asyncio.run(scenario())
