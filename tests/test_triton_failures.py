"""Launcher failures end in one clear line: busy port, repository already served,
corrupt or missing model file (with the model's own error), missing repository."""
from __future__ import annotations

import shutil
import socket
import subprocess
import sys

import pytest

from percolate_models.errors import RepositoryError
from percolate_triton import PortInUseError, TritonConfig, TritonServer, TritonStartError


def one_model_repository(paths, tmp_path, name: str = "ocr_cls"):
    repo = tmp_path / "repo"
    shutil.copytree(paths.model_repository / name, repo / name)
    return repo


def test_busy_port_is_reported_before_starting(paths, tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        config = TritonConfig(model_repository=one_model_repository(paths, tmp_path), grpc_port=port)
        with pytest.raises(PortInUseError, match=f"port {port} \\(grpc\\).*--grpc-port"):
            TritonServer(config).start()


def test_second_triton_on_the_same_repository_is_refused(triton, paths):
    with pytest.raises(RepositoryError, match="already served by Triton.*stop it"):
        TritonServer(TritonConfig(model_repository=paths.model_repository)).start()
    assert triton.process.poll() is None  # the shared server is untouched


def test_corrupt_model_file_fails_with_the_models_own_error(paths, tmp_path):
    repo = one_model_repository(paths, tmp_path)
    (repo / "ocr_cls" / "1" / "model.onnx").write_bytes(b"\x08\x07garbage, not a protobuf")
    server = TritonServer(TritonConfig(model_repository=repo, startup_timeout_s=120))
    with pytest.raises(TritonStartError) as caught:
        server.start()
    message = str(caught.value)
    assert "model ocr_cls failed to load" in message
    assert "cannot load" in message and "model.onnx" in message  # raised by the model itself
    assert "percolate-models build" in message
    assert server.process.poll() is not None  # nothing left running


def test_missing_model_file_names_the_file(paths, tmp_path):
    repo = one_model_repository(paths, tmp_path)
    (repo / "ocr_cls" / "1" / "model.onnx").unlink()
    with pytest.raises(TritonStartError, match=r"ocr_cls.*model.onnx is missing"):
        TritonServer(TritonConfig(model_repository=repo, startup_timeout_s=120)).start()


def test_command_line_reports_busy_port_in_one_line(paths, tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "percolate_triton.cli", "serve", "--grpc-port", str(port),
             "--model-repository", str(one_model_repository(paths, tmp_path))],
            capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        f"percolate-triton: port {port} (grpc) on 127.0.0.1 is already in use: "
        "stop what holds it or choose another with --grpc-port"]


def test_missing_repository_says_to_build(tmp_path):
    with pytest.raises(RepositoryError, match="does not exist.*percolate-models build"):
        TritonServer(TritonConfig(model_repository=tmp_path / "nowhere")).start()
