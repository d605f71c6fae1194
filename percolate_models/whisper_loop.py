"""The Triton Python-backend model ``whisper``: the whole decoding loop inside Triton.

The frontend sends one request per 30-second log-mel window (``input_features``
[80, 3000]) and gets back the generated tokens (timestamps included), the no-speech
probability and the average log probability. No network round trip per token.

``execute`` receives every window Triton's dynamic batcher gathered (from any number of
requests) and decodes them as one batch (``whisper_decode.greedy_decode``).

Two modes (config parameter ``mode``, rendered per target by ``configs.py``):

- ``inprocess`` (cpu target): the ONNX files of the sibling models ``whisper_encoder``,
  ``whisper_decoder`` (first step) and ``whisper_decoder_with_past`` (later steps) are
  loaded with onnxruntime in this stub process; the key/value cache never leaves it.
- ``bls`` (gpu target): each encoder call and decoder step is a BLS request to those
  three models, which the official container serves with its native onnxruntime backend
  on the GPU.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils  # only importable inside Triton's stub

from .stub_metrics import gauge
from .whisper_decode import CacheSteps, DecodeSettings, OrtRunner, greedy_decode

GPU_MODEL_FILE = "model.gpu.onnx"
"""``configs.GPU_MODEL_FILE`` (not imported: this module runs in Triton's stub)."""
PAD = -1
"""Pads the ``tokens`` rows of a request holding several windows of unequal length."""


class BlsRunner(CacheSteps):
    """Encoder and decoder as Triton models, called through BLS."""

    def __init__(self, encoder_model: str, decoder_model: str, decoder_with_past_model: str) -> None:
        self.encoder_model = encoder_model
        self.decoder_model = decoder_model
        self.decoder_with_past_model = decoder_with_past_model
        self.cpu_memory = pb_utils.PreferredMemory(pb_utils.TRITONSERVER_MEMORY_CPU, 0)

    def _call(self, model: str, inputs: list, outputs: list[str]) -> list[np.ndarray]:
        # Outputs in CPU memory: the official container has no cupy to read GPU tensors.
        request = pb_utils.InferenceRequest(model_name=model, inputs=inputs,
                                            requested_output_names=outputs,
                                            preferred_memory=self.cpu_memory)
        response = request.exec()
        if response.has_error():
            raise pb_utils.TritonModelException(f"{model}: {response.error().message()}")
        return [_numpy(pb_utils.get_output_tensor_by_name(response, name)) for name in outputs]

    def encode(self, features: np.ndarray) -> dict:
        # The whole batch in one request: the gpu target serves the fp32 encoder
        # (1/model.gpu.onnx), whose rows do not depend on each other, and a blocking BLS
        # call per window would serialise them (the cpu target's int8 encoder runs one row
        # per onnxruntime call itself: ``max_rows_per_run``).
        (hidden,) = self._call(self.encoder_model, [pb_utils.Tensor("input_features", features)],
                               ["last_hidden_state"])
        return {"hidden": hidden, "past": {}}

    def decode(self, first: bool, feed: dict, outputs: list[str]) -> list[np.ndarray]:
        inputs = [pb_utils.Tensor(name, np.ascontiguousarray(array)) for name, array in feed.items()]
        return self._call(self.decoder_model if first else self.decoder_with_past_model, inputs, outputs)


def _numpy(tensor) -> np.ndarray:
    if tensor.is_cpu():
        return tensor.as_numpy()
    import cupy  # only if Triton ignored the CPU preference (and the image has cupy)

    return cupy.asnumpy(cupy.from_dlpack(tensor.to_dlpack()))


class WhisperLoopModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        repository = Path(args["model_repository"]).parent
        models = [params.get("encoder_model", "whisper_encoder"),
                  params.get("decoder_model", "whisper_decoder"),
                  params.get("decoder_with_past_model", "whisper_decoder_with_past")]
        self.mode = params.get("mode", "inprocess")
        if self.mode == "inprocess":
            files = [repository / name / "1" / "model.onnx" for name in models]
            for file in files:
                if not file.is_file():
                    raise pb_utils.TritonModelException(
                        f"{file} is missing: run `percolate-models build`")
            # the step decoder's fp32 file (the gpu target's), should the int8 one mix rows
            # of different windows on this CPU (``OrtRunner``'s load-time check)
            fallback = files[2].with_name(GPU_MODEL_FILE)
            try:
                self.runner = OrtRunner(*files, threads=int(params.get("intra_op_threads", "0")),
                                        fallback_with_past=fallback if fallback.is_file() else None,
                                        spinning=params.get("allow_spinning", "0") == "1",
                                        providers=params.get("providers", "").split(",")
                                        if params.get("providers") else None)
            except RuntimeError as err:  # the row check refused the step decoder: its message says what to do
                raise pb_utils.TritonModelException(f"cannot serve Whisper: {err}")
            except Exception as err:  # onnxruntime raises its own Fail/InvalidGraph types
                raise pb_utils.TritonModelException(
                    f"cannot load the Whisper ONNX files: {err}. Run `percolate-models build`")
            self._export_step_decoder(args.get("model_name", "whisper"),
                                      fallback=self.runner.with_past_file != files[2])
        elif self.mode == "bls":
            self.runner = BlsRunner(*models)
        else:
            raise pb_utils.TritonModelException(f"unknown mode {self.mode!r}: use inprocess or bls")
        self.settings = DecodeSettings(
            max_new_tokens=int(params.get("max_new_tokens", DecodeSettings.max_new_tokens)))

    def _export_step_decoder(self, model: str, fallback: bool) -> None:
        """Triton's metrics (``/metrics``) say which step decoder serves: 1 when the int8 one
        mixed rows of different windows on this CPU and the fp32 step graph serves instead
        (the same words, about 13% slower in bench/speech_fallback.py; the log says why), 0 for
        the int8 one. Best effort (``stub_metrics.gauge``): without custom metrics Whisper
        serves all the same, and the log says which step decoder serves."""
        self._step_gauge = gauge(
            "percolate_whisper_step_decoder_fallback",
            "1: the int8 Whisper step decoder failed its row check on this CPU and the fp32 "
            "step graph serves instead; 0: the int8 one serves", {"model": model}, 1.0 if fallback else 0.0)
        if self._step_gauge is None:
            pb_utils.Logger.log_warn(f"the {'fp32 fallback' if fallback else 'int8'} step decoder serves")

    def execute(self, requests: list) -> list:
        features = [pb_utils.get_input_tensor_by_name(r, "input_features").as_numpy() for r in requests]
        bad = [i for i, f in enumerate(features) if f.ndim != 3 or f.shape[1:] != (80, 3000)]
        responses: list = [None] * len(requests)
        for i in bad:
            responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(
                f"input_features must be [batch, 80, 3000], got {list(features[i].shape)}"))
        good = [i for i in range(len(requests)) if i not in bad]
        if not good:
            return responses
        try:
            results = greedy_decode(self.runner, np.concatenate([features[i] for i in good]),
                                    self.settings)
        except Exception as err:
            error = pb_utils.TritonError(f"decoding failed: {err}")
            for i in good:
                responses[i] = pb_utils.InferenceResponse(error=error)
            return responses
        start = 0
        for i in good:
            rows = results[start:start + features[i].shape[0]]
            start += features[i].shape[0]
            width = max(1, *(len(r.tokens) for r in rows))
            tokens = np.full((len(rows), width), PAD, np.int32)
            for row, result in enumerate(rows):
                tokens[row, :len(result.tokens)] = result.tokens
            responses[i] = pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("tokens", tokens),
                pb_utils.Tensor("no_speech_prob",
                                np.array([[r.no_speech_prob] for r in rows], np.float32)),
                pb_utils.Tensor("avg_logprob", np.array([[r.avg_logprob] for r in rows], np.float32)),
            ])
        return responses

    def finalize(self) -> None:
        self.runner = None
