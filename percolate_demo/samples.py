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


def text_pdf() -> bytes:
    """A two-page PDF with a text layer (written with reportlab)."""
    from reportlab.lib.pagesizes import A4
    from reportlab.pdfgen import canvas

    pages = [
        ["Percolate architecture notes", "",
         "Every tenant runs a private node that stores its memory in RocksDB.",
         "Values are sealed with AES-256-GCM under data keys wrapped by the tenant's KEK."],
        ["Operations", "",
         "The reading service scales on its queue depth between three and ten replicas.",
         "A rolling upgrade drains each pod before it stops, so no request is dropped."],
    ]
    buffer = io.BytesIO()
    pdf = canvas.Canvas(buffer, pagesize=A4)
    pdf.setTitle("Architecture notes")
    for lines in pages:
        y = 780
        for line in lines:
            pdf.drawString(60, y, line)
            y -= 20
        pdf.showPage()
    pdf.save()
    return buffer.getvalue()


def budget_xlsx() -> bytes:
    """A workbook with one sheet of quarterly costs."""
    import openpyxl

    workbook = openpyxl.Workbook()
    sheet = workbook.active
    sheet.title = "Costs"
    for row in (("quarter", "GPU hours", "storage GiB", "cost EUR"), ("Q1", 1200, 350, 4100),
                ("Q2", 1850, 420, 5600), ("Q3", 2100, 510, 6300)):
        sheet.append(row)
    buffer = io.BytesIO()
    workbook.save(buffer)
    return buffer.getvalue()
