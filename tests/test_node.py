"""The tenant node on the real stack: Triton, the reading service over mutual TLS, real
RocksDB on disk. Ingest, search, the REM API, authentication, and failures."""
from __future__ import annotations

import secrets
import urllib.request
import uuid
from dataclasses import replace
from datetime import datetime, timezone

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from percolate.node.v1 import node_pb2 as pb
from percolate.node.v1 import node_pb2_grpc
from percolate_certs.tls import channel_credentials
from percolate_common.background import BackgroundServer
from percolate_node.config import NodeConfig
from percolate_node.server import NodeServer
from percolate_node.store import generate_kek
from tests.conftest import frontend_config
from tests.test_parsing import sample_docx, sample_xlsx, text_pdf
from tests.test_reading_parse import scanned_pdf
from tests.test_reading_service import assert_status

TENANT = "tenant-a"


def node_config(tmp_path, reading, pki, **overrides) -> NodeConfig:
    """A node for tenant-a that calls ``reading`` with tenant-a's certificate."""
    token_file = tmp_path / "token"
    if not token_file.exists():
        token_file.write_text(secrets.token_hex(16))
        token_file.chmod(0o600)  # a key file: the node refuses one others may read
        generate_kek(tmp_path / "kek.bin")
    creds = pki.tenants[TENANT]
    config = NodeConfig(tenant_id=TENANT, data_dir=tmp_path / "data", kek_file=tmp_path / "kek.bin",
                        reading_url=reading.address, reading_ca=creds.ca, reading_cert=creds.cert,
                        reading_key=creds.key, token_file=token_file, metrics_port=0)
    return replace(config, **overrides)


class Caller:
    """A NodeService stub that sends the bearer token."""

    def __init__(self, channel, token: str = "") -> None:
        self.stub = node_pb2_grpc.NodeServiceStub(channel)
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()

    def __getattr__(self, method):
        call = getattr(self.stub, method)
        return lambda request, **kw: call(request, metadata=self.metadata, timeout=kw.get("timeout", 120))


@pytest.fixture(scope="module")
def node_env(reading, pki, tmp_path_factory):
    root = tmp_path_factory.mktemp("node")
    config = node_config(root, reading, pki)
    with BackgroundServer(NodeServer(config)) as node:
        channel = grpc.insecure_channel(node.address)
        yield node, Caller(channel, config.token_file.read_text()), config
        channel.close()


def ingest(caller, content: bytes, filename: str) -> pb.IngestResponse:
    return caller.Ingest(pb.IngestRequest(content=content, filename=filename), timeout=120)


def test_ingest_search_and_idempotence(node_env):
    node, caller, _ = node_env
    pdf = text_pdf()
    first = ingest(caller, pdf, "fruit.pdf")
    assert first.created and first.format == "pdf" and first.pages == 3 and first.resources >= 1
    again = ingest(caller, pdf, "copy-of-fruit.pdf")
    assert not again.created and again.document_id == first.document_id
    ingest(caller, sample_docx(), "report.docx")
    ingest(caller, sample_xlsx(), "sheet.xlsx")
    scan = ingest(caller, scanned_pdf(), "scan.pdf")
    assert scan.created
    for mode in (pb.SEARCH_MODE_HYBRID, pb.SEARCH_MODE_SEMANTIC, pb.SEARCH_MODE_KEYWORD):
        hits = caller.Search(pb.SearchRequest(query="comets", mode=mode, limit=3)).hits
        assert hits and "comets" in hits[0].text, (mode, [h.text for h in hits])
        assert hits[0].uri == "file://fruit.pdf" and hits[0].page_start <= 3 == hits[0].page_end
    ocr_hits = caller.Search(pb.SearchRequest(query="signed contract", limit=3)).hits
    assert ocr_hits[0].document_id == scan.document_id
    document = caller.GetDocument(pb.GetRequest(id=first.document_id))
    assert document.title == "Fruit and Sky" and len(document.resource_ids) == first.resources
    resource = caller.GetResource(pb.GetRequest(id=document.resource_ids[0], include_embedding=True))
    assert len(resource.embedding) == 384 and resource.document_id == first.document_id
    moment = caller.GetMoment(pb.GetRequest(id=first.moment_id))
    assert moment.type == "ingest" and first.document_id in moment.references


