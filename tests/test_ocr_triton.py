"""The OCR pipeline with its three models served by Triton gives exactly what
rapidocr-onnxruntime gives in process, on the repository's renamed models."""
from __future__ import annotations

import pytest
from rapidocr_onnxruntime import RapidOCR

from reading_frontend import ocr
from tests.test_ocr_pipeline import CASES, assert_same_as_rapidocr, squash


@pytest.fixture(scope="module")
def characters(paths) -> list[str]:
    return ocr.load_character_list(paths.assets / "ocr" / "ppocr_keys.txt")


@pytest.mark.parametrize("case", ["rgb_png", "rotated_180", "rgb_jpeg", "small_strip"])
def test_triton_ocr_matches_rapidocr(case, triton_models, characters):
    image_bytes, expected_lines = CASES[case]()
    lines = ocr.run_ocr(image_bytes, triton_models.run_image_model, characters)
    assert_same_as_rapidocr(lines, RapidOCR()(image_bytes)[0])
    assert [squash(line.text) for line in lines] == [squash(text) for text in expected_lines]
