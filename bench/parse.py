"""Document parsing throughput and recall: parse_document per format vs pypdf alone.

Documents are generated here with known words (a seeded vocabulary): text PDFs of N
pages (reportlab), a DOCX, an XLSX (sheets are pages), HTML and Markdown holding the
same kind of prose. For each, ``parse_document`` is timed (pages/s and thousand words/s,
medians of several rounds) and its recall measured: the fraction of the known words found
in the extracted text, counted with multiplicity. The reference is pypdf alone,
``PdfReader(...).pages[i].extract_text()``, on the same PDFs; the ratio column is
parse_document's pages/s over pypdf's. One more row renders every PDF page for OCR
(``ocr_mode="always"`` with an OCR that returns nothing) to show what rasterisation costs
before Triton is even called.

    python bench/parse.py [--quick]
"""
from __future__ import annotations

import io
import random
import re
from collections import Counter
from dataclasses import dataclass

import common  # noqa: E402  (puts the project root on sys.path)

import docx
import openpyxl
from pypdf import PdfReader
from reportlab.lib.pagesizes import letter
from reportlab.pdfgen import canvas

from reading_frontend.parsing import parse_document

VOCABULARY = ("river stone mountain cloud harbor lantern meadow copper violet orbit canyon "
              "falcon glacier summit prairie thunder willow ember quartz tundra beacon "
              "compass saffron marble voyage cedar island nectar pebble zenith").split()
LINES_PER_PAGE, WORDS_PER_LINE = 40, 11


@dataclass(frozen=True)
class Sample:
    name: str
    data: bytes
    pages: int
    words: tuple[str, ...]


def sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(VOCABULARY) for _ in range(WORDS_PER_LINE)) + "."


def pdf_sample(pages: int, rng: random.Random) -> Sample:
    out, lines = io.BytesIO(), []
    pdf = canvas.Canvas(out, pagesize=letter)
    for _ in range(pages):
        for row in range(LINES_PER_PAGE):
            line = sentence(rng)
            lines.append(line)
            pdf.drawString(54, 750 - 18 * row, line)
        pdf.showPage()
    pdf.save()
    return Sample(f"pdf ({pages} pages)", out.getvalue(), pages, known_words(lines))


