"""PDF layout on generated PDFs in several producers' styles: lines rebuilt from words
placed one by one, heading levels from size, weight and numbering, ruled and borderless
tables, two-column reading order, running headers/footers dropped, lists, heading paths
on chunks, and OCR of a page whose text layer is tiny beside its image."""
from __future__ import annotations

import io
import random

from reportlab.lib import colors
from reportlab.lib.pagesizes import letter
from reportlab.lib.styles import getSampleStyleSheet
from reportlab.lib.utils import ImageReader, simpleSplit
from reportlab.pdfgen import canvas
from reportlab.platypus import Paragraph, SimpleDocTemplate, Table, TableStyle

from reading_frontend.parsing import parse_document
from reading_frontend.parsing.chunking import chunk_document
from tests.test_parsing import FakeOcr, picture

WIDTH, HEIGHT = letter
FIRST = ("The Ridgeway Data Center in Denver is designed for forty megawatts of capacity, with the "
         "first phase opening in the third quarter of the year after next.")
SECOND = ("Ashford Capital has agreed to underwrite two hundred million dollars of senior secured "
          "notes at a fixed coupon, subject to the usual conditions precedent.")
TABLE = [["Sources", "Amount", "Uses", "Amount"], ["Senior notes", "200", "Construction", "310"],
         ["Sponsor equity", "140", "Reserve", "20"], ["Total", "340", "Fees", "10"]]


def blocks(doc):
    return [(b.type, b.level, b.text) for page in doc.pages for b in page.blocks]


def words_placed_one_by_one(pdf: canvas.Canvas, x: float, y: float, text: str, font: str, size: float,
                            rng: random.Random) -> None:
    """Each word its own text object, its baseline off by up to 0.3 pt."""
    pdf.setFont(font, size)
    for word in text.split():
        pdf.drawString(x, y + rng.uniform(-0.3, 0.3), word)
        x += pdf.stringWidth(word + " ", font, size)


def word_by_word_pdf() -> bytes:
    rng = random.Random(1)
    out = io.BytesIO()
    pdf = canvas.Canvas(out, pagesize=letter)
    y = 720
    for text, font, size, gap in [("Ridgeway Investment Memo", "Helvetica-Bold", 18, 30),
                                  ("1. Overview", "Helvetica-Bold", 14, 22), (FIRST, "Helvetica", 10, 0),
                                  ("1.1 Financing", "Helvetica-Bold", 12, 20), (SECOND, "Helvetica", 10, 0)]:
        lines = simpleSplit(text, font, size, WIDTH - 144)
        for line in lines:
            words_placed_one_by_one(pdf, 72, y, line, font, size, rng)
            y -= size * 1.3
        y -= gap * 0.4 + 8
    pdf.showPage()
    pdf.save()
    return out.getvalue()


def test_words_placed_one_by_one_read_as_lines_paragraphs_and_headings():
    doc = parse_document(word_by_word_pdf())
    assert blocks(doc) == [("heading", 1, "Ridgeway Investment Memo"), ("heading", 2, "1. Overview"),
                           ("paragraph", 0, FIRST), ("heading", 3, "1.1 Financing"), ("paragraph", 0, SECOND)]
    chunks = chunk_document(doc, lambda text: len(text.split()), chunk_tokens=200)
    assert chunks[-1].heading_path == ("Ridgeway Investment Memo", "1. Overview", "1.1 Financing")
    assert SECOND in chunks[-1].text


def test_numbered_headings_in_the_body_size_take_levels_from_their_numbering():
    out = io.BytesIO()
    pdf = canvas.Canvas(out, pagesize=letter)
    y = 720
    for text, font in [("Credit Memo", "Helvetica-Bold"), ("1. Parties", "Helvetica-Bold"), (FIRST, "Helvetica"),
                       ("1.1 Sponsor", "Helvetica-Bold"), (SECOND, "Helvetica"), ("2. Terms", "Helvetica-Bold"),
                       (FIRST, "Helvetica")]:
        pdf.setFont(font, 10 if text != "Credit Memo" else 16)
        for line in simpleSplit(text, font, 10, WIDTH - 144):
            pdf.drawString(72, y, line)
            y -= 13
        y -= 10
    pdf.showPage()
    pdf.save()
    found = [(level, text) for kind, level, text in blocks(parse_document(out.getvalue())) if kind == "heading"]
    assert found == [(1, "Credit Memo"), (2, "1. Parties"), (3, "1.1 Sponsor"), (2, "2. Terms")]


