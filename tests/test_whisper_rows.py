"""The int8 step decoder's row pairing (``whisper_convert._paired_rows``) and the load-time
check that a step graph is batch independent (``whisper_decode.row_independence_problems``),
on a one-node MatMulNBits graph the size of a decoder layer's first feed-forward weight."""
from __future__ import annotations

import numpy as np
import pytest

from percolate_models import whisper_convert
from percolate_models.whisper_decode import OrtRunner, row_independence_problems

ort = pytest.importorskip("onnxruntime")
K, N = whisper_convert.D_MODEL, whisper_convert.FFN


def nbits_graph(path, paired: bool) -> str:
    """x [rows, 1, K] -> one 8-bit MatMulNBits (as the build writes them) -> y [rows, 1, N]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = (np.random.default_rng(3).standard_normal((K, N)) * 0.05).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="/fc1/MatMul")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", 1, K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", 1, N])],
        [numpy_helper.from_array(weight, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert whisper_convert._quantize_blocks(model) == 1
    if not paired:  # the graph as 638b0fb built it: the MatMulNBits on the rows as they come
        nodes = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
        nodes[0].input[0], nodes[0].output[0] = "x", "y"
        del model.graph.node[:]
        model.graph.node.extend(nodes)
    onnx.save(model, str(path))
    return str(path)


def session(file: str):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(file, options, providers=["CPUExecutionProvider"])


def test_paired_graph_is_batch_independent_and_the_check_sees_an_unpaired_one(tmp_path):
    """With the pairing every row comes out bit for bit as alone; without it this CPU's
    kernel rounds a lone last row otherwise, and the check reports it (skipped on a CPU
    whose kernel does not, where there is nothing to see)."""
    paired = session(nbits_graph(tmp_path / "paired.onnx", True))
    if problems := row_independence_problems(paired):  # the runner falls back to fp32 there
        pytest.skip(f"this CPU's MatMulNBits kernel mixes rows even when paired: {problems[0]}")
    x = np.random.default_rng(4).standard_normal((3, 1, K)).astype(np.float32)
    assert np.array_equal(paired.run(None, {"x": x})[0], np.concatenate(
        [paired.run(None, {"x": x[[i]]})[0] for i in range(3)]))
    unpaired = session(nbits_graph(tmp_path / "unpaired.onnx", False))
    problems = row_independence_problems(unpaired)
    if not problems:
        pytest.skip("this CPU's MatMulNBits kernel rounds a lone row as a paired one")
    assert all("differs from the row alone" in p for p in problems)


def test_runner_falls_back_or_refuses_when_the_step_graph_mixes_rows(tmp_path):
    """A step decoder that fails the check is replaced by the fallback file, or, with none
    (or a failing one), loading stops with an error that says what to build."""
    paired, unpaired = nbits_graph(tmp_path / "p.onnx", True), nbits_graph(tmp_path / "u.onnx", False)
    if not row_independence_problems(session(unpaired)) or row_independence_problems(session(paired)):
        pytest.skip("this CPU's MatMulNBits kernel rounds a lone row as a paired one, or mixes paired rows")
    runner = OrtRunner(paired, paired, unpaired, threads=2, fallback_with_past=paired)
    assert str(runner.with_past_file) == paired and runner.row_problems == []
    assert str(OrtRunner(paired, paired, paired, threads=2).with_past_file) == paired
    with pytest.raises(RuntimeError, match="whisper_decoder_with_past=fp32"):
        OrtRunner(paired, paired, unpaired, threads=2)
    with pytest.raises(RuntimeError, match="so is the fp32 fallback"):
        OrtRunner(paired, paired, unpaired, threads=2, fallback_with_past=unpaired)
