"""HTML, Markdown and plain text: one page each, structure from the markup."""
from __future__ import annotations

import re

from bs4 import BeautifulSoup, NavigableString, Tag
from bs4.element import PreformattedString

from .detect import decode_text
from .model import Block, Extraction, Page, Table, table_block
from .textutil import clean_metadata, clean_text, split_paragraphs, squash

# --------------------------------------------------------------------------- html

_DROPPED = ["script", "style", "noscript", "template", "svg", "math", "nav", "iframe", "object",
            "embed", "canvas", "select", "head"]
_HEADINGS = {f"h{level}": level for level in range(1, 7)}
_LISTS = {"ul", "ol", "menu", "dir"}
_BLOCKS = {"address", "article", "aside", "blockquote", "body", "caption", "center", "dd",
           "details", "dialog", "div", "dl", "dt", "fieldset", "figcaption", "figure", "footer",
           "form", "header", "hgroup", "hr", "html", "legend", "li", "main", "p", "pre",
           "section", "summary", "table", *_HEADINGS, *_LISTS}
_LINE_BREAK = "\u2028"
_SPACES = re.compile(r"[^\S\u2028]+")


def parse_html(data: bytes) -> Extraction:
    soup = BeautifulSoup(data, "lxml")
    metadata = _html_metadata(soup)
    for element in soup.find_all(_DROPPED):
        element.decompose()
    walker = _HtmlWalker()
    walker.walk(soup)
    return Extraction((Page(1, tuple(walker.blocks)),), metadata)


def _html_metadata(soup: BeautifulSoup) -> dict[str, str]:
    head = soup.head
    title = head.find("title") if head else None
    author = head.find("meta", attrs={"name": re.compile("^author$", re.I)}) if head else None
    return clean_metadata({"title": title.get_text() if title else None,
                           "author": author.get("content") if author else None})


class _HtmlWalker:
    """Document-order walk: block elements become blocks; inline text between them is
    gathered into paragraphs (list items inside ``li``). An explicit stack instead of
    recursion, because browsers (and lxml) accept nesting thousands of levels deep."""

    def __init__(self) -> None:
        self.blocks: list[Block] = []
        self._inline: list[str] = []
        self._stack: list[tuple[str, object, int]] = []

    def walk(self, root: Tag) -> None:
        self._stack.append(("children", root, 0))
        while self._stack:
            action, node, list_level = self._stack.pop()
            if action == "flush":
                self.flush(list_level)
            elif action == "children":
                self._stack.extend(("node", child, list_level) for child in reversed(node.contents))
            elif isinstance(node, Tag):
                self._element(node, list_level)
            elif isinstance(node, NavigableString) and not isinstance(node, PreformattedString):
                self._inline.append(str(node))
        self.flush(0)

    def flush(self, list_level: int) -> None:
        text = _inline_text("".join(self._inline))
        self._inline.clear()
        if text:
            self.blocks.append(Block("list_item" if list_level else "paragraph", text, list_level))

    def _element(self, tag: Tag, list_level: int) -> None:
        name = tag.name
        if name == "br":
            self._inline.append(_LINE_BREAK)
        elif name not in _BLOCKS:
            self._stack.append(("children", tag, list_level))
        else:
            self.flush(list_level)
            self._block(tag, name, list_level)

    def _block(self, tag: Tag, name: str, list_level: int) -> None:
        """Leaf blocks are emitted now; containers schedule their children, then a flush."""
        if name in _HEADINGS:
            self._add("heading", squash(tag.get_text(" ")), _HEADINGS[name])
        elif name == "table":
            table = _html_table(tag)
            if table.rows:
                self.blocks.append(table_block(table))
        elif name == "pre":
            self._add("list_item" if list_level else "paragraph", clean_text(tag.get_text()),
                      list_level)
        else:
            inner = _inner_list_level(name, list_level)
            self._stack.extend([("flush", None, list_level), ("flush", None, inner),
                                ("children", tag, inner)])

    def _add(self, kind: str, text: str, level: int) -> None:
        if text:
            self.blocks.append(Block(kind, text, level))


def _inner_list_level(name: str, list_level: int) -> int:
    if name in _LISTS:
        return list_level + 1
    return max(list_level, 1) if name == "li" else list_level


