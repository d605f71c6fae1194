"""Images: pixel limits read from the header before any decoding, one page per TIFF frame."""
from __future__ import annotations

import io
from typing import Iterator

from PIL import Image, ImageOps, ImageSequence

from .errors import CorruptDocumentError, DocumentTooLargeError
from .model import Extraction, Page, ParseLimits
from .ocrpass import OcrPass

_PNG_MODES = {"1", "L", "LA", "RGB", "RGBA"}
_PAGED_FORMATS = {"TIFF"}


def parse_image(data: bytes, ocr: OcrPass, limits: ParseLimits) -> Extraction:
    image = open_image(data, limits.max_image_pixels)
    frames = _frame_count(image)
    if frames > limits.max_pages:
        raise DocumentTooLargeError(f"the image has {frames} pages, above the limit of "
                                    f"{limits.max_pages}")
    # every frame's OCR request first (frames go out a few at a time, OcrPass); a frame is
    # rendered when it goes out, so it seeks to its own place in the file
    tickets = [(number, ocr.request(number, False, lambda number=number: to_png(_decoded(_at(image, number), number))))
               for number, _ in enumerate(_frames(image, frames, limits.max_image_pixels), start=1)]
    pages = []
    for number, ticket in tickets:
        blocks = None if ticket is None else ocr.blocks(ticket)
        pages.append(Page(number, blocks or (), ocr_used=blocks is not None))
    warnings = ocr.warnings()
    if image.format not in _PAGED_FORMATS and getattr(image, "n_frames", 1) > 1:
        warnings.append(f"only the first of {image.n_frames} animation frames was read")
    metadata = {"width": str(image.width), "height": str(image.height)}
    return Extraction(tuple(pages), metadata, tuple(warnings))


def open_image(data: bytes, max_pixels: int) -> Image.Image:
    """Open lazily (header only) and refuse decompression bombs before decoding pixels."""
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise _too_many_pixels(None, max_pixels) from None
    except (OSError, SyntaxError, ValueError) as error:
        raise CorruptDocumentError(f"could not read the image: {error}") from None
    check_pixels(image.size, max_pixels)
    return image


def check_pixels(size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width * height > max_pixels:
        raise _too_many_pixels(size, max_pixels)


def _too_many_pixels(size: tuple[int, int] | None, max_pixels: int) -> DocumentTooLargeError:
    found = f"{size[0]}x{size[1]} = {size[0] * size[1]:,} pixels" if size else "too many pixels"
    return DocumentTooLargeError(f"the image has {found}, above the limit of {max_pixels:,} "
                                 "pixels (max_image_pixels)")


def _frame_count(image: Image.Image) -> int:
    return getattr(image, "n_frames", 1) if image.format in _PAGED_FORMATS else 1


def _frames(image: Image.Image, count: int, max_pixels: int) -> Iterator[Image.Image]:
    """Each page's size is checked on its own: TIFF pages differ."""
    for index, frame in enumerate(ImageSequence.Iterator(image)):
        if index >= count:
            return
        check_pixels(frame.size, max_pixels)
        yield frame


def _at(image: Image.Image, number: int) -> Image.Image:
    """``image`` at page ``number`` (1-based): the frame iterator moves the one image object
    (past the first frame of an animation too, of which only that one is read)."""
    if getattr(image, "n_frames", 1) > 1:
        try:
            image.seek(number - 1)
        except (EOFError, OSError, SyntaxError, ValueError) as error:
            raise CorruptDocumentError(f"could not read page {number} of the image: {error}") from None
    return image


def _decoded(frame: Image.Image, number: int) -> Image.Image:
    """Pixels are decoded only for OCR, upright as the camera's EXIF says."""
    try:
        frame.load()
        return ImageOps.exif_transpose(frame)
    except (OSError, SyntaxError, ValueError) as error:
        raise CorruptDocumentError(f"could not decode page {number} of the image: "
                                   f"{error}") from None


def to_png(image: Image.Image) -> bytes:
    """Fast PNG encoding: the OCR service decodes it once, so size barely matters."""
    if image.mode not in _PNG_MODES:
        image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=1)
    return out.getvalue()
