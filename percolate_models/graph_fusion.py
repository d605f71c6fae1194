"""The OCR models' ``fused`` variant: the same fp32 network in fewer passes over memory.

PaddleOCR's export writes PP-OCRv4's layers as many small elementwise steps that
onnxruntime runs one tensor-wide pass each: every hardswish is four (``Add 3``, ``Clip 0..6``,
``Mul x``, ``Div 6``), and most convolutions are followed or preceded by a learnt scalar
scale and shift (``Mul c``, ``Add d``). Profiled on the 2-core AMD EPYC, those passes and
the layout reorders they force were a third of detection's time and a quarter of
recognition's, more than the convolutions' share of either. This rewrite keeps the
arithmetic and drops the passes:

- ``hardswish``: the four steps become one ONNX ``HardSwish`` (opset 14), which onnxruntime
  fuses into the convolution before it.
- ``Conv -> Mul c -> Add d`` becomes one Conv with weights ``c W`` and bias ``c b + d``.
- ``Mul c -> Add d -> Conv`` becomes one Conv with weights ``c W`` and bias
  ``b + d * sum(W)``, only where that Conv pads nothing: padding adds zeros after the
  shift, which a folded bias would count at the border as well.
- A scale/shift left over (before a padded Conv) becomes one ``BatchNormalization`` (mean
  0, variance 1, epsilon 0): one pass, which onnxruntime keeps in its blocked layout instead
  of reordering around two elementwise ops.

Only single-consumer chains of scalar constants are folded, so nothing else in the graph
sees a changed tensor. The result is not bit for bit the packaged graph (products are
rounded in another order: detection's probabilities moved by at most 2e-4 and
recognition's by 7e-5 on the bench pages), which is why it is a variant of its own that
the tune holds to fp32's character accuracy (``tune.measure_ocr_variants``). Where it was
measured it read the same text and the same boxes as fp32 on every line (README "OCR
speed"). Folded weights are computed in float64 and rounded once to float32.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper, version_converter

HARDSWISH_OPSET = 14
"""The first ONNX opset with ``HardSwish``; the packaged graphs are opset 12 (raised to it)."""


def _op(node: onnx.NodeProto) -> str:
    """The node's op type, qualified by its domain unless it is ONNX's own (so a custom op
    that happens to be called "Conv" is never taken for one)."""
    return node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"


class _Graph:
    """Lookups over one graph: constants (initializers and Constant nodes), producers,
    consumers, graph outputs."""

    def __init__(self, graph: onnx.GraphProto):
        self.graph = graph
        self.initializers = {i.name: i for i in graph.initializer}
        self.constant_nodes = {n.output[0]: n for n in graph.node if _op(n) == "Constant"}
        self.inputs = {i.name for i in graph.input}
        self.refresh()

    def refresh(self) -> None:
        self.producer = {out: node for node in self.graph.node for out in node.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in self.graph.node:
            for name in node.input:
                self.consumers[name].append(node)
        self.outputs = {o.name for o in self.graph.output}

    def constant(self, name: str) -> np.ndarray | None:
        """The value of ``name`` if it is a constant; an initializer that is also a graph
        input is not (a caller may feed another value)."""
        if name in self.inputs:
            return None
        if name in self.initializers:
            return numpy_helper.to_array(self.initializers[name])
        node = self.constant_nodes.get(name)
        if node is not None and node.attribute[0].name == "value":
            return numpy_helper.to_array(node.attribute[0].t)
        return None

    def scalar(self, name: str) -> float | None:
        """A one-element constant of rank 0 or 1 (a higher rank would broadcast the data
        to more dimensions, which a fold would drop)."""
        value = self.constant(name)
        return float(value.reshape(())) if value is not None and value.size == 1 and value.ndim <= 1 else None

    def sole_consumer(self, name: str) -> onnx.NodeProto | None:
        """The one node reading ``name``, if exactly one does and it is no graph output."""
        readers = self.consumers.get(name, [])
        return readers[0] if len(readers) == 1 and name not in self.outputs else None

    def scalar_operand(self, node: onnx.NodeProto) -> tuple[str, float] | None:
        """For a binary node with one scalar constant operand: (the other input, the scalar)."""
        if len(node.input) != 2:
            return None
        for data, const in ((0, 1), (1, 0)):
            value = self.scalar(node.input[const])
            if value is not None and self.constant(node.input[data]) is None:
                return node.input[data], value
        return None

    def add_initializer(self, name: str, value: np.ndarray) -> str:
        """Add ``value`` under ``name``, or under ``name.<n>`` if that is taken; returns the name."""
        taken = set(self.initializers) | set(self.producer) | self.inputs
        unique, number = name, 1
        while unique in taken:
            unique, number = f"{name}.{number}", number + 1
        self.graph.initializer.append(numpy_helper.from_array(value, unique))
        self.initializers[unique] = self.graph.initializer[-1]
        return unique

    def remove(self, dead: set[int]) -> None:
        kept = [node for node in self.graph.node if id(node) not in dead]
        del self.graph.node[:]
        self.graph.node.extend(kept)
        self.refresh()


def fuse(model: onnx.ModelProto) -> dict[str, int]:
    """Rewrite ``model`` in place (raised to opset 14 if older); returns how many of each
    fold it made. Graphs with subgraphs (If, Loop, Scan) are refused: a tensor a subgraph
    reads from the outer scope would look unread here."""
    if any(attribute.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
           for node in model.graph.node for attribute in node.attribute):
        raise ValueError("graph_fusion does not rewrite graphs with subgraphs (If, Loop, Scan)")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None or opset < HARDSWISH_OPSET:
        model.CopyFrom(version_converter.convert_version(model, HARDSWISH_OPSET))
    graph = _Graph(model.graph)
    counts = {"hardswish": _hardswish_as_one_op(graph),
              "conv_then_affine": _fold_affine_after_conv(graph),
              "affine_then_conv": _fold_affine_before_unpadded_conv(graph),
              "affine_as_batchnorm": _affine_as_batch_norm(graph)}
    _drop_unused(graph)
    return counts


def write_fused(fp32: Path, dst: Path) -> dict[str, int]:
    """Write the ``fused`` variant of the served fp32 graph ``fp32`` to ``dst``."""
    model = onnx.load(str(fp32))
    counts = fuse(model)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return counts


def _hardswish_as_one_op(g: _Graph) -> int:
    """``Div(Mul(x, Clip(Add(x, 3), 0, 6)), 6)`` -> ``HardSwish(x)``."""
    dead, replaced = set(), 0
    for div in list(g.graph.node):
        if _op(div) != "Div" or g.scalar(div.input[1]) != 6.0:
            continue
        mul = g.producer.get(div.input[0])
        if mul is None or _op(mul) != "Mul" or g.sole_consumer(mul.output[0]) is not div:
            continue
        for x_at, clip_at in ((0, 1), (1, 0)):
            clip = g.producer.get(mul.input[clip_at])
            if (clip is None or _op(clip) != "Clip" or len(clip.input) != 3
                    or g.scalar(clip.input[1]) != 0.0 or g.scalar(clip.input[2]) != 6.0
                    or g.sole_consumer(clip.output[0]) is not mul):
                continue
            add = g.producer.get(clip.input[0])
            x = mul.input[x_at]
            if (add is None or _op(add) != "Add" or g.sole_consumer(add.output[0]) is not clip
                    or g.scalar_operand(add) != (x, 3.0)):
                continue
            dead.update({id(add), id(clip), id(mul)})
            div.op_type = "HardSwish"
            div.input[:] = [x]
            replaced += 1
            break
    g.remove(dead)
    return replaced


def _conv_weights(g: _Graph, conv: onnx.NodeProto) -> tuple[np.ndarray, np.ndarray] | None:
    weights = g.constant(conv.input[1])
    if weights is None or weights.dtype != np.float32:
        return None
    bias = g.constant(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else np.zeros(weights.shape[0], np.float32)
    if bias is None:
        return None
    return weights.astype(np.float64), bias.astype(np.float64)


def _set_conv_weights(g: _Graph, conv: onnx.NodeProto, weights: np.ndarray, bias: np.ndarray) -> None:
    """New initializers of the conv's own (another conv may share the old ones)."""
    stem = f"fused.{conv.output[0]}"
    conv.input[:] = [conv.input[0], g.add_initializer(f"{stem}.weight", weights.astype(np.float32)),
                     g.add_initializer(f"{stem}.bias", bias.astype(np.float32))]


