"""Sample files for the demo, generated so that every expected value is known."""
from __future__ import annotations

import io

from PIL import Image, ImageDraw, ImageFont

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
OCR_LINES = [
    "Percolate reads scanned pages too.",
    "Invoice 2026-0042: total 1,337.00 EUR",
    "Private memory for every tenant",
]


def text_image(lines: list[str] = OCR_LINES, size: tuple[int, int] = (1000, 360)) -> bytes:
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.truetype(FONT, 36)
    for row, line in enumerate(lines):
        draw.text((50, 50 + row * 95), line, fill="black", font=font)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def docx_report() -> bytes:
    """A DOCX with a title, two sections, a bulleted list and a table."""
    import docx

    document = docx.Document()
    document.core_properties.title = "Quarterly memory report"
    document.add_heading("Quarterly memory report", level=1)
    document.add_paragraph("Tenants stored more documents this quarter than in the whole previous year.")
    document.add_heading("Storage by tenant", level=2)
    table = document.add_table(rows=3, cols=3)
    for r, row in enumerate([("tenant", "documents", "GiB"), ("acme", "1200", "3.5"), ("globex", "830", "2.1")]):
        for c, value in enumerate(row):
            table.cell(r, c).text = value
    document.add_heading("Next steps", level=2)
    for item in ("Rotate the data keys", "Enable hybrid search", "Invite two more tenants"):
        document.add_paragraph(item, style="List Bullet")
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


def scanned_pdf() -> bytes:
    """A one-page PDF holding only an image of text (no text layer): it needs OCR."""
    image = Image.open(io.BytesIO(text_image(["Scanned contract, page 1", "Signed by both parties"],
                                             size=(1240, 400))))
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PDF", resolution=150)
    return buffer.getvalue()
