"""Retrieval evaluation with known answers: parse structure and search quality, end to end.

A corpus is generated with its truth (seeded, so every run builds the same bytes):
deal memos, underwriting summaries and research notes about made-up projects, each with
a title, numbered sections and subsections, facts unique to the document, shared
boilerplate, and a "Sources and Uses" table. They are written as
  PDF  flow     reportlab platypus: styled headings, a ruled table, running header/footer
  PDF  words    every word placed on its own, its baseline off by up to 0.3 pt (as layout
                engines that position each word in floating point write them), bold
                headings, a borderless table of aligned columns, running header/footer
  PDF  twocol   two text columns per page, the table full width below them
  PDF  numbered headings in the body size, told apart by bold and numbering; table drawn
                with ruling lines
  DOCX and XLSX (the table as a sheet, facts in a notes sheet).

Everything goes through the real stack: Triton, the reading frontend (mTLS) and a tenant
node in its own process. Printed:
  - parsing, per PDF style (from the reading service's Parse): heading recall/precision
    (text match), heading level order agreement, table recall/precision (a table counts
    when its cells match the truth's), PDFs with every heading and table recovered,
    single-word paragraph blocks, running header/footer lines left in the text;
  - search, per query set and mode (from the node's Search): hit@1, hit@5 and MRR of the
    source document among the hits' documents. Query sets: "copied" (a sentence copied
    from the document) and "paraphrased" (a question about the same fact in other words).

Hybrid is measured with the default fusion and with reciprocal rank fusion (the old
default); ``--sweep`` adds other semantic weights and all-terms boosts.

    python bench/retrieval.py [--quick] [--sweep] [--label before]
"""
from __future__ import annotations

import io
import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import common  # noqa: E402  (puts the project root on sys.path)

from percolate.node.v1 import node_pb2 as npb
from percolate.reading.v1 import reading_pb2 as rpb
from percolate.reading.v1 import reading_pb2_grpc
from percolate_node.client import NodeClient
from percolate_triton import TritonConfig, TritonServer

from ingest import start_node  # noqa: E402  (bench/ is on sys.path when run as a script)

PLACES = ("Ridgeway Cobalt Harbor Juniper Sterling Alder Granite Meridian Willow Falcon Beacon "
          "Summit Cedar Orchard Lantern Redstone Bluewater Ironwood Silverlake Northgate Foxhollow "
          "Kestrel Marigold Highcliff Copperfield Ravenna Thornbury Westbrook Ashcombe Larkspur "
          "Pinecrest Stonebridge Wrenfield Brightwater Oakhurst Mistral Halcyon Everly Calder "
          "Drummond").split()
KINDS = ("Data Center", "Logistics Park", "Solar Farm", "Medical Campus", "Fiber Network",
         "Cold Storage Hub", "Wind Project", "Life Science Lab")
DOC_TYPES = ("Investment Memorandum", "Underwriting Summary", "Research Note", "Credit Memo")
CITIES = ("Denver Austin Phoenix Columbus Raleigh Tacoma Omaha Boise Tulsa Reno Fresno Spokane "
          "Madison Savannah Durham Provo Lincoln Wichita Dayton Richmond Albany Eugene Tucson "
          "Lansing Fargo Laredo Billings Mobile Topeka Akron Peoria Erie Macon Duluth Yakima "
          "Tempe Ogden Chico Bend Salem").split()
BANKS = ("Ashford Capital", "Brennan Securities", "Calloway Partners", "Dunmore Bank",
         "Everett Trust", "Fairlight Markets", "Gresham & Vale", "Holloway Credit")
