"""The int8 embedding variant with one activation scale per token (percolate_models/quantize.py):
a text's embedding must not depend on the other texts Triton batches with it (other tenants'
texts, other lengths, so other padding), and it keeps the tuning floor against
sentence-transformers.

Bound: alone vs inside a batch, cosine >= 0.9999 (``BATCH_INDEPENDENCE_MIN_COSINE``) and
max abs difference <= 1e-4. fp32 and int8_token measure about 1e-7 here (float summation
order only); onnxruntime's dynamic int8, which scales activations over the whole batch,
measures cosine 0.989 / 2.5e-2, so the bound separates the two by orders of magnitude.
"""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from percolate_models import tune
from percolate_models.accuracy import (BATCH_INDEPENDENCE_MIN_COSINE, batch_independence,
                                       cosine_rows, sample_sentences)
from percolate_models.catalog import MINILM, TEXT_EMBEDDING
from percolate_models.quantize import quantize_per_token
from percolate_models.sources import locate
from reading_frontend.text import TextTokenizer, embed_texts, onnx_embed_fn

MAX_ABS_DIFF = 1e-4


@pytest.fixture(scope="module")
def tokenizer(paths) -> TextTokenizer:
    return TextTokenizer(paths.assets / "text_embedding" / "tokenizer.json")


@pytest.fixture(scope="module")
def entry(paths):
    return paths.build_entry("text_embedding")


def _two_matmuls(path, w1_row_scale: np.ndarray | None = None) -> None:
    """x [B, S, 8] -> MatMul W1 [8, 16] -> Relu -> MatMul W2 [16, 4]: two weight MatMuls."""
    rng = np.random.default_rng(0)
    w1 = rng.normal(size=(8, 16)).astype(np.float32) * (1 if w1_row_scale is None else w1_row_scale[:, None])
    w1 = numpy_helper.from_array(w1, "w1")
    w2 = numpy_helper.from_array(rng.normal(size=(16, 4)).astype(np.float32), "w2")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("MatMul", ["r", "w2"], ["y"])], "two",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "s", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "s", 4])], [w1, w2])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))