def test_entities_links_traversal_moments_and_delete(node_env):
    node, caller, _ = node_env
    doc = ingest(caller, b"# Ada\n\nAda Lovelace wrote the first program for the Analytical Engine.\n", "ada.md")
    resource_id = caller.GetDocument(pb.GetRequest(id=doc.document_id)).resource_ids[0]
    ada = caller.PutEntity(pb.PutEntityRequest(type="person", name="Ada Lovelace", aliases=["Ada"]))
    engine = caller.PutEntity(pb.PutEntityRequest(type="machine", name="Analytical Engine"))
    found = caller.FindEntities(pb.FindEntitiesRequest(name="  ADA "))  # by alias, normalised
    assert [e.id for e in found.entities] == [ada.id]
    caller.Link(pb.LinkRequest(from_id=ada.id, to_id=engine.id, relation="programmed"))
    caller.Link(pb.LinkRequest(from_id=ada.id, to_id=resource_id, relation="mentioned_in"))
    one = caller.Traverse(pb.TraverseRequest(start_id=engine.id, depth=1))
    assert {n.id for n in one.nodes} == {engine.id, ada.id}
    two = caller.Traverse(pb.TraverseRequest(start_id=engine.id, depth=2))
    assert resource_id in {n.id for n in two.nodes}
    typed = caller.Search(pb.SearchRequest(query="first program", limit=5,
                                           filters=pb.SearchFilters(entity_types=["person"]))).hits
    assert [h.resource_id for h in typed] == [resource_id]
    start = Timestamp()
    start.FromDatetime(datetime(2026, 1, 5, 9, 0, tzinfo=timezone.utc))
    meeting = caller.AddMoment(pb.AddMomentRequest(start=start, type="meeting", summary="kick-off",
                                                   references=[ada.id]))
    window = pb.ListMomentsRequest(type="meeting")
    window.start.FromDatetime(datetime(2026, 1, 1, tzinfo=timezone.utc))
    window.end.FromDatetime(datetime(2026, 1, 31, tzinfo=timezone.utc))
    assert [m.id for m in caller.ListMoments(window).moments] == [meeting.id]
    assert caller.Delete(pb.DeleteRequest(kind=pb.KIND_DOCUMENT, id=doc.document_id)).deleted
    assert_status(lambda: caller.GetDocument(pb.GetRequest(id=doc.document_id)), grpc.StatusCode.NOT_FOUND)
    after = caller.Search(pb.SearchRequest(query="Analytical Engine first program", limit=10)).hits
    assert resource_id not in {h.resource_id for h in after}


def test_bad_requests_and_corrupt_files_write_nothing(node_env):
    node, caller, _ = node_env
    before = caller.Stats(pb.StatsRequest())
    assert_status(lambda: ingest(caller, text_pdf()[:500], "broken.pdf"), grpc.StatusCode.INVALID_ARGUMENT,
                  "reading service")
    assert_status(lambda: ingest(caller, b"", "empty.txt"), grpc.StatusCode.INVALID_ARGUMENT, "empty")
    assert_status(lambda: caller.Search(pb.SearchRequest(query="  ")), grpc.StatusCode.INVALID_ARGUMENT)
    assert_status(lambda: caller.GetEntity(pb.GetRequest(id="nope")), grpc.StatusCode.NOT_FOUND)
    assert_status(lambda: caller.Traverse(pb.TraverseRequest(start_id="nope", depth=9)),
                  grpc.StatusCode.INVALID_ARGUMENT, "depth")
    after = caller.Stats(pb.StatsRequest())
    assert (after.documents, after.resources, after.moments) == (before.documents, before.resources, before.moments)
    # the data key's seal count is in Stats (`percolate stats`), reserved ahead of the seals
    assert 0 < after.dek_seals <= after.dek_seal_limit == 2**31


def test_callers_must_authenticate(node_env):
    node, caller, config = node_env
    with grpc.insecure_channel(node.address) as channel:
        assert_status(lambda: Caller(channel).Stats(pb.StatsRequest()), grpc.StatusCode.UNAUTHENTICATED)
        assert_status(lambda: Caller(channel, "wrong-token-0123456789").Stats(pb.StatsRequest()),
                      grpc.StatusCode.UNAUTHENTICATED)
    assert caller.Stats(pb.StatsRequest()).tenant_id == TENANT
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    with grpc.insecure_channel(node.address) as channel:  # probes need no credentials
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.SERVING
        assert "percolate.node.v1.NodeService" in ProtoReflectionDescriptorDatabase(channel).get_services()


