"""``percolate.reading.v1.ReadingService``: thin handlers over ``ReadingPipelines``.

Each handler converts protobuf to plain arguments, runs the pipeline through the
gate (identity, admission, deadline, metrics, errors) and converts the result back.
"""
from __future__ import annotations

import numpy as np

from percolate.reading.v1 import reading_pb2 as pb
from percolate.reading.v1 import reading_pb2_grpc

from . import wire
from .config import FrontendConfig
from .gate import RequestGate
from .parsing import Block, Chunk, Page
from .pipelines import EMBEDDING_MODEL, FORMATS, ReadingPipelines

SERVICE_VERSION = "0.1.0"
EMBEDDINGS_FIELD = pb.EmbedResponse.EMBEDDINGS_FIELD_NUMBER
VALUES_FIELD = pb.Embedding.VALUES_FIELD_NUMBER
CHUNK_EMBEDDING_FIELD = pb.Chunk.EMBEDDING_FIELD_NUMBER
_OCR_MODES = {pb.OCR_MODE_AUTO: "auto", pb.OCR_MODE_ALWAYS: "always", pb.OCR_MODE_NEVER: "never"}
_BLOCK_TYPES = {"heading": pb.BLOCK_TYPE_HEADING, "paragraph": pb.BLOCK_TYPE_PARAGRAPH,
                "list_item": pb.BLOCK_TYPE_LIST_ITEM, "table": pb.BLOCK_TYPE_TABLE,
                "ocr_text": pb.BLOCK_TYPE_OCR_TEXT}


class ReadingServicer(reading_pb2_grpc.ReadingServiceServicer):
    def __init__(self, pipelines: ReadingPipelines, gate: RequestGate, config: FrontendConfig) -> None:
        self.pipelines = pipelines
        self.gate = gate
        self.config = config

    async def Embed(self, request: pb.EmbedRequest, context) -> pb.EmbedResponse:
        async def work(tenant: str, deadline: float | None) -> pb.EmbedResponse:
            result = await self.pipelines.embed(list(request.texts), model=request.model,
                                                normalize=request.normalize,
                                                truncate=request.truncate, deadline=deadline)
            response = pb.EmbedResponse(model=result.model, dimensions=result.vectors.shape[1])
            response.MergeFromString(b"".join(
                wire.length_delimited(EMBEDDINGS_FIELD, wire.packed_floats(VALUES_FIELD, vector)
                                      + pb.Embedding(token_count=c, truncated=t).SerializeToString())
                for vector, c, t in zip(result.vectors, result.token_counts, result.truncated)))
            return response
        return await self.gate.run("embed", context, request.tenant_id, work,
                                   request.ByteSize())

    async def Ocr(self, request: pb.OcrRequest, context) -> pb.OcrResponse:
        async def work(tenant: str, deadline: float | None) -> pb.OcrResponse:
            result = await self.pipelines.ocr(request.image, deadline=deadline)
            return pb.OcrResponse(lines=[_ocr_line(line) for line in result.lines],
                                  width=result.width, height=result.height)
        return await self.gate.run("ocr", context, request.tenant_id, work,
                                   request.ByteSize())

    async def Parse(self, request: pb.ParseRequest, context) -> pb.ParseResponse:
        options = request.options

        async def work(tenant: str, deadline: float | None) -> pb.ParseResponse:
            result = await self.pipelines.parse(
                request.content, filename=request.filename, mime_type=request.mime_type,
                ocr_mode=_OCR_MODES.get(options.ocr, "unknown"), chunk_tokens=options.chunk_tokens,
                overlap_tokens=options.chunk_overlap_tokens, embed=options.embed,
                normalize=options.normalize, deadline=deadline)
            document = result.document
            response = pb.ParseResponse(
                format=document.format, mime_type=document.mime_type, metadata=document.metadata,
                pages=[_page(p) for p in document.pages], warnings=list(document.warnings),
                chunks=[_chunk(c, None if result.embeddings is None else result.embeddings[i])
                        for i, c in enumerate(result.chunks)])
            if result.embeddings is not None:
                response.embedding_model = EMBEDDING_MODEL
                response.embedding_dimensions = result.embeddings.shape[1]
            return response
        return await self.gate.run("parse", context, request.tenant_id, work,
                                   request.ByteSize())

    async def Transcribe(self, request: pb.TranscribeRequest, context) -> pb.TranscribeResponse:
        async def work(tenant: str, deadline: float | None) -> pb.TranscribeResponse:
            result = await self.pipelines.transcribe(request.audio, language=request.options.language,
                                                     deadline=deadline)
            return pb.TranscribeResponse(
                text=result.text, language=result.language, duration=result.duration,
                windows=result.windows, model=result.model, format=result.format,
                source_sample_rate=result.source_rate, source_channels=result.source_channels,
                segments=[pb.Segment(start=s.start, end=s.end, text=s.text, window=s.window)
                          for s in result.segments])
        return await self.gate.run("transcribe", context, request.tenant_id, work,
                                   request.ByteSize())

    async def GetInfo(self, request: pb.GetInfoRequest, context) -> pb.GetInfoResponse:
        async def work(tenant: str, deadline: float | None) -> pb.GetInfoResponse:
            config = self.config
            return pb.GetInfoResponse(
                service_version=SERVICE_VERSION, tenant_id=tenant, formats=list(FORMATS),
                models=[pb.ModelInfo(**m) for m in await self.pipelines.models()],
                limits=pb.Limits(
                    max_message_bytes=config.max_message_bytes,
                    max_texts_per_embed=config.max_texts_per_embed,
                    max_tokens_per_text=self.pipelines.tokenizer.max_tokens,
                    max_image_pixels=config.max_image_pixels, max_pages=config.max_pages,
                    max_queue_depth=config.max_queue_depth, max_in_flight=config.max_in_flight,
                    max_audio_seconds=config.max_audio_seconds))
        return await self.gate.run("info", context, "", work)


def _ocr_line(line) -> pb.OcrLine:
    return pb.OcrLine(text=line.text, confidence=line.confidence,
                      box=[pb.Point(x=x, y=y) for x, y in line.box])


def _block(block: Block) -> pb.Block:
    message = pb.Block(type=_BLOCK_TYPES.get(block.type, pb.BLOCK_TYPE_UNSPECIFIED),
                       text=block.text, level=block.level)
    if block.table is not None:
        message.table.name = block.table.name
        message.table.rows.extend(pb.TableRow(cells=list(row)) for row in block.table.rows)
    return message


def _page(page: Page) -> pb.Page:
    return pb.Page(number=page.number, text=page.text, ocr_used=page.ocr_used,
                   blocks=[_block(b) for b in page.blocks])


def _chunk(chunk: Chunk, embedding: np.ndarray | None) -> pb.Chunk:
    message = pb.Chunk(ordinal=chunk.ordinal, text=chunk.text, page_start=chunk.page_start,
                       page_end=chunk.page_end, heading_path=list(chunk.heading_path),
                       token_count=chunk.token_count)
    if embedding is not None:
        message.MergeFromString(wire.packed_floats(CHUNK_EMBEDDING_FIELD, embedding))
    return message
