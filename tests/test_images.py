"""The Dockerfiles proven without a Docker daemon (none runs on these machines).

For each image: the build context is exactly what its ``.dockerignore`` lets through; the
package is built as a wheel from that context alone; a clean virtual environment gets the
image's lock (``--require-hashes``) and the wheel, as the Dockerfile does; then the image's
entry point runs from that environment, outside the checkout: ``--help``, and a start-up to
SERVING against the session's real Triton, reading service and certificates. The image's
environment must not hold what its process does not need (torch, Triton, RocksDB...).
Each lock's environment is cached under ``.cache/image-venvs`` by the lock's hash.
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.test_helm import DOCKERFILES, dockerfile_instructions
from tests.test_node import node_config

ROOT = Path(__file__).resolve().parents[1]
LOCK_OF = {"node": "node.lock", "reading": "reading.lock"}
ABSENT = {  # modules an image must not be able to import
    "node": ["torch", "onnxruntime", "tritonclient", "cv2", "av", "pytriton", "transformers"],
    "reading": ["torch", "pytriton", "transformers", "rocksdict", "usearch", "onnx"],
}


def dockerignore_allows(patterns: list[str], path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    included = True
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern[1:] if negate else pattern
        bodies = [body, body[3:]] if body.startswith("**/") else [body]
        if any(fnmatch.fnmatchcase(c, b) for c in candidates for b in bodies):
            included = negate
    return included


def ignore_patterns(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines()
            if line.strip() and not line.strip().startswith("#")]


def context_files(image: str) -> list[str]:
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.splitlines()
    patterns = ignore_patterns(Path(f"{DOCKERFILES[image]}.dockerignore"))
    return [name for name in listed if (ROOT / name).is_file() and dockerignore_allows(patterns, name)]


def test_dockerignore_matching_follows_docker_rules():
    patterns = ["*", "!percolate", "**/__pycache__", "!model_repository", "model_repository/*/1/*.onnx"]
    assert dockerignore_allows(patterns, "percolate/node/v1/node_pb2.py")
    assert not dockerignore_allows(patterns, ".venv/bin/python")
    assert not dockerignore_allows(patterns, "percolate/__pycache__/x.pyc")
    assert not dockerignore_allows(patterns, "model_repository/ocr_det/1/model.onnx")
    assert dockerignore_allows(patterns, "model_repository/ocr_det/config.pbtxt")


def test_root_dockerignore_covers_both_images_and_keeps_local_state_out():
    """A builder without BuildKit reads only the root .dockerignore."""
    root = ignore_patterns(ROOT / ".dockerignore")
    for image in DOCKERFILES:
        for name in context_files(image):
            assert dockerignore_allows(root, name), f"{name} is in the {image} context but not the root one"
    for private in (".venv/bin/python", ".cache/setup/pip", "model_assets/manifest.json", ".git/HEAD",
                    "model_repository/text_embedding/1/model.onnx", "percolate_node/store/_gcm.cpython-311.so"):
        assert not dockerignore_allows(root, private), private


def test_base_images_are_pinned_by_digest():
    for image, path in DOCKERFILES.items():
        args = [a for op, a in dockerfile_instructions(path) if op == "ARG" and a.startswith("PYTHON_IMAGE=")]
        assert args and "@sha256:" in args[0] and len(args[0].split("@sha256:")[1]) == 64, image


def _run(command: list, **kw) -> subprocess.CompletedProcess:
    done = subprocess.run(command, capture_output=True, text=True, **kw)
    assert done.returncode == 0, f"{' '.join(map(str, command))}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def _venv(image: str) -> Path:
    """A clean environment holding exactly the image's lock (cached by the lock's hash)."""
    lock = ROOT / "requirements" / LOCK_OF[image]
    digest = hashlib.sha256(lock.read_bytes()).hexdigest()[:16]
    venv = ROOT / ".cache" / "image-venvs" / f"{image}-{digest}"
    if not (venv / ".complete").exists():
        shutil.rmtree(venv, ignore_errors=True)
        _run([sys.executable, "-m", "venv", str(venv)])
        _run([str(venv / "bin/python"), "-m", "pip", "install", "-q", "--require-hashes", "--no-deps",
              "-r", str(lock)], timeout=1200)
        (venv / ".complete").write_text(digest)
    return venv


@pytest.fixture(scope="module", params=sorted(DOCKERFILES))
def image_env(request, tmp_path_factory):
    """(image, venv) with the wheel built from the image's context alone installed."""
    image = request.param
    instructions = dockerfile_instructions(DOCKERFILES[image])
    installs = " ".join(a for op, a in instructions if op == "RUN" and "pip install" in a)
    assert f"--require-hashes --no-deps -r requirements/{LOCK_OF[image]}" in installs
    context = tmp_path_factory.mktemp(f"{image}-context")
    for name in context_files(image):
        (context / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, context / name)
    for op, args in instructions:  # what COPY takes from the context is there
        if op == "COPY" and not args.startswith("--from="):
            for source in args.split()[:-1]:
                assert (context / source).exists(), f"COPY {source}: not in the {image} build context"
    wheels = tmp_path_factory.mktemp(f"{image}-wheel")
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels),
          str(context)], timeout=600)
    venv = _venv(image)
    wheel = next(wheels.glob("percolate-*.whl"))
    _run([str(venv / "bin/python"), "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", str(wheel)])
    _run([str(venv / "bin/python"), "-m", "pip", "check"])
    return image, venv


