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


def test_calibration_texts_are_not_measured_texts():
    """The smoothing factors are fitted on ``CALIBRATION_TEXTS``; the floors must be measured
    on other texts. Compared as token ids, since "Hi" and "hi" are one text to this
    (uncased) tokenizer: none tokenises like a short text, an accuracy sentence of the build
    and the tune, the tune's batch probes or their batch mates."""
    from percolate_models.accuracy import ACCURACY_SENTENCES, BATCH_MATES, SHORT_TEXTS
    from percolate_models.quantize import CALIBRATION_TEXTS

    tokenizer = TextTokenizer(locate(MINILM) / "tokenizer.json")

    def ids(texts: list[str]) -> set[tuple[int, ...]]:
        batch = tokenizer.encode(texts, truncate=True)
        return {tuple(row[mask.astype(bool)]) for row, mask in zip(batch.input_ids, batch.attention_mask)}

    measured = SHORT_TEXTS + sample_sentences(ACCURACY_SENTENCES, seed=7) + sample_sentences(8, seed=5) + BATCH_MATES
    calibration = ids(CALIBRATION_TEXTS)
    assert len(calibration) == len(CALIBRATION_TEXTS)
    assert not calibration & ids(measured), [t for t in CALIBRATION_TEXTS if ids([t]) & ids(measured)]


def test_cache_key_follows_the_code_and_tools_calibration_uses(tmp_path, monkeypatch):
    """int8_token's smoothing depends on how reading_frontend.text (and the ``tokenizers``
    package) tokenise the calibration texts, and the entry's accuracy record on accuracy.py:
    a change to any of them builds text_embedding again, and leaves the other models' keys
    (and so their caches) alone."""
    from percolate_models import accuracy, build
    from percolate_models.catalog import MODELS
    from reading_frontend import text

    def keys() -> dict[str, str]:
        return {spec.name: build.cache_key(spec, "source") for spec in MODELS}

    before = keys()
    for module in (text, accuracy):
        edited = tmp_path / f"{module.__name__}.py"
        edited.write_text(open(module.__file__).read() + "\n# edited\n")
        with monkeypatch.context() as patch:
            patch.setattr(module, "__file__", str(edited))
            after = keys()
        assert {n for n in before if after[n] != before[n]} == {TEXT_EMBEDDING.name}, module.__name__
    real = build.distribution_version
    monkeypatch.setattr(build, "distribution_version", lambda name: "0.0.1" if name == "tokenizers" else real(name))
    after = keys()
    assert {n for n in before if after[n] != before[n]} == {TEXT_EMBEDDING.name}


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


def _shared_input_and_residual(path) -> np.ndarray:
    """x [B, S, 8] read by two MatMuls (as q/k/v read one tensor) and by a residual Add:
    y = x + (x @ W1) * (x @ W2). Channel 3 is 20 times larger than the others in every
    token and its weight rows as many times smaller; returns that per-channel scale."""
    rng = np.random.default_rng(0)
    scale = np.ones(8, np.float32)
    scale[3] = 20
    w1, w2 = (rng.normal(size=(8, 8)).astype(np.float32) / scale[:, None] for _ in range(2))
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h1"]), helper.make_node("MatMul", ["x", "w2"], ["h2"]),
         helper.make_node("Mul", ["h1", "h2"], ["m"]), helper.make_node("Add", ["x", "m"], ["y"])], "residual",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "s", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "s", 8])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return scale


