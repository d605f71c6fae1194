"""PP-OCRv4 text detection + recognition, numerically matching rapidocr_onnxruntime 1.4.4.

Every pre- and post-processing step reproduces RapidOCR's default configuration
(including its rounding, sorting and dtype quirks), so results are identical to
``RapidOCR()(image)`` when the same ONNX models run. Only the model calls are
delegated to an injected ``InferFn`` so they can execute remotely (Triton).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from os import PathLike
from typing import Callable, Sequence

import cv2
import numpy as np
import pyclipper
from PIL import Image

InferFn = Callable[[str, np.ndarray], np.ndarray | tuple[np.ndarray, ...]]
"""``infer(model_name, batch) -> the model's output`` (its outputs in catalog order, as a
tuple, when it has several), as the repository serves them
(``percolate_models/ocr_graphs.py``): ``ocr_det`` takes uint8 [N, H, W, 3] BGR and
normalises in the graph; ``ocr_cls`` and ``ocr_rec`` take float32 NCHW; ``ocr_rec``
returns (``best_class`` int32 [N, T], ``best_probability`` float32 [N, T]) per step, not
all 6625 classes."""

DET_MODEL = "ocr_det"
CLS_MODEL = "ocr_cls"
REC_MODEL = "ocr_rec"

DEFAULT_MAX_IMAGE_PIXELS = 40_000_000

Box = tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class OcrLine:
    """One recognised text line; ``box`` is clockwise from top-left in original pixels."""

    text: str
    confidence: float
    box: Box


@dataclass(frozen=True)
class OcrParams:
    """RapidOCR 1.4.4 defaults (config.yaml), plus our decompression-bomb limit."""

    text_score: float = 0.5
    min_height: int = 30
    width_height_ratio: float = 8
    max_side_len: int = 2000
    min_side_len: int = 30
    det_limit_side_len: int = 736
    det_thresh: float = 0.3
    det_box_thresh: float = 0.5
    det_max_candidates: int = 1000
    det_unclip_ratio: float = 1.6
    det_use_dilation: bool = True
    cls_image_shape: tuple[int, int, int] = (3, 48, 192)
    cls_batch_num: int = 6
    cls_thresh: float = 0.9
    rec_image_shape: tuple[int, int, int] = (3, 48, 320)
    rec_batch_num: int = 6
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS


# --------------------------------------------------------------------------- characters


def character_list_from_onnx_metadata(text: str) -> list[str]:
    """Split the rec model's "character" metadata the way RapidOCR does (str.splitlines)."""
    return text.splitlines()


def load_character_list(path: str | PathLike[str]) -> list[str]:
    """Read a dictionary file holding the verbatim "character" metadata, one char per line."""
    with open(path, encoding="utf-8", newline="") as handle:
        return character_list_from_onnx_metadata(handle.read())


# --------------------------------------------------------------------------- decoding


class UnreadableImageError(ValueError):
    """The bytes are not an image we can decode, or its shape cannot be OCR'd."""


class ImageTooLargeError(ValueError):
    """The image has more pixels than allowed (or trips Pillow's bomb guard)."""


# Modes RapidOCR's LoadImage converts correctly; anything else goes through Pillow first.
_DIRECT_MODES = frozenset({"1", "L", "LA", "RGB", "RGBA"})


def decode_image(
    image_bytes: bytes, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
) -> np.ndarray:
    """Decode encoded image bytes to BGR uint8 exactly as RapidOCR's LoadImage does.

    The pixel count is checked from the header before decoding so oversized
    (decompression-bomb) images are rejected without allocating them.
    """
    try:
        with Image.open(io.BytesIO(image_bytes)) as pil_image:
            _check_pixel_count(pil_image.height, pil_image.width, max_pixels)
            array = np.array(_to_supported_mode(pil_image))
    except Image.DecompressionBombError as exc:  # Image.open refuses > 2x MAX_IMAGE_PIXELS itself
        raise ImageTooLargeError(
            f"image of more than {2 * Image.MAX_IMAGE_PIXELS} pixels (Pillow's decompression-bomb "
            f"guard) exceeds the limit of {max_pixels} pixels") from exc
    except (OSError, SyntaxError, EOFError) as exc:
        raise UnreadableImageError(f"cannot decode image bytes: {exc}") from exc
    return _array_to_bgr(array)


