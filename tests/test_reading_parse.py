"""Parse over mutual TLS with OCR and embeddings on the real Triton; bad documents get a
clear status and the server keeps serving."""
from __future__ import annotations

import io

import grpc
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from reportlab.lib.pagesizes import letter
from reportlab.lib.utils import ImageReader
from reportlab.pdfgen import canvas

from percolate.reading.v1 import reading_pb2 as pb
from reading_frontend.parsing.office import ZIP_RATIO_GRACE_BYTES
from tests.test_parsing import (PDF_SENTENCES, encrypted_pdf, png_bomb, sample_docx, sample_xlsx,
                                text_pdf, zip_bytes)
from tests.test_reading_service import assert_status, still_serving

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
SCANNED_LINES = ["Scanned contract for Percolate", "Signed on the first of June"]


def scanned_pdf() -> bytes:
    """Page 1 has a text layer; page 2 is only an image of printed text."""
    image = Image.new("RGB", (1240, 500), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.truetype(FONT, 48)
    for row, line in enumerate(SCANNED_LINES):
        draw.text((60, 80 + row * 150), line, fill="black", font=font)
    out = io.BytesIO()
    pdf = canvas.Canvas(out, pagesize=letter)
    pdf.drawString(72, 720, "The cover page has a text layer.")
    pdf.showPage()
    pdf.drawImage(ImageReader(image), 36, 400, 540, 218)
    pdf.showPage()
    pdf.save()
    return out.getvalue()


def test_text_pdf_with_chunks_and_embeddings(reading_stub):
    request = pb.ParseRequest(content=text_pdf(), filename="misleading.docx",
                              options=pb.ParseOptions(embed=True, normalize=True, chunk_tokens=32))
    response = reading_stub.Parse(request, timeout=60)
    assert response.format == "pdf" and len(response.pages) == 3
    assert response.metadata["title"] == "Fruit and Sky"
    assert PDF_SENTENCES[2][0] in response.pages[1].text
    assert len(response.chunks) > 3
    assert [c.ordinal for c in response.chunks] == list(range(len(response.chunks)))
    assert response.chunks[0].page_start == 1 and response.chunks[-1].page_end == 3
    assert all(c.token_count <= 32 for c in response.chunks)
    vectors = np.array([c.embedding for c in response.chunks])
    assert vectors.shape == (len(response.chunks), 384) and response.embedding_dimensions == 384
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert any("docx" in w for w in response.warnings)  # the hint disagreed with the content


def test_image_only_page_is_ocrd_on_triton(reading_stub):
    response = reading_stub.Parse(pb.ParseRequest(content=scanned_pdf()), timeout=120)
    cover, scan = response.pages
    assert not cover.ocr_used and "cover page" in cover.text
    assert scan.ocr_used
    assert [b.type for b in scan.blocks] == [pb.BLOCK_TYPE_OCR_TEXT] * len(SCANNED_LINES)
    assert ["".join(b.text.split()) for b in scan.blocks] == ["".join(l.split()) for l in SCANNED_LINES]
    never = reading_stub.Parse(pb.ParseRequest(content=scanned_pdf(),
                                               options=pb.ParseOptions(ocr=pb.OCR_MODE_NEVER)))
    assert not never.pages[1].blocks and any("page 2" in w for w in never.warnings)


def test_docx_and_xlsx_structure(reading_stub):
    docx = reading_stub.Parse(pb.ParseRequest(content=sample_docx()))
    assert docx.format == "docx"
    types = [b.type for b in docx.pages[0].blocks]
    assert pb.BLOCK_TYPE_HEADING in types and pb.BLOCK_TYPE_LIST_ITEM in types
    (table,) = [b.table for b in docx.pages[0].blocks if b.type == pb.BLOCK_TYPE_TABLE]
    assert [list(r.cells) for r in table.rows][0] == ["Region", "Q1", "Q2"]
    assert any(list(c.heading_path)[-1:] == ["Figures"] for c in docx.chunks)
    xlsx = reading_stub.Parse(pb.ParseRequest(content=sample_xlsx()))
    assert xlsx.format == "xlsx" and len(xlsx.pages) == 2
    assert all(p.blocks[0].type == pb.BLOCK_TYPE_TABLE and p.blocks[0].table.name for p in xlsx.pages)


def test_bad_documents(reading_stub):
    corrupt = text_pdf()[:700]
    assert_status(lambda: reading_stub.Parse(pb.ParseRequest(content=corrupt)),
                  grpc.StatusCode.INVALID_ARGUMENT)
    assert_status(lambda: reading_stub.Parse(pb.ParseRequest(content=encrypted_pdf("s3cret"))),
                  grpc.StatusCode.INVALID_ARGUMENT, "password")
    bomb = zip_bytes({"[Content_Types].xml": b'<?xml version="1.0"?><Types/>',
                      "word/document.xml": bytes(64 * ZIP_RATIO_GRACE_BYTES)})
    assert_status(lambda: reading_stub.Parse(pb.ParseRequest(content=bomb)),
                  grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert_status(lambda: reading_stub.Parse(pb.ParseRequest(content=png_bomb())),
                  grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert_status(lambda: reading_stub.Parse(pb.ParseRequest(content=b"")),
                  grpc.StatusCode.INVALID_ARGUMENT, "empty")
    assert_status(lambda: reading_stub.Parse(pb.ParseRequest(content=bytes(range(256)) * 8)),
                  grpc.StatusCode.INVALID_ARGUMENT)
    assert_status(lambda: reading_stub.Parse(pb.ParseRequest(
        content=b"hello", options=pb.ParseOptions(chunk_tokens=5000))),
        grpc.StatusCode.INVALID_ARGUMENT, "chunk_tokens")
    still_serving(reading_stub)
