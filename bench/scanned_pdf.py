"""Scanned PDFs: Parse over the full path with pages overlapping at OCR, one at a time, and rapidocr.

The same generated PDF (6 pages, --quick 4; each page only an image of five printed
lines of known text, as a scanner makes them) goes through
  (f2) Parse over mutual TLS to a reading frontend with ``ocr_pages_in_flight`` 2 (the
       default): its parse worker renders each page at 200 dpi and sends two pages ahead,
       so Triton detects text on one page while it recognises the lines of the other;
  (f1) the same with ``PERCOLATE_READING_OCR_PAGES_IN_FLIGHT=1``: one page at a time, as
       before; both frontends share one Triton and run as their own processes;
  (r)  rapidocr-onnxruntime in this process, the reference, on the same pages already
       rendered (the frontend's own rasteriser, outside the timing: the reference gets
       its rendering for free), page after page.
Rounds are interleaved (r, f1, f2, r, ...) so that load from other work falls on every
system alike; figures are medians of pages per second. Accuracy is 1 - edit distance /
length of the known text, whitespace ignored, over all pages.

    python bench/scanned_pdf.py [--quick]
"""
from __future__ import annotations

import contextlib
import io
import os
import statistics
import time

import numpy as np
from PIL import Image
from reportlab.lib.pagesizes import letter
from reportlab.lib.utils import ImageReader
from reportlab.pdfgen import canvas

import common  # noqa: E402  (puts the project root on sys.path)

from ocr import accuracy, make_images
from percolate_triton import TritonConfig, TritonServer

IN_FLIGHT_SETTING = "PERCOLATE_READING_OCR_PAGES_IN_FLIGHT"


def scanned_pdf(pages: list[bytes]) -> bytes:
    """One letter page per image, the image filling the page's width, no text layer."""
    out = io.BytesIO()
    pdf = canvas.Canvas(out, pagesize=letter)
    for png in pages:
        image = Image.open(io.BytesIO(png))
        width = 540
        height = width * image.height / image.width
        pdf.drawImage(ImageReader(image), 36, 720 - height, width, height)
        pdf.showPage()
    pdf.save()
    return out.getvalue()


def rendered_pages(data: bytes, count: int) -> list[bytes]:
    """The pages as the parse worker renders them for OCR."""
    from reading_frontend.parsing.model import ParseLimits
    from reading_frontend.parsing.pdf import _Rasteriser

    with _Rasteriser(data, ParseLimits().max_image_pixels) as raster:
        return [raster.png(index) for index in range(count)]


def main() -> None:
    args = common.arguments(__doc__.splitlines()[0])
    count, rounds = (4, 3) if args.quick else (6, 5)
    images = make_images(count, seed=5)
    document = scanned_pdf([png for png, _ in images])
    pages = rendered_pages(document, count)
    from rapidocr_onnxruntime import RapidOCR

    from percolate.reading.v1 import reading_pb2 as pb
    from percolate.reading.v1 import reading_pb2_grpc

    rapid = RapidOCR()

    def rapid_read() -> list[list[str]]:
        return [[text for _, text, _ in (rapid(page)[0] or [])] for page in pages]

    config = TritonConfig.from_env()
    saved = os.environ.get(IN_FLIGHT_SETTING)
    with TritonServer(config) as triton, contextlib.ExitStack() as running:
        frontends = {}
        try:  # each frontend reads the setting from the environment it starts with
            for in_flight in (1, 2):
                os.environ[IN_FLIGHT_SETTING] = str(in_flight)
                frontends[in_flight] = running.enter_context(common.FrontendProcess(triton.grpc_url))
        finally:
            if saved is None:
                os.environ.pop(IN_FLIGHT_SETTING, None)
            else:
                os.environ[IN_FLIGHT_SETTING] = saved
        stubs = {n: reading_pb2_grpc.ReadingServiceStub(f.channel()) for n, f in frontends.items()}

        def parse(in_flight: int):
            def run() -> list[list[str]]:
                response = stubs[in_flight].Parse(pb.ParseRequest(content=document, filename="scan.pdf"),
                                                  timeout=600)
                assert all(page.ocr_used for page in response.pages), "every page went to OCR"
                return [[block.text for block in page.blocks] for page in response.pages]
            return run

        systems = {"rapidocr in process, pages pre-rendered (r)": rapid_read,
                   "Parse, one page at a time (f1)": parse(1),
                   "Parse, two pages in flight (f2)": parse(2)}
        found = {name: run() for name, run in systems.items()}  # warm-up, and what each reads
        rates: dict[str, list[float]] = {name: [] for name in systems}
        load = [os.getloadavg()[0]]
        for round_ in range(rounds):
            for name, run in systems.items():
                started = time.perf_counter()
                run()
                rates[name].append(count / (time.perf_counter() - started))
                print(f"round {round_ + 1}/{rounds}: {name} {rates[name][-1]:.3f} pages/s", flush=True)
            load.append(os.getloadavg()[0])
    reference = "rapidocr in process, pages pre-rendered (r)"
    one_at_a_time = "Parse, one page at a time (f1)"
    figures, rows = {}, []
    for name in systems:
        rate = statistics.median(rates[name])
        by_round = [ours / ref for ours, ref in zip(rates[name], rates[reference])]
        figures[name] = {
            "pages_per_s": round(rate, 3), "rounds": [round(r, 3) for r in rates[name]],
            "ratio_to_rapidocr": round(statistics.median(by_round), 3),
            "ratio_to_one_at_a_time": round(statistics.median(
                ours / one for ours, one in zip(rates[name], rates[one_at_a_time])), 3),
            "accuracy": round(float(np.mean([accuracy(f, e) for f, (_, e) in zip(found[name], images)])), 5)}
        fig = figures[name]
        rows.append([name, fig["pages_per_s"], f"{fig['ratio_to_rapidocr']:.2f}x",
                     f"{fig['ratio_to_one_at_a_time']:.2f}x", fig["accuracy"]])
    size = Image.open(io.BytesIO(pages[0])).size
    common.print_table(f"Scanned PDF, {count} pages rendered at {size[0]}x{size[1]}, median of {rounds} interleaved "
                       f"rounds (1-minute load average {min(load):.1f}-{max(load):.1f} on {os.cpu_count()} CPUs)",
                       ["system", "pages/s", "vs (r)", "vs (f1)", "char accuracy"], rows)
    common.write_results("scanned_pdf", {"pages": count, "rounds": rounds, "page_pixels": list(size),
                                         "systems": figures, "load_average_1min": [round(v, 2) for v in load]})


if __name__ == "__main__":
    main()
