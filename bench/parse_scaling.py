"""How parsing and chunking cost grows with size, for documents shaped to make it grow
faster (tests/pathological_docs.py): CPU seconds at n and 4n bytes and their ratio (4 is
linear, 16 quadratic), beside an ordinary document of the same format family (prose
Markdown) as the reference.

    python bench/parse_scaling.py [--quick] [--size BYTES]
"""
from __future__ import annotations

import random
import time

import common  # noqa: E402  (puts the project root on sys.path)

from percolate_models.paths import ProjectPaths
from reading_frontend.parsing import chunk_document, parse_document
from reading_frontend.text import TextTokenizer
from tests.pathological_docs import SHAPES


def prose_markdown(size: int) -> bytes:
    """The reference: headings and paragraphs of ordinary words."""
    rng = random.Random(1)
    words = "river stone mountain cloud harbor lantern meadow copper violet orbit".split()
    out, total = [], 0
    while total < size:
        block = "## Section\n\n" + " ".join(rng.choice(words) for _ in range(120)) + ".\n\n"
        out.append(block)
        total += len(block)
    return "".join(out).encode()


def cpu(work) -> float:
    started = time.process_time()
    work()
    return time.process_time() - started


def main() -> None:
    args = common.arguments(__doc__, size={"type": int, "default": 0,
                                           "help": "n in bytes (default 50 kB, quick 20 kB)"})
    size = args.size or (20_000 if args.quick else 50_000)
    tokenizer = TextTokenizer(ProjectPaths.from_env().assets / "text_embedding" / "tokenizer.json")
    shapes = {"reference: prose markdown": prose_markdown, **SHAPES}
    rows, results = [], {}
    for name, make in shapes.items():
        timings = []
        for n in (size, 4 * size):
            data = make(n)
            parsed = {}
            parse_s = cpu(lambda: parsed.setdefault("doc", parse_document(data)))
            chunk_s = cpu(lambda: chunk_document(parsed["doc"], tokenizer.count_tokens, 200))
            timings.append((len(data), parse_s, chunk_s))
        (small, p1, c1), (large, p4, c4) = timings
        ratio = (p4 + c4) / max(p1 + c1, 1e-6)
        rows.append([name, small, p1, c1, large, p4, c4, f"{ratio:.1f}x",
                     f"{(p4 + c4) / large * 1e6:.2f}"])
        results[name] = {"n": timings[0], "4n": timings[1], "ratio": ratio}
    common.print_table(f"CPU seconds at n and 4n bytes (n = {size:,})",
                       ["shape", "n bytes", "parse s", "chunk s", "4n bytes", "parse s", "chunk s",
                        "4n/n", "us/byte"], rows)
    common.write_results("parse_scaling", {"size": size, "results": results})


if __name__ == "__main__":
    main()
