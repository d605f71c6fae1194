"""Sentence embedding throughput: the full path and Triton vs onnxruntime in process vs
sentence-transformers.

The same sentences (2,048; 512 with --quick) go through
  (f) the full path: Embed over mutual TLS to the reading frontend (its own process),
      which tokenises, pads to length buckets and calls Triton; 32 texts per request,
      1, 2 and 4 concurrent clients (the clients share these 2 cores with the servers);
  (a) Triton's ``text_embedding`` over gRPC, tokenised in the client, batch 32, with
      1 and 4 concurrent clients (the dynamic batcher merges their requests);
  (b) onnxruntime in this process on the same ``model.onnx`` Triton serves;
  (c) sentence-transformers in this process (the reference), batch 32, with torch's default
      threads (one per core) and with 1 thread: on a shared machine whose other jobs take
      part of a core, torch's 2-thread OpenMP barriers collapse (40 against 164 sentences/s
      at 1 thread, measured here), so the ratios are to the faster of the two, the
      reference at its best.
Rounds go round robin (one pass of every system, then the next round), so a burst of load
from other processes on a shared machine hits every system alike; each figure is the median
of its rounds (3 with --quick, 5 without). Agreement is the cosine of each system's vectors
with (c)'s, row by row. Ratios are to (c) and to (b). The table's title names the variant
Triton serves (the build's choice, ``model_assets/manifest.json``). The "short" columns are
each system's cosine to (c) on ``SHORT_TEXTS`` (one to three words, numbers, names, other
scripts: how users search), embedded once, untimed.

``--onnx NAME=PATH`` (repeatable) adds an in-process onnxruntime row for another ONNX file,
e.g. the fp32 export or an earlier build's int8_token from ``.cache/models/text_embedding/``,
timed in the same rounds so candidates compare side by side.

    python bench/embed.py [--quick] [--onnx NAME=PATH ...]
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import json
import statistics
import time

import numpy as np

import common  # noqa: E402  (puts the project root on sys.path)

from percolate_models.accuracy import SHORT_TEXTS, cosine_rows, sample_sentences
from percolate_models.catalog import MINILM
from percolate_models.paths import ProjectPaths
from percolate_models.sources import locate
from percolate_triton import TritonConfig, TritonServer
from reading_frontend.text import TextTokenizer, embed_texts, onnx_embed_fn
from reading_frontend.triton_models import TritonModels

BATCH = 32


def triton_embedder(url: str, tokenizer: TextTokenizer, clients: int):
    """Embed with ``clients`` threads, each with its own gRPC client, over slices."""
    connections = [TritonModels(url) for _ in range(clients)]

    def embed(sentences: list[str]) -> np.ndarray:
        share = -(-len(sentences) // clients)
        parts = [sentences[i:i + share] for i in range(0, len(sentences), share)]
        with ThreadPoolExecutor(clients) as pool:
            done = pool.map(lambda p: embed_texts(p[1], tokenizer, connections[p[0]].embed, BATCH),
                            enumerate(parts))
            return np.concatenate(list(done))

    return embed


def frontend_embedder(frontend: common.FrontendProcess, clients: int):
    """Embed over the full path with ``clients`` threads, one mTLS channel each."""
    from percolate.reading.v1 import reading_pb2 as pb
    from percolate.reading.v1 import reading_pb2_grpc

    stubs = [reading_pb2_grpc.ReadingServiceStub(frontend.channel()) for _ in range(clients)]

    def run_slice(index: int, texts: list[str]) -> np.ndarray:
        out = []
        for start in range(0, len(texts), BATCH):
            response = stubs[index].Embed(pb.EmbedRequest(texts=texts[start:start + BATCH]), timeout=120)
            out.append(np.array([e.values for e in response.embeddings], np.float32))
        return np.concatenate(out)

    def embed(sentences: list[str]) -> np.ndarray:
        # the same length-sorted batches as embed_texts gives (a) and (b)
        order = sorted(range(len(sentences)), key=lambda i: len(sentences[i]))
        share = -(-len(order) // clients)
        parts = [[sentences[i] for i in order[s:s + share]] for s in range(0, len(order), share)]
        with ThreadPoolExecutor(clients) as pool:
            vectors = np.concatenate(list(pool.map(lambda p: run_slice(*p), enumerate(parts))))
        result = np.empty_like(vectors)
        result[order] = vectors
        return result

    return embed


def main() -> None:
    args = common.arguments(__doc__.splitlines()[0], onnx={
        "action": "append", "default": [], "metavar": "NAME=PATH",
        "help": "also time this ONNX file in process (repeatable)"})
    count, rounds = (512, 3) if args.quick else (2048, 5)
    sentences = sample_sentences(count, seed=11)
    paths = ProjectPaths.from_env()
    tokenizer = TextTokenizer(paths.assets / "text_embedding" / "tokenizer.json")
    onnx_file = paths.model_repository / "text_embedding" / "1" / "model.onnx"

    from sentence_transformers import SentenceTransformer

    reference_model = SentenceTransformer(str(locate(MINILM)), device="cpu")
    onnx_run = onnx_embed_fn(onnx_file)
    import torch

    default_threads = torch.get_num_threads()

    def reference_at(threads: int):
        def encode(s: list[str]) -> np.ndarray:
            torch.set_num_threads(threads)
            try:
                return reference_model.encode(s, batch_size=BATCH)
            finally:
                torch.set_num_threads(default_threads)
        return encode

    systems = {
        "sentence-transformers (c)": reference_at(default_threads),
        "sentence-transformers, 1 thread (c)": reference_at(1),
        "onnxruntime in process (b)": lambda s: embed_texts(s, tokenizer, onnx_run, BATCH),
    }
    for named in args.onnx:
        name, _, path = named.partition("=")
        systems[f"onnxruntime in process, {name}"] = (
            lambda run: lambda s: embed_texts(s, tokenizer, run, BATCH))(onnx_embed_fn(path))
    with TritonServer(TritonConfig.from_env()) as triton, common.FrontendProcess(triton.grpc_url) as frontend:
        systems["full path, 1 client (f)"] = frontend_embedder(frontend, 1)
        systems["full path, 2 clients (f)"] = frontend_embedder(frontend, 2)
        systems["full path, 4 clients (f)"] = frontend_embedder(frontend, 4)
        systems["Triton, 1 client (a)"] = triton_embedder(triton.grpc_url, tokenizer, 1)
        systems["Triton, 4 clients (a)"] = triton_embedder(triton.grpc_url, tokenizer, 4)
        for embed in systems.values():  # warm-up: model load, thread pools, caches
            embed(sentences[:64])
        figures = {name: {"vectors": embed(sentences), "short": embed(SHORT_TEXTS), "rounds": []}
                   for name, embed in systems.items()}
        for _ in range(rounds):
            for name, embed in systems.items():
                started = time.perf_counter()
                embed(sentences)
                figures[name]["rounds"].append(len(sentences) / (time.perf_counter() - started))
        for fig in figures.values():
            fig["sentences_per_s"] = statistics.median(fig["rounds"])
    reference = max((figures["sentence-transformers (c)"], figures["sentence-transformers, 1 thread (c)"]),
                    key=lambda fig: fig["sentences_per_s"])
    onnx_ref = figures["onnxruntime in process (b)"]
    rows, results = [], {}
    for name, fig in figures.items():
        cosine = cosine_rows(fig["vectors"], reference["vectors"])
        short = cosine_rows(fig["short"], reference["short"])
        entry = {
            "sentences_per_s": round(fig["sentences_per_s"], 1),
            "rounds_sentences_per_s": [round(r, 1) for r in fig["rounds"]],
            "ratio_to_sentence_transformers": round(fig["sentences_per_s"] / reference["sentences_per_s"], 3),
            "ratio_to_onnxruntime": round(fig["sentences_per_s"] / onnx_ref["sentences_per_s"], 3),
            "cosine_to_reference_mean": round(float(cosine.mean()), 6),
            "cosine_to_reference_min": round(float(cosine.min()), 6),
            "short_texts_cosine_mean": round(float(short.mean()), 6),
            "short_texts_cosine_min": round(float(short.min()), 6),
        }
        results[name] = entry
        rows.append([name, entry["sentences_per_s"], f"{entry['ratio_to_sentence_transformers']:.2f}x",
                     f"{entry['ratio_to_onnxruntime']:.2f}x", entry["cosine_to_reference_mean"],
                     entry["cosine_to_reference_min"], entry["short_texts_cosine_mean"],
                     entry["short_texts_cosine_min"]])
    served = json.loads(paths.manifest.read_text())["models"]["text_embedding"]
    common.print_table(
        f"all-MiniLM-L6-v2, {count} sentences, batch {BATCH}, median of {rounds} rounds (round robin); "
        f"Triton serves {served['variant']} ({served.get('choice', {}).get('reason', '')[:40]}...)",
        ["system", "sentences/s", "vs best (c)", "vs (b)", "cos mean", "cos min", "short mean", "short min"],
        rows)
    common.write_results("embed", {"sentences": count, "rounds": rounds, "batch": BATCH,
                                   "model_file": str(onnx_file), "variant": served["variant"],
                                   "reference": next(n for n, f in figures.items() if f is reference),
                                   "choice": served.get("choice", {}), "systems": results})


if __name__ == "__main__":
    main()
