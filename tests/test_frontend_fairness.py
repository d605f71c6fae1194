"""One tenant's expensive documents cannot stall another tenant (issue 15, item 3).

A real frontend (mutual TLS, real Triton) with two parse workers, a 2 s parse CPU budget
and two admission slots. Tenant A sends three documents that each need far more CPU than
the budget; tenant B's small Embed must still be answered within its own deadline, A must
get RESOURCE_EXHAUSTED naming the budget (or DEADLINE_EXCEEDED), and once A's calls have
ended the parse workers must be idle: the processes that ran A's parses are gone.
"""
from __future__ import annotations

import urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from percolate.reading.v1 import reading_pb2 as pb
from percolate.reading.v1 import reading_pb2_grpc
from percolate_common.processes import wait_for
from tests.conftest import frontend_config, tenant_channel
from tests.pathological_docs import html_nested_divs

GENEROUS_S = 60.0


def metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"{name} not exported")


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture(scope="module")
def guarded(triton, pki, paths):
    from reading_frontend.embedded import EmbeddedReading

    config = frontend_config(triton, pki, max_in_flight=2, parse_workers=2, parse_cpu_budget_s=2)
    with EmbeddedReading(config, paths) as server:
        yield server


def test_pathological_parses_do_not_stall_another_tenants_embed(guarded, pki):
    pool = guarded.server.pipelines.parse_pool
    heavy = pb.ParseRequest(content=html_nested_divs(2_000_000), filename="deep.html")
    with tenant_channel(guarded, pki, "tenant-a") as a_channel, \
            tenant_channel(guarded, pki, "tenant-b") as b_channel, ThreadPoolExecutor(4) as calls:
        a = reading_pb2_grpc.ReadingServiceStub(a_channel)
        b = reading_pb2_grpc.ReadingServiceStub(b_channel)
        pids_before = set(pool.worker_pids())

        def parse(timeout: float):
            try:
                a.Parse(heavy, timeout=timeout)
                return grpc.StatusCode.OK, ""
            except grpc.RpcError as error:
                return error.code(), error.details() or ""

        # one with a short deadline first: it must be stopped when its deadline passes
        short = calls.submit(parse, 1.5)
        # On a loaded machine the 1.5 s can pass before the request reaches a worker; then it
        # never runs, which is right too. Whichever happens first decides what is expected below.
        first = wait_for(lambda: ("worker" if pool.busy >= 1 else "deadline" if short.done() else None),
                         "tenant A's first parse running in a worker, or its deadline passing")
        long = [calls.submit(parse, 120) for _ in range(2)]
        wait_for(lambda: pool.busy == 2, "both parse workers busy with tenant A's documents")

        embedded = b.Embed(pb.EmbedRequest(texts=[f"small text {i}" for i in range(8)]),
                           timeout=GENEROUS_S)  # raises DEADLINE_EXCEEDED if stalled
        assert len(embedded.embeddings) == 8

        code, _ = short.result()
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED
        outcomes = [future.result() for future in long]
        assert all(code == grpc.StatusCode.RESOURCE_EXHAUSTED for code, _ in outcomes), outcomes
        assert all("CPU budget of 2 s" in details and "PERCOLATE_READING_PARSE_CPU_BUDGET_S" in details
                   for _, details in outcomes), outcomes

    # A's calls have ended: no worker busy, none waiting, every worker that ran A's
    # documents stopped (so nothing burns CPU for a caller that is gone) and replaced
    wait_for(lambda: pool.busy == 0 and pool.waiting == 0, "the parse pool idle")
    stopped = 3 if first == "worker" else 2
    wait_for(lambda: pool.replaced >= stopped, f"the deadline and both budget overruns stopped {stopped} workers")
    wait_for(lambda: not any(alive(pid) for pid in pids_before), "A's worker processes gone")
    assert len(pool.worker_pids()) == 2
    assert metric(guarded.server.metrics_port, "percolate_reading_parse_workers_busy") == 0
    assert guarded.server.admission.in_flight == 0 and guarded.server.admission.bytes_held == 0


def test_small_parse_after_the_attack_is_served(guarded, pki):
    """The replaced workers parse normally."""
    with tenant_channel(guarded, pki, "tenant-b") as channel:
        stub = reading_pb2_grpc.ReadingServiceStub(channel)
        response = stub.Parse(pb.ParseRequest(content=b"# Notes\n\nA short paragraph."),
                              timeout=GENEROUS_S)
    assert response.format == "markdown" and response.chunks
