"""reading_frontend.ocr must give exactly what RapidOCR gives on the same models.

Models run through local onnxruntime sessions behind the InferFn interface, the
way the Triton client calls them, as the repository serves them (the packaged graphs
renamed and edited by ``percolate_models/ocr_graphs.py``, written here by the build's own
function); RapidOCR itself, on the packaged graphs, is the reference.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import rapidocr_onnxruntime
from PIL import Image, ImageDraw, ImageFont
from rapidocr_onnxruntime import RapidOCR

from percolate_models import ocr_graphs
from percolate_models.catalog import model_by_name
from reading_frontend import ocr

FONT_PATH = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
MODELS_DIR = Path(rapidocr_onnxruntime.__file__).parent / "models"
MODEL_FILES = {
    ocr.DET_MODEL: "ch_PP-OCRv4_det_infer.onnx",
    ocr.CLS_MODEL: "ch_ppocr_mobile_v2.0_cls_infer.onnx",
    ocr.REC_MODEL: "ch_PP-OCRv4_rec_infer.onnx",
}
PAGE_LINES = [
    "Percolate reads documents quickly.",
    "Models are served by Triton.",
    "Hello World 2024",
    "Invoice total: 1234.56 EUR",
    "Reading order matters",
]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def packaged() -> dict[str, ort.InferenceSession]:
    """The graphs as rapidocr ships them (input ``x``, all 6625 classes out of rec)."""
    return {
        name: ort.InferenceSession(str(MODELS_DIR / file), providers=["CPUExecutionProvider"])
        for name, file in MODEL_FILES.items()
    }


@pytest.fixture(scope="module")
def sessions(tmp_path_factory) -> dict[str, ort.InferenceSession]:
    """The graphs as the repository serves them, written by the build's function."""
    folder = tmp_path_factory.mktemp("served")
    served = {}
    for name in MODEL_FILES:
        ocr_graphs.served_onnx(model_by_name(name), MODELS_DIR / MODEL_FILES[name], folder / f"{name}.onnx")
        served[name] = ort.InferenceSession(str(folder / f"{name}.onnx"), providers=["CPUExecutionProvider"])
    return served


@pytest.fixture(scope="module")
def infer(sessions) -> ocr.InferFn:
    def run(model_name: str, batch: np.ndarray):
        session = sessions[model_name]
        outputs = tuple(session.run(None, {session.get_inputs()[0].name: batch}))
        return outputs[0] if len(outputs) == 1 else outputs  # as ocr.InferFn

    return run


@pytest.fixture(scope="module")
def characters(sessions) -> list[str]:
    metadata = sessions[ocr.REC_MODEL].get_modelmeta().custom_metadata_map["character"]
    return ocr.character_list_from_onnx_metadata(metadata)


@pytest.fixture(scope="module")
def rapid() -> RapidOCR:
    return RapidOCR()


# --------------------------------------------------------------------------- test images


