"""The parser's output: frozen dataclasses the server maps one to one onto reading.proto."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from reading_frontend.ocr import OcrLine

OcrFn = Callable[[bytes], list[OcrLine]]
"""PNG bytes of one image or page -> its text lines in reading order."""

BLOCK_TYPES = frozenset({"heading", "paragraph", "list_item", "table", "ocr_text"})
OCR_MODES = frozenset({"auto", "always", "never"})
MIB = 1024 * 1024


@dataclass(frozen=True)
class Table:
    name: str
    rows: tuple[tuple[str, ...], ...]

    @property
    def text(self) -> str:
        """Tab-separated rows; whitespace inside a cell is flattened so rows stay rows."""
        return "\n".join("\t".join(" ".join(cell.split()) for cell in row) for row in self.rows)


@dataclass(frozen=True)
class Block:
    type: str
    text: str
    level: int = 0
    """Heading level (1 is the top) or list nesting level (1 is the outermost)."""
    table: Table | None = None

    def __post_init__(self) -> None:
        if self.type not in BLOCK_TYPES:
            raise ValueError(f"unknown block type {self.type!r}")


def table_block(table: Table) -> Block:
    return Block("table", table.text, table=table)


@dataclass(frozen=True)
class Page:
    number: int
    """1-based."""
    blocks: tuple[Block, ...]
    ocr_used: bool = False

    @property
    def text(self) -> str:
        return "\n\n".join(block.text for block in self.blocks if block.text)


@dataclass(frozen=True)
class ParsedDocument:
    format: str
    mime_type: str
    metadata: dict[str, str]
    pages: tuple[Page, ...]
    warnings: tuple[str, ...]

    @property
    def text(self) -> str:
        return "\n\n".join(page.text for page in self.pages if page.blocks)


@dataclass(frozen=True)
class Chunk:
    ordinal: int
    """0-based position in the document's chunk list."""
    text: str
    page_start: int
    page_end: int
    heading_path: tuple[str, ...]
    token_count: int


@dataclass(frozen=True)
class ParseLimits:
    max_pages: int = 2000
    max_uncompressed_bytes: int = 512 * MIB
    max_zip_ratio: float = 200
    max_image_pixels: int = 40_000_000
    max_ocr_pages: int = 200
    ocr_pages_in_flight: int = 2
    """Pages of one document out at OCR at once (``ocrpass.py``): two keep Triton's detection
    and recognition busy together; 1 sends them one at a time."""
    max_sheet_cells: int = 10_000_000
    """Cells an XLSX may lay out, empty ones included: a few bytes naming cell XFD1048576
    would otherwise make 17 billion."""


@dataclass(frozen=True)
class Extraction:
    """What one format's parser found; parse_document adds format, mime type and hints."""

    pages: tuple[Page, ...]
    metadata: dict[str, str]
    warnings: tuple[str, ...] = ()
