"""PDF: pypdf's text layer; pages without one are rasterised with pdfium for OCR."""
from __future__ import annotations

import io
import math
import threading

import pypdfium2 as pdfium
from pypdf import PasswordType, PdfReader
from pypdf.errors import LimitReachedError

from .errors import DocumentTooLargeError, EncryptedDocumentError, one_line
from .images import to_png
from .model import Block, Extraction, Page, ParseLimits
from .ocrpass import OcrPass
from .textutil import clean_metadata, split_paragraphs

RENDER_DPI = 200
RENDER_GRAYSCALE = True
"""Scanned pages are text on paper: gray renders and encodes about 4x faster than RGB and
gives a PNG half the size, and the OCR models see the same luminance."""
_POINTS_PER_INCH = 72
_PDFIUM_LOCK = threading.Lock()
"""PDFium is not thread-safe, even across documents: one call at a time per process."""


def parse_pdf(data: bytes, ocr: OcrPass, limits: ParseLimits) -> Extraction:
    try:
        return _parse(data, ocr, limits)
    except LimitReachedError as error:
        raise DocumentTooLargeError(f"the PDF exceeds a decoding limit: {one_line(error)}") from None


def _parse(data: bytes, ocr: OcrPass, limits: ParseLimits) -> Extraction:
    reader = _open(data)
    count = len(reader.pages)
    if count > limits.max_pages:
        raise DocumentTooLargeError(f"the PDF has {count} pages, above the limit of "
                                    f"{limits.max_pages}")
    pages, warnings = [], []
    with _Rasteriser(data, limits.max_image_pixels) as raster:
        for index, pdf_page in enumerate(reader.pages):
            text, problem = _page_text(pdf_page)
            if problem:
                warnings.append(f"page {index + 1}: the text layer could not be read ({problem})")
            pages.append(_page(index + 1, text, ocr, lambda: raster.png(index)))
    metadata = {**_metadata(reader), "page_count": str(count)}
    return Extraction(tuple(pages), metadata, tuple(warnings + ocr.warnings()))


def _open(data: bytes) -> PdfReader:
    """Opens PDFs whose only password is the empty one, as every viewer does."""
    reader = PdfReader(io.BytesIO(data), strict=False)
    if reader.is_encrypted and reader.decrypt("") == PasswordType.NOT_DECRYPTED:
        raise EncryptedDocumentError("the PDF is password-protected; remove the password "
                                     "and send it again")
    return reader


def _page_text(page) -> tuple[str, str]:
    """One unreadable page (bad font, broken content stream) should not sink the document."""
    try:
        return page.extract_text() or "", ""
    except LimitReachedError:
        raise
    except Exception as error:  # pypdf raises many types on damaged content streams
        return "", one_line(error)


def _page(number: int, text: str, ocr: OcrPass, render) -> Page:
    paragraphs = split_paragraphs(text)
    blocks = ocr.run(number, bool(paragraphs), render)
    if blocks is not None:
        return Page(number, blocks, ocr_used=True)
    return Page(number, tuple(Block("paragraph", p) for p in paragraphs))


def _metadata(reader: PdfReader) -> dict[str, str]:
    """Optional extras: a damaged info dictionary costs the metadata, not the document."""
    try:
        info = reader.metadata
        return clean_metadata({"title": info.title, "author": info.author}) if info else {}
    except Exception:  # same exception zoo as the page content
        return {}


def render_scale(width: float, height: float, max_pixels: int) -> float:
    """About RENDER_DPI, lowered so the bitmap stays under the pixel limit."""
    scale = RENDER_DPI / _POINTS_PER_INCH
    area = max(width, 1.0) * max(height, 1.0)
    if area * scale * scale > max_pixels:
        scale = math.sqrt(max_pixels / area) * 0.99
    return scale


class _Rasteriser:
    """Opens the PDF in pdfium only when a page actually needs OCR."""

    def __init__(self, data: bytes, max_pixels: int) -> None:
        self._data, self._max_pixels, self._document = data, max_pixels, None

    def __enter__(self) -> "_Rasteriser":
        return self

    def __exit__(self, *exc) -> None:
        if self._document is not None:
            with _PDFIUM_LOCK:
                self._document.close()

    def png(self, index: int) -> bytes:
        with _PDFIUM_LOCK:
            if self._document is None:
                self._document = pdfium.PdfDocument(self._data)
            page = self._document[index]
            try:
                width, height = page.get_size()
                bitmap = page.render(scale=render_scale(width, height, self._max_pixels),
                                     grayscale=RENDER_GRAYSCALE)
                image = bitmap.to_pil().copy()
            finally:
                page.close()
        return to_png(image)