FIRSTS = "Amelia Bruno Clara Dmitri Elena Farid Greta Hugo Ines Jonas Keira Leon Maya Nils Olive Pavel".split()
LASTS = "Okafor Lindqvist Moreau Tanaka Villanueva Brandt Castellano Nakamura Osei Petrov Quinlan Sorensen".split()
FIRMS = ("Whitcombe LLP", "Harrow & Finch", "Bellamy Stone", "Corrigan Hale", "Dewitt Marsh")
TENANTS = ("Quantix Cloud", "Northwind Freight", "Helio Grocers", "Vantage Health", "Orbis Media",
           "Lumen Pharma", "Kinetic Retail", "Polar Foods", "Atlas Robotics", "Cirrus Games")
FUNDS = ("Greyfield Infrastructure Fund", "Tallis Pension Trust", "Morrow Family Office",
         "Keystone Real Assets", "Broadleaf Sovereign Fund")
RISKS = ("interconnection delays", "permitting appeals", "supply chain shortages", "tenant concentration",
         "rising construction costs", "flood exposure", "labour availability", "tariff changes")
MITIGATIONS = ("a fixed-price construction contract", "a completion guarantee from the sponsor",
               "a debt service reserve of six months", "parametric insurance",
               "pre-ordered long-lead equipment", "a diversified tenant pipeline")
BOILERPLATE = (
    "The parties shall cooperate in good faith to satisfy the conditions precedent before closing.",
    "All figures are unaudited and remain subject to confirmatory due diligence.",
    "This document is provided for discussion purposes only and does not constitute an offer.",
    "Capitalised terms not defined here have the meanings given in the term sheet.",
    "The sponsor will deliver quarterly operating reports within forty-five days of quarter end.",
    "Distributions are permitted only while the debt service coverage ratio exceeds the lock-up level.",
    "Any amendment requires the written consent of the majority lenders.",
    "Insurance proceeds above the threshold will be applied to mandatory prepayment.",
    "The independent engineer will certify each construction milestone before a draw.",
    "Governing law is the law of the State of New York, without regard to conflict rules.",
    "Market conditions may change materially between signing and financial close.",
    "Environmental reports identified no recognised conditions requiring remediation.",
)

# A fact: (sentence with {fields}, paraphrased question with {fields}).
FACTS = (
    ("The {project} in {city} is designed for {capacity} megawatts of capacity, with the first phase "
     "opening in {quarter} {year}.",
     "How large will the {city} {kind} be and when does its first stage open?"),
    ("{bank} has agreed to underwrite {notes} million dollars of senior secured notes at a coupon of "
     "{coupon} percent.",
     "Which lender is committing to the bond financing of the {project}, and at what interest rate?"),
    ("{person}, a partner at {firm}, will act as lead counsel for the sponsor of the {project}.",
     "Who is the sponsor's main lawyer on the {project} deal?"),
    ("The anchor tenant, {tenant}, signed a {lease_years}-year lease with annual rent escalators of "
     "{escalator} percent.",
     "How long is {tenant}'s rental commitment and how quickly do its payments increase?"),
    ("Key risks include {risk1} and {risk2}, which the sponsor mitigates through {mitigation}.",
     "What could go wrong with the {project}, and how is that being addressed?"),
    ("The equity contribution of {equity} million dollars comes from the {fund}, representing "
     "{share} percent of total capitalisation.",
     "How much money is the {fund} putting into the {project}?"),
)
PDF_STYLES = ("flow", "words", "twocol", "numbered")


@dataclass
class Section:
    heading: str
    level: int  # 1 title, 2 section, 3 subsection
    paragraphs: list[str] = field(default_factory=list)
    table: list[list[str]] | None = None


@dataclass
class Doc:
    name: str
    style: str
    title: str
    header: str
    sections: list[Section]
    facts: list[tuple[str, str]]  # (copied sentence, paraphrased question)
    data: bytes = b""

    @property
    def headings(self) -> list[tuple[str, int]]:
        return [(s.heading, s.level) for s in self.sections]

    @property
    def tables(self) -> list[list[list[str]]]:
        return [s.table for s in self.sections if s.table]


