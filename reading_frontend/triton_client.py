"""The frontend's asynchronous Triton client: one channel, reused, every call bounded.

Every call runs under the caller's remaining deadline. When Triton cannot be reached
the call fails at once with UNAVAILABLE (no waiting for the connection), and the
channel's short reconnect backoff brings the service back as soon as Triton returns,
without a restart. Large tensors travel through shared memory where Triton shares
``/dev/shm`` with the frontend (``triton_shm.py``); everything else, and everything when
it does not, goes over the channel.
"""
from __future__ import annotations

import ipaddress
import logging
import time

import numpy as np
import tritonclient.grpc.aio as aioclient
from tritonclient.grpc import InferInput, InferRequestedOutput
from tritonclient.utils import InferenceServerException, np_to_triton_dtype, triton_to_np_dtype

from .errors import BackendUnavailableError, DeadlineError, InvalidInputError, ReadingError
from .triton_shm import MIN_TENSOR_BYTES, Region, SharedMemoryPool, refusal

log = logging.getLogger(__name__)

FIXED_WIDTH_TYPES = frozenset({"BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16",
                               "INT32", "INT64", "FP16", "FP32", "FP64"})
"""Output types read back from a region: numpy has each at Triton's width (not BF16, BYTES)."""

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


class _RegionsRefused(Exception):
    """Triton refused a call for one of its shared-memory regions (``triton_shm.refusal``)."""

    def __init__(self, why: str, message: str) -> None:
        super().__init__(message)
        self.why = why


def is_loopback(url: str) -> bool:
    """Whether ``host:port`` names this host, the only place Triton can share /dev/shm."""
    host = url.rsplit(":", 1)[0].strip("[]") if ":" in url else url
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class AsyncTriton:
    def __init__(self, url: str, shared_memory_bytes: int = 0) -> None:
        self.url = url
        self._client = aioclient.InferenceServerClient(url, channel_args=CHANNEL_ARGS)
        self.shared_memory = SharedMemoryPool(
            self._client, shared_memory_bytes if is_loopback(url) else 0)
        if shared_memory_bytes > 0 and not is_loopback(url):
            self.shared_memory.disabled_because = f"Triton at {url} is not on this host"

    async def infer(self, model: str, inputs: dict[str, np.ndarray], outputs: list[str],
                    timeout_s: float, output_bytes: dict[str, int] | None = None
                    ) -> dict[str, np.ndarray]:
        """Run ``model`` within ``timeout_s``. ``output_bytes`` gives the size of outputs
        known in advance, which may then come back through shared memory."""
        if timeout_s <= 0:
            raise DeadlineError("the deadline passed before the model was called")
        deadline = time.monotonic() + timeout_s
        try:
            return await self._infer(model, inputs, outputs, deadline, output_bytes or {})
        except InferenceServerException as err:
            raise _translate(err, model) from None
        except _RegionsRefused as refused:
            if refused.why == "forgotten":  # Triton restarted: register new regions later
                self.shared_memory.forget_all()
            else:
                log.warning("Triton refused a shared-memory region for %s (%s); sent over gRPC",
                            model, refused)
        if time.monotonic() >= deadline:
            raise DeadlineError(f"the deadline passed while {model} was running")
        try:
            return await self._infer(model, inputs, outputs, deadline, output_bytes or {},
                                     use_shared_memory=False)
        except InferenceServerException as err:
            raise _translate(err, model) from None

    async def _infer(self, model: str, inputs: dict[str, np.ndarray], outputs: list[str],
                     deadline: float, output_bytes: dict[str, int],
                     use_shared_memory: bool = True) -> dict[str, np.ndarray]:
        pool = self.shared_memory
        leased: dict[str, Region] = {}
        finished = False
        try:
            tensors = []
            for name, array in inputs.items():
                tensor = InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
                fixed_width = array.dtype.kind in "biuf"  # not BYTES (object) tensors
                region = (await pool.lease(array.nbytes, deadline)
                          if use_shared_memory and fixed_width else None)
                self._count(region, array.nbytes >= MIN_TENSOR_BYTES)
                if region is None:
                    tensor.set_data_from_numpy(array)
                else:
                    leased[f"in:{name}"] = region
                    region.write(array)
                    tensor.set_shared_memory(region.name, array.nbytes)
                tensors.append(tensor)
            requested = []
            for name in outputs:
                wanted = InferRequestedOutput(name)
                size = output_bytes.get(name, 0)
                region = await pool.lease(size, deadline) if use_shared_memory and size else None
                self._count(region, size > 0)
                if region is not None:
                    leased[f"out:{name}"] = region
                    wanted.set_shared_memory(region.name, size)
                requested.append(wanted)
            left = deadline - time.monotonic()
            if left <= 0:
                raise DeadlineError(f"the deadline passed before {model} was called")
            try:
                result = await self._client.infer(model, tensors, outputs=requested, client_timeout=left)
            except InferenceServerException as err:
                why = refusal(err) if leased else ""
                if why:
                    raise _RegionsRefused(why, (err.message() or "").splitlines()[0][:300]) from err
                raise
            found = {}
            for name in outputs:
                region = leased.get(f"out:{name}")
                if region is None:
                    found[name] = result.as_numpy(name)
                else:
                    tensor = result.get_output(name)
                    if tensor.datatype not in FIXED_WIDTH_TYPES:
                        raise BackendUnavailableError(
                            f"{model} answered {name} as {tensor.datatype}, which shared memory "
                            "does not carry here; its size was declared wrongly")
                    found[name] = region.read(triton_to_np_dtype(tensor.datatype), tuple(tensor.shape))
            finished = True
            return found
        finally:
            for region in leased.values():
                try:
                    pool.release(region) if finished else pool.retire(region)
                except Exception:  # one region's bookkeeping must not strand the others
                    log.exception("could not return shared-memory region %s", region.name)

    def _count(self, region: Region | None, large: bool) -> None:
        """percolate_reading_triton_large_tensors_total: each large tensor (an input of
        MIN_TENSOR_BYTES or more, an output of declared size) by the way it actually goes."""
        if region is not None:
            self.shared_memory.tensors_shared += 1
        elif large:
            self.shared_memory.tensors_over_grpc += 1

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
        try:
            await self.shared_memory.close()
        except InferenceServerException:
            pass  # Triton has gone: it has dropped our regions with its process
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