def _check_pixel_count(height: int, width: int, max_pixels: int) -> None:
    if height * width > max_pixels:
        raise ImageTooLargeError(
            f"image of {width}x{height} = {height * width} pixels exceeds "
            f"the limit of {max_pixels} pixels"
        )


def _to_supported_mode(pil_image: Image.Image) -> Image.Image:
    """Bring exotic modes to RGB(A); RapidOCR would misread e.g. palette indices as gray."""
    if pil_image.mode == "1":
        return pil_image.convert("L")
    if pil_image.mode in _DIRECT_MODES:
        return pil_image
    return pil_image.convert("RGBA" if pil_image.has_transparency_data else "RGB")


def _array_to_bgr(array: np.ndarray) -> np.ndarray:
    if array.ndim == 2:
        return cv2.cvtColor(array, cv2.COLOR_GRAY2BGR)
    channels = array.shape[2]
    if channels == 2:
        return _gray_alpha_to_bgr(array)
    if channels == 4:
        return _rgba_to_bgr(array)
    return cv2.cvtColor(array, cv2.COLOR_RGB2BGR)


def _gray_alpha_to_bgr(array: np.ndarray) -> np.ndarray:
    """Composite gray+alpha onto white (RapidOCR's cvt_two_to_three)."""
    gray_bgr = cv2.cvtColor(array[..., 0], cv2.COLOR_GRAY2BGR)
    alpha = array[..., 1]
    inverse_alpha = cv2.cvtColor(cv2.bitwise_not(alpha), cv2.COLOR_GRAY2BGR)
    masked = cv2.bitwise_and(gray_bgr, gray_bgr, mask=alpha)
    return cv2.add(masked, inverse_alpha)


def _rgba_to_bgr(array: np.ndarray) -> np.ndarray:
    """RapidOCR's cvt_four_to_three, kept verbatim: it inverts any image not fully black."""
    r, g, b, alpha = cv2.split(array)
    bgr = cv2.merge((b, g, r))
    inverse_alpha = cv2.cvtColor(cv2.bitwise_not(alpha), cv2.COLOR_GRAY2BGR)
    masked = cv2.bitwise_and(bgr, bgr, mask=alpha)
    if np.mean(masked) <= 0.0:
        return cv2.add(masked, inverse_alpha)
    return cv2.bitwise_not(masked)


# --------------------------------------------------------------------------- image preparation


@dataclass(frozen=True)
class PreparedImage:
    """The image detection runs on, and how to map its coordinates back to the original."""

    image: np.ndarray
    ratio_h: float
    ratio_w: float
    pad_top: int
    original_height: int
    original_width: int


def prepare_image(image: np.ndarray, params: OcrParams = OcrParams()) -> PreparedImage:
    """Clamp the side lengths and letterbox thin images (RapidOCR preprocess + letterbox)."""
    height, width = image.shape[:2]
    ratio_h = ratio_w = 1.0
    if max(height, width) > params.max_side_len:
        scale = params.max_side_len / max(height, width)
        image, ratio_h, ratio_w = _resize_snapped(image, scale, params.max_image_pixels)
    if min(image.shape[:2]) < params.min_side_len:
        scale = params.min_side_len / min(image.shape[:2])
        image, ratio_h, ratio_w = _resize_snapped(image, scale, params.max_image_pixels)
    image, pad_top = _letterbox(image, params)
    return PreparedImage(image, ratio_h, ratio_w, pad_top, height, width)


def _resize_snapped(
    image: np.ndarray, scale: float, max_pixels: int
) -> tuple[np.ndarray, float, float]:
    """Resize by ``scale`` with sides snapped to 32; returns the original/new side ratios."""
    height, width = image.shape[:2]
    resize_h, resize_w = _snap_to_32(height, width, scale)
    if resize_h <= 0 or resize_w <= 0:
        raise UnreadableImageError(f"image of {width}x{height} pixels is too elongated to OCR")
    _check_pixel_count(resize_h, resize_w, max_pixels)
    return cv2.resize(image, (resize_w, resize_h)), height / resize_h, width / resize_w


def _snap_to_32(height: int, width: int, scale: float) -> tuple[int, int]:
    """Round scaled sides to multiples of 32 (Python's banker's rounding, as upstream)."""
    resize_h = int(round(int(height * scale) / 32) * 32)
    resize_w = int(round(int(width * scale) / 32) * 32)
    return resize_h, resize_w


