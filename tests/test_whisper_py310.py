"""The committed ``whisper/1/model.py`` loads and decodes as the official Triton container
would run it with the gpu config: Python 3.10, numpy and nothing of this project (issue 16,
blocker 1; ``nvcr.io/nvidia/tritonserver:24.10-py3`` has no ``percolate_models``, no cupy).

A venv of pyenv's 3.10.13 holding only numpy (``.cache/py310-numpy-<version>``, made once)
imports the rendered file with ``python -I`` (no project on its path), initialises it with
the committed ``configs/gpu.pbtxt`` (``mode: bls``), and decodes jfk.flac's first window.
Its BLS calls go through a stand-in ``triton_python_backend_utils``
(``tests/pb_utils_standin/``) to the session's real Triton, so the encoder and decoder are
the real models. Where that Python is absent the test is skipped, saying so.
"""
from __future__ import annotations

import json
import os
import subprocess
import warnings
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import json_format

from percolate_models import configs
from reading_frontend import speech
from tests.audio_fixtures import JFK_TEXT, jfk_flac
from tests.whisper_support import skip_where_the_int8_step_mixes_rows

PY310 = Path.home() / ".pyenv" / "versions" / "3.10.13" / "bin" / "python"
STANDIN = Path(__file__).resolve().parent / "pb_utils_standin"


def numpy_only_venv(cache: Path) -> Path:
    """A Python 3.10 venv with only numpy (the project's pinned version), made once per
    version and renamed into place when complete, so concurrent sessions never see half of it."""
    numpy_version = version("numpy")
    target = cache / f"py310-numpy-{numpy_version}"
    python = target / "bin" / "python"
    if python.is_file():
        return python
    partial = cache / f"py310-numpy-{numpy_version}.partial-{os.getpid()}"
    subprocess.run([str(PY310), "-m", "venv", str(partial)], check=True)
    subprocess.run([str(partial / "bin" / "python"), "-m", "pip", "install", "--quiet",
                    "--disable-pip-version-check", f"numpy=={numpy_version}"], check=True)
    try:
        os.rename(partial, target)
    except OSError:  # another session finished first
        subprocess.run(["rm", "-rf", str(partial)], check=False)
    return python


@pytest.fixture(scope="module")
def py310(paths) -> Path:
    if not PY310.is_file():
        reason = (f"{PY310} is absent: cannot prove the gpu-config whisper model.py under the "
                  "official Triton container's Python 3.10 on this machine")
        warnings.warn(reason)
        pytest.skip(reason)
    paths.cache.mkdir(parents=True, exist_ok=True)
    return numpy_only_venv(paths.cache)


def test_venv_holds_numpy_only(py310):
    listed = subprocess.run([str(py310), "-m", "pip", "list", "--format=json",
                             "--disable-pip-version-check"],
                            capture_output=True, text=True, check=True).stdout
    names = {p["name"].lower() for p in json.loads(listed)} - {"pip", "setuptools"}
    assert names == {"numpy"}


def test_committed_model_py_is_self_contained(paths):
    text = (paths.model_repository / "whisper" / "1" / "model.py").read_text()
    assert text == configs.LOOP_MODEL_FILE
    assert "percolate_models." not in text.replace("# ---- percolate_models/", "")
    assert "TritonPythonModel = WhisperLoopModel" in text


def test_gpu_config_model_decodes_jfk_under_python_310_with_numpy_only(
        py310, paths, triton, triton_models, tmp_path):
    skip_where_the_int8_step_mixes_rows(paths)
    decoded = speech.decode_audio(jfk_flac(), 7200)
    features = speech.log_mel(decoded.samples)
    (window,) = speech.plan_windows(features, decoded.samples)
    batch = speech.window_features(features, window)[None]
    np.savez(tmp_path / "inputs.npz", input_features=batch)

    gpu = configs.parse((paths.model_repository / "whisper" / "configs" / "gpu.pbtxt").read_text())
    assert gpu.parameters["mode"].string_value == "bls"
    args = {"model_config": json.dumps(json_format.MessageToDict(
                gpu, preserving_proto_field_name=True)),
            "model_repository": str(paths.model_repository / "whisper"), "model_version": "1",
            "model_name": "whisper", "model_instance_kind": "CPU",
            "model_instance_name": "whisper_0_0", "model_instance_device_id": "0"}
    (tmp_path / "args.json").write_text(json.dumps(args))

    env = {"PATH": "/usr/bin:/bin", "PB_STANDIN_TRITON_HTTP": triton.http_url}
    run = subprocess.run(
        [str(py310), "-I", str(STANDIN / "drive_model.py"),
         str(paths.model_repository / "whisper" / "1" / "model.py"), str(tmp_path / "args.json"),
         str(tmp_path / "inputs.npz"), str(tmp_path / "outputs.npz")],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=540)
    assert run.returncode == 0, run.stderr[-4000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["python"][:2] == [3, 10]
    assert report["project_modules"] == []
    assert report["bls_calls"]["whisper_encoder"] == 1
    assert report["bls_calls"]["whisper_decoder"] == 1  # the first step
    assert report["bls_calls"]["whisper_decoder_with_past"] > 10

    with np.load(tmp_path / "outputs.npz") as got:
        tokens = got["tokens"]
    expected = triton_models.infer("whisper", {"input_features": batch}, ["tokens"])["tokens"]
    np.testing.assert_array_equal(tokens, expected)  # the cpu target's in-process loop
    tokenizer = speech.WhisperTokenizer(paths.assets / "whisper" / "tokenizer.json")
    segments = speech.segments_from_tokens([int(t) for t in tokens[0] if t >= 0], window,
                                           decoded.duration, tokenizer)
    text = " ".join(s.text for s in segments)
    assert speech.normalise_words(text) == speech.normalise_words(JFK_TEXT), text
