"""The Triton Python-backend model that serves an ONNX file with onnxruntime on CPU.

The pip-installed Triton has only the Python backend, so every generated ``model.py``
imports this class. ``execute`` receives all requests the dynamic batcher gathered;
requests whose inputs share a shape (the frontend pads to a few length buckets) are
concatenated and run as one onnxruntime call, then split back per request.
"""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils  # only importable inside Triton's stub


class OnnxRuntimeModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        version_dir = Path(args["model_repository"]) / args["model_version"]
        onnx_path = version_dir / params.get("onnx_file", "model.onnx")
        if not onnx_path.is_file():
            raise pb_utils.TritonModelException(
                f"{onnx_path} is missing: run `percolate-models build`")
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(params.get("intra_op_threads", "0"))
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Spinning threads burn the cores the frontend and other models need when the
        # machine is shared (the embedded default); they only pay off on idle cores.
        options.add_session_config_entry("session.intra_op.allow_spinning",
                                         params.get("allow_spinning", "0"))
        try:
            self.session = ort.InferenceSession(
                str(onnx_path), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own Fail/InvalidGraph types
            raise pb_utils.TritonModelException(
                f"cannot load {onnx_path}: {err}. Run `percolate-models build` to rebuild it")
        self.batched = int(config.get("max_batch_size", 0)) > 0
        """Without Triton batching (max_batch_size 0) the batch dimension is the caller's
        own and each request runs alone."""
        self.input_names = [t["name"] for t in config["input"]]
        self.output_names = [t["name"] for t in config["output"]]
        self.output_dtypes = {
            t["name"]: pb_utils.triton_string_to_numpy(t["data_type"]) for t in config["output"]}

    def execute(self, requests: list) -> list:
        inputs = [
            [pb_utils.get_input_tensor_by_name(r, n).as_numpy() for n in self.input_names]
            for r in requests
        ]
        groups: dict[tuple, list[int]] = defaultdict(list)
        for index, arrays in enumerate(inputs):
            key = tuple(a.shape[1:] for a in arrays) if self.batched else (index,)
            groups[key].append(index)
        responses: list = [None] * len(requests)
        for indices in groups.values():
            feed = {
                name: np.concatenate([inputs[i][k] for i in indices])
                for k, name in enumerate(self.input_names)
            }
            try:
                outputs = self.session.run(self.output_names, feed)
            except Exception as err:
                error = pb_utils.TritonError(f"inference failed: {err}")
                for i in indices:
                    responses[i] = pb_utils.InferenceResponse(error=error)
                continue
            start = 0
            for i in indices:
                stop = start + inputs[i][0].shape[0]
                tensors = [
                    pb_utils.Tensor(name, out[start:stop].astype(self.output_dtypes[name], copy=False))
                    for name, out in zip(self.output_names, outputs)
                ]
                responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)
                start = stop
        return responses

    def finalize(self) -> None:
        self.session = None