def _inline_text(raw: str) -> str:
    text = _SPACES.sub(" ", clean_text(raw).replace("\n", " "))
    return "\n".join(line.strip() for line in text.split(_LINE_BREAK) if line.strip())


def _html_table(table: Tag) -> Table:
    rows = []
    for row in table.find_all("tr"):
        if row.find_parent("table") is not table:
            continue
        cells: list[str] = []
        for cell in row.find_all(["td", "th"], recursive=False):
            cells.append(squash(cell.get_text(" ")))
            cells.extend([""] * (_span(cell.get("colspan")) - 1))
        if any(cells):
            rows.append(tuple(cells))
    caption = table.find("caption", recursive=False)
    return Table(squash(caption.get_text(" ")) if caption else "", tuple(rows))


def _span(value) -> int:
    return min(max(int(value), 1), 64) if isinstance(value, str) and value.isdigit() else 1


# --------------------------------------------------------------------------- plain text


def parse_text(data: bytes) -> Extraction:
    blocks = tuple(Block("paragraph", p) for p in split_paragraphs(decode_text(data) or ""))
    return Extraction((Page(1, blocks),), {})


# --------------------------------------------------------------------------- markdown

# Every pattern here runs on untrusted text, so none may backtrack over its input: runs of
# spaces are possessive (``*+``), and a span that looks for its closing delimiter cannot
# cross another opening one, so each character is scanned by a bounded number of attempts
# (a 1 MB list nested 700 deep took 14 s of CPU with the naive patterns; now linear).
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_ATX_OPEN = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]|$)")
_SETEXT = re.compile(r"^ {0,3}(=++|-++)[ \t]*+$")
_RULE = re.compile(r"^ {0,3}([-*_])(?:[ \t]*+\1){2,}+[ \t]*+$")
_ITEM = re.compile(r"^([ \t]*+)([-*+]|\d{1,9}[.)])[ \t]++(\S.*)$")
_QUOTE = re.compile(r"^ {0,3}>[ \t]?")
_LINK_DEFINITION = re.compile(r"^ {0,3}\[[^\[\]]++\]:[ \t]*+\S")
_TABLE_RULE = re.compile(r"^[ \t]*+\|?+[ \t]*+:?+-++:?+[ \t]*+(?:\|[ \t]*+:?+-++:?+[ \t]*+)*+\|?+[ \t]*+$")
_CELL_SPLIT = re.compile(r"(?<!\\)\|")
_URL = r"\((?:[^()\[\]\n]|\([^()\[\]\n]*+\))*+\)"
"""A link target: no brackets, at most one level of parentheses (Wikipedia's)."""
_INLINE = [
    (re.compile(r"!\[([^\[\]]*+)\]" + _URL), r"\1"),
    (re.compile(r"\[([^\[\]]++)\]" + _URL), r"\1"),
    (re.compile(r"\[([^\[\]]++)\]\[[^\[\]]*+\]"), r"\1"),
    (re.compile(r"<((?:https?|mailto):[^<>\s]++)>"), r"\1"),
    (re.compile(r"</?[A-Za-z][A-Za-z0-9-]*+(\s[^<>]*+)?+/?>"), ""),
    (re.compile(r"(?<!`)(`{1,3})(?!`)([^`]+?)(?<!`)\1(?!`)"), r"\2"),
    (re.compile(r"\*\*(?=\S)((?:[^*]|\*(?!\*))+?)(?<=\S)\*\*"), r"\1"),
    (re.compile(r"__(?=\S)((?:[^_]|_(?!_))+?)(?<=\S)__"), r"\1"),
    (re.compile(r"(?<![\w*])\*(?=\S)([^*]+?)(?<=\S)\*(?![\w*])"), r"\1"),
    (re.compile(r"(?<![\w_])_(?=\S)((?:[^_]|(?<=\w)_(?=\w))+?)(?<=\S)_(?![\w_])"), r"\1"),
    (re.compile(r"~~((?:[^~]|~(?!~))+?)~~"), r"\1"),
    (re.compile(r"\\([\\`*_{}\[\]()#+\-.!|>~])"), r"\1"),
]


def parse_markdown(data: bytes) -> Extraction:
    parser = _MarkdownParser()
    for line in clean_text(decode_text(data) or "").split("\n"):
        parser.feed(line)
    parser.finish()
    return Extraction((Page(1, tuple(parser.blocks)),), {})


