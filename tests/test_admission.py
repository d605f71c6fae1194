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


async def _until(condition, what: str) -> None:
    """Let the loop run until ``condition()`` holds (no timing assumed: a bound on turns)."""
    for _ in range(10_000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"never reached: {what}")


def test_byte_budgets_refuse_before_queueing_and_are_given_back():
    from reading_frontend.admission import FairAdmission as Admission

    async def scenario() -> None:
        admission = Admission(1, 100, 100, max_bytes=1000, max_bytes_per_tenant=600)
        hold = asyncio.Event()

        async def one(tenant: str, size: int) -> None:
            async with admission.slot(tenant, size):
                await hold.wait()

        tasks = [asyncio.create_task(one("a", 400)), asyncio.create_task(one("b", 500))]
        await _until(lambda: admission.bytes_held == 900, "900 bytes held")
        assert admission.depth == 1  # b's 500 bytes count while queued, not only when running
        with pytest.raises(QueueFullError, match=r"tenant a .*budget of 600 \(max_request_bytes_per_tenant\)"):
            async with admission.slot("a", 300):
                pass
        with pytest.raises(QueueFullError, match=r"budget of 1,000 \(max_request_bytes\)"):
            async with admission.slot("c", 200):
                pass
        assert admission.depth == 1 and admission.bytes_held == 900  # refusals took nothing
        hold.set()
        await asyncio.gather(*tasks)
        assert admission.bytes_held == 0 and admission._tenant_bytes == {}

        async def failing() -> None:
            async with admission.slot("a", 600):
                raise ValueError("bad document")
        with pytest.raises(ValueError):
            await failing()
        assert admission.bytes_held == 0

    asyncio.run(scenario())


def test_parked_request_lends_its_slot_and_counts_for_draining():
    from reading_frontend.admission import current_tenant, parked

    async def scenario() -> None:
        admission = FairAdmission(1, 10, 10)
        parse_running, parse_done, order = asyncio.Event(), asyncio.Event(), []

        async def parse() -> None:
            async with admission.slot("a"):
                assert current_tenant() == "a"
                async with parked():  # e.g. waiting on the parse worker pool
                    parse_running.set()
                    await parse_done.wait()
                order.append("parse resumed")

        async def embed() -> None:
            async with admission.slot("b"):
                order.append("embed")

        first = asyncio.create_task(parse())
        await parse_running.wait()
        assert admission.in_flight == 1  # parked: still admitted work for draining
        await embed()  # gets the slot the parse lent, while the parse is parked
        admission.drain()
        parse_done.set()
        await first  # takes its slot back even while draining
        assert order == ["embed", "parse resumed"]
        assert admission.in_flight == 0 and admission.depth == 0

    asyncio.run(scenario())


def test_failed_parked_work_releases_the_slot_once():
    from reading_frontend.admission import parked

    async def scenario() -> None:
        admission = FairAdmission(2, 10, 10)

        async def parse() -> None:
            async with admission.slot("a"):
                async with parked():
                    raise ValueError("parser stopped")

        for _ in range(3):
            with pytest.raises(ValueError):
                await parse()
        assert admission.in_flight == 0

    asyncio.run(scenario())
