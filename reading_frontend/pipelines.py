"""The reading service's data plane: Embed, Ocr, Parse and Transcribe as plain async functions.

Both the ReadingService servicer and the KServe v2 facade call these, so every path
shares the same preprocessing. Parsing and chunking run in worker processes
(``parse_pool.py``: stopped at the deadline, on cancel or past the CPU budget); the rest
of the CPU-bound work (image and audio decoding, OCR geometry), bounded by the size
limits, runs in a thread pool; model calls go to Triton through the one async channel,
each under the caller's deadline. Nothing a request carries is stored or logged.
"""
from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from percolate_models.catalog import EMBEDDING_DIM, MODELS
from percolate_models.paths import ProjectPaths

from . import ocr as ocr_lib
from . import speech
from .admission import current_tenant, parked
from .config import FrontendConfig
from .errors import InvalidInputError, NotFoundError, TooLargeError
from .parse_pool import ParseJob, ParsePool
from .parsing import Block, Chunk, Page, ParsedDocument, ParseLimits, chunk_document
from .text import TextTokenizer
from .triton_client import AsyncTriton
from .triton_models import image_model_output_bytes, image_model_request, image_model_result

EMBEDDING_MODEL = "text_embedding"
EMBED_BATCH = 32
"""Texts per Triton request; concurrent requests are merged by Triton's batcher."""
SPEECH_MODEL = "whisper"
FORMATS = ("pdf", "docx", "xlsx", "html", "markdown", "text", "png", "jpeg", "tiff", "bmp", "webp",
           *speech.AUDIO_FORMATS)
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
class TranscribeResult:
    text: str
    segments: list[speech.Segment]
    language: str
    duration: float
    windows: int
    source_rate: int
    source_channels: int
    format: str
    model: str = SPEECH_MODEL


@dataclass(frozen=True)
class _PreparedAudio:
    audio: speech.DecodedAudio
    features: np.ndarray
    planner: speech.WindowPlanner


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
        self.whisper_tokenizer = speech.WhisperTokenizer(paths.assets / "whisper" / "tokenizer.json")
        self.ocr_params = ocr_lib.OcrParams(max_image_pixels=config.max_image_pixels)
        self.parse_limits = ParseLimits(max_pages=config.max_pages,
                                        max_image_pixels=config.max_image_pixels,
                                        ocr_pages_in_flight=config.ocr_pages_in_flight)
        self.executor = ThreadPoolExecutor(config.worker_threads, thread_name_prefix="reading")
        self.parse_pool = ParsePool(
            config.parse_workers, paths.assets / "text_embedding" / "tokenizer.json",
            self.parse_limits, config.parse_cpu_budget_s, config.parse_worker_nice,
            config.max_queue_depth, config.max_queue_per_tenant)

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
        def infer(model: str, batch: np.ndarray) -> np.ndarray | tuple[np.ndarray, ...]:
            inputs, names = image_model_request(model, batch)
            call = self.triton.infer(model, inputs, names, self._timeout(deadline),
                                     image_model_output_bytes(model, batch))
            return image_model_result(asyncio.run_coroutine_threadsafe(call, loop).result(), names)
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

    def _prepare_audio(self, audio: bytes) -> _PreparedAudio:
        decoded = speech.decode_audio(audio, self.config.max_audio_seconds)
        features = speech.log_mel(decoded.samples)
        return _PreparedAudio(decoded, features, speech.WindowPlanner(features, decoded.samples))

    async def transcribe(self, audio: bytes, *, language: str = "",
                         deadline: float | None = None) -> TranscribeResult:
        """Decode, resample and log-mel in the frontend, then Triton calls for the
        non-silent windows of at most 30 s (``speech.WindowPlanner``). Each window starts
        where the previous transcript ended, as in Whisper; windows cut inside a pause go
        in one call (``speech.transcribe_windows``), and Triton batches the windows of
        concurrent requests."""
        if language.lower() not in ("", "en", "english"):
            raise InvalidInputError(f"language {language!r} is not served: the model (Whisper "
                                    "tiny.en) transcribes English only; send \"en\" or nothing")
        if not audio:
            raise InvalidInputError("audio is empty: send the bytes of a WAV, FLAC, OGG, MP3 or M4A file")
        loop = asyncio.get_running_loop()
        try:
            prepared = await loop.run_in_executor(self.executor, self._prepare_audio, audio)
        except speech.AudioTooLongError as err:
            raise TooLargeError(str(err)) from None
        except speech.UnreadableAudioError as err:
            raise InvalidInputError(str(err)) from None
        decoded = prepared.audio

        async def decode(windows: list[speech.Window]) -> list[list[speech.Segment]]:
            found: list[list[speech.Segment]] = [[] for _ in windows]
            sent = [i for i, window in enumerate(windows) if not window.silent]
            if not sent:
                return found
            features = np.stack([speech.window_features(prepared.features, windows[i]) for i in sent])
            out = await self.triton.infer(SPEECH_MODEL, {"input_features": features},
                                          ["tokens", "no_speech_prob", "avg_logprob"],
                                          self._timeout(deadline))
            for row, i in enumerate(sent):
                if not speech.is_no_speech(float(out["no_speech_prob"][row, 0]),
                                           float(out["avg_logprob"][row, 0])):
                    tokens = [int(t) for t in out["tokens"][row] if t >= 0]
                    found[i] = speech.segments_from_tokens(tokens, windows[i], decoded.duration,
                                                           self.whisper_tokenizer)
            return found

        segments, windows = await speech.transcribe_windows(prepared.planner, decode)
        return TranscribeResult(
            text=" ".join(s.text for s in segments), segments=segments, language="en",
            duration=decoded.duration, windows=windows, source_rate=decoded.source_rate,
            source_channels=decoded.source_channels, format=decoded.container)

    async def _parse_audio(self, content: bytes, fmt: str, deadline: float | None) -> ParsedDocument:
        result = await self.transcribe(content, deadline=deadline)
        blocks = tuple(Block("paragraph", s.text) for s in result.segments)
        metadata = {"duration_seconds": f"{result.duration:.2f}", "language": result.language,
                    "transcription_model": result.model, "windows": str(result.windows),
                    "segments": "; ".join(f"{s.start:.2f}-{s.end:.2f}" for s in result.segments)}
        warnings = () if blocks else ("no speech was found in the audio",)
        return ParsedDocument(fmt, speech.MIME_TYPES.get(fmt, "audio/" + fmt), metadata,
                              (Page(1, blocks),), warnings)

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

        audio_format = speech.sniff_audio(content)
        if audio_format:  # audio goes through the same path as Transcribe
            document = await self._parse_audio(content, audio_format, deadline)
            chunks = await loop.run_in_executor(self.executor, lambda: chunk_document(
                document, self.tokenizer.count_tokens, chunk_tokens, overlap_tokens))
        else:  # in a worker process; the admission slot goes to others meanwhile
            job = ParseJob(content, filename, mime_type, ocr_mode, chunk_tokens, overlap_tokens)
            async with parked():
                document, chunks = await self.parse_pool.run(current_tenant(), job, deadline,
                                                             ocr_page)
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

    def close(self) -> None:
        self.parse_pool.close()
        self.executor.shutdown(wait=False, cancel_futures=True)

