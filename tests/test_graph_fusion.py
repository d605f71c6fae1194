"""The OCR models' fused variant (percolate_models/graph_fusion.py): fewer passes, the same
network. On small graphs of the patterns PP-OCR's export writes, each fold keeps the output
(to float rounding) and leaves alone what it must not fold; on the real graphs the fused
variant reads the same text and boxes as fp32, which reads as rapidocr does."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from percolate_models import graph_fusion
from reading_frontend import ocr
from tests.test_ocr_int8 import hard_pages
from tests.test_ocr_pipeline import CASES

RNG = np.random.default_rng(3)


def _const(name: str, value: float) -> onnx.NodeProto:
    """A scalar as a Constant node (the packaged graphs hold theirs both ways)."""
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.array([value], np.float32)))


def _init(name: str, value) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, np.float32), name)


def block(second_pads: int = 0, conv_read_twice: bool = False) -> onnx.ModelProto:
    """x -> Conv -> Mul c -> Add d -> hardswish (Add 3, Clip 0..6, Mul x, Div 6) -> Mul c2 ->
    Add d2 -> Conv (``second_pads`` of padding) -> y; optionally the first Conv's output is
    also a graph output."""
    nodes = [
        _const("three", 3.0), _const("zero", 0.0), _const("six", 6.0), _const("c", 0.7),
        helper.make_node("Conv", ["x", "w1", "b1"], ["conv1"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("Mul", ["c", "conv1"], ["scaled"]),  # the scalar first, as PaddleOCR writes it
        helper.make_node("Add", ["scaled", "d"], ["shifted"]),
        helper.make_node("Add", ["shifted", "three"], ["plus3"]),
        helper.make_node("Clip", ["plus3", "zero", "six"], ["clipped"]),
        helper.make_node("Mul", ["shifted", "clipped"], ["product"]),
        helper.make_node("Div", ["product", "six"], ["hswish"]),
        helper.make_node("Mul", ["hswish", "c2"], ["scaled2"]),
        helper.make_node("Add", ["scaled2", "d2"], ["shifted2"]),
        helper.make_node("Conv", ["shifted2", "w2", "b2"], ["y"], pads=[second_pads] * 4, kernel_shape=[3, 3]),
    ]
    initializers = [_init("w1", RNG.normal(0, 0.5, (6, 4, 3, 3))), _init("b1", RNG.normal(0, 0.5, 6)),
                    _init("d", [0.4]), _init("c2", [1.9]), _init("d2", [-0.3]),
                    _init("w2", RNG.normal(0, 0.5, (5, 6, 3, 3))), _init("b2", RNG.normal(0, 0.5, 5))]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if conv_read_twice:
        outputs.append(helper.make_tensor_value_info("conv1", TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "block", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 9, 9])],
                              outputs, initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)])


def run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # the graph as written
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})


def fused(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, int]]:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    counts = graph_fusion.fuse(copy)
    onnx.checker.check_model(copy)
    return copy, counts


def ops(model: onnx.ModelProto) -> list[str]:
    return [node.op_type for node in model.graph.node]


def assert_same_outputs(model: onnx.ModelProto, after: onnx.ModelProto) -> None:
    x = RNG.normal(0, 2, (1, 4, 9, 9)).astype(np.float32)  # wide enough to reach both clip ends
    for before_out, after_out in zip(run(model, x), run(after, x), strict=True):
        np.testing.assert_allclose(after_out, before_out, rtol=1e-5, atol=1e-5)


def test_every_fold_applies_to_an_unpadded_block_and_keeps_its_output():
    model = block(second_pads=0)
    after, counts = fused(model)
    assert counts == {"hardswish": 1, "conv_then_affine": 1, "affine_then_conv": 1, "affine_as_batchnorm": 0}
    assert ops(after) == ["Conv", "HardSwish", "Conv"]  # and no Constant or initializer left unread
    assert {i.name for i in after.graph.initializer} == {n.input[k] for n in after.graph.node for k in (1, 2)
                                                         if n.op_type == "Conv"}
    assert after.opset_import[0].version == graph_fusion.HARDSWISH_OPSET
    assert_same_outputs(model, after)


def test_a_padded_convolution_keeps_the_shift_before_it():
    """Padding adds zeros after the shift: folded into the bias, the border would see it. The
    scale and shift stay before the Conv, as one BatchNormalization pass."""
    model = block(second_pads=1)
    after, counts = fused(model)
    assert counts["affine_then_conv"] == 0 and counts["conv_then_affine"] == 1
    assert counts["affine_as_batchnorm"] == 1
    assert ops(after) == ["Conv", "HardSwish", "BatchNormalization", "Conv"]
    assert_same_outputs(model, after)


def test_a_shift_of_unknown_channels_stays_two_ops():
    """BatchNormalization needs the channel count: a scale/shift of a graph input keeps its Mul and Add."""
    nodes = [helper.make_node("Mul", ["x", "c"], ["scaled"]), helper.make_node("Add", ["scaled", "d"], ["y"])]
    graph = helper.make_graph(nodes, "input_affine",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 9, 9])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 9, 9])],
                              [_init("c", [0.7]), _init("d", [0.4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)])
    after, counts = fused(model)
    assert counts["affine_as_batchnorm"] == 0 and ops(after) == ["Mul", "Add"]
    assert_same_outputs(model, after)


def test_a_tensor_something_else_reads_is_not_folded_away():
    model = block(second_pads=0, conv_read_twice=True)
    after, counts = fused(model)
    assert counts["conv_then_affine"] == 0, "the first Conv's output is a graph output: it must stay as it is"
    assert "conv1" in {out for node in after.graph.node for out in node.output}
    assert_same_outputs(model, after)


def test_a_clip_to_other_bounds_is_not_taken_for_hardswish():
    model = block()
    model.graph.node.insert(0, _const("five", 5.0))
    next(n for n in model.graph.node if n.op_type == "Clip").input[2] = "five"
    after, counts = fused(model)
    assert counts["hardswish"] == 0 and "Clip" in ops(after)
    assert_same_outputs(model, after)


def test_only_onnx_float32_convolutions_are_rewritten():
    """A float16 graph's BatchNormalization would get float32 parameters onnxruntime refuses,
    and a custom op that happens to be called Conv is not ONNX's."""
    half = block(second_pads=1)
    for tensor in half.graph.initializer:
        tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float16), tensor.name))
    for node in half.graph.node:
        if node.op_type == "Constant":
            value = numpy_helper.to_array(node.attribute[0].t).astype(np.float16)
            node.attribute[0].t.CopyFrom(numpy_helper.from_array(value))
    half.graph.input[0].type.tensor_type.elem_type = TensorProto.FLOAT16
    half.graph.output[0].type.tensor_type.elem_type = TensorProto.FLOAT16
    after, counts = fused(half)
    assert counts["conv_then_affine"] == counts["affine_as_batchnorm"] == 0
    x = RNG.normal(0, 2, (1, 4, 9, 9)).astype(np.float16)
    np.testing.assert_allclose(run(after, x)[0], run(half, x)[0], rtol=1e-3, atol=1e-3)

    custom = block()
    custom.opset_import[0].version = graph_fusion.HARDSWISH_OPSET  # no conversion: it cannot type custom ops
    custom.opset_import.append(helper.make_opsetid("example.custom", 1))
    for node in custom.graph.node:
        if node.op_type == "Conv":
            node.domain = "example.custom"
    counts = graph_fusion.fuse(custom)
    assert counts["conv_then_affine"] == counts["affine_then_conv"] == counts["affine_as_batchnorm"] == 0


