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


# --------------------------------------------------------------------------- int8 variants

INT8 = {"ocr_det": {"ops": None, "pages": 4, "percentile": 99.999},
        "ocr_rec": {"ops": ("Conv", "MatMul"), "pages": 12, "percentile": None}}
"""Models with an ``int8`` variant -> how it is quantised: ``ops``, the op types statically
quantised (None: every op onnxruntime's QDQ quantiser handles: Conv, ConvTranspose, Add,
Mul, Resize, ...); ``pages``, how many generated pages calibrate it; ``percentile``, the
activation range (None: min/max).

Measured in process on the 2-core AMD EPYC (VNNI) against this module's fp32 graphs and
rapidocr (README "OCR speed"). ``ocr_det``: every op quantised is 1.5-1.9x faster, Convs
alone 1.2-1.4x. With min/max ranges it found fewer lines on harder pages (590 vs 599 on 48,
character accuracy 0.952 vs 0.972), also with its head kept in float; the 99.999th
percentile of each activation's magnitude (clipping rare outliers, finer steps for the
rest) kept them (598, 0.969). Percentile calibration keeps every activation in memory, so
4 pages (a page's resized size is fixed; recognition's lines vary in width, which the
histogram calibrator cannot take). ``ocr_rec`` keeps its elementwise ops (hardswish's
Add/Clip/Div/Mul, the affine blocks, layer norms) in float: quantising them as well dropped
and merged spaces ('Pagestorage quarterlytenant') and fell below rapidocr on the bench
pages, while Conv + MatMul alone (1.4x) read the same characters. It is sensitive to its
calibration: on 6 pages it misread one more character than rapidocr in 24 bench pages
(0.99942 vs 0.99971) and ended half the lines with a space read in the padding; on 12, the
same accuracy as fp32 and 7 of 120 lines with a trailing space; clean white pages in the mix
made it merge words ('Keysservicereport'). Dynamic quantisation of the MatMuls alone gained
nothing measurable: they are about 4% of recognition's time."""
CALIBRATION_SEED = 13
_CALIBRATION_WORDS = (
    "account balance due date amount paid customer number reference payment received delivery "
    "address street city postcode phone email order quantity price unit discount subtotal "
    "shipping handling signature approved manager department contract clause Monday April "
    "THE OFFICE Ltd. Inc. No. Tel. Fax. VAT").split()
_CALIBRATION_PUNCTUATION = ",.:;!?()-/%$#&+=@'\""


def _calibration_line(rng: np.random.Generator) -> str:
    tokens = []
    for _ in range(int(rng.integers(3, 8))):
        kind = rng.random()
        if kind < 0.45:
            tokens.append(str(rng.choice(_CALIBRATION_WORDS)))
        elif kind < 0.65:
            tokens.append(str(rng.integers(0, 99999)))
        elif kind < 0.8:
            tokens.append(f"{rng.integers(1, 9999)}.{rng.integers(0, 99):02d}")
        elif kind < 0.9:
            tokens.append(f"{rng.integers(1, 31):02d}/{rng.integers(1, 12):02d}/{rng.integers(1990, 2030)}")
        else:
            tokens.append(str(rng.choice(_CALIBRATION_WORDS)) + str(rng.choice(list(_CALIBRATION_PUNCTUATION))))
    return " ".join(tokens)