def _letterbox(image: np.ndarray, params: OcrParams) -> tuple[np.ndarray, int]:
    """Pad short or very wide images with black above and below so DB can see the text."""
    height, width = image.shape[:2]
    too_wide = params.width_height_ratio != -1 and width / height > params.width_height_ratio
    if height > params.min_height and not too_wide:
        return image, 0
    new_height = max(int(width / params.width_height_ratio), params.min_height) * 2
    pad = int(abs(new_height - height) / 2)
    _check_pixel_count(height + 2 * pad, width, params.max_image_pixels)
    padded = cv2.copyMakeBorder(image, pad, pad, 0, 0, cv2.BORDER_CONSTANT, value=(0, 0, 0))
    return padded, pad


# --------------------------------------------------------------------------- detection

_DB_MEAN = np.array([0.5, 0.5, 0.5])
_DB_STD = np.array([0.5, 0.5, 0.5])
_DILATION_KERNEL = np.array([[1, 1], [1, 1]])
_MIN_BOX_SIDE = 3


def det_preprocess(image: np.ndarray, params: OcrParams = OcrParams()) -> np.ndarray:
    """Upscale so the short side reaches the limit (sides multiple of 32), as uint8 [1, H, W, 3].

    The served ``ocr_det`` normalises in its graph, bit for bit as :func:`det_normalize`:
    a quarter of the bytes cross to Triton and the frontend does no float work.
    """
    height, width = image.shape[:2]
    scale = 1.0
    if min(height, width) < params.det_limit_side_len:
        scale = params.det_limit_side_len / min(height, width)
    resize_h, resize_w = _snap_to_32(height, width, scale)
    resized = cv2.resize(image, (resize_w, resize_h))
    return np.ascontiguousarray(resized[np.newaxis])


def det_normalize(batch: np.ndarray) -> np.ndarray:
    """Upstream's normalisation of a uint8 NHWC batch to float32 NCHW in [-1, 1] (for the
    packaged graph, which the served one wraps)."""
    # float32 * (1/255), then float64 mean/std: the same dtype path as upstream.
    normalized = (batch.astype("float32") * (1 / 255.0) - _DB_MEAN) / _DB_STD
    return normalized.transpose((0, 3, 1, 2)).astype(np.float32)


def det_postprocess(
    prob_map: np.ndarray,
    image_shape: tuple[int, int],
    params: OcrParams = OcrParams(),
) -> list[np.ndarray]:
    """Turn one [H, W] DB probability map into float32 [4, 2] boxes in reading order.

    Boxes are in the coordinates of the image of ``image_shape`` (height, width)
    that was passed to :func:`det_preprocess`.
    """
    height, width = image_shape
    segmentation = prob_map > params.det_thresh
    if params.det_use_dilation:
        bitmap = cv2.dilate(segmentation.astype(np.uint8), _DILATION_KERNEL)
    else:
        bitmap = segmentation
    boxes = _boxes_from_bitmap(prob_map, bitmap, width, height, params)
    return sort_boxes(_filter_boxes(boxes, height, width))


def _boxes_from_bitmap(
    prob_map: np.ndarray,
    bitmap: np.ndarray,
    dest_width: int,
    dest_height: int,
    params: OcrParams,
) -> np.ndarray:
    map_height, map_width = bitmap.shape
    contours, _ = cv2.findContours(
        (bitmap * 255).astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE
    )
    boxes = []
    for contour in contours[: params.det_max_candidates]:
        points, short_side = _mini_box(contour)
        if short_side < _MIN_BOX_SIDE:
            continue
        if params.det_box_thresh > _box_score_fast(prob_map, points.reshape(-1, 2)):
            continue
        box, short_side = _mini_box(_unclip(points, params.det_unclip_ratio))
        if short_side < _MIN_BOX_SIDE + 2:
            continue
        box[:, 0] = np.clip(np.round(box[:, 0] / map_width * dest_width), 0, dest_width)
        box[:, 1] = np.clip(np.round(box[:, 1] / map_height * dest_height), 0, dest_height)
        boxes.append(box.astype(np.int32))
    return np.array(boxes, dtype=np.int32)


