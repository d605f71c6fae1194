"""``percolate-reading serve``: run the reading frontend (optionally with its own Triton).

Configuration comes from ``PERCOLATE_READING_*`` variables; flags override them. On
SIGTERM or Ctrl-C the server drains (NOT_SERVING, no new work, in-flight work
finishes within the grace period) and exits.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from dataclasses import replace
from pathlib import Path

from percolate_models.errors import PercolateError

from .config import FrontendConfig
from .server import ReadingServer


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="percolate-reading", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve ReadingService, KServe v2, health and reflection")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--metrics-port", type=int)
    serve.add_argument("--triton-url", help="host:port of Triton's gRPC endpoint")
    serve.add_argument("--with-triton", action="store_true",
                       help="start the embedded Triton (CPU) on the built repository first")
    serve.add_argument("--tls-cert", type=Path)
    serve.add_argument("--tls-key", type=Path)
    serve.add_argument("--tls-client-ca", type=Path)
    serve.add_argument("--insecure", action="store_true",
                       help="PLAINTEXT, no client certificates: local experiments only")
    serve.add_argument("--max-in-flight", type=int)
    serve.add_argument("--drain-grace-s", type=float)
    return parser.parse_args(argv)


async def _serve(config: FrontendConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with ReadingServer(config) as server:
        print(f"reading service on {server.address} "
              f"({'PLAINTEXT' if config.insecure else 'mutual TLS'}), "
              f"metrics http://{config.host}:{server.metrics_port}/metrics, "
              f"Triton {config.triton_url}", flush=True)
        await stop.wait()
        print(f"draining (up to {config.drain_grace_s:.0f} s)", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides = {k: v for k, v in vars(args).items()
                 if k not in ("command", "with_triton", "insecure") and v is not None}
    config = replace(FrontendConfig.from_env(), **overrides)
    if args.insecure:
        config = replace(config, insecure=True)
    try:
        with contextlib.ExitStack() as stack:
            if args.with_triton:
                from percolate_triton import TritonConfig, TritonServer

                triton = stack.enter_context(TritonServer(TritonConfig.from_env()))
                config = replace(config, triton_url=triton.grpc_url,
                                 triton_metrics_url=triton.metrics_url)
                print(f"Triton ready on {triton.grpc_url}", flush=True)
            asyncio.run(_serve(config))
    except (PercolateError, ValueError) as err:
        print(f"percolate-reading: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