def docx_sample(pages: int, rng: random.Random) -> Sample:
    document, lines = docx.Document(), []
    for page in range(pages):
        lines.append(f"Section {page}")
        document.add_heading(lines[-1], level=1)
        for _ in range(LINES_PER_PAGE // 4):
            lines.append(" ".join(sentence(rng) for _ in range(4)))
            document.add_paragraph(lines[-1])
    out = io.BytesIO()
    document.save(out)
    return Sample(f"docx ({pages} pages of text)", out.getvalue(), 1, known_words(lines))


def xlsx_sample(sheets: int, rng: random.Random) -> Sample:
    workbook, cells = openpyxl.Workbook(), []
    workbook.remove(workbook.active)
    for index in range(sheets):
        sheet = workbook.create_sheet(f"Sheet{index}")
        for row in range(200):
            values = [rng.choice(VOCABULARY), row, rng.choice(VOCABULARY), row + 0.25]
            sheet.append(values)
            cells.extend(str(v) for v in values)
    out = io.BytesIO()
    workbook.save(out)
    return Sample(f"xlsx ({sheets} sheets x 200 rows)", out.getvalue(), sheets, known_words(cells))


def html_sample(pages: int, rng: random.Random) -> Sample:
    parts, lines = ["<html><head><title>Bench</title><script>var x = 1;</script></head><body>"], []
    for page in range(pages):
        lines.append(f"Section {page}")
        parts.append(f"<h2>{lines[-1]}</h2>")
        for _ in range(LINES_PER_PAGE // 8):
            lines.append(" ".join(sentence(rng) for _ in range(4)))
            items = [sentence(rng) for _ in range(4)]
            lines.extend(items)
            parts.append(f"<p>{lines[-5]}</p><ul>" + "".join(f"<li>{i}</li>" for i in items) + "</ul>")
    parts.append("</body></html>")
    return Sample(f"html ({pages} pages of text)", "".join(parts).encode(), 1, known_words(lines))


def markdown_sample(pages: int, rng: random.Random) -> Sample:
    parts, lines = [], []
    for page in range(pages):
        lines.append(f"Section {page}")
        parts.append(f"## {lines[-1]}\n")
        for _ in range(LINES_PER_PAGE // 8):
            lines.append(" ".join(sentence(rng) for _ in range(4)))
            items = [sentence(rng) for _ in range(4)]
            lines.extend(items)
            parts.append(lines[-5] + "\n\n" + "".join(f"- {i}\n" for i in items))
    return Sample(f"markdown ({pages} pages of text)", "\n".join(parts).encode(), 1,
                  known_words(lines))


def known_words(lines: list[str]) -> tuple[str, ...]:
    return tuple(word for line in lines for word in re.findall(r"\w+", line.lower()))


def recall(known: tuple[str, ...], text: str) -> float:
    """Known words found, with multiplicity: a dropped line lowers it even if its words
    occur elsewhere."""
    found = Counter(re.findall(r"\w+", text.lower()))
    return sum((Counter(known) & found).values()) / len(known)


def ours(sample: Sample, **options) -> tuple[int, str]:
    doc = parse_document(sample.data, **options)
    return len(doc.pages), doc.text


def pypdf_alone(sample: Sample) -> tuple[int, str]:
    reader = PdfReader(io.BytesIO(sample.data))
    texts = [page.extract_text() for page in reader.pages]
    return len(texts), "\n".join(texts)


def measure(extract, samples: list[Sample], rounds: int) -> tuple[float, float, float]:
    """(pages/s, thousand known words/s, recall) over all samples."""
    def work() -> int:
        return sum(extract(sample)[0] for sample in samples)

    pages_per_s, _ = common.median_rate(work, rounds)
    words = sum(len(sample.words) for sample in samples)
    pages = sum(sample.pages for sample in samples)
    found = [recall(sample.words, extract(sample)[1]) for sample in samples]
    return pages_per_s, pages_per_s * words / pages / 1000, min(found)


def main() -> None:
    args = common.arguments(__doc__.splitlines()[0])
    rng = random.Random(7)
    pdf_pages, docs, rounds = (10, 3, 3) if args.quick else (50, 5, 5)
    pdfs = [pdf_sample(pdf_pages, rng) for _ in range(docs)]
    others = [[docx_sample(pdf_pages, rng) for _ in range(docs)],
              [xlsx_sample(5, rng) for _ in range(docs)],
              [html_sample(pdf_pages, rng) for _ in range(docs)],
              [markdown_sample(pdf_pages, rng) for _ in range(docs)]]

    reference = measure(pypdf_alone, pdfs, rounds)
    rows = [["pypdf alone (reference)", pdfs[0].name, *reference, 1.0]]
    parsed = measure(ours, pdfs, rounds)
    rows.append(["parse_document", pdfs[0].name, *parsed, parsed[0] / reference[0]])
    rendered = measure(lambda s: ours(s, ocr=lambda png: [], ocr_mode="always"), pdfs[:1],
                       max(1, rounds - 2))
    rows.append(["parse_document + render for OCR", pdfs[0].name, rendered[0], rendered[1], "-",
                 rendered[0] / reference[0]])
    for samples in others:
        rows.append(["parse_document", samples[0].name, *measure(ours, samples, rounds), "-"])

    columns = ["system", "documents", "pages/s", "kwords/s", "recall", "ratio to pypdf"]
    common.print_table(f"Parsing ({docs} documents per format, median of {rounds} rounds; "
                       "recall = known words found)", columns, rows)
    common.write_results("parse", {
        "quick": args.quick, "rounds": rounds, "documents_per_format": docs,
        "rows": [dict(zip(columns, row)) for row in rows],
    })


if __name__ == "__main__":
    main()