def _mini_box(contour: np.ndarray) -> tuple[np.ndarray, float]:
    """Minimum-area rectangle as [tl, tr, br, bl] plus its shorter side."""
    rect = cv2.minAreaRect(contour)
    points = sorted(list(cv2.boxPoints(rect)), key=lambda point: point[0])
    left = (0, 1) if points[1][1] > points[0][1] else (1, 0)
    right = (2, 3) if points[3][1] > points[2][1] else (3, 2)
    box = np.array([points[left[0]], points[right[0]], points[right[1]], points[left[1]]])
    return box, min(rect[1])


def _box_score_fast(prob_map: np.ndarray, box: np.ndarray) -> float:
    """Mean probability inside the box polygon."""
    height, width = prob_map.shape[:2]
    box = box.copy()
    xmin = np.clip(np.floor(box[:, 0].min()).astype(np.int32), 0, width - 1)
    xmax = np.clip(np.ceil(box[:, 0].max()).astype(np.int32), 0, width - 1)
    ymin = np.clip(np.floor(box[:, 1].min()).astype(np.int32), 0, height - 1)
    ymax = np.clip(np.ceil(box[:, 1].max()).astype(np.int32), 0, height - 1)
    mask = np.zeros((ymax - ymin + 1, xmax - xmin + 1), dtype=np.uint8)
    box[:, 0] = box[:, 0] - xmin
    box[:, 1] = box[:, 1] - ymin
    cv2.fillPoly(mask, box.reshape(1, -1, 2).astype(np.int32), 1)
    return cv2.mean(prob_map[ymin : ymax + 1, xmin : xmax + 1], mask)[0]


def _unclip(box: np.ndarray, unclip_ratio: float) -> np.ndarray:
    """Grow the shrunk DB kernel back to the full text extent (Vatti offset)."""
    area, perimeter = _polygon_area_and_perimeter(box)
    offset = pyclipper.PyclipperOffset()
    offset.AddPath(box, pyclipper.JT_ROUND, pyclipper.ET_CLOSEDPOLYGON)
    return np.array(offset.Execute(area * unclip_ratio / perimeter)).reshape((-1, 1, 2))


def _polygon_area_and_perimeter(points: np.ndarray) -> tuple[float, float]:
    """Area and perimeter with GEOS's exact operation order, so shapely isn't needed."""
    ring = [(float(x), float(y)) for x, y in points]
    ring.append(ring[0])
    x0 = ring[0][0]
    twice_area = 0.0
    for prev, cur, nxt in zip(ring, ring[1:], ring[2:]):
        twice_area += (cur[0] - x0) * (prev[1] - nxt[1])
    perimeter = 0.0
    for (xa, ya), (xb, yb) in zip(ring, ring[1:]):
        dx, dy = xb - xa, yb - ya
        perimeter += math.sqrt(dx * dx + dy * dy)
    return abs(twice_area / 2.0), perimeter


def _filter_boxes(boxes: np.ndarray, height: int, width: int) -> list[np.ndarray]:
    """Order corners clockwise, clip to the image and drop boxes of 3 px or less."""
    kept = []
    for box in boxes:
        box = _order_points_clockwise(box)
        box[:, 0] = [int(min(max(x, 0), width - 1)) for x in box[:, 0]]
        box[:, 1] = [int(min(max(y, 0), height - 1)) for y in box[:, 1]]
        if int(np.linalg.norm(box[0] - box[1])) <= 3 or int(np.linalg.norm(box[0] - box[3])) <= 3:
            continue
        kept.append(box)
    return kept


def _order_points_clockwise(points: np.ndarray) -> np.ndarray:
    """Corners as [tl, tr, br, bl]: two left-most by y, then two right-most by y."""
    x_sorted = points[np.argsort(points[:, 0]), :]
    left, right = x_sorted[:2, :], x_sorted[2:, :]
    top_left, bottom_left = left[np.argsort(left[:, 1]), :]
    top_right, bottom_right = right[np.argsort(right[:, 1]), :]
    return np.array([top_left, top_right, bottom_right, bottom_left], dtype="float32")


