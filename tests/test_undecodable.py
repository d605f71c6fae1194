"""Request bytes that are not a valid protobuf message get INVALID_ARGUMENT naming the
message type (not UNKNOWN with a traceback in the log), on both servers, for unary and
streaming methods, and the server keeps serving."""
from __future__ import annotations

import grpc
import pytest

from percolate.node.v1 import node_pb2
from percolate.reading.v1 import reading_pb2 as pb
from percolate_common.background import BackgroundServer
from percolate_node.server import NodeServer
from tests.conftest import tenant_channel

GARBAGE = b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff not a protobuf message"


def send_garbage(channel, method: str, metadata=()) -> grpc.RpcError:
    call = channel.unary_unary(method)  # no serializers: the bytes go out as they are
    with pytest.raises(grpc.RpcError) as caught:
        call(GARBAGE, timeout=30, metadata=metadata)
    return caught.value


@pytest.mark.parametrize("method,message", [
    ("/percolate.reading.v1.ReadingService/Embed", "percolate.reading.v1.EmbedRequest"),
    ("/percolate.reading.v1.ReadingService/Parse", "percolate.reading.v1.ParseRequest"),
    ("/inference.GRPCInferenceService/ModelInfer", "inference.ModelInferRequest"),
    ("/grpc.health.v1.Health/Check", "grpc.health.v1.HealthCheckRequest"),
])
def test_reading_service_answers_undecodable_bytes_with_invalid_argument(reading, pki, reading_stub,
                                                                         caplog, method, message):
    with caplog.at_level("WARNING"), tenant_channel(reading, pki) as channel:
        error = send_garbage(channel, method)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    assert f"not a valid {message} message" in error.details()
    assert "Traceback" not in caplog.text and "Unexpected" not in caplog.text
    assert reading_stub.Embed(pb.EmbedRequest(texts=["still serving"]), timeout=60).dimensions == 384


def test_reading_service_streaming_method_refuses_undecodable_bytes(reading, pki):
    with tenant_channel(reading, pki) as channel:
        stream = channel.stream_stream("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")
        with pytest.raises(grpc.RpcError) as caught:
            list(stream(iter([GARBAGE]), timeout=30))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value


def test_node_answers_undecodable_bytes_with_invalid_argument(reading, pki, tmp_path, caplog):
    from tests.test_node import Caller, node_config

    config = node_config(tmp_path, reading, pki, metrics_port=-1)
    token = config.token_file.read_text()
    with caplog.at_level("WARNING"), BackgroundServer(NodeServer(config)) as node, \
            grpc.insecure_channel(node.address) as channel:
        error = send_garbage(channel, "/percolate.node.v1.NodeService/Search",
                             metadata=(("authorization", f"Bearer {token}"),))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
        assert "not a valid percolate.node.v1.SearchRequest message" in error.details()
        assert Caller(channel, token).Stats(node_pb2.StatsRequest()).tenant_id == "tenant-a"
    assert "Traceback" not in caplog.text and "Unexpected" not in caplog.text