def make_doc(index: int, style: str, rng: random.Random) -> Doc:
    kind = KINDS[index % len(KINDS)]
    values = {
        "project": f"{PLACES[index]} {kind}", "kind": kind, "city": CITIES[index],
        "capacity": rng.randrange(12, 400), "quarter": f"Q{rng.randrange(1, 5)}", "year": rng.randrange(2026, 2031),
        "bank": rng.choice(BANKS), "notes": rng.randrange(80, 900), "coupon": f"{rng.uniform(4, 9):.2f}",
        "person": f"{rng.choice(FIRSTS)} {rng.choice(LASTS)}", "firm": rng.choice(FIRMS),
        "tenant": rng.choice(TENANTS), "lease_years": rng.randrange(7, 26), "escalator": f"{rng.uniform(1.5, 3.5):.1f}",
        "risk1": "", "risk2": "", "mitigation": rng.choice(MITIGATIONS),
        "fund": rng.choice(FUNDS), "equity": rng.randrange(40, 400), "share": rng.randrange(20, 45),
    }
    values["risk1"], values["risk2"] = rng.sample(RISKS, 2)
    facts = [(s.format(**values), q.format(**values)) for s, q in FACTS]
    filler = lambda n: [rng.choice(BOILERPLATE) for _ in range(n)]  # noqa: E731
    para = lambda *sentences: " ".join(sentences)  # noqa: E731
    doc_type = DOC_TYPES[index % len(DOC_TYPES)]
    title = f"{values['project']} {doc_type}"
    senior, equity = values["notes"], values["equity"]
    reserve, fees = rng.randrange(5, 30), rng.randrange(3, 20)
    table = [["Sources", "Amount ($m)", "Uses", "Amount ($m)"],
             ["Senior notes", str(senior), "Construction", str(senior + equity - reserve - fees)],
             ["Sponsor equity", str(equity), "Debt service reserve", str(reserve)],
             ["Total sources", str(senior + equity), "Fees and expenses", str(fees)]]
    sections = [
        Section(title, 1),
        Section("1. Overview", 2, [para(facts[0][0], *filler(2)), para(*filler(3))]),
        Section("1.1 Site and Tenancy", 3, [para(*filler(1), facts[3][0], *filler(2))]),
        Section("2. Financing", 2, [para(facts[1][0], *filler(2)), para(facts[5][0], *filler(1))]),
        Section("2.1 Sources and Uses", 3, [para(*filler(1))], table),
        Section("3. Legal Matters", 2, [para(facts[2][0], *filler(3))]),
        Section("4. Risks and Mitigants", 2, [para(facts[4][0], *filler(2)), para(*filler(3))]),
    ]
    header = f"{values['bank']} | Confidential"
    return Doc(f"doc{index:02d}-{style}", style, title, header, sections, facts)


# ---------------------------------------------------------------------- writers

def write_flow(doc: Doc) -> bytes:
    from reportlab.lib import colors
    from reportlab.lib.pagesizes import letter
    from reportlab.lib.styles import getSampleStyleSheet
    from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

    styles = getSampleStyleSheet()
    level_style = {1: styles["Title"], 2: styles["Heading1"], 3: styles["Heading2"]}
    story = []
    for section in doc.sections:
        story.append(Paragraph(section.heading, level_style[section.level]))
        story.extend(Paragraph(p, styles["BodyText"]) for p in section.paragraphs)
        if section.table:
            table = Table(section.table)
            table.setStyle(TableStyle([("GRID", (0, 0), (-1, -1), 0.5, colors.black),
                                       ("FONTNAME", (0, 0), (-1, 0), "Helvetica-Bold")]))
            story.extend([Spacer(1, 8), table, Spacer(1, 8)])
        story.extend(Paragraph(p, styles["BodyText"]) for p in doc_extra(doc, section))

    def furniture(canvas, template):
        canvas.setFont("Helvetica", 8)
        canvas.drawString(72, 760, doc.header)
        canvas.drawRightString(540, 30, f"Page {canvas.getPageNumber()}")

    out = io.BytesIO()
    SimpleDocTemplate(out, pagesize=letter).build(story, onFirstPage=furniture, onLaterPages=furniture)
    return out.getvalue()


