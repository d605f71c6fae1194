"""Which pages go to OCR, within the per-document OCR budget, and the warnings for the rest."""
from __future__ import annotations

from collections import defaultdict
from typing import Callable

from .model import OCR_MODES, Block, OcrFn
from .textutil import clean_text, page_list


class OcrCallError(Exception):
    """Carries an exception raised by the OCR callback past the parsers' error wrapping,
    so an unreachable Triton is reported as such, not as a corrupt document."""


class OcrPass:
    def __init__(self, ocr: OcrFn | None, mode: str, max_pages: int) -> None:
        if mode not in OCR_MODES:
            raise ValueError(f"ocr_mode must be one of {sorted(OCR_MODES)}, not {mode!r}")
        self._ocr, self._mode = ocr, mode
        self._budget = self._max_pages = max_pages
        self._missed: dict[tuple[str, bool], list[int]] = defaultdict(list)
        self._blank: list[int] = []

    def run(self, number: int, has_text: bool, render: Callable[[], bytes]) -> tuple[Block, ...] | None:
        """OCR blocks for the page, or None when it keeps its text layer (or stays empty)."""
        reason = self._refusal(has_text)
        if reason is not None:
            if reason != "not wanted":
                self._missed[(reason, has_text)].append(number)
            return None
        self._budget -= 1
        blocks = self._call(render())
        if not blocks:
            self._blank.append(number)
        return blocks

    def _refusal(self, has_text: bool) -> str | None:
        if self._mode == "never":
            return "not wanted" if has_text else "turned off (ocr_mode never)"
        if self._mode == "auto" and has_text:
            return "not wanted"
        if self._ocr is None:
            return "not available"
        if self._budget <= 0:
            return f"limited to {self._max_pages} pages per document"
        return None

    def _call(self, png: bytes) -> tuple[Block, ...]:
        try:
            lines = self._ocr(png)
        except Exception as error:
            raise OcrCallError() from error
        texts = (clean_text(line.text) for line in lines)
        return tuple(Block("ocr_text", text) for text in texts if text)

    def warnings(self) -> list[str]:
        found = []
        for (reason, has_text), numbers in self._missed.items():
            pages = f"page{'s' if len(numbers) > 1 else ''} {page_list(numbers)}"
            if has_text:
                found.append(f"{pages} kept the text layer without OCR: OCR is {reason}")
            else:
                found.append(f"no text on {pages}: no text layer and OCR is {reason}")
        if self._blank:
            found.append(f"OCR found no text on page{'s' if len(self._blank) > 1 else ''} "
                         f"{page_list(self._blank)}")
        return found
