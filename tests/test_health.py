"""The health servicer both servers use: every Watch stream hears every change, even
after another watcher of the same service has gone (what a client does when it closes
a channel), and graceful shutdown is final. A real grpc.aio server on a loopback port."""
from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from percolate_common.health import NOT_SERVING, SERVING, SERVICE_UNKNOWN, HealthServicer

REQUEST = health_pb2.HealthCheckRequest


async def serve(servicer) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


async def wait_until(predicate, what: str, timeout_s: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, f"{what}: not within {timeout_s} s"
        await asyncio.sleep(0.01)


async def watchers_after_one_leaves(servicer) -> list[int]:
    """Statuses a remaining watcher reads after another watcher's channel closed and the status changed."""
    server, address = await serve(servicer)
    try:
        leaving, staying = grpc.aio.insecure_channel(address), grpc.aio.insecure_channel(address)
        first = health_pb2_grpc.HealthStub(leaving).Watch(REQUEST(service=""))
        second = health_pb2_grpc.HealthStub(staying).Watch(REQUEST(service=""))
        assert (await first.read()).status == SERVING and (await second.read()).status == SERVING
        await leaving.close()
        await wait_until(lambda: servicer.watching == 1, "the server sees that stream end")
        await servicer.set("", NOT_SERVING)
        seen = [(await asyncio.wait_for(second.read(), timeout=5)).status]
        await servicer.enter_graceful_shutdown()
        await servicer.set("", SERVING)  # ignored: shutting down is final
        check = await health_pb2_grpc.HealthStub(staying).Check(REQUEST(service=""), timeout=5)
        seen.append(check.status)
        await staying.close()
        return seen
    finally:
        await server.stop(0)


def test_a_watcher_hears_changes_after_another_watcher_left():
    assert asyncio.run(watchers_after_one_leaves(HealthServicer())) == [NOT_SERVING, NOT_SERVING]


def test_unknown_services_are_not_found_on_check_and_unknown_on_watch():
    async def scenario():
        servicer = HealthServicer()
        server, address = await serve(servicer)
        try:
            async with grpc.aio.insecure_channel(address) as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                with pytest.raises(grpc.aio.AioRpcError) as missing:
                    await stub.Check(REQUEST(service="nope"), timeout=5)
                assert missing.value.code() == grpc.StatusCode.NOT_FOUND
                watch = stub.Watch(REQUEST(service="later"))
                assert (await watch.read()).status == SERVICE_UNKNOWN
                await servicer.set("later", SERVING)
                assert (await asyncio.wait_for(watch.read(), timeout=5)).status == SERVING
                watch.cancel()
        finally:
            await server.stop(0)

    asyncio.run(scenario())
