"""PDF: the text layer read with pdfium as positioned pieces and laid out into lines,
paragraphs, headings, lists and tables (``pdflayout.py``); pages without a text layer, or
whose text is tiny beside their images, are rasterised with pdfium for OCR. pypdf opens
the file (passwords, limits, metadata) and reads the text of a page pdfium cannot lay out.
"""
from __future__ import annotations

import ctypes
import io
import math
import threading

import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c
from pypdf import PasswordType, PdfReader
from pypdf.errors import LimitReachedError

from .errors import DocumentTooLargeError, EncryptedDocumentError, one_line
from .images import to_png
from .model import Block, Extraction, Page, ParseLimits
from .ocrpass import OcrPass, OcrTicket
from .pdfgeometry import Ruling, Span
from .pdflayout import PageContent, document_blocks
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
    layout = _read_layout(data, count)
    pages, warnings = [], []
    with _Rasteriser(data, limits.max_image_pixels) as raster:
        # every page's text and OCR request first: scanned pages go out (a few at a time,
        # OcrPass) while the later pages' text layers are read
        planned = []
        for index, pdf_page in enumerate(reader.pages):
            if layout is None or layout[index] is None:
                text, problem = _page_text(pdf_page)
                if problem:
                    warnings.append(f"page {index + 1}: the text layer could not be read ({problem})")
                blocks, wants_ocr = tuple(Block("paragraph", p) for p in split_paragraphs(text)), False
            else:
                blocks, wants_ocr = layout[index]
            ticket = ocr.request(index + 1, bool(blocks) and not wants_ocr, lambda index=index: raster.png(index))
            planned.append((index + 1, blocks, ticket))
        for number, blocks, ticket in planned:
            pages.append(_page(number, blocks, ticket, ocr))
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


def _page(number: int, blocks: tuple[Block, ...], ticket: OcrTicket | None, ocr: OcrPass) -> Page:
    """The page from its OCR when it was requested (no text layer, or one tiny beside the
    page's images: a scan with a few stamped words), else from its text layer, which also
    stays when OCR cannot run."""
    if ticket is not None:
        return Page(number, ocr.blocks(ticket), ocr_used=True)
    return Page(number, blocks)


_TINY_TEXT = 0.02
"""A page whose text covers less than this fraction of its images' area, with images on
at least a third of the page, is OCRed as a scan."""


def _read_layout(data: bytes, count: int) -> list[tuple[tuple[Block, ...], bool] | None] | None:
    """(blocks, wants OCR) per page from pdfium, None for a page it could not read (or
    for all when it cannot open the file: pypdf, more lenient, still may)."""
    with _PDFIUM_LOCK:
        try:
            document = pdfium.PdfDocument(data)
        except pdfium.PdfiumError:
            return None
        try:
            if len(document) != count:
                return None
            contents: list[PageContent | None] = []
            image_share: list[float] = []
            for index in range(count):
                try:
                    content, images = _page_content(document, index)
                except pdfium.PdfiumError:
                    content, images = None, 0.0
                contents.append(content)
                image_share.append(images)
        finally:
            document.close()
    readable = [c for c in contents if c is not None]
    laid_out = iter(document_blocks(readable))
    result = []
    for content, images in zip(contents, image_share):
        if content is None:
            result.append(None)
            continue
        blocks = next(laid_out)
        area = content.width * content.height or 1.0
        text_area = sum((s.x1 - s.x0) * s.size for s in content.spans)
        tiny = images >= area / 3 and text_area < _TINY_TEXT * images
        result.append((blocks, tiny))
    return result


def _page_content(document: pdfium.PdfDocument, index: int) -> tuple[PageContent, float]:
    """The page's text spans and ruling lines in page space, and its images' area."""
    page = document[index]
    try:
        width, height = page.get_size()
        textpage = page.get_textpage()
        try:
            reader = _ObjectReader(textpage.raw)
            count = pdfium_c.FPDFPage_CountObjects(page.raw)
            for i in range(count):
                reader.visit(pdfium_c.FPDFPage_GetObject(page.raw, i), _IDENTITY, 0)
        finally:
            textpage.close()
    finally:
        page.close()
    return PageContent(width, height, reader.spans, reader.rulings), reader.image_area


_IDENTITY = (1.0, 0.0, 0.0, 1.0, 0.0, 0.0)
_FORCE_BOLD = 1 << 18
_MAX_FORM_DEPTH = 4


def _multiply(m, n):
    """The affine matrix ``m`` then ``n`` (PDF order: a b c d e f)."""
    a, b, c, d, e, f = m
    A, B, C, D, E, F = n
    return (a * A + b * C, a * B + b * D, c * A + d * C, c * B + d * D, e * A + f * C + E, e * B + f * D + F)


def _apply(m, x: float, y: float) -> tuple[float, float]:
    return m[0] * x + m[2] * y + m[4], m[1] * x + m[3] * y + m[5]


