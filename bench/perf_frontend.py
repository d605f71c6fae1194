"""perf_analyzer against the reading frontend's KServe v2 facade, over mutual TLS.

Starts Triton and the frontend (its own process, dev certificates), then runs
perf_analyzer on the pipeline model ``embed_text`` with a tenant's client certificate
at concurrency 1, 4 and 16. Each request carries BATCH real sentences as BYTES; the
frontend tokenises them, admits the request fairly and calls Triton, so the figures
cover the whole path a tenant node sees. ``infer/s`` counts requests here (the facade
has max_batch_size 0), so sentences/s = infer/s x BATCH.

    python bench/perf_frontend.py [--quick] [--batch N]
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

from common import FrontendProcess, arguments, print_table, write_results
from perf_analyzer import SETTINGS, perf_analyzer_env, run_level

from percolate_models.accuracy import sample_sentences
from percolate_triton import TritonConfig, TritonServer

MODEL = "embed_text"
CONCURRENCY = (1, 4, 16)
ENTRIES = 32


def write_input_data(folder: Path, batch: int) -> Path:
    sentences = sample_sentences(ENTRIES * batch, seed=1)
    data = [{"TEXT": {"content": sentences[i * batch:(i + 1) * batch], "shape": [batch]}}
            for i in range(ENTRIES)]
    path = folder / "input_data.json"
    path.write_text(json.dumps({"data": data}))
    return path


def main() -> None:
    args = arguments(__doc__.splitlines()[0],
                     batch={"type": int, "default": 8, "help": "sentences per request"})
    settings = SETTINGS["quick" if args.quick else "full"]
    binary, env = perf_analyzer_env()
    levels, commands = [], []
    with tempfile.TemporaryDirectory(prefix="perf_frontend-") as tmp, \
            TritonServer(TritonConfig.from_env()) as triton, \
            FrontendProcess(triton.grpc_url, extra_args=("--max-in-flight", "8")) as frontend:
        folder = Path(tmp)
        input_data = write_input_data(folder, args.batch)
        tenant = frontend.pki.tenants["bench-a"]
        target = [MODEL, "-u", frontend.address, "--ssl-grpc-use-ssl",
                  "--ssl-grpc-root-certifications-file", str(tenant.ca),
                  "--ssl-grpc-private-key-file", str(tenant.key),
                  "--ssl-grpc-certificate-chain-file", str(tenant.cert)]
        for concurrency in CONCURRENCY:
            command, result = run_level(binary, env, target, concurrency, input_data, folder, settings)
            commands.append(" ".join(command))
            if "error" not in result:
                result["sentences_per_s"] = round(result["infer_per_s"] * args.batch, 1)
            levels.append({"concurrency": concurrency, **result})
    rows = [[l["concurrency"], l["infer_per_s"], l["sentences_per_s"], l["p50_ms"], l["p99_ms"]]
            if "error" not in l else [l["concurrency"], "failed", "-", "-", "-"] for l in levels]
    print_table(f"perf_analyzer -> frontend (mTLS) -> Triton, {MODEL}, {args.batch} sentences/request",
                ["concurrency", "requests/s", "sentences/s", "p50 ms", "p99 ms"], rows)
    write_results("perf_frontend", {"quick": args.quick, "model": MODEL, "batch": args.batch,
                                    "measurement": settings, "levels": levels, "commands": commands})


if __name__ == "__main__":
    main()
