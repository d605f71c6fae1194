"""The OCR pipeline with its three models served by Triton reads what rapidocr-onnxruntime
reads in process: the same text, boxes within a pixel, confidences within 1e-4. Triton serves
the variant the build's tune installed (fused on the machines measured, whose sums round in
another order than the packaged graphs'; fp32 is rapidocr's arithmetic bit for bit)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
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


def test_served_rec_runs_lines_one_at_a_time_with_the_batchs_output(triton_models, triton_client):
    """The cpu target runs ``ocr_rec``'s rows one at a time (faster on CPU); a batch
    gathered from several lines, or from several tenants' requests, must still come back
    bit for bit as each line run alone. The batch runs two lines at once on one-thread
    sessions (``parallel_rows``) and the fifth on the main session with two threads, as
    does a line alone."""
    config = triton_client.get_model_config("ocr_rec", as_json=True)["config"]
    assert config["parameters"]["max_rows_per_run"]["string_value"] == "1"
    assert config["parameters"]["parallel_rows"]["string_value"] == "auto"

    image_bytes, _ = CASES["rgb_png"]()
    image = ocr.decode_image(image_bytes)
    prepared = ocr.prepare_image(image)
    prob_map = triton_models.run_image_model(ocr.DET_MODEL, ocr.det_preprocess(prepared.image))
    crops = ocr.crop_text_regions(prepared.image, ocr.det_postprocess(prob_map[0, 0], prepared.image.shape[:2]))
    batch = ocr.rec_preprocess(crops)
    assert len(batch) == 5

    together = triton_models.run_image_model(ocr.REC_MODEL, batch)
    alone = [triton_models.run_image_model(ocr.REC_MODEL, batch[i:i + 1]) for i in range(len(batch))]

    # The classes must match exactly. The probabilities have matched bit for bit on this CPU
    # (MLAS splits a convolution's work by output, so 1 and 2 threads sum alike), but onnxruntime
    # does not promise that across thread counts, so another CPU gets a last-bit tolerance.
    np.testing.assert_array_equal(together[0], np.concatenate([one[0] for one in alone]), err_msg="best_class")
    np.testing.assert_allclose(together[1], np.concatenate([one[1] for one in alone]), rtol=0, atol=1e-6,
                               err_msg="best_probability")


def test_served_det_gives_each_page_of_a_batch_its_own_output(triton_models, triton_client):
    """Two pages in one ``ocr_det`` run go one after the other through the main session
    (``max_rows_per_run`` 1; no ``parallel_rows``: it did not win for det, catalog.py);
    each comes back bit for bit as that page alone."""
    config = triton_client.get_model_config("ocr_det", as_json=True)["config"]
    assert config["parameters"]["max_rows_per_run"]["string_value"] == "1"
    assert "parallel_rows" not in config["parameters"]
    pages = []
    for case in ("rgb_png", "rotated_180"):
        prepared = ocr.prepare_image(ocr.decode_image(CASES[case]()[0]))
        pages.append(ocr.det_preprocess(prepared.image))
    assert pages[0].shape == pages[1].shape  # one batch needs one shape
    together = triton_models.run_image_model(ocr.DET_MODEL, np.concatenate(pages))
    alone = [triton_models.run_image_model(ocr.DET_MODEL, page) for page in pages]
    np.testing.assert_array_equal(together, np.concatenate(alone))


def test_served_models_ignore_the_developers_ort_overrides(triton):
    """The Triton fixture starts the server without ``PERCOLATE_ORT_*``: a developer's
    shell with, say, ``PERCOLATE_ORT_PARALLEL_ROWS=0`` would otherwise turn the row
    pairing off under the tests above without a word (conftest.py)."""
    environ = Path(f"/proc/{triton.process.pid}/environ").read_bytes().split(b"\0")
    assert [v for v in environ if v.startswith(b"PERCOLATE_ORT_")] == []