def test_a_one_element_constant_of_higher_rank_is_not_a_scalar():
    """Mul by a [1, 1, 1, 1, 1] constant turns a 4-d conv output 5-d: folding it would drop
    that dimension."""
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["conv1"], kernel_shape=[3, 3]),
             helper.make_node("Mul", ["conv1", "c5"], ["scaled"]),
             helper.make_node("Add", ["scaled", "d"], ["y"])]
    graph = helper.make_graph(
        nodes, "rank", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 9, 9])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 6, 7, 7])],
        [_init("w1", RNG.normal(0, 0.5, (6, 4, 3, 3))), _init("b1", RNG.normal(0, 0.5, 6)),
         _init("c5", np.full((1, 1, 1, 1, 1), 0.7)), _init("d", [0.4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)])
    after, counts = fused(model)
    assert counts["conv_then_affine"] == 0
    x = RNG.normal(0, 2, (1, 4, 9, 9)).astype(np.float32)
    assert run(after, x)[0].shape == run(model, x)[0].shape == (1, 1, 6, 7, 7)


def test_an_initializer_that_is_also_an_input_is_not_a_constant():
    """Old-style graphs list initializers as inputs too, so a caller may feed them: not folded."""
    model = block()
    d2 = next(i for i in model.graph.initializer if i.name == "d2")
    model.graph.input.append(helper.make_tensor_value_info("d2", TensorProto.FLOAT, [1]))
    after, counts = fused(model)
    assert counts["affine_then_conv"] == 0
    assert "d2" in {i.name for i in after.graph.input} and "d2" in {i.name for i in after.graph.initializer}
    assert d2 is not None


