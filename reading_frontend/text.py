"""Text preprocessing for the embedding model: the model's own tokenizer, bucketed padding.

Triton's dynamic batcher only merges requests whose tensors have the same shape, so
every batch is padded to one of a few fixed lengths instead of its own longest text.
The model's pooling is masked, so padding does not change the embedding.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from tokenizers import Tokenizer

LENGTH_BUCKETS = (16, 32, 64, 128, 256)
MAX_TOKENS = 256
"""all-MiniLM-L6-v2's max_seq_length (sentence_bert_config.json)."""


class TextTooLongError(ValueError):
    """A text exceeds the model's token limit and truncation was not asked for."""

    def __init__(self, index: int, tokens: int, limit: int) -> None:
        self.index, self.tokens, self.limit = index, tokens, limit
        super().__init__(
            f"text {index} has {tokens} tokens, above the model's limit of {limit}; "
            "shorten it or ask for truncation")


@dataclass(frozen=True)
class TokenizedBatch:
    input_ids: np.ndarray
    """int64 [n, bucket length]."""
    attention_mask: np.ndarray
    token_counts: tuple[int, ...]
    """Tokens per text before truncation, special tokens included."""
    truncated: tuple[bool, ...]


def bucket_length(longest: int, buckets: tuple[int, ...] = LENGTH_BUCKETS) -> int:
    for size in buckets:
        if longest <= size:
            return size
    return buckets[-1]


class TextTokenizer:
    def __init__(self, tokenizer_json: Path, max_tokens: int = MAX_TOKENS,
                 buckets: tuple[int, ...] = LENGTH_BUCKETS) -> None:
        self.max_tokens = max_tokens
        self.buckets = tuple(b for b in buckets if b < max_tokens) + (max_tokens,)
        self._tokenizer = Tokenizer.from_file(str(tokenizer_json))
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` without special tokens (for sizing chunks)."""
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def encode(self, texts: list[str], truncate: bool = False) -> TokenizedBatch:
        encodings = self._tokenizer.encode_batch(texts)
        counts = tuple(len(e.ids) for e in encodings)
        if not truncate:
            for index, count in enumerate(counts):
                if count > self.max_tokens:
                    raise TextTooLongError(index, count, self.max_tokens)
        width = bucket_length(min(max(counts, default=1), self.max_tokens), self.buckets)
        ids = np.zeros((len(texts), width), dtype=np.int64)
        mask = np.zeros((len(texts), width), dtype=np.int64)
        for row, encoding in enumerate(encodings):
            tokens = encoding.ids
            if len(tokens) > self.max_tokens:  # keep [CLS] ... and the final [SEP]
                tokens = tokens[: self.max_tokens - 1] + tokens[-1:]
            ids[row, : len(tokens)] = tokens
            mask[row, : len(tokens)] = 1
        return TokenizedBatch(ids, mask, counts, tuple(c > self.max_tokens for c in counts))


EmbedFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""(input_ids, attention_mask) -> sentence embeddings [n, dims]."""


def embed_texts(texts: list[str], tokenizer: TextTokenizer, run: EmbedFn,
                batch_size: int = 32, truncate: bool = False) -> np.ndarray:
    """Embed ``texts`` in batches, sorted by length so each batch pads little."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    result: list[np.ndarray | None] = [None] * len(texts)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        batch = tokenizer.encode([texts[i] for i in chunk], truncate=truncate)
        vectors = run(batch.input_ids, batch.attention_mask)
        for row, index in enumerate(chunk):
            result[index] = vectors[row]
    return np.stack(result) if texts else np.zeros((0, 0), np.float32)


def onnx_embed_fn(onnx_path: Path, threads: int = 0) -> EmbedFn:
    """An ``EmbedFn`` running the ONNX file in this process (reference and build checks)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])

    def run(input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        return session.run(["sentence_embedding"],
                           {"input_ids": input_ids, "attention_mask": attention_mask})[0]

    return run
