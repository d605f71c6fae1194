"""Object stores for the durability tests: a local folder, and a real S3-protocol server
(moto's standalone ``moto_server`` over HTTP on 127.0.0.1, started once per test session)."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.request import Request, urlopen

from percolate_common.processes import stop_process

S3_ENV = {"AWS_ACCESS_KEY_ID": "percolate-test", "AWS_SECRET_ACCESS_KEY": "percolate-test-secret",
          "AWS_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MotoServer:
    """``moto_server`` in a subprocess (in memory; gone when it stops)."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        binary = Path(sys.executable).with_name("moto_server")
        self.process = subprocess.Popen([str(binary), "-H", "127.0.0.1", "-p", str(self.port)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                if self.process.poll() is not None:
                    raise RuntimeError("moto_server exited at start")
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("moto_server did not listen within 60 s")

    def create_bucket(self, name: str) -> None:
        import boto3

        boto3.client("s3", endpoint_url=self.endpoint, **_boto_args()).create_bucket(Bucket=name)

    def stop(self) -> None:
        stop_process(self.process)


def _boto_args() -> dict:
    return {"aws_access_key_id": S3_ENV["AWS_ACCESS_KEY_ID"], "aws_secret_access_key": S3_ENV["AWS_SECRET_ACCESS_KEY"],
            "region_name": S3_ENV["AWS_REGION"]}


def s3_options(endpoint: str) -> dict[str, str]:
    return {"endpoint": endpoint, "access_key_id": S3_ENV["AWS_ACCESS_KEY_ID"],
            "secret_access_key": S3_ENV["AWS_SECRET_ACCESS_KEY"], "region": S3_ENV["AWS_REGION"]}


def new_bucket(moto: MotoServer) -> str:
    name = f"percolate-{uuid.uuid4().hex[:12]}"
    moto.create_bucket(name)
    return name


class FlakyProxy:
    """An HTTP proxy in front of an S3 endpoint that answers every ``fail_every``-th request
    with 503 (a real socket and the real protocol; obstore and the agent must retry)."""

    def __init__(self, upstream: str, fail_every: int = 2) -> None:
        self.upstream = upstream
        self.count = 0
        self.failed = 0
        lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _forward(self):
                with lock:
                    outer.count += 1
                    fail = outer.count % fail_every == 0
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if fail:
                    outer.failed += 1
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                # urllib would label a body as a form, which the server then parses away
                headers.setdefault("Content-Type", "application/octet-stream")
                request = Request(outer.upstream + self.path, data=body, headers=headers, method=self.command)
                try:
                    response = urlopen(request, timeout=30)
                    status, data, reply_headers = response.status, response.read(), response.headers
                except Exception as error:  # HTTPError carries the upstream reply
                    status = getattr(error, "code", 502)
                    data = error.read() if hasattr(error, "read") else b""
                    reply_headers = getattr(error, "headers", {}) or {}
                self.send_response(status)
                for key, value in reply_headers.items():
                    if key.lower() not in ("content-length", "transfer-encoding", "connection", "server", "date"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def copy_tree(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst)


def env_with(values: dict[str, str]) -> dict[str, str]:
    return {**os.environ, **values}