def doc_extra(doc: Doc, section: Section) -> list[str]:
    """Extra boilerplate paragraphs so documents run to a few pages (headers repeat)."""
    rng = random.Random(f"{doc.name}/{section.heading}")
    return [" ".join(rng.choice(BOILERPLATE) for _ in range(4)) for _ in range(2 if section.level > 1 else 0)]


class _CanvasWriter:
    """Shared pieces of the canvas-drawn styles: columns, page breaks, header/footer."""

    def __init__(self, doc: Doc, columns: int, words: bool) -> None:
        from reportlab.lib.pagesizes import letter
        from reportlab.pdfgen import canvas

        self.doc, self.words = doc, words
        self.out = io.BytesIO()
        self.canvas = canvas.Canvas(self.out, pagesize=letter)
        self.page_width, self.page_height = letter
        gap = 24
        width = (self.page_width - 2 * 60 - (columns - 1) * gap) / columns
        self.columns = [(60 + i * (width + gap), width) for i in range(columns)]
        self.column = 0
        self.top, self.bottom = self.page_height - 80, 70
        self.y = self.top
        self.page = 1
        self._furniture()

    def _furniture(self) -> None:
        self.canvas.setFont("Helvetica", 8)
        self.canvas.drawString(60, self.page_height - 40, self.doc.header)
        self.canvas.drawCentredString(self.page_width / 2, 36, f"- {self.page} -")

    def next_column(self) -> None:
        self.column += 1
        if self.column >= len(self.columns):
            self.canvas.showPage()
            self.page += 1
            self._furniture()
            self.column = 0
        self.y = self.top

    def text(self, text: str, font: str, size: float, space_before: float = 0, full_width: bool = False) -> None:
        from reportlab.lib.utils import simpleSplit

        x, width = (60, self.page_width - 120) if full_width else self.columns[self.column]
        lines = simpleSplit(text, font, size, width)
        self.y -= space_before
        for line in lines:
            if self.y - size < self.bottom:
                self.next_column()
                x, width = (60, self.page_width - 120) if full_width else self.columns[self.column]
            self.y -= size * 1.25
            self.draw_line(x, self.y, line, font, size)
        self.y -= size * 0.6

    def draw_line(self, x: float, y: float, line: str, font: str, size: float) -> None:
        self.canvas.setFont(font, size)
        if not self.words:
            self.canvas.drawString(x, y, line)
            return
        space = self.canvas.stringWidth(" ", font, size)
        jitter = random.Random(f"{x}/{y}/{line}")
        for word in line.split(" "):
            self.canvas.drawString(x, y + jitter.uniform(-0.3, 0.3), word)
            x += self.canvas.stringWidth(word, font, size) + space

    def table(self, rows: list[list[str]], ruled: bool, full_width: bool = False) -> None:
        x0, width = (60, self.page_width - 120) if full_width else self.columns[self.column]
        needed = 18 * len(rows) + 20
        if self.y - needed < self.bottom:
            self.next_column()
        col_width = width / len(rows[0])
        self.y -= 12
        top = self.y
        for r, row in enumerate(rows):
            font = "Helvetica-Bold" if r == 0 else "Helvetica"
            for c, cell in enumerate(row):
                self.draw_line(x0 + c * col_width + 4, self.y - 13, cell, font, 9)
            self.y -= 18
        if ruled:
            self.canvas.setLineWidth(0.6)
            for r in range(len(rows) + 1):
                self.canvas.line(x0, top - 18 * r, x0 + width, top - 18 * r)
            for c in range(len(rows[0]) + 1):
                self.canvas.line(x0 + c * col_width, top, x0 + c * col_width, top - 18 * len(rows))
        self.y -= 10

    def finish(self) -> bytes:
        self.canvas.showPage()
        self.canvas.save()
        return self.out.getvalue()


