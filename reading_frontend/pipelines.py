"""The reading service's data plane: Embed, Ocr and Parse as plain async functions.

Both the ReadingService servicer and the KServe v2 facade call these, so every path
shares the same preprocessing. CPU-bound work (decoding, parsing, OCR geometry) runs
in a thread pool; model calls go to Triton through the one async channel, each under
the caller's deadline. Nothing a request carries is stored or logged.
"""
from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from percolate_models.catalog import EMBEDDING_DIM, MODELS, model_by_name
from percolate_models.paths import ProjectPaths

from . import ocr as ocr_lib
from .config import FrontendConfig
from .errors import BackendUnavailableError, InvalidInputError, NotFoundError, TooLargeError
from .parsing import Chunk, ParsedDocument, ParseLimits, chunk_document, parse_document
from .text import TextTokenizer
from .triton_client import AsyncTriton

EMBEDDING_MODEL = "text_embedding"
EMBED_BATCH = 32
"""Texts per Triton request; concurrent requests are merged by Triton's batcher."""
FORMATS = ("pdf", "docx", "xlsx", "html", "markdown", "text", "png", "jpeg", "tiff", "bmp", "webp")
OCR_MODES = ("auto", "always", "never")


@dataclass(frozen=True)
class EmbedResult:
    model: str
    vectors: np.ndarray
    """float32 [texts, dimensions]."""
    token_counts: tuple[int, ...]
    truncated: tuple[bool, ...]


@dataclass(frozen=True)
class OcrResult:
    lines: list[ocr_lib.OcrLine]
    width: int
    height: int


@dataclass(frozen=True)
class ParseResult:
    document: ParsedDocument
    chunks: list[Chunk]
    embeddings: np.ndarray | None


