"""DOCX and XLSX: OOXML zip packages, checked for zip bombs before anything is inflated."""
from __future__ import annotations

import datetime as dt
import io
import re
import zipfile
from typing import Iterable, Iterator

import docx
import openpyxl
from docx.enum.style import WD_STYLE_TYPE
from docx.oxml.ns import qn

from .errors import DocumentTooLargeError
from .model import Block, Extraction, Page, ParseLimits, Table, table_block
from .textutil import clean_metadata, clean_text, squash

ZIP_RATIO_GRACE_BYTES = 1024 * 1024
"""Small members may compress extremely well (repeated XML) without being a threat."""

# --------------------------------------------------------------------------- zip bombs


def check_zip(data: bytes, fmt: str, limits: ParseLimits) -> None:
    """Refuse from the central directory alone; zipfile stops at each declared size anyway."""
    members = zipfile.ZipFile(io.BytesIO(data)).infolist()
    total = sum(member.file_size for member in members)
    if total > limits.max_uncompressed_bytes:
        raise DocumentTooLargeError(
            f"the {fmt} would unpack to {total:,} bytes, above the limit of "
            f"{limits.max_uncompressed_bytes:,} (max_uncompressed_bytes)")
    for member in members:
        ratio = member.file_size / max(member.compress_size, 1)
        if member.file_size > ZIP_RATIO_GRACE_BYTES and ratio > limits.max_zip_ratio:
            raise DocumentTooLargeError(
                f"the {fmt} part {member.filename[:80]!r} expands {ratio:,.0f}x, above the "
                f"limit of {limits.max_zip_ratio:g}x (max_zip_ratio): likely a zip bomb")


# --------------------------------------------------------------------------- docx

_T, _TAB, _BR, _CR = qn("w:t"), qn("w:tab"), qn("w:br"), qn("w:cr")
_P, _TBL, _TR, _TC, _SDT = qn("w:p"), qn("w:tbl"), qn("w:tr"), qn("w:tc"), qn("w:sdt")
_SKIPPED = {qn("w:del"), qn("w:delText"), qn("w:instrText"),
            "{http://schemas.openxmlformats.org/markup-compatibility/2006}Fallback"}
_CONTAINERS = {qn("w:sdtContent"), qn("w:customXml"), qn("w:smartTag"), _SDT}
_HEADING_NAME = re.compile(r"heading\s*([1-9])$", re.IGNORECASE)
_TRAILING_NUMBER = re.compile(r"(\d)$")


def parse_docx(data: bytes, limits: ParseLimits) -> Extraction:
    check_zip(data, "DOCX", limits)
    document = docx.Document(io.BytesIO(data))
    styles = _ParagraphStyles(document)
    blocks = tuple(block for element in _body_elements(document.element.body)
                   if (block := _docx_block(element, styles)) is not None)
    core = document.core_properties
    metadata = clean_metadata({"title": core.title, "author": core.author})
    return Extraction((Page(1, blocks),), metadata)


def _body_elements(parent) -> Iterator:
    """Paragraphs and tables in document order, including those inside content controls."""
    for child in parent:
        if child.tag in (_P, _TBL):
            yield child
        elif child.tag in _CONTAINERS:
            yield from _body_elements(child)


def _docx_block(element, styles: "_ParagraphStyles") -> Block | None:
    if element.tag == _TBL:
        table = Table("", tuple(_docx_rows(element)))
        return table_block(table) if table.rows else None
    text = clean_text(_paragraph_text(element))
    if not text:
        return None
    kind, level = styles.classify(element)
    return Block(kind, squash(text) if kind == "heading" else text, level)


def _paragraph_text(element) -> str:
    return "".join(_texts(element))


def _texts(element) -> Iterator[str]:
    """Visible text: insertions, hyperlinks, fields and text boxes, but not deletions or
    the duplicate fallback copy of drawings."""
    for child in element:
        tag = child.tag
        if tag == _T:
            yield child.text or ""
        elif tag == _TAB:
            yield "\t"
        elif tag in (_BR, _CR):
            yield "\n"
        elif tag not in _SKIPPED:
            yield from _texts(child)


def _docx_rows(table) -> Iterator[tuple[str, ...]]:
    """Rows of this table only: a nested table's text is already in its enclosing cell."""
    for row in table.iter(_TR):
        if _nearest(row, _TBL) is table:
            cells = [text for cell in row.iter(_TC) if _nearest(cell, _TR) is row
                     for text in _docx_cell(cell)]
            if any(cells):
                yield tuple(cells)


def _nearest(element, tag: str):
    parent = element.getparent()
    while parent is not None and parent.tag != tag:
        parent = parent.getparent()
    return parent


def _docx_cell(cell) -> list[str]:
    """The cell's text, then empty cells for the grid columns it spans, so columns line up."""
    text = "\n".join(t for t in (clean_text(_paragraph_text(p)) for p in cell.iter(_P)) if t)
    span = cell.find(f"{qn('w:tcPr')}/{qn('w:gridSpan')}")
    width = int(span.get(qn("w:val"), "1")) if span is not None else 1
    return [text] + [""] * (min(max(width, 1), 64) - 1)


