"""The `percolate` command line: key generation and the offline admin commands on a
real store (rotate the data key, rotate the KEK, purge, shred), as an operator runs them."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from percolate_node.rem import Document, MemoryRepository, Resource, document_id
from percolate_node.store import EncryptedStore, load_kek
from percolate_node.store.errors import StoreError


def run(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "percolate_node.cli", *args], capture_output=True,
                          text=True, timeout=120, env={**os.environ, **env})


def test_keys_and_admin_commands(tmp_path):
    env = {"PERCOLATE_NODE_TENANT_ID": "acme", "PERCOLATE_NODE_DATA_DIR": str(tmp_path / "data"),
           "PERCOLATE_NODE_KEK_FILE": str(tmp_path / "kek.bin")}
    assert run("keys", "generate", str(tmp_path / "kek.bin"), env=env).returncode == 0
    assert oct((tmp_path / "kek.bin").stat().st_mode & 0o777) == "0o600"
    refused = run("keys", "generate", str(tmp_path / "kek.bin"), env=env)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    with EncryptedStore.open(tmp_path / "data", "acme", load_kek(tmp_path / "kek.bin")) as store:
        repository = MemoryRepository(store)
        doc = document_id(b"hello")
        repository.ingest(Document(id=doc, uri="file://a.txt"),
                          [Resource(document_id=doc, uri="file://a.txt", ordinal=0, text="kept text")])
        repository.ingest(Document(id=document_id(b"bye"), uri="file://b.txt"), [])
        repository.delete("document", document_id(b"bye"))

    done = run("admin", "rotate-dek", env=env)
    assert done.returncode == 0 and "old key retired" in done.stdout, done.stderr
    assert run("keys", "generate", str(tmp_path / "kek2.bin"), env=env).returncode == 0
    done = run("admin", "rotate-kek", str(tmp_path / "kek2.bin"), env=env)
    assert done.returncode == 0, done.stderr
    with pytest.raises(StoreError):  # the old KEK no longer opens it
        EncryptedStore.open(tmp_path / "data", "acme", load_kek(tmp_path / "kek.bin"), create=False)
    env["PERCOLATE_NODE_KEK_FILE"] = str(tmp_path / "kek2.bin")
    done = run("admin", "purge", env=env)
    assert done.returncode == 0 and "'document': 1" in done.stdout, done.stdout
    with EncryptedStore.open(tmp_path / "data", "acme", load_kek(tmp_path / "kek2.bin"), create=False) as store:
        assert MemoryRepository(store).get_resource(
            Resource(document_id=doc, uri="file://a.txt", ordinal=0, text="").id).text == "kept text"

    assert run("admin", "shred", env=env).returncode == 2  # needs --yes
    assert run("admin", "shred", "--yes", env=env).returncode == 0
    with pytest.raises(StoreError):
        EncryptedStore.open(tmp_path / "data", "acme", load_kek(tmp_path / "kek2.bin"), create=False)


def test_config_round_trips_through_the_environment(tmp_path):
    from pathlib import Path

    from percolate_node.config import NodeConfig

    config = NodeConfig(tenant_id="acme", data_dir=tmp_path / "d", kek_file=tmp_path / "k", port=7443,
                        reading_cert=Path("/c.pem"), token_file=tmp_path / "t", reading_service_config="{}")
    assert NodeConfig.from_env(config.to_env()) == config
