"""KServe v2 ``GRPCInferenceService`` facade over the reading pipelines.

perf_analyzer and any Triton client can drive the whole path (authentication,
admission, preprocessing, Triton) through two pipeline models:

- ``embed_text``: ``TEXT`` BYTES [n] -> ``EMBEDDING`` FP32 [n, 384]; request
  parameters ``normalize`` and ``truncate`` (bool) are honoured.
- ``ocr_image``: ``IMAGE`` BYTES [1] (encoded image) -> ``TEXT`` BYTES [lines],
  ``CONFIDENCE`` FP32 [lines], ``BOX`` FP32 [lines, 4, 2].
- ``transcribe_audio``: ``AUDIO`` BYTES [1] (encoded audio file) -> ``TEXT`` BYTES [1],
  ``SEGMENT_TEXT`` BYTES [segments], ``SEGMENT_TIME`` FP32 [segments, 2] (start, end
  in seconds), ``DURATION`` FP32 [1].

Batching is left to the caller (max_batch_size 0): the shape is the request.

Every RPC of this service, ServerLive included, needs a tenant identity (the client
certificate, as for ReadingService): one rule, and a certificate the CA signed for
something else (a server, a probe) learns nothing here. Liveness and readiness probes
use ``grpc.health.v1``, which, with reflection, is the only thing open to any TLS peer.
``ModelStatistics`` reports the calling tenant's own requests only.
"""
from __future__ import annotations

import struct
import time
from collections import defaultdict
from dataclasses import dataclass

import grpc
import numpy as np
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as kpb
from tritonclient.grpc import service_pb2_grpc

from .errors import InvalidInputError, status_for
from .gate import RequestGate
from .pipelines import ReadingPipelines
from .servicer import SERVICE_VERSION


@dataclass(frozen=True)
class _Tensor:
    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class _PipelineModel:
    name: str
    inputs: tuple[_Tensor, ...]
    outputs: tuple[_Tensor, ...]


MODELS = {
    "embed_text": _PipelineModel(
        "embed_text", (_Tensor("TEXT", "BYTES", (-1,)),), (_Tensor("EMBEDDING", "FP32", (-1, 384)),)),
    "ocr_image": _PipelineModel(
        "ocr_image", (_Tensor("IMAGE", "BYTES", (1,)),),
        (_Tensor("TEXT", "BYTES", (-1,)), _Tensor("CONFIDENCE", "FP32", (-1,)),
         _Tensor("BOX", "FP32", (-1, 4, 2)))),
    "transcribe_audio": _PipelineModel(
        "transcribe_audio", (_Tensor("AUDIO", "BYTES", (1,)),),
        (_Tensor("TEXT", "BYTES", (1,)), _Tensor("SEGMENT_TEXT", "BYTES", (-1,)),
         _Tensor("SEGMENT_TIME", "FP32", (-1, 2)), _Tensor("DURATION", "FP32", (1,)))),
}
_CONFIG_TYPES = {"BYTES": mc.TYPE_STRING, "FP32": mc.TYPE_FP32}


def serialize_bytes(items: list[bytes]) -> bytes:
    """KServe's raw BYTES layout: each element as a 4-byte little-endian length + data."""
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def deserialize_bytes(raw: bytes) -> list[bytes]:
    items, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise ValueError("truncated BYTES tensor")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise ValueError("truncated BYTES tensor")
        items.append(raw[offset:offset + length])
        offset += length
    return items


