"""A real Triton serves the built repository; outputs have the documented shapes."""
from __future__ import annotations

import re
import urllib.request

import numpy as np
import pytest

from percolate_models.catalog import EMBEDDING_DIM, MODELS, OCR_REC_CLASSES


def test_every_model_is_ready(triton_client):
    index = triton_client.get_model_repository_index(as_json=True)["models"]
    states = {m["name"]: m["state"] for m in index}
    assert states == {spec.name: "READY" for spec in MODELS}
    assert triton_client.is_server_ready()


@pytest.mark.parametrize("spec", MODELS, ids=lambda s: s.name)
def test_served_metadata_matches_catalog(triton_client, spec):
    meta = triton_client.get_model_metadata(spec.name, as_json=True)
    assert [i["name"] for i in meta["inputs"]] == [t.name for t in spec.inputs]
    assert [o["name"] for o in meta["outputs"]] == [t.name for t in spec.outputs]
    config = triton_client.get_model_config(spec.name, as_json=True)["config"]
    assert config["backend"] == "python"
    assert int(config.get("max_batch_size", 0)) == spec.cpu.max_batch_size


def test_embedding_output_shape_and_batch_split(triton_models):
    ids = np.array([[101, 7592, 2088, 102, 0, 0], [101, 2023, 2003, 1037, 3231, 102]], np.int64)
    mask = (ids != 0).astype(np.int64)
    both = triton_models.infer("text_embedding", {"input_ids": ids, "attention_mask": mask},
                 ["sentence_embedding"])["sentence_embedding"]
    assert both.shape == (2, EMBEDDING_DIM) and both.dtype == np.float32
    first = triton_models.infer("text_embedding",
                  {"input_ids": ids[:1, :4], "attention_mask": mask[:1, :4]},
                  ["sentence_embedding"])["sentence_embedding"]
    # the same text padded to another length gives the same vector (masked pooling)
    np.testing.assert_allclose(first[0], both[0], atol=1e-5)
    assert not np.allclose(both[0], both[1], atol=1e-2)


def test_ocr_det_cls_rec_shapes(triton_models):
    rng = np.random.default_rng(0)
    det = triton_models.infer("ocr_det", {"image": rng.integers(0, 256, (1, 64, 96, 3), np.uint8)},
                ["probability_map"])["probability_map"]
    assert det.shape == (1, 1, 64, 96)
    assert 0.0 <= det.min() and det.max() <= 1.0
    cls = triton_models.infer("ocr_cls", {"image": rng.standard_normal((5, 3, 48, 192), np.float32)},
                ["probabilities"])["probabilities"]
    assert cls.shape == (5, 2)
    np.testing.assert_allclose(cls.sum(axis=1), 1.0, atol=1e-4)
    rec = triton_models.infer("ocr_rec", {"image": rng.standard_normal((3, 3, 48, 320), np.float32)},
                ["best_class", "best_probability"])
    classes, probabilities = rec["best_class"], rec["best_probability"]
    assert classes.shape == probabilities.shape == (3, 320 // 8)  # per step
    assert classes.dtype == np.int32  # never a float: fp16 (TensorRT) rounds classes above 2048
    assert 0 <= classes.min() and classes.max() < OCR_REC_CLASSES
    assert np.all((0 < probabilities) & (probabilities <= 1))


def test_metrics_say_whether_whisper_serves_its_int8_step_decoder_or_the_fallback(triton, paths):
    """The gauge must agree with the load-time row check, run here on the same file and CPU."""
    ort = pytest.importorskip("onnxruntime")
    from percolate_models.whisper_decode import row_independence_problems

    step_file = paths.model_repository / "whisper_decoder_with_past" / "1" / "model.onnx"
    from percolate_models.configs import CPU_INTRA_OP_THREADS

    options = ort.SessionOptions()
    options.intra_op_num_threads = CPU_INTRA_OP_THREADS  # as the served loop runs it
    expected = 1.0 if row_independence_problems(
        ort.InferenceSession(str(step_file), options, providers=["CPUExecutionProvider"])) else 0.0
    text = urllib.request.urlopen(triton.metrics_url, timeout=30).read().decode()
    served = re.findall(r'^percolate_whisper_step_decoder_fallback\{model="whisper"\} (\S+)$', text, re.M)
    assert served, "no percolate_whisper_step_decoder_fallback gauge in Triton's /metrics"
    assert [float(value) for value in served] == [expected]