def _run(path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_each_row_is_quantised_from_its_own_values(tmp_path):
    """A row computed next to a row a thousand times larger equals the row computed alone
    (dynamic int8 would quantise the small row with the large row's scale)."""
    _two_matmuls(tmp_path / "fp32.onnx")
    assert quantize_per_token(tmp_path / "fp32.onnx", tmp_path / "q.onnx") == 2
    ops = {n.op_type for n in onnx.load(str(tmp_path / "q.onnx")).graph.node}
    assert "MatMulIntegerToFloat" in ops and "MatMul" not in ops
    rng = np.random.default_rng(1)
    small = rng.normal(size=(1, 3, 8)).astype(np.float32)
    loud = 1000 * rng.normal(size=(1, 3, 8)).astype(np.float32)
    alone = _run(tmp_path / "q.onnx", small)
    together = _run(tmp_path / "q.onnx", np.concatenate([loud, small]))[1:]
    np.testing.assert_array_equal(alone, together)
    exact = _run(tmp_path / "fp32.onnx", small)
    assert cosine_rows(alone.reshape(-1, 4), exact.reshape(-1, 4)).min() > 0.999


def _with_outlier_channel(path) -> np.ndarray:
    """``_two_matmuls`` and inputs whose channel 3 is 200 times larger than the others, in
    every token (as this model's [CLS]/[SEP] activations), and whose weights for it are as
    many times smaller, so every channel counts alike in the product; returns the inputs."""
    scale = np.ones(8, np.float32)
    scale[3] = 200
    _two_matmuls(path, 1 / scale)
    return np.random.default_rng(2).normal(size=(4, 6, 8)).astype(np.float32) * scale


def test_smoothing_moves_an_outlier_channel_into_the_weights(tmp_path):
    """With one scale per token an outlier channel leaves the other channels a few int8 levels;
    smoothing (x / s, s * W) is exact in float and quantises the rest far more finely."""
    x = _with_outlier_channel(tmp_path / "fp32.onnx")
    exact = _run(tmp_path / "fp32.onnx", x).reshape(-1, 4)
    quantize_per_token(tmp_path / "fp32.onnx", tmp_path / "plain.onnx")
    assert quantize_per_token(tmp_path / "fp32.onnx", tmp_path / "smooth.onnx", [{"x": x[:2]}]) == 2
    plain = np.abs(_run(tmp_path / "plain.onnx", x).reshape(-1, 4) - exact).mean()
    smooth = np.abs(_run(tmp_path / "smooth.onnx", x).reshape(-1, 4) - exact).mean()
    assert smooth < plain / 3, (smooth, plain)
    alone = _run(tmp_path / "smooth.onnx", x[3:])  # still each row from its own values
    np.testing.assert_array_equal(alone, _run(tmp_path / "smooth.onnx", x)[3:])


@pytest.fixture(scope="module")
def short_reference():
    from sentence_transformers import SentenceTransformer

    from percolate_models.accuracy import SHORT_TEXTS

    return SentenceTransformer(str(locate(MINILM)), device="cpu").encode(
        SHORT_TEXTS, batch_size=32, normalize_embeddings=False)


def test_short_queries_keep_the_floor(paths, entry, tokenizer, short_reference):
    """One to three words, numbers, names, other scripts (``SHORT_TEXTS``, in the tune's
    accuracy set): the served variant and int8_token keep the floor against
    sentence-transformers, and the tune recorded it. Single words are the hardest: plain
    per-token int8 measured mean 0.9917 on them, smoothed 0.9965; 0.995 guards that gain."""
    from percolate_models import accuracy

    floor = tune.FLOORS["text_embedding"]
    installed = json.loads(paths.manifest.read_text())["models"]["text_embedding"]
    for variant in {installed["variant"], "int8_token"}:
        vectors = embed_texts(accuracy.SHORT_TEXTS, tokenizer, onnx_embed_fn(entry / f"{variant}.onnx"))
        cosine = cosine_rows(vectors, short_reference)
        assert cosine.mean() >= floor["cosine_mean"] and cosine.min() >= floor["cosine_min"], (variant, cosine)
        words = [i for i, text in enumerate(accuracy.SHORT_TEXTS[:20]) if " " not in text]
        assert len(words) == 20 and cosine[words].mean() >= 0.995, (variant, cosine[words])
    if installed["choice"]["reason"] != "named by --variant":
        recorded = installed["choice"]["accuracy"][installed["variant"]]
        assert recorded["short_texts"]["texts"] == len(accuracy.SHORT_TEXTS)
        assert accuracy.meets_floor(recorded, floor)


def test_int8_token_keeps_the_floor_and_ignores_its_batch(entry, tokenizer):
    """In process, on the built file: cosine to sentence-transformers within the tuning floor,
    and the same embedding alone and among unlike texts. The batch-scaled int8 file fails the
    same probe, which shows the probe can see batch dependence."""
    from sentence_transformers import SentenceTransformer

    sentences = sample_sentences(64, seed=2026)
    reference = SentenceTransformer(str(locate(MINILM)), device="cpu").encode(
        sentences, batch_size=32, normalize_embeddings=False)
    vectors = embed_texts(sentences, tokenizer, onnx_embed_fn(entry / "int8_token.onnx"))
    cosine = cosine_rows(vectors, reference)
    floor = tune.FLOORS["text_embedding"]
    assert cosine.mean() >= floor["cosine_mean"] and cosine.min() >= floor["cosine_min"], cosine

    probes = sample_sentences(8, seed=5)
    token = batch_independence(probes, tokenizer, onnx_embed_fn(entry / "int8_token.onnx"))
    assert token["cosine_min"] >= BATCH_INDEPENDENCE_MIN_COSINE and token["max_abs_diff"] <= MAX_ABS_DIFF, token
    batch_scaled = batch_independence(probes, tokenizer, onnx_embed_fn(entry / "int8.onnx"))
    assert batch_scaled["cosine_min"] < BATCH_INDEPENDENCE_MIN_COSINE, batch_scaled


def test_the_build_records_batch_independence_of_what_it_serves(paths):
    installed = json.loads(paths.manifest.read_text())["models"]["text_embedding"]
    choice = installed["choice"]
    if choice["reason"] == "named by --variant":
        pytest.skip("the variant was named, not chosen by measurement")
    measured = choice["batch_independence"]
    assert set(measured) == set(TEXT_EMBEDDING.variants)
    assert measured[installed["variant"]]["cosine_min"] >= BATCH_INDEPENDENCE_MIN_COSINE
    assert installed["variant"] not in TEXT_EMBEDDING.batch_dependent_variants


def test_served_embedding_ignores_the_rest_of_its_batch(triton_models, tokenizer):
    """Through the real Triton: each text alone in its own request (its own padding) and the
    same texts in one request together with unlike texts (padded to the longest)."""
    probes = sample_sentences(8, seed=41) + ["A short one.", "Invoices, receipts and the tax office."]
    measured = batch_independence(probes, tokenizer, triton_models.embed)
    assert measured["cosine_min"] >= BATCH_INDEPENDENCE_MIN_COSINE, measured
    assert measured["max_abs_diff"] <= MAX_ABS_DIFF, measured


def test_concurrent_tenants_do_not_shift_each_others_embeddings(reading, pki, tokenizer):
    """Tenant A's Embed alone, then again while tenant B sends unlike texts of the same padded
    length at the same time (Triton's dynamic batcher may put them in one onnxruntime call)."""
    from percolate.reading.v1 import reading_pb2 as pb
    from percolate.reading.v1 import reading_pb2_grpc
    from tests.conftest import tenant_channel

    texts_a = sample_sentences(6, seed=77)
    texts_b = ["ok", "42", "WIRE 9,999,999 USD NOW!!!", "Die Quartalszahlen stiegen um zwölf Prozent.",
               "def f(x): return {k: v for k, v in x.items()}  # 0x7fff"]
    shapes = {tokenizer.encode(texts).input_ids.shape[1] for texts in (texts_a, texts_b)}
    assert len(shapes) == 1, "both tenants' requests must pad alike, or Triton never batches them"

    def embed(tenant: str, texts: list[str]) -> np.ndarray:
        with tenant_channel(reading, pki, tenant) as channel:
            response = reading_pb2_grpc.ReadingServiceStub(channel).Embed(pb.EmbedRequest(texts=texts), timeout=60)
        return np.array([e.values for e in response.embeddings], np.float32)

    alone = embed("tenant-a", texts_a)
    with ThreadPoolExecutor(8) as pool:
        rounds = [(pool.submit(embed, "tenant-a", texts_a), [pool.submit(embed, "tenant-b", texts_b)
                                                              for _ in range(3)]) for _ in range(4)]
        mixed = [a.result() for a, bs in rounds if [b.result() for b in bs]]
    for vectors in mixed:
        assert cosine_rows(alone, vectors).min() >= BATCH_INDEPENDENCE_MIN_COSINE
        assert np.abs(alone - vectors).max() <= MAX_ABS_DIFF
