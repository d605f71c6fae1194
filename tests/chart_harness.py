"""Run a rendered chart's pods as local processes: a kubelet stand-in, for a machine
without a cluster.

For one rendered workload this takes every container's command, args and environment
(the image's ENTRYPOINT/CMD/ENV from its Dockerfile, then ``envFrom`` and ``env`` with
ConfigMaps and Secrets resolved from the render, then ``$(VAR)`` expansion as the
kubelet does), builds the pod's volumes in a temp folder (Secrets and ConfigMaps as
files with the volume's ``defaultMode``, emptyDirs as folders), starts the real
programs, and runs each probe the way the kubelet would (plaintext gRPC health, exec,
HTTP GET, TCP connect) until it passes.

What cannot be the same outside a pod is translated by one small, explicit table each,
so a reader sees every liberty taken:

- ``IMAGE_ROOTS``: what an image holds at a path, here (``/app`` of the reading image is
  the checkout, where ``model_repository/`` and ``model_assets/`` are built);
- volume mounts: a container path under a ``mountPath`` is that volume's temp folder;
- the pod's network namespace is loopback: ``0.0.0.0`` binds become ``127.0.0.1`` and
  every container port is remapped to a free local port (all containers of a pod share
  one map, as they share one network namespace);
- cluster DNS: ``<service>.<namespace>.svc.cluster.local:<port>`` of a Service the test
  registered becomes ``127.0.0.1:<the selected pod's local port>``;
- ``STAND_INS``: programs of images that cannot run here (the NGC Triton) and what runs
  in their place, with the flags that substitution needs.

- the Kubernetes API: ``Cluster.api_server`` (host, port) is what the kubelet injects as
  ``KUBERNETES_SERVICE_HOST``/``_PORT``; a projected ``serviceAccountToken`` is a token the
  Cluster made for the pod's service account (``Cluster.tokens`` says whose), and
  cluster-provided ConfigMaps (``kube-root-ca.crt``) come from ``Cluster.config_maps``;
  ``rbac_authorizer`` judges a request the way the rendered Roles and RoleBindings would;
- StatefulSet pods are ``<name>-<ordinal>`` and reachable by ``<pod>.<headless Service>``
  (``Cluster.register_pod``).
- a ``persistentVolumeClaim`` volume is one folder per claim name in the Cluster, shared by
  every pod that mounts it (a ReadWriteMany volume); ``subPath`` mounts a folder inside it,
  made if missing, as the kubelet does;
- native sidecars (init containers with ``restartPolicy: Always``) start as processes in
  their place in the init sequence and run beside the containers.

Certificates come from ``issue_certificates``: a cert-manager stand-in that issues each
rendered ``Certificate`` (its DNS, IP and URI SANs and usages, as specified) from the
dev CA into the Secret it names.
"""
from __future__ import annotations

import ipaddress
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.durability_fixtures import free_port
from tests.test_helm import DOCKERFILES, ROOT, dockerfile_instructions, one, pod_spec, workload

VENV_BIN = Path(sys.executable).parent
IMAGE_ROOTS = {
    # the reading image copies the built repository and assets to /app (docker/reading.Dockerfile)
    "reading": {"/app": ROOT},
    "node": {},
}
"""What each image holds at a path, and where that is here."""


