"""Resident memory of the serving stack before and after a burst, per process and model.

The issue's shape: 16 concurrent OCRs (each page a different size, so every call is a
new input shape) and 800 Embeds from 16 clients, through the frontend (its own process,
mutual TLS) into Triton. Resident memory (VmRSS, shared memory included) of tritonserver,
each model's Python-backend stub and the frontend is read from /proc at idle (after one
warm-up call of each kind), right after the burst, and after it has settled.

Three runs side by side on the same machine (percolate_models/python_backend.py):
``arena on`` is the old onnxruntime setting (CPU memory arena and memory patterns on, no
trim); ``arena off`` has both off and trims the heap after large batches;
``arena+shrink`` (the default) keeps the arena (fast for repeated shapes), memory
patterns off, and shrinks the arena after each large run
(``memory.enable_memory_arena_shrinkage``), then trims; ``ocr_det`` and ``ocr_rec`` shrink
once idle for ``shrink_idle_s`` (1 s) instead, which the settle time covers. The burst's wall time is printed too: memory is not the only cost.

``--weights`` compares instead, with the default memory settings, the served Whisper
graphs (``whisper_encoder``, ``whisper_decoder``, ``whisper_decoder_with_past``: on the cpu
target only a direct call uses them) loading their weights ``at_load`` (before) against
``on_first_request`` (the default there), two runs of each, alternating; then one
direct call of each of the three (a zero window through the encoder and the first
decoder step, one step of the step decoder) and their stubs' memory after it.

    python bench/model_memory.py [--quick] [--weights]
"""
from __future__ import annotations

import dataclasses
import io
import os
import random
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

import common  # noqa: E402  (puts the project root on sys.path)

from percolate.reading.v1 import reading_pb2 as pb
from percolate.reading.v1 import reading_pb2_grpc
from percolate_triton import TritonConfig, TritonServer
from percolate_triton.server import python_backend_stubs

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
SETTINGS = {
    "arena on": {"PERCOLATE_ORT_CPU_MEM_ARENA": "1", "PERCOLATE_ORT_MEM_PATTERN": "1",
                 "PERCOLATE_ORT_ARENA_SHRINK": "0", "PERCOLATE_ORT_MALLOC_TRIM": "0"},
    "arena off": {"PERCOLATE_ORT_CPU_MEM_ARENA": "0", "PERCOLATE_ORT_MEM_PATTERN": "0",
                  "PERCOLATE_ORT_MALLOC_TRIM": "1"},
    "arena+shrink": {"PERCOLATE_ORT_CPU_MEM_ARENA": "1", "PERCOLATE_ORT_MEM_PATTERN": "0",
                     "PERCOLATE_ORT_ARENA_SHRINK": "1", "PERCOLATE_ORT_MALLOC_TRIM": "1"},
}
SETTLE_S = 5.0
WEIGHTS = {"weights at load": {**SETTINGS["arena+shrink"], "PERCOLATE_ORT_LOAD_WEIGHTS": "at_load"},
           "on first request": {**SETTINGS["arena+shrink"], "PERCOLATE_ORT_LOAD_WEIGHTS": "on_first_request"}}


def page(index: int) -> bytes:
    """A text page of its own size (a new input shape for the detector each time)."""
    rng = random.Random(index)
    width, height = 1000 + 37 * index, 1300 + 53 * index
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.truetype(FONT, 32)
    words = "invoice total meadow copper harbor lantern summit voyage cedar island".split()
    for row in range(12):
        draw.text((60, 60 + row * 90), " ".join(rng.choice(words) for _ in range(6)), font=font,
                  fill="black")
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()



def stack(triton_pid: int, frontend_pid: int) -> dict[str, int]:
    """name -> pid: tritonserver, each model's stub, the frontend."""
    return {"tritonserver": triton_pid, "frontend": frontend_pid,
            **{f"stub {model}": pid for model, pid in python_backend_stubs(triton_pid).items()}}


def measure(pids: dict[str, int]) -> dict[str, float]:
    values = {name: common.rss_mb(pid) for name, pid in pids.items()}
    values["total"] = sum(values.values())
    return values


def burst(frontend: common.FrontendProcess, pages: list[bytes], embeds: int) -> None:
    with frontend.channel() as channel:
        stub = reading_pb2_grpc.ReadingServiceStub(channel)
        texts = [f"sentence number {i} about the harbor and the lantern" for i in range(embeds)]
        with ThreadPoolExecutor(32) as pool:
            ocrs = [pool.submit(stub.Ocr, pb.OcrRequest(image=p), timeout=600) for p in pages]
            embedded = [pool.submit(stub.Embed, pb.EmbedRequest(texts=[t]), timeout=600)
                        for t in texts]
            for future in ocrs + embedded:
                future.result()


def linked_repository(source: Path, target: Path) -> Path:
    """The repository as a tree of symlinks: its own lock, so a Triton already serving the
    real one (a test run) does not stop the benchmark."""
    for path in source.rglob("*"):
        if path.is_file() and "__pycache__" not in path.parts:
            link = target / path.relative_to(source)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(path)
    return target


