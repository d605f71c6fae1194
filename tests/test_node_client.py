"""Any language: a Node.js client (@grpc/grpc-js + @grpc/proto-loader on proto/) calls
Embed over mutual TLS and gets the same vectors as the Python client."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np

from percolate.reading.v1 import reading_pb2 as pb

CLIENT = Path(__file__).parent / "node" / "embed_client.js"


def test_node_client_gets_the_same_vectors(reading, pki, reading_stub):
    node = shutil.which("node")
    assert node, "node is not installed: run `make setup`"
    assert (CLIENT.parent / "node_modules" / "@grpc" / "grpc-js").is_dir(), "run `make setup` (npm ci)"
    texts = ["memory that stays private", "a second sentence, from Node.js"]
    creds = pki.tenants["tenant-a"]
    done = subprocess.run([node, str(CLIENT), reading.address, str(creds.ca), str(creds.cert),
                           str(creds.key), *texts], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    response = json.loads(done.stdout)
    from_node = np.array([e["values"] for e in response["embeddings"]], np.float32)
    from_python = np.array([e.values for e in reading_stub.Embed(pb.EmbedRequest(texts=texts)).embeddings])
    assert response["dimensions"] == 384 and from_node.shape == (2, 384)
    np.testing.assert_allclose(from_node, from_python, atol=1e-6)


def test_node_client_with_a_foreign_tenant_is_denied(reading, pki):
    creds = pki.tenants["tenant-b"]
    done = subprocess.run(["node", str(CLIENT), reading.address, str(creds.ca), str(creds.cert),
                           str(creds.key), "x"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "EMBED_TENANT_ID": "tenant-a"})
    assert done.returncode == 3
    assert json.loads(done.stdout)["code"] == 7  # PERMISSION_DENIED
