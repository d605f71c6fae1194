"""End-to-end ingest through the full stack: node -> reading service (mTLS) -> Triton.

The same generated documents (text PDFs of 3 pages, DOCX reports, Markdown notes; 60,
or 15 with --quick) go through
  (n) the tenant node's Ingest (its own process): Parse with embeddings on the reading
      service, then one synced, encrypted batch and the in-memory indexes;
  (p) the reading service's Parse with embeddings alone, the same requests, as the
      reference: the difference is what the node adds (storage, encryption, indexing).
Each figure is the median of rounds, each round on a fresh data directory.

    python bench/ingest.py [--quick]
"""
from __future__ import annotations

import io
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common  # noqa: E402  (puts the project root on sys.path)

from percolate.node.v1 import node_pb2 as npb
from percolate.reading.v1 import reading_pb2 as rpb
from percolate.reading.v1 import reading_pb2_grpc
from percolate_node.client import NodeClient, NodeTarget
from percolate_node.config import NodeConfig
from percolate_node.store import generate_kek
from percolate_triton import TritonConfig, TritonServer

WORDS = ("memory tenant private encrypted search chunk reading service triton pipeline "
         "document page table report quarterly budget invoice contract meeting summary").split()


def documents(count: int) -> list[tuple[str, bytes, int]]:
    """(filename, bytes, pages) with varied text."""
    import docx
    from reportlab.pdfgen import canvas

    rng = __import__("random").Random(5)
    sentence = lambda: " ".join(rng.choice(WORDS) for _ in range(12)).capitalize() + "."  # noqa: E731
    made = []
    for i in range(count):
        kind = i % 3
        if kind == 0:
            out = io.BytesIO()
            pdf = canvas.Canvas(out)
            for _ in range(3):
                for line in range(30):
                    pdf.drawString(50, 780 - 22 * line, sentence())
                pdf.showPage()
            pdf.save()
            made.append((f"doc{i}.pdf", out.getvalue(), 3))
        elif kind == 1:
            document = docx.Document()
            document.add_heading(f"Report {i}", level=1)
            for _ in range(20):
                document.add_paragraph(sentence())
            out = io.BytesIO()
            document.save(out)
            made.append((f"doc{i}.docx", out.getvalue(), 1))
        else:
            text = f"# Note {i}\n\n" + "\n\n".join(sentence() for _ in range(20))
            made.append((f"doc{i}.md", text.encode(), 1))
    return made


def start_node(frontend: common.FrontendProcess, root: Path) -> tuple[subprocess.Popen, NodeTarget]:
    token = root / "token"
    token.write_text(secrets.token_hex(16))
    token.chmod(0o600)  # a key file: the node refuses one others may read
    generate_kek(root / "kek.bin")
    creds = frontend.pki.tenants["bench-a"]
    config = NodeConfig(tenant_id="bench-a", data_dir=root / "data", kek_file=root / "kek.bin",
                        reading_url=frontend.address, reading_ca=creds.ca, reading_cert=creds.cert,
                        reading_key=creds.key, token_file=token, metrics_port=-1)
    env = {**os.environ, **config.to_env()}
    process = subprocess.Popen([sys.executable, "-m", "percolate_node.cli", "serve"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=common.ROOT)
    address = process.stdout.readline().split(" on ")[1].split(",")[0]
    return process, NodeTarget(address=address, token=token.read_text())


def main() -> None:
    args = common.arguments(__doc__.splitlines()[0])
    count, rounds = (15, 2) if args.quick else (60, 3)
    docs = documents(count)
    pages = sum(p for _, _, p in docs)
    node_rates, parse_rates = [], []
    with TritonServer(TritonConfig.from_env()) as triton, common.FrontendProcess(triton.grpc_url) as frontend:
        stub = reading_pb2_grpc.ReadingServiceStub(frontend.channel())
        options = rpb.ParseOptions(embed=True, normalize=True)
        stub.Parse(rpb.ParseRequest(content=docs[0][1], options=options), timeout=120)  # warm-up
        for _ in range(rounds):
            started = time.perf_counter()
            for name, content, _ in docs:
                stub.Parse(rpb.ParseRequest(content=content, filename=name, options=options), timeout=120)
            parse_rates.append(count / (time.perf_counter() - started))
            with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
                process, target = start_node(frontend, Path(tmp))
                try:
                    with NodeClient(target) as client:
                        started = time.perf_counter()
                        for name, content, _ in docs:
                            client.call("Ingest", npb.IngestRequest(content=content, filename=name))
                        node_rates.append(count / (time.perf_counter() - started))
                        stats = client.call("Stats", npb.StatsRequest())
                finally:
                    process.terminate()
                    process.wait(timeout=30)
    median = lambda values: sorted(values)[len(values) // 2]  # noqa: E731
    node, parse = median(node_rates), median(parse_rates)
    rows = [["node Ingest (n)", round(node, 2), round(node * pages / count, 2), f"{node / parse:.2f}x"],
            ["reading Parse alone (p)", round(parse, 2), round(parse * pages / count, 2), "1.00x"]]
    common.print_table(f"{count} documents ({pages} pages), one client, median of {rounds} rounds",
                       ["system", "documents/s", "pages/s", "vs (p)"], rows)
    print(f"last round stored {stats.documents} documents, {stats.resources} chunks, "
          f"{stats.storage_bytes / 1e6:.1f} MB on disk")
    common.write_results("ingest", {
        "documents": count, "pages": pages, "rounds": rounds,
        "node": {"documents_per_s": round(node, 3), "rounds": node_rates},
        "parse_only": {"documents_per_s": round(parse, 3), "rounds": parse_rates},
        "ratio_node_to_parse": round(node / parse, 3),
        "last_round": {"documents": stats.documents, "resources": stats.resources,
                       "storage_bytes": stats.storage_bytes}})


if __name__ == "__main__":
    main()
