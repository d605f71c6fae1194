"""Printed pages of known text, the OCR benchmark's and the int8 tests' (one generator, so
the tests hold int8 to pages like the ones ``bench/ocr.py`` measures)."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFont

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
WORDS = ("invoice total memory tenant private reading service triton chunk page table "
         "report quarterly storage encrypted keys search hybrid semantic node shared").split()


def printed_pages(count: int, seed: int) -> list[tuple[bytes, str]]:
    """``count`` 1200x800 PNG pages, each five lines (DejaVu Sans 44 px) of four words and a
    number, with their text without whitespace (PP-OCR drops some spaces)."""
    rng = np.random.default_rng(seed)
    font = ImageFont.truetype(FONT, 44)
    pages = []
    for _ in range(count):
        lines = [" ".join(rng.choice(WORDS, 4)).capitalize() + f" {rng.integers(10, 9999)}"
                 for _ in range(5)]
        image = Image.new("RGB", (1200, 800), "white")
        draw = ImageDraw.Draw(image)
        for row, line in enumerate(lines):
            draw.text((60, 70 + row * 140), line, fill="black", font=font)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        pages.append((buffer.getvalue(), "".join("".join(lines).split())))
    return pages
