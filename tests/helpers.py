"""Small helpers shared by tests: calling Triton models and drawing text images."""
from __future__ import annotations

import io

import numpy as np
import tritonclient.grpc as grpcclient
from PIL import Image, ImageDraw, ImageFont

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"


def infer(client: grpcclient.InferenceServerClient, model: str,
          inputs: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
    """One synchronous inference with numpy in and out."""
    tensors = []
    for name, array in inputs.items():
        dtype = "INT64" if array.dtype == np.int64 else "FP32"
        tensor = grpcclient.InferInput(name, list(array.shape), dtype)
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    result = client.infer(model, tensors,
                          outputs=[grpcclient.InferRequestedOutput(n) for n in outputs])
    return {name: result.as_numpy(name) for name in outputs}


def text_image(lines: list[str], size: tuple[int, int] = (1200, 800), font_size: int = 40,
               fmt: str = "PNG") -> bytes:
    """Black text on white, one line per entry, as encoded image bytes."""
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.truetype(FONT, font_size)
    for row, line in enumerate(lines):
        draw.text((60, 60 + row * int(font_size * 2.2)), line, fill="black", font=font)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()