def inline_markdown(text: str) -> str:
    """Markup removed, words kept: what a reader sees (and what embeddings should see)."""
    for pattern, replacement in _INLINE:
        text = pattern.sub(replacement, text)
    return text.strip()


class _MarkdownParser:
    """A line-based CommonMark subset: enough structure for chunking, not a renderer."""

    def __init__(self) -> None:
        self.blocks: list[Block] = []
        self._paragraph: list[str] = []
        self._item: tuple[int, list[str]] | None = None
        self._indents: list[int] = []
        self._fence: str | None = None
        self._code: list[str] = []
        self._table: list[tuple[str, ...]] | None = None
        self._previous = ""

    def feed(self, line: str) -> None:
        if self._fence is not None:
            self._code_line(line)
        elif self._table is not None and "|" in line and line.strip():
            self._table.append(_cells(line))
        else:
            self._finish_table()
            self._line(line)
        self._previous = line

    def finish(self) -> None:
        if self._fence is not None:
            self._add("paragraph", "\n".join(self._code))
        self._finish_table()
        self._flush()

    def _line(self, line: str) -> None:
        stripped = line.strip()
        if (fence := _FENCE.match(line)) is not None:
            self._flush()
            self._fence, self._code = fence.group(1)[0] * 3, []
        elif not stripped:
            self._flush()
        elif (heading := _ATX_OPEN.match(line)) is not None:
            self._flush(reset_lists=True)
            self._add("heading", inline_markdown(_atx_text(line[heading.end():])),
                      len(heading.group(1)))
        elif "|" in line and "|" in self._previous and self._paragraph and _TABLE_RULE.match(line):
            header = self._paragraph.pop()
            self._flush(reset_lists=True)
            self._table = [_cells(header)]
        elif (setext := _SETEXT.match(line)) is not None and self._paragraph and self._item is None:
            text = " ".join(self._paragraph)
            self._paragraph = []
            self._add("heading", inline_markdown(text), 1 if setext.group(1)[0] == "=" else 2)
        elif _RULE.match(line) or _LINK_DEFINITION.match(line):
            self._flush()
        elif (item := _ITEM.match(line)) is not None:
            self._flush()
            self._item = (self._list_level(len(item.group(1).expandtabs(4))), [item.group(3)])
        elif self._item is not None:
            self._item[1].append(stripped)
        else:
            self._paragraph.append(_QUOTE.sub("", line).strip())

    def _code_line(self, line: str) -> None:
        if line.strip().startswith(self._fence):
            self._add("paragraph", "\n".join(self._code))
            self._fence = None
        else:
            self._code.append(line)

    def _list_level(self, indent: int) -> int:
        while self._indents and self._indents[-1] > indent:
            self._indents.pop()
        if not self._indents or self._indents[-1] < indent:
            self._indents.append(indent)
        return len(self._indents)

    def _flush(self, reset_lists: bool = False) -> None:
        if self._item is not None:
            level, lines = self._item
            self._add("list_item", inline_markdown("\n".join(lines)), level)
            self._item = None
        if self._paragraph:
            self._add("paragraph", inline_markdown("\n".join(self._paragraph)))
            self._paragraph = []
            reset_lists = True
        if reset_lists:
            self._indents = []

    def _finish_table(self) -> None:
        if self._table is not None:
            rows = tuple(row for row in self._table if any(row))
            if rows:
                self.blocks.append(table_block(Table("", rows)))
            self._table = None

    def _add(self, kind: str, text: str, level: int = 0) -> None:
        text = clean_text(text)
        if text:
            self.blocks.append(Block(kind, text, level))


def _atx_text(rest: str) -> str:
    """A heading's text without its optional closing run of ``#`` (CommonMark), found
    with string operations because a regex for it backtracks over long lines."""
    text = rest.strip(" \t")
    body = text.rstrip("#")
    if not body:
        return ""
    return body.rstrip(" \t") if body[-1] in " \t" else text


def _cells(line: str) -> tuple[str, ...]:
    inner = line.strip().removeprefix("|")
    inner = inner[:-1] if inner.endswith("|") and not inner.endswith("\\|") else inner
    return tuple(inline_markdown(cell) for cell in _CELL_SPLIT.split(inner))
