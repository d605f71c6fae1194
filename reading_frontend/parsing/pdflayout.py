"""From the text pieces of PDF pages to typed blocks: reading order (two columns read one
after the other), running headers and footers dropped, tables, paragraphs rebuilt from
lines, list items, and headings with levels from font size, weight and numbering.

Works on the whole document at once because two decisions need every page: which lines
repeat as furniture, and which font style is the body text (headings stand out from it).
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from .model import Block, Table, table_block
from .pdfgeometry import Row, Ruling, Segment, Span, build_rows
from .pdftables import FoundTable, aligned_tables, ruled_tables

_FURNITURE_BAND = 0.1
"""Running headers and footers live in the top and bottom tenth of the page."""
_LIST_MARKER = re.compile(r"^(?:[•◦▪▫‣∙·●○■□➢►–—\-*]|\(?[a-z]\)|\(?\d{1,2}\)|\(?[ivx]{1,4}\)|\d{1,2}\.(?=\s+[a-z]))\s+")
_NUMBERING = re.compile(r"^(?:(?:section|article|chapter|part)\s+)?(\d{1,2}(?:\.\d{1,2}){0,4})\.?\s+\S",
                        re.IGNORECASE)
_DIGITS = re.compile(r"\d+")
_MAX_HEADING_CHARS = 160


@dataclass(frozen=True)
class PageContent:
    """What pdfium read from one page."""

    width: float
    height: float
    spans: list[Span]
    rulings: list[Ruling]


@dataclass
class _Item:
    """One thing in reading order: a line (segment) or a table."""

    top: float
    bottom: float
    x0: float
    x1: float
    segment: Segment | None = None
    table: FoundTable | None = None


def document_blocks(pages: list[PageContent]) -> list[tuple[Block, ...]]:
    """Blocks per page, in reading order."""
    ordered = [_page_items(page) for page in pages]
    furniture = _furniture(ordered, pages)
    ordered = [[item for item in items if _key(item) not in furniture or not _in_band(item, page)]
               for items, page in zip(ordered, pages)]
    body = _body_style(ordered)
    grouped = [_group(items, body) for items in ordered]
    levels = _heading_levels([g for page in grouped for g in page if g.kind == "heading"])
    return [tuple(group.block(levels) for group in page) for page in grouped]


# ---------------------------------------------------------------------- one page

def _page_items(page: PageContent) -> list[_Item]:
    tables, used = ruled_tables(page.spans, page.rulings)
    rows = build_rows([s for i, s in enumerate(page.spans) if i not in used])
    items = [_Item(t.top, t.bottom, t.x0, t.x1, table=t) for t in tables]
    skip: set[int] = set()
    for start, end, table in aligned_tables(rows):
        items.append(_Item(table.top, table.bottom, table.x0, table.x1, table=table))
        skip.update(range(start, end))
    for index, row in enumerate(rows):
        if index not in skip:
            items.extend(_Item(s.top, s.bottom, s.x0, s.x1, segment=s) for s in row.segments)
    return _reading_order(items, rows)


def _reading_order(items: list[_Item], rows: list[Row]) -> list[_Item]:
    """Top down; where the page has two columns (a gutter no line crosses, with lines on
    both sides), the left column's lines of each band come before the right column's,
    and anything spanning the gutter (a title, a table) closes the band."""
    items.sort(key=lambda i: (-i.top, i.x0))
    gutter = _gutter([i for i in items if i.segment is not None])
    if gutter is None:
        return _rows_first(items)
    ordered, left, right = [], [], []
    for item in items:
        if item.x1 <= gutter:
            left.append(item)
        elif item.x0 >= gutter:
            right.append(item)
        else:
            ordered += _rows_first(left) + _rows_first(right) + [item]
            left, right = [], []
    return ordered + _rows_first(left) + _rows_first(right)


def _rows_first(items: list[_Item]) -> list[_Item]:
    """Items sharing a row (their vertical extents overlap by half) left to right."""
    ordered: list[_Item] = []
    for item in items:  # already sorted by top
        ordered.append(item)
        k = len(ordered) - 1
        while k > 0 and _same_row(ordered[k - 1], item) and ordered[k - 1].x0 > item.x0:
            ordered[k - 1], ordered[k] = ordered[k], ordered[k - 1]
            k -= 1
    return ordered


def _same_row(a: _Item, b: _Item) -> bool:
    overlap = min(a.top, b.top) - max(a.bottom, b.bottom)
    return overlap > 0.5 * min(a.top - a.bottom, b.top - b.bottom)


def _gutter(lines: list[_Item]) -> float | None:
    """The x of a vertical gap in the middle of the text that no line crosses and that
    has at least five lines, and a third of all lines, on each side."""
    if len(lines) < 10:
        return None
    left_edge, right_edge = min(i.x0 for i in lines), max(i.x1 for i in lines)
    width = right_edge - left_edge
    best = None
    for step in range(31):
        x = left_edge + width * (0.35 + 0.01 * step)
        crossing = sum(i.x0 < x < i.x1 for i in lines)
        left = sum(i.x1 <= x for i in lines)
        right = sum(i.x0 >= x for i in lines)
        if crossing * 10 <= len(lines) and min(left, right) >= max(5, len(lines) // 3):
            score = (crossing, abs(left - right))
            if best is None or score < best[0]:
                best = (score, x)
    return None if best is None else best[1]


# ---------------------------------------------------------------------- furniture

def _key(item: _Item) -> str:
    return _DIGITS.sub("#", item.segment.text.lower()) if item.segment is not None else ""


def _in_band(item: _Item, page: PageContent) -> bool:
    return item.bottom >= page.height * (1 - _FURNITURE_BAND) or item.top <= page.height * _FURNITURE_BAND


def _furniture(ordered: list[list[_Item]], pages: list[PageContent]) -> set[str]:
    """Line texts (digits ignored, so page numbers match) found near the top or bottom
    edge of at least half the pages, and of two pages at least."""
    if len(pages) < 2:
        return set()
    seen: Counter[str] = Counter()
    for items, page in zip(ordered, pages):
        seen.update({_key(i) for i in items if i.segment is not None and _in_band(i, page)})
    return {key for key, count in seen.items() if key and count >= max(2, (len(pages) + 1) // 2)}


# ---------------------------------------------------------------------- blocks

@dataclass
class _Group:
    kind: str  # heading, paragraph, list_item, table
    lines: list[Segment]
    table: FoundTable | None = None
    level: int = 1
    style: tuple[float, bool] = (0.0, False)
    numbering: int = 0

    @property
    def text(self) -> str:
        text = ""
        for line in self.lines:
            piece = line.text
            if text.endswith("-") and len(text) > 1 and text[-2].isalpha() and piece[:1].islower():
                text += piece  # a word broken across lines keeps its hyphen, loses the space
            else:
                text = f"{text} {piece}" if text else piece
        return text

    def block(self, levels: dict[int, int]) -> Block:
        if self.kind == "table":
            return table_block(Table("", self.table.rows))
        if self.kind == "heading":
            return Block("heading", self.text, levels.get(id(self), 1))
        if self.kind == "list_item":
            return Block("list_item", self.text, self.level)
        return Block("paragraph", self.text)


def _style(segment: Segment) -> tuple[float, bool]:
    return (round(segment.size * 2) / 2, segment.bold)


def _body_style(pages: list[list[_Item]]) -> tuple[float, bool]:
    weights: Counter[tuple[float, bool]] = Counter()
    for items in pages:
        for item in items:
            if item.segment is not None:
                weights[_style(item.segment)] += len(item.segment.text)
    return weights.most_common(1)[0][0] if weights else (10.0, False)


def _is_heading_style(style: tuple[float, bool], body: tuple[float, bool]) -> bool:
    size, bold = style
    return size >= body[0] * 1.12 + 0.5 or (bold and not body[1] and size >= body[0] - 0.5)


def _group(items: list[_Item], body: tuple[float, bool]) -> list[_Group]:  # noqa: C901
    """Lines into paragraphs, list items and headings: a new block where the style
    changes, the vertical gap is larger than a line's, the text moves up (next column)
    or a list marker starts the line."""
    groups: list[_Group] = []
    list_left = min((i.x0 for i in items if i.segment is not None and _LIST_MARKER.match(i.segment.text)),
                    default=0.0)
    previous: _Item | None = None
    for item in items:
        if item.table is not None:
            groups.append(_Group("table", [], table=item.table))
            previous = None
            continue
        segment = item.segment
        style = _style(segment)
        marker = _LIST_MARKER.match(segment.text)
        current = groups[-1] if groups and groups[-1].kind != "table" else None
        continues = (current is not None and previous is not None and style == current.style
                     and not marker and previous.bottom - item.top < 0.7 * segment.size
                     and item.top < previous.top + 1 and item.x0 < previous.x1)
        if continues and current.kind == "list_item" and item.x0 < current.lines[0].x0 - 1:
            continues = False  # back at the margin: the list is over
        if continues and _is_heading_style(style, body) and _NUMBERING.match(segment.text):
            continues = False  # "2. Financing" under a title of the same style
        if continues:
            current.lines.append(segment)
        elif marker:
            level = 1 + min(3, int(max(0.0, item.x0 - list_left) // (1.5 * segment.size)))
            groups.append(_Group("list_item", [segment], level=level, style=style))
        else:
            groups.append(_Group("paragraph", [segment], style=style))
        previous = item
    for group in groups:
        if group.kind == "paragraph" and _is_heading_style(group.style, body) and _heading_text(group.text):
            group.kind = "heading"
            numbered = _NUMBERING.match(group.text)
            group.numbering = numbered.group(1).count(".") + 1 if numbered else 0
    return groups


def _heading_text(text: str) -> bool:
    return (len(text) <= _MAX_HEADING_CHARS and any(c.isalpha() for c in text)
            and not text.rstrip().endswith((",", ";")))


def _heading_levels(headings: list[_Group]) -> dict[int, int]:
    """Levels 1-6: numbered headings by their numbering's depth ("2." 1, "2.1" 2), below
    the unnumbered styles that stand above the most prominent numbered one (a title);
    unnumbered headings by the rank of their style (larger, then bold, first)."""
    styles = sorted({h.style for h in headings}, key=lambda s: (-s[0], not s[1]))
    rank = {style: index for index, style in enumerate(styles)}
    numbered = [h for h in headings if h.numbering]
    levels: dict[int, int] = {}
    if not numbered:
        for h in headings:
            levels[id(h)] = min(6, rank[h.style] + 1)
        return levels
    top = min(rank[h.style] for h in numbered)
    first = headings.index(numbered[0])
    above = sorted({rank[h.style] for h in headings[:first] if not h.numbering and rank[h.style] <= top})
    depth_of_style = {}
    for h in numbered:
        depth_of_style.setdefault(h.style, Counter())[h.numbering] += 1
    for position, h in enumerate(headings):
        if h.numbering:
            level = len(above) + h.numbering
        elif rank[h.style] in above and position < first:
            level = above.index(rank[h.style]) + 1
        elif h.style in depth_of_style:
            level = len(above) + depth_of_style[h.style].most_common(1)[0][0]
        else:
            level = min(rank[h.style] + 1, len(above) + 1)
        levels[id(h)] = max(1, min(6, level))
    return levels
