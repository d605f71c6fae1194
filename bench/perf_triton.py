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

import json
import tempfile
from pathlib import Path

from common import arguments, print_table, write_results
from perf_analyzer import SETTINGS, level_rows, perf_analyzer_env, run_level

from percolate_models.accuracy import sample_sentences
from percolate_models.paths import ProjectPaths
from percolate_triton.server import TritonConfig, TritonServer
from reading_frontend.text import TextTokenizer, TokenizedBatch

MODEL = "text_embedding"
SEQ_LEN = 32
ENTRIES = 64
CONCURRENCY = (1, 2, 4, 8)


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
            command, result = run_level(
                binary, env, [MODEL, "-u", triton.grpc_url, "-b", str(args.batch)], concurrency,
                input_data, folder, settings, batch=args.batch)
            commands.append(" ".join(command))
            levels.append({"concurrency": concurrency, **result})
    print_table(f"perf_analyzer, {MODEL}, gRPC, batch {args.batch} x {SEQ_LEN} tokens",
                ["concurrency", "infer/s", "requests/s", "p50 ms", "p99 ms"], level_rows(levels))
    write_results("perf_triton", {
        "quick": args.quick, "model": MODEL, "protocol": "grpc", "batch": args.batch,
        "sequence_length": SEQ_LEN, "input_entries": ENTRIES, "measurement": settings,
        "levels": levels, "commands": commands,
        "note": "input-data file lives in a temporary folder deleted after the run",
    })


if __name__ == "__main__":
    main()
