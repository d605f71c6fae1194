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

Smoothing (SmoothQuant, Xiao et al. 2023). A few channels of this model's activations are
far larger than the rest, in every token, and most of all in [CLS] and [SEP]; with one scale
per token they take the whole int8 range and the other channels keep only a few levels. A
short text ("ok", "tax return") is mostly [CLS] and [SEP] after mean pooling, so plain
per-token int8 fell to cosine 0.992 on single words (0.997 on sentences). Each activation is
divided by a constant per input channel ``s`` (one ``Mul``) and the weight rows are
multiplied by it, so the product is unchanged but the outliers move into the per-channel
weight scales: single words 0.9965, sentences 0.9986, at the same speed. ``s`` is fixed at
build time from ``CALIBRATION_TEXTS`` and rounded to a power of two (exact scaling; 0.001
less on single words than unrounded, and a rebuild on another CPU gives the same file),
so rows still never see each other.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .export import MS_DOMAIN, use_contrib_ops

ZERO_POINT = 128
"""uint8 activations centred on 128: symmetric int8 values in onnxruntime's u8s8 layout."""
QMAX = 127.0
TINY = 1e-12
"""Floor for a row's scale, so an all-zero row (never seen in practice) divides cleanly."""
SMOOTH_ALPHA = 0.5
"""How much of an activation channel's range moves into the weights (SmoothQuant's usual
value; 0.3 kept most of the short-text loss, 0.85 moved too much and hurt the weights)."""
SMOOTH_RANGE = (2.0 ** -3, 2.0 ** 4)
"""Bounds of a smoothing factor. A channel the calibration texts leave near zero would get a
tiny factor, i.e. be multiplied by its inverse in every row it is non-zero in and take that
row's int8 range; this model's factors all lie in 2^-2..2^3, so the bounds change nothing
here and cap the damage an uncalibrated channel can do at a factor of 8."""

CALIBRATION_TEXTS = [
    "Hey", "note", "a", "see you", "1999", "Tokyo", "merci", "phone bill", "Dr. Jones", "weather",
    "Remind me to call the plumber about the leaking kitchen tap on Thursday morning.",
    "The quarterly report shows revenue grew by 12 percent while costs stayed flat.",
    "We walked along the harbour until the fog lifted and the ferries started running again.",
    "Can you send me the slides from yesterday's design review?",
    "Mitochondria are the organelles that produce most of a cell's chemical energy.",
    "Der Zug nach München hatte heute wieder zwanzig Minuten Verspätung.",
    "ERROR 503: upstream connect error or disconnect/reset before headers",
    "for i in range(10): print(i * i)",
    "She said the meeting was moved, but nobody told the team in Singapore, so they waited an hour "
    "on the call, then wrote a long and slightly angry email to everyone on the invite list.",
    "Order #48213 shipped on 2023-11-04 via DHL, tracking 7731 0042 9981.",
]
"""Texts the smoothing factors are measured on (a channel's largest value over all their
tokens): short and long, words, numbers, code, another language; none of them tokenises
like a text of the accuracy sets in ``accuracy.py`` or the tune's probes, so the floors are
measured on unseen texts (a test checks the token ids)."""