class _ObjectReader:
    """Walks a page's objects (into form XObjects) collecting text spans, ruling lines
    and image area. One text-showing operator is one span: far fewer calls than reading
    every character, which keeps PDF parsing as fast as pypdf's text extraction."""

    def __init__(self, textpage) -> None:
        self.textpage = textpage
        self.spans: list[Span] = []
        self.rulings: list[Ruling] = []
        self.image_area = 0.0
        self._fonts: dict[int, bool] = {}
        self._buffer = ctypes.create_string_buffer(8192)
        self._box = [ctypes.c_float() for _ in range(4)]
        self._matrix = pdfium_c.FS_MATRIX()

    def visit(self, obj, outer, depth: int) -> None:
        kind = pdfium_c.FPDFPageObj_GetType(obj)
        if kind == pdfium_c.FPDF_PAGEOBJ_TEXT:
            self._text(obj, outer)
        elif kind == pdfium_c.FPDF_PAGEOBJ_PATH:
            self._path(obj, outer)
        elif kind == pdfium_c.FPDF_PAGEOBJ_IMAGE:
            x0, y0, x1, y1 = self._bounds(obj, outer)
            self.image_area += (x1 - x0) * (y1 - y0)
        elif kind == pdfium_c.FPDF_PAGEOBJ_FORM and depth < _MAX_FORM_DEPTH:
            inner = _multiply(self._get_matrix(obj), outer)
            for i in range(pdfium_c.FPDFFormObj_CountObjects(obj)):
                self.visit(pdfium_c.FPDFFormObj_GetObject(obj, i), inner, depth + 1)

    def _get_matrix(self, obj):
        m = self._matrix
        if not pdfium_c.FPDFPageObj_GetMatrix(obj, ctypes.byref(m)):
            return _IDENTITY
        return (m.a, m.b, m.c, m.d, m.e, m.f)

    def _bounds(self, obj, outer) -> tuple[float, float, float, float]:
        left, bottom, right, top = self._box
        pdfium_c.FPDFPageObj_GetBounds(obj, ctypes.byref(left), ctypes.byref(bottom),
                                       ctypes.byref(right), ctypes.byref(top))
        if outer is _IDENTITY:
            return left.value, bottom.value, right.value, top.value
        corners = [_apply(outer, x, y) for x in (left.value, right.value) for y in (bottom.value, top.value)]
        xs, ys = [c[0] for c in corners], [c[1] for c in corners]
        return min(xs), min(ys), max(xs), max(ys)

    def _text(self, obj, outer) -> None:
        size_out = ctypes.c_float()
        if not pdfium_c.FPDFTextObj_GetFontSize(obj, ctypes.byref(size_out)):
            return
        got = pdfium_c.FPDFTextObj_GetText(obj, self.textpage, ctypes.cast(self._buffer, ctypes.POINTER(
            ctypes.c_ushort)), len(self._buffer))
        if got > len(self._buffer):
            self._buffer = ctypes.create_string_buffer(got)
            got = pdfium_c.FPDFTextObj_GetText(obj, self.textpage, ctypes.cast(self._buffer, ctypes.POINTER(
                ctypes.c_ushort)), len(self._buffer))
        text = self._buffer.raw[:max(got - 2, 0)].decode("utf-16-le", "replace").replace("\x00", "")
        if not text.strip():
            return
        matrix = _multiply(self._get_matrix(obj), outer)
        size = size_out.value * math.hypot(matrix[2], matrix[3])
        if size <= 0:
            return
        x0, _, x1, _ = self._bounds(obj, outer)
        self.spans.append(Span(text, x0, x1, matrix[5], size, self._bold(obj)))

    def _bold(self, obj) -> bool:
        font = pdfium_c.FPDFTextObj_GetFont(obj)
        key = ctypes.cast(font, ctypes.c_void_p).value or 0
        known = self._fonts.get(key)
        if known is None:
            weight = pdfium_c.FPDFFont_GetWeight(font) if font else -1
            size = pdfium_c.FPDFFont_GetBaseFontName(font, self._buffer, len(self._buffer)) if font else 0
            name = self._buffer.raw[:max(size - 1, 0)].decode("latin-1").lower()
            flags = pdfium_c.FPDFFont_GetFlags(font) if font else 0
            known = self._fonts[key] = (weight >= 600 or bool(flags & _FORCE_BOLD)
                                        or any(w in name for w in ("bold", "black", "heavy", "semibold")))
        return known

    def _path(self, obj, outer) -> None:
        x0, y0, x1, y1 = self._bounds(obj, outer)
        width, height = x1 - x0, y1 - y0
        if height <= 2.5 and width > 5:
            self.rulings.append(Ruling(x0, (y0 + y1) / 2, x1, (y0 + y1) / 2))
        elif width <= 2.5 and height > 5:
            self.rulings.append(Ruling((x0 + x1) / 2, y0, (x0 + x1) / 2, y1))
        elif width > 5 and height > 5 and pdfium_c.FPDFPath_CountSegments(obj) <= 6:  # a box
            self.rulings += [Ruling(x0, y0, x1, y0), Ruling(x0, y1, x1, y1),
                             Ruling(x0, y0, x0, y1), Ruling(x1, y0, x1, y1)]


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
