"""The frontend's asynchronous Triton client: one channel, reused, every call bounded.

Every call runs under the caller's remaining deadline. When Triton cannot be reached
the call fails at once with UNAVAILABLE (no waiting for the connection), and the
channel's short reconnect backoff brings the service back as soon as Triton returns,
without a restart.
"""
from __future__ import annotations

import numpy as np
import tritonclient.grpc.aio as aioclient
from tritonclient.grpc import InferInput, InferRequestedOutput
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from .errors import BackendUnavailableError, DeadlineError, InvalidInputError, ReadingError

CHANNEL_ARGS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.max_receive_message_length", 256 << 20),
    ("grpc.max_send_message_length", 256 << 20),
]


def infer_inputs(inputs: dict[str, np.ndarray]) -> list[InferInput]:
    """Triton request tensors from numpy arrays (shared by the sync and async clients)."""
    tensors = []
    for name, array in inputs.items():
        tensor = InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    return tensors


class AsyncTriton:
    def __init__(self, url: str) -> None:
        self.url = url
        self._client = aioclient.InferenceServerClient(url, channel_args=CHANNEL_ARGS)

    async def infer(self, model: str, inputs: dict[str, np.ndarray], outputs: list[str],
                    timeout_s: float) -> dict[str, np.ndarray]:
        if timeout_s <= 0:
            raise DeadlineError("the deadline passed before the model was called")
        try:
            result = await self._client.infer(
                model, infer_inputs(inputs), outputs=[InferRequestedOutput(n) for n in outputs],
                client_timeout=timeout_s)
        except InferenceServerException as err:
            raise _translate(err, model) from None
        return {name: result.as_numpy(name) for name in outputs}

    async def ready(self) -> bool:
        try:
            return bool(await self._client.is_server_ready(client_timeout=2.0))
        except InferenceServerException:
            return False

    async def model_index(self) -> list[dict]:
        try:
            index = await self._client.get_model_repository_index(as_json=True, client_timeout=5.0)
        except InferenceServerException as err:
            raise _translate(err, "repository index") from None
        return index.get("models", [])

    async def close(self) -> None:
        await self._client.close()


def _translate(err: InferenceServerException, what: str) -> ReadingError:
    status = str(err.status() or "")
    message = (err.message() or "").splitlines()[0][:300]
    if "UNAVAILABLE" in status:
        return BackendUnavailableError(f"the inference server is unreachable ({what}); retry shortly")
    if "DEADLINE_EXCEEDED" in status or "Deadline" in message:
        return DeadlineError(f"the deadline passed while {what} was running")
    if "INVALID_ARGUMENT" in status:
        return InvalidInputError(f"{what} rejected the input: {message}")
    if "RESOURCE_EXHAUSTED" in status:
        return BackendUnavailableError(f"the inference server is overloaded ({what}); retry shortly")
    return BackendUnavailableError(f"{what} failed on the inference server: {message}")
