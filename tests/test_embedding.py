"""text_embedding through Triton agrees with sentence-transformers, the reference."""
from __future__ import annotations

import numpy as np
import pytest

from percolate_models.accuracy import cosine_rows, sample_sentences
from percolate_models.catalog import MINILM
from percolate_models.sources import locate
from reading_frontend.text import TextTokenizer, TextTooLongError, embed_texts, onnx_embed_fn

# Documented agreement floors with sentence-transformers (README, "Model variants").
FP32_MIN_COSINE = 0.999
INT8_MEAN_COSINE = 0.98
INT8_MIN_COSINE = 0.95


@pytest.fixture(scope="module")
def sentences() -> list[str]:
    return sample_sentences(64, seed=2026)


@pytest.fixture(scope="module")
def reference(sentences) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(locate(MINILM)), device="cpu")
    return model.encode(sentences, batch_size=32, normalize_embeddings=False)


@pytest.fixture(scope="module")
def tokenizer(paths) -> TextTokenizer:
    return TextTokenizer(paths.assets / "text_embedding" / "tokenizer.json")


def test_served_variant_agrees_with_sentence_transformers(triton_models, tokenizer, sentences, reference, paths):
    """What Triton serves is the variant the build chose (by measurement on this machine,
    percolate_models/tune.py) and keeps that variant's floor: fp32's for the fp32 graphs,
    the tuning floor (cosine mean >= 0.99, min >= 0.97) for int8."""
    import json

    from percolate_models import tune

    installed = json.loads(paths.manifest.read_text())["models"]["text_embedding"]
    choice = installed["choice"]
    assert choice["variant"] == installed["variant"] and choice["reason"]
    served = embed_texts(sentences, tokenizer, triton_models.embed, batch_size=16)
    cosine = cosine_rows(served, reference)
    if installed["variant"] in ("fp32", "optimized"):
        assert cosine.min() >= FP32_MIN_COSINE, cosine.min()
    else:
        floor = tune.FLOORS["text_embedding"]
        assert cosine.mean() >= floor["cosine_mean"] and cosine.min() >= floor["cosine_min"], cosine


@pytest.mark.parametrize("variant,mean_floor,min_floor", [
    ("optimized", FP32_MIN_COSINE, FP32_MIN_COSINE),
    ("int8", INT8_MEAN_COSINE, INT8_MIN_COSINE),
])
def test_variant_agreement(paths, tokenizer, sentences, reference, variant, mean_floor, min_floor):
    import json

    manifest = json.loads(paths.manifest.read_text())["models"]["text_embedding"]
    entry = paths.cache / "models" / "text_embedding" / manifest["cache_key"]
    vectors = embed_texts(sentences, tokenizer, onnx_embed_fn(entry / f"{variant}.onnx"))
    cosine = cosine_rows(vectors, reference)
    assert cosine.mean() >= mean_floor and cosine.min() >= min_floor, (cosine.mean(), cosine.min())
    recorded = manifest["accuracy_vs_fp32"][variant]
    assert recorded["cosine_mean"] >= mean_floor and recorded["cosine_min"] >= min_floor


def test_long_text_is_refused_unless_truncation_is_asked(tokenizer):
    long_text = "word " * 400
    with pytest.raises(TextTooLongError, match="limit of 256"):
        tokenizer.encode(["short", long_text])
    batch = tokenizer.encode(["short", long_text], truncate=True)
    assert batch.truncated == (False, True)
    assert batch.input_ids.shape == (2, 256)
    assert batch.input_ids[1, -1] == 102  # [SEP] kept at the end
    assert batch.token_counts[1] > 256


def test_padding_uses_length_buckets(tokenizer):
    assert tokenizer.encode(["hi"]).input_ids.shape[1] == 16
    assert tokenizer.encode(["word " * 20]).input_ids.shape[1] == 32