def _entry(image: str) -> list[str]:
    instructions = dockerfile_instructions(DOCKERFILES[image])
    entrypoint = json.loads(next(a for op, a in reversed(instructions) if op == "ENTRYPOINT"))
    cmd = json.loads(next(a for op, a in reversed(instructions) if op == "CMD"))
    return entrypoint + cmd


def _image_env_vars(image: str) -> dict[str, str]:
    """The environment the image sets, with /app paths pointed at this checkout's built files."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PERCOLATE_", "VIRTUAL_ENV", "PYTHON"))}
    if image == "reading":
        env.update(PERCOLATE_MODEL_REPOSITORY=str(ROOT / "model_repository"),
                   PERCOLATE_MODEL_ASSETS=str(ROOT / "model_assets"))
    return env


def test_image_environment_lacks_what_its_process_does_not_need(image_env, tmp_path):
    image, venv = image_env
    for module in ABSENT[image]:
        probe = subprocess.run([str(venv / "bin/python"), "-c", f"import {module}"], capture_output=True,
                               cwd=tmp_path, env=_image_env_vars(image))
        assert probe.returncode != 0, f"the {image} image can import {module}"


def test_image_entry_point_starts_to_serving(image_env, tmp_path, reading, pki, triton):
    image, venv = image_env
    command = [str(venv / "bin" / _entry(image)[0]), *_entry(image)[1:]]
    env = _image_env_vars(image)
    help_run = _run([*command, "--help"], cwd=tmp_path, env=env, timeout=120)
    assert "usage" in help_run.stdout.lower()
    if image == "node":
        config = replace(node_config(tmp_path, reading, pki), metrics_port=-1)
        env.update(config.to_env())
        prefix, secure = "node for tenant", False
    else:
        command += ["--port", "0", "--metrics-port", "-1", "--triton-url", triton.grpc_url,
                    "--tls-cert", str(pki.server.cert), "--tls-key", str(pki.server.key),
                    "--tls-client-ca", str(pki.ca.cert)]
        prefix, secure = "reading service on ", True
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        line = process.stdout.readline()
        assert line.startswith(prefix), line + process.stderr.read()
        imported_from = _run([str(venv / "bin/python"), "-c",
                              "import percolate_node, reading_frontend; print(percolate_node.__file__)"],
                             cwd=tmp_path, env=env).stdout
        assert imported_from.startswith(str(venv) + "/"), imported_from  # the wheel, not the checkout
        if secure:
            from percolate_certs.tls import channel_credentials

            creds = pki.tenants["tenant-a"]
            address = line.split()[3]
            channel = grpc.secure_channel(address, channel_credentials(creds.ca, creds.cert, creds.key))
        else:
            address = line.split(" on ")[1].split(",")[0]
            channel = grpc.insecure_channel(address)
        with channel:
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=120)
        assert status.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
