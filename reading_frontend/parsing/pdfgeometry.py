"""Text pieces of a PDF page and the rows they form, in PDF coordinates (y grows upwards).

A ``Span`` is what one text-showing operator drew (a word, a line, a cell), as pdfium
reports it; producers differ wildly in how much one holds, so everything downstream
works from positions, never from the order of the content stream."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Span:
    text: str
    x0: float
    x1: float
    baseline: float
    size: float
    bold: bool

    @property
    def top(self) -> float:
        return self.baseline + self.size * 0.8

    @property
    def bottom(self) -> float:
        return self.baseline - self.size * 0.2


@dataclass(frozen=True)
class Ruling:
    """A drawn line: horizontal (y0 == y1) or vertical (x0 == x1)."""

    x0: float
    y0: float
    x1: float
    y1: float

    @property
    def vertical(self) -> bool:
        return abs(self.x1 - self.x0) < abs(self.y1 - self.y0)


class _SpanExtent:
    """Vertical extent and font size of a group of spans (``self.spans``), PDF y upwards."""

    spans: list[Span]

    @property
    def top(self) -> float:
        return max(s.top for s in self.spans)

    @property
    def bottom(self) -> float:
        return min(s.bottom for s in self.spans)

    @property
    def size(self) -> float:
        return max(s.size for s in self.spans)


@dataclass
class Segment(_SpanExtent):
    """Spans of one row close enough to read as one run of text."""

    spans: list[Span]
    text: str = ""

    def __post_init__(self) -> None:
        self.text = join_spans(self.spans)

    @property
    def x0(self) -> float:
        return self.spans[0].x0

    @property
    def x1(self) -> float:
        return max(s.x1 for s in self.spans)

    @property
    def bold(self) -> bool:
        return sum(len(s.text) for s in self.spans if s.bold) * 2 > sum(len(s.text) for s in self.spans)


@dataclass
class Row(_SpanExtent):
    """Spans sharing a baseline, cut into segments at gaps wider than ``SEGMENT_GAP`` ems."""

    spans: list[Span]
    segments: list[Segment] = field(default_factory=list)


SEGMENT_GAP = 1.5
"""Ems of blank space that separate two columns or cells rather than two words (justified
text stretches word gaps to about one em at most)."""
_WORD_GAP = 0.12
"""Ems of blank space between two spans that make a word break."""
_BASELINE_TOLERANCE = 0.35
"""Ems two baselines may differ by and still be one row (producers that place each word
in floating point write baselines a fraction of a point apart)."""


def join_spans(spans: list[Span]) -> str:
    """Spans in reading order (rows top down, left to right) as text: a space where the
    gap between two spans is a word break, a space between rows."""
    text, previous = "", None
    for span in spans:
        piece = span.text
        if previous is not None and text and not text.endswith(" ") and not piece.startswith(" "):
            same_row = abs(span.baseline - previous.baseline) <= _BASELINE_TOLERANCE * span.size
            if not same_row or span.x0 - previous.x1 > _WORD_GAP * span.size:
                piece = " " + piece
        text += piece
        previous = span
    return " ".join(text.split())


def build_rows(spans: list[Span]) -> list[Row]:
    """Rows top down; each row's spans left to right and cut into segments."""
    ordered = sorted(spans, key=lambda s: (-s.baseline, s.x0))
    rows: list[Row] = []
    for span in ordered:
        if rows and abs(rows[-1].spans[0].baseline - span.baseline) <= _BASELINE_TOLERANCE * min(
                span.size, rows[-1].spans[0].size):
            rows[-1].spans.append(span)
        else:
            rows.append(Row([span]))
    for row in rows:
        row.spans.sort(key=lambda s: s.x0)
        run = [row.spans[0]]
        for span in row.spans[1:]:
            if span.x0 - max(s.x1 for s in run) > SEGMENT_GAP * max(span.size, run[-1].size):
                row.segments.append(Segment(run))
                run = [span]
            else:
                run.append(span)
        row.segments.append(Segment(run))
    return rows
