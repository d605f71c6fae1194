"""ReadingService over mutual TLS in front of the session's real Triton: results,
bad input (a clear status, and the server keeps serving), identity."""
from __future__ import annotations

import io
import struct
import zlib

import grpc
import numpy as np
import pytest
from PIL import Image
from rapidocr_onnxruntime import RapidOCR
from tritonclient.grpc import service_pb2 as kpb

from percolate.reading.v1 import reading_pb2 as pb
from percolate.reading.v1 import reading_pb2_grpc
from percolate_certs.ca import create_ca, issue_cert, issue_tenant_cert
from percolate_certs.tls import channel_credentials
from percolate_models.accuracy import cosine_rows, sample_sentences
from reading_frontend.text import TextTokenizer, embed_texts
from tests.conftest import tenant_channel
from tests.test_ocr_pipeline import CASES, assert_same_as_rapidocr


def vectors(response: pb.EmbedResponse) -> np.ndarray:
    return np.array([e.values for e in response.embeddings], np.float32)


def assert_status(call, code: grpc.StatusCode, *fragments: str) -> str:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    assert caught.value.code() == code, (caught.value.code(), caught.value.details())
    details = caught.value.details()
    for fragment in fragments:
        assert fragment in details, details
    assert "Traceback" not in details
    return details


def still_serving(stub) -> None:
    assert stub.Embed(pb.EmbedRequest(texts=["still here"])).dimensions == 384


# --------------------------------------------------------------------------- results

def test_embed_matches_triton_direct(reading_stub, triton_models, paths):
    texts = sample_sentences(40, seed=5)
    served = vectors(reading_stub.Embed(pb.EmbedRequest(texts=texts), timeout=60))
    tokenizer = TextTokenizer(paths.assets / "text_embedding" / "tokenizer.json")
    direct = embed_texts(texts, tokenizer, triton_models.embed)
    assert served.shape == (40, 384)
    assert cosine_rows(served, direct).min() > 0.99999


def test_embed_normalize_counts_and_order(reading_stub, paths):
    texts = ["alpha", "a much longer sentence about encrypted tenant memory", "alpha"]
    response = reading_stub.Embed(pb.EmbedRequest(texts=texts, normalize=True))
    got = vectors(response)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(got[0], got[2], atol=1e-5)
    tokenizer = TextTokenizer(paths.assets / "text_embedding" / "tokenizer.json")
    expected = [tokenizer.count_tokens(t) + 2 for t in texts]  # with [CLS] and [SEP]
    assert [e.token_count for e in response.embeddings] == expected and expected[0] == 3
    assert response.model == "text_embedding" and response.dimensions == 384


def test_long_text_needs_truncate(reading_stub):
    long_text = "memory " * 400
    assert_status(lambda: reading_stub.Embed(pb.EmbedRequest(texts=["ok", long_text])),
                  grpc.StatusCode.INVALID_ARGUMENT, "text 1", "limit of 256", "truncation")
    response = reading_stub.Embed(pb.EmbedRequest(texts=["ok", long_text], truncate=True))
    assert [e.truncated for e in response.embeddings] == [False, True]
    assert response.embeddings[1].token_count > 256


def test_ocr_matches_rapidocr(reading_stub):
    image, expected = CASES["rgb_png"]()
    response = reading_stub.Ocr(pb.OcrRequest(image=image), timeout=60)
    lines = [type("Line", (), {"text": l.text, "confidence": l.confidence,
                               "box": [(p.x, p.y) for p in l.box]}) for l in response.lines]
    assert_same_as_rapidocr(lines, RapidOCR()(image)[0])
    assert (response.width, response.height) == (1200, 800)


def test_get_info_names_the_callers_tenant(reading_stub):
    info = reading_stub.GetInfo(pb.GetInfoRequest())
    assert info.tenant_id == "tenant-a"
    states = {m.name: m.state for m in info.models}
    assert {name: states.get(name) for name in ("text_embedding", "ocr_det", "ocr_cls", "ocr_rec")} == {
        "text_embedding": "READY", "ocr_det": "READY", "ocr_cls": "READY", "ocr_rec": "READY"}
    assert set(states.values()) == {"READY"}
    assert info.limits.max_message_bytes == 64 << 20
    assert "pdf" in info.formats


# --------------------------------------------------------------------------- bad input

