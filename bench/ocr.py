"""OCR throughput and accuracy: the full path vs rapidocr-onnxruntime in process.

The same generated images (1200x800, five printed lines of known text; 24 images, 8
with --quick) go through
  (f) Ocr over mutual TLS to the reading frontend (its own process), which decodes,
      runs detection/classification/recognition on Triton and post-processes;
      1 and 2 concurrent clients; its large tensors reach Triton through shared memory
      (reading_frontend/triton_shm.py);
  (g) the same 1-client path with PERCOLATE_READING_TRITON_SHARED_MEMORY_MB=0, a second
      frontend sending every tensor over gRPC: what the shared memory saves;
  (p) diagnostic: reading_frontend.ocr in this process on the served graphs, run by
      the Python backend's own OnnxRuntimeModel with each model's config.pbtxt (so rows
      one at a time, parallel_rows and PERCOLATE_ORT_* as served): the models' own cost,
      without gRPC, Triton or the frontend;
  (p32) the same with the fp32 graphs (rapidocr's arithmetic) where the build's tune
      installed another variant (``fused``, percolate_models/graph_fusion.py): that
      variant's own gain;
  (r) rapidocr-onnxruntime in this process, the reference, with its defaults (onnxruntime
      threads on every core, spinning);
  (r1) the same at one onnxruntime thread: its spinning threads lose most when other jobs
      take part of a core (0.48 vs 0.79 images/s in one run here at a load average of 6-7
      on 2 CPUs), so ratios are also given to the faster of (r) and (r1).
Rounds are interleaved (r, r1, p, p32, f1, f2, g, r, ...) so that load from other work on a
shared machine falls on every system alike; figures are medians. Accuracy is
1 - edit distance / length of the known text, whitespace ignored (PP-OCR drops some
spaces), averaged over images. Triton's own statistics over the 1-client rounds split
each image's time into the three models' queue and compute; the rest is the frontend,
gRPC and the client.

    python bench/ocr.py [--quick]
"""
from __future__ import annotations

import json
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

import common  # noqa: E402  (puts the project root on sys.path)

from percolate_models.paths import ProjectPaths
from percolate_models.tune import character_errors
from percolate_triton import TritonConfig, TritonServer
from tests.ocr_pages import printed_pages

OCR_MODELS = ("ocr_det", "ocr_cls", "ocr_rec")


def make_images(count: int, seed: int = 3) -> list[tuple[bytes, str]]:
    """The bench pages (``tests/ocr_pages.py``): 1200x800, five printed lines, their text."""
    return printed_pages(count, seed)


def accuracy(found: list[str], expected: str) -> float:
    return max(0.0, 1 - character_errors(found, expected))


def in_process_pipeline(repository, graphs: dict | None = None):
    """reading_frontend.ocr on the repository's built graphs, run by the Python backend's
    own ``OnnxRuntimeModel`` (percolate_models/python_backend.py) under the stand-in
    ``triton_python_backend_utils`` (tests/pb_utils_standin) with each model's rendered
    config.pbtxt: the same sessions, row splitting, ``parallel_rows`` pairing (largest
    rows first, the remainder on the main session), arena settings and
    ``PERCOLATE_ORT_*`` overrides as the served models, one request per call. ``graphs``
    (model -> ONNX file) runs other files than the installed ones (another variant)."""
    import json
    import sys

    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2

    from percolate_models.paths import ProjectPaths
    from reading_frontend import ocr

    sys.path.insert(0, str(common.ROOT / "tests" / "pb_utils_standin"))
    import triton_python_backend_utils as pb_utils

    from percolate_models.python_backend import OnnxRuntimeModel

    def load(name: str) -> OnnxRuntimeModel:
        config = text_format.Parse((repository / name / "config.pbtxt").read_text(),
                                   model_config_pb2.ModelConfig())
        if graphs and name in graphs:  # an absolute path: OnnxRuntimeModel joins it to the version folder
            config.parameters["onnx_file"].string_value = str(graphs[name])
        model = OnnxRuntimeModel()
        model.initialize({"model_config": json.dumps(json_format.MessageToDict(
            config, preserving_proto_field_name=True)),
            "model_repository": str(repository / name), "model_version": "1"})
        return model

    models = {name: load(name) for name in OCR_MODELS}

    def infer(model: str, batch: np.ndarray) -> np.ndarray | tuple[np.ndarray, ...]:
        backend = models[model]
        request = pb_utils.ModelRequest([pb_utils.Tensor(backend.input_names[0], batch)])
        (response,) = backend.execute([request])
        if response.has_error():
            raise RuntimeError(f"{model}: {response.error().message()}")
        outputs = tuple(t.as_numpy() for t in response.output_tensors())
        return outputs[0] if len(outputs) == 1 else outputs  # ocr_rec: (best_class, best_probability)

    characters = ocr.load_character_list(ProjectPaths.from_env().assets / "ocr" / "ppocr_keys.txt")
    return lambda image: [line.text for line in ocr.run_ocr(image, infer, characters)]


