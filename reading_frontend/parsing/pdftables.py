"""Tables on a PDF page: grids of ruling lines, and runs of rows whose pieces line up in
three or more columns (borderless tables). Pure geometry over the spans and rulings that
``pdf.py`` reads with pdfium; PDF coordinates (y grows upwards)."""
from __future__ import annotations

from dataclasses import dataclass

from .pdfgeometry import Row, Ruling, Span, join_spans

_SNAP = 2.0
"""Points within which ruling ends meet and ruling positions are the same line."""


@dataclass(frozen=True)
class FoundTable:
    rows: tuple[tuple[str, ...], ...]
    top: float
    bottom: float
    x0: float
    x1: float


def ruled_tables(spans: list[Span], rulings: list[Ruling]) -> tuple[list[FoundTable], set[int]]:
    """Tables drawn as grids (at least 2 x 2 cells), and the indexes of the spans inside
    them. Cells take the spans whose centre falls in them, in reading order."""
    tables, used = [], set()
    for group in _connected(rulings):
        xs = _positions([r.x0 for r in group if r.vertical])
        ys = _positions([r.y0 for r in group if not r.vertical])
        if len(xs) < 3 or len(ys) < 3:
            continue
        ys.sort(reverse=True)  # top row first
        cells: dict[tuple[int, int], list[Span]] = {}
        inside = set()
        for index, span in enumerate(spans):
            cx, cy = (span.x0 + span.x1) / 2, span.baseline + span.size * 0.3
            if index in used or not (xs[0] <= cx <= xs[-1] and ys[-1] <= cy <= ys[0]):
                continue
            col = next(i for i in range(len(xs) - 1) if cx <= xs[i + 1])
            row = next(i for i in range(len(ys) - 1) if cy >= ys[i + 1])
            cells.setdefault((row, col), []).append(span)
            inside.add(index)
        rows = tuple(tuple(join_spans(cells.get((r, c), [])) for c in range(len(xs) - 1))
                     for r in range(len(ys) - 1))
        rows = tuple(row for row in rows if any(row))
        if len(rows) >= 2:
            tables.append(FoundTable(rows, ys[0], ys[-1], xs[0], xs[-1]))
            used |= inside
    return tables, used


def aligned_tables(rows: list[Row]) -> list[tuple[int, int, FoundTable]]:
    """Borderless tables: (first row, end row, table) for each run of at least three
    consecutive, closely spaced rows, most of them cut into three or more pieces by wide
    gaps, whose pieces fall into at least three column bands shared by the run."""
    found, start = [], 0
    while start < len(rows):
        end = start
        while end < len(rows) and len(rows[end].segments) >= 2 and (
                end == start or rows[end - 1].bottom - rows[end].top < 2.5 * rows[end].size):
            end += 1
        run = rows[start:end]
        if len(run) >= 3 and sum(len(r.segments) >= 3 for r in run) * 2 > len(run):
            bands = _bands([(s.x0, s.x1) for row in run for s in row.segments])
            if len(bands) >= 3:
                cells = []
                for row in run:
                    line = [""] * len(bands)
                    for segment in row.segments:
                        centre = (segment.x0 + segment.x1) / 2
                        column = min(range(len(bands)), key=lambda i: _distance(centre, bands[i]))
                        line[column] = f"{line[column]} {segment.text}".strip()
                    cells.append(tuple(line))
                found.append((start, end, FoundTable(tuple(cells), run[0].top, run[-1].bottom,
                                                     bands[0][0], bands[-1][1])))
                start = end
                continue
        start = max(end, start + 1)
    return found


def _bands(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Overlapping x intervals merged into column bands, left to right."""
    bands: list[list[float]] = []
    for x0, x1 in sorted(intervals):
        if bands and x0 <= bands[-1][1] + _SNAP:
            bands[-1][1] = max(bands[-1][1], x1)
        else:
            bands.append([x0, x1])
    return [(a, b) for a, b in bands]


def _distance(x: float, band: tuple[float, float]) -> float:
    return 0.0 if band[0] <= x <= band[1] else min(abs(x - band[0]), abs(x - band[1]))


def _positions(values: list[float]) -> list[float]:
    """Distinct positions, values within _SNAP of each other taken as one."""
    merged: list[float] = []
    for value in sorted(values):
        if not merged or value - merged[-1] > _SNAP:
            merged.append(value)
    return merged


def _connected(rulings: list[Ruling]) -> list[list[Ruling]]:
    """Groups of rulings that touch or cross (a grid is one group)."""
    parent = list(range(len(rulings)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    horizontal = [i for i, r in enumerate(rulings) if not r.vertical]
    vertical = [i for i, r in enumerate(rulings) if r.vertical]
    for h in horizontal:
        a = rulings[h]
        for v in vertical:
            b = rulings[v]
            if a.x0 - _SNAP <= b.x0 <= a.x1 + _SNAP and b.y0 - _SNAP <= a.y0 <= b.y1 + _SNAP:
                parent[find(h)] = find(v)
    groups: dict[int, list[Ruling]] = {}
    for i, ruling in enumerate(rulings):
        groups.setdefault(find(i), []).append(ruling)
    return list(groups.values())