def quantize_per_token(src: Path, dst: Path, calibration: list[dict[str, np.ndarray]] | None = None,
                       alpha: float = SMOOTH_ALPHA) -> int:
    """Write ``src`` with every weight MatMul quantised per token and per channel, smoothed
    with factors measured on ``calibration`` (feeds of ``src``; none: unsmoothed); returns
    how many MatMuls were rewritten."""
    smooth = smoothing_factors(src, calibration, alpha) if calibration else {}
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
        source = x
        if x in smooth:
            inv = const(f"{p}/inv_smooth", (1.0 / smooth[x]).astype(np.float32))
            new_nodes.append(helper.make_node("Mul", [x, inv], [f"{p}/x_smooth"]))
            x = f"{p}/x_smooth"
        new_nodes.extend([
            helper.make_node("ReduceMax", [x, axis_last], [f"{p}/max"], keepdims=1),
            helper.make_node("ReduceMin", [x, axis_last], [f"{p}/min"], keepdims=1),
            helper.make_node("Neg", [f"{p}/min"], [f"{p}/neg_min"]),
            helper.make_node("Max", [f"{p}/max", f"{p}/neg_min", tiny], [f"{p}/absmax"]),
            helper.make_node("Mul", [f"{p}/absmax", inv_qmax], [f"{p}/scale"]),
            helper.make_node("Div", [x, f"{p}/scale"], [f"{p}/x_scaled"]),
            helper.make_node("QuantizeLinear", [f"{p}/x_scaled", one, zero_point], [f"{p}/x_q"]),
        ])
        quantised_inputs[source] = (f"{p}/x_q", f"{p}/scale")
        return quantised_inputs[source]

    for node in graph.node:
        w = weights.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
        if w is None or len(w.dims) != 2:
            new_nodes.append(node)
            continue
        weight = numpy_helper.to_array(w).astype(np.float32)
        if node.input[0] in smooth:
            weight = weight * smooth[node.input[0]][:, None]
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
    use_contrib_ops(model)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return count


def calibration_feeds(tokenizer_json: Path) -> list[dict[str, np.ndarray]]:
    """``CALIBRATION_TEXTS`` as sentence-embedding feeds, one text per feed (no padding)."""
    from reading_frontend.text import TextTokenizer

    tokenizer = TextTokenizer(tokenizer_json)
    feeds = []
    for text in CALIBRATION_TEXTS:
        batch = tokenizer.encode([text], truncate=True)
        feeds.append({"input_ids": batch.input_ids.astype(np.int64),
                      "attention_mask": batch.attention_mask.astype(np.int64)})
    return feeds


def smoothing_factors(src: Path, feeds: list[dict[str, np.ndarray]], alpha: float = SMOOTH_ALPHA
                      ) -> dict[str, np.ndarray]:
    """Per input channel factors ``s`` for each weight MatMul's activation (SmoothQuant):
    ``x / s`` and ``s * W`` leave the product unchanged but move the activation's outlier
    channels into the weights, ``s = max|x|^alpha / max|W|^(1 - alpha)`` over ``feeds``."""
    import onnxruntime as ort

    model = onnx.load(str(src))
    weights = {t.name: t for t in model.graph.initializer}
    w_max: dict[str, np.ndarray] = {}
    for node in model.graph.node:
        w = weights.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
        if w is None or len(w.dims) != 2:
            continue
        row_max = np.abs(numpy_helper.to_array(w)).max(axis=1)
        x = node.input[0]
        w_max[x] = np.maximum(w_max[x], row_max) if x in w_max else row_max
    names = sorted(w_max)
    known = {o.name for o in model.graph.output}
    model.graph.output.extend([helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None)
                               for n in names if n not in known])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    a_max = {n: np.zeros(w_max[n].shape, np.float32) for n in names}
    for feed in feeds:
        mask = feed.get("attention_mask")  # padding tokens do not count
        for n, value in zip(names, session.run(names, feed)):
            rows = value[mask.astype(bool)] if mask is not None and value.shape[:2] == mask.shape \
                else value.reshape(-1, value.shape[-1])
            a_max[n] = np.maximum(a_max[n], np.abs(rows).max(axis=0))
    factors = {n: np.clip(np.maximum(a_max[n], 1e-5) ** alpha / np.maximum(w_max[n], 1e-5) ** (1 - alpha),
                          *SMOOTH_RANGE) for n in names}
    # powers of two: x / s and s * W are then exact in float, and a last-bit difference in
    # the calibration activations (another CPU's kernels) rarely changes the built file
    return {n: np.exp2(np.rint(np.log2(f))).astype(np.float32) for n, f in factors.items()}
