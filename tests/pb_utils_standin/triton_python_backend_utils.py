"""A stand-in for Triton's ``triton_python_backend_utils`` (the module its Python-backend
stub provides), for loading a rendered ``model.py`` under another Python than Triton's.

Standard library and numpy only: it runs in a venv that holds what the official Triton
container's Python has (Python 3.10, numpy). BLS requests (``InferenceRequest.exec``) are
forwarded to a real Triton over its KServe v2 HTTP API with the binary tensor extension,
so the encoder and decoder a rendered loop calls are the real models. The Triton address
comes from ``PB_STANDIN_TRITON_HTTP`` (``host:port``).
"""
from __future__ import annotations

import http.client
import json
import os

import numpy as np

TRITONSERVER_MEMORY_CPU = "CPU"
TRITONSERVER_MEMORY_GPU = "GPU"

_DATATYPES = {np.dtype(np.float32): "FP32", np.dtype(np.float16): "FP16",
              np.dtype(np.int64): "INT64", np.dtype(np.int32): "INT32",
              np.dtype(np.bool_): "BOOL", np.dtype(np.uint8): "UINT8"}
_NUMPY = {name: dtype for dtype, name in _DATATYPES.items()}
exec_calls: dict[str, int] = {}
"""BLS requests forwarded, per model (the driver reports them)."""


class TritonModelException(Exception):
    pass


class Logger:
    """Triton's model log; here the messages are kept (``logged``) for tests to read."""
    logged: list[tuple[str, str]] = []

    @classmethod
    def log_warn(cls, message: str) -> None:
        cls.logged.append(("warn", message))

    @classmethod
    def log_info(cls, message: str) -> None:
        cls.logged.append(("info", message))


class TritonError:
    def __init__(self, message: str) -> None:
        self._message = message

    def message(self) -> str:
        return self._message


class PreferredMemory:
    def __init__(self, preferred_memory_type, preferred_device_id: int = 0) -> None:
        self.preferred_memory_type = preferred_memory_type
        self.preferred_device_id = preferred_device_id


class Tensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        if not isinstance(array, np.ndarray):
            raise TritonModelException(f"tensor {name}: a numpy array is required")
        self._name, self._array = name, array

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array

    def is_cpu(self) -> bool:
        return True


class InferenceResponse:
    def __init__(self, output_tensors=None, error: TritonError | None = None) -> None:
        self._outputs = list(output_tensors or [])
        self._error = error

    def output_tensors(self) -> list[Tensor]:
        return self._outputs

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> TritonError | None:
        return self._error


class ModelRequest:
    """What ``execute`` receives: the inputs of one request."""

    def __init__(self, tensors: list[Tensor]) -> None:
        self._inputs = tensors

    def inputs(self) -> list[Tensor]:
        return self._inputs


_connection: http.client.HTTPConnection | None = None


def _post(path: str, body: bytes, headers: dict) -> http.client.HTTPResponse:
    global _connection
    if _connection is None:
        host, port = os.environ["PB_STANDIN_TRITON_HTTP"].rsplit(":", 1)
        _connection = http.client.HTTPConnection(host, int(port), timeout=600)
    _connection.request("POST", path, body=body, headers=headers)
    return _connection.getresponse()


class InferenceRequest:
    def __init__(self, model_name: str, inputs: list[Tensor], requested_output_names: list[str],
                 preferred_memory: PreferredMemory | None = None, **_ignored) -> None:
        self.model_name = model_name
        self.inputs = inputs
        self.requested_output_names = requested_output_names
        self.preferred_memory = preferred_memory

    def exec(self) -> InferenceResponse:
        exec_calls[self.model_name] = exec_calls.get(self.model_name, 0) + 1
        arrays = [np.ascontiguousarray(t.as_numpy()) for t in self.inputs]
        header = json.dumps({
            "inputs": [{"name": t.name(), "shape": list(a.shape), "datatype": _DATATYPES[a.dtype],
                        "parameters": {"binary_data_size": a.nbytes}}
                       for t, a in zip(self.inputs, arrays)],
            "outputs": [{"name": n, "parameters": {"binary_data": True}}
                        for n in self.requested_output_names],
        }).encode()
        body = header + b"".join(a.tobytes() for a in arrays)
        reply = _post(f"/v2/models/{self.model_name}/infer", body, {
            "Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": str(len(header))})
        data = reply.read()
        if reply.status != 200:
            try:
                message = json.loads(data)["error"]
            except (ValueError, KeyError):
                message = data.decode(errors="replace")
            return InferenceResponse(error=TritonError(message))
        length = int(reply.getheader("Inference-Header-Content-Length") or len(data))
        meta = json.loads(data[:length])
        offset, outputs = length, []
        for out in meta["outputs"]:
            size = out["parameters"]["binary_data_size"]
            array = np.frombuffer(data[offset:offset + size], _NUMPY[out["datatype"]])
            outputs.append(Tensor(out["name"], array.reshape(out["shape"]).copy()))
            offset += size
        return InferenceResponse(output_tensors=outputs)


def get_input_tensor_by_name(request, name: str) -> Tensor | None:
    return next((t for t in request.inputs() if t.name() == name), None)


def get_output_tensor_by_name(response: InferenceResponse, name: str) -> Tensor | None:
    return next((t for t in response.output_tensors() if t.name() == name), None)


def triton_string_to_numpy(triton_type: str):
    return _NUMPY[triton_type.replace("TYPE_", "")]