def test_empty_and_oversized_embed_requests(reading_stub):
    assert_status(lambda: reading_stub.Embed(pb.EmbedRequest()), grpc.StatusCode.INVALID_ARGUMENT, "empty")
    tiny = ["x"] * 5000
    assert_status(lambda: reading_stub.Embed(pb.EmbedRequest(texts=tiny)),
                  grpc.StatusCode.RESOURCE_EXHAUSTED, "5000 texts", "limit is 1024")
    assert len(reading_stub.Embed(pb.EmbedRequest(texts=tiny[:1000]), timeout=120).embeddings) == 1000
    assert_status(lambda: reading_stub.Embed(pb.EmbedRequest(texts=["x"], model="gpt-9")),
                  grpc.StatusCode.NOT_FOUND, "gpt-9")
    still_serving(reading_stub)


def _png_bomb(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims a huge image (IDAT is a stub)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_bad_images(reading_stub):
    assert_status(lambda: reading_stub.Ocr(pb.OcrRequest()), grpc.StatusCode.INVALID_ARGUMENT, "empty")
    assert_status(lambda: reading_stub.Ocr(pb.OcrRequest(image=b"not an image at all")),
                  grpc.StatusCode.INVALID_ARGUMENT, "cannot decode")
    for width, height in [(8000, 8000), (45_000_000, 1), (20_000, 10_000)]:  # the last trips Pillow's own guard
        assert_status(lambda: reading_stub.Ocr(pb.OcrRequest(image=_png_bomb(width, height))),
                      grpc.StatusCode.RESOURCE_EXHAUSTED, "exceeds the limit of 40000000 pixels")
    buffer = io.BytesIO()
    Image.new("RGB", (50, 50), "white").save(buffer, "PNG")
    assert_status(lambda: reading_stub.Ocr(pb.OcrRequest(image=buffer.getvalue()[:40])),
                  grpc.StatusCode.INVALID_ARGUMENT)
    still_serving(reading_stub)


def test_message_above_the_size_limit(reading_stub):
    too_big = b"\0" * ((64 << 20) + (2 << 20))
    assert_status(lambda: reading_stub.Ocr(pb.OcrRequest(image=too_big), timeout=60),
                  grpc.StatusCode.RESOURCE_EXHAUSTED)
    still_serving(reading_stub)


# --------------------------------------------------------------------------- identity

def test_tenant_mismatch_is_permission_denied(reading_stub):
    assert_status(lambda: reading_stub.Embed(pb.EmbedRequest(tenant_id="tenant-b", texts=["x"])),
                  grpc.StatusCode.PERMISSION_DENIED, "tenant-b", "tenant-a")
    assert_status(lambda: reading_stub.GetInfo(pb.GetInfoRequest(), metadata=[("x-tenant-id", "tenant-b")]),
                  grpc.StatusCode.PERMISSION_DENIED)
    assert reading_stub.Embed(pb.EmbedRequest(tenant_id="tenant-a", texts=["x"])).dimensions == 384


def test_every_declared_tenant_must_match_the_certificate(reading_stub):
    """The body's tenant does not hide a header that names another (nor the reverse)."""
    for body, headers in [("tenant-a", ["tenant-b"]), ("", ["tenant-a", "tenant-b"]),
                          ("tenant-b", ["tenant-a"])]:
        metadata = [("x-tenant-id", h) for h in headers]
        assert_status(lambda: reading_stub.Embed(pb.EmbedRequest(tenant_id=body, texts=["x"]), metadata=metadata),
                      grpc.StatusCode.PERMISSION_DENIED, "tenant-b")
    served = reading_stub.Embed(pb.EmbedRequest(tenant_id="tenant-a", texts=["x"]),
                                metadata=[("x-tenant-id", "tenant-a")])
    assert served.dimensions == 384


KSERVE_CALLS = {
    "ServerLive": lambda: kpb.ServerLiveRequest(),
    "ServerReady": lambda: kpb.ServerReadyRequest(),
    "ModelReady": lambda: kpb.ModelReadyRequest(name="embed_text"),
    "ServerMetadata": lambda: kpb.ServerMetadataRequest(),
    "ModelMetadata": lambda: kpb.ModelMetadataRequest(name="embed_text"),
    "ModelConfig": lambda: kpb.ModelConfigRequest(name="embed_text"),
    "ModelStatistics": lambda: kpb.ModelStatisticsRequest(),
    "ModelInfer": lambda: embed_infer_request(["x"]),
}


def embed_infer_request(texts: list[str]) -> "kpb.ModelInferRequest":
    from reading_frontend.kserve import serialize_bytes

    request = kpb.ModelInferRequest(model_name="embed_text")
    request.inputs.add(name="TEXT", datatype="BYTES", shape=[len(texts)])
    request.raw_input_contents.append(serialize_bytes([t.encode() for t in texts]))
    return request


def test_kserve_facade_needs_a_tenant_identity_for_every_rpc(reading, pki, tmp_path):
    """A client certificate the CA signed without a tenant identity (a probe's, an
    operator's) is refused by every KServe RPC; grpc.health.v1 stays open for probes."""
    from cryptography import x509
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from tritonclient.grpc import service_pb2_grpc

    probe = issue_cert(pki.root, tmp_path, "probe", common_name="probe", usage="client",
                       sans=[x509.DNSName("probe.percolate.example")])
    no_tenant = channel_credentials(pki.ca.cert, probe.cert, probe.key)
    with grpc.secure_channel(reading.address, no_tenant) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for name, request in KSERVE_CALLS.items():
            message = assert_status(lambda: getattr(stub, name)(request(), timeout=30),
                                    grpc.StatusCode.UNAUTHENTICATED)
            assert "tenant" in message, (name, message)
        assert_status(lambda: reading_pb2_grpc.ReadingServiceStub(channel).GetInfo(pb.GetInfoRequest(), timeout=30),
                      grpc.StatusCode.UNAUTHENTICATED)
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=30)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
    with tenant_channel(reading, pki, "tenant-a") as channel:  # a tenant is served
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        assert stub.ServerLive(kpb.ServerLiveRequest(), timeout=30).live
        assert stub.ServerMetadata(kpb.ServerMetadataRequest(), timeout=30).name == "percolate-reading"


