"""Benchmark conventions shared by every ``bench/<name>.py``.

Each script takes ``--quick``, runs the reference systems side by side in the same
run on the same data, prints a table, and writes ``bench/results/<name>.json``
(figures, medians of several rounds, ratios to the reference). Nothing here asserts
timings: these machines are noisy, so compare ratios, not absolute numbers.
"""
from __future__ import annotations

import argparse
import json
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