def _triton_stand_in(args: list[str], env: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """NGC tritonserver -> the nvidia-pytriton binary (same release, 2.51). It needs a
    backend folder and its bundled libraries, and has only the Python backend, so the
    gpu configs (``onnxruntime_onnx`` with TensorRT) give way to the cpu ones; every
    other flag stays as rendered."""
    from percolate_triton.server import _triton_install

    binary, backends, libs = _triton_install()
    kept = [a for a in args if not a.startswith("--model-config-name=")]
    env = dict(env, LD_LIBRARY_PATH=str(libs), PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}")
    return [str(binary), f"--backend-directory={backends}", *kept], env


STAND_INS = {"tritonserver": _triton_stand_in}
"""Programs whose image cannot run here, and what runs in their place."""
EXECUTABLES = {"python": str(VENV_BIN / "python"), "cp": "/bin/cp"}


def image_config(image: str) -> tuple[list[str], list[str], dict[str, str], str]:
    """ENTRYPOINT, CMD, ENV and WORKDIR of the final stage of ``docker/<image>.Dockerfile``."""
    instructions = dockerfile_instructions(DOCKERFILES[image])
    final = instructions[max(i for i, (op, _) in enumerate(instructions) if op == "FROM"):]
    entrypoint = json.loads(next(a for op, a in reversed(final) if op == "ENTRYPOINT"))
    cmd = json.loads(next(a for op, a in reversed(final) if op == "CMD"))
    env: dict[str, str] = {}
    for op, args in final:
        if op == "ENV":
            for word in shlex.split(args):
                name, _, value = word.partition("=")
                env[name] = value
    workdir = next(a for op, a in reversed(final) if op == "WORKDIR")
    # the image's venv is this venv: its PATH is ours
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}"
    return entrypoint, cmd, env, workdir


# --- cert-manager stand-in ---------------------------------------------------------------

def issue_certificates(docs: list[dict], ca_dir: Path, out_dir: Path) -> dict[str, dict[str, bytes]]:
    """Each rendered Certificate, issued from the dev CA in ``ca_dir`` as cert-manager
    would: its SANs and usages as written. Returns the Secrets (name -> tls.crt, tls.key,
    ca.crt)."""
    from percolate_certs.ca import issue_cert

    secrets = {}
    for cert in (d for d in docs if d["kind"] == "Certificate"):
        spec = cert["spec"]
        sans: list[x509.GeneralName] = [x509.DNSName(n) for n in spec.get("dnsNames", [])]
        sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in spec.get("ipAddresses", [])]
        sans += [x509.UniformResourceIdentifier(u) for u in spec.get("uris", [])]
        usages = tuple(u.split()[0] for u in spec["usages"] if u in ("server auth", "client auth"))
        paths = issue_cert(ca_dir, out_dir, spec["secretName"], common_name=spec.get("commonName") or spec["secretName"],
                           sans=sans, usage=usages)
        secrets[spec["secretName"]] = {"tls.crt": paths.cert.read_bytes(), "tls.key": paths.key.read_bytes(),
                                       "ca.crt": paths.ca.read_bytes()}
    return secrets


def secret_files(secret: dict) -> dict[str, dict[str, bytes]]:
    """A Secret manifest (``data`` base64, ``stringData`` plain) as the harness's secrets
    table: the files its volume would hold. For Secrets created outside the chart."""
    import base64

    files = {k: base64.b64decode(v) for k, v in secret.get("data", {}).items()}
    files.update({k: v.encode() for k, v in secret.get("stringData", {}).items()})
    return {secret["metadata"]["name"]: files}


# --- the pod ------------------------------------------------------------------------------