def write_canvas(doc: Doc) -> bytes:
    style = doc.style
    writer = _CanvasWriter(doc, columns=2 if style == "twocol" else 1, words=style == "words")
    sizes = {1: 18, 2: 14, 3: 12} if style != "numbered" else {1: 16, 2: 10, 3: 10}
    pending_table = None
    for section in doc.sections:
        writer.text(section.heading, "Helvetica-Bold", sizes[section.level], space_before=8)
        for paragraph in section.paragraphs + doc_extra(doc, section):
            writer.text(paragraph, "Times-Roman" if style == "twocol" else "Helvetica", 10)
        if section.table:
            if style == "twocol":
                pending_table = section.table
            else:
                writer.table(section.table, ruled=style == "numbered")
    if pending_table:  # two columns: the table goes full width on a page of its own
        writer.next_column() if writer.column == 0 else None
        writer.next_column()
        writer.table(pending_table, ruled=True, full_width=True)
    return writer.finish()


def write_docx(doc: Doc) -> bytes:
    import docx

    document = docx.Document()
    for section in doc.sections:
        document.add_heading(section.heading, level=section.level)
        for paragraph in section.paragraphs:
            document.add_paragraph(paragraph)
        if section.table:
            table = document.add_table(rows=len(section.table), cols=len(section.table[0]))
            for r, row in enumerate(section.table):
                for c, cell in enumerate(row):
                    table.cell(r, c).text = cell
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def write_xlsx(doc: Doc) -> bytes:
    import openpyxl

    workbook = openpyxl.Workbook()
    notes = workbook.active
    notes.title = "Notes"
    notes.append([doc.title])
    for section in doc.sections[1:]:
        notes.append([section.heading])
        for paragraph in section.paragraphs:
            notes.append([paragraph])
    sheet = workbook.create_sheet("Sources and Uses")
    for row in doc.tables[0]:
        sheet.append([float(c) if c.isdigit() else c for c in row])
    out = io.BytesIO()
    workbook.save(out)
    return out.getvalue()


def corpus(per_style: int) -> list[Doc]:
    rng = random.Random(12)
    styles = [*PDF_STYLES, "docx", "xlsx"]
    docs = []
    for index in range(per_style * len(styles)):
        doc = make_doc(index, styles[index % len(styles)], rng)
        if doc.style in ("flow",):
            doc.data = write_flow(doc)
        elif doc.style in PDF_STYLES:
            doc.data = write_canvas(doc)
        elif doc.style == "docx":
            doc.data = write_docx(doc)
        else:
            doc.data = write_xlsx(doc)
        docs.append(doc)
    return docs


def filename(doc: Doc) -> str:
    return doc.name + {"docx": ".docx", "xlsx": ".xlsx"}.get(doc.style, ".pdf")


# ---------------------------------------------------------------------- scoring

def norm(text: str) -> str:
    return " ".join(text.split()).strip().lower()


@dataclass
class StructureScore:
    headings_true: int = 0
    headings_found: int = 0  # truth headings found as heading blocks
    heading_blocks: int = 0
    heading_blocks_right: int = 0
    level_pairs: int = 0
    level_pairs_right: int = 0
    tables_true: int = 0
    tables_found: int = 0
    table_blocks: int = 0
    table_blocks_right: int = 0
    pdfs: int = 0
    pdfs_complete: int = 0
    paragraphs: int = 0
    one_word_paragraphs: int = 0
    pages: int = 0
    furniture_left: int = 0
    sentences: int = 0
    sentences_found: int = 0


def table_matches(found: list[list[str]], truth: list[list[str]]) -> bool:
    """Same shape and at least 90% of cells equal (whitespace and case ignored)."""
    if len(found) != len(truth) or any(len(a) != len(b) for a, b in zip(found, truth)):
        return False
    cells = [(norm(a), norm(b)) for fr, tr in zip(found, truth) for a, b in zip(fr, tr)]
    return sum(a == b for a, b in cells) >= 0.9 * len(cells)


