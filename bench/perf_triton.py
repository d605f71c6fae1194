"""Triton serving throughput and latency of ``text_embedding``, measured by perf_analyzer.

Starts a real Triton on the model repository, writes real tokenised sentences (padded
to one length bucket, SEQ_LEN tokens) as perf_analyzer ``--input-data``, and runs
``perf_analyzer -b BATCH`` over gRPC once per concurrency level (1, 2, 4, 8 requests in
flight). perf_analyzer repeats its measurement window until three windows in a row agree.

How to read it: ``infer/s`` is sentences embedded per second (requests/s x batch);
p50/p99 ms are client-side latencies of one request of BATCH sentences, network and
Triton queueing included. Throughput that stops growing with concurrency while latency
climbs means the server is saturated (on a small CPU box that comes early). Absolute
numbers depend on the machine; compare levels within one run.
"""
from __future__ import annotations

import csv
import ctypes
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from common import arguments, print_table, write_results

from percolate_models.accuracy import sample_sentences
from percolate_models.paths import ProjectPaths
from percolate_triton.server import TritonConfig, TritonServer
from reading_frontend.text import TextTokenizer, TokenizedBatch

MODEL = "text_embedding"
SEQ_LEN = 32
ENTRIES = 64
CONCURRENCY = (1, 2, 4, 8)
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


def write_input_data(folder: Path) -> tuple[Path, TokenizedBatch]:
    """ENTRIES distinct sentences, each padded to SEQ_LEN tokens, one sample per entry."""
    tokenizer = TextTokenizer(ProjectPaths.from_env().assets / MODEL / "tokenizer.json")
    candidates = sample_sentences(4 * ENTRIES, seed=0)
    counts = tokenizer.encode(candidates).token_counts
    texts = [t for t, c in zip(candidates, counts) if c <= SEQ_LEN][:ENTRIES]
    batch = tokenizer.encode(texts)
    assert batch.input_ids.shape == (ENTRIES, SEQ_LEN), batch.input_ids.shape
    data = [{"input_ids": {"content": ids.tolist(), "shape": [SEQ_LEN]},
             "attention_mask": {"content": mask.tolist(), "shape": [SEQ_LEN]}}
            for ids, mask in zip(batch.input_ids, batch.attention_mask)]
    path = folder / "input_data.json"
    path.write_text(json.dumps({"data": data}))
    return path, batch


def warm_up(url: str, batch: TokenizedBatch, size: int, requests: int = 5) -> None:
    """A few requests first, so the first level does not measure the model's warm-up."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    try:
        for _ in range(requests):
            inputs = []
            for name, array in (("input_ids", batch.input_ids[:size]),
                                ("attention_mask", batch.attention_mask[:size])):
                tensor = grpcclient.InferInput(name, list(array.shape), "INT64")
                tensor.set_data_from_numpy(array)
                inputs.append(tensor)
            client.infer(MODEL, inputs)
    finally:
        client.close()


def run_level(binary: str, env: dict, url: str, batch: int, concurrency: int,
              input_data: Path, folder: Path, settings: dict) -> tuple[list[str], dict]:
    report = folder / f"c{concurrency}.csv"
    command = [binary, "-m", MODEL, "-u", url, "-i", "grpc", "-b", str(batch),
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
                     "server_queue_ms": round(float(row["Server Queue"]) / 1000, 3),
                     "server_infer_ms": round(float(row["Server Compute Infer"]) / 1000, 3)}


def main() -> None:
    args = arguments(__doc__.splitlines()[0],
                     batch={"type": int, "default": 8, "help": "sentences per request (-b)"})
    settings = SETTINGS["quick" if args.quick else "full"]
    binary, env = perf_analyzer_env()
    levels, commands = [], []
    with tempfile.TemporaryDirectory(prefix="perf_triton-") as tmp, \
            TritonServer(TritonConfig.from_env()) as triton:
        folder = Path(tmp)
        input_data, batch = write_input_data(folder)
        warm_up(triton.grpc_url, batch, args.batch)
        for concurrency in CONCURRENCY:
            command, result = run_level(binary, env, triton.grpc_url, args.batch,
                                        concurrency, input_data, folder, settings)
            commands.append(" ".join(command))
            levels.append({"concurrency": concurrency, **result})
    rows = [[l["concurrency"], l["infer_per_s"], l["requests_per_s"], l["p50_ms"], l["p99_ms"]]
            if "error" not in l else [l["concurrency"], "failed", "-", "-", "-"]
            for l in levels]
    print_table(f"perf_analyzer, {MODEL}, gRPC, batch {args.batch} x {SEQ_LEN} tokens",
                ["concurrency", "infer/s", "requests/s", "p50 ms", "p99 ms"], rows)
    write_results("perf_triton", {
        "quick": args.quick, "model": MODEL, "protocol": "grpc", "batch": args.batch,
        "sequence_length": SEQ_LEN, "input_entries": ENTRIES, "measurement": settings,
        "levels": levels, "commands": commands,
        "note": "input-data file lives in a temporary folder deleted after the run",
    })


if __name__ == "__main__":
    main()
