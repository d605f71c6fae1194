"""int8 with one activation scale per token: fast like dynamic int8, and batch independent.

onnxruntime's ``quantize_dynamic`` inserts ``DynamicQuantizeLinear``, which picks one
scale and zero point for the whole activation tensor, i.e. for every text in the Triton
batch: a tenant's embedding then shifts with whatever other tenants' texts (and padding)
were batched with it (served vs alone agreed only at cosine 0.991). This rewrite gives each
token (one row of the activation) its own symmetric scale, so a row is quantised from its
own values alone; the integer matmul is exact, and the float scaling after it is per
element, so a text's embedding no longer depends on its neighbours in the batch.

For every ``MatMul`` whose right operand is a 2-D weight ``W`` [K, N]:

* weights: int8, symmetric, one scale per output column (``w_scale[n] = max|W[:, n]| / 127``);
* activations ``x`` [..., K] (shared by the MatMuls that read the same tensor, e.g. q/k/v):
  ``s = max|x| / 127`` over K for each row, quantised by a per-axis ``QuantizeLinear`` to
  uint8 around the fixed zero point 128, which is onnxruntime's fast u8s8 (VNNI) path;
* ``MatMulIntegerToFloat`` (com.microsoft) gives ``(x_q - 128) @ W_q * w_scale`` in float,
  and one ``Mul`` by the row scales ``s`` finishes it.

Attention's activation-by-activation MatMuls stay fp32.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

ZERO_POINT = 128
"""uint8 activations centred on 128: symmetric int8 values in onnxruntime's u8s8 layout."""
QMAX = 127.0
TINY = 1e-12
"""Floor for a row's scale, so an all-zero row (never seen in practice) divides cleanly."""
MS_DOMAIN = "com.microsoft"


def quantize_per_token(src: Path, dst: Path) -> int:
    """Write ``src`` with every weight MatMul quantised per token and per channel; returns
    how many MatMuls were rewritten."""
    model = onnx.load(str(src))
    graph = model.graph
    weights = {t.name: t for t in graph.initializer}
    consumers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1

    new_nodes: list[onnx.NodeProto] = []
    new_inits: list[onnx.TensorProto] = []
    quantised_inputs: dict[str, tuple[str, str]] = {}  # x -> (x_q, its row scales [..., 1])
    dropped: set[str] = set()
    count = 0

    def const(name: str, array: np.ndarray) -> str:
        new_inits.append(numpy_helper.from_array(array, name))
        return name

    one = const("pt_q/one", np.array(1.0, np.float32))
    zero_point = const("pt_q/zero_point", np.array(ZERO_POINT, np.uint8))
    inv_qmax = const("pt_q/inv_qmax", np.array(1.0 / QMAX, np.float32))
    tiny = const("pt_q/tiny", np.array(TINY, np.float32))
    axis_last = const("pt_q/axis_last", np.array([-1], np.int64))

    def quantise_rows(x: str, tag: str) -> tuple[str, str]:
        """Nodes that quantise ``x`` [..., K] per row; built once per activation tensor."""
        if x in quantised_inputs:
            return quantised_inputs[x]
        p = f"pt_q/{tag}"
        new_nodes.extend([
            helper.make_node("ReduceMax", [x, axis_last], [f"{p}/max"], keepdims=1),
            helper.make_node("ReduceMin", [x, axis_last], [f"{p}/min"], keepdims=1),
            helper.make_node("Neg", [f"{p}/min"], [f"{p}/neg_min"]),
            helper.make_node("Max", [f"{p}/max", f"{p}/neg_min", tiny], [f"{p}/absmax"]),
            helper.make_node("Mul", [f"{p}/absmax", inv_qmax], [f"{p}/scale"]),
            helper.make_node("Div", [x, f"{p}/scale"], [f"{p}/x_scaled"]),
            helper.make_node("QuantizeLinear", [f"{p}/x_scaled", one, zero_point], [f"{p}/x_q"]),
        ])
        quantised_inputs[x] = (f"{p}/x_q", f"{p}/scale")
        return quantised_inputs[x]

    for node in graph.node:
        w = weights.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
        if w is None or len(w.dims) != 2:
            new_nodes.append(node)
            continue
        weight = numpy_helper.to_array(w).astype(np.float32)
        k, n = weight.shape
        w_scale = np.maximum(np.abs(weight).max(axis=0), TINY) / QMAX
        w_q = np.clip(np.rint(weight / w_scale), -QMAX, QMAX).astype(np.int8)
        p = f"pt_q/mm{count}"
        x_q, row_scale = quantise_rows(node.input[0], f"x{len(quantised_inputs)}")
        wq_name = const(f"{p}/w_q", w_q)
        ws_name = const(f"{p}/w_scale", w_scale.astype(np.float32))
        new_nodes.extend([
            helper.make_node("MatMulIntegerToFloat", [x_q, wq_name, one, ws_name, zero_point],
                             [f"{p}/y_unscaled"], domain=MS_DOMAIN),
            helper.make_node("Mul", [f"{p}/y_unscaled", row_scale], [node.output[0]]),
        ])
        consumers[w.name] -= 1
        if consumers[w.name] == 0:
            dropped.add(w.name)
        count += 1

    kept = [t for t in graph.initializer if t.name not in dropped]
    del graph.initializer[:]
    graph.initializer.extend(kept + new_inits)
    del graph.node[:]
    graph.node.extend(new_nodes)
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return count
