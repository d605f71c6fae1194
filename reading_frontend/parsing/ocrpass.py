"""Which pages go to OCR, within the per-document OCR budget, and the warnings for the rest.

Pages can overlap on the way: with an OCR that takes pages ahead (``PipelinedOcr``: the
parse worker's pipe to the frontend) a parser ``request``s each page as it reads the
document, and up to ``ParseLimits.ocr_pages_in_flight`` (2) of them are rendered and sent
before the first result is needed. Triton then detects text on one page while it
recognises the lines of the one before (the models run in separate processes), and the
worker renders the next page meanwhile. A plain ``OcrFn`` (in-process callers, tests) gets one page at a time.
Results come back in page order either way, and a page's render or OCR error is raised
when its own blocks are asked for, as before.
"""
from __future__ import annotations

import abc
from collections import defaultdict, deque
from dataclasses import dataclass
from typing import Callable

from .model import OCR_MODES, Block, OcrFn
from .textutil import clean_text, page_list

class PipelinedOcr(abc.ABC):
    """An OCR that takes pages ahead of their results (the parse worker's pipe). A base
    class to derive from, not a protocol: anything else (a plain function, a test's mock)
    gets one page at a time."""

    @abc.abstractmethod
    def submit(self, png: bytes) -> object:
        """Send a page; returns a token for ``collect``."""

    @abc.abstractmethod
    def collect(self, token: object) -> list:
        """The page's lines (raises what its OCR raised)."""

    def __call__(self, png: bytes) -> list:
        return self.collect(self.submit(png))


@dataclass(eq=False)
class OcrTicket:
    """One page on its way through OCR (``OcrPass.request``)."""

    number: int
    render: Callable[[], bytes]
    token: object = None
    sent: bool = False
    error: BaseException | None = None
    """A render failure, raised when the page's blocks are asked for."""


class OcrCallError(Exception):
    """Carries an exception raised by the OCR callback past the parsers' error wrapping,
    so an unreachable Triton is reported as such, not as a corrupt document."""


class OcrPass:
    def __init__(self, ocr: OcrFn | None, mode: str, max_pages: int, in_flight: int = 1) -> None:
        if mode not in OCR_MODES:
            raise ValueError(f"ocr_mode must be one of {sorted(OCR_MODES)}, not {mode!r}")
        if in_flight < 1:
            raise ValueError(f"ocr_pages_in_flight must be at least 1, not {in_flight}")
        self._ocr, self._mode, self._in_flight = ocr, mode, in_flight
        self._budget = self._max_pages = max_pages
        self._missed: dict[tuple[str, bool], list[int]] = defaultdict(list)
        self._blank: list[int] = []
        self._pipelined = isinstance(ocr, PipelinedOcr)
        self._waiting: deque[OcrTicket] = deque()  # requested, not yet read back, in page order

    def run(self, number: int, has_text: bool, render: Callable[[], bytes]) -> tuple[Block, ...] | None:
        """OCR blocks for the page, or None when it keeps its text layer (or stays empty)."""
        ticket = self.request(number, has_text, render)
        return None if ticket is None else self.blocks(ticket)

    def request(self, number: int, has_text: bool, render: Callable[[], bytes]) -> OcrTicket | None:
        """Decide now, in page order and within the budget, whether the page is OCRed (None:
        it keeps its text layer or stays empty, and the warnings say why); a pipelined OCR
        gets it rendered and sent at once while fewer than ``in_flight`` are out.
        ``render`` may be called later, but before this page's ``blocks`` return."""
        reason = self._refusal(has_text)
        if reason is not None:
            if reason != "not wanted":
                self._missed[(reason, has_text)].append(number)
            return None
        self._budget -= 1
        ticket = OcrTicket(number, render)
        self._waiting.append(ticket)
        self._send_ahead()
        return ticket

    def blocks(self, ticket: OcrTicket) -> tuple[Block, ...]:
        """The requested page's OCR blocks; tickets are read back in the order requested."""
        if not self._waiting or self._waiting[0] is not ticket:
            raise RuntimeError("OCR tickets are read back in the order they were requested")
        self._send_ahead()
        self._waiting.popleft()
        if ticket.error is not None:
            raise ticket.error
        png = None if self._pipelined else ticket.render()  # a render error is the document's
        try:
            lines = self._ocr.collect(ticket.token) if self._pipelined else self._ocr(png)
        except Exception as error:
            raise OcrCallError() from error
        self._send_ahead()  # the next page goes out before this one's blocks are built
        texts = (clean_text(line.text) for line in lines)
        blocks = tuple(Block("ocr_text", text) for text in texts if text)
        if not blocks:
            self._blank.append(ticket.number)
        return blocks

    def _send_ahead(self) -> None:
        """Render and send waiting pages until ``in_flight`` are out (pipelined only).
        A page that fails to render keeps its error, and nothing after it is sent: the
        document fails when that page's turn comes."""
        if not self._pipelined:
            return
        out = 0
        for ticket in self._waiting:
            if out >= self._in_flight:
                return
            if not ticket.sent:
                ticket.sent = True
                try:
                    png = ticket.render()
                except Exception as error:  # a DocumentError for this page, raised in its turn
                    ticket.error = error
                    return
                try:
                    ticket.token = self._ocr.submit(png)
                except Exception as error:
                    ticket.error = OcrCallError()
                    ticket.error.__cause__ = error
                    return
            if ticket.error is not None:
                return
            out += 1

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