def _affine_pair(g: _Graph, mul: onnx.NodeProto | None) -> tuple[str, float, onnx.NodeProto, float] | None:
    """``Mul(x, c)`` whose sole consumer is ``Add(., d)``: (x, c, the Add, d)."""
    if mul is None or _op(mul) != "Mul":
        return None
    scaled = g.scalar_operand(mul)
    add = g.sole_consumer(mul.output[0])
    if scaled is None or add is None or _op(add) != "Add":
        return None
    shifted = g.scalar_operand(add)
    if shifted is None or shifted[0] != mul.output[0]:
        return None
    return scaled[0], scaled[1], add, shifted[1]


def _fold_affine_after_conv(g: _Graph) -> int:
    """``Add(Mul(Conv(x, W, b), c), d)`` -> ``Conv(x, cW, cb + d)``."""
    dead, folded = set(), 0
    for conv in list(g.graph.node):
        if _op(conv) != "Conv":
            continue
        mul = g.sole_consumer(conv.output[0])
        pair = _affine_pair(g, mul)
        current = _conv_weights(g, conv)
        if pair is None or current is None:
            continue
        _, scale, add, shift = pair
        weights, bias = current
        _set_conv_weights(g, conv, weights * scale, bias * scale + shift)
        dead.update({id(mul), id(add)})
        conv.output[:] = [add.output[0]]
        folded += 1
    g.remove(dead)
    return folded


