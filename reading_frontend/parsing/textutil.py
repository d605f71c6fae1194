"""Small text helpers shared by the parsers."""
from __future__ import annotations

import re
from typing import Iterable, Mapping

_BLANK_LINES = re.compile(r"\n[ \t\f\v]*\n\s*")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")


def clean_text(text: str) -> str:
    """Text safe for protobuf and embeddings: no NULs/control chars, no lone surrogates,
    Unix newlines, no trailing spaces on lines."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\f", "\n\n")
    text = _CONTROL.sub("", text)
    text = text.encode("utf-8", "replace").decode("utf-8")
    return "\n".join(line.rstrip() for line in text.split("\n")).strip()


def split_paragraphs(text: str) -> list[str]:
    return [part for part in (p.strip() for p in _BLANK_LINES.split(clean_text(text))) if part]


def squash(text: str) -> str:
    """Collapse all whitespace to single spaces (markup sources wrap lines arbitrarily)."""
    return " ".join(clean_text(text).split())


def clean_metadata(values: Mapping[str, object]) -> dict[str, str]:
    """Keep non-empty values as one-line strings."""
    cleaned = {key: squash(str(value)) for key, value in values.items() if value is not None}
    return {key: value for key, value in cleaned.items() if value}


def page_list(numbers: Iterable[int]) -> str:
    """``1, 3-5, 9``: page numbers for a warning, ranges collapsed."""
    spans: list[list[int]] = []
    for number in sorted(set(numbers)):
        if spans and number == spans[-1][1] + 1:
            spans[-1][1] = number
        else:
            spans.append([number, number])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)
