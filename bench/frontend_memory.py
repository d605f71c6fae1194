"""The frontend's resident memory under a flood of large requests, with and without the
admission's byte budgets.

The issue's shape: 16 concurrent 60 MiB Parse requests from one tenant, then from two:
bytes that are not a document (refused as soon as a worker reads them), and plain text
that needs more than the (here 3 s) parse CPU budget, so requests pile up in the queue. The frontend runs as its own process (mutual TLS); its VmRSS is sampled every
50 ms during the flood (peak) and read again after it has settled. ``budgets off`` sets
the byte budgets beyond reach (the old behaviour: only the request count is bounded);
``budgets on`` is the default (512 MiB total, 256 MiB per tenant).

    python bench/frontend_memory.py [--quick]
"""
from __future__ import annotations

import os
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import grpc

import common  # noqa: E402  (puts the project root on sys.path)

from percolate.reading.v1 import reading_pb2 as pb
from percolate.reading.v1 import reading_pb2_grpc

MIB = 1 << 20
SETTINGS = {
    "budgets off": {"PERCOLATE_READING_MAX_REQUEST_BYTES": str(1 << 40),
                    "PERCOLATE_READING_MAX_REQUEST_BYTES_PER_TENANT": str(1 << 40)},
    "budgets on": {},
}
SETTLE_S = 5.0



PAYLOADS = {
    # neither text nor a known format: refused as soon as a worker looks at it
    "invalid": lambda size: bytes([0xFF, 0xFE, 0x00]) * (size // 3),
    # plain text that takes longer than the CPU budget: requests stay queued (full queue)
    "slow text": lambda size: b"word " * (size // 5),
}
CPU_BUDGET_S = "3"
"""The parse CPU budget for this benchmark, so slow requests end quickly."""


def flood(frontend: common.FrontendProcess, tenants: tuple[str, ...], count: int,
          payload: bytes) -> Counter:
    outcomes: Counter = Counter()
    channels = {t: frontend.channel(t) for t in tenants}
    try:
        stubs = {t: reading_pb2_grpc.ReadingServiceStub(c) for t, c in channels.items()}

        def one(index: int) -> str:
            try:
                stubs[tenants[index % len(tenants)]].Parse(pb.ParseRequest(content=payload),
                                                           timeout=600)
                return "OK"
            except grpc.RpcError as error:
                return error.code().name

        with ThreadPoolExecutor(count) as pool:
            for outcome in pool.map(one, range(count)):
                outcomes[outcome] += 1
    finally:
        for channel in channels.values():
            channel.close()
    return outcomes


def run(name: str, env: dict[str, str], count: int, size: int) -> dict:
    saved = dict(os.environ)
    os.environ.update(env)  # the frontend process reads its budgets from the environment
    os.environ["PERCOLATE_READING_PARSE_CPU_BUDGET_S"] = CPU_BUDGET_S
    try:
        return _run(name, count, size)
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _run(name: str, count: int, size: int) -> dict:
    with common.FrontendProcess("127.0.0.1:1") as frontend:
        pid = frontend.process.pid
        flood(frontend, ("bench-a",), 1, PAYLOADS["invalid"](MIB))  # warm-up: workers up
        idle = common.rss_mb(pid)
        result = {"idle_mb": idle}
        for kind, tenants in [(kind, tenants) for kind in PAYLOADS
                              for tenants in (("bench-a",), ("bench-a", "bench-b"))]:
            payload = PAYLOADS[kind](size)
            peak, stop = [0.0], threading.Event()

            def sample() -> None:
                while not stop.is_set():
                    peak[0] = max(peak[0], common.rss_mb(pid))
                    time.sleep(0.05)
            sampler = threading.Thread(target=sample)
            sampler.start()
            outcomes = flood(frontend, tenants, count, payload)
            del payload
            stop.set()
            sampler.join()
            time.sleep(SETTLE_S)
            label = f"{kind}, {len(tenants)} tenant(s)"
            result[label] = {"peak_mb": peak[0], "settled_mb": common.rss_mb(pid),
                             "outcomes": dict(outcomes)}
            print(f"{name}, {label}: {dict(outcomes)}", flush=True)
    return result


def main() -> None:
    args = common.arguments(__doc__)
    count, size = (8, 60 * MIB) if args.quick else (16, 60 * MIB)
    results = {name: run(name, extra, count, size) for name, extra in SETTINGS.items()}
    rows = []
    for name, r in results.items():
        for label in [k for k in r if k != "idle_mb"]:
            rows.append([name, label, r["idle_mb"], r[label]["peak_mb"], r[label]["settled_mb"],
                         ", ".join(f"{k} {v}" for k, v in sorted(r[label]["outcomes"].items()))])
    common.print_table(f"{count} concurrent Parse requests of {size // MIB} MiB",
                       ["setting", "payload, tenants", "idle MB", "peak MB", "settled MB", "outcomes"], rows)
    common.write_results("frontend_memory", {"requests": count, "bytes": size, "results": results})


if __name__ == "__main__":
    main()