def calibration_pages(count: int, seed: int = CALIBRATION_SEED) -> list[np.ndarray]:
    """Generated BGR pages of printed lines: Pillow's built-in scalable font (present
    wherever Pillow has FreeType, so a build needs no system fonts), 16-48 px, regular and
    bold, dark grey on light grey, a slight rotation and noise. None of the bench's or the
    tests' pages."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    pages = []
    for _ in range(count):
        page = Image.new("RGB", (1200, 900), (int(rng.integers(225, 256)),) * 3)
        draw = ImageDraw.Draw(page)
        y = 40
        while True:
            size = int(rng.integers(16, 49))
            if y + size * 1.6 > page.height - 30:
                break
            font = ImageFont.load_default(size)
            text = _calibration_line(rng)
            while len(text) > 8 and draw.textlength(text, font=font) > page.width - 140:
                text = text.rsplit(" ", 1)[0]
            shade = int(rng.integers(0, 80))
            draw.text((int(rng.integers(30, 90)), y), text, fill=(shade,) * 3, font=font,
                      stroke_width=int(rng.random() < 0.3), stroke_fill=(shade,) * 3)
            y += int(size * rng.uniform(1.6, 2.4))
        page = page.rotate(float(rng.uniform(-2.0, 2.0)), resample=Image.BICUBIC, fillcolor=(240, 240, 240))
        array = np.asarray(page).astype(np.float32) + rng.normal(0, rng.uniform(2, 9), (page.height, page.width, 3))
        pages.append(np.ascontiguousarray(np.clip(array, 0, 255).astype(np.uint8)[:, :, ::-1]))
    return pages


def calibration_feeds(name: str, pages: list[np.ndarray], det_graph: Path | None = None
                      ) -> list[dict[str, np.ndarray]]:
    """What ``name`` is fed for these pages, as the frontend feeds it (reading_frontend.ocr):
    detection's resized uint8 page; recognition's lines as the served fp32 detection graph
    ``det_graph`` finds them, in the frontend's aspect-sorted batches of six padded to the
    widest, one row per run as the cpu target runs them."""
    import onnxruntime as ort

    from reading_frontend import ocr

    prepared = [ocr.prepare_image(page) for page in pages]
    det_inputs = [ocr.det_preprocess(p.image) for p in prepared]
    if name == "ocr_det":
        return [{"image": batch} for batch in det_inputs]
    det = ort.InferenceSession(str(det_graph), providers=["CPUExecutionProvider"])
    feeds = []
    for p, batch in zip(prepared, det_inputs):
        prob_map = det.run(None, {"image": batch})[0]
        crops = ocr.crop_text_regions(p.image, ocr.det_postprocess(prob_map[0, 0], p.image.shape[:2]))
        for indices in ocr.aspect_sorted_batches(crops, ocr.OcrParams().rec_batch_num):
            lines = ocr.rec_preprocess([crops[i] for i in indices])
            feeds.extend({"image": lines[i:i + 1]} for i in range(len(lines)))
    return feeds


def quantize_int8(name: str, fp32: Path, dst: Path, det_source: Path | None = None) -> None:
    """Write ``name``'s ``int8`` variant of the served graph ``fp32``: onnxruntime's static
    QDQ quantisation, int8 weights per output channel, uint8 activations with fixed scales
    from min/max over the calibration feeds (fixed scales: a row's output never depends on
    the rest of its batch). ``det_source`` is the packaged detection graph, which finds the
    lines recognition calibrates on. The scales come from fp32 inference on this CPU, so a
    build on another CPU may differ in the last bits of a scale (the cache is per build)."""
    import tempfile

    from onnx import version_converter
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if name not in INT8:
        raise BuildError(f"{name} has no int8 variant", "see INT8 in percolate_models/ocr_graphs.py")
    settings = INT8[name]
    with tempfile.TemporaryDirectory(prefix=f"{name}-int8-") as scratch:
        work = Path(scratch)
        det_graph = None
        if name == "ocr_rec":
            if det_source is None:
                raise BuildError("ocr_rec's int8 variant needs the detection graph to calibrate",
                                 "pass det_source (build.py does)")
            from .catalog import OCR_DET

            det_graph = work / "det_fp32.onnx"
            served_onnx(OCR_DET, det_source, det_graph)
        feeds = calibration_feeds(name, calibration_pages(settings["pages"]), det_graph)
        prepared = work / "prepared.onnx"
        # onnxruntime's basic optimisation (Conv+BatchNorm folded) without symbolic shape
        # inference, which fails on these graphs; per-channel DequantizeLinear needs opset 13
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        onnx.save(version_converter.convert_version(onnx.load(str(prepared)), 13), str(prepared))

        class Feeds(CalibrationDataReader):
            def __init__(self):
                self.remaining = iter(feeds)

            def get_next(self):
                return next(self.remaining, None)

        ops, percentile = settings["ops"], settings["percentile"]
        quantize_static(str(prepared), str(dst), Feeds(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax if percentile is None else
                        CalibrationMethod.Percentile,
                        extra_options={} if percentile is None else {"CalibPercentile": percentile},
                        **({} if ops is None else {"op_types_to_quantize": list(ops)}))