class KServeFacade(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, pipelines: ReadingPipelines, gate: RequestGate, draining) -> None:
        self.pipelines = pipelines
        self.gate = gate
        self._draining = draining
        self._stats: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0, 0])
        """(tenant, model) -> [successes, their ns, failures, their ns], for ModelStatistics."""

    async def _tenant(self, context, declared: str = "") -> str:
        """The caller's tenant, or the call ends UNAUTHENTICATED / PERMISSION_DENIED."""
        try:
            return self.gate.tenant(context, declared)
        except Exception as error:
            await context.abort(*status_for(error))

    async def ServerLive(self, request, context):
        await self._tenant(context)
        return kpb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        await self._tenant(context)
        ready = not self._draining() and await self.pipelines.triton.ready()
        return kpb.ServerReadyResponse(ready=ready)

    async def ModelReady(self, request, context):
        await self._tenant(context)
        ready = request.name in MODELS and not self._draining() and await self.pipelines.triton.ready()
        return kpb.ModelReadyResponse(ready=ready)

    async def ServerMetadata(self, request, context):
        await self._tenant(context)
        return kpb.ServerMetadataResponse(name="percolate-reading", version=SERVICE_VERSION,
                                          extensions=[])

    async def ModelMetadata(self, request, context):
        await self._tenant(context)
        model = await self._model(request.name, request.version, context)
        return kpb.ModelMetadataResponse(
            name=model.name, versions=["1"], platform="percolate_pipeline",
            inputs=[kpb.ModelMetadataResponse.TensorMetadata(name=t.name, datatype=t.datatype,
                                                             shape=t.shape) for t in model.inputs],
            outputs=[kpb.ModelMetadataResponse.TensorMetadata(name=t.name, datatype=t.datatype,
                                                              shape=t.shape) for t in model.outputs])

    async def ModelConfig(self, request, context):
        await self._tenant(context)
        model = await self._model(request.name, request.version, context)
        config = mc.ModelConfig(name=model.name, platform="percolate_pipeline", max_batch_size=0)
        for tensor in model.inputs:
            config.input.add(name=tensor.name, data_type=_CONFIG_TYPES[tensor.datatype], dims=tensor.shape)
        for tensor in model.outputs:
            config.output.add(name=tensor.name, data_type=_CONFIG_TYPES[tensor.datatype], dims=tensor.shape)
        return kpb.ModelConfigResponse(config=config)

    async def ModelInfer(self, request: kpb.ModelInferRequest, context):
        model = await self._model(request.model_name, request.model_version, context)
        declared = request.parameters["tenant_id"].string_param if "tenant_id" in request.parameters else ""

        async def work(tenant: str, deadline: float | None) -> kpb.ModelInferResponse:
            items = _bytes_input(request, model.inputs[0].name)
            response = kpb.ModelInferResponse(model_name=model.name, model_version="1", id=request.id)
            if model.name == "embed_text":
                flags = {k: request.parameters[k].bool_param for k in ("normalize", "truncate")
                         if k in request.parameters}
                texts = [_utf8(item) for item in items]
                result = await self.pipelines.embed(texts, deadline=deadline, **flags)
                _add_output(response, "EMBEDDING", "FP32", result.vectors.shape,
                            result.vectors.astype(np.float32).tobytes())
            elif model.name == "transcribe_audio":
                if len(items) != 1:
                    raise _invalid(f"AUDIO must hold exactly one encoded audio file, got {len(items)}")
                result = await self.pipelines.transcribe(items[0], deadline=deadline)
                segments = result.segments
                _add_output(response, "TEXT", "BYTES", (1,), serialize_bytes([result.text.encode()]))
                _add_output(response, "SEGMENT_TEXT", "BYTES", (len(segments),),
                            serialize_bytes([s.text.encode() for s in segments]))
                _add_output(response, "SEGMENT_TIME", "FP32", (len(segments), 2),
                            np.array([(s.start, s.end) for s in segments], np.float32).reshape(-1, 2).tobytes())
                _add_output(response, "DURATION", "FP32", (1,), np.array([result.duration], np.float32).tobytes())
            else:
                if len(items) != 1:
                    raise _invalid(f"IMAGE must hold exactly one encoded image, got {len(items)}")
                result = await self.pipelines.ocr(items[0], deadline=deadline)
                lines = result.lines
                _add_output(response, "TEXT", "BYTES", (len(lines),),
                            serialize_bytes([line.text.encode() for line in lines]))
                _add_output(response, "CONFIDENCE", "FP32", (len(lines),),
                            np.array([line.confidence for line in lines], np.float32).tobytes())
                _add_output(response, "BOX", "FP32", (len(lines), 4, 2),
                            np.array([line.box for line in lines], np.float32).reshape(-1, 4, 2).tobytes())
            return response
        started = time.perf_counter_ns()
        try:  # the statistics are the caller's own; gate.run refuses an unknown caller
            tenant = self.gate.tenant(context, declared)
        except Exception:
            tenant = ""
        stats = self._stats[tenant, model.name]
        try:
            response = await self.gate.run(f"kserve_{model.name}", context, declared, work,
                                          request.ByteSize())
        except BaseException:
            stats[2] += 1
            stats[3] += time.perf_counter_ns() - started
            raise
        stats[0] += 1
        stats[1] += time.perf_counter_ns() - started
        return response

    async def ModelStatistics(self, request, context):
        """The caller's request counts and times, so perf_analyzer can report server-side figures."""
        tenant = await self._tenant(context)
        names = [request.name] if request.name else list(MODELS)
        for name in names:
            await self._model(name, request.version, context)
        response = kpb.ModelStatisticsResponse()
        for name in names:
            ok, ok_ns, failed, failed_ns = self._stats.get((tenant, name), (0, 0, 0, 0))
            entry = response.model_stats.add(name=name, version="1", inference_count=ok,
                                             execution_count=ok)
            entry.inference_stats.success.count, entry.inference_stats.success.ns = ok, ok_ns
            entry.inference_stats.compute_infer.count = ok
            entry.inference_stats.compute_infer.ns = ok_ns
            entry.inference_stats.fail.count, entry.inference_stats.fail.ns = failed, failed_ns
        return response

    async def _model(self, name: str, version: str, context) -> _PipelineModel:
        if name not in MODELS or version not in ("", "1"):
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"no pipeline model {name!r} version {version or 'latest'!r}; "
                                f"available: {', '.join(MODELS)}")
        return MODELS[name]


def _invalid(message: str) -> InvalidInputError:
    return InvalidInputError(message)


def _utf8(item: bytes) -> str:
    try:
        return item.decode("utf-8")
    except UnicodeDecodeError:
        raise _invalid("TEXT elements must be UTF-8") from None


def _bytes_input(request: kpb.ModelInferRequest, name: str) -> list[bytes]:
    for index, tensor in enumerate(request.inputs):
        if tensor.name != name:
            continue
        if tensor.datatype != "BYTES":
            raise _invalid(f"input {name} must be BYTES, got {tensor.datatype}")
        if index < len(request.raw_input_contents):
            try:
                items = deserialize_bytes(request.raw_input_contents[index])
            except ValueError as err:
                raise _invalid(f"input {name}: {err}") from None
        else:
            items = list(tensor.contents.bytes_contents)
        expected = int(np.prod(tensor.shape)) if tensor.shape else 0
        if len(items) != expected:
            raise _invalid(f"input {name} has shape {list(tensor.shape)} but {len(items)} elements")
        return items
    raise _invalid(f"input {name} is missing")


def _add_output(response: kpb.ModelInferResponse, name: str, datatype: str, shape, raw: bytes) -> None:
    response.outputs.add(name=name, datatype=datatype, shape=list(shape))
    response.raw_output_contents.append(raw)