def score_structure(doc: Doc, response, score: StructureScore) -> None:
    blocks = [block for page in response.pages for block in page.blocks]
    headings = [(norm(b.text), b.level) for b in blocks if b.type == rpb.BLOCK_TYPE_HEADING]
    truth = [(norm(t), level) for t, level in doc.headings]
    truth_texts = {t for t, _ in truth}
    found_levels = {}
    for text, level in headings:
        found_levels.setdefault(text, level)
    found = [t for t, _ in truth if t in found_levels]
    score.headings_true += len(truth)
    score.headings_found += len(found)
    score.heading_blocks += len(headings)
    score.heading_blocks_right += sum(t in truth_texts for t, _ in headings)
    for (a, la), (b, lb) in zip(truth, truth[1:]):
        if a in found_levels and b in found_levels:
            score.level_pairs += 1
            truth_sign = (lb > la) - (lb < la)
            found_sign = (found_levels[b] > found_levels[a]) - (found_levels[b] < found_levels[a])
            score.level_pairs_right += truth_sign == found_sign
    tables = [[list(row.cells) for row in b.table.rows] for b in blocks if b.type == rpb.BLOCK_TYPE_TABLE]
    tables_found = sum(any(table_matches(t, truth_table) for t in tables) for truth_table in doc.tables)
    score.tables_true += len(doc.tables)
    score.tables_found += tables_found
    score.table_blocks += len(tables)
    score.table_blocks_right += sum(any(table_matches(t, tt) for tt in doc.tables) for t in tables)
    score.pdfs += 1
    score.pdfs_complete += len(found) == len(truth) and tables_found == len(doc.tables)
    paragraphs = [b.text for b in blocks if b.type == rpb.BLOCK_TYPE_PARAGRAPH]
    score.paragraphs += len(paragraphs)
    score.one_word_paragraphs += sum(len(p.split()) == 1 for p in paragraphs)
    score.pages += len(response.pages)
    text = "\n".join(b.text for b in blocks)
    score.furniture_left += text.count(doc.header)
    flat = norm(text)
    sentences = [sentence for sentence, _ in doc.facts]
    score.sentences += len(sentences)
    score.sentences_found += sum(norm(s) in flat for s in sentences)


def ratio(a: int, b: int) -> float:
    return a / b if b else float("nan")


# ---------------------------------------------------------------------- main

def main() -> None:
    args = common.arguments(__doc__.splitlines()[0],
                            label={"default": "", "help": "a name for this run in the results file"},
                            sweep={"action": "store_true", "help": "also hybrid with other fusion weights"})
    per_style = 3 if args.quick else 6
    started = time.perf_counter()
    docs = corpus(per_style)
    print(f"corpus: {len(docs)} documents ({per_style} per style) generated in "
          f"{time.perf_counter() - started:.1f} s")
    structure: dict[str, StructureScore] = {}
    search: dict[tuple[str, str], list[int]] = {}
    with TritonServer(TritonConfig.from_env()) as triton, common.FrontendProcess(triton.grpc_url) as frontend:
        stub = reading_pb2_grpc.ReadingServiceStub(frontend.channel())
        for doc in docs:
            if doc.style not in PDF_STYLES:
                continue
            response = stub.Parse(rpb.ParseRequest(content=doc.data, filename=filename(doc)), timeout=300)
            score_structure(doc, response, structure.setdefault(doc.style, StructureScore()))
        with tempfile.TemporaryDirectory(prefix="bench-retrieval-") as tmp:
            process, target = start_node(frontend, Path(tmp))
            try:
                with NodeClient(target) as client:
                    for doc in docs:
                        client.call("Ingest", npb.IngestRequest(content=doc.data, filename=filename(doc)))
                    modes = {"keyword": (npb.SEARCH_MODE_KEYWORD, None),
                             "semantic": (npb.SEARCH_MODE_SEMANTIC, None),
                             "hybrid": (npb.SEARCH_MODE_HYBRID, None),
                             "hybrid rrf": (npb.SEARCH_MODE_HYBRID, npb.FusionOptions(method=npb.FUSION_METHOD_RRF))}
                    for weight in (0.3, 0.7) if args.sweep else ():
                        modes[f"hybrid w={weight}"] = (npb.SEARCH_MODE_HYBRID,
                                                       npb.FusionOptions(semantic_weight=weight))
                    for boost in (0.0, 0.3) if args.sweep else ():
                        modes[f"hybrid boost={boost}"] = (npb.SEARCH_MODE_HYBRID,
                                                          npb.FusionOptions(all_terms_boost=boost))
                    for doc in docs:
                        uri = f"file://{filename(doc)}"
                        for sentence, question in doc.facts:
                            for query_set, query in (("copied", sentence), ("paraphrased", question)):
                                for mode, (value, fusion) in modes.items():
                                    hits = client.call("Search", npb.SearchRequest(
                                        query=query, mode=value, limit=20, fusion=fusion)).hits
                                    ranked = list(dict.fromkeys(hit.uri for hit in hits))
                                    rank = ranked.index(uri) + 1 if uri in ranked else 0
                                    search.setdefault((query_set, mode), []).append(rank)
            finally:
                process.terminate()
                process.wait(timeout=30)
    report(docs, structure, search, args.label)