def draw_page(lines: list[str], size=(1200, 800), font_size=44, mode="RGB") -> Image.Image:
    image = Image.new(mode, size, "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.truetype(FONT_PATH, font_size)
    for row, text in enumerate(lines):
        draw.text((60, 70 + row * 140), text, font=font, fill="black")
    return image


def encode(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def rgb_png():
    return encode(draw_page(PAGE_LINES)), PAGE_LINES


def rotated_180():
    return encode(draw_page(PAGE_LINES).rotate(180)), PAGE_LINES[::-1]


def small_strip():
    """Short enough to be upscaled and wide enough to be letterboxed."""
    image = Image.new("RGB", (320, 28), "white")
    font = ImageFont.truetype(FONT_PATH, 20)
    ImageDraw.Draw(image).text((6, 2), "Small receipt 42", font=font, fill="black")
    return encode(image), ["Small receipt 42"]


def wide_page():
    """Longer than max_side_len, so it is downscaled first."""
    lines = ["Wide pages get scaled down before detection.", "Second line of the wide page"]
    return encode(draw_page(lines, size=(2600, 500), font_size=64)), lines


def grayscale_png():
    return encode(draw_page(PAGE_LINES, mode="L")), PAGE_LINES


def rgb_jpeg():
    return encode(draw_page(PAGE_LINES), "JPEG", quality=90), PAGE_LINES


def rgba_png():
    return encode(draw_page(PAGE_LINES, mode="RGBA")), PAGE_LINES


CASES: dict[str, Callable[[], tuple[bytes, list[str]]]] = {
    "rgb_png": rgb_png,
    "rotated_180": rotated_180,
    "small_strip": small_strip,
    "wide_page": wide_page,
    "grayscale_png": grayscale_png,
    "rgb_jpeg": rgb_jpeg,
    "rgba_png": rgba_png,
}


# --------------------------------------------------------------------------- helpers


def assert_same_as_rapidocr(lines: list[ocr.OcrLine], reference) -> None:
    reference = reference or []
    assert [line.text for line in lines] == [text for _, text, _ in reference]
    for line, (box, _, score) in zip(lines, reference):
        assert len(line.box) == 4
        np.testing.assert_allclose(np.array(line.box), np.array(box), atol=1.0)
        assert line.confidence == pytest.approx(score, abs=1e-4)


def squash(text: str) -> str:
    return "".join(text.split())


# --------------------------------------------------------------------------- pipeline vs RapidOCR


@pytest.mark.parametrize("case", list(CASES))
def test_matches_rapidocr_and_reads_known_text(case, infer, characters, rapid):
    image_bytes, expected_lines = CASES[case]()

    lines = ocr.run_ocr(image_bytes, infer, characters)

    assert_same_as_rapidocr(lines, rapid(image_bytes)[0])
    assert [squash(line.text) for line in lines] == [squash(text) for text in expected_lines]


def test_palette_image_is_read_as_its_colours(infer, characters, rapid):
    """RapidOCR reads palette indices as gray levels; we convert through Pillow instead."""
    palette = draw_page(PAGE_LINES).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)

    lines = ocr.run_ocr(encode(palette), infer, characters)

    assert_same_as_rapidocr(lines, rapid(encode(palette.convert("RGB")))[0])
    assert [squash(line.text) for line in lines] == [squash(text) for text in PAGE_LINES]


def test_blank_image_has_no_lines(infer, characters, rapid):
    blank = encode(Image.new("RGB", (400, 300), "white"))

    assert ocr.run_ocr(blank, infer, characters) == []
    assert rapid(blank)[0] is None


def test_boxes_are_clockwise_from_top_left(infer, characters):
    lines = ocr.run_ocr(rgb_png()[0], infer, characters)

    for line in lines:
        (x0, y0), (x1, y1), (x2, y2), (x3, y3) = line.box
        assert x0 < x1 and y1 < y2 and x3 < x2 and y0 < y3


# --------------------------------------------------------------------------- decoding guards


@pytest.mark.parametrize(
    "payload",
    [b"", b"definitely not an image", encode(draw_page(["x"]))[:200]],
    ids=["empty", "garbage", "truncated_png"],
)
def test_undecodable_bytes_raise_value_error(payload, infer, characters):
    with pytest.raises(ValueError, match="cannot decode image"):
        ocr.run_ocr(payload, infer, characters)


def test_default_pixel_limit_rejects_decompression_bomb():
    bomb = encode(Image.new("1", (10_000, 4_001)))

    with pytest.raises(ValueError, match="40000000"):
        ocr.decode_image(bomb)


def test_pixel_limit_is_a_parameter(infer, characters):
    params = ocr.OcrParams(max_image_pixels=1_000)

    with pytest.raises(ValueError, match="limit of 1000 pixels"):
        ocr.run_ocr(rgb_png()[0], infer, characters, params)


def test_pillow_bomb_error_becomes_value_error(monkeypatch):
    image_bytes = rgb_png()[0]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)

    with pytest.raises(ValueError, match=r"more than 2000 pixels .*limit of 1000000000 pixels"):
        ocr.decode_image(image_bytes, max_pixels=10**9)


def test_decode_image_returns_bgr():
    red = encode(Image.new("RGB", (40, 40), (255, 0, 0)))

    image = ocr.decode_image(red)

    assert image.dtype == np.uint8 and image.shape == (40, 40, 3)
    assert tuple(image[0, 0]) == (0, 0, 255)


# --------------------------------------------------------------------------- pieces


def test_load_character_list_reads_metadata_file(tmp_path, sessions, characters):
    path = tmp_path / "keys.txt"
    metadata = sessions[ocr.REC_MODEL].get_modelmeta().custom_metadata_map["character"]
    path.write_text(metadata, encoding="utf-8")

    assert ocr.load_character_list(path) == characters
    assert len(characters) + 2 == 6625


def test_ctc_decode_collapses_repeats_and_drops_blanks():
    characters = ["a", "b"]  # classes: 0 blank, 1 "a", 2 "b", 3 space
    steps = [1, 1, 0, 1, 2, 3, 2]
    probs = np.full((1, len(steps), 4), 0.05, dtype=np.float32)
    for t, cls in enumerate(steps):
        probs[0, t, cls] = 0.5 + t / 100

    ((text, confidence),) = ocr.ctc_decode(probs, characters)

    assert text == "aab b"
    kept = [0, 3, 4, 5, 6]
    assert confidence == pytest.approx(np.mean([0.5 + t / 100 for t in kept]))


def test_ctc_decode_of_all_blanks_is_empty_with_zero_confidence():
    probs = np.zeros((1, 5, 4), dtype=np.float32)
    probs[..., 0] = 1.0

    assert ocr.ctc_decode(probs, ["a", "b"]) == [("", 0.0)]


def test_ctc_decode_rejects_mismatched_dictionary():
    with pytest.raises(ValueError, match="classes"):
        ocr.ctc_decode(np.zeros((1, 3, 10), dtype=np.float32), ["a"])


