"""``load_weights: on_first_request`` on a real Triton (percolate_models/python_backend.py).

On the cpu target the Whisper loop loads the encoder and decoder graphs in its own
process, so the served ``whisper_encoder`` / ``whisper_decoder`` /
``whisper_decoder_with_past`` models hold no onnxruntime session until something calls
them: READY, no weights in their stub, then a correct answer on the first call. A file
broken since the load gives each request an error naming the model and the file while
the other models serve on, and the model serves again once the file is repaired.
Each test starts its own Triton on a small repository, so nothing else has called the
models first.
"""
from __future__ import annotations

import os
import re
import shutil
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from percolate_models.configs import CPU_INTRA_OP_THREADS
from percolate_triton import TritonConfig, TritonServer
from percolate_triton.server import python_backend_stubs

ort = pytest.importorskip("onnxruntime")


def repository(paths, target: Path, linked: tuple[str, ...], copied: tuple[str, ...] = ()) -> Path:
    """The named models' config and version 1 (cpu files only): ``linked`` as symlinks to
    the built repository, ``copied`` as copies a test may break."""
    for name in linked + copied:
        source = paths.model_repository / name
        (target / name / "1").mkdir(parents=True)
        for relative in ("config.pbtxt", "1/model.py", "1/model.onnx"):
            if name in copied:
                shutil.copyfile(source / relative, target / name / relative)
            else:
                (target / name / relative).symlink_to(source / relative)
    return target


@pytest.fixture
def serve(monkeypatch):
    """Start a Triton on a repository, without the developer's ``PERCOLATE_ORT_*``."""
    for name in [n for n in os.environ if n.startswith("PERCOLATE_ORT_")]:
        monkeypatch.delenv(name)
    servers = []

    def start(repo: Path) -> TritonServer:
        server = TritonServer(TritonConfig(model_repository=repo, startup_timeout_s=180))
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def loaded(server: TritonServer) -> dict[str, float]:
    """``percolate_onnx_weights_loaded`` per model, from Triton's /metrics."""
    text = urllib.request.urlopen(server.metrics_url, timeout=30).read().decode()
    return {model: float(value) for model, value in re.findall(
        r'^percolate_onnx_weights_loaded\{model="([^"]+)"\} (\S+)$', text, re.M)}


