"""``percolate-triton serve``: run Triton on the built model repository until stopped."""
from __future__ import annotations

import argparse
import signal
import sys
from dataclasses import replace
from pathlib import Path

from percolate_models.errors import PercolateError

from .server import TritonConfig, TritonServer


EXIT_TRITON_DIED = 3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="percolate-triton", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="start Triton, wait for every model READY, serve until Ctrl-C")
    serve.add_argument("--model-repository", type=Path)
    serve.add_argument("--grpc-port", type=int)
    serve.add_argument("--http-port", type=int)
    serve.add_argument("--metrics-port", type=int)
    serve.add_argument("--host")
    serve.add_argument("--model-config-name", help="e.g. gpu, for configs/gpu.pbtxt")
    args = parser.parse_args(argv)
    config = TritonConfig.from_env()
    overrides = {k: v for k, v in vars(args).items() if k != "command" and v is not None}
    config = replace(config, **overrides)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # unwinds the context manager
    try:
        with TritonServer(config) as triton:
            print(f"Triton ready: grpc {triton.grpc_url}, http {triton.http_url}, "
                  f"metrics {triton.metrics_url}", flush=True)
            print(f"repository {config.model_repository}; log {triton.log_path}; Ctrl-C stops it",
                  flush=True)
            code = triton.process.wait()  # SIGTERM and Ctrl-C interrupt this and unwind
            # Triton died under us (killed, crashed): leaving the context stops its backend
            # stubs, and a non-zero exit lets the orchestrator restart the whole thing
            print(f"percolate-triton: tritonserver exited unexpectedly with code {code}; "
                  f"see {triton.log_path}", file=sys.stderr)
            return EXIT_TRITON_DIED
    except PercolateError as err:
        print(f"percolate-triton: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