@dataclass
class Cluster:
    """Services the test has started: ``<name>.<namespace>.svc.cluster.local`` (and the
    shorter forms) -> the pod behind it and the Service's port -> container port."""

    services: dict[str, tuple["Pod", dict[int, int]]] = field(default_factory=dict)
    api_server: tuple[str, int] | None = None
    config_maps: dict[str, dict[str, bytes]] = field(default_factory=dict)
    tokens: dict[str, tuple[str, str]] = field(default_factory=dict)
    """Service-account tokens handed to pods: token -> (namespace, service account)."""
    claims: dict[str, Path] = field(default_factory=dict)
    """PersistentVolumeClaims bound so far: claim name -> its volume's folder."""

    def token_for(self, namespace: str, service_account: str) -> str:
        import secrets as random

        token = random.token_urlsafe(32)
        self.tokens[token] = (namespace, service_account)
        return token

    def register_pod(self, docs: list[dict], namespace: str, pod: "Pod") -> None:
        """``<pod>.<headless Service>.<namespace>.svc.cluster.local`` -> that pod (its container ports)."""
        for svc in (d for d in docs if d["kind"] == "Service" and d["spec"].get("clusterIP") == "None"):
            name = svc["metadata"]["name"]
            for host in (f"{pod.name}.{name}.{namespace}.svc", f"{pod.name}.{name}.{namespace}.svc.cluster.local"):
                self.services[host] = (pod, {port: port for port in pod.ports})

    def register(self, docs: list[dict], namespace: str, pod: "Pod") -> None:
        for svc in (d for d in docs if d["kind"] == "Service"):
            ports = {p["port"]: pod.container_port(p["targetPort"]) for p in svc["spec"]["ports"]}
            name = svc["metadata"]["name"]
            for host in (name, f"{name}.{namespace}", f"{name}.{namespace}.svc",
                         f"{name}.{namespace}.svc.cluster.local"):
                self.services[host] = (pod, ports)

    def translate(self, value: str) -> str:
        def local(match: re.Match) -> str:
            host, port = match.group(1), int(match.group(2))
            if host not in self.services:
                return match.group(0)
            pod, ports = self.services[host]
            return f"127.0.0.1:{pod.ports[ports[port]]}"

        return re.sub(r"\b([a-z0-9][a-z0-9.-]*\.svc(?:\.cluster\.local)?|[a-z0-9][a-z0-9-]*):(\d+)\b", local, value)


