"""Documents shaped to make a parser's work grow faster than their size, one generator per
shape, each taking a rough target size in bytes. Shared by tests/test_parsing.py (every
shape parses within a CPU budget at a size the quadratic parsers needed minutes for) and
bench/parse_scaling.py (CPU time at n and 4n bytes, side by side)."""
from __future__ import annotations

import io
import zipfile
from typing import Callable


def _repeat(unit: str, size: int) -> bytes:
    return (unit * max(1, size // len(unit))).encode()


def markdown_nested_list(size: int) -> bytes:
    """The issue's shape: every item one level deeper than the last (lines of spaces)."""
    depth = 1
    while depth * depth + 10 * depth < size:
        depth += 1
    return "\n".join("  " * i + f"- item {i}" for i in range(depth)).encode()


def markdown_spaced_heading(size: int) -> bytes:
    return b"# a" + b" " * size + b"b\n"


def markdown_unclosed_bold(size: int) -> bytes:
    return b"# t\n\n" + _repeat("**a ", size)


def markdown_unclosed_links(size: int) -> bytes:
    return b"# t\n\n" + _repeat("[a](x", size)


def markdown_open_brackets(size: int) -> bytes:
    return b"# t\n\n" + _repeat("[", size)


def markdown_backtick_runs(size: int) -> bytes:
    runs, total, n = [], 0, 1
    while total < size:
        runs.append("`" * n + "a")
        total += n + 1
        n += 1
    return b"# t\n\n" + "".join(reversed(runs)).encode()


def markdown_table_rule_spaces(size: int) -> bytes:
    return b"a | b\n" + b"|-" + b" " * size + b"x\n"


def text_one_long_word(size: int) -> bytes:
    return _repeat("ab.", size)


def html_nested_lists(size: int) -> bytes:
    return b"<html><body>" + _repeat("<ul><li>x", size) + b"</body></html>"


def html_nested_divs(size: int) -> bytes:
    return b"<html><body>" + _repeat("<div>x", size) + b"</body></html>"


def html_nested_tables(size: int) -> bytes:
    return b"<html><body>" + _repeat("<table><tr><td>x", size) + b"</body></html>"


def html_many_rows(size: int) -> bytes:
    return b"<html><body><table>" + _repeat("<tr><td>a</td><td>b</td></tr>", size) + b"</table></body></html>"


def _package(parts: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in parts.items():
            archive.writestr(name, data)
    return out.getvalue()


_W = 'xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"'
_DOCX_TYPES = (b'<?xml version="1.0" encoding="UTF-8"?><Types xmlns="http://schemas.openxmlformats.org/'
               b'package/2006/content-types"><Default Extension="rels" ContentType="application/'
               b'vnd.openxmlformats-package.relationships+xml"/><Default Extension="xml" '
               b'ContentType="application/xml"/><Override PartName="/word/document.xml" '
               b'ContentType="application/vnd.openxmlformats-officedocument.wordprocessingml.'
               b'document.main+xml"/></Types>')
_DOCX_RELS = (b'<?xml version="1.0" encoding="UTF-8"?><Relationships xmlns="http://schemas.'
              b'openxmlformats.org/package/2006/relationships"><Relationship Id="rId1" Type="http://'
              b'schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument" '
              b'Target="word/document.xml"/></Relationships>')


def _docx(body: str) -> bytes:
    document = f'<?xml version="1.0" encoding="UTF-8"?><w:document {_W}><w:body>{body}</w:body></w:document>'
    return _package({"[Content_Types].xml": _DOCX_TYPES, "_rels/.rels": _DOCX_RELS,
                     "word/document.xml": document.encode()})


def docx_nested_tables(size: int) -> bytes:
    """Tables inside cells inside tables (lxml refuses XML deeper than 256 elements, so 80 tables at most)."""
    unit = "<w:tbl><w:tr><w:tc><w:p><w:r><w:t>x</w:t></w:r></w:p>"
    depth = min(80, max(1, size // len(unit)))
    close = "</w:tc></w:tr></w:tbl>"
    rows = "".join("<w:tr><w:tc><w:p><w:r><w:t>r</w:t></w:r></w:p></w:tc></w:tr>"
                   for _ in range(max(1, (size - depth * len(unit)) // 60)))
    return _docx("<w:tbl>" + rows + unit * depth + close * depth + "</w:tbl>")


def docx_many_paragraphs(size: int) -> bytes:
    return _docx("<w:p><w:r><w:t>word</w:t></w:r></w:p>" * max(1, size // 40))


def xlsx_many_cells(size: int) -> bytes:
    import openpyxl

    workbook = openpyxl.Workbook()
    sheet = workbook.active
    for row in range(1, max(2, size // 40)):
        sheet.append([f"r{row}", row, row * 2.5])
    out = io.BytesIO()
    workbook.save(out)
    return out.getvalue()


def pdf_long_content_stream(size: int) -> bytes:
    """One page whose content stream holds ``size`` bytes of text operators."""
    ops = b"BT /F1 12 Tf 72 720 Td " + b"(word) Tj 0 -1 Td " * max(1, size // 20) + b"ET"
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(ops) + ops + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


SHAPES: dict[str, Callable[[int], bytes]] = {
    name.replace("_", " ", 1): fn for name, fn in globals().items()
    if callable(fn) and name.split("_")[0] in ("markdown", "text", "html", "docx", "xlsx", "pdf")
}