def test_smoothing_a_shared_input_leaves_its_residual_alone(tmp_path):
    """One activation smoothed once for both MatMuls that read it, while the residual Add
    reads it unscaled; on held-out inputs (not the calibration data) the smoothed file
    matches fp32 more closely than the unsmoothed one. Channel 5 is silent in calibration
    and active later: with factors down to 2^-7 (the old bounds) it was multiplied by 128
    and took every row's int8 range (relative error 0.55); ``SMOOTH_RANGE`` caps it at 8."""
    scale = _shared_input_and_residual(tmp_path / "fp32.onnx")
    calibration = np.random.default_rng(2).normal(size=(4, 6, 8)).astype(np.float32) * scale
    calibration[..., 5] = 0
    held_out = np.random.default_rng(3).normal(size=(4, 6, 8)).astype(np.float32) * scale
    assert quantize_per_token(tmp_path / "fp32.onnx", tmp_path / "smooth.onnx", [{"x": calibration}]) == 2
    quantize_per_token(tmp_path / "fp32.onnx", tmp_path / "plain.onnx")
    nodes = onnx.load(str(tmp_path / "smooth.onnx")).graph.node
    assert [n.input for n in nodes if n.op_type == "Add"] == [["x", "m"]]  # the unscaled input
    assert sum(n.op_type == "Mul" and "x" in n.input for n in nodes) == 1  # one smoothing for both

    exact = _run(tmp_path / "fp32.onnx", held_out)
    product = (exact - held_out).reshape(-1, 8)  # the MatMuls' share, the rest is exact

    def relative_error(path) -> float:
        return float(np.linalg.norm((_run(path, held_out) - exact).reshape(-1, 8)) / np.linalg.norm(product))

    smooth, plain = relative_error(tmp_path / "smooth.onnx"), relative_error(tmp_path / "plain.onnx")
    assert smooth < 0.05 and smooth < plain, (smooth, plain)  # measured 0.029, plain 0.075


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
    per-token int8 measured mean 0.9917 on them, smoothed 0.9965; 0.995 guards that gain
    where the CPU has VNNI. Without it onnxruntime's u8s8 kernel (vpmaddubsw) saturates
    pairs of products to int16 and single words measure about 0.993 in simulation
    (``test_int8_token_keeps_the_floor_when_pairs_saturate``), so there only the floor holds."""
    from percolate_models import accuracy

    floor = tune.FLOORS["text_embedding"]
    installed = json.loads(paths.manifest.read_text())["models"]["text_embedding"]
    for variant in {installed["variant"], "int8_token"}:
        vectors = embed_texts(accuracy.SHORT_TEXTS, tokenizer, onnx_embed_fn(entry / f"{variant}.onnx"))
        cosine = cosine_rows(vectors, short_reference)
        assert cosine.mean() >= floor["cosine_mean"] and cosine.min() >= floor["cosine_min"], (variant, cosine)
        words = [i for i, text in enumerate(accuracy.SHORT_TEXTS[:20]) if " " not in text]
        assert len(words) == 20
        if tune.machine()["vnni"]:
            assert cosine[words].mean() >= 0.995, (variant, cosine[words])
    if installed["choice"]["reason"] != "named by --variant":
        recorded = installed["choice"]["accuracy"][installed["variant"]]
        assert recorded["short_texts"]["texts"] == len(accuracy.SHORT_TEXTS)
        assert accuracy.meets_floor(recorded, floor)


def _saturating_pairs(src, dst) -> None:
    """``src`` with each ``MatMulIntegerToFloat`` (uint8 x around 128, int8 W) rewritten in
    float the way onnxruntime's u8s8 kernel computes it on a CPU without VNNI: vpmaddubsw
    adds the products of each pair of neighbouring input channels and saturates the sum to
    int16, then the pairs are summed exactly and the zero point's share taken off. Exact in
    float32 (every partial sum stays below 2^24)."""
    model = onnx.load(str(src))
    graph = model.graph
    weights = {t.name: t for t in graph.initializer}
    nodes, extra = [], []

    def const(name: str, array: np.ndarray) -> str:
        extra.append(numpy_helper.from_array(array, name))
        return name

    i64 = lambda *v: np.array(v, np.int64)  # noqa: E731
    two, last, start0, start1, end = (const(f"sat/{n}", i64(v)) for n, v in
                                      (("two", 2), ("last", -1), ("s0", 0), ("s1", 1), ("end", 1 << 30)))
    axis_pairs = const("sat/axis_pairs", i64(-2))
    low, high = const("sat/low", np.array(-32768, np.float32)), const("sat/high", np.array(32767, np.float32))
    for i, node in enumerate(graph.node):
        if node.op_type != "MatMulIntegerToFloat":
            nodes.append(node)
            continue
        x_q, w_q, _, w_scale, _ = node.input
        w = numpy_helper.to_array(weights[w_q]).astype(np.float32)
        p = f"sat{i}"
        even, odd = const(f"{p}/w_even", w[0::2]), const(f"{p}/w_odd", w[1::2])
        zero_share = const(f"{p}/zero_share", (128.0 * w.astype(np.float64).sum(0)).astype(np.float32))
        nodes += [helper.make_node("Cast", [x_q], [f"{p}/x"], to=TensorProto.FLOAT),
                  helper.make_node("Slice", [f"{p}/x", start0, end, last, two], [f"{p}/x_even"]),
                  helper.make_node("Slice", [f"{p}/x", start1, end, last, two], [f"{p}/x_odd"]),
                  helper.make_node("Unsqueeze", [f"{p}/x_even", last], [f"{p}/x_even1"]),
                  helper.make_node("Unsqueeze", [f"{p}/x_odd", last], [f"{p}/x_odd1"]),
                  helper.make_node("Mul", [f"{p}/x_even1", even], [f"{p}/p_even"]),
                  helper.make_node("Mul", [f"{p}/x_odd1", odd], [f"{p}/p_odd"]),
                  helper.make_node("Add", [f"{p}/p_even", f"{p}/p_odd"], [f"{p}/pairs"]),
                  helper.make_node("Clip", [f"{p}/pairs", low, high], [f"{p}/int16"]),
                  helper.make_node("ReduceSum", [f"{p}/int16", axis_pairs], [f"{p}/sum"], keepdims=0),
                  helper.make_node("Sub", [f"{p}/sum", zero_share], [f"{p}/centred"]),
                  helper.make_node("Mul", [f"{p}/centred", w_scale], node.output)]
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(extra)
    onnx.save(model, str(dst))


def test_int8_token_keeps_the_floor_when_pairs_saturate(entry, tokenizer, short_reference, tmp_path):
    """A CPU without VNNI (AVX2, AVX-512 without VNNI) saturates int16 pair sums in the u8s8
    kernel; smoothing makes large products likelier. int8_token as built, in a graph that
    saturates the same way, still keeps the issue's floor on the short texts and on
    sentences (simulated: single words 0.993 vs 0.997 unsaturated)."""
    from sentence_transformers import SentenceTransformer

    from percolate_models.accuracy import SHORT_TEXTS

    _saturating_pairs(entry / "int8_token.onnx", tmp_path / "saturating.onnx")
    embed = onnx_embed_fn(tmp_path / "saturating.onnx", threads=1)
    sentences = sample_sentences(32, seed=2026)
    reference = SentenceTransformer(str(locate(MINILM)), device="cpu").encode(
        sentences, batch_size=32, normalize_embeddings=False)
    floor = tune.FLOORS["text_embedding"]
    for vectors, expected in ((embed_texts(SHORT_TEXTS, tokenizer, embed, 8), short_reference),
                              (embed_texts(sentences, tokenizer, embed, 8), reference)):
        cosine = cosine_rows(vectors, expected)
        assert cosine.mean() >= floor["cosine_mean"] and cosine.min() >= floor["cosine_min"], cosine


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