def test_ruled_table_from_a_platypus_document_with_header_and_footer():
    styles = getSampleStyleSheet()
    story = [Paragraph("Sources and Uses", styles["Heading1"]), Paragraph(FIRST, styles["BodyText"])]
    table = Table(TABLE)
    table.setStyle(TableStyle([("GRID", (0, 0), (-1, -1), 0.5, colors.black)]))
    story += [table, Paragraph(SECOND, styles["BodyText"])]
    story += [Paragraph(f"Filler paragraph number {i} keeps the document going onto more pages. " * 6,
                        styles["BodyText"]) for i in range(40)]

    def furniture(pdf, _):
        pdf.setFont("Helvetica", 8)
        pdf.drawString(72, 760, "Ashford Capital | Strictly Confidential")
        pdf.drawRightString(540, 30, f"Page {pdf.getPageNumber()}")

    out = io.BytesIO()
    SimpleDocTemplate(out, pagesize=letter).build(story, onFirstPage=furniture, onLaterPages=furniture)
    doc = parse_document(out.getvalue())
    assert len(doc.pages) >= 3
    found = blocks(doc)
    assert found[:3] == [("heading", 1, "Sources and Uses"), ("paragraph", 0, FIRST), ("table", 0, found[2][2])]
    table_block = doc.pages[0].blocks[2]
    assert [list(row) for row in table_block.table.rows] == TABLE
    assert found[3] == ("paragraph", 0, SECOND)
    assert "Confidential" not in doc.text and "Page 2" not in doc.text


def test_borderless_table_of_aligned_columns():
    out = io.BytesIO()
    pdf = canvas.Canvas(out, pagesize=letter)
    pdf.setFont("Helvetica", 10)
    for i, line in enumerate(simpleSplit(FIRST, "Helvetica", 10, WIDTH - 144)):
        pdf.drawString(72, 720 - 13 * i, line)
    rng = random.Random(2)
    for r, row in enumerate(TABLE):
        for c, cell in enumerate(row):
            words_placed_one_by_one(pdf, 72 + 120 * c, 660 - 16 * r, cell, "Helvetica", 10, rng)
    pdf.drawString(72, 580, SECOND)
    pdf.showPage()
    pdf.save()
    doc = parse_document(out.getvalue())
    kinds = [b.type for b in doc.pages[0].blocks]
    assert kinds == ["paragraph", "table", "paragraph"]
    assert [list(row) for row in doc.pages[0].blocks[1].table.rows] == TABLE


def test_two_columns_are_read_one_after_the_other():
    left = [f"Left column sentence {i} tells the first half of the story." for i in range(12)]
    right = [f"Right column sentence {i} tells the second half of the story." for i in range(12)]
    out = io.BytesIO()
    pdf = canvas.Canvas(out, pagesize=letter)
    pdf.setFont("Helvetica-Bold", 16)
    pdf.drawString(72, 740, "A Two Column Page")
    pdf.setFont("Times-Roman", 10)
    for column, sentences in ((72, left), (320, right)):
        y = 710
        for sentence in sentences:
            for line in simpleSplit(sentence, "Times-Roman", 10, 220):
                pdf.drawString(column, y, line)
                y -= 12.5
    pdf.showPage()
    pdf.save()
    doc = parse_document(out.getvalue())
    assert doc.pages[0].blocks[0] == doc.pages[0].blocks[0].__class__("heading", "A Two Column Page", 1)
    text = doc.text
    assert " ".join(left) in " ".join(text.split())
    assert " ".join(right) in " ".join(text.split())
    assert text.index("Left column sentence 11") < text.index("Right column sentence 0")


def test_list_items_and_levels():
    out = io.BytesIO()
    pdf = canvas.Canvas(out, pagesize=letter)
    pdf.setFont("Helvetica", 10)
    pdf.drawString(72, 720, "The conditions precedent are the following.")
    for i, (x, text) in enumerate([(72, "• Signed credit agreement"), (90, "– with all schedules attached"),
                                   (72, "• Legal opinions from counsel")]):
        pdf.drawString(x, 700 - 14 * i, text)
    pdf.showPage()
    pdf.save()
    found = blocks(parse_document(out.getvalue()))
    assert found == [("paragraph", 0, "The conditions precedent are the following."),
                     ("list_item", 1, "• Signed credit agreement"), ("list_item", 2, "– with all schedules attached"),
                     ("list_item", 1, "• Legal opinions from counsel")]


def test_a_page_with_tiny_text_over_a_large_image_is_ocred():
    out = io.BytesIO()
    pdf = canvas.Canvas(out, pagesize=letter)
    pdf.drawImage(ImageReader(picture()), 36, 36, WIDTH - 72, HEIGHT - 72)
    pdf.setFont("Helvetica", 6)
    pdf.drawString(40, 20, "scan 0042")
    pdf.showPage()
    pdf.save()
    ocr = FakeOcr()
    doc = parse_document(out.getvalue(), ocr=ocr)
    assert len(ocr.sizes) == 1 and doc.pages[0].ocr_used
    kept = parse_document(out.getvalue())  # no OCR available: the text layer stays
    assert kept.pages[0].text == "scan 0042"