class Pod:
    """One rendered pod's containers as local processes in ``root``."""

    def __init__(self, docs: list[dict], image: str, root: Path, secrets: dict[str, dict[str, bytes]],
                 cluster: Cluster | None = None, ordinal: int = 0, namespace: str = "default") -> None:
        self.docs, self.image, self.root = docs, image, root
        self.spec = pod_spec(docs)
        self.namespace = namespace
        self.name = f"{workload(docs)['metadata']['name']}-{ordinal}"  # a StatefulSet's pod name
        # Secrets the chart renders exist in the cluster as rendered
        self.secrets = {**{k: v for d in docs if d["kind"] == "Secret" for k, v in secret_files(d).items()},
                        **secrets}
        self.cluster = cluster or Cluster()
        self.processes: dict[str, subprocess.Popen] = {}
        self.entrypoint, self.cmd, self.image_env, self.workdir = image_config(image)
        self.ports = self._port_map()
        self.volumes = {v["name"]: self._volume(v) for v in self.spec.get("volumes", [])}
        for claim in workload(docs)["spec"].get("volumeClaimTemplates", []):  # a fresh volume
            self.volumes[claim["metadata"]["name"]] = self._volume({"name": claim["metadata"]["name"]})

    # -- translation tables
    def _port_map(self) -> dict[int, int]:
        """Every port a container declares or a flag/setting names -> a free local port."""
        ports = set()
        for c in self.spec.get("initContainers", []) + self.spec["containers"]:
            ports |= {p["containerPort"] for p in c.get("ports", [])}
            ports |= {int(m) for a in c.get("args", []) for m in re.findall(r"^--[\w-]*port=(\d+)$", a)}
            for key, value in self.environment(c).items():
                if key.endswith("_PORT") and value.isdigit():
                    ports.add(int(value))
        return {port: free_port() for port in sorted(ports)}

    def container_port(self, port: int | str) -> int:
        if isinstance(port, int):
            return port
        for c in self.spec["containers"]:
            for p in c.get("ports", []):
                if p.get("name") == port:
                    return p["containerPort"]
        raise KeyError(f"no container declares a port named {port!r}")

    def _volume(self, volume: dict) -> Path:
        if "persistentVolumeClaim" in volume:  # bound once, shared by every pod that mounts it
            claim = volume["persistentVolumeClaim"]["claimName"]
            if claim not in self.cluster.claims:
                self.cluster.claims[claim] = self.root / "claims" / claim
                self.cluster.claims[claim].mkdir(parents=True)
            return self.cluster.claims[claim]
        folder = self.root / "volumes" / volume["name"]
        folder.mkdir(parents=True)
        if "projected" in volume:
            for source in volume["projected"]["sources"]:
                files: dict[str, bytes] = {}
                if "serviceAccountToken" in source:
                    account = self.spec.get("serviceAccountName", "default")
                    files[source["serviceAccountToken"]["path"]] = self.cluster.token_for(self.namespace,
                                                                                          account).encode()
                elif "configMap" in source:
                    data = self.cluster.config_maps[source["configMap"]["name"]]
                    files.update({i["path"]: data[i["key"]] for i in source["configMap"].get("items") or
                                  [{"key": k, "path": k} for k in data]})
                elif "downwardAPI" in source:
                    files.update({i["path"]: self.field(i["fieldRef"]["fieldPath"]).encode()
                                  for i in source["downwardAPI"]["items"]})
                else:
                    data = self.secrets[source["secret"]["name"]]
                    files.update({i["path"]: data[i["key"]] for i in source["secret"].get("items") or
                                  [{"key": k, "path": k} for k in data]})
                for name, content in files.items():
                    (folder / name).write_bytes(content)
                    (folder / name).chmod(volume["projected"].get("defaultMode", 0o644))
        if "secret" in volume or "configMap" in volume:
            source = volume.get("secret") or volume["configMap"]
            if "secret" in volume:
                data = self.secrets[source["secretName"]]
            else:
                data = {k: v.encode() for k, v in one(self.docs, "ConfigMap", source["name"])["data"].items()}
            items = source.get("items") or [{"key": k, "path": k} for k in data]
            mode = source.get("defaultMode", 0o644)
            for item in items:
                path = folder / item["path"]
                path.write_bytes(data[item["key"]])
                path.chmod(item.get("mode", mode))
        return folder

    def mounts(self, container: dict) -> dict[str, Path]:
        """Container path -> local folder: the image's contents, then the volume mounts."""
        table = {k: Path(v) for k, v in IMAGE_ROOTS[self.image].items()}
        for mount in container.get("volumeMounts", []):
            folder = self.volumes[mount["name"]]
            if mount.get("subPath"):
                folder = folder / mount["subPath"]
                folder.mkdir(parents=True, exist_ok=True)
            table[mount["mountPath"]] = folder
        return table

    def translate(self, container: dict, value: str, key: str = "") -> str:
        """A container-side value (a path, a port, an address) as it is here."""
        if key.endswith("_HOST") and value == "0.0.0.0":
            return "127.0.0.1"  # the pod's network namespace is this machine's loopback
        if key.endswith("_PORT") and value.isdigit():
            return str(self.ports[int(value)])
        flag, eq, rest = value.partition("=") if value.startswith("--") else ("", "", value)
        for prefix, local in sorted(self.mounts(container).items(), key=lambda kv: -len(kv[0])):
            if rest == prefix or rest.startswith(prefix.rstrip("/") + "/"):
                rest = str(local) + rest[len(prefix.rstrip("/")):]
                break
        rest = self.cluster.translate(rest)
        if flag and flag.endswith("-port") and rest.isdigit():
            rest = str(self.ports[int(rest)])
        rest = re.sub(r"(?<=127\.0\.0\.1:)(\d+)\b|(?<=localhost:)(\d+)\b",
                      lambda m: str(self.ports.get(int(m.group(0)), m.group(0))), rest)
        return flag + eq + rest

    def field(self, path: str) -> str:
        """The downward API's fields this harness knows."""
        return {"metadata.name": self.name, "metadata.namespace": self.namespace, "status.podIP": "127.0.0.1",
                "spec.serviceAccountName": self.spec.get("serviceAccountName", "default")}[path]

    # -- the kubelet's part
    def environment(self, container: dict) -> dict[str, str]:
        """Image ENV, then envFrom in order (ConfigMaps rendered or the Cluster's, Secrets; a
        later source wins a key; ``prefix`` prepended, a missing ``optional`` source
        skipped), then env (values and key refs)."""
        env = dict(self.image_env) if container["image"].split("/")[-1].startswith(f"percolate-{self.image}") else {}
        rendered = {d["metadata"]["name"]: d.get("data", {}) for d in self.docs if d["kind"] == "ConfigMap"}
        for source in container.get("envFrom", []):
            ref = source.get("configMapRef") or source["secretRef"]
            if "configMapRef" in source:
                data = rendered.get(ref["name"]) or {
                    k: v.decode() for k, v in self.cluster.config_maps.get(ref["name"], {}).items()}
                found = ref["name"] in rendered or ref["name"] in self.cluster.config_maps
            else:
                data = {k: v.decode() for k, v in self.secrets.get(ref["name"], {}).items()}
                found = ref["name"] in self.secrets
            if not found and not ref.get("optional"):
                raise AssertionError(f"envFrom {ref['name']} does not exist: the kubelet would not start the container")
            env.update({source.get("prefix", "") + k: v for k, v in data.items()})
        for item in container.get("env", []):
            if "value" in item:
                env[item["name"]] = _expand(item["value"], env)
            elif "fieldRef" in item["valueFrom"]:
                env[item["name"]] = self.field(item["valueFrom"]["fieldRef"]["fieldPath"])
            elif "secretKeyRef" in item["valueFrom"]:
                ref = item["valueFrom"]["secretKeyRef"]
                env[item["name"]] = self.secrets[ref["name"]][ref["key"]].decode()
            else:
                ref = item["valueFrom"]["configMapKeyRef"]
                env[item["name"]] = one(self.docs, "ConfigMap", ref["name"])["data"][ref["key"]]
        return env

    def command_line(self, container: dict) -> tuple[list[str], dict[str, str]]:
        raw_env = self.environment(container)
        own_image = container["image"].split("/")[-1].startswith(f"percolate-{self.image}")
        if container.get("command"):  # the kubelet's rule: a command drops the image's CMD too
            command, args = container["command"], container.get("args", [])
        else:
            command = self.entrypoint if own_image else []
            args = container["args"] if "args" in container else (self.cmd if own_image else [])
        argv = [_expand(a, raw_env) for a in [*command, *args]]
        env = {k: self.translate(container, v, k) for k, v in raw_env.items()}
        env.setdefault("PATH", os.environ.get("PATH", "/usr/bin:/bin"))
        if self.cluster.api_server is not None:  # the kubelet gives every container the API's address
            env.setdefault("KUBERNETES_SERVICE_HOST", self.cluster.api_server[0])
            env.setdefault("KUBERNETES_SERVICE_PORT", str(self.cluster.api_server[1]))
        argv = [argv[0], *(self.translate(container, a) for a in argv[1:])]
        if argv[0] in STAND_INS:
            return STAND_INS[argv[0]](argv[1:], env)
        if (VENV_BIN / argv[0]).exists():  # a console script of the image's venv
            argv[0] = str(VENV_BIN / argv[0])
        argv[0] = EXECUTABLES.get(argv[0], argv[0])
        return argv, env

    def run_init_containers(self, timeout_s: float = 600) -> None:
        """In order, each to completion; a native sidecar is started and left running."""
        for container in self.spec.get("initContainers", []):
            if container.get("restartPolicy") == "Always":
                self.start(container["name"])
                continue
            argv, env = self.command_line(container)
            done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout_s)
            assert done.returncode == 0, f"init container {container['name']}: {argv}: {done.stderr}"

    def start(self, name: str) -> subprocess.Popen:
        container = next(c for c in self.spec.get("initContainers", []) + self.spec["containers"]
                         if c["name"] == name)
        argv, env = self.command_line(container)
        cwd = self.translate(container, self.workdir) if container.get("image", "").split("/")[-1].startswith(
            f"percolate-{self.image}") else str(self.root)
        Path(cwd).mkdir(parents=True, exist_ok=True)
        log = open(self.root / f"{name}.log", "wb")
        self.processes[name] = subprocess.Popen(argv, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                                start_new_session=True)
        return self.processes[name]

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def probe(self, name: str, kind: str) -> tuple[bool, str]:
        """One run of a container's probe, as the kubelet makes it against the pod IP."""
        container = next(c for c in self.spec["containers"] if c["name"] == name)
        probe = container[kind]
        timeout = probe.get("timeoutSeconds", 1)
        if "grpc" in probe:  # plaintext, like the kubelet's gRPC probe
            port = self.ports[probe["grpc"]["port"]]
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                try:
                    reply = health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(service=probe["grpc"].get("service", "")), timeout=timeout)
                except grpc.RpcError as err:
                    return False, f"{err.code().name}: {err.details()}"
            return reply.status == health_pb2.HealthCheckResponse.SERVING, str(reply.status)
        if "exec" in probe:
            argv, env = self.command_line({**container, "command": probe["exec"]["command"], "args": []})
            try:
                done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=max(timeout, 30))
            except subprocess.TimeoutExpired:
                return False, "timed out"
            return done.returncode == 0, (done.stdout + done.stderr).strip()
        if "httpGet" in probe:
            port = self.ports[self.container_port(probe["httpGet"]["port"])]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{probe['httpGet']['path']}",
                                            timeout=max(timeout, 5)) as reply:
                    return 200 <= reply.status < 400, str(reply.status)
            except (urllib.error.URLError, OSError) as err:
                return False, str(err)
        if "tcpSocket" in probe:
            port = self.ports[self.container_port(probe["tcpSocket"]["port"])]
            try:
                socket.create_connection(("127.0.0.1", port), timeout=max(timeout, 5)).close()
                return True, "connected"
            except OSError as err:
                return False, str(err)
        raise ValueError(f"unknown probe {probe}")

    def wait_for_probe(self, name: str, kind: str, deadline_s: float | None = None) -> str:
        """Run the probe until it passes, within the kubelet's own patience for it
        (initial delay + period x failure threshold, at least a minute, at most 500 s
        for the per-test timeout); the container must stay up meanwhile."""
        container = next(c for c in self.spec["containers"] if c["name"] == name)
        probe = container[kind]
        if deadline_s is None:
            patience = probe.get("initialDelaySeconds", 0) + probe.get("periodSeconds", 10) * probe.get(
                "failureThreshold", 3)
            deadline_s = min(max(patience, 60), 500)
        end = time.monotonic() + deadline_s
        result = "never ran"
        while time.monotonic() < end:
            process = self.processes.get(name)
            if process is not None and process.poll() is not None:
                raise AssertionError(f"{name} exited with {process.returncode} before its {kind} passed:\n"
                                     f"{self.log(name)}")
            passed, result = self.probe(name, kind)
            if passed:
                return result
            time.sleep(0.5)
        raise AssertionError(f"{name}'s {kind} did not pass in {deadline_s:.0f} s: {result}\n{self.log(name)}")

    def stop(self) -> None:
        """SIGTERM every container (as the kubelet does), then kill what is left."""
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            process.wait()