def _pads_nothing(conv: onnx.NodeProto) -> bool:
    for attribute in conv.attribute:
        if attribute.name == "pads" and any(attribute.ints):
            return False
        if attribute.name == "auto_pad" and attribute.s not in (b"NOTSET", b"VALID"):
            return False
    return True


def _fold_affine_before_unpadded_conv(g: _Graph) -> int:
    """``Conv(Add(Mul(x, c), d), W, b)`` with no padding -> ``Conv(x, cW, b + d sum(W))``."""
    dead, folded = set(), 0
    for conv in list(g.graph.node):
        if _op(conv) != "Conv" or not _pads_nothing(conv):
            continue
        add = g.producer.get(conv.input[0])
        if add is None or _op(add) != "Add" or g.sole_consumer(add.output[0]) is not conv:
            continue
        shifted = g.scalar_operand(add)
        pair = _affine_pair(g, g.producer.get(shifted[0])) if shifted else None
        current = _conv_weights(g, conv)
        if pair is None or pair[2] is not add or current is None:
            continue
        x, scale, _, shift = pair
        weights, bias = current
        _set_conv_weights(g, conv, weights * scale, bias + shift * weights.sum(axis=tuple(range(1, weights.ndim))))
        dead.update({id(g.producer[shifted[0]]), id(add)})
        conv.input[0] = x
        folded += 1
    g.remove(dead)
    return folded


_SHAPE_KEEPING = ("HardSwish", "HardSigmoid", "Relu", "Sigmoid", "Clip")
"""Unary ops between a Conv and a scale/shift that keep the Conv's channel count."""


def _conv_channels(g: _Graph, name: str) -> int | None:
    """Dimension 1 of tensor ``name`` where it is a float32 Conv's output, maybe through
    shape-keeping activations (the weights' first dimension); None when not known."""
    node = g.producer.get(name)
    while node is not None and _op(node) in _SHAPE_KEEPING:
        node = g.producer.get(node.input[0])
    if node is None or _op(node) != "Conv":
        return None
    weights = g.constant(node.input[1])
    # float32 only: the parameters are written as float32, which another type's
    # BatchNormalization would not accept
    return None if weights is None or weights.dtype != np.float32 else int(weights.shape[0])


def _affine_as_batch_norm(g: _Graph) -> int:
    """A scalar ``Add(Mul(x, c), d)`` left over (before a padded Conv, or read by more than
    one node) -> ``BatchNormalization(x)`` with scale ``c``, bias ``d``, mean 0, variance 1 and
    epsilon 0: ``c x + d`` in one pass, which onnxruntime keeps in its blocked (NCHWc) layout
    instead of reordering to plain NCHW and back around two elementwise ops. Only where
    ``x`` is a Conv's output (through activations), whose channel count the per-channel
    parameters need."""
    dead, replaced = set(), 0
    for mul in list(g.graph.node):
        pair = _affine_pair(g, mul)
        if pair is None:
            continue
        x, scale, add, shift = pair
        channels = _conv_channels(g, x)
        if channels is None:
            continue
        stem = f"fused.{add.output[0]}"
        parameters = [g.add_initializer(f"{stem}.{part}", np.full(channels, value, np.float32))
                      for part, value in (("scale", scale), ("bias", shift), ("mean", 0.0), ("var", 1.0))]
        mul.op_type = "BatchNormalization"
        mul.input[:] = [x, *parameters]
        mul.output[:] = [add.output[0]]
        mul.attribute.append(helper.make_attribute("epsilon", 0.0))
        dead.add(id(add))
        replaced += 1
    g.remove(dead)
    return replaced


def _drop_unused(g: _Graph) -> None:
    """Constants, initializers and value_info the folds left without a reader (onnxruntime
    warns about each unused initializer when a session loads)."""
    graph = g.graph
    while True:
        read = {name for node in graph.node for name in node.input} | g.outputs
        unused = [n for n in graph.node if _op(n) == "Constant" and n.output[0] not in read]
        if not unused:
            break
        g.remove({id(n) for n in unused})
    read = {name for node in graph.node for name in node.input} | g.outputs
    kept = [i for i in graph.initializer if i.name in read]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    g.initializers = {i.name: i for i in graph.initializer}
    produced = {out for node in graph.node for out in node.output} | {i.name for i in graph.input}
    values = [v for v in graph.value_info if v.name in produced]
    del graph.value_info[:]
    graph.value_info.extend(values)