def test_mutual_tls_callers(reading, pki, tmp_path):
    config = node_config(tmp_path, reading, pki, tls_cert=pki.server.cert, tls_key=pki.server.key,
                         tls_client_ca=pki.ca.cert, metrics_port=-1)
    with BackgroundServer(NodeServer(config)) as node:
        def caller(tenant: str) -> Caller:
            creds = pki.tenants[tenant]
            return Caller(grpc.secure_channel(node.address, channel_credentials(creds.ca, creds.cert, creds.key)))
        assert caller("tenant-a").Stats(pb.StatsRequest()).tenant_id == TENANT
        assert_status(lambda: caller("tenant-b").Stats(pb.StatsRequest()), grpc.StatusCode.PERMISSION_DENIED,
                      "tenant-a")
        no_cert = Caller(grpc.secure_channel(node.address, channel_credentials(pki.ca.cert)))
        assert_status(lambda: no_cert.Stats(pb.StatsRequest(), timeout=10), grpc.StatusCode.UNAVAILABLE)


def test_reading_outage_writes_nothing_then_recovers(triton, pki, paths, tmp_path):
    from reading_frontend.embedded import EmbeddedReading

    from contextlib import ExitStack

    from percolate_common.processes import wait_for

    with ExitStack() as stack:  # whatever fails, every server started here stops
        reading = stack.enter_context(EmbeddedReading(frontend_config(triton, pki, metrics_port=-1), paths))
        address = reading.address
        config = node_config(tmp_path, reading, pki, metrics_port=-1)
        node = stack.enter_context(BackgroundServer(NodeServer(config)))
        caller = Caller(stack.enter_context(grpc.insecure_channel(node.address)), config.token_file.read_text())
        reading.stop()  # the outage (stop is idempotent, so the stack's exit is harmless)
        assert_status(lambda: ingest(caller, sample_docx(), "report.docx"), grpc.StatusCode.UNAVAILABLE)
        assert caller.Stats(pb.StatsRequest()).documents == 0
        port = int(address.rsplit(":", 1)[1])
        stack.enter_context(EmbeddedReading(frontend_config(triton, pki, metrics_port=-1, port=port), paths))

        def retry_ingest():  # the node's channel reconnects within its 1 s backoff
            try:
                return ingest(caller, sample_docx(), "report.docx")
            except grpc.RpcError as err:
                assert err.code() == grpc.StatusCode.UNAVAILABLE
                return None
        assert wait_for(retry_ingest, "ingest after the outage", 30).created
        assert caller.Stats(pb.StatsRequest()).documents == 1


def test_metrics_and_no_plaintext_on_disk(node_env):
    node, caller, config = node_env
    marker = f"NODEMARKER{uuid.uuid4().hex[:10].upper()}"
    ingest(caller, f"The vault code is {marker}.\n".encode(), f"{marker}.txt")
    caller.PutEntity(pb.PutEntityRequest(type="secret", name=marker, aliases=[marker.lower()]))
    text = urllib.request.urlopen(f"http://127.0.0.1:{node.server.metrics_port}/metrics", timeout=5).read().decode()
    assert f'percolate_request_duration_seconds_count{{method="Ingest",tenant_id="{TENANT}"}}' in text
    assert f'percolate_memory_size_bytes{{tenant_id="{TENANT}"}}' in text
    files = [p for p in config.data_dir.rglob("*") if p.is_file()]
    assert files
    for needle in (marker.encode(), marker.lower().encode()):
        for file in files:
            assert needle not in file.read_bytes(), f"{needle!r} found in {file}"


def test_a_serving_node_saves_its_changed_search_graph_periodically(reading, pki, tmp_path):
    from percolate_node import graph_snapshot

    config = node_config(tmp_path, reading, pki, graph_save_interval_s=0.2, metrics_port=-1)
    with BackgroundServer(NodeServer(config)) as node:
        memory = node.server.memory
        assert not memory.graph_unsaved  # an empty store: nothing to save
        with grpc.insecure_channel(node.address) as channel:
            caller = Caller(channel, config.token_file.read_text())
            created = ingest(caller, sample_docx(), "report.docx")
            chunk_ids = set(caller.GetDocument(pb.GetRequest(id=created.document_id)).resource_ids)
            deadline = datetime.now(timezone.utc).timestamp() + 30
            while memory.graph_unsaved and datetime.now(timezone.utc).timestamp() < deadline:
                caller.Stats(pb.StatsRequest())  # the node keeps serving meanwhile
            assert not memory.graph_unsaved, "the changed graph was not saved while serving"
            saved = graph_snapshot.load(memory.store)
            assert saved is not None and chunk_ids <= set(saved.slot_ids)
            assert not memory.save_graph(), "nothing changed since: nothing to write"
