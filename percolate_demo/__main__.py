"""``percolate-demo`` (``make demo``): the main job on the embedded default, end to end.

Starts a real Triton on CPU with the built model repository, embeds a few sentences
and ranks them against a question, OCRs a generated image, and prints what came back.
"""
from __future__ import annotations

import io
import sys
import time

import numpy as np

from percolate_models.build import verify
from percolate_models.errors import PercolateError
from percolate_models.paths import ProjectPaths
from percolate_triton import TritonConfig, TritonServer
from reading_frontend.ocr import load_character_list, run_ocr
from reading_frontend.text import TextTokenizer, embed_texts
from reading_frontend.triton_models import TritonModels

DOCUMENTS = [
    "Each tenant's memory is stored in RocksDB, encrypted with the tenant's own keys.",
    "The reading service parses PDF, DOCX and spreadsheets and sends scanned pages to OCR.",
    "Speech is transcribed by Whisper running inside Triton Inference Server.",
    "Our office plants need watering twice a week in summer.",
    "Mutual TLS certificates prove which tenant is calling the reading service.",
]
QUESTION = "How is my data kept private from other customers?"
OCR_LINES = [
    "Percolate reads scanned pages too.",
    "Invoice 2026-0042: total 1,337.00 EUR",
    "Private memory for every tenant",
]
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"


def heading(text: str) -> None:
    print(f"\n== {text} " + "=" * max(0, 72 - len(text)))


def demo_embeddings(models: TritonModels, paths: ProjectPaths) -> None:
    heading("Embeddings from Triton (text_embedding, all-MiniLM-L6-v2)")
    tokenizer = TextTokenizer(paths.assets / "text_embedding" / "tokenizer.json")
    started = time.perf_counter()
    vectors = embed_texts(DOCUMENTS + [QUESTION], tokenizer, models.embed)
    elapsed = time.perf_counter() - started
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    print(f"{len(vectors)} texts -> {vectors.shape[1]}-dimensional vectors in {elapsed * 1000:.0f} ms")
    print(f"question: {QUESTION!r}\nranked by cosine similarity:")
    scores = vectors[:-1] @ vectors[-1]
    for rank, index in enumerate(np.argsort(-scores), 1):
        print(f"  {rank}. {scores[index]:+.3f}  {DOCUMENTS[index]}")


def demo_ocr(models: TritonModels, paths: ProjectPaths) -> None:
    from PIL import Image, ImageDraw, ImageFont

    heading("OCR through Triton (ocr_det -> ocr_cls -> ocr_rec, PP-OCRv4)")
    image = Image.new("RGB", (1000, 360), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.truetype(FONT, 36)
    for row, line in enumerate(OCR_LINES):
        draw.text((50, 50 + row * 95), line, fill="black", font=font)
    sample = paths.cache / "demo" / "ocr_sample.png"
    sample.parent.mkdir(parents=True, exist_ok=True)
    image.save(sample)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    characters = load_character_list(paths.assets / "ocr" / "ppocr_keys.txt")
    started = time.perf_counter()
    lines = run_ocr(buffer.getvalue(), models.run_image_model, characters)
    elapsed = time.perf_counter() - started
    print(f"generated image {sample} ({image.width}x{image.height}), {len(lines)} lines "
          f"in {elapsed * 1000:.0f} ms:")
    for line in lines:
        (x, y) = line.box[0]
        print(f"  conf {line.confidence:.3f}  at ({x:4.0f},{y:4.0f})  {line.text}")
    found = {"".join(line.text.split()) for line in lines}
    matched = sum(1 for expected in OCR_LINES if "".join(expected.split()) in found)
    print(f"{matched} of {len(OCR_LINES)} drawn lines read back (spaces aside: PP-OCR drops some)")


def main() -> int:
    paths = ProjectPaths.from_env()
    problems = verify(paths)
    if problems:
        print(f"percolate-demo: {problems[0]}: run `make setup` first", file=sys.stderr)
        return 2
    heading("Starting Triton Inference Server (CPU, Python backend + onnxruntime)")
    started = time.perf_counter()
    try:
        with TritonServer(TritonConfig.from_env()) as triton, TritonModels(triton.grpc_url) as models:
            print(f"ready in {time.perf_counter() - started:.1f} s: grpc {triton.grpc_url}, "
                  f"metrics {triton.metrics_url}\nrepository {paths.model_repository}, log {triton.log_path}")
            demo_embeddings(models, paths)
            demo_ocr(models, paths)
            heading("Done")
            print("Triton stopped. Run `make test` for the test suite, "
                  "`python bench/embed.py` for the benchmark.")
    except PercolateError as err:
        print(f"percolate-demo: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