class _ParagraphStyles:
    """Heading and list semantics of each paragraph style, resolved once per style id."""

    def __init__(self, document) -> None:
        self._styles = {style.style_id: style for style in document.styles
                        if style.type == WD_STYLE_TYPE.PARAGRAPH}
        self._cache: dict[str | None, tuple[int, int | None, bool]] = {}

    def classify(self, paragraph) -> tuple[str, int]:
        ppr = paragraph.find(qn("w:pPr"))
        style_id = _child_val(ppr, "w:pStyle")
        heading, style_list_level, list_named = self._resolve(style_id)
        heading = _outline_heading(ppr) or heading
        if heading:
            return "heading", heading
        direct = _numbering_level(ppr)
        if direct is not None:
            return "list_item", direct
        if style_list_level is not None:
            return "list_item", style_list_level
        return ("list_item", 1) if list_named else ("paragraph", 0)

    def _resolve(self, style_id: str | None) -> tuple[int, int | None, bool]:
        """(heading level or 0, list level from the style's numbering, List-named style)."""
        if style_id not in self._cache:
            self._cache[style_id] = self._walk(self._styles.get(style_id))
        return self._cache[style_id]

    def _walk(self, style) -> tuple[int, int | None, bool]:
        """"List Bullet 2" means the second level even though its numbering says level 0:
        Word gives each numbered list style its own, further indented, definition."""
        heading, list_level, list_named = 0, None, False
        for _ in range(10):  # base_style chains are short; cycles exist in broken files
            if style is None:
                break
            name = style.name or ""
            ppr = style.element.find(qn("w:pPr"))
            heading = heading or _heading_from_name(name) or _outline_heading(ppr)
            if name.lower().startswith("list") and not list_named:
                list_named = True
                match = _TRAILING_NUMBER.search(name)
                list_level = list_level or (int(match.group(1)) if match else None)
            if list_level is None:
                list_level = _numbering_level(ppr)
            style = style.base_style
        return heading, list_level, list_named


def _heading_from_name(name: str) -> int:
    if name.lower() == "title":
        return 1
    match = _HEADING_NAME.match(name)
    return int(match.group(1)) if match else 0


def _outline_heading(ppr) -> int:
    """``w:outlineLvl`` 0-8 marks a heading whatever the style is called; 9 is body text."""
    value = _child_val(ppr, "w:outlineLvl")
    return int(value) + 1 if value is not None and value.isdigit() and int(value) < 9 else 0


def _numbering_level(ppr) -> int | None:
    """1-based list level from ``w:numPr``; numId 0 means numbering was switched off."""
    numbering = ppr.find(qn("w:numPr")) if ppr is not None else None
    if numbering is None or _child_val(numbering, "w:numId") in (None, "0"):
        return None
    level = _child_val(numbering, "w:ilvl")
    return int(level) + 1 if level is not None and level.isdigit() else 1


def _child_val(element, tag: str) -> str | None:
    child = element.find(qn(tag)) if element is not None else None
    return child.get(qn("w:val")) if child is not None else None


# --------------------------------------------------------------------------- xlsx


def parse_xlsx(data: bytes, limits: ParseLimits) -> Extraction:
    check_zip(data, "XLSX", limits)
    workbook = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    try:
        sheets = workbook.worksheets
        if len(sheets) > limits.max_pages:
            raise DocumentTooLargeError(f"the XLSX has {len(sheets)} sheets, above the limit of "
                                        f"{limits.max_pages} pages")
        budget = _CellBudget(limits.max_sheet_cells)
        pages = tuple(_sheet_page(number, sheet, budget)
                      for number, sheet in enumerate(sheets, start=1))
        properties = workbook.properties
        metadata = clean_metadata({"title": properties.title, "author": properties.creator})
    finally:
        workbook.close()
    return Extraction(pages, metadata)


class _CellBudget:
    """Counts the cells the workbook lays out (empty ones too) against max_sheet_cells,
    as they stream from openpyxl and again for the padded grid of each sheet."""

    def __init__(self, limit: int) -> None:
        self.left = limit
        self.limit = limit

    def rows(self, sheet) -> Iterator[tuple]:
        for row in sheet.iter_rows(values_only=True):
            self.take(max(len(row), 1))
            yield row

    def take(self, cells: int) -> None:
        self.left -= cells
        if self.left < 0:
            raise DocumentTooLargeError(
                f"the XLSX lays out more than {self.limit:,} cells (max_sheet_cells)")


def _sheet_page(number: int, sheet, budget: _CellBudget) -> Page:
    sheet.reset_dimensions()  # declared dimensions are often wrong; read what is there
    rows = trim_rows((tuple(cell_text(value) for value in row) for row in budget.rows(sheet)),
                     budget)
    table = Table(sheet.title, rows)
    return Page(number, (table_block(table),) if rows else ())


def trim_rows(rows: Iterable[tuple[str, ...]],
              budget: _CellBudget | None = None) -> tuple[tuple[str, ...], ...]:
    """Drop empty rows and columns around the data and pad rows to one width (the padded
    grid is charged to ``budget`` before it is built)."""
    kept: list[tuple[str, ...]] = []
    pending_empty = 0
    for row in rows:
        if not any(row):
            pending_empty += bool(kept)
            continue
        kept.extend([()] * pending_empty)
        pending_empty = 0
        kept.append(row)
    filled = [row for row in kept if row]
    if not filled:
        return ()
    first = min(next(i for i, cell in enumerate(row) if cell) for row in filled)
    last = max(max(i for i, cell in enumerate(row) if cell) for row in filled)
    width = last + 1 - first
    if budget is not None and len(kept) * width > budget.limit:
        budget.take(budget.limit + 1)  # the padded grid alone is over the limit
    return tuple(tuple(row[first:last + 1]) + ("",) * (width - len(row[first:last + 1]))
                 for row in kept)


def cell_text(value) -> str:
    """A cell as Excel would show it without number formats: 3 not 3.0, dates in ISO."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else f"{value:.15g}"
    if isinstance(value, dt.datetime):
        midnight = value.time() == dt.time(0) and value.tzinfo is None
        return value.date().isoformat() if midnight else value.isoformat()
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    return clean_text(str(value))