class ReadingPipelines:
    def __init__(self, config: FrontendConfig, triton: AsyncTriton, paths: ProjectPaths) -> None:
        self.config = config
        self.triton = triton
        self.tokenizer = TextTokenizer(paths.assets / "text_embedding" / "tokenizer.json")
        self.characters = ocr_lib.load_character_list(paths.assets / "ocr" / "ppocr_keys.txt")
        self.ocr_params = ocr_lib.OcrParams(max_image_pixels=config.max_image_pixels)
        self.parse_limits = ParseLimits(max_pages=config.max_pages,
                                        max_image_pixels=config.max_image_pixels)
        self.executor = ThreadPoolExecutor(config.worker_threads, thread_name_prefix="reading")

    def _timeout(self, deadline: float | None) -> float:
        """Seconds left for a model call: the caller's deadline, capped by config."""
        if deadline is None:
            return self.config.triton_timeout_s
        return min(deadline - time.monotonic(), self.config.triton_timeout_s)

    async def embed(self, texts: list[str], *, model: str = "", normalize: bool = False,
                    truncate: bool = False, deadline: float | None = None) -> EmbedResult:
        if model not in ("", EMBEDDING_MODEL):
            raise NotFoundError(f"no embedding model {model!r}; available: {EMBEDDING_MODEL}")
        if not texts:
            raise InvalidInputError("texts is empty: send at least one text")
        if len(texts) > self.config.max_texts_per_embed:
            raise TooLargeError(f"{len(texts)} texts in one request; the limit is "
                                f"{self.config.max_texts_per_embed}: split the request")
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        batches = [order[i:i + EMBED_BATCH] for i in range(0, len(order), EMBED_BATCH)]
        encoded = [self.tokenizer.encode([texts[i] for i in batch], truncate=truncate)
                   for batch in batches]
        outputs = await asyncio.gather(*(
            self.triton.infer(EMBEDDING_MODEL, {"input_ids": e.input_ids,
                                                "attention_mask": e.attention_mask},
                              ["sentence_embedding"], self._timeout(deadline))
            for e in encoded))
        vectors = np.zeros((len(texts), EMBEDDING_DIM), np.float32)
        counts, cut = [0] * len(texts), [False] * len(texts)
        for batch, enc, out in zip(batches, encoded, outputs):
            vectors[batch] = out["sentence_embedding"]
            for row, index in enumerate(batch):
                counts[index], cut[index] = enc.token_counts[row], enc.truncated[row]
        if normalize:
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            vectors = vectors / np.maximum(norms, 1e-12)
        return EmbedResult(EMBEDDING_MODEL, vectors, tuple(counts), tuple(cut))

    def _sync_ocr_models(self, loop: asyncio.AbstractEventLoop, deadline: float | None):
        """An ``InferFn`` for worker threads: runs each model call on the event loop."""
        def infer(model: str, batch: np.ndarray) -> np.ndarray:
            spec = model_by_name(model)
            call = self.triton.infer(model, {spec.inputs[0].name: batch.astype(np.float32, copy=False)},
                                     [spec.outputs[0].name], self._timeout(deadline))
            return asyncio.run_coroutine_threadsafe(call, loop).result()[spec.outputs[0].name]
        return infer

    def _ocr_sync(self, image: bytes, infer) -> OcrResult:
        try:
            array = ocr_lib.decode_image(image, max_pixels=self.config.max_image_pixels)
            lines = ocr_lib.ocr_image(array, infer, self.characters, self.ocr_params)
        except ocr_lib.ImageTooLargeError as err:
            raise TooLargeError(str(err)) from None
        except ocr_lib.UnreadableImageError as err:
            raise InvalidInputError(str(err)) from None
        return OcrResult(lines, int(array.shape[1]), int(array.shape[0]))

    async def ocr(self, image: bytes, *, deadline: float | None = None) -> OcrResult:
        if not image:
            raise InvalidInputError("image is empty: send the bytes of a PNG, JPEG, TIFF, BMP or WebP")
        loop = asyncio.get_running_loop()
        infer = self._sync_ocr_models(loop, deadline)
        return await loop.run_in_executor(self.executor, self._ocr_sync, image, infer)

    async def parse(self, content: bytes, *, filename: str = "", mime_type: str = "",
                    ocr_mode: str = "auto", chunk_tokens: int = 0, overlap_tokens: int = 0,
                    embed: bool = False, normalize: bool = False,
                    deadline: float | None = None) -> ParseResult:
        if ocr_mode not in OCR_MODES:
            raise InvalidInputError(f"unknown OCR mode {ocr_mode!r}; use one of {', '.join(OCR_MODES)}")
        chunk_tokens = chunk_tokens or self.config.default_chunk_tokens
        if not 16 <= chunk_tokens <= self.tokenizer.max_tokens:
            raise InvalidInputError(f"chunk_tokens must be between 16 and {self.tokenizer.max_tokens}")
        if not 0 <= overlap_tokens < chunk_tokens // 2:
            raise InvalidInputError("chunk_overlap_tokens must be at least 0 and under half of chunk_tokens")
        loop = asyncio.get_running_loop()
        infer = self._sync_ocr_models(loop, deadline)

        def ocr_page(png: bytes) -> list[ocr_lib.OcrLine]:
            return self._ocr_sync(png, infer).lines

        def work() -> tuple[ParsedDocument, list[Chunk]]:
            document = parse_document(content, filename=filename, mime_type=mime_type, ocr=ocr_page,
                                      ocr_mode=ocr_mode, limits=self.parse_limits)
            return document, chunk_document(document, self.tokenizer.count_tokens,
                                             chunk_tokens, overlap_tokens)

        document, chunks = await loop.run_in_executor(self.executor, work)
        embeddings = None
        if embed and chunks:
            embedded = await self.embed([c.text for c in chunks], normalize=normalize,
                                        truncate=True, deadline=deadline)
            embeddings = embedded.vectors
        return ParseResult(document, chunks, embeddings)

    async def models(self) -> list[dict]:
        """Every served model with its state, as Triton reports it."""
        index = {m["name"]: m for m in await self.triton.model_index()}
        return [{"name": spec.name, "description": spec.description,
                 "versions": [index[spec.name]["version"]] if spec.name in index else [],
                 "state": index.get(spec.name, {}).get("state", "MISSING")} for spec in MODELS]

    async def ensure_ready(self) -> None:
        if not await self.triton.ready():
            raise BackendUnavailableError("the inference server is not ready; retry shortly")

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)

