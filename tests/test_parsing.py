"""reading_frontend.parsing: every fixture is generated here with known content; OCR is a
fake that records its calls (the real OCR pipeline is tested in test_ocr_*.py)."""
from __future__ import annotations

import datetime as dt
import io
import re
import struct
import zipfile
import zlib
from pathlib import Path

import docx
import openpyxl
import numpy as np
import pytest
from PIL import Image
from pypdf import PdfReader, PdfWriter
from reportlab.lib.pagesizes import letter
from reportlab.lib.utils import ImageReader
from reportlab.pdfgen import canvas

from reading_frontend.ocr import OcrLine
from reading_frontend.parsing.ocrpass import PipelinedOcr
from reading_frontend.parsing.office import ZIP_RATIO_GRACE_BYTES
from reading_frontend.parsing import (Block, Chunk, CorruptDocumentError, DocumentError,
                                      DocumentTooLargeError, EmptyDocumentError,
                                      EncryptedDocumentError, Page, ParsedDocument, ParseLimits,
                                      Table, UnsupportedFormatError, chunk_document,
                                      detect_format, parse_document)

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
OCR_LINES = ("Scanned invoice number 4711", "Total due 99 euros")


def words(text: str) -> int:
    return len(text.split())


def recall(expected: str, found: str) -> float:
    """Fraction of the expected words present in the found text."""
    wanted = re.findall(r"\w+", expected.lower())
    present = set(re.findall(r"\w+", found.lower()))
    return sum(word in present for word in wanted) / len(wanted)


class FakeOcr:
    """Returns known lines (prefixed with the image size) and records each call."""

    def __init__(self) -> None:
        self.sizes: list[tuple[int, int]] = []

    def __call__(self, png: bytes) -> list[OcrLine]:
        assert png.startswith(PNG_MAGIC)
        size = Image.open(io.BytesIO(png)).size
        self.sizes.append(size)
        box = ((0.0, 0.0), (10.0, 0.0), (10.0, 5.0), (0.0, 5.0))
        return [OcrLine(f"{size[0]}x{size[1]}", 0.9, box)] + [OcrLine(t, 0.95, box) for t in OCR_LINES]


# --------------------------------------------------------------------------- fixtures

PDF_SENTENCES = {
    page: [f"Sentence {n} of page {page} talks about {topic} in detail." for n in range(1, 6)]
    for page, topic in ((1, "apples"), (2, "bridges"), (3, "comets"))
}


def text_pdf(pages: dict[int, list[str]] = PDF_SENTENCES, title: str = "Fruit and Sky") -> bytes:
    out = io.BytesIO()
    pdf = canvas.Canvas(out, pagesize=letter)
    pdf.setTitle(title)
    pdf.setAuthor("Ada Lovelace")
    for number in sorted(pages):
        y = 720
        for sentence in pages[number]:
            pdf.drawString(72, y, sentence)
            y -= 18
        pdf.showPage()
    pdf.save()
    return out.getvalue()