def stub_pid(server: TritonServer, model: str) -> int:
    """The Python-backend stub process serving ``model`` (a child of tritonserver)."""
    pid = python_backend_stubs(server.process.pid).get(model)
    if pid is None:
        raise AssertionError(f"no stub process for {model}")
    return pid


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def infer(client, model: str, feeds: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
    inputs = []
    for name, array in feeds.items():
        tensor = grpcclient.InferInput(name, list(array.shape), {
            np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64"}[array.dtype])
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    result = client.infer(model, inputs, outputs=[grpcclient.InferRequestedOutput(n) for n in outputs],
                          client_timeout=300)
    return {name: result.as_numpy(name) for name in outputs}


def in_process(onnx_file: Path, feeds: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = CPU_INTRA_OP_THREADS  # as the served model runs it
    session = ort.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])
    return session.run(outputs, feeds)


def test_served_whisper_graphs_hold_no_weights_until_called(paths, tmp_path, serve):
    """READY with no session (gauge 0, and the decoder's stub grows by more than half its
    file's size on the first call: the weights were not resident before), then the same
    answer as onnxruntime in this process; calling one model loads only that one."""
    server = serve(repository(paths, tmp_path / "repo", ("whisper_encoder", "whisper_decoder")))
    client = grpcclient.InferenceServerClient(server.grpc_url)
    for model in ("whisper_encoder", "whisper_decoder"):
        assert client.is_model_ready(model)
    assert loaded(server) == {"whisper_encoder": 0.0, "whisper_decoder": 0.0}

    features = np.random.default_rng(7).standard_normal((1, 80, 3000)).astype(np.float32) * 0.5
    served = infer(client, "whisper_encoder", {"input_features": features}, ["last_hidden_state"])
    (expected,) = in_process(paths.model_repository / "whisper_encoder" / "1" / "model.onnx",
                             {"input_features": features}, ["last_hidden_state"])
    np.testing.assert_allclose(served["last_hidden_state"], expected, rtol=1e-4, atol=1e-4)
    assert loaded(server) == {"whisper_encoder": 1.0, "whisper_decoder": 0.0}

    decoder_file = paths.model_repository / "whisper_decoder" / "1" / "model.onnx"
    stub = stub_pid(server, "whisper_decoder")
    before = rss_bytes(stub)
    feeds = {"input_ids": np.array([[50257, 50362]], np.int64),  # <|startoftranscript|><|notimestamps|>
             "encoder_hidden_states": expected}
    logits = infer(client, "whisper_decoder", feeds, ["logits"])["logits"]
    grown = rss_bytes(stub) - before
    assert grown > decoder_file.stat().st_size // 2, (before, grown)
    (expected_logits,) = in_process(decoder_file, feeds, ["logits"])
    np.testing.assert_allclose(logits, expected_logits, rtol=1e-3, atol=1e-3)
    assert loaded(server) == {"whisper_encoder": 1.0, "whisper_decoder": 1.0}
    client.close()


def test_a_broken_file_fails_its_requests_not_the_server(paths, tmp_path, serve):
    """The encoder's file is corrupted after Triton loaded the model (the load only checks
    that it is there): each request gets an error naming the model and the file, ``ocr_cls``
    is answered meanwhile; then the file goes missing (a clear error again); once it is
    back the next request loads it and gets the right answer."""
    repo = repository(paths, tmp_path / "repo", ("ocr_cls",), copied=("whisper_encoder",))
    server = serve(repo)
    onnx_file = repo / "whisper_encoder" / "1" / "model.onnx"
    onnx_file.write_bytes(b"\x08\x07garbage, not a protobuf")
    client = grpcclient.InferenceServerClient(server.grpc_url)
    assert client.is_model_ready("whisper_encoder")
    features = np.zeros((1, 80, 3000), np.float32)
    for _ in range(2):
        with pytest.raises(InferenceServerException) as caught:
            infer(client, "whisper_encoder", {"input_features": features}, ["last_hidden_state"])
        message = str(caught.value)
        assert "model whisper_encoder" in message and "cannot load" in message
        assert str(onnx_file) in message and "percolate-models build" in message
        probabilities = infer(client, "ocr_cls", {"image": np.zeros((1, 3, 48, 192), np.float32)},
                              ["probabilities"])["probabilities"]
        assert probabilities.shape == (1, 2)
        assert client.is_model_ready("whisper_encoder") and server.process.poll() is None
    assert loaded(server)["whisper_encoder"] == 0.0

    onnx_file.unlink()
    with pytest.raises(InferenceServerException, match=f"whisper_encoder.*{re.escape(str(onnx_file))} is missing"):
        infer(client, "whisper_encoder", {"input_features": features}, ["last_hidden_state"])

    shutil.copyfile(paths.model_repository / "whisper_encoder" / "1" / "model.onnx", onnx_file)
    served = infer(client, "whisper_encoder", {"input_features": features}, ["last_hidden_state"])
    (expected,) = in_process(onnx_file, {"input_features": features}, ["last_hidden_state"])
    np.testing.assert_allclose(served["last_hidden_state"], expected, rtol=1e-4, atol=1e-4)
    assert loaded(server)["whisper_encoder"] == 1.0
    client.close()


def test_an_idle_model_drops_its_weights_and_loads_them_again(paths, tmp_path, serve):
    """``unload_idle_s`` on a real Triton (the catalog's 600 s, cut to 2 in a copied config):
    after a request the decoder holds its weights, gives them back to the system once it has
    been idle that long (gauge 0, its stub shrinks by more than half the file), and the next
    request loads them again and gets the same answer."""
    repo = repository(paths, tmp_path / "repo", ())
    source = paths.model_repository / "whisper_decoder"
    (repo / "whisper_decoder" / "1").mkdir(parents=True)
    for relative in ("1/model.py", "1/model.onnx"):
        (repo / "whisper_decoder" / relative).symlink_to(source / relative)
    config, count = re.subn(r'(key: "unload_idle_s"\s*value \{\s*string_value: )"600"', r'\1"2"',
                            (source / "config.pbtxt").read_text())
    assert count == 1, "the catalog's unload_idle_s for the decoder moved: update this test"
    (repo / "whisper_decoder" / "config.pbtxt").write_text(config)
    server = serve(repo)
    client = grpcclient.InferenceServerClient(server.grpc_url)
    decoder_file = source / "1" / "model.onnx"
    (hidden,) = in_process(paths.model_repository / "whisper_encoder" / "1" / "model.onnx",
                           {"input_features": np.zeros((1, 80, 3000), np.float32)}, ["last_hidden_state"])
    feeds = {"input_ids": np.array([[50257, 50362]], np.int64), "encoder_hidden_states": hidden}
    (expected,) = in_process(decoder_file, feeds, ["logits"])
    stub = stub_pid(server, "whisper_decoder")

    def wait_for_weights(value: float) -> None:
        """Until the gauge says ``value``: an event from the model, with a deadline a loaded
        machine meets (the idle thread's own wait is 2 s)."""
        deadline = time.monotonic() + 180
        while loaded(server)["whisper_decoder"] != value:
            assert time.monotonic() < deadline, f"whisper_decoder's weights gauge never reached {value}"
            time.sleep(0.2)

    for round_ in range(2):
        np.testing.assert_allclose(infer(client, "whisper_decoder", feeds, ["logits"])["logits"], expected,
                                   rtol=1e-3, atol=1e-3)
        holding = rss_bytes(stub)
        assert loaded(server)["whisper_decoder"] == 1.0
        wait_for_weights(0.0)
        released = holding - rss_bytes(stub)
        assert released > decoder_file.stat().st_size // 2, (round_, holding, released)
    assert stub_pid(server, "whisper_decoder") == stub, "the same stub throughout: unloaded, not restarted"
    client.close()