def test_kserve_statistics_are_the_callers_own(reading, pki):
    from tritonclient.grpc import service_pb2_grpc

    def infer_count(tenant: str) -> int:
        with tenant_channel(reading, pki, tenant) as channel:
            stats = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelStatistics(
                kpb.ModelStatisticsRequest(name="embed_text"), timeout=30)
        return stats.model_stats[0].inference_count

    before_a, before_b = infer_count("tenant-a"), infer_count("tenant-b")
    with tenant_channel(reading, pki, "tenant-b") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for _ in range(3):
            stub.ModelInfer(embed_infer_request(["counted for tenant-b"]), timeout=60)
    assert infer_count("tenant-b") == before_b + 3
    assert infer_count("tenant-a") == before_a


def test_each_tenant_is_seen_as_itself(reading, pki):
    with tenant_channel(reading, pki, "tenant-b") as channel:
        stub = reading_pb2_grpc.ReadingServiceStub(channel)
        assert stub.GetInfo(pb.GetInfoRequest()).tenant_id == "tenant-b"


def _call_with(reading, credentials) -> None:
    with grpc.secure_channel(reading.address, credentials) as channel:
        reading_pb2_grpc.ReadingServiceStub(channel).GetInfo(pb.GetInfoRequest(), timeout=10)


def test_connections_without_a_valid_certificate_are_refused(reading, pki, tmp_path, reading_stub):
    import datetime as dt

    no_cert = channel_credentials(pki.ca.cert)
    assert_status(lambda: _call_with(reading, no_cert), grpc.StatusCode.UNAVAILABLE)

    other_ca = tmp_path / "other"
    create_ca(other_ca, name="Some other CA")
    foreign = issue_tenant_cert(other_ca, other_ca, "tenant-a")
    assert_status(lambda: _call_with(reading, channel_credentials(pki.ca.cert, foreign.cert, foreign.key)),
                  grpc.StatusCode.UNAVAILABLE)

    now = dt.datetime.now(dt.timezone.utc)
    expired = issue_tenant_cert(pki.root, tmp_path / "expired", "tenant-a",
                                not_before=now - dt.timedelta(days=30), not_after=now - dt.timedelta(days=1))
    assert_status(lambda: _call_with(reading, channel_credentials(pki.ca.cert, expired.cert, expired.key)),
                  grpc.StatusCode.UNAVAILABLE)
    still_serving(reading_stub)
