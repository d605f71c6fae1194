"""``percolate-demo`` (``make demo``): the main job on the embedded default, end to end.

Starts a real Triton on CPU with the built model repository, the reading frontend in
front of it with mutual TLS and development certificates, then calls Embed, Ocr,
Parse and Transcribe (``jfk.flac``: ``PERCOLATE_DEMO_AUDIO``, default
``data/jfk.flac`` in the repository) as a tenant node would, and shows that
another tenant's name is refused. Then a tenant node over an encrypted RocksDB ingests
generated files (text PDF, scanned PDF, DOCX, XLSX, PNG, the audio) through the
reading service and answers searches. Last, two replicas of the tenant with the lease in etcd:
a synchronous standby, ``kill -9`` of the active, the standby serving every acknowledged write.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np

from percolate.reading.v1 import reading_pb2 as pb
from percolate.reading.v1 import reading_pb2_grpc
from percolate_certs.ca import dev_pki
from percolate_certs.tls import channel_credentials
from percolate_models.build import verify
from percolate_models.errors import PercolateError
from percolate_models.paths import ProjectPaths
from percolate_triton import TritonConfig, TritonServer
from reading_frontend.config import FrontendConfig
from reading_frontend.embedded import EmbeddedReading

from . import samples
from .failover_demo import demo_failover
from .node_demo import demo_node

TENANT = "demo-tenant"
DOCUMENTS = [
    "Each tenant's memory is stored in RocksDB, encrypted with the tenant's own keys.",
    "The reading service parses PDF, DOCX and spreadsheets and sends scanned pages to OCR.",
    "Speech is transcribed by Whisper running inside Triton Inference Server.",
    "Our office plants need watering twice a week in summer.",
    "Mutual TLS certificates prove which tenant is calling the reading service.",
]
QUESTION = "How is my data kept private from other customers?"


def heading(text: str) -> None:
    print(f"\n== {text} " + "=" * max(0, 72 - len(text)))


def timed(call):
    started = time.perf_counter()
    result = call()
    return result, (time.perf_counter() - started) * 1000


def demo_embed(stub) -> None:
    heading("Embed: rank documents against a question")
    response, ms = timed(lambda: stub.Embed(pb.EmbedRequest(texts=DOCUMENTS + [QUESTION], normalize=True)))
    vectors = np.array([e.values for e in response.embeddings])
    print(f"{len(vectors)} texts -> {response.dimensions}-dimensional vectors ({response.model}) in {ms:.0f} ms")
    print(f"question: {QUESTION!r}")
    scores = vectors[:-1] @ vectors[-1]
    for rank, index in enumerate(np.argsort(-scores), 1):
        print(f"  {rank}. {scores[index]:+.3f}  {DOCUMENTS[index]}")


def demo_ocr(stub, paths: ProjectPaths) -> None:
    heading("Ocr: a generated image")
    image = samples.text_image()
    sample = paths.cache / "demo" / "ocr_sample.png"
    sample.write_bytes(image)
    response, ms = timed(lambda: stub.Ocr(pb.OcrRequest(image=image)))
    print(f"{sample} ({response.width}x{response.height}): {len(response.lines)} lines in {ms:.0f} ms")
    for line in response.lines:
        print(f"  conf {line.confidence:.3f}  at ({line.box[0].x:4.0f},{line.box[0].y:4.0f})  {line.text}")
    found = {"".join(line.text.split()) for line in response.lines}
    matched = sum("".join(expected.split()) in found for expected in samples.OCR_LINES)
    print(f"{matched} of {len(samples.OCR_LINES)} drawn lines read back (spaces aside: PP-OCR drops some)")


def demo_parse(stub) -> None:
    for name, content in (("report.docx", samples.docx_report()), ("scan.pdf", samples.scanned_pdf())):
        heading(f"Parse: {name} (format detected from the bytes)")
        request = pb.ParseRequest(content=content, filename=name,
                                  options=pb.ParseOptions(embed=True, chunk_tokens=64))
        response, ms = timed(lambda: stub.Parse(request))
        print(f"format {response.format}, {len(response.pages)} page(s), {len(response.chunks)} chunk(s) "
              f"with {response.embedding_dimensions}-d embeddings, in {ms:.0f} ms")
        for key, value in sorted(response.metadata.items()):
            print(f"  metadata {key}: {value}")
        for page in response.pages:
            for block in page.blocks:
                kind = pb.BlockType.Name(block.type).removeprefix("BLOCK_TYPE_").lower()
                if block.type == pb.BLOCK_TYPE_TABLE:
                    print(f"  p{page.number} {kind:10s} {block.table.name}".rstrip())
                    for row in block.table.rows:
                        print(" " * 16 + " | ".join(row.cells))
                else:
                    print(f"  p{page.number} {kind:10s} {'  ' * max(0, block.level - 1)}{block.text}")
        for chunk in response.chunks:
            path = " > ".join(chunk.heading_path) or "-"
            print(f"  chunk {chunk.ordinal}: pages {chunk.page_start}-{chunk.page_end}, "
                  f"{chunk.token_count} tokens, under [{path}]")
        for warning in response.warnings:
            print(f"  warning: {warning}")


def demo_audio_path() -> Path:
    default = Path(__file__).resolve().parents[1] / "data" / "jfk.flac"
    return Path(os.environ.get("PERCOLATE_DEMO_AUDIO") or default)


def demo_transcribe(stub) -> None:
    path = demo_audio_path()
    heading(f"Transcribe: {path.name} (Whisper tiny.en, decoding loop inside Triton)")
    if not path.is_file():
        print(f"{path} is missing: set PERCOLATE_DEMO_AUDIO to an audio file to transcribe one")
        return
    audio = path.read_bytes()
    response, ms = timed(lambda: stub.Transcribe(pb.TranscribeRequest(audio=audio), timeout=300))
    print(f"{path} ({response.format}, {response.source_sample_rate} Hz, {response.source_channels} "
          f"channel(s), {response.duration:.1f} s) in {ms:.0f} ms "
          f"(real-time factor {ms / 1000 / max(response.duration, 1e-9):.3f}), "
          f"{response.windows} window(s), language {response.language}")
    for segment in response.segments:
        print(f"  [{segment.start:6.2f} -> {segment.end:6.2f}] {segment.text}")
    print(f"text: {response.text}")


def demo_identity(stub) -> None:
    heading("Identity: the certificate says who you are")
    info = stub.GetInfo(pb.GetInfoRequest())
    print(f"the service sees tenant {info.tenant_id!r} (from the client certificate's URI SAN)")
    try:
        stub.Embed(pb.EmbedRequest(tenant_id="someone-else", texts=["let me in"]))
    except grpc.RpcError as err:
        print(f"asking as 'someone-else' -> {err.code().name}: {err.details()}")


def main() -> int:
    paths = ProjectPaths.from_env()
    problems = verify(paths)
    if problems:
        print(f"percolate-demo: {problems[0]}: run `make setup` first", file=sys.stderr)
        return 2
    (paths.cache / "demo").mkdir(parents=True, exist_ok=True)
    pki = dev_pki(paths.cache / "demo" / "pki", [TENANT])
    heading("Starting Triton (CPU) and the reading frontend (mutual TLS)")
    started = time.perf_counter()
    try:
        with TritonServer(TritonConfig.from_env()) as triton:
            config = replace(FrontendConfig.from_env(), triton_url=triton.grpc_url,
                             tls_cert=pki.server.cert, tls_key=pki.server.key, tls_client_ca=pki.ca.cert)
            with EmbeddedReading(config, paths) as reading:
                print(f"ready in {time.perf_counter() - started:.1f} s: Triton {triton.grpc_url} "
                      f"(log {triton.log_path}), frontend {reading.address}, "
                      f"metrics http://127.0.0.1:{reading.server.metrics_port}/metrics")
                print(f"development certificates in {pki.root} (tenant {TENANT})")
                creds = pki.tenants[TENANT]
                credentials = channel_credentials(creds.ca, creds.cert, creds.key)
                with grpc.secure_channel(reading.address, credentials) as channel:
                    stub = reading_pb2_grpc.ReadingServiceStub(channel)
                    demo_embed(stub)
                    demo_ocr(stub, paths)
                    demo_parse(stub)
                    demo_transcribe(stub)
                    demo_identity(stub)
                demo_node(reading.address, pki, TENANT, paths.cache / "demo" / "node", demo_audio_path(),
                          heading)
                demo_failover(reading.address, pki, TENANT, paths.cache / "demo" / "failover", heading)
        heading("Done")
        print(f"Node, frontend and Triton stopped after {time.perf_counter() - started:.0f} s. "
              "`make test` runs the suite; `make bench` the benchmarks.")
    except PercolateError as err:
        print(f"percolate-demo: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