def picture(size=(200, 120), color=(30, 60, 90)) -> Image.Image:
    image = Image.new("RGB", size, "white")
    image.paste(Image.new("RGB", (size[0] // 2, size[1] // 2), color), (10, 10))
    return image


def pdf_with_scanned_page() -> bytes:
    """Page 2 has only an image: no text layer."""
    out = io.BytesIO()
    pdf = canvas.Canvas(out, pagesize=letter)
    pdf.drawString(72, 720, "The first page has a text layer.")
    pdf.showPage()
    pdf.drawImage(ImageReader(picture()), 72, 400, 400, 240)
    pdf.showPage()
    pdf.drawString(72, 720, "The third page has a text layer too.")
    pdf.showPage()
    pdf.save()
    return out.getvalue()


def encrypted_pdf(user_password: str) -> bytes:
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(text_pdf())))
    writer.encrypt(user_password=user_password, owner_password="owner-secret", algorithm="AES-256")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def sample_docx() -> bytes:
    document = docx.Document()
    document.core_properties.title = "Quarterly Report"
    document.core_properties.author = "Grace Hopper"
    document.add_heading("Quarterly Report", level=0)
    document.add_heading("Summary", level=1)
    document.add_paragraph("Revenue grew in every region this quarter.")
    document.add_paragraph("First bullet about costs", style="List Bullet")
    document.add_paragraph("Nested bullet about travel", style="List Bullet 2")
    document.add_heading("Figures", level=2)
    table = document.add_table(rows=3, cols=3)
    for r, row in enumerate([("Region", "Q1", "Q2"), ("North", "10", "12"), ("South", "7", "9")]):
        for c, value in enumerate(row):
            table.cell(r, c).text = value
    document.add_paragraph("Closing remarks after the table.")
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def zip_bytes(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return out.getvalue()


def sample_xlsx() -> bytes:
    workbook = openpyxl.Workbook()
    people = workbook.active
    people.title = "People"
    people.append(["Name", "Age", "Joined", "Score"])
    people.append(["Alice", 31, dt.datetime(2021, 3, 4), 2.5])
    people.append(["Bob", 42.0, dt.date(2020, 1, 2), True])
    people.cell(row=9, column=9)  # touched but empty: must be trimmed away
    totals = workbook.create_sheet("Totals")
    totals["B3"] = "Total"
    totals["C3"] = 73
    workbook.properties.title = "Staff"
    workbook.properties.creator = "Ops"
    out = io.BytesIO()
    workbook.save(out)
    return out.getvalue()


HTML = b"""<!DOCTYPE html>
<html><head><title>Field Guide</title><meta name="author" content="Jane Goodall">
<style>body { color: red }</style><script>var hidden = "do not index";</script></head>
<body><nav><a href="/">Home</a> <a href="/x">Menu entry</a></nav>
<h1>Birds of the Coast</h1>
<p>Gulls are   loud and
   common.<br>Terns dive.</p>
<h2>Checklist</h2>
<ul><li>Herring gull<ul><li>Juvenile plumage</li></ul></li><li>Arctic tern</li></ul>
<table><caption>Counts</caption><tr><th>Bird</th><th>Count</th></tr>
<tr><td>Gull</td><td>12</td></tr><tr><td>Tern</td><td>3</td></tr></table>
<div>Loose text in a div.</div>
<script>document.write("also hidden")</script>
</body></html>"""

MARKDOWN = """# Garden Notes

Tomatoes need *full* sun and **regular** water.
They ripen in late summer.

## Tasks
- Water the [beds](http://example.com)
  - Check the drip line
- Weed on Saturday
1. Order seeds

| Plant | Days |
|-------|-----:|
| Basil | 60 |
| Kale | 55 |

```
code stays as it is
```
"""

TEXT = "First paragraph line one.\nLine two of it.\n\n\nSecond paragraph here.\n"


def png_bomb(width: int = 50_000, height: int = 50_000) -> bytes:
    """A valid PNG header claiming a huge image, with no real pixel data: tiny to make."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return PNG_MAGIC + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def image_bytes(image: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


# --------------------------------------------------------------------------- detection


@pytest.mark.parametrize("data, fmt", [
    (b"%PDF-1.7\n...", "pdf"),
    (PNG_MAGIC + b"rest", "png"),
    (b"\xff\xd8\xff\xe0rest", "jpeg"),
    (b"II*\x00rest", "tiff"),
    (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "webp"),
    (b"GIF89a....", "gif"),
    (b"\xef\xbb\xbf  \n<!doctype html><p>x</p>", "html"),
    (b"<?xml version='1.0'?>\n<!-- c --><html xmlns='http://www.w3.org/1999/xhtml'>", "html"),
    (b"<div>hello</div>", "html"),
    (b"# Title\n\nSome text.", "markdown"),
    (b"a | b\n--|--\n1 | 2\n", "markdown"),
    (b"Just words.\nMore words.", "text"),
    ("caf\u00e9 \u2603".encode("utf-16"), "text"),
    (b"BMW makes cars; BM is not a bitmap here.", "text"),
])
def test_detects_format_from_content(data, fmt):
    assert detect_format(data)[0] == fmt


def test_detects_office_packages_and_refuses_other_zips():
    assert detect_format(sample_docx()) == (
        "docx", "application/vnd.openxmlformats-officedocument.wordprocessingml.document")
    assert detect_format(sample_xlsx())[0] == "xlsx"
    with pytest.raises(UnsupportedFormatError, match="zip archive"):
        detect_format(zip_bytes({"notes.txt": b"hello"}))


def test_empty_and_unknown_binary_are_refused():
    with pytest.raises(EmptyDocumentError):
        parse_document(b"")
    with pytest.raises(UnsupportedFormatError, match="supported: pdf"):
        parse_document(bytes(range(256)) * 4)
    with pytest.raises(UnsupportedFormatError, match="OLE2"):
        parse_document(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 600)
    with pytest.raises(UnsupportedFormatError):
        parse_document("latin-1 caf\u00e9".encode("latin-1"))


def test_errors_are_value_errors_with_one_line_messages():
    for data in (b"", b"\x00\x01\x02\x03" * 10, b"%PDF-1.4\nnot really a pdf"):
        with pytest.raises(DocumentError) as caught:
            parse_document(data)
        assert isinstance(caught.value, ValueError)
        assert "\n" not in str(caught.value) and "Traceback" not in str(caught.value)


def test_detection_ignores_a_misleading_filename_and_mime_type():
    doc = parse_document(text_pdf(), filename="holiday.docx", mime_type="text/html; charset=utf-8")
    assert doc.format == "pdf" and doc.mime_type == "application/pdf"
    assert any("'holiday.docx' suggests docx" in w for w in doc.warnings)
    assert any("suggests html" in w for w in doc.warnings)
    agreeing = parse_document(MARKDOWN.encode(), filename="notes.txt", mime_type="text/plain")
    assert agreeing.format == "markdown" and agreeing.warnings == ()


# --------------------------------------------------------------------------- pdf


def test_text_pdf_pages_text_and_metadata():
    doc = parse_document(text_pdf())
    assert doc.format == "pdf"
    assert doc.metadata == {"title": "Fruit and Sky", "author": "Ada Lovelace", "page_count": "3"}
    assert [page.number for page in doc.pages] == [1, 2, 3]
    for page in doc.pages:
        assert not page.ocr_used
        assert all(block.type == "paragraph" for block in page.blocks)
        assert recall(" ".join(PDF_SENTENCES[page.number]), page.text) == 1.0
    assert doc.warnings == ()


def test_image_only_pdf_page_goes_to_ocr_alone():
    ocr = FakeOcr()
    doc = parse_document(pdf_with_scanned_page(), ocr=ocr)
    assert len(ocr.sizes) == 1
    width, height = ocr.sizes[0]
    assert (width, height) == (round(8.5 * 200), round(11 * 200))  # letter at 200 dpi
    first, scanned, third = doc.pages
    assert not first.ocr_used and not third.ocr_used and scanned.ocr_used
    assert [b.type for b in scanned.blocks] == ["ocr_text"] * 3
    assert [b.text for b in scanned.blocks][1:] == list(OCR_LINES)
    assert "text layer too" in third.text


def test_ocr_mode_always_and_never():
    ocr = FakeOcr()
    always = parse_document(pdf_with_scanned_page(), ocr=ocr, ocr_mode="always")
    assert len(ocr.sizes) == 3 and all(page.ocr_used for page in always.pages)

    ocr = FakeOcr()
    never = parse_document(pdf_with_scanned_page(), ocr=ocr, ocr_mode="never")
    assert ocr.sizes == [] and never.pages[1].blocks == () and not never.pages[1].ocr_used
    assert any("page 2" in w and "ocr_mode never" in w for w in never.warnings)

    without = parse_document(pdf_with_scanned_page())
    assert any("page 2" in w and "not available" in w for w in without.warnings)
    with pytest.raises(ValueError, match="ocr_mode"):
        parse_document(text_pdf(), ocr_mode="sometimes")


def test_ocr_page_budget_and_pixel_limit_for_rendering():
    ocr = FakeOcr()
    limits = ParseLimits(max_ocr_pages=2, max_image_pixels=1_000_000)
    doc = parse_document(text_pdf(), ocr=ocr, ocr_mode="always", limits=limits)
    assert len(ocr.sizes) == 2 and all(w * h <= 1_000_000 for w, h in ocr.sizes)
    assert [p.ocr_used for p in doc.pages] == [True, True, False]
    assert any("page 3" in w and "limited to 2 pages" in w for w in doc.warnings)
    assert "comets" in doc.pages[2].text  # kept its text layer


def test_ocr_failure_is_not_reported_as_a_corrupt_document():
    def unreachable(png: bytes) -> list[OcrLine]:
        raise ConnectionError("triton is down")
    with pytest.raises(ConnectionError, match="triton is down"):
        parse_document(pdf_with_scanned_page(), ocr=unreachable)


def test_password_protected_pdf():
    with pytest.raises(EncryptedDocumentError, match="password"):
        parse_document(encrypted_pdf("let-me-in"))
    opened = parse_document(encrypted_pdf(""))  # owner password only: readable by anyone
    assert recall(" ".join(PDF_SENTENCES[2]), opened.pages[1].text) == 1.0


def test_corrupt_and_truncated_pdfs():
    data = text_pdf()
    for broken in (data[: len(data) // 2], b"%PDF-1.4\n1 0 obj << /Type /Catalog >> garbage"):
        with pytest.raises(CorruptDocumentError, match="could not read the pdf"):
            parse_document(broken)


def test_pdf_page_limit():
    with pytest.raises(DocumentTooLargeError, match="3 pages, above the limit of 2"):
        parse_document(text_pdf(), limits=ParseLimits(max_pages=2))


# --------------------------------------------------------------------------- office


def test_docx_structure_in_document_order():
    doc = parse_document(sample_docx())
    assert doc.format == "docx" and len(doc.pages) == 1
    assert doc.metadata == {"title": "Quarterly Report", "author": "Grace Hopper"}
    blocks = doc.pages[0].blocks
    assert [(b.type, b.level) for b in blocks] == [
        ("heading", 1), ("heading", 1), ("paragraph", 0), ("list_item", 1), ("list_item", 2),
        ("heading", 2), ("table", 0), ("paragraph", 0)]
    assert blocks[1].text == "Summary" and blocks[4].text == "Nested bullet about travel"
    assert blocks[6].table == Table("", (("Region", "Q1", "Q2"), ("North", "10", "12"),
                                         ("South", "7", "9")))
    assert "Region\tQ1\tQ2\nNorth\t10\t12" in doc.pages[0].text


def test_docx_zip_bombs_are_refused_without_inflating():
    content_types = b'<?xml version="1.0"?><Types/>'
    bomb = zip_bytes({"[Content_Types].xml": content_types,
                      "word/document.xml": bytes(ZIP_RATIO_GRACE_BYTES + 1)})  # ~1 KiB packed
    assert len(bomb) < 10_000
    with pytest.raises(DocumentTooLargeError, match="max_zip_ratio"):
        parse_document(bomb)
    with pytest.raises(DocumentTooLargeError, match="max_uncompressed_bytes"):
        parse_document(sample_docx(), limits=ParseLimits(max_uncompressed_bytes=10_000))


def test_corrupt_docx():
    with pytest.raises(CorruptDocumentError, match="could not read the docx"):
        parse_document(zip_bytes({"[Content_Types].xml": b"<Types/>", "word/x.xml": b"<x/>"}))


def test_xlsx_one_page_per_sheet_with_trimmed_typed_values():
    doc = parse_document(sample_xlsx())
    assert doc.format == "xlsx"
    assert doc.metadata == {"title": "Staff", "author": "Ops"}
    people, totals = doc.pages
    assert (people.number, totals.number) == (1, 2)
    assert people.blocks[0].table == Table("People", (
        ("Name", "Age", "Joined", "Score"),
        ("Alice", "31", "2021-03-04", "2.5"),
        ("Bob", "42", "2020-01-02", "TRUE")))
    assert totals.blocks[0].table == Table("Totals", (("Total", "73"),))
    assert people.text.startswith("Name\tAge\tJoined\tScore\nAlice\t31")


# --------------------------------------------------------------------------- markup


def test_html_blocks_without_scripts_styles_or_navigation():
    doc = parse_document(HTML)
    assert doc.format == "html"
    assert doc.metadata == {"title": "Field Guide", "author": "Jane Goodall"}
    blocks = doc.pages[0].blocks
    assert [(b.type, b.level, b.text) for b in blocks if b.type != "table"] == [
        ("heading", 1, "Birds of the Coast"),
        ("paragraph", 0, "Gulls are loud and common.\nTerns dive."),
        ("heading", 2, "Checklist"),
        ("list_item", 1, "Herring gull"),
        ("list_item", 2, "Juvenile plumage"),
        ("list_item", 1, "Arctic tern"),
        ("paragraph", 0, "Loose text in a div.")]
    table = next(b.table for b in blocks if b.type == "table")
    assert table == Table("Counts", (("Bird", "Count"), ("Gull", "12"), ("Tern", "3")))
    text = doc.pages[0].text
    assert "hidden" not in text and "color" not in text and "Menu entry" not in text


def test_markdown_blocks():
    doc = parse_document(MARKDOWN.encode())
    assert doc.format == "markdown"
    assert [(b.type, b.level, b.text) for b in doc.pages[0].blocks] == [
        ("heading", 1, "Garden Notes"),
        ("paragraph", 0, "Tomatoes need full sun and regular water.\nThey ripen in late summer."),
        ("heading", 2, "Tasks"),
        ("list_item", 1, "Water the beds"),
        ("list_item", 2, "Check the drip line"),
        ("list_item", 1, "Weed on Saturday"),
        ("list_item", 1, "Order seeds"),
        ("table", 0, "Plant\tDays\nBasil\t60\nKale\t55"),
        ("paragraph", 0, "code stays as it is")]


def test_plain_text_paragraphs():
    doc = parse_document(TEXT.encode("utf-8-sig"))
    assert doc.format == "text" and doc.mime_type == "text/plain"
    assert [b.text for b in doc.pages[0].blocks] == [
        "First paragraph line one.\nLine two of it.", "Second paragraph here."]
    assert parse_document(TEXT.encode("utf-16")).pages == doc.pages


# --------------------------------------------------------------------------- images


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "WEBP"])
def test_images_go_through_ocr(fmt):
    ocr = FakeOcr()
    doc = parse_document(image_bytes(picture((320, 240)), fmt), ocr=ocr)
    assert doc.format == fmt.lower() and ocr.sizes == [(320, 240)]
    (page,) = doc.pages
    assert page.ocr_used and [b.type for b in page.blocks] == ["ocr_text"] * 3
    assert [b.text for b in page.blocks] == ["320x240", *OCR_LINES]


def test_multipage_tiff_is_one_page_per_frame():
    frames = [picture((100 + 10 * i, 80)) for i in range(3)]
    data = image_bytes(frames[0], "TIFF", save_all=True, append_images=frames[1:])
    ocr = FakeOcr()
    doc = parse_document(data, ocr=ocr)
    assert doc.format == "tiff"
    assert [p.blocks[0].text for p in doc.pages] == ["100x80", "110x80", "120x80"]
    assert [p.number for p in doc.pages] == [1, 2, 3]
    with pytest.raises(DocumentTooLargeError, match="3 pages"):
        parse_document(data, ocr=ocr, limits=ParseLimits(max_pages=2))


def test_image_without_ocr_is_an_empty_page_with_a_warning():
    doc = parse_document(image_bytes(picture(), "PNG"))
    assert doc.pages == (Page(1, (), ocr_used=False),)
    assert any("no text on page 1" in w for w in doc.warnings)


def test_image_decompression_bombs_are_refused_from_the_header():
    ocr = FakeOcr()
    with pytest.raises(DocumentTooLargeError, match="40,000,000 pixels"):
        parse_document(png_bomb(), ocr=ocr)
    with pytest.raises(DocumentTooLargeError, match="8000x6000 = 48,000,000 pixels"):
        parse_document(png_bomb(8000, 6000), ocr=ocr)
    assert ocr.sizes == []


def test_corrupt_image():
    data = image_bytes(picture(), "PNG")
    with pytest.raises(CorruptDocumentError):
        parse_document(data[:60], ocr=FakeOcr())


# --------------------------------------------------------------------------- chunking


def make_doc(*pages: list[Block]) -> ParsedDocument:
    return ParsedDocument("text", "text/plain", {},
                          tuple(Page(n, tuple(blocks)) for n, blocks in enumerate(pages, start=1)), ())


def test_heading_paths_follow_levels():
    doc = make_doc([
        Block("heading", "Guide", 1),
        Block("heading", "Install", 2),
        Block("paragraph", "Run the installer."),
        Block("heading", "Linux", 3),
        Block("paragraph", "Use the package."),
        Block("heading", "Usage", 2),
        Block("paragraph", "Start the app."),
    ])
    chunks = chunk_document(doc, words, chunk_tokens=50)
    assert [(c.heading_path, c.text) for c in chunks] == [
        (("Guide", "Install"), "Guide\n\nInstall\n\nRun the installer."),
        (("Guide", "Install", "Linux"), "Linux\n\nUse the package."),
        (("Guide", "Usage"), "Usage\n\nStart the app."),
    ]
    assert [c.ordinal for c in chunks] == [0, 1, 2]


def test_page_spans_across_a_multipage_pdf():
    doc = parse_document(text_pdf())
    chunks = chunk_document(doc, words, chunk_tokens=25)
    assert any(c.page_start < c.page_end for c in chunks)
    for chunk in chunks:
        pages = [int(p) for p in re.findall(r"of page (\d)", chunk.text)]
        assert (chunk.page_start, chunk.page_end) == (min(pages), max(pages))
    assert recall(" ".join(s for page in PDF_SENTENCES.values() for s in page),
                  " ".join(c.text for c in chunks)) == 1.0


def test_size_limit_and_token_counts():
    sentences = " ".join(f"Sentence number {i} has exactly seven words." for i in range(60))
    doc = make_doc([Block("paragraph", sentences), Block("list_item", "a short item", 1)])
    chunks = chunk_document(doc, words, chunk_tokens=30)
    assert len(chunks) > 10
    assert all(0 < c.token_count <= 30 and c.token_count == words(c.text) for c in chunks)
    assert all(c.text.endswith(".") for c in chunks[:-1])  # split between sentences


def test_long_sentence_splits_at_words_and_long_words_at_characters():
    doc = make_doc([Block("paragraph", " ".join(f"w{i}" for i in range(95)) + " " + "x" * 40)])
    chunks = chunk_document(doc, len, chunk_tokens=20)  # count characters
    assert all(c.token_count <= 20 for c in chunks)
    assert "".join(c.text.replace(" ", "") for c in chunks) == doc.pages[0].text.replace(" ", "")


def test_overlap_repeats_the_end_of_the_previous_chunk():
    sentences = [f"Fact {i} is here." for i in range(40)]
    doc = make_doc([Block("paragraph", " ".join(sentences))])
    chunks = chunk_document(doc, words, chunk_tokens=20, overlap_tokens=8)
    assert len(chunks) > 3
    for previous, chunk in zip(chunks, chunks[1:]):
        head = " ".join(chunk.text.split()[:8])
        assert previous.text.endswith(head)
        assert chunk.token_count <= 20
    no_overlap = chunk_document(doc, words, chunk_tokens=20)
    assert sum(c.token_count for c in no_overlap) == words(doc.pages[0].text)


def test_overlap_stays_within_a_section():
    doc = make_doc([Block("heading", "A", 1), Block("paragraph", "One two three. Four five six."),
                    Block("heading", "B", 1), Block("paragraph", "Seven eight nine.")])
    chunks = chunk_document(doc, words, chunk_tokens=10, overlap_tokens=4)
    assert [c.text for c in chunks] == ["A\n\nOne two three. Four five six.", "B\n\nSeven eight nine."]


def test_table_split_repeats_header_row():
    rows = (("id", "name", "city"),) + tuple((str(i), f"person{i}", f"city{i}") for i in range(40))
    doc = make_doc([Block("table", Table("t", rows).text, table=Table("t", rows))])
    chunks = chunk_document(doc, words, chunk_tokens=31)
    assert len(chunks) > 3
    for chunk in chunks:
        assert chunk.text.startswith("id\tname\tcity\n") and chunk.token_count <= 31
    found = [line for c in chunks for line in c.text.split("\n")[1:]]
    assert found == ["\t".join(row) for row in rows[1:]]


def test_chunking_is_deterministic_and_never_empty():
    doc = parse_document(sample_docx())
    first = chunk_document(doc, words, chunk_tokens=12, overlap_tokens=3)
    second = chunk_document(doc, words, chunk_tokens=12, overlap_tokens=3)
    assert first == second and all(c.text.strip() for c in first)
    assert chunk_document(make_doc([]), words) == []
    assert isinstance(first[0], Chunk)
    with pytest.raises(ValueError):
        chunk_document(doc, words, chunk_tokens=0)


def test_chunks_of_every_format_keep_their_text():
    samples = [sample_docx(), sample_xlsx(), HTML, MARKDOWN.encode(), TEXT.encode()]
    for data in samples:
        doc = parse_document(data)
        chunks = chunk_document(doc, words, chunk_tokens=8)
        assert recall(doc.text, " ".join(c.text for c in chunks)) == 1.0
        assert all(c.token_count <= 8 for c in chunks)


def test_limit_holds_with_the_embedding_tokenizer():
    path = ROOT / "model_assets" / "text_embedding" / "tokenizer.json"
    if not path.exists():
        pytest.skip("embedding tokenizer not built")
    from tokenizers import Tokenizer
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_padding()
    tokenizer.no_truncation()

    def count(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False).ids)

    doc = parse_document(text_pdf())
    chunks = chunk_document(doc, count, chunk_tokens=40, overlap_tokens=10)
    assert all(c.token_count == count(c.text) <= 40 for c in chunks)


# --------------------------------------------------------------------------- bombs and work


def test_many_member_zip_bomb_is_refused_by_its_unpacked_total():
    """Hundreds of members, each just under the per-member ratio grace: only the sum of the
    declared unpacked sizes (file_size) catches it; the packed sizes add up to little."""
    member = bytes(ZIP_RATIO_GRACE_BYTES - 1)
    members = 600  # 600 MiB unpacked, above the default 512 MiB
    bomb = zip_bytes({"[Content_Types].xml": b'<?xml version="1.0"?><Types/>',
                      "word/document.xml": b"<w:document/>",
                      **{f"word/media/part{i}.bin": member for i in range(members)}})
    infos = zipfile.ZipFile(io.BytesIO(bomb)).infolist()
    assert sum(i.compress_size for i in infos) < 2_000_000 < ParseLimits().max_uncompressed_bytes
    assert all(i.file_size <= ZIP_RATIO_GRACE_BYTES for i in infos)
    with pytest.raises(DocumentTooLargeError, match="max_uncompressed_bytes"):
        parse_document(bomb)


@pytest.mark.parametrize("sample", [sample_docx, sample_xlsx])
def test_zip_limit_counts_unpacked_not_packed_bytes(sample):
    """A limit between the packed and the unpacked totals refuses the package; one just
    above the unpacked total lets it through."""
    data = sample()
    infos = zipfile.ZipFile(io.BytesIO(data)).infolist()
    packed, unpacked = sum(i.compress_size for i in infos), sum(i.file_size for i in infos)
    assert packed * 2 < unpacked
    with pytest.raises(DocumentTooLargeError, match="max_uncompressed_bytes"):
        parse_document(data, limits=ParseLimits(max_uncompressed_bytes=(packed + unpacked) // 2))
    assert parse_document(data, limits=ParseLimits(max_uncompressed_bytes=unpacked)).pages


def test_xlsx_cell_far_away_is_refused_before_the_grid_is_built():
    """Two cells, A1 and XFD1048576: 5 KB that would lay out 17 billion cells."""
    workbook = openpyxl.Workbook()
    workbook.active["A1"] = "a"
    workbook.active["XFD1048576"] = "b"
    out = io.BytesIO()
    workbook.save(out)
    with pytest.raises(DocumentTooLargeError, match="max_sheet_cells"):
        parse_document(out.getvalue())
    assert parse_document(sample_xlsx(), limits=ParseLimits(max_sheet_cells=200)).pages


class _CountingWork:
    """A token counter that counts the characters it was given, and gives up (so an old
    quadratic chunker fails fast instead of running for minutes) past a bound."""

    def __init__(self, bound: int) -> None:
        self.characters, self.bound = 0, bound

    def __call__(self, text: str) -> int:
        self.characters += len(text)
        if self.characters > self.bound:
            raise AssertionError(f"chunking counted over {self.bound:,} characters")
        return len(text.split()) + text.count(".")


@pytest.mark.parametrize("shape", ["text one_long_word", "markdown unclosed_links",
                                   "markdown nested_list", "html many_rows"])
def test_chunking_work_is_linear_in_the_text(shape):
    """Characters handed to the tokenizer per character of text stay under a constant
    (the old chunker re-counted the growing chunk and the rest of a long word)."""
    from tests.pathological_docs import SHAPES

    for size in (50_000, 200_000):
        doc = parse_document(SHAPES[shape](size))
        counter = _CountingWork(40 * len(doc.text))
        chunks = chunk_document(doc, counter, chunk_tokens=200)
        assert chunks and all(c.token_count <= 200 for c in chunks)


@pytest.mark.parametrize("shape,size", [("markdown nested_list", 2_000_000),
                                        ("markdown spaced_heading", 1_000_000),
                                        ("markdown unclosed_bold", 400_000),
                                        ("markdown open_brackets", 400_000),
                                        ("markdown table_rule_spaces", 1_000_000),
                                        ("html nested_lists", 1_000_000),
                                        ("pdf long_content_stream", 1_000_000)])
def test_pathological_documents_parse_within_a_cpu_budget(shape, size):
    """Shapes that took the old parsers minutes (quadratic patterns) parse and chunk in a
    parse worker under a generous CPU budget; past it they would be RESOURCE_EXHAUSTED."""
    import asyncio

    from percolate_models.paths import ProjectPaths
    from reading_frontend.parse_pool import ParseJob, ParsePool
    from tests.pathological_docs import SHAPES

    pool = ParsePool(1, ProjectPaths.from_env().assets / "text_embedding" / "tokenizer.json",
                     ParseLimits(), cpu_budget_s=20)
    try:
        job = ParseJob(SHAPES[shape](size), "", "", "auto", 200, 0)
        document, chunks = asyncio.run(pool.run("tenant", job, None, lambda png: []))
    finally:
        pool.close()
    assert document.pages and chunks


# --------------------------------------------------------------------------- OCR pages in flight


class PipelinedFakeOcr(FakeOcr, PipelinedOcr):
    """FakeOcr taking pages ahead (``PipelinedOcr``), recording submits and collects by width."""

    def __init__(self, fail_width: int | None = None) -> None:
        super().__init__()
        self.events: list[tuple[str, int]] = []
        self.fail_width = fail_width

    def submit(self, png: bytes):
        width = Image.open(io.BytesIO(png)).size[0]
        self.events.append(("submit", width))
        return width, png

    def collect(self, token) -> list[OcrLine]:
        width, png = token
        self.events.append(("collect", width))
        if width == self.fail_width:
            raise ConnectionError("triton is down")
        return self(png)


def tiff_frames(widths) -> bytes:
    frames = [picture((width, 80)) for width in widths]
    return image_bytes(frames[0], "TIFF", save_all=True, append_images=frames[1:])


def test_ocr_takes_two_pages_ahead_and_answers_in_page_order():
    """A pipelined OCR gets the next page before the first is read back (two out at a time,
    no more), the pages come back in order as one at a time would give them, the page
    budget still counts requests in page order, and a failure names its own page's turn."""
    widths = [100, 110, 120, 130, 140]
    ocr = PipelinedFakeOcr()
    doc = parse_document(tiff_frames(widths), ocr=ocr)
    assert [p.blocks[0].text for p in doc.pages] == [f"{w}x80" for w in widths]
    assert ocr.events == [("submit", 100), ("submit", 110), ("collect", 100), ("submit", 120),
                          ("collect", 110), ("submit", 130), ("collect", 120), ("submit", 140),
                          ("collect", 130), ("collect", 140)]
    sequential = parse_document(tiff_frames(widths), ocr=FakeOcr())
    assert sequential.pages == doc.pages and sequential.warnings == doc.warnings

    ocr = PipelinedFakeOcr()
    limited = parse_document(text_pdf(), ocr=ocr, ocr_mode="always", limits=ParseLimits(max_ocr_pages=2))
    assert [kind for kind, _ in ocr.events] == ["submit", "submit", "collect", "collect"]
    assert [p.ocr_used for p in limited.pages] == [True, True, False] and "comets" in limited.pages[2].text

    ocr = PipelinedFakeOcr(fail_width=110)
    with pytest.raises(ConnectionError, match="triton is down"):
        parse_document(tiff_frames(widths), ocr=ocr)
    assert ocr.events[-1] == ("collect", 110), "the failure stops the document at its own page"


def test_a_page_that_fails_to_render_fails_in_its_turn():
    from reading_frontend.parsing.ocrpass import OcrPass

    ocr = PipelinedFakeOcr()
    ocr_pass = OcrPass(ocr, "always", 10)

    def broken() -> bytes:
        raise CorruptDocumentError("page 2 is damaged")

    tickets = [ocr_pass.request(1, False, lambda: image_bytes(picture((100, 80)), "PNG")),
               ocr_pass.request(2, False, broken),
               ocr_pass.request(3, False, lambda: image_bytes(picture((120, 80)), "PNG"))]
    assert ocr_pass.blocks(tickets[0])[0].text == "100x80"
    with pytest.raises(CorruptDocumentError, match="page 2 is damaged"):
        ocr_pass.blocks(tickets[1])
    with pytest.raises(RuntimeError, match="in the order"):
        OcrPass(ocr, "always", 10).blocks(tickets[2])


def test_the_parse_worker_sends_the_next_page_while_one_is_read():
    """Through a real parse worker: the frontend's OCR for page 1 waits until page 2 has
    arrived (it would time out, failing the parse, were pages sent one at a time); at most
    two run at once; a job whose OCR fails leaves nothing behind for the worker's next job."""
    import asyncio
    import collections
    import threading

    from percolate_models.paths import ProjectPaths
    from reading_frontend.parse_pool import ParseJob, ParsePool

    widths = [100, 110, 120, 130]
    arrived = collections.defaultdict(threading.Event)
    lock, running, most = threading.Lock(), [0], [0]

    def ocr(png: bytes) -> list[OcrLine]:
        width = Image.open(io.BytesIO(png)).size[0]
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        try:
            arrived[width].set()
            if width == 100:
                assert arrived[110].wait(120), "page 2 did not arrive while page 1 was being read"
            if width == 120 and failing:
                raise ConnectionError("triton is down")
            return FakeOcr()(png)
        finally:
            with lock:
                running[0] -= 1

    pool = ParsePool(1, ProjectPaths.from_env().assets / "text_embedding" / "tokenizer.json",
                     ParseLimits(), cpu_budget_s=60)
    try:
        job = ParseJob(tiff_frames(widths), "", "", "auto", 200, 0)
        failing = False
        document, _ = asyncio.run(pool.run("tenant", job, None, ocr))
        assert [p.blocks[0].text for p in document.pages] == [f"{w}x80" for w in widths]
        assert most[0] == 2
        failing = True
        with pytest.raises(ConnectionError, match="triton is down"):
            asyncio.run(pool.run("tenant", job, None, ocr))
        failing = False
        again = ParseJob(tiff_frames([150, 160, 170]), "", "", "auto", 200, 0)
        document, _ = asyncio.run(pool.run("tenant", again, None, ocr))
        assert [p.blocks[0].text for p in document.pages] == ["150x80", "160x80", "170x80"]
        assert pool.replaced == 0, "the same worker throughout"
    finally:
        pool.close()


def test_a_cancelled_parse_does_not_hold_up_the_next_tenants_ocr():
    """Tenant A's Parse is cancelled while its two OCR calls hang (Triton cannot stop them):
    tenant B's Parse on the replaced worker gets its OCR at once instead of queueing behind
    A's calls, and A's worker is gone. No timing: A's calls are held until B is done."""
    import asyncio
    import contextlib
    import sys
    import threading
    import time

    from percolate_models.paths import ProjectPaths
    from reading_frontend.parse_pool import ParseJob, ParsePool

    started, release, b_seen, a_calls = threading.Event(), threading.Event(), [], []

    def ocr(png: bytes) -> list[OcrLine]:
        width = Image.open(io.BytesIO(png)).size[0]
        if width < 200:  # tenant A's pages
            a_calls.append(width)
            if len(a_calls) == 2:
                started.set()  # both of A's pages in flight hang from here
            release.wait(120)
        else:
            b_seen.append(width)
        return FakeOcr()(png)

    pool = ParsePool(1, ProjectPaths.from_env().assets / "text_embedding" / "tokenizer.json",
                     ParseLimits(), cpu_budget_s=60)

    async def scenario():
        loop = asyncio.get_running_loop()
        a = asyncio.create_task(pool.run("a", ParseJob(tiff_frames([100, 110, 120, 130]), "", "", "auto", 200, 0),
                                         None, ocr))
        assert await loop.run_in_executor(None, started.wait, 60), "A never had two OCR calls running"
        a.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await a
        job_b = ParseJob(tiff_frames([300]), "", "", "auto", 200, 0)
        return await asyncio.wait_for(pool.run("b", job_b, None, ocr), 120)

    try:
        document, _ = asyncio.run(scenario())
        assert not release.is_set() and b_seen == [300], "B was answered while A's calls still hung"
        assert document.pages[0].blocks[0].text == "300x80" and pool.replaced == 1
        release.set()
        # A's job thread ends once its killed worker's pipe says so: had the pipe been closed
        # under it (and its descriptor reused by the replacement's), it would poll for ever
        deadline = time.monotonic() + 120
        while any(frame.f_code.co_name == "_drive" for top in sys._current_frames().values()
                  for frame in _stack(top)):
            assert time.monotonic() < deadline, "a job's thread still reads a pipe after its job ended"
            time.sleep(0.1)
    finally:
        release.set()
        pool.close()


def _stack(frame):
    while frame is not None:
        yield frame
        frame = frame.f_back


def test_animated_images_are_read_from_their_first_frame_either_way():
    """Only an animation's first frame is read, by a plain OCR (page rendered when its turn
    comes, after the frame iterator moved on) as by a pipelined one."""
    frames = [Image.new("RGB", (64, 48), color) for color in ("black", "white", "gray")]
    data = {fmt: image_bytes(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100)
            for fmt in ("GIF", "WEBP", "PNG")}

    class Brightness(PipelinedFakeOcr):
        def __call__(self, png: bytes) -> list[OcrLine]:
            mean = int(np.asarray(Image.open(io.BytesIO(png)).convert("L")).mean())
            return [OcrLine(f"mean {mean}", 0.9, ((0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0)))]

    plain = Brightness()
    for fmt, content in data.items():
        for ocr in (plain.__call__, Brightness()):
            doc = parse_document(content, ocr=ocr)
            assert [p.blocks[0].text for p in doc.pages] == ["mean 0"], (fmt, ocr)


def test_pipelining_is_for_pipelined_ocrs_only_and_stops_at_a_broken_page():
    """An object that merely has submit/collect attributes (a test's mock) is called page by
    page; after a page fails to render nothing more goes out; the setting has bounds."""
    from unittest import mock

    from percolate_models.paths import ProjectPaths
    from reading_frontend.parse_pool import MAX_OCR_PAGES_IN_FLIGHT, ParsePool
    from reading_frontend.parsing.ocrpass import OcrPass

    box = ((0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0))
    mocked = mock.MagicMock(return_value=[OcrLine("hello", 0.9, box)])
    doc = parse_document(tiff_frames([100, 110]), ocr=mocked)
    assert [p.blocks[0].text for p in doc.pages] == ["hello", "hello"] and mocked.call_count == 2

    ocr = PipelinedFakeOcr()
    ocr_pass = OcrPass(ocr, "always", 10, in_flight=3)

    def broken() -> bytes:
        raise CorruptDocumentError("page 2 is damaged")

    tickets = [ocr_pass.request(1, False, lambda: image_bytes(picture((100, 80)), "PNG")),
               ocr_pass.request(2, False, broken),
               ocr_pass.request(3, False, lambda: image_bytes(picture((120, 80)), "PNG"))]
    assert ocr.events == [("submit", 100)], "nothing after the broken page goes out"
    assert ocr_pass.blocks(tickets[0])[0].text == "100x80"
    with pytest.raises(CorruptDocumentError, match="page 2 is damaged"):
        ocr_pass.blocks(tickets[1])
    for wrong in (0, MAX_OCR_PAGES_IN_FLIGHT + 1):
        with pytest.raises(ValueError, match="ocr_pages_in_flight must be between"):
            ParsePool(1, ProjectPaths.from_env().assets / "text_embedding" / "tokenizer.json",
                      ParseLimits(ocr_pages_in_flight=wrong), cpu_budget_s=60)


def test_an_ocr_answer_that_cannot_reach_the_worker_fails_the_parse_at_once():
    """Lines that do not pickle would leave the worker waiting for them until the deadline
    (or for ever without one): the worker gets an error for that page instead."""
    import asyncio

    from percolate_models.paths import ProjectPaths
    from reading_frontend.parse_pool import ParseJob, ParsePool

    import time

    def ocr(png: bytes) -> list:
        return [lambda: "not picklable"]

    pool = ParsePool(1, ProjectPaths.from_env().assets / "text_embedding" / "tokenizer.json",
                     ParseLimits(), cpu_budget_s=60)
    try:
        with pytest.raises(RuntimeError, match="could not be sent to the parser"):
            asyncio.run(pool.run("t", ParseJob(tiff_frames([100, 110]), "", "", "auto", 200, 0),
                                 time.monotonic() + 300, ocr))  # without the fix: DeadlineError
        document, _ = asyncio.run(pool.run("t", ParseJob(tiff_frames([150]), "", "", "auto", 200, 0), None,
                                           FakeOcr()))
        assert document.pages[0].blocks[0].text == "150x80" and pool.replaced == 0
    finally:
        pool.close()
