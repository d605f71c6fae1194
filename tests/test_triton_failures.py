"""Launcher failures end in one clear line: busy port, repository already served,
corrupt or missing model file (with the model's own error), missing repository."""
from __future__ import annotations

import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from percolate_common.processes import wait_for
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


def _process_group(pgid: int) -> list[int]:
    """Live (not zombie) processes in process group ``pgid``."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":  # state, ppid, pgrp
            members.append(int(stat.parent.name))
    return members


def _children(pid: int) -> list[int]:
    children = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            children += [int(c) for c in (task / "children").read_text().split()]
        except OSError:  # a thread that ended meanwhile
            continue
    return children


def test_launcher_exits_non_zero_when_its_triton_dies(paths, tmp_path):
    """kill -9 of tritonserver: the launcher exits non-zero (its orchestrator restarts it)
    and takes the backend stub processes with it."""
    repo = one_model_repository(paths, tmp_path, "text_embedding")
    launcher = subprocess.Popen([sys.executable, "-m", "percolate_triton.cli", "serve", "--model-repository",
                                 str(repo)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in launcher.stdout], daemon=True).start()
    try:
        try:
            ready = lines.get(timeout=300)
        except queue.Empty:
            raise AssertionError("the launcher printed nothing in 300 s") from None
        assert ready.startswith("Triton ready"), ready + launcher.stderr.read()
        (triton_pid,) = _children(launcher.pid)
        stubs = wait_for(lambda: [p for p in _process_group(triton_pid) if p != triton_pid],
                         "a backend stub process")
        os.kill(triton_pid, signal.SIGKILL)
        code = launcher.wait(timeout=120)
        assert code != 0, launcher.stderr.read()
        assert "tritonserver exited unexpectedly" in launcher.stderr.read()
        wait_for(lambda: not _process_group(triton_pid), f"the stubs {stubs} gone", 60)
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()


def test_a_killed_tritons_backend_regions_are_removed_from_dev_shm(paths, tmp_path):
    """kill -9 of tritonserver leaves its Python backend's regions in /dev/shm (memory,
    until the machine restarts); the launcher names them and removes them on stop."""
    server = TritonServer(TritonConfig(model_repository=one_model_repository(paths, tmp_path),
                                       startup_timeout_s=120))
    server.start()
    try:
        regions = sorted(Path("/dev/shm").glob(f"{server.shm_prefix}*"))
        assert regions, "the Python backend's regions carry the launcher's prefix"
        os.kill(server.process.pid, signal.SIGKILL)
        server.process.wait(timeout=60)
        assert all(region.exists() for region in regions), "a killed Triton leaves them"
    finally:
        server.stop()
    assert not list(Path("/dev/shm").glob(f"{server.shm_prefix}*"))
