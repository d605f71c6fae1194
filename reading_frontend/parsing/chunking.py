"""Structure-aware chunking: sections never share a chunk, blocks stay whole when they fit,
and every size is measured with the caller's tokenizer so chunks fit the embedding model.

The work is linear in the document: a growing chunk is never re-counted whole (pieces are
joined at whitespace, where a tokenizer that splits on whitespace first, as WordPiece
does, makes counts add up), and a word too long for a chunk is cut with a search whose
window grows from the chunk size, not from the word's length."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Iterator

from .model import Block, Chunk, ParsedDocument

CountFn = Callable[[str], int]
_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+|(?<=[.!?…][\"'”’)\]])\s+|(?<=[。！？])\s*")
_LINE_KINDS = {"list_item", "ocr_text"}


@dataclass(frozen=True)
class _Piece:
    """A unit of chunk text: a whole block, or a sentence/word run/row group of one."""

    text: str
    page: int
    block: int
    kind: str


def chunk_document(doc: ParsedDocument, count_tokens: CountFn, chunk_tokens: int = 200,
                   overlap_tokens: int = 0) -> list[Chunk]:
    """Chunks of at most ``chunk_tokens`` tokens (unless one character is larger), in order.

    ``overlap_tokens`` is capped at half of ``chunk_tokens`` so every chunk advances.
    """
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be at least 1, not {chunk_tokens}")
    if overlap_tokens < 0:
        raise ValueError(f"overlap_tokens must not be negative, not {overlap_tokens}")
    builder = _ChunkBuilder(count_tokens, chunk_tokens, min(overlap_tokens, chunk_tokens // 2))
    for index, (page, block) in enumerate(_blocks(doc)):
        builder.add_block(block, page, index)
    return builder.finish()


def _blocks(doc: ParsedDocument) -> Iterator[tuple[int, Block]]:
    for page in doc.pages:
        for block in page.blocks:
            if block.text.strip():
                yield page.number, block


class _ChunkBuilder:
    def __init__(self, count: CountFn, limit: int, overlap: int) -> None:
        self._count, self._limit, self._overlap = count, limit, overlap
        self._chunks: list[Chunk] = []
        self._path: list[tuple[int, str]] = []
        self._chunk_path: tuple[str, ...] = ()
        self._pieces: list[_Piece] = []
        self._text, self._tokens = "", 0
        self._headings_only = False

    def add_block(self, block: Block, page: int, index: int) -> None:
        if block.type == "heading":
            self._heading(block, page, index)
            return
        for piece in self._split_block(block, page, index):
            self._add(piece)

    def finish(self) -> list[Chunk]:
        self._emit()
        return self._chunks

    def _heading(self, block: Block, page: int, index: int) -> None:
        """A heading closes the section's chunk, except that a run of ever deeper headings
        with nothing between them travels with the first text below them."""
        level = max(block.level, 1)
        if not (self._headings_only and level > self._path[-1][0]):
            self._emit()
        while self._path and self._path[-1][0] >= level:
            self._path.pop()
        self._path.append((level, " ".join(block.text.split())))
        for text in self._split_text(block.text.strip()):
            self._add(_Piece(text, page, index, "heading"))
        self._chunk_path = self._current_path()

    def _add(self, piece: _Piece) -> None:
        if not self._pieces:
            self._start([], piece)
            return
        separator = _separator(self._pieces[-1], piece)
        tokens = self._tokens + self._count(separator + piece.text)
        if tokens <= self._limit:
            self._pieces.append(piece)
            self._text, self._tokens = self._text + separator + piece.text, tokens
            self._headings_only &= piece.kind == "heading"
            return
        if self._headings_only and self._fill_under_heading(piece):
            return
        carried = self._tail(self._pieces)
        self._emit()
        self._start(carried, piece)

    def _fill_under_heading(self, piece: _Piece) -> bool:
        """Split a block that would leave its heading alone in a chunk, so that the
        heading keeps at least its first sentences."""
        sentences = split_sentences(piece.text) if piece.kind not in ("table", "heading") else []
        if len(sentences) < 2:
            return False
        for sentence in sentences:
            self._add(_Piece(sentence, piece.page, piece.block, piece.kind))
        return True

    def _start(self, carried: list[_Piece], piece: _Piece) -> None:
        """Open a chunk with ``piece``, preceded by the overlap when both fit."""
        pieces = carried + [piece] if carried else [piece]
        text = _join(pieces)
        tokens = self._count(text)
        if carried and tokens > self._limit:
            pieces, text, tokens = [piece], piece.text, self._count(piece.text)
        self._pieces, self._text, self._tokens = pieces, text, tokens
        self._headings_only = piece.kind == "heading"
        self._chunk_path = self._current_path()

    def _emit(self) -> None:
        if not self._pieces:
            return
        pages = [piece.page for piece in self._pieces]
        self._chunks.append(Chunk(len(self._chunks), self._text, min(pages), max(pages),
                                  self._chunk_path, self._tokens))
        self._pieces, self._text, self._tokens = [], "", 0
        self._headings_only = False

    def _current_path(self) -> tuple[str, ...]:
        return tuple(text for _, text in self._path)

    # ------------------------------------------------------------------ overlap

    def _tail(self, pieces: list[_Piece]) -> list[_Piece]:
        """The last whole sentences of running prose worth at most ``overlap`` tokens, or
        its last words when one sentence is already larger. Tables and headings carry none."""
        if not self._overlap:
            return []
        sentences: list[_Piece] = []
        for piece in reversed(pieces):
            if piece.kind in ("table", "heading") or len(sentences) > self._overlap:
                break
            sentences[:0] = [_Piece(s, piece.page, piece.block, piece.kind)
                             for s in split_sentences(piece.text)]
        kept: list[_Piece] = []
        for sentence in reversed(sentences):
            if self._count(_join([sentence] + kept)) > self._overlap:
                break
            kept.insert(0, sentence)
        if kept or not sentences:
            return kept
        return self._word_tail(sentences[-1])

    def _word_tail(self, sentence: _Piece) -> list[_Piece]:
        words = sentence.text.split()
        start = len(words)
        while start > 0 and len(words) - start < self._overlap:
            if self._count(" ".join(words[start - 1:])) > self._overlap:
                break
            start -= 1
        text = " ".join(words[start:])
        return [_Piece(text, sentence.page, sentence.block, sentence.kind)] if text else []

    # ------------------------------------------------------------------ splitting

    def _split_block(self, block: Block, page: int, index: int) -> list[_Piece]:
        if block.type == "table" and block.table is not None and block.table.rows:
            texts = self._split_table(block)
        else:
            texts = self._split_text(block.text.strip())
        return [_Piece(text, page, index, block.type) for text in texts]

    def _split_text(self, text: str) -> list[str]:
        """Whole text if it fits, else sentences, else words, else characters."""
        if self._count(text) <= self._limit:
            return [text]
        pieces = []
        for sentence in split_sentences(text):
            if self._count(sentence) <= self._limit:
                pieces.append(sentence)
                continue
            for word in sentence.split():
                pieces.extend([word] if self._count(word) <= self._limit else self._split_chars(word))
        return pieces

    def _split_chars(self, word: str) -> list[str]:
        """Longest prefixes that fit, at least one character each: the window doubles
        from the chunk size until it no longer fits, then a binary search inside it, so
        each part costs about its own length, not the rest of the word's."""
        parts, start, size = [], 0, len(word)
        while start < size:
            high = min(size, start + 4 * self._limit)
            while high < size and self._count(word[start:high]) <= self._limit:
                high = min(size, start + 2 * (high - start))
            low = start + 1
            while low < high:
                middle = (low + high + 1) // 2
                if self._count(word[start:middle]) <= self._limit:
                    low = middle
                else:
                    high = middle - 1
            parts.append(word[start:low])
            start = low
        return parts

    def _split_table(self, block: Block) -> list[str]:
        """Row groups that fit, each under a copy of the header row; a row too large even
        alone is split like prose."""
        if self._count(block.text) <= self._limit:
            return [block.text]
        lines = [_row_text(row) for row in block.table.rows]
        header, pieces, rows = lines[0], [], []
        tokens = 0
        for line in lines[1:]:
            added = self._count("\n" + line) if rows else 0
            if rows and len(rows) < self._limit and tokens + added <= self._limit:
                rows.append(line)
                tokens += added
                continue
            if rows:
                pieces.append("\n".join([header, *rows]))
                rows = []
            tokens = self._count(f"{header}\n{line}")
            if tokens <= self._limit:
                rows = [line]
            else:
                pieces.extend(self._split_text(line))
        if rows:
            pieces.append("\n".join([header, *rows]))
        return pieces or self._split_text(header)


def split_sentences(text: str) -> list[str]:
    return [s for s in (part.strip() for part in _SENTENCE_END.split(text)) if s]


def _row_text(row: tuple[str, ...]) -> str:
    return "\t".join(" ".join(cell.split()) for cell in row)


def _separator(previous: _Piece, following: _Piece) -> str:
    """Parts of one block join as prose (rows as lines); consecutive list items and OCR
    lines one per line; other blocks as paragraphs."""
    if previous.block == following.block:
        return "\n" if following.kind == "table" else " "
    if previous.kind == following.kind and following.kind in _LINE_KINDS:
        return "\n"
    return "\n\n"


def _join(pieces: list[_Piece]) -> str:
    text = pieces[0].text
    for previous, piece in zip(pieces, pieces[1:]):
        text += _separator(previous, piece) + piece.text
    return text