def triton_stats(client) -> dict[str, dict[str, float]]:
    """Cumulative queue/compute nanoseconds and request counts of the OCR models."""
    stats = {}
    for model in client.get_inference_statistics(as_json=True)["model_stats"]:
        if model["name"] in OCR_MODELS:
            inference = model["inference_stats"]
            stats[model["name"]] = {
                part: float(inference[part].get("ns", 0))
                for part in ("queue", "compute_input", "compute_infer", "compute_output")}
            stats[model["name"]]["requests"] = float(inference["success"].get("count", 0))
    return stats


def main() -> None:
    args = common.arguments(__doc__.splitlines()[0])
    count, rounds = (8, 3) if args.quick else (24, 5)
    images = make_images(count)
    import tritonclient.grpc as grpcclient
    from rapidocr_onnxruntime import RapidOCR

    from percolate.reading.v1 import reading_pb2 as pb
    from percolate.reading.v1 import reading_pb2_grpc

    rapid = RapidOCR()
    rapid_1 = RapidOCR(intra_op_num_threads=1)

    def rapid_read(image: bytes, engine=rapid) -> list[str]:
        result = engine(image)[0] or []
        return [text for _, text, _ in result]

    config = TritonConfig.from_env()
    pipeline = in_process_pipeline(config.model_repository)
    paths = ProjectPaths.from_env()
    served = {name: json.loads(paths.manifest.read_text())["models"][name] for name in ("ocr_det", "ocr_rec")}
    pipeline_fp32 = in_process_pipeline(config.model_repository, {  # the gpu target's file is always fp32
        name: config.model_repository / name / "1" / "model.gpu.onnx" for name in served})
    with TritonServer(config) as triton, common.FrontendProcess(triton.grpc_url) as frontend, \
            common.FrontendProcess(triton.grpc_url, env={"PERCOLATE_READING_TRITON_SHARED_MEMORY_MB": "0"}) as grpc_only:
        stubs = [reading_pb2_grpc.ReadingServiceStub(frontend.channel()) for _ in range(2)]
        grpc_stub = reading_pb2_grpc.ReadingServiceStub(grpc_only.channel())
        stats_client = grpcclient.InferenceServerClient(triton.grpc_url)

        def full_read(image: bytes, client: int = 0) -> list[str]:
            return [line.text for line in stubs[client].Ocr(pb.OcrRequest(image=image), timeout=120).lines]

        def concurrent(clients: int):
            def run() -> list[list[str]]:
                with ThreadPoolExecutor(clients) as pool:
                    return list(pool.map(lambda item: full_read(item[1][0], item[0] % clients),
                                         enumerate(images)))
            return run

        systems = {
            "rapidocr in process (r)": lambda: [rapid_read(image) for image, _ in images],
            "rapidocr in process, 1 thread (r1)": lambda: [rapid_read(image, rapid_1) for image, _ in images],
            "pipeline in process (p)": lambda: [pipeline(image) for image, _ in images],
            "same, fp32 graphs (p32)": lambda: [pipeline_fp32(image) for image, _ in images],
            "full path, 1 client (f)": concurrent(1),
            "full path, 2 clients (f)": concurrent(2),
            "same, 1 client, gRPC only (g)": lambda: [
                [line.text for line in grpc_stub.Ocr(pb.OcrRequest(image=image), timeout=120).lines]
                for image, _ in images],
        }
        found = {name: run() for name, run in systems.items()}  # warm-up, and what each reads
        rates: dict[str, list[float]] = {name: [] for name in systems}
        one_client = "full path, 1 client (f)"
        spent = {model: dict.fromkeys(("queue", "compute_input", "compute_infer", "compute_output",
                                       "requests"), 0.0) for model in OCR_MODELS}
        load = [os.getloadavg()[0]]
        for _ in range(rounds):
            for name, run in systems.items():
                before = triton_stats(stats_client)
                started = time.perf_counter()
                run()
                rates[name].append(len(images) / (time.perf_counter() - started))
                if name == one_client:  # Triton's share of the 1-client rounds only
                    after = triton_stats(stats_client)
                    for model, parts in spent.items():
                        for part in parts:
                            parts[part] += after[model][part] - before[model][part]
            load.append(os.getloadavg()[0])
        full_images = rounds * len(images)
        stages = {model: {part: round(value / 1e6 / full_images, 1) for part, value in parts.items()
                          if part != "requests"} for model, parts in spent.items()}
        for model, parts in spent.items():
            stages[model]["requests_per_image"] = round(parts["requests"] / full_images, 2)
    figures = {}
    for name in systems:
        figures[name] = {
            "images_per_s": round(statistics.median(rates[name]), 3),
            "rounds": [round(r, 3) for r in rates[name]],
            "accuracy": round(float(np.mean([accuracy(f, e) for f, (_, e) in zip(found[name], images)])), 5)}
    reference = figures["rapidocr in process (r)"]
    best = max(reference["images_per_s"], figures["rapidocr in process, 1 thread (r1)"]["images_per_s"])
    rows = []
    for name, fig in figures.items():
        fig["ratio_to_rapidocr"] = round(fig["images_per_s"] / reference["images_per_s"], 3)
        fig["ratio_to_faster_rapidocr"] = round(fig["images_per_s"] / best, 3)
        rows.append([name, fig["images_per_s"], f"{fig['ratio_to_rapidocr']:.2f}x",
                     f"{fig['ratio_to_faster_rapidocr']:.2f}x", fig["accuracy"]])
    variants = ", ".join(f"{name} {record['variant']}" for name, record in served.items())
    common.print_table(f"PP-OCRv4, {count} generated 1200x800 images, median of {rounds} interleaved rounds "
                       f"(1-minute load average {min(load):.1f}-{max(load):.1f} on {os.cpu_count()} CPUs); "
                       f"served: {variants}",
                       ["system", "images/s", "vs (r)", "vs faster of (r), (r1)", "char accuracy"], rows)
    one_client_ms = 1000 / figures["full path, 1 client (f)"]["images_per_s"]
    stage_rows = [[model, s["queue"], s["compute_input"] + s["compute_output"], s["compute_infer"],
                   s["requests_per_image"]] for model, s in sorted(stages.items())]
    common.print_table(f"Triton per image in the 1-client rounds (ms; one image took {one_client_ms:.0f} ms "
                       "in all: the rest is the frontend, gRPC and the client)",
                       ["model", "queue", "tensors in/out", "compute", "requests/image"], stage_rows)
    common.write_results("ocr", {"images": count, "rounds": rounds, "systems": figures,
                                 "served": {name: {"variant": record["variant"], "choice": record.get("choice", {})}
                                            for name, record in served.items()},
                                 "triton_ms_per_image_1_client": stages,
                                 "load_average_1min": [round(v, 2) for v in load]})


if __name__ == "__main__":
    main()