def _expand(value: str, env: dict[str, str]) -> str:
    """The kubelet's ``$(VAR)`` expansion (``$$`` escapes; unknown names stay as written)."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                  lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), value)


def rbac_authorizer(docs: list[dict], namespace: str, cluster: Cluster):
    """(token, verb, namespace, name) -> True/False as the rendered Roles and RoleBindings
    decide for the token's service account; None for a token the cluster never issued.
    Only namespaced Roles of the coordination.k8s.io Leases, which is all the node asks for."""
    roles = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Role"}
    bindings = [d for d in docs if d["kind"] == "RoleBinding" and d["roleRef"]["kind"] == "Role"]

    def authorize(token: str, verb: str, where: str, name: str | None) -> bool | None:
        if token not in cluster.tokens:
            return None
        account_namespace, account = cluster.tokens[token]
        if where != namespace:
            return False
        for binding in bindings:
            if not any(s["kind"] == "ServiceAccount" and s["name"] == account
                       and s.get("namespace", namespace) == account_namespace for s in binding["subjects"]):
                continue
            for rule in roles[binding["roleRef"]["name"]]["rules"]:
                if ("coordination.k8s.io" in rule["apiGroups"] and "leases" in rule["resources"]
                        and verb in rule["verbs"]
                        and ("resourceNames" not in rule or (name is not None and name in rule["resourceNames"]))):
                    return True
        return False

    return authorize