def sort_boxes(boxes: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Reading order: top to bottom, then left to right within a 10 px band."""
    ordered = sorted(boxes, key=lambda box: (box[0][1], box[0][0]))
    for i in range(len(ordered) - 1):
        for j in range(i, -1, -1):
            same_row = abs(ordered[j + 1][0][1] - ordered[j][0][1]) < 10
            if not (same_row and ordered[j + 1][0][0] < ordered[j][0][0]):
                break
            ordered[j], ordered[j + 1] = ordered[j + 1], ordered[j]
    return ordered


def restore_boxes(boxes: Sequence[np.ndarray], prepared: PreparedImage) -> np.ndarray:
    """Map boxes from the prepared image back to original pixels as float32 [N, 4, 2]."""
    restored = np.array(boxes, dtype=np.float32).reshape(-1, 4, 2)
    restored[:, :, 1] -= prepared.pad_top
    restored[:, :, 0] *= prepared.ratio_w
    restored[:, :, 1] *= prepared.ratio_h
    restored = np.where(restored < 0, 0, restored)
    restored[..., 0] = np.where(
        restored[..., 0] > prepared.original_width, prepared.original_width, restored[..., 0]
    )
    restored[..., 1] = np.where(
        restored[..., 1] > prepared.original_height, prepared.original_height, restored[..., 1]
    )
    return restored


# --------------------------------------------------------------------------- cropping


def crop_text_regions(image: np.ndarray, boxes: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Perspective-rectify each box; tall crops are turned 90 degrees to read horizontally."""
    return [_crop_box(image, box) for box in boxes]


def _crop_box(image: np.ndarray, points: np.ndarray) -> np.ndarray:
    crop_width = int(
        max(np.linalg.norm(points[0] - points[1]), np.linalg.norm(points[2] - points[3]))
    )
    crop_height = int(
        max(np.linalg.norm(points[0] - points[3]), np.linalg.norm(points[1] - points[2]))
    )
    target = np.array(
        [[0, 0], [crop_width, 0], [crop_width, crop_height], [0, crop_height]]
    ).astype(np.float32)
    matrix = cv2.getPerspectiveTransform(points, target)
    crop = cv2.warpPerspective(
        image,
        matrix,
        (crop_width, crop_height),
        borderMode=cv2.BORDER_REPLICATE,
        flags=cv2.INTER_CUBIC,
    )
    if crop.shape[0] / crop.shape[1] >= 1.5:
        crop = np.rot90(crop)
    return crop


# --------------------------------------------------------------------------- cls / rec batching


def aspect_sorted_batches(crops: Sequence[np.ndarray], batch_size: int) -> list[np.ndarray]:
    """Index batches ordered by width/height, as upstream batches cls and rec (affects padding)."""
    order = np.argsort(np.array([crop.shape[1] / float(crop.shape[0]) for crop in crops]))
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def _resize_norm_pad(crop: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize to ``height`` keeping aspect (capped at ``width``), scale to [-1, 1], right-pad."""
    ratio = crop.shape[1] / float(crop.shape[0])
    resized_w = width if math.ceil(height * ratio) > width else int(math.ceil(height * ratio))
    resized = cv2.resize(crop, (resized_w, height)).astype("float32")
    resized = resized.transpose((2, 0, 1)) / 255
    resized -= 0.5
    resized /= 0.5
    padded = np.zeros((crop.shape[2], height, width), dtype=np.float32)
    padded[:, :, :resized_w] = resized
    return padded


def cls_preprocess(
    crops: Sequence[np.ndarray], params: OcrParams = OcrParams()
) -> np.ndarray:
    """Batch crops for the orientation classifier (fixed 48x192 input)."""
    _, height, width = params.cls_image_shape
    return np.stack([_resize_norm_pad(crop, height, width) for crop in crops]).astype(np.float32)


def cls_postprocess(
    crops: Sequence[np.ndarray], probs: np.ndarray, params: OcrParams = OcrParams()
) -> list[np.ndarray]:
    """Rotate crops the classifier confidently reads as upside down."""
    labels = probs.argmax(axis=1)
    return [
        cv2.rotate(crop, cv2.ROTATE_180)
        if label == 1 and probs[i, label] > params.cls_thresh
        else crop
        for i, (crop, label) in enumerate(zip(crops, labels))
    ]


def classify_orientation(
    crops: Sequence[np.ndarray], infer: InferFn, params: OcrParams = OcrParams()
) -> list[np.ndarray]:
    """Run the 0/180 classifier in aspect-sorted batches and fix upside-down crops."""
    fixed = list(crops)
    for indices in aspect_sorted_batches(crops, params.cls_batch_num):
        batch_crops = [crops[i] for i in indices]
        probs = np.asarray(infer(CLS_MODEL, cls_preprocess(batch_crops, params)))
        for i, crop in zip(indices, cls_postprocess(batch_crops, probs, params)):
            fixed[i] = crop
    return fixed


def rec_preprocess(
    crops: Sequence[np.ndarray], params: OcrParams = OcrParams()
) -> np.ndarray:
    """Batch crops at height 48, all padded to the widest aspect ratio in the batch."""
    _, height, base_width = params.rec_image_shape
    max_wh_ratio = max([base_width / height] + [crop.shape[1] / crop.shape[0] for crop in crops])
    width = int(height * max_wh_ratio)
    return np.stack([_resize_norm_pad(crop, height, width) for crop in crops]).astype(np.float32)


def ctc_decode(probs: np.ndarray, characters: Sequence[str]) -> list[tuple[str, float]]:
    """Greedy CTC decode of [N, T, C] probabilities; confidence is the mean kept-step max.

    Class 0 is the CTC blank and the last class is a space appended to ``characters``.
    """
    if probs.shape[-1] != len(characters) + 2:
        raise ValueError(
            f"rec output has {probs.shape[-1]} classes but the dictionary gives {len(characters) + 2}"
        )
    return ctc_decode_best(probs.argmax(axis=2), probs.max(axis=2), characters)


def ctc_decode_best(
    indices: np.ndarray, step_probs: np.ndarray, characters: Sequence[str]
) -> list[tuple[str, float]]:
    """Greedy CTC decode of [N, T] best class indices and their probabilities, what the
    served ``ocr_rec`` returns; same results as :func:`ctc_decode` on the full output."""
    alphabet = ["blank", *characters, " "]
    indices = np.asarray(indices).astype(np.int64, copy=False)
    step_probs = np.asarray(step_probs)
    bad = indices[(indices < 0) | (indices >= len(alphabet))]
    if bad.size:
        raise ValueError(
            f"rec output names class {int(bad[0])} but the dictionary gives {len(alphabet)}"
        )
    results = []
    for seq, seq_probs in zip(indices, step_probs):
        keep = np.ones(len(seq), dtype=bool)
        keep[1:] = seq[1:] != seq[:-1]
        keep &= seq != 0
        confidences = seq_probs[keep].tolist() or [0]
        text = "".join(alphabet[i] for i in seq[keep])
        results.append((text, float(np.mean(confidences))))
    return results


def recognize_text(
    crops: Sequence[np.ndarray],
    infer: InferFn,
    characters: Sequence[str],
    params: OcrParams = OcrParams(),
) -> list[tuple[str, float]]:
    """Recognise crops in aspect-sorted batches; results follow the input order."""
    results: list[tuple[str, float]] = [("", 0.0)] * len(crops)
    for indices in aspect_sorted_batches(crops, params.rec_batch_num):
        batch = rec_preprocess([crops[i] for i in indices], params)
        best_class, best_probability = infer(REC_MODEL, batch)
        decoded = ctc_decode_best(best_class, best_probability, characters)
        for i, result in zip(indices, decoded):
            results[i] = result
    return results


# --------------------------------------------------------------------------- pipeline


def ocr_image(
    image: np.ndarray,
    infer: InferFn,
    characters: Sequence[str],
    params: OcrParams = OcrParams(),
) -> list[OcrLine]:
    """Run det -> crop -> cls -> rec on a BGR uint8 image."""
    prepared = prepare_image(image, params)
    prob_map = np.asarray(infer(DET_MODEL, det_preprocess(prepared.image, params)))
    boxes = det_postprocess(prob_map[0, 0], prepared.image.shape[:2], params)
    if not boxes:
        return []
    crops = classify_orientation(crop_text_regions(prepared.image, boxes), infer, params)
    recognized = recognize_text(crops, infer, characters, params)
    return [
        OcrLine(text, confidence, tuple((float(x), float(y)) for x, y in box))
        for box, (text, confidence) in zip(restore_boxes(boxes, prepared), recognized)
        if float(confidence) >= params.text_score
    ]


def run_ocr(
    image_bytes: bytes,
    infer: InferFn,
    characters: list[str],
    params: OcrParams = OcrParams(),
) -> list[OcrLine]:
    """Decode ``image_bytes`` and return its text lines in reading order.

    Raises ValueError for undecodable, oversized or degenerate images.
    """
    image = decode_image(image_bytes, params.max_image_pixels)
    return ocr_image(image, infer, characters, params)