def test_polygon_measures_match_shapely():
    """The unclip distance must equal RapidOCR's shapely-based one bit for bit."""
    Polygon = pytest.importorskip("shapely.geometry").Polygon
    rng = np.random.default_rng(0)
    for _ in range(2000):
        centre, sides, angle = rng.uniform(0, 2000, 2), rng.uniform(1, 500, 2), rng.uniform(-90, 90)
        box = cv2.boxPoints((tuple(centre), tuple(sides), angle))
        polygon = Polygon(box)

        assert ocr._polygon_area_and_perimeter(box) == (polygon.area, polygon.length)


def test_rec_preprocess_pads_batch_to_widest_crop():
    crops = [np.zeros((30, 60, 3), np.uint8), np.zeros((30, 600, 3), np.uint8)]

    batch = ocr.rec_preprocess(crops)

    assert batch.shape == (2, 3, 48, 960) and batch.dtype == np.float32
    assert np.all(batch[0, :, :, 96:] == 0) and np.all(batch[0, :, :, :96] == -1)


# --------------------------------------------------------------------------- served graphs


def test_served_det_normalises_bit_for_bit_as_upstream(sessions, packaged):
    """uint8 HWC in, normalised in the graph: the same probability map, bit for bit."""
    image = ocr.decode_image(rgb_jpeg()[0])  # JPEG: every grey level occurs
    batch = ocr.det_preprocess(ocr.prepare_image(image).image)
    assert batch.dtype == np.uint8 and batch.shape[0] == 1 and batch.shape[3] == 3

    (served,) = sessions[ocr.DET_MODEL].run(None, {"image": batch})
    (reference,) = packaged[ocr.DET_MODEL].run(None, {"x": ocr.det_normalize(batch)})

    np.testing.assert_array_equal(served, reference)


def test_det_normalize_is_upstreams_normalisation():
    """det_normalize is rapidocr's DetPreProcess normalisation, transposed to NCHW."""
    from rapidocr_onnxruntime.ch_ppocr_det.utils import DetPreProcess

    pixels = np.random.default_rng(1).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    upstream_step = DetPreProcess()
    upstream = upstream_step.permute(upstream_step.normalize(pixels))[np.newaxis].astype(np.float32)

    np.testing.assert_array_equal(ocr.det_normalize(pixels[np.newaxis]), upstream)


def test_served_rec_returns_best_class_and_its_probability(sessions, packaged, characters):
    """Class indices come back as int32, apart from the probabilities: never as floats
    (the gpu target's TensorRT FP16 holds integers exactly only up to 2048, and the Latin
    letters sit above it: 't' is class 3333, 'e' 3332)."""
    crops = [ocr.decode_image(encode(draw_page([text], size=(900, 120))))[40:110, 40:860]
             for text in PAGE_LINES[:3]]
    batch = ocr.rec_preprocess(crops)

    best_class, best_probability = sessions[ocr.REC_MODEL].run(None, {"image": batch})
    (probs,) = packaged[ocr.REC_MODEL].run(None, {"x": batch})

    assert [o.name for o in sessions[ocr.REC_MODEL].get_outputs()] == ["best_class", "best_probability"]
    assert best_class.dtype == np.int32 and best_probability.dtype == np.float32
    assert best_class.shape == best_probability.shape == probs.shape[:2]
    assert best_class.max() > 2048  # the lines hold classes fp16 could not carry
    np.testing.assert_array_equal(best_class, probs.argmax(axis=2))
    np.testing.assert_array_equal(best_probability, probs.max(axis=2))
    assert (ocr.ctc_decode_best(best_class, best_probability, characters)
            == ocr.ctc_decode(probs, characters))


def test_served_graphs_keep_uint8_and_integer_classes_out_of_float_layers(sessions, tmp_path):
    """For TensorRT (gpu target): det's uint8 input goes straight into a Cast (TensorRT
    supports uint8 little beyond that), and rec's class index is an integer output."""
    det = tmp_path / "det.onnx"
    ocr_graphs.served_onnx(model_by_name(ocr.DET_MODEL), MODELS_DIR / MODEL_FILES[ocr.DET_MODEL], det)
    graph = onnx.load(str(det)).graph
    consumers = [node for node in graph.node if "image" in node.input]
    assert [node.op_type for node in consumers] == ["Cast"]
    rec_outputs = {o.name: o.type for o in sessions[ocr.REC_MODEL].get_outputs()}
    assert rec_outputs == {"best_class": "tensor(int32)", "best_probability": "tensor(float)"}


@pytest.mark.parametrize("bad", [7, -1])
def test_ctc_decode_best_rejects_a_class_beyond_the_dictionary(bad):
    indices = np.array([[1, bad, 2]], dtype=np.int32)
    probs = np.array([[0.9, 0.8, 0.7]], dtype=np.float32)

    with pytest.raises(ValueError, match=f"class {bad} "):
        ocr.ctc_decode_best(indices, probs, ["a", "b"])
