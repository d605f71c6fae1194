"""Running perf_analyzer (from the tritonclient wheel) and reading its CSV report.

Shared by ``perf_triton.py`` (Triton itself) and ``perf_frontend.py`` (the reading
frontend's KServe v2 facade over mutual TLS).
"""
from __future__ import annotations

import csv
import ctypes
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

SETTINGS = {  # measurement window (ms), most windows per level, stability (%)
    "full": {"interval_ms": 5000, "max_trials": 8, "stability_pct": 10},
    "quick": {"interval_ms": 1000, "max_trials": 6, "stability_pct": 20},
}


def perf_analyzer_env() -> tuple[str, dict[str, str]]:
    """The binary and an environment whose LD_LIBRARY_PATH holds libcudart; exit 2 if absent."""
    binary = Path(sys.executable).parent / "perf_analyzer"
    if not binary.exists():
        binary = Path(shutil.which("perf_analyzer") or binary)
    spec = importlib.util.find_spec("nvidia.cuda_runtime")
    cudart = [Path(p) / "lib" for p in (spec.submodule_search_locations or [])] if spec else []
    cudart = [p for p in cudart if any(p.glob("libcudart.so.12*"))]
    try:
        ctypes.CDLL("libb64.so.0d")
        have_b64 = True
    except OSError:
        have_b64 = False
    if not binary.exists() or not cudart or not have_b64:
        print("perf_analyzer, libcudart (nvidia-cuda-runtime-cu12) or libb64 is missing: "
              "run `make setup`")
        sys.exit(2)
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        p for p in (str(cudart[0]), env.get("LD_LIBRARY_PATH", "")) if p)
    return str(binary), env


def run_level(binary: str, env: dict, target: list[str], concurrency: int, input_data: Path,
              folder: Path, settings: dict, batch: int = 1) -> tuple[list[str], dict]:
    """One perf_analyzer run at ``concurrency``; ``target`` is the model name then any
    connection flags (``-u URL``, TLS, ``-b``, ``--shape``)."""
    report = folder / f"c{concurrency}.csv"
    command = [binary, "-m", *target, "-i", "grpc",
               "--concurrency-range", f"{concurrency}:{concurrency}",
               "--input-data", str(input_data),
               "--measurement-mode", "time_windows",
               "-p", str(settings["interval_ms"]), "-r", str(settings["max_trials"]),
               "-s", str(settings["stability_pct"]), "-f", str(report)]
    limit = 60 + 2 * settings["interval_ms"] * settings["max_trials"] / 1000
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        return command, {"error": f"perf_analyzer did not finish within {limit:.0f} s"}
    if done.returncode != 0 or not report.exists():
        lines = (done.stderr.strip() or done.stdout).splitlines()
        tail = [line.strip() for line in lines if line.strip()][-5:]
        print(f"perf_analyzer failed at concurrency {concurrency} (exit {done.returncode}):")
        print("\n".join("  " + line for line in tail))
        return command, {"error": f"exit {done.returncode}: " + " | ".join(tail)}
    with report.open() as handle:
        row = next(csv.DictReader(handle))
    infer_s = float(row["Inferences/Second"])
    return command, {"infer_per_s": round(infer_s, 1),
                     "requests_per_s": round(infer_s / batch, 1),
                     "p50_ms": round(float(row["p50 latency"]) / 1000, 3),
                     "p90_ms": round(float(row["p90 latency"]) / 1000, 3),
                     "p99_ms": round(float(row["p99 latency"]) / 1000, 3),
                     "server_queue_ms": round(float(row.get("Server Queue") or 0) / 1000, 3),
                     "server_infer_ms": round(float(row.get("Server Compute Infer") or 0) / 1000, 3)}


def level_rows(levels: list[dict]) -> list[list]:
    """Table rows (concurrency, infer/s, requests/s, p50, p99) for ``print_table``."""
    return [[l["concurrency"], l["infer_per_s"], l["requests_per_s"], l["p50_ms"], l["p99_ms"]]
            if "error" not in l else [l["concurrency"], "failed", "-", "-", "-"] for l in levels]
