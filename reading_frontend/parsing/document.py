"""``parse_document``: detect the format from the bytes, run its parser, report problems as
DocumentError subclasses with one-line messages."""
from __future__ import annotations

import posixpath
from typing import Callable

from .detect import MIME_TYPES, detect_format
from .errors import CorruptDocumentError, DocumentError, DocumentTooLargeError, one_line
from .images import parse_image
from .markup import parse_html, parse_markdown, parse_text
from .model import Extraction, OcrFn, ParsedDocument, ParseLimits
from .ocrpass import OcrCallError, OcrPass
from .office import parse_docx, parse_xlsx
from .pdf import parse_pdf

_Parser = Callable[[bytes, OcrPass, ParseLimits], Extraction]
_PARSERS: dict[str, _Parser] = {
    "pdf": parse_pdf,
    "docx": lambda data, ocr, limits: parse_docx(data, limits),
    "xlsx": lambda data, ocr, limits: parse_xlsx(data, limits),
    "html": lambda data, ocr, limits: parse_html(data),
    "markdown": lambda data, ocr, limits: parse_markdown(data),
    "text": lambda data, ocr, limits: parse_text(data),
    **{image: parse_image for image in ("png", "jpeg", "tiff", "bmp", "webp", "gif")},
}
_EXTENSIONS = {
    ".pdf": "pdf", ".docx": "docx", ".docm": "docx", ".xlsx": "xlsx", ".xlsm": "xlsx",
    ".htm": "html", ".html": "html", ".xhtml": "html", ".md": "markdown", ".markdown": "markdown",
    ".txt": "text", ".text": "text", ".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg",
    ".tif": "tiff", ".tiff": "tiff", ".bmp": "bmp", ".webp": "webp", ".gif": "gif",
}
_MIME_ALIASES = {"image/jpg": "jpeg", "image/pjpeg": "jpeg", "image/x-ms-bmp": "bmp",
                 "image/x-bmp": "bmp", "application/xhtml+xml": "html",
                 "text/x-markdown": "markdown", "application/x-pdf": "pdf"}
_MIME_FORMATS = {**{mime: fmt for fmt, mime in MIME_TYPES.items()}, **_MIME_ALIASES}
_TEXT_FAMILY = {"text", "markdown"}


def parse_document(data: bytes, *, filename: str = "", mime_type: str = "",
                   ocr: OcrFn | None = None, ocr_mode: str = "auto",
                   limits: ParseLimits = ParseLimits()) -> ParsedDocument:
    """Pages of typed blocks, metadata and warnings. ``filename`` and ``mime_type`` are
    hints: they never change how the content is read, only add a warning on mismatch."""
    ocr_pass = OcrPass(ocr, ocr_mode, limits.max_ocr_pages, limits.ocr_pages_in_flight)
    fmt, mime = detect_format(data)
    extraction = _extract(data, fmt, ocr_pass, limits)
    warnings = hint_warnings(fmt, filename, mime_type) + list(extraction.warnings)
    if not any(page.blocks for page in extraction.pages) and not extraction.warnings:
        warnings.append("no text was found in the document")
    return ParsedDocument(fmt, mime, extraction.metadata, extraction.pages, tuple(warnings))


def _extract(data: bytes, fmt: str, ocr: OcrPass, limits: ParseLimits) -> Extraction:
    """Library failures become CorruptDocumentError; OCR failures pass through untouched
    (Triton being down is not the tenant's document's fault)."""
    try:
        return _PARSERS[fmt](data, ocr, limits)
    except DocumentError:
        raise
    except OcrCallError as failure:
        raise failure.__cause__ from None
    except MemoryError:
        raise DocumentTooLargeError(f"the {fmt} needs more memory than is available") from None
    except RecursionError:
        raise CorruptDocumentError(f"could not read the {fmt}: nested too deeply") from None
    except Exception as error:  # every parser library has its own exception zoo
        raise CorruptDocumentError(f"could not read the {fmt}: {one_line(error)}") from error


def hint_warnings(fmt: str, filename: str, mime_type: str) -> list[str]:
    warnings = []
    extension = posixpath.splitext(filename.replace("\\", "/").lower())[1]
    named = _EXTENSIONS.get(extension)
    if named and not _agree(named, fmt):
        warnings.append(f"the file name {_short(filename)} suggests {named}, but the content is "
                        f"{fmt}; parsed as {fmt}")
    declared = _MIME_FORMATS.get(mime_type.split(";")[0].strip().lower())
    if declared and not _agree(declared, fmt):
        warnings.append(f"the MIME type {_short(mime_type)} suggests {declared}, but the content "
                        f"is {fmt}; parsed as {fmt}")
    return warnings


def _agree(hinted: str, detected: str) -> bool:
    return hinted == detected or {hinted, detected} <= _TEXT_FAMILY


def _short(value: str) -> str:
    return repr(value if len(value) <= 80 else value[:79] + "…")