def call_whisper_graphs(grpc_url: str) -> None:
    """One direct call of each served Whisper graph, as perf_analyzer or a test would."""
    import numpy as np
    import tritonclient.grpc as grpcclient

    from percolate_models.catalog import WHISPER_DECODER_WITH_PAST

    def infer(model: str, feeds: dict, output: str):
        inputs = []
        for name, array in feeds.items():
            tensor = grpcclient.InferInput(name, list(array.shape),
                                           "INT64" if array.dtype == np.int64 else "FP32")
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        return client.infer(model, inputs, outputs=[grpcclient.InferRequestedOutput(output)],
                            client_timeout=300).as_numpy(output)

    client = grpcclient.InferenceServerClient(grpc_url)
    hidden = infer("whisper_encoder", {"input_features": np.zeros((1, 80, 3000), np.float32)},
                   "last_hidden_state")
    infer("whisper_decoder", {"input_ids": np.array([[50257, 50362]], np.int64),
                              "encoder_hidden_states": hidden}, "logits")
    past = {t.name: np.zeros((1, 6, 1500 if ".encoder." in t.name else 2, 64), np.float32)
            for t in WHISPER_DECODER_WITH_PAST.inputs if t.name.startswith("past_key_values.")}
    infer("whisper_decoder_with_past", {"input_ids": np.array([[50363]], np.int64), **past}, "logits")
    client.close()


def run(name: str, env: dict[str, str], pages: list[bytes], embeds: int,
        direct_calls: bool = False) -> dict[str, dict]:
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)  # tritonserver and its stubs inherit it
    config = TritonConfig.from_env()
    try:
        with tempfile.TemporaryDirectory() as folder, TritonServer(dataclasses.replace(
                config, model_repository=linked_repository(config.model_repository,
                                                           Path(folder) / "repo"))) as triton, \
                common.FrontendProcess(triton.grpc_url) as frontend:
            burst(frontend, pages[:1], 1)  # warm-up: every model loaded and run once
            pids = stack(triton.process.pid, frontend.process.pid)
            idle = measure(pids)
            started = time.perf_counter()
            burst(frontend, pages, embeds)
            took = time.perf_counter() - started
            peak = measure(pids)
            time.sleep(SETTLE_S)
            settled = measure(pids)
            if direct_calls:
                call_whisper_graphs(triton.grpc_url)
                called = measure(pids)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    print(f"{name}: burst took {took:.1f} s", flush=True)
    phases = {"idle": idle, "after burst": peak, "settled": settled}
    if direct_calls:
        phases["whisper graphs called"] = called
    return {**phases, "burst_s": took}


def main() -> None:
    args = common.arguments(__doc__, weights={
        "action": "store_true",
        "help": "the served Whisper graphs' weights at load vs on first request, instead"})
    count, embeds = (8, 200) if args.quick else (16, 800)
    pages = [page(i) for i in range(count)]
    if args.weights:
        weights(pages, embeds)
        return
    results = {name: run(name, env, pages, embeds) for name, env in SETTINGS.items()}
    names = sorted({n for r in results.values() for n in r["settled"]},
                   key=lambda n: (n == "total", n))
    rows = []
    for process in names:
        row = [process]
        for setting in SETTINGS:
            r = results[setting]
            row += [r["idle"].get(process, 0.0), r["after burst"].get(process, 0.0),
                    r["settled"].get(process, 0.0)]
        rows.append(row)
    columns = ["process (MB RSS)"] + [f"{s}: {phase}" for s in SETTINGS
                                      for phase in ("idle", "burst", "settled")]
    common.print_table(f"{count} concurrent OCRs + {embeds} Embeds", columns, rows)
    common.write_results("model_memory", {"ocrs": count, "embeds": embeds, "results": results})


def weights(pages: list[bytes], embeds: int) -> None:
    """``--weights``: two alternating runs of each ``WEIGHTS`` setting."""
    runs = [(f"{name} #{round_ + 1}", name) for round_ in range(2) for name in WEIGHTS]
    results = {label: run(label, WEIGHTS[name], pages, embeds, direct_calls=True)
               for label, name in runs}
    phases = ("idle", "settled", "whisper graphs called")
    names = sorted({n for r in results.values() for n in r["idle"]}, key=lambda n: (n == "total", n))
    rows = [[process] + [results[label][phase].get(process, 0.0) for label, _ in runs for phase in phases]
            for process in names]
    columns = ["process (MB RSS)"] + [f"{label}: {phase}" for label, _ in runs for phase in phases]
    common.print_table(f"{len(pages)} concurrent OCRs + {embeds} Embeds, then one call of each "
                       "Whisper graph", columns, rows)
    print(f"load average after: {os.getloadavg()}")
    common.write_results("model_memory_weights", {"ocrs": len(pages), "embeds": embeds,
                                                  "load_average_after": os.getloadavg(),
                                                  "results": results})


if __name__ == "__main__":
    main()