def test_graphs_with_subgraphs_are_refused_and_newer_opsets_kept():
    model = block()
    branch = helper.make_graph([helper.make_node("Identity", ["b1"], ["out"])], "branch", [],
                               [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)])
    model.graph.node.append(helper.make_node("If", ["cond"], ["unused"], then_branch=branch, else_branch=branch))
    with pytest.raises(ValueError, match="subgraphs"):
        graph_fusion.fuse(model)
    newer = block()
    newer.opset_import[0].version = 17
    counts = graph_fusion.fuse(newer)
    assert newer.opset_import[0].version == 17, "raised to 14 when older, never lowered"
    assert counts["hardswish"] == 1


# --------------------------------------------------------------------------- the real graphs


@pytest.fixture(scope="module")
def readers(paths):
    """fp32 and fused as the build made them (the suite's build entries), with the classifier."""
    def session(path):
        options = ort.SessionOptions()
        options.intra_op_num_threads = 2
        options.log_severity_level = 3
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    classifier = session(paths.model_repository / "ocr_cls" / "1" / "model.onnx")
    characters = ocr.load_character_list(paths.assets / "ocr" / "ppocr_keys.txt")
    found = {}
    for variant in ("fp32", "fused"):
        det = session(paths.build_entry("ocr_det") / f"{variant}.onnx")
        rec = session(paths.build_entry("ocr_rec") / f"{variant}.onnx")

        def infer(model: str, batch: np.ndarray, det=det, rec=rec):
            if model == ocr.DET_MODEL:
                return det.run(None, {"image": batch})[0]
            if model == ocr.CLS_MODEL:
                return classifier.run(None, {"image": batch})[0]
            rows = [rec.run(None, {"image": batch[i:i + 1]}) for i in range(len(batch))]
            return np.concatenate([r[0] for r in rows]), np.concatenate([r[1] for r in rows])

        found[variant] = lambda image, infer=infer: ocr.run_ocr(image, infer, characters)
    return found


PAGES = {**{name: case()[0] for name, case in CASES.items()},
         **{f"hard_{i}": image for i, (image, _) in enumerate(hard_pages(4, seed=23))}}


@pytest.mark.parametrize("page", sorted(PAGES))
def test_fused_reads_the_same_lines_as_fp32(page, readers):
    reference, found = readers["fp32"](PAGES[page]), readers["fused"](PAGES[page])
    assert reference, "the page has text to read"
    assert [line.text for line in found] == [line.text for line in reference]
    assert [line.box for line in found] == [line.box for line in reference]
    np.testing.assert_allclose([line.confidence for line in found], [line.confidence for line in reference],
                               atol=1e-4)


def test_the_fused_graphs_lost_their_elementwise_passes(paths):
    for model in ("ocr_det", "ocr_rec"):
        before = onnx.load(str(paths.build_entry(model) / "fp32.onnx"))
        after = onnx.load(str(paths.build_entry(model) / "fused.onnx"))
        assert ops(after).count("Conv") == ops(before).count("Conv")
        assert ops(after).count("Div") < ops(before).count("Div") and "HardSwish" in ops(after)
        assert len(after.graph.node) < len(before.graph.node) * 0.7
