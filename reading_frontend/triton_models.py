"""Synchronous calls to the repository's models on Triton, as plain numpy functions.

The shapes match ``reading_frontend.text.EmbedFn`` and ``reading_frontend.ocr.InferFn``
so the same preprocessing runs against Triton or against onnxruntime in process.
"""
from __future__ import annotations

import numpy as np
import tritonclient.grpc as grpcclient

from percolate_models.catalog import model_by_name

from .triton_client import infer_inputs


def image_model_request(model: str, batch: np.ndarray) -> tuple[dict[str, np.ndarray], list[str]]:
    """An OCR model call's inputs (the batch cast to the model's declared input type: uint8
    pages for ``ocr_det``) and the names of its outputs, in catalog order."""
    spec = model_by_name(model)
    return ({spec.inputs[0].name: batch.astype(spec.inputs[0].numpy_dtype, copy=False)},
            [output.name for output in spec.outputs])


def image_model_output_bytes(model: str, batch: np.ndarray) -> dict[str, int]:
    """Sizes of the outputs known before the call: ``ocr_det``'s probability map is float32
    [N, 1, H, W] for uint8 pages [N, H, W, 3]. They may come back through shared memory."""
    if model == "ocr_det":
        count, height, width = batch.shape[:3]
        return {"probability_map": count * height * width * 4}
    return {}


def image_model_result(result: dict[str, np.ndarray], names: list[str]) -> np.ndarray | tuple[np.ndarray, ...]:
    """What ``reading_frontend.ocr.InferFn`` returns: the output, or the outputs as a tuple."""
    return result[names[0]] if len(names) == 1 else tuple(result[name] for name in names)


class TritonModels:
    def __init__(self, url: str, timeout_s: float = 60.0) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self._client = grpcclient.InferenceServerClient(url)

    def infer(self, model: str, inputs: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        result = self._client.infer(
            model, infer_inputs(inputs), outputs=[grpcclient.InferRequestedOutput(n) for n in outputs],
            client_timeout=self.timeout_s)
        return {name: result.as_numpy(name) for name in outputs}

    def embed(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        return self.infer("text_embedding", {"input_ids": input_ids, "attention_mask": attention_mask},
                          ["sentence_embedding"])["sentence_embedding"]

    def run_image_model(self, model: str, batch: np.ndarray) -> np.ndarray | tuple[np.ndarray, ...]:
        """Run one of the OCR models on a batch; returns its output (its outputs in catalog
        order, as a tuple, when it has several: ``reading_frontend.ocr.InferFn``)."""
        inputs, names = image_model_request(model, batch)
        return image_model_result(self.infer(model, inputs, names), names)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> "TritonModels":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
