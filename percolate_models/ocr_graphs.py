"""Graph edits that move OCR's bulk tensor work into the served models.

Profiling the full path (frontend -> Triton -> Python backend -> onnxruntime) showed the
models themselves were about 2x faster than rapidocr in process, yet the full path only
matched it: the cost was the tensors crossing gRPC and the backend's shared memory.
Per 1200x800 page, detection took an 11.7 MB float32 NCHW image, and recognition returned
[lines, W/8, 6625] float32 probabilities (16 MB for five lines) of which greedy CTC
decoding reads only the best class and its probability per step. So:

- ``ocr_det`` takes the resized image as uint8 HWC (BGR, as the frontend has it; 4x fewer
  bytes) and normalises in the graph. ``2 * (x * f32(1/255)) - 1`` in float32 is bit for
  bit what rapidocr computes (``x * (1/255.0)`` in float32, then ``(v - 0.5) / 0.5`` in
  float64 cast back: ``2v - 1`` is exact in float64, and one float32 subtraction of exact
  operands rounds it the same way). ``v + v`` (not ``v * 2``) keeps onnxruntime from
  folding the two multiplications into one differently rounded constant.
- ``ocr_rec`` returns two [W/8] outputs per line: ``best_class`` (INT32, from ArgMax: the
  first maximum, as numpy's argmax) and ``best_probability`` (FLOAT, ReduceMax over the
  softmax). The index is its own integer tensor, not a float beside the probability: the
  gpu target runs this graph under TensorRT with FP16 precision, and fp16 holds integers
  exactly only up to 2048 (class 3333 't' would come back as 3332 'e').
- The uint8 input is cast to float before the transpose: TensorRT supports uint8 little
  beyond inputs and Cast, and the output is bit for bit the same.

The build runs these after renaming the packaged tensors (``build._produce``); this module
is part of the OCR models' cache key, so an edit here rebuilds them.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .errors import BuildError


def _internal_name(graph: onnx.GraphProto, name: str, new: str) -> None:
    """Rename tensor ``name`` to ``new`` everywhere it is produced or consumed."""
    for node in graph.node:
        node.input[:] = [new if n == name else n for n in node.input]
        node.output[:] = [new if n == name else n for n in node.output]
    for value in graph.value_info:
        if value.name == name:
            value.name = new


def _single(values, name: str, what: str, path: Path):
    found = [v for v in values if v.name == name]
    if len(found) != 1:
        raise BuildError(f"{path.name} has no {what} named {name!r}",
                         "the packaged model changed; update percolate_models/ocr_graphs.py")
    return found[0]


def uint8_hwc_input(model: onnx.ModelProto, name: str, path: Path) -> None:
    """Replace float32 NCHW input ``name`` by uint8 NHWC, normalised to [-1, 1] in the graph."""
    graph = model.graph
    old = _single(graph.input, name, "input", path)
    graph.input.remove(old)
    normalized = f"{name}_normalized"
    _internal_name(graph, name, normalized)
    graph.initializer.extend([
        numpy_helper.from_array(np.array(1 / 255.0, np.float32), f"{name}_scale"),
        numpy_helper.from_array(np.array(1.0, np.float32), f"{name}_one"),
    ])
    nodes = [
        helper.make_node("Cast", [name], [f"{name}_f32"], to=TensorProto.FLOAT),
        helper.make_node("Transpose", [f"{name}_f32"], [f"{name}_nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Mul", [f"{name}_nchw", f"{name}_scale"], [f"{name}_unit"]),
        helper.make_node("Add", [f"{name}_unit", f"{name}_unit"], [f"{name}_twice"]),
        helper.make_node("Sub", [f"{name}_twice", f"{name}_one"], [normalized]),
    ]
    for node in reversed(nodes):
        graph.node.insert(0, node)
    graph.input.insert(0, helper.make_tensor_value_info(
        name, TensorProto.UINT8, ["batch", "height", "width", 3]))


REC_PROBABILITIES = "softmax_11.tmp_0"
"""The packaged rec graph's [N, T, C] softmax output, which the edit replaces."""


def best_class_outputs(model: onnx.ModelProto, probs: str, index: str, prob: str, path: Path) -> None:
    """Replace [N, T, C] probabilities output ``probs`` by [N, T] ``index`` (INT32 argmax)
    and [N, T] ``prob`` (FLOAT max)."""
    graph = model.graph
    old = _single(graph.output, probs, "output", path)
    graph.output.remove(old)
    graph.node.extend([
        helper.make_node("ArgMax", [probs], [f"{index}_int64"], axis=2, keepdims=0,
                         select_last_index=0),
        helper.make_node("Cast", [f"{index}_int64"], [index], to=TensorProto.INT32),
        helper.make_node("ReduceMax", [probs], [prob], axes=[2], keepdims=0),
    ])
    graph.output.extend([
        helper.make_tensor_value_info(index, TensorProto.INT32, ["batch", "steps"]),
        helper.make_tensor_value_info(prob, TensorProto.FLOAT, ["batch", "steps"]),
    ])


EDITS = {
    "ocr_det": lambda model, path: uint8_hwc_input(model, "image", path),
    "ocr_rec": lambda model, path: best_class_outputs(
        model, REC_PROBABILITIES, "best_class", "best_probability", path),
}
"""Model name -> the edit its built graph gets (models not named are served as packaged)."""


def served_onnx(spec, source: Path, dst: Path) -> None:
    """Write the graph the repository serves for an ``onnx``-kind ``spec``: the packaged
    file with the catalog's tensor names, then this module's edit for it (if any)."""
    from .export import rename_tensors

    renames = {t.onnx_name: t.name for t in spec.inputs + spec.outputs if t.onnx_name}
    rename_tensors(source, dst, renames)
    adapt(spec.name, dst)


def adapt(name: str, path: Path) -> None:
    """Apply ``name``'s edit to the ONNX file at ``path`` in place (no-op if it has none)."""
    edit = EDITS.get(name)
    if edit is None:
        return
    model = onnx.load(str(path))
    edit(model, path)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
