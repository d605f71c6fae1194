"""Shared fixtures: one real Triton for the whole test session, on free ports."""
from __future__ import annotations

import pytest
import tritonclient.grpc as grpcclient

from percolate_models.build import verify
from percolate_models.paths import ProjectPaths
from percolate_triton import TritonConfig, TritonServer
from reading_frontend.triton_models import TritonModels


@pytest.fixture(scope="session")
def paths() -> ProjectPaths:
    paths = ProjectPaths.from_env()
    problems = verify(paths)
    if problems:
        pytest.exit("model repository not built: " + "; ".join(problems)
                    + " (run `make test`, which builds it first)", returncode=2)
    return paths


@pytest.fixture(scope="session")
def triton(paths: ProjectPaths):
    """A real tritonserver serving the built repository, shared by every test."""
    with TritonServer(TritonConfig.from_env()) as server:
        yield server


@pytest.fixture(scope="session")
def triton_client(triton: TritonServer):
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def triton_models(triton: TritonServer):
    with TritonModels(triton.grpc_url) as models:
        yield models