def report(docs: list[Doc], structure: dict[str, StructureScore], search: dict, label: str) -> None:
    rows, results = [], {}
    total = StructureScore()
    for style in PDF_STYLES:
        s = structure[style]
        for name in vars(total):
            setattr(total, name, getattr(total, name) + getattr(s, name))
    for style, s in [*((style, structure[style]) for style in PDF_STYLES), ("all PDFs", total)]:
        figures = {
            "heading_recall": ratio(s.headings_found, s.headings_true),
            "heading_precision": ratio(s.heading_blocks_right, s.heading_blocks),
            "heading_level_order": ratio(s.level_pairs_right, s.level_pairs),
            "table_recall": ratio(s.tables_found, s.tables_true),
            "table_precision": ratio(s.table_blocks_right, s.table_blocks),
            "pdfs_complete": ratio(s.pdfs_complete, s.pdfs),
            "one_word_paragraphs": ratio(s.one_word_paragraphs, s.paragraphs),
            "furniture_per_page": ratio(s.furniture_left, s.pages),
            "sentences_intact": ratio(s.sentences_found, s.sentences),
        }
        results[style] = figures
        rows.append([style, *(round(v, 3) for v in figures.values())])
    common.print_table("PDF structure against the generated truth (reading Parse)",
                       ["style", "head R", "head P", "level order", "table R", "table P",
                        "PDFs complete", "1-word paras", "hdr/ftr per page", "sentences intact"], rows)
    search_rows, search_results = [], {}
    for query_set in ("copied", "paraphrased"):
        for mode in dict.fromkeys(mode for _, mode in search):
            ranks = search[(query_set, mode)]
            figures = {"hit@1": sum(r == 1 for r in ranks) / len(ranks),
                       "hit@5": sum(1 <= r <= 5 for r in ranks) / len(ranks),
                       "mrr": sum(1 / r for r in ranks if r) / len(ranks), "queries": len(ranks)}
            search_results[f"{query_set}/{mode}"] = figures
            search_rows.append([query_set, mode, round(figures["hit@1"], 3), round(figures["hit@5"], 3),
                                round(figures["mrr"], 3), len(ranks)])
    common.print_table(f"Search: the source document among the hits ({len(docs)} documents)",
                       ["queries", "mode", "hit@1", "hit@5", "MRR", "n"], search_rows)
    common.write_results(f"retrieval{'-' + label if label else ''}",
                         {"label": label, "documents": len(docs), "structure": results, "search": search_results})


if __name__ == "__main__":
    main()
