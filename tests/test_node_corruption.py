"""Damage on disk: a real node over real RocksDB, called over mutual TLS.

A flipped byte inside an SST data block (checksum mismatch: the whole block is
unreadable) of the documents and of the resources table, and a value re-sealed with a
wrong tag through RocksDB itself (checksums valid, authentication fails). In every case
the node starts, serves what is intact, answers DATA_LOSS naming each damaged record,
keeps intact chunks searchable, counts the damage in ``percolate_corrupt_records`` and
its integrity health status, and ``percolate admin verify`` lists it.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import urllib.request
from dataclasses import dataclass

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from percolate.node.v1 import node_pb2 as pb
from percolate_certs.tls import channel_credentials
from percolate_common.background import BackgroundServer
from percolate_node.server import NodeServer
from percolate_node.store import EncryptedStore, load_kek
from percolate_node.store.layout import DOCUMENTS, RESOURCES
from tests.test_node import TENANT, Caller, ingest, node_config
from tests.test_store import raw_db, raw_edit

DOCUMENT_COUNT = 36
INTEGRITY_SERVICE = "percolate.node.v1.Integrity"  # the health detail: NOT_SERVING while damage is known
FAMILY = {"document": DOCUMENTS, "resource": RESOURCES}
FILLER = ("The inspection covered the north wing, the loading bay and the archive room; every finding "
          "was photographed, dated and signed by the two inspectors on duty that morning. ")


def codeword(i: int) -> str:
    """A word found in document ``i`` only (letters: the keyword index splits on anything else)."""
    return "quorbit" + chr(97 + i // 26) + chr(97 + i % 26)


def note(i: int) -> bytes:
    return f"# Note {i}\n\nReport {codeword(i)}. {FILLER * 3}\n".encode()


@dataclass(frozen=True)
class Corpus:
    root: object  # the folder holding data/, kek.bin and token of a node that ingested the notes
    documents: dict[str, list[str]]  # document id -> its chunk ids
    words: dict[str, str]  # chunk id -> the code word only it holds


@pytest.fixture(scope="module")
def corpus(reading, pki, tmp_path_factory) -> Corpus:
    """Notes ingested through a real node, then every column family flushed to SST files."""
    root = tmp_path_factory.mktemp("corpus")
    config = node_config(root, reading, pki, metrics_port=-1)
    documents, words = {}, {}
    with BackgroundServer(NodeServer(config)) as node, grpc.insecure_channel(node.address) as channel:
        caller = Caller(channel, config.token_file.read_text())
        for i in range(DOCUMENT_COUNT):
            created = ingest(caller, note(i), f"note-{i}.md")
            chunks = list(caller.GetDocument(pb.GetRequest(id=created.document_id)).resource_ids)
            documents[created.document_id] = chunks
            words.update({chunk: codeword(i) for chunk in chunks})
    db = raw_db(config.data_dir)  # flush every family: the values now live in SST files only
    views = [db.get_column_family(cf) for cf in db.list_cf(str(config.data_dir))]
    for view in views:
        view.flush()
        view.close()
    db.close()
    return Corpus(root, documents, words)


def copy_of(corpus: Corpus, tmp_path):
    for name in ("kek.bin", "token"):
        shutil.copy(corpus.root / name, tmp_path / name)
    shutil.copytree(corpus.root / "data", tmp_path / "data")
    return tmp_path / "data"


def record_key(data_dir, kind: str, record_id: str) -> tuple[str, bytes]:
    """Where the REM layer keeps a record (``percolate_node/rem/repository.py``: k("<kind>\\0<id>"))."""
    with EncryptedStore.open(data_dir, TENANT, load_kek(data_dir.parent / "kek.bin"), create=False) as store:
        return FAMILY[kind], store.name_key(f"{kind}\0{record_id}")


def flip_in_sst(data_dir, kind: str, record_id: str) -> str:
    """Flip one byte in the middle of the record's ciphertext inside its SST data block."""
    cf, key = record_key(data_dir, kind, record_id)
    found = []
    raw_edit(data_dir, lambda views: found.append(views[cf][key]))
    sealed = found[0]
    for sst in sorted(data_dir.glob("*.sst")):
        data = bytearray(sst.read_bytes())
        at = data.find(sealed)
        if at >= 0:
            data[at + len(sealed) // 2] ^= 0x40
            sst.write_bytes(bytes(data))
            return sst.name
    raise AssertionError(f"the sealed bytes of {kind} {record_id} are in no SST file (compressed?)")


def reseal_with_wrong_tag(data_dir, kind: str, record_id: str) -> None:
    """Change the value through RocksDB itself: block checksums stay valid, its seal fails."""
    cf, key = record_key(data_dir, kind, record_id)

    def flip(views):
        sealed = bytearray(views[cf][key])
        sealed[-1] ^= 0x01  # the GCM tag's last byte
        views[cf][key] = bytes(sealed)
    raw_edit(data_dir, flip)


class DegradedNode:
    """A node started on the damaged copy, called over mutual TLS with tenant-a's certificate."""

    def __init__(self, tmp_path, reading, pki) -> None:
        self.config = node_config(tmp_path, reading, pki, tls_cert=pki.server.cert, tls_key=pki.server.key,
                                  tls_client_ca=pki.ca.cert, metrics_port=0)
        self.pki = pki

    def __enter__(self):
        self.background = BackgroundServer(NodeServer(self.config)).__enter__()  # must start at all
        creds = self.pki.tenants[TENANT]
        self.channel = grpc.secure_channel(self.background.address,
                                           channel_credentials(creds.ca, creds.cert, creds.key))
        self.caller = Caller(self.channel)
        return self

    def __exit__(self, *exc) -> None:
        self.channel.close()
        self.background.__exit__(*exc)

    def outcome(self, method: str, record_id: str) -> tuple[str, str]:
        try:
            getattr(self.caller, method)(pb.GetRequest(id=record_id))
            return "OK", ""
        except grpc.RpcError as error:
            return error.code().name, error.details()

    def corrupt_records_metric(self) -> float:
        port = self.background.server.metrics_port
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        match = re.search(r'^percolate_corrupt_records\{tenant_id="%s"\} (\S+)$' % TENANT, text, re.M)
        assert match, "percolate_corrupt_records is not exported"
        return float(match.group(1))

    def integrity(self):
        stub = health_pb2_grpc.HealthStub(self.channel)
        return {service: stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status
                for service in ("", INTEGRITY_SERVICE)}

    def assert_intact_chunks_searchable(self, corpus: Corpus, intact: list[str]) -> None:
        assert intact, "the damage took every chunk: the test corpus spans too few blocks"
        for chunk in intact[:: max(1, len(intact) // 6)]:
            for mode in (pb.SEARCH_MODE_KEYWORD, pb.SEARCH_MODE_HYBRID):
                hits = self.caller.Search(pb.SearchRequest(query=corpus.words[chunk], mode=mode, limit=3)).hits
                assert hits and hits[0].resource_id == chunk, (mode, corpus.words[chunk], [h.text for h in hits])


def admin_verify(config) -> subprocess.CompletedProcess:
    env = {**os.environ, **config.to_env()}
    return subprocess.run([sys.executable, "-m", "percolate_node.cli", "admin", "verify"], capture_output=True,
                          text=True, timeout=300, env=env)


def test_a_corrupt_block_in_the_documents_table(corpus, reading, pki, tmp_path):
    data_dir = copy_of(corpus, tmp_path)
    ids = list(corpus.documents)
    target = ids[len(ids) // 2]
    flip_in_sst(data_dir, "document", target)
    with DegradedNode(tmp_path, reading, pki) as node:
        outcomes = {document: node.outcome("GetDocument", document) for document in ids}
        damaged = {document for document, (code, _) in outcomes.items() if code != "OK"}
        assert target in damaged and len(damaged) < len(ids), outcomes
        for document in damaged:
            code, details = outcomes[document]
            assert code == "DATA_LOSS" and f"document {document}" in details and DOCUMENTS in details, details
        assert "checksum mismatch" in outcomes[target][1]
        # chunks are a table of their own: those of damaged documents are intact and searchable
        chunks = [chunk for chunks in corpus.documents.values() for chunk in chunks]
        assert all(node.outcome("GetResource", chunk) == ("OK", "") for chunk in chunks)
        node.assert_intact_chunks_searchable(corpus, [c for d in damaged for c in corpus.documents[d]]
                                             + corpus.documents[ids[0]])
        assert node.caller.Stats(pb.StatsRequest()).index_entries == len(chunks)
        assert node.corrupt_records_metric() == len(damaged)
        health = node.integrity()
        assert health[""] == health_pb2.HealthCheckResponse.SERVING
        assert health[INTEGRITY_SERVICE] == health_pb2.HealthCheckResponse.NOT_SERVING
    verified = admin_verify(node.config)
    assert verified.returncode == 1, verified.stdout + verified.stderr
    for document in damaged:
        assert f"document {document}" in verified.stdout
    assert f"{len(damaged)} damaged record(s) in documents" in verified.stdout and "restore" in verified.stdout


def test_a_corrupt_block_in_the_resources_table(corpus, reading, pki, tmp_path):
    data_dir = copy_of(corpus, tmp_path)
    chunks = [chunk for chunks in corpus.documents.values() for chunk in chunks]
    target = chunks[len(chunks) // 2]
    flip_in_sst(data_dir, "resource", target)
    with DegradedNode(tmp_path, reading, pki) as node:
        outcomes = {chunk: node.outcome("GetResource", chunk) for chunk in chunks}
        damaged = {chunk for chunk, (code, _) in outcomes.items() if code != "OK"}
        assert target in damaged and len(damaged) < len(chunks), outcomes
        for chunk in damaged:
            code, details = outcomes[chunk]
            assert code == "DATA_LOSS" and f"resource {chunk}" in details and RESOURCES in details, details
        assert "checksum mismatch" in outcomes[target][1]
        for document, its_chunks in corpus.documents.items():  # a document lists its chunks: DATA_LOSS too
            lost = damaged.intersection(its_chunks)
            code, details = node.outcome("GetDocument", document)
            assert (code, bool(lost)) in (("OK", False), ("DATA_LOSS", True)), (document, code, details)
            assert not lost or any(chunk in details for chunk in lost)
        intact = [chunk for chunk in chunks if chunk not in damaged]
        node.assert_intact_chunks_searchable(corpus, intact)
        assert node.caller.Stats(pb.StatsRequest()).index_entries == len(intact)
        for chunk in damaged:  # a search touching a damaged chunk still answers, without it
            hits = node.caller.Search(pb.SearchRequest(query=corpus.words[chunk], mode=pb.SEARCH_MODE_KEYWORD)).hits
            assert chunk not in {hit.resource_id for hit in hits}
        assert node.corrupt_records_metric() == len(damaged)
        assert node.integrity()[INTEGRITY_SERVICE] == health_pb2.HealthCheckResponse.NOT_SERVING
    verified = admin_verify(node.config)
    assert verified.returncode == 1, verified.stdout + verified.stderr
    for chunk in damaged:
        assert f"resource {chunk}" in verified.stdout
    assert f"{len(damaged)} damaged record(s) in resources" in verified.stdout


def test_values_resealed_with_a_wrong_tag(corpus, reading, pki, tmp_path):
    data_dir = copy_of(corpus, tmp_path)
    ids = list(corpus.documents)
    document, chunk = ids[3], corpus.documents[ids[20]][0]
    reseal_with_wrong_tag(data_dir, "document", document)
    reseal_with_wrong_tag(data_dir, "resource", chunk)
    verified = admin_verify(node_config(tmp_path, reading, pki))  # offline, before the node starts
    assert verified.returncode == 1, verified.stdout + verified.stderr
    assert f"document {document}" in verified.stdout and f"resource {chunk}" in verified.stdout
    assert "2 damaged record(s) in documents, resources" in verified.stdout
    with DegradedNode(tmp_path, reading, pki) as node:
        for method, record, kind in (("GetDocument", document, "document"), ("GetResource", chunk, "resource")):
            code, details = node.outcome(method, record)
            assert code == "DATA_LOSS" and f"{kind} {record}" in details and "failed authentication" in details
        assert node.outcome("GetDocument", ids[20])[0] == "DATA_LOSS"  # lists the damaged chunk
        for other in ids[:3] + ids[4:20] + ids[21:]:
            assert node.outcome("GetDocument", other) == ("OK", "")
        chunks = [c for chunks in corpus.documents.values() for c in chunks]
        intact = [c for c in chunks if c != chunk]
        node.assert_intact_chunks_searchable(corpus, intact)
        assert node.caller.Stats(pb.StatsRequest()).index_entries == len(intact)
        assert node.corrupt_records_metric() == 2
        assert node.integrity()[INTEGRITY_SERVICE] == health_pb2.HealthCheckResponse.NOT_SERVING


def test_an_intact_store_verifies_clean_and_reports_healthy(corpus, reading, pki, tmp_path):
    copy_of(corpus, tmp_path)
    verified = admin_verify(node_config(tmp_path, reading, pki))
    assert verified.returncode == 0 and "no damage" in verified.stdout, verified.stdout + verified.stderr
    with DegradedNode(tmp_path, reading, pki) as node:
        assert node.corrupt_records_metric() == 0
        assert node.integrity()[INTEGRITY_SERVICE] == health_pb2.HealthCheckResponse.SERVING
