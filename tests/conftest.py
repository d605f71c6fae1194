"""Shared fixtures: one real Triton for the whole test session, on free ports."""
from __future__ import annotations

import os

import pytest
import tritonclient.grpc as grpcclient

from percolate_models.build import verify
from percolate_models.paths import ProjectPaths
from percolate_triton import TritonConfig, TritonServer
from reading_frontend.triton_models import TritonModels
from tests import hermetic


def pytest_configure(config) -> None:
    hermetic.install()


def pytest_sessionfinish(session, exitstatus) -> None:
    if hermetic.violations:
        print("\n" + "\n".join(sorted(set(hermetic.violations))), flush=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


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
    """A real tritonserver serving the built repository, shared by every test. Without the
    ``PERCOLATE_ORT_*`` overrides (python_backend.py): the tests check the served settings,
    which a developer's shell must not change silently."""
    with pytest.MonkeyPatch.context() as patch:
        for name in [n for n in os.environ if n.startswith("PERCOLATE_ORT_")]:
            patch.delenv(name)
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


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    """A development CA, the server's certificate, and two tenants' client certificates."""
    from percolate_certs.ca import dev_pki

    return dev_pki(tmp_path_factory.mktemp("pki"), ["tenant-a", "tenant-b"])


def frontend_config(triton: TritonServer, pki, **overrides):
    from reading_frontend.config import FrontendConfig

    return FrontendConfig(triton_url=triton.grpc_url, tls_cert=pki.server.cert, tls_key=pki.server.key,
                          tls_client_ca=pki.ca.cert, **overrides)


@pytest.fixture(scope="session")
def reading(triton, pki, paths):
    """The reading frontend with mutual TLS in front of the session's Triton."""
    from reading_frontend.embedded import EmbeddedReading

    # 4 in flight (not one per core): tests send concurrent requests that Triton must batch
    with EmbeddedReading(frontend_config(triton, pki, max_in_flight=4), paths) as server:
        yield server


def tenant_channel(server, pki, tenant: str = "tenant-a"):
    """A gRPC channel to ``server`` presenting ``tenant``'s client certificate."""
    import grpc

    from percolate_certs.tls import channel_credentials

    creds = pki.tenants[tenant]
    return grpc.secure_channel(server.address, channel_credentials(creds.ca, creds.cert, creds.key))


@pytest.fixture
def reading_stub(reading, pki):
    from percolate.reading.v1 import reading_pb2_grpc

    with tenant_channel(reading, pki) as channel:
        yield reading_pb2_grpc.ReadingServiceStub(channel)


@pytest.fixture
def kek() -> bytes:
    """A random tenant key-encryption key."""
    import os

    return os.urandom(32)


@pytest.fixture
def store(tmp_path, kek):
    """A fresh encrypted store for tenant-a on disk."""
    from percolate_node.store import EncryptedStore

    with EncryptedStore.open(tmp_path / "db", "tenant-a", kek) as store:
        yield store


@pytest.fixture(scope="session")
def moto():
    """One real S3 server (moto_server) for the session; every test takes a bucket of its own
    (``durability_fixtures.new_bucket``)."""
    from tests.durability_fixtures import MotoServer

    server = MotoServer()
    yield server
    server.stop()
