"""OCR throughput and accuracy: the full path vs rapidocr-onnxruntime in process.

The same generated images (1200x800, five printed lines of known text; 24 images, 8
with --quick) go through
  (f) Ocr over mutual TLS to the reading frontend (its own process), which decodes,
      runs detection/classification/recognition on Triton and post-processes;
      1 and 2 concurrent clients;
  (r) rapidocr-onnxruntime in this process, the reference.
Figures are medians of several rounds; accuracy is 1 - edit distance / length of the
known text, whitespace ignored (PP-OCR drops some spaces), averaged over images.

    python bench/ocr.py [--quick]
"""
from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image, ImageDraw, ImageFont

import common  # noqa: E402  (puts the project root on sys.path)

from percolate_common.edit_distance import edit_distance
from percolate_triton import TritonConfig, TritonServer

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
WORDS = ("invoice total memory tenant private reading service triton chunk page table "
         "report quarterly storage encrypted keys search hybrid semantic node shared").split()


def make_images(count: int, seed: int = 3) -> list[tuple[bytes, str]]:
    rng = np.random.default_rng(seed)
    font = ImageFont.truetype(FONT, 44)
    images = []
    for _ in range(count):
        lines = [" ".join(rng.choice(WORDS, 4)).capitalize() + f" {rng.integers(10, 9999)}"
                 for _ in range(5)]
        image = Image.new("RGB", (1200, 800), "white")
        draw = ImageDraw.Draw(image)
        for row, line in enumerate(lines):
            draw.text((60, 70 + row * 140), line, fill="black", font=font)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        images.append((buffer.getvalue(), "".join("".join(lines).split())))
    return images


def accuracy(found: list[str], expected: str) -> float:
    text = "".join("".join(found).split())
    return max(0.0, 1 - edit_distance(text, expected) / len(expected))


def main() -> None:
    args = common.arguments(__doc__.splitlines()[0])
    count, rounds = (8, 2) if args.quick else (24, 3)
    images = make_images(count)
    from rapidocr_onnxruntime import RapidOCR

    from percolate.reading.v1 import reading_pb2 as pb
    from percolate.reading.v1 import reading_pb2_grpc

    rapid = RapidOCR()

    def rapid_read(image: bytes) -> list[str]:
        result = rapid(image)[0] or []
        return [text for _, text, _ in result]

    with TritonServer(TritonConfig.from_env()) as triton, common.FrontendProcess(triton.grpc_url) as frontend:
        stubs = [reading_pb2_grpc.ReadingServiceStub(frontend.channel()) for _ in range(2)]

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
            "full path, 1 client (f)": concurrent(1),
            "full path, 2 clients (f)": concurrent(2),
        }
        for run in systems.values():
            run()  # warm-up
        figures = {}
        for name, run in systems.items():
            found = run()
            rate, rates = common.median_rate(lambda: len(run()), rounds)
            figures[name] = {"images_per_s": round(rate, 3), "rounds": [round(r, 3) for r in rates],
                             "accuracy": round(float(np.mean([accuracy(f, e) for f, (_, e) in
                                                              zip(found, images)])), 5)}
    reference = figures["rapidocr in process (r)"]
    rows = []
    for name, fig in figures.items():
        fig["ratio_to_rapidocr"] = round(fig["images_per_s"] / reference["images_per_s"], 3)
        rows.append([name, fig["images_per_s"], f"{fig['ratio_to_rapidocr']:.2f}x", fig["accuracy"]])
    common.print_table(f"PP-OCRv4, {count} generated 1200x800 images, median of {rounds} rounds",
                       ["system", "images/s", "vs (r)", "char accuracy"], rows)
    common.write_results("ocr", {"images": count, "rounds": rounds, "systems": figures})


if __name__ == "__main__":
    main()
