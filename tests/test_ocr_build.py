"""The OCR models' graph edits (percolate_models/ocr_graphs.py) in the build: a fresh build
serves them, and the content-hash cache notices when their code changes."""
from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto

from percolate_models import build as build_module
from percolate_models import graph_fusion, ocr_graphs
from percolate_models.build import BuildOptions, build
from percolate_models.catalog import OCR_CLS, OCR_DET, OCR_REC, TEXT_EMBEDDING
from percolate_models.paths import ProjectPaths
from percolate_models.sources import locate, sha256_tree


@pytest.fixture
def scratch(tmp_path) -> ProjectPaths:
    return ProjectPaths(model_repository=tmp_path / "repo", assets=tmp_path / "assets",
                        cache=tmp_path / "cache")


def _shape(value) -> list:
    return [d.dim_value or d.dim_param for d in value.type.tensor_type.shape.dim]


@pytest.mark.parametrize("served", ["model.onnx", "model.gpu.onnx"])
def test_fresh_build_serves_the_edited_graphs(scratch, served):
    """Both weights files keep the edited interface: the cpu target's (here the catalog's
    default, the fused variant; the tune is measured in tests/test_tune.py) and the gpu
    target's (fp32, the packaged arithmetic)."""
    options = BuildOptions(models=("ocr_det", "ocr_rec"), tune=False)
    first = build(scratch, options, say=lambda line: None)
    assert any("built ocr_det" in a for a in first.actions) and any("built ocr_rec" in a for a in first.actions)

    det = onnx.load(str(scratch.model_repository / "ocr_det" / "1" / served))
    (det_input,) = det.graph.input
    assert det_input.name == "image" and det_input.type.tensor_type.elem_type == TensorProto.UINT8
    assert _shape(det_input)[3] == 3  # HWC
    rec = onnx.load(str(scratch.model_repository / "ocr_rec" / "1" / served))
    class_output, probability_output = rec.graph.output
    assert class_output.name == "best_class" and class_output.type.tensor_type.elem_type == TensorProto.INT32
    assert probability_output.name == "best_probability"
    assert probability_output.type.tensor_type.elem_type == TensorProto.FLOAT
    assert len(_shape(class_output)) == 2  # [batch, steps]
    assert "character" in {p.key for p in rec.metadata_props}  # the dictionary is kept
    fused = served == "model.onnx"
    for graph in (det, rec):
        assert ("HardSwish" in {node.op_type for node in graph.graph.node}) == fused

    assert not build(scratch, options, say=lambda line: None).changed


def test_cache_key_follows_the_graph_edit_code(tmp_path, monkeypatch):
    keys = {spec.name: build_module.cache_key(spec, sha256_tree(locate(spec.source)))
            for spec in (OCR_DET, OCR_REC, OCR_CLS)}
    embedding_key = build_module.cache_key(TEXT_EMBEDDING, "same source")
    edited = tmp_path / "ocr_graphs.py"
    edited.write_text(open(ocr_graphs.__file__).read() + "\n# an edit\n")
    monkeypatch.setattr(ocr_graphs, "__file__", str(edited))

    for spec in (OCR_DET, OCR_REC):
        assert build_module.cache_key(spec, sha256_tree(locate(spec.source))) != keys[spec.name]
    monkeypatch.undo()
    edited = tmp_path / "graph_fusion.py"
    edited.write_text(open(graph_fusion.__file__).read() + "\n# an edit\n")
    monkeypatch.setattr(graph_fusion, "__file__", str(edited))
    for spec in (OCR_DET, OCR_REC):  # the fused variant is built every time, so it is in the key
        assert build_module.cache_key(spec, sha256_tree(locate(spec.source))) != keys[spec.name]
    # models without an edit, and the other engineers' models, keep their keys (no rebuild)
    assert build_module.cache_key(OCR_CLS, sha256_tree(locate(OCR_CLS.source))) == keys["ocr_cls"]
    assert build_module.cache_key(TEXT_EMBEDDING, "same source") == embedding_key
