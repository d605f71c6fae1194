"""Benchmark conventions shared by every ``bench/<name>.py``.

Each script takes ``--quick``, runs the reference systems side by side in the same
run on the same data, prints a table, and writes ``bench/results/<name>.json``
(figures, medians of several rounds, ratios to the reference). Nothing here asserts
timings: these machines are noisy, so compare ratios, not absolute numbers.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def arguments(description: str, **extra: dict) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="fewer items and rounds (about a minute)")
    for name, options in extra.items():
        parser.add_argument(f"--{name.replace('_', '-')}", **options)
    return parser.parse_args()


def median_rate(work: Callable[[], int], rounds: int) -> tuple[float, list[float]]:
    """Median items/s of ``rounds`` runs of ``work`` (which returns the items it did)."""
    rates = []
    for _ in range(rounds):
        started = time.perf_counter()
        items = work()
        rates.append(items / (time.perf_counter() - started))
    return statistics.median(rates), rates


def rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` in MiB (0 once it has exited)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return 0.0


def print_table(title: str, columns: list[str], rows: list[list]) -> None:
    cells = [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print(f"\n{title}")
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(v.rjust(w) if _numeric(v) else v.ljust(w) for v, w in zip(row, widths)))


def write_results(name: str, data: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    data = {"benchmark": name, "machine": {"python": platform.python_version(),
                                           "processor": platform.processor(),
                                           "cpus": _cpus()},
            "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **data}
    path.write_text(json.dumps(data, indent=2) + "\n")
    print(f"\nresults written to {path}")
    return path


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:,.1f}"
    return str(value)


def _numeric(text: str) -> bool:
    return text.replace(",", "").replace(".", "", 1).replace("x", "").lstrip("-").isdigit()


class FrontendProcess:
    """The reading frontend as its own process (as deployed), with dev certificates.

    Benchmarks run it apart from the client so the two do not share one interpreter.
    """

    def __init__(self, triton_url: str, tenants: tuple[str, ...] = ("bench-a", "bench-b"),
                 extra_args: tuple[str, ...] = (), env: dict[str, str] | None = None) -> None:
        from percolate_certs.ca import dev_pki
        from percolate_models.paths import ProjectPaths

        self.pki = dev_pki(ProjectPaths.from_env().cache / "bench" / "pki", tenants)
        self.triton_url = triton_url
        self.extra_args = extra_args
        self.env = env or {}
        """More environment (``PERCOLATE_READING_*`` settings) for the frontend."""
        self.process = None
        self.address = ""

    def __enter__(self) -> "FrontendProcess":
        import subprocess

        server = self.pki.server
        command = [sys.executable, "-m", "reading_frontend.cli", "serve", "--port", "0",
                   "--metrics-port", "-1", "--triton-url", self.triton_url,
                   "--tls-cert", str(server.cert), "--tls-key", str(server.key),
                   "--tls-client-ca", str(self.pki.ca.cert), *self.extra_args]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                        text=True, cwd=ROOT, env={**os.environ, **self.env})
        for line in self.process.stdout:
            if line.startswith("reading service on "):
                self.address = line.split()[3]
                return self
        raise RuntimeError("the reading frontend did not start; run it by hand to see why: "
                           + " ".join(command))

    def channel(self, tenant: str = "bench-a"):
        import grpc

        from percolate_certs.tls import channel_credentials

        creds = self.pki.tenants[tenant]
        return grpc.secure_channel(self.address, channel_credentials(creds.ca, creds.cert, creds.key))

    def __exit__(self, *exc) -> None:
        import signal

        if self.process is not None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=60)
