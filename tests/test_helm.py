"""The Helm charts and Dockerfiles, proven without a cluster or a Docker engine.

The real helm binary (scripts/install_helm.sh) lints and renders both charts for the
defaults and a set of value sets. Every rendered core object is validated, strictly,
against the JSON schemas of a current Kubernetes release (kubernetes-validate). The
custom resources (cert-manager Certificate, Prometheus Operator ServiceMonitor, Gateway
API GRPCRoute) have no schema there, so they are checked against the small schemas in
this file, which cover the fields the charts use. Then assertions on the rendered objects
check what the charts promise: isolation, certificates, scaling, draining, hardening.
"""
from __future__ import annotations

import base64
import copy
import functools
import ipaddress
import json
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
HELM = ROOT / ".cache" / "tools" / "bin" / "helm"
CHARTS = {"reading": ROOT / "helm" / "percolate-reading", "node": ROOT / "helm" / "percolate-node"}
KUBE_VERSION = "1.35.0"
"""The Kubernetes release the charts are rendered for and validated against: the client
version helm v4.1.4 is built with (kubernetes-validate 1.37 bundles its schemas)."""
READING_NAMESPACE = "percolate-reading"
DOMAIN = "percolate.example.com"


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def node_values(tenant_id: str, **extra) -> dict:
    """The values every node release needs: tenant, region, domain, KEK secret."""
    return _merge({"tenant": {"id": tenant_id, "region": "eu-west-1", "domain": DOMAIN},
                   "kek": {"secretName": f"{tenant_id}-kek"}}, extra)


VALUE_SETS: dict[str, tuple[str, dict]] = {
    "reading-defaults": ("reading", {}),
    "reading-tier-T4": ("reading", {"gpu": {"tier": "T4"}}),
    "reading-tier-L4": ("reading", {"gpu": {"tier": "L4"}}),
    "reading-tier-A10G": ("reading", {"gpu": {"tier": "A10G"}}),
    "reading-cert-manager-off": ("reading", {"tls": {"certManager": {"enabled": False},
                                                     "existingSecret": "reading-server-tls"}}),
    "reading-object-storage-monitoring-fixed-replicas": ("reading", {
        "modelRepository": {"source": "objectStorage",
                            "objectStorage": {"url": "s3://models/percolate", "credentialsSecret": "s3-creds"}},
        "serviceMonitor": {"enabled": True}, "autoscaling": {"enabled": False}}),
    "reading-dns-nodelocal": ("reading", {"networkPolicy": {"dns": {"to": [
        {"ipBlock": {"cidr": "169.254.20.10/32"}},
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
         "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}]}}}),
    "reading-dns-openshift": ("reading", {"networkPolicy": {"dns": {
        "to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "openshift-dns"}},
                "podSelector": {"matchLabels": {"dns.operator.openshift.io/daemonset-dns": "default"}}}],
        "ports": [{"port": 5353, "protocol": "UDP"}, {"port": 5353, "protocol": "TCP"}]}},
        "topologySpread": {"zone": "DoNotSchedule"}}),
    "reading-engine-cache-shared": ("reading", {"gpu": {"tier": "L4"}, "triton": {"engineCache": {
        "type": "persistentVolumeClaim", "storageClassName": "efs-sc"}}}),
    "node-tenant-a": ("node", node_values("tenant-a")),
    "node-tenant-b": ("node", node_values("tenant-b")),
    "node-tenant-c": ("node", node_values("tenant-c", tenant={"region": "us-east-1"})),
    "node-ingress": ("node", node_values("tenant-a", route={"kind": "Ingress"},
                                         networkPolicy={"gateway": {"namespace": "ingress-nginx"}})),
    "node-cert-manager-off": ("node", node_values("tenant-a", certificate={
        "certManager": {"enabled": False}, "existingSecret": "tenant-a-client-tls",
        "existingServerSecret": "tenant-a-server-tls"})),
    "node-backup-monitoring": ("node", node_values("tenant-a", backup={"url": "s3://backups/tenant-a"},
        networkPolicy={"monitoring": [{"namespaceSelector": {"matchLabels": {
            "kubernetes.io/metadata.name": "monitoring"}}}]},
        podMonitor={"enabled": True, "labels": {"release": "kube-prometheus-stack"}})),
    "node-backup-full": ("node", node_values("tenant-a", backup={
        "url": "s3://percolate-eu/backups", "region": "eu-west-1", "credentialsSecret": "tenant-a-backup",
        "replica": {"url": "s3://percolate-us/backups", "region": "us-east-1"},
        "snapshotIntervalSeconds": 3600, "keepSnapshots": 3},
        serviceAccount={"annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/tenant-a"}})),
    "node-ha-extra-env": ("node", node_values("tenant-a", ha={"enabled": True}, node={
        "extraEnv": [{"name": "AWS_REGION", "value": "eu-west-1"},
                     {"name": "PERCOLATE_NODE_DEK_SEAL_LIMIT", "value": "1000000"},
                     {"name": "AWS_SECRET_ACCESS_KEY",
                      "valueFrom": {"secretKeyRef": {"name": "tenant-a-aws", "key": "secret"}}}],
        "extraEnvFrom": [{"secretRef": {"name": "tenant-a-aws"}, "prefix": "AWS_"},
                         {"configMapRef": {"name": "site-settings", "optional": True}}]})),
    "reading-extra-env": ("reading", {
        "modelRepository": {"source": "objectStorage",
                            "objectStorage": {"url": "s3://models/percolate", "credentialsSecret": "s3-creds"}},
        "frontend": {"extraEnv": [{"name": "GRPC_VERBOSITY", "value": "info"}],
                     "extraEnvFrom": [{"configMapRef": {"name": "site-settings"}}]},
        "triton": {"extraEnv": [{"name": "CUDA_MODULE_LOADING", "value": "LAZY"},
                                {"name": "HOME_COPY", "value": "$(HOME)"}],
                   "extraEnvFrom": [{"secretRef": {"name": "triton-extra"}}]}}),
}


def helm(*args: str) -> subprocess.CompletedProcess:
    if not HELM.exists():
        pytest.fail(f"{HELM} is missing: run scripts/install_helm.sh (make test runs it)")
    return subprocess.run([str(HELM), *args], capture_output=True, text=True, timeout=60)


def _values_args(values: dict, folder: str) -> list[str]:
    path = Path(folder) / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return ["--values", str(path)]


def render(chart: str, values: dict | None = None, release: str | None = None,
           namespace: str | None = None) -> list[dict]:
    """``helm template`` of one chart: the rendered objects, in order."""
    return copy.deepcopy(list(_render(chart, json.dumps(values or {}, sort_keys=True), release, namespace)))


@functools.lru_cache(maxsize=None)
def _render(chart: str, values_json: str, release: str | None, namespace: str | None) -> tuple:
    release = release or (f"percolate-{chart}" if chart == "reading" else json.loads(values_json)["tenant"]["id"])
    namespace = namespace or (READING_NAMESPACE if chart == "reading" else release)
    with tempfile.TemporaryDirectory() as folder:
        done = helm("template", release, str(CHARTS[chart]), "--namespace", namespace,
                    "--kube-version", KUBE_VERSION, *_values_args(json.loads(values_json), folder))
    assert done.returncode == 0, done.stderr
    return tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)


def render_error(chart: str, values: dict) -> str:
    with tempfile.TemporaryDirectory() as folder:
        done = helm("template", "t", str(CHARTS[chart]), "--kube-version", KUBE_VERSION,
                    *_values_args(values, folder))
    assert done.returncode != 0, "the render was expected to fail"
    return done.stderr


def one(docs: list[dict], kind: str, name_suffix: str = "") -> dict:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(name_suffix)]
    assert len(found) == 1, f"expected one {kind} *{name_suffix}, got {[d['metadata']['name'] for d in found]}"
    return found[0]


def workload(docs: list[dict]) -> dict:
    return next(d for d in docs if d["kind"] in ("Deployment", "StatefulSet"))


def pod_spec(docs: list[dict]) -> dict:
    return workload(docs)["spec"]["template"]["spec"]


def container(docs: list[dict], name: str) -> dict:
    return next(c for c in pod_spec(docs)["containers"] if c["name"] == name)


def effective_env(docs: list[dict], name: str, sources: dict[str, dict[str, str]] | None = None) -> dict[str, str]:
    """A container's environment as the kubelet builds it: envFrom in order (the rendered
    ConfigMaps, and ConfigMaps or Secrets from outside the chart given in ``sources``; a
    later source wins a key), then env."""
    env: dict[str, str] = {}
    spec = container(docs, name)
    rendered = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}
    for source in spec.get("envFrom", []):
        ref = source.get("configMapRef") or source["secretRef"]
        if ref["name"] in (sources or {}):
            data = sources[ref["name"]]
        elif "configMapRef" in source:
            assert ref["name"] in rendered, f"envFrom names ConfigMap {ref['name']}, neither rendered nor given"
            data = rendered[ref["name"]]
        else:
            data = {}  # a Secret's keys are not known here
        env.update({source.get("prefix", "") + k: v for k, v in data.items()})
    env.update({e["name"]: e["value"] for e in spec.get("env", []) if "value" in e})
    return env


def selects(match_labels: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in match_labels.items())


# --- custom resources: small schemas of the fields the charts use -----------------

_NAME = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
         "maxLength": 253}
_STRINGS = {"type": "object", "additionalProperties": {"type": "string"}}
_GO_DURATION = {"type": "string", "pattern": r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$"}
_HOSTNAME = {"type": "string", "pattern": r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"}


def _crd(api_version: str, kind: str, spec: dict) -> dict:
    return {"type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "additionalProperties": False,
            "properties": {"apiVersion": {"const": api_version}, "kind": {"const": kind},
                           "metadata": {"type": "object", "required": ["name"], "additionalProperties": False,
                                        "properties": {"name": _NAME, "namespace": _NAME, "labels": _STRINGS,
                                                       "annotations": _STRINGS}},
                           "spec": spec}}


def _obj(required: list[str], **properties) -> dict:
    return {"type": "object", "required": required, "properties": properties, "additionalProperties": False}


_CERT_MANAGER_USAGES = ["signing", "digital signature", "content commitment", "key encipherment", "key agreement",
                        "data encipherment", "cert sign", "crl sign", "encipher only", "decipher only", "any",
                        "server auth", "client auth", "code signing", "email protection", "s/mime",
                        "ipsec end system", "ipsec tunnel", "ipsec user", "timestamping", "ocsp signing",
                        "microsoft sgc", "netscape sgc"]
def _san(properties: dict) -> dict:
    """approver-policy's allowed SAN block: values plus a ``required`` flag."""
    return {"type": "object", "additionalProperties": False,
            "properties": {**properties, "required": {"type": "boolean"}}}


CRD_SCHEMAS = {
    # cert-manager.io/v1 (cert-manager 1.x CRD): the subset of Certificate.spec used here
    ("cert-manager.io/v1", "Certificate"): _crd("cert-manager.io/v1", "Certificate", _obj(
        ["secretName", "issuerRef"],
        secretName=_NAME, duration=_GO_DURATION, renewBefore=_GO_DURATION, commonName={"type": "string"},
        privateKey=_obj([], algorithm={"enum": ["RSA", "ECDSA", "Ed25519"]}, size={"type": "integer"},
                        rotationPolicy={"enum": ["Never", "Always"]}, encoding={"enum": ["PKCS1", "PKCS8"]}),
        usages={"type": "array", "items": {"enum": _CERT_MANAGER_USAGES}, "uniqueItems": True},
        dnsNames={"type": "array", "items": _HOSTNAME, "uniqueItems": True},
        ipAddresses={"type": "array", "items": {"type": "string"}},
        uris={"type": "array", "items": {"type": "string", "pattern": r"^[a-z][a-z0-9+.-]*://"}},
        issuerRef=_obj(["name"], name=_NAME, kind={"enum": ["Issuer", "ClusterIssuer"]},
                       group={"type": "string"}))),
    # policy.cert-manager.io/v1alpha1 (cert-manager approver-policy): the subset used here
    ("policy.cert-manager.io/v1alpha1", "CertificateRequestPolicy"): _crd(
        "policy.cert-manager.io/v1alpha1", "CertificateRequestPolicy", _obj(
            ["selector"],
            allowed=_obj([], commonName=_san({"value": {"type": "string"}}),
                         uris=_san({"values": {"type": "array", "items": {"type": "string"}}}),
                         dnsNames=_san({"values": {"type": "array", "items": _HOSTNAME}}),
                         usages={"type": "array", "items": {"enum": _CERT_MANAGER_USAGES}},
                         isCA={"type": "boolean"}),
            constraints=_obj([], maxDuration=_GO_DURATION, minDuration=_GO_DURATION,
                             privateKey=_obj([], algorithm={"enum": ["RSA", "ECDSA", "Ed25519"]},
                                             minSize={"type": "integer"}, maxSize={"type": "integer"})),
            selector=_obj([], issuerRef=_obj([], name={"type": "string"}, kind={"type": "string"},
                                             group={"type": "string"}),
                          namespace=_obj([], matchNames={"type": "array", "items": {"type": "string"}},
                                         matchLabels=_STRINGS)))),
    # monitoring.coreos.com/v1 (Prometheus Operator)
    ("monitoring.coreos.com/v1", "ServiceMonitor"): _crd("monitoring.coreos.com/v1", "ServiceMonitor", _obj(
        ["selector", "endpoints"],
        selector=_obj([], matchLabels=_STRINGS),
        namespaceSelector=_obj([], matchNames={"type": "array", "items": _NAME}, any={"type": "boolean"}),
        endpoints={"type": "array", "minItems": 1, "items": _obj(
            ["port"], port={"type": "string"}, path={"type": "string", "pattern": "^/"},
            interval={"type": "string", "pattern": r"^(0|([0-9]+(ms|s|m|h|d|w|y))+)$"},
            scheme={"enum": ["http", "https"]})})),
    ("monitoring.coreos.com/v1", "PodMonitor"): _crd("monitoring.coreos.com/v1", "PodMonitor", _obj(
        ["selector", "podMetricsEndpoints"],
        selector=_obj([], matchLabels=_STRINGS),
        podMetricsEndpoints={"type": "array", "minItems": 1, "items": _obj(
            ["port"], port={"type": "string"}, path={"type": "string", "pattern": "^/"},
            interval={"type": "string", "pattern": r"^(0|([0-9]+(ms|s|m|h|d|w|y))+)$"})})),
    # gateway.networking.k8s.io/v1alpha2 (Gateway API experimental channel): TLS passthrough by SNI
    ("gateway.networking.k8s.io/v1alpha2", "TLSRoute"): _crd("gateway.networking.k8s.io/v1alpha2", "TLSRoute", _obj(
        [],
        parentRefs={"type": "array", "maxItems": 32, "items": _obj(
            ["name"], name=_NAME, namespace=_NAME, sectionName=_NAME, group={"type": "string"},
            kind={"type": "string"}, port={"type": "integer", "minimum": 1, "maximum": 65535})},
        hostnames={"type": "array", "minItems": 1, "maxItems": 16, "items": _HOSTNAME},
        rules={"type": "array", "minItems": 1, "maxItems": 16, "items": _obj(
            [], backendRefs={"type": "array", "items": _obj(
                ["name"], name=_NAME, port={"type": "integer", "minimum": 1, "maximum": 65535},
                weight={"type": "integer", "minimum": 0}, namespace=_NAME)})})),
    # gateway.networking.k8s.io/v1 (Gateway API standard channel, GA since v1.1)
    ("gateway.networking.k8s.io/v1", "GRPCRoute"): _crd("gateway.networking.k8s.io/v1", "GRPCRoute", _obj(
        [],
        parentRefs={"type": "array", "maxItems": 32, "items": _obj(
            ["name"], name=_NAME, namespace=_NAME, sectionName=_NAME, group={"type": "string"},
            kind={"type": "string"}, port={"type": "integer", "minimum": 1, "maximum": 65535})},
        hostnames={"type": "array", "maxItems": 16, "items": _HOSTNAME},
        rules={"type": "array", "maxItems": 16, "items": _obj(
            [], backendRefs={"type": "array", "items": _obj(
                ["name"], name=_NAME, port={"type": "integer", "minimum": 1, "maximum": 65535},
                weight={"type": "integer", "minimum": 0}, namespace=_NAME)})})),
}


def validate(doc: dict) -> None:
    key = (doc["apiVersion"], doc["kind"])
    if key in CRD_SCHEMAS:
        jsonschema.Draft202012Validator(CRD_SCHEMAS[key]).validate(doc)
    else:
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)


# --- lint, render, validate every value set ------------------------------------


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_helm_lint(value_set):
    chart, values = VALUE_SETS[value_set]
    with tempfile.TemporaryDirectory() as folder:
        done = helm("lint", "--strict", str(CHARTS[chart]), "--kube-version", KUBE_VERSION,
                    *_values_args(values, folder))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 chart(s) failed" in done.stdout


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_every_rendered_object_validates(value_set):
    chart, values = VALUE_SETS[value_set]
    docs = render(chart, values)
    assert docs
    for doc in docs:
        try:
            validate(doc)
        except (kubernetes_validate.ValidationError, jsonschema.ValidationError) as err:
            pytest.fail(f"{doc['kind']} {doc['metadata']['name']}: {err}")


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_names_and_labels_are_valid_kubernetes_names(value_set):
    """The schemas do not check name formats; the API server would."""
    label_value = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
    for doc in render(*VALUE_SETS[value_set]):
        name = doc["metadata"]["name"]
        assert re.fullmatch(_NAME["pattern"], name) and len(name) <= 253, name
        if doc["kind"] in ("Service", "StatefulSet"):
            assert len(name) <= 63 and re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name), name
        for value in doc["metadata"].get("labels", {}).values():
            assert len(value) <= 63 and label_value.fullmatch(value), value


def test_custom_resource_schemas_reject_mistakes():
    """The hand-written schemas catch the typos they exist for."""
    certificate = one(render("node", node_values("tenant-a")), "Certificate", "-client")
    for broken in ({"usages": ["client-auth"]}, {"issuerRef": {"kind": "ClusterIssuer"}}, {"dnsName": ["x"]}):
        with pytest.raises(jsonschema.ValidationError):
            validate({**certificate, "spec": {**certificate["spec"], **broken}})


def test_required_values_are_enforced():
    assert "tenant.id is required" in render_error("node", {"kek": {"secretName": "k"}, "tenant": {"domain": DOMAIN}})
    assert "tenant.domain is required" in render_error("node", {"kek": {"secretName": "k"}, "tenant": {"id": "a"}})
    assert "kek.secretName is required" in render_error("node", {"tenant": {"id": "a", "domain": DOMAIN}})
    assert "tenant/id" in render_error("node", node_values("Tenant_A"))  # values.schema.json pattern
    assert "tls.existingSecret is required" in render_error("reading", {"tls": {"certManager": {"enabled": False}}})
    assert "gpu/tier" in render_error("reading", {"gpu": {"tier": "V100"}})
    assert "objectStorage.url is required" in render_error("reading", {"modelRepository": {"source": "objectStorage"}})


# --- reading chart --------------------------------------------------------------


@pytest.mark.parametrize("tier, product, in_flight", [("T4", "Tesla-T4", "8"), ("L4", "NVIDIA-L4", "12"),
                                                      ("A10G", "NVIDIA-A10G", "16")])
def test_gpu_tier_presets(tier, product, in_flight):
    docs = render("reading", {"gpu": {"tier": tier}})
    spec = pod_spec(docs)
    assert spec["nodeSelector"] == {"nvidia.com/gpu.product": product}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    triton = container(docs, "triton")
    assert triton["image"].startswith("nvcr.io/nvidia/tritonserver:") and triton["image"].endswith("-py3")
    assert triton["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "--model-config-name=gpu" in triton["args"]
    assert effective_env(docs, "frontend")["PERCOLATE_READING_MAX_IN_FLIGHT"] == in_flight
    assert "nvidia.com/gpu" not in container(docs, "frontend")["resources"]["limits"]


def test_model_repository_from_init_step_or_object_storage():
    docs = render("reading")
    init = pod_spec(docs)["initContainers"][0]
    assert init["command"] == ["cp", "-R", "/app/model_repository/.", "/models/"]
    triton = container(docs, "triton")
    assert "--model-repository=/models" in triton["args"]
    assert {"name": "models", "mountPath": "/models", "readOnly": True} in triton["volumeMounts"]

    docs = render("reading", VALUE_SETS["reading-object-storage-monitoring-fixed-replicas"][1])
    assert [c["name"] for c in pod_spec(docs)["initContainers"]] == ["engine-cache"]
    triton = container(docs, "triton")
    assert "--model-repository=s3://models/percolate" in triton["args"]
    assert triton["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]


def _engine_cache_paths() -> list[str]:
    """Every committed gpu config's trt_engine_cache_path."""
    from percolate_models.configs import parse

    return [accelerator.parameters["trt_engine_cache_path"]
            for config in sorted((ROOT / "model_repository").glob("*/configs/gpu.pbtxt"))
            for accelerator in parse(config.read_text()).optimization.execution_accelerators.gpu_execution_accelerator
            if "trt_engine_cache_path" in accelerator.parameters]


def _mount(c: dict, volume: str) -> dict:
    (found,) = [m for m in c["volumeMounts"] if m["name"] == volume]
    return found


def test_engine_folders_are_made_before_triton_starts():
    """Every gpu config's engine folder sits in the pod-local engine volume, which the
    init step prepares; nothing is shared by default."""
    docs = render("reading")
    spec, triton = pod_spec(docs), container(docs, "triton")
    paths = _engine_cache_paths()
    assert len(paths) >= 5  # text_embedding, ocr_det/cls/rec, whisper_encoder
    mount = _mount(triton, "trt-engines")["mountPath"]
    assert mount == "/tmp/triton_trt_cache" and all(p.startswith(mount + "/") for p in paths), paths
    init = next(c for c in spec["initContainers"] if c["name"] == "engine-cache")
    assert init["command"][:4] == ["python", "/etc/percolate/engine-cache/engine_cache.py", "restore",
                                   "--repository=/app/model_repository"]
    assert f"--cache-path={mount}" in init["command"] and "--config-name=gpu" in init["command"]
    assert f"--local={_mount(init, 'trt-engines')['mountPath']}" in init["command"]
    assert not any(a.startswith("--shared") for a in init["command"])
    assert one(docs, "ConfigMap", "-engine-cache")["data"]["engine_cache.py"] == \
        (CHARTS["reading"] / "files" / "engine_cache.py").read_text().rstrip("\n")
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["trt-engines"] == {"name": "trt-engines", "emptyDir": {"sizeLimit": "4Gi"}}
    assert "engine-cache" not in volumes and not [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
    assert [c["name"] for c in spec["initContainers"]] == ["model-repository", "engine-cache"]


@pytest.mark.parametrize("tier, product", [("T4", "Tesla-T4"), ("L4", "NVIDIA-L4"), ("A10G", "NVIDIA-A10G")])
def test_engine_cache_is_shared_per_gpu_tier_product_release_and_repository(tier, product):
    values = {"gpu": {"tier": tier}, "triton": {"engineCache": {"type": "persistentVolumeClaim",
                                                                  "storageClassName": "efs-sc"}}}
    docs = render("reading", values)
    spec, triton = pod_spec(docs), container(docs, "triton")
    claim = one(docs, "PersistentVolumeClaim")
    assert claim["metadata"]["name"] == f"percolate-reading-trt-{tier.lower()}"
    assert claim["spec"] == {"accessModes": ["ReadWriteMany"], "storageClassName": "efs-sc",
                             "resources": {"requests": {"storage": "20Gi"}}}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["engine-cache"]["persistentVolumeClaim"] == {"claimName": claim["metadata"]["name"]}
    init = next(c for c in spec["initContainers"] if c["name"] == "engine-cache")
    sync = next(c for c in spec["initContainers"] if c["name"] == "engine-cache-sync")
    assert sync["restartPolicy"] == "Always"  # a native sidecar: runs beside Triton, stops after it
    for c in (init, sync):  # a folder per GPU product on the claim
        assert _mount(c, "engine-cache") == {"name": "engine-cache", "mountPath": "/engine-cache", "subPath": product}
        assert "--shared=/engine-cache" in c["command"]
    # a folder per Triton release (TensorRT version) inside, then per repository content hash
    tag = triton["image"].rsplit(":", 1)[1]
    assert f"--release={tag}" in init["command"] and not any(a.startswith("--version") for a in init["command"])
    assert _mount(sync, "trt-engines")["readOnly"] is True
    # Triton writes its engines pod-local only: nothing half-written reaches another pod
    assert "engine-cache" not in {m["name"] for m in triton["volumeMounts"]}
    assert [c["name"] for c in spec["initContainers"]] == ["model-repository", "engine-cache", "engine-cache-sync"]

    own = render("reading", _merge(values, {"triton": {"engineCache": {"existingClaim": "trt-shared",
                                                                        "version": "2024-10-a"}}}))
    assert not [d for d in own if d["kind"] == "PersistentVolumeClaim"]
    volumes = {v["name"]: v for v in pod_spec(own)["volumes"]}
    assert volumes["engine-cache"]["persistentVolumeClaim"] == {"claimName": "trt-shared"}
    init = next(c for c in pod_spec(own)["initContainers"] if c["name"] == "engine-cache")
    assert "--version=2024-10-a" in init["command"]


def test_engine_cache_refuses_what_would_share_wrong_engines():
    shared = {"type": "persistentVolumeClaim", "storageClassName": "efs-sc"}
    assert "needs triton.engineCache.storageClassName (a ReadWriteMany class" in render_error(
        "reading", {"triton": {"engineCache": {"type": "persistentVolumeClaim"}}})
    assert "triton.engineCache.version is required with modelRepository.source=objectStorage" in render_error(
        "reading", {"triton": {"engineCache": shared}, "modelRepository": {
            "source": "objectStorage", "objectStorage": {"url": "s3://models/percolate"}}})
    assert "needs a nodeSelector on nvidia.com/gpu.product" in render_error(
        "reading", {"triton": {"engineCache": shared}, "gpu": {"tiers": {"T4": {"nodeSelector": {
            "nvidia.com/gpu.product": None, "pool": "gpu"}}}}})
    assert "cannot name an engine cache folder" in render_error(
        "reading", {"triton": {"engineCache": shared, "image": {"tag": "../24.10"}}})
    assert "engineCache/type" in render_error("reading", {"triton": {"engineCache": {"type": "hostPath"}}})
    # the same values with a version (object storage) render
    render("reading", {"triton": {"engineCache": dict(shared, version="v7")}, "modelRepository": {
        "source": "objectStorage", "objectStorage": {"url": "s3://models/percolate"}}})


def test_triton_inference_is_reachable_only_through_the_frontend():
    docs = render("reading")
    triton = container(docs, "triton")
    assert "--grpc-address=127.0.0.1" in triton["args"]
    assert effective_env(docs, "frontend")["PERCOLATE_READING_TRITON_URL"] == "127.0.0.1:8001"
    policy = one(docs, "NetworkPolicy")
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    allowed_ports = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    assert allowed_ports == {"grpc", "metrics", "triton-metrics"}
    # Triton's HTTP port stays open for the kubelet's health probes only: every other HTTP
    # API needs the header value of the chart's Secret (the harness proves Triton refuses)
    (restricted,) = [a for a in triton["args"] if a.startswith("--http-restricted-api=")]
    apis, header = restricted.split("=", 1)[1].split(":", 1)
    assert set(apis.split(",")) == {"metadata", "inference", "shared-memory", "model-config",
                                    "model-repository", "statistics", "trace", "logging"}
    assert header == "percolate-triton-admin=$(TRITON_HTTP_ADMIN_TOKEN)"
    token = next(e for e in triton["env"] if e["name"] == "TRITON_HTTP_ADMIN_TOKEN")["valueFrom"]["secretKeyRef"]
    secret = one(docs, "Secret", "-triton-http")
    assert token == {"name": secret["metadata"]["name"], "key": "token"}
    assert len(base64.b64decode(secret["data"]["token"])) >= 32
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert triton[probe]["httpGet"]["path"].startswith("/v2/health/")


@pytest.mark.parametrize("megabytes", [None, 0, 16])
def test_frontend_and_triton_share_one_dev_shm_for_large_tensors(megabytes):
    """The frontend's regions (reading_frontend/triton_shm.py) must be in the /dev/shm that
    Triton maps, and open to Triton's user through the pod's fsGroup."""
    from reading_frontend.config import FrontendConfig

    docs = render("reading", None if megabytes is None else {"frontend": {"tritonSharedMemoryMB": megabytes}})
    volumes = {name: {m["mountPath"]: m["name"] for m in container(docs, name)["volumeMounts"]}
               for name in ("frontend", "triton")}
    assert volumes["frontend"]["/dev/shm"] == volumes["triton"]["/dev/shm"]
    spec = pod_spec(docs)
    (dshm,) = [v for v in spec["volumes"] if v["name"] == volumes["triton"]["/dev/shm"]]
    assert dshm["emptyDir"]["medium"] == "Memory"
    triton_user = container(docs, "triton")["securityContext"]["runAsUser"]
    assert triton_user != spec["securityContext"]["runAsUser"] and spec["securityContext"]["fsGroup"]
    config = FrontendConfig.from_env(effective_env(docs, "frontend"))
    assert config.triton_shared_memory_mb == (64 if megabytes is None else megabytes)
    assert config.triton_url.startswith("127.0.0.1:")  # loopback: the pool is offered


def test_shared_memory_value_is_bounded():
    assert "tritonSharedMemoryMB" in render_error("reading", {"frontend": {"tritonSharedMemoryMB": -1}})


@pytest.mark.parametrize("value_set", ["reading-defaults", "reading-object-storage-monitoring-fixed-replicas"])
def test_reading_egress_is_dns_and_the_model_store_only(value_set):
    docs = render(*VALUE_SETS[value_set])
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    pod = workload(docs)["spec"]["template"]["metadata"]["labels"]
    store = value_set != "reading-defaults"
    dns = _pod("kube-system", {"k8s-app": "kube-dns"})
    node = _pod("tenant-a", {"app.kubernetes.io/name": "percolate-node"})
    egress = [(dns, 53, "UDP", True), (dns, 53, "TCP", True), (dns, 443, "TCP", False),
              (node, 50061, "TCP", False), (_pod("kube-system", {"component": "kube-apiserver"}), 443, "TCP", False),
              ({"ip": "52.95.110.1"}, 443, "TCP", store), ({"ip": "52.95.110.1"}, 80, "TCP", False),
              ({"ip": "169.254.169.254"}, 80, "TCP", False), ({"ip": "169.254.169.254"}, 443, "TCP", False),
              ({"ip": "10.0.0.7"}, 443, "TCP", False)]
    for other, port, protocol, allowed in egress:
        assert policy_allows(policies, READING_NAMESPACE, pod, "Egress", other, port, protocol) == allowed, \
            (other, port)


@pytest.mark.parametrize("value_set", ["reading-dns-nodelocal", "reading-dns-openshift"])
def test_reading_dns_egress_follows_the_cluster_dns(value_set):
    """NodeLocal DNSCache answers on a link-local address on every node (not a pod);
    OpenShift's DNS pods listen on 5353 in openshift-dns. Either is reachable, nothing else
    is (the cloud metadata address, a link-local neighbour of the cache, kube-dns on 443)."""
    docs = render(*VALUE_SETS[value_set])
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    pod = workload(docs)["spec"]["template"]["metadata"]["labels"]
    kube_dns = _pod("kube-system", {"k8s-app": "kube-dns"})
    openshift = _pod("openshift-dns", {"dns.operator.openshift.io/daemonset-dns": "default"})
    nodelocal = value_set == "reading-dns-nodelocal"
    cases = [({"ip": "169.254.20.10"}, 53, "UDP", nodelocal), ({"ip": "169.254.20.10"}, 53, "TCP", nodelocal),
             ({"ip": "169.254.20.10"}, 80, "TCP", False), ({"ip": "169.254.169.254"}, 53, "UDP", False),
             ({"ip": "169.254.169.254"}, 80, "TCP", False), (kube_dns, 53, "UDP", nodelocal),
             (openshift, 5353, "UDP", not nodelocal), (openshift, 5353, "TCP", not nodelocal),
             (openshift, 53, "UDP", False), (kube_dns, 443, "TCP", False),
             (_pod("openshift-dns", {"app": "other"}), 5353, "UDP", False)]
    for other, port, protocol, allowed in cases:
        assert policy_allows(policies, READING_NAMESPACE, pod, "Egress", other, port, protocol) == allowed, \
            (other, port, protocol)


@pytest.mark.parametrize("value_set, zone", [("reading-defaults", "ScheduleAnyway"),
                                             ("reading-dns-openshift", "DoNotSchedule")])
def test_reading_pods_spread_over_zones_and_nodes(value_set, zone):
    docs = render(*VALUE_SETS[value_set])
    labels = workload(docs)["spec"]["template"]["metadata"]["labels"]
    constraints = {c["topologyKey"]: c for c in pod_spec(docs)["topologySpreadConstraints"]}
    assert set(constraints) == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
    assert constraints["topology.kubernetes.io/zone"]["whenUnsatisfiable"] == zone
    assert constraints["kubernetes.io/hostname"]["whenUnsatisfiable"] == "ScheduleAnyway"
    for c in constraints.values():
        assert c["maxSkew"] == 1 and selects(c["labelSelector"]["matchLabels"], labels)
        assert c["matchLabelKeys"] == ["pod-template-hash"]  # a rollout's new pods spread among themselves


def test_reading_clients_are_node_pods_in_tenant_namespaces_only():
    docs = render("reading")
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    pod = workload(docs)["spec"]["template"]["metadata"]["labels"]
    grpc_port = container(docs, "frontend")["ports"][0]["containerPort"]
    named = {p["name"]: p["containerPort"] for c in pod_spec(docs)["containers"] for p in c["ports"]}
    node_labels = {"app.kubernetes.io/name": "percolate-node"}
    tenant_ns = dict(_pod("tenant-a", node_labels), namespace_labels={
        "kubernetes.io/metadata.name": "tenant-a", "percolate.dev/tenant": "tenant-a"})
    for peer, allowed in [(tenant_ns, True), (_pod("default", node_labels), False),
                          (_pod("attacker", node_labels), False),
                          (dict(tenant_ns, labels={"app": "debug"}), False)]:
        assert policy_allows(policies, READING_NAMESPACE, pod, "Ingress", peer, grpc_port,
                             named_ports=named) == allowed, peer


@pytest.mark.parametrize("values, grace", [
    ({"limits": {"maxAudioSeconds": 7200}}, 730),  # 2 h of audio x 0.1
    ({"limits": {"maxPages": 2000}, "drain": {"secondsPerPage": 1}}, 2010),
    ({"limits": {"maxAudioSeconds": 600, "maxPages": 40}}, 70),
    ({"drain": {"graceSeconds": 900}}, 900),
])
def test_drain_grace_is_sized_from_the_longest_accepted_call(values, grace):
    docs = render("reading", values)
    from reading_frontend.config import FrontendConfig

    config = FrontendConfig.from_env(effective_env(docs, "frontend"))
    longest = max(config.max_audio_seconds * values.get("drain", {}).get("secondsPerAudioSecond", 0.1),
                  config.max_pages * values.get("drain", {}).get("secondsPerPage", 0.5))
    assert config.drain_grace_s == grace >= longest
    assert pod_spec(docs)["terminationGracePeriodSeconds"] >= 5 + grace + 5


def test_drain_shorter_than_the_longest_call_is_refused():
    error = render_error("reading", {"drain": {"graceSeconds": 20}})
    assert "drain.graceSeconds=20 is shorter than the longest call the frontend accepts (250 s" in error
    assert "(720 s" in render_error("reading", {"drain": {"graceSeconds": 600}, "limits": {"maxAudioSeconds": 7200}})
    # the same grace with limits it covers renders
    docs = render("reading", {"drain": {"graceSeconds": 60}, "limits": {"maxAudioSeconds": 300, "maxPages": 100}})
    assert effective_env(docs, "frontend")["PERCOLATE_READING_DRAIN_GRACE_S"] == "60"


def test_hpa_scales_on_queue_depth():
    docs = render("reading")
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": workload(docs)["metadata"]["name"]}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 10)
    assert hpa["spec"]["metrics"] == [{"type": "Pods", "pods": {
        "metric": {"name": "percolate_reading_queue_depth"},
        "target": {"type": "AverageValue", "averageValue": "100"}}}]
    assert "replicas" not in workload(docs)["spec"], "with the HPA on, helm upgrade must not reset the count"
    adapter = yaml.safe_load((CHARTS["reading"] / "prometheus-adapter-values.yaml").read_text())
    rule = adapter["rules"]["custom"][0]
    assert rule["seriesQuery"].startswith("percolate_reading_queue_depth{")
    assert rule["name"]["as"] == "percolate_reading_queue_depth"
    assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}

    fixed = render("reading", {"autoscaling": {"enabled": False}})
    assert not [d for d in fixed if d["kind"] == "HorizontalPodAutoscaler"]
    assert workload(fixed)["spec"]["replicas"] == 3


def test_autoscaling_default_path_is_complete():
    """Something scrapes the metric the HPA reads, the adapter asks a real Prometheus
    address, and the metric is smoothed; autoscaling without scraping does not render."""
    docs = render("reading")
    monitor = one(docs, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    adapter = yaml.safe_load((CHARTS["reading"] / "prometheus-adapter-values.yaml").read_text())
    assert adapter["prometheus"]["url"] == "http://kube-prometheus-stack-prometheus.monitoring.svc"
    assert "avg_over_time(" in adapter["rules"]["custom"][0]["metricsQuery"]
    assert "autoscaling.enabled needs serviceMonitor.enabled" in render_error(
        "reading", {"serviceMonitor": {"enabled": False}})


def test_rollout_deadline_outlasts_the_startup_probes():
    docs = render("reading")
    deadline = workload(docs)["spec"]["progressDeadlineSeconds"]
    for name in ("frontend", "triton"):
        startup = container(docs, name)["startupProbe"]
        assert deadline > startup["periodSeconds"] * startup["failureThreshold"]
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container(docs, name)[kind].get("timeoutSeconds", 1) >= 3, (name, kind)
    assert "use at least 1200" in render_error("reading", {"rollout": {"progressDeadlineSeconds": 600}})


def test_rolling_update_and_drain_fit_the_grace_period():
    docs = render("reading")
    deployment = workload(docs)
    assert deployment["spec"]["strategy"] == {"type": "RollingUpdate",
                                              "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    spec = pod_spec(docs)
    frontend, triton = container(docs, "frontend"), container(docs, "triton")
    pre_stop = frontend["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain = float(effective_env(docs, "frontend")["PERCOLATE_READING_DRAIN_GRACE_S"])
    triton_exit = int(next(a for a in triton["args"] if a.startswith("--exit-timeout-secs=")).split("=")[1])
    # Triton outlives the frontend's drain, and the pod's grace covers both
    assert triton["lifecycle"]["preStop"]["sleep"]["seconds"] >= pre_stop + drain
    assert spec["terminationGracePeriodSeconds"] >= pre_stop + drain + triton_exit
    # sized from the longest accepted call: 500 pages x 0.5 s (audio: 1800 s x 0.1), + 10 s
    env = effective_env(docs, "frontend")
    assert (env["PERCOLATE_READING_MAX_PAGES"], env["PERCOLATE_READING_MAX_AUDIO_SECONDS"]) == ("500", "1800")
    assert (pre_stop, drain, spec["terminationGracePeriodSeconds"]) == (5, 260.0, 270)
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]


def test_services():
    docs = render("reading")
    service = one(docs, "Service", "percolate-reading")
    # no affinity: a connection closed at its max age may reconnect to another pod
    assert service["spec"]["sessionAffinity"] == "None" and "sessionAffinityConfig" not in service["spec"]
    assert service["spec"]["ports"][0] == {"name": "grpc", "port": 50051, "targetPort": "grpc",
                                           "protocol": "TCP", "appProtocol": "grpc"}
    headless = one(docs, "Service", "-headless")
    assert headless["spec"]["clusterIP"] == "None"
    pod_labels = workload(docs)["spec"]["template"]["metadata"]["labels"]
    assert selects(service["spec"]["selector"], pod_labels) and selects(headless["spec"]["selector"], pod_labels)


def test_reading_probes():
    """The kubelet's own gRPC probe on the frontend's plaintext health-only port: no
    interpreter started every 10 s, no certificate needed by the probe."""
    docs = render("reading")
    frontend, triton = container(docs, "frontend"), container(docs, "triton")
    ports = {p["name"]: p["containerPort"] for p in frontend["ports"]}
    env = effective_env(docs, "frontend")
    assert env["PERCOLATE_READING_HEALTH_PORT"] == str(ports["health"]) != str(ports["grpc"])
    from reading_frontend.config import FrontendConfig

    config = FrontendConfig.from_env(env)
    assert (config.health_port, config.max_connection_age_s) == (ports["health"], 600)
    for probe in ("startupProbe", "readinessProbe"):
        assert frontend[probe]["grpc"] == {"port": ports["health"]} and "exec" not in frontend[probe]
    assert frontend["livenessProbe"]["tcpSocket"] == {"port": "grpc"}
    assert not [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-probe")]
    # nobody but the kubelet (the node's own traffic, which NetworkPolicy does not filter) asks it
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    pod = workload(docs)["spec"]["template"]["metadata"]["labels"]
    node = dict(_pod("tenant-a", {"app.kubernetes.io/name": "percolate-node"}), namespace_labels={
        "kubernetes.io/metadata.name": "tenant-a", "percolate.dev/tenant": "tenant-a"})
    for peer in (node, _pod("monitoring", {"app": "prometheus"}), _pod(READING_NAMESPACE, {"app": "x"})):
        assert not policy_allows(policies, READING_NAMESPACE, pod, "Ingress", peer, ports["health"]), peer
    for probe, path in (("startupProbe", "/v2/health/ready"), ("readinessProbe", "/v2/health/ready"),
                        ("livenessProbe", "/v2/health/live")):
        assert triton[probe]["httpGet"] == {"path": path, "port": "triton-http"}


def test_reading_server_certificate():
    docs = render("reading")
    certificate = one(docs, "Certificate")
    spec = certificate["spec"]
    assert "server auth" in spec["usages"] and "client auth" not in spec["usages"]  # no probe presents it
    assert {"percolate-reading", "percolate-reading-headless.percolate-reading.svc.cluster.local",
            "percolate-reading.percolate-reading.svc", "localhost"} <= set(spec["dnsNames"])
    tls_volume = next(v for v in pod_spec(docs)["volumes"] if v["name"] == "tls")
    assert tls_volume["secret"]["secretName"] == spec["secretName"]


@pytest.mark.parametrize("tenant", ["tenant-a", "tenant-b", "tenant-c"])
def test_node_server_certificate_names_the_route_host(tenant):
    """TLS passes through the gateway: tenants' clients check the node's own certificate
    against <id>.<domain>, so it is a server certificate with that DNS name."""
    docs = render(*VALUE_SETS[f"node-{tenant}"])
    spec = one(docs, "Certificate", "-server")["spec"]
    assert spec["usages"] == ["server auth", "digital signature", "key encipherment"]
    assert spec["dnsNames"][0] == f"{tenant}.{DOMAIN}" == one(docs, "TLSRoute")["spec"]["hostnames"][0]
    assert "uris" not in spec
    volume = next(v for v in pod_spec(docs)["volumes"] if v["name"] == "server-tls")
    assert volume["secret"]["secretName"] == spec["secretName"]
    env = effective_env(docs, "node")
    assert env["PERCOLATE_NODE_TLS_CERT"] == "/etc/percolate/server-tls/tls.crt"
    assert env["PERCOLATE_NODE_TLS_CLIENT_CA"] == "/etc/percolate/server-tls/ca.crt"


def test_reading_server_certificate_from_an_existing_secret():
    off = render("reading", VALUE_SETS["reading-cert-manager-off"][1])
    assert not [d for d in off if d["kind"] == "Certificate"]
    assert next(v for v in pod_spec(off)["volumes"] if v["name"] == "tls")["secret"]["secretName"] == "reading-server-tls"


def test_service_monitor_scrapes_frontend_and_triton():
    docs = render("reading", {"serviceMonitor": {"enabled": True}})
    monitor = one(docs, "ServiceMonitor")
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics", "triton-metrics"]
    service = one(docs, "Service", "percolate-reading")
    assert {"metrics", "triton-metrics"} <= {p["name"] for p in service["spec"]["ports"]}
    off = {"serviceMonitor": {"enabled": False}, "autoscaling": {"enabled": False}}
    assert not [d for d in render("reading", off) if d["kind"] == "ServiceMonitor"]


# --- both charts: hardening, resources, checksums -------------------------------


@pytest.mark.parametrize("value_set", ["reading-defaults", "reading-engine-cache-shared", "node-tenant-a"])
def test_restricted_security_context(value_set):
    docs = render(*VALUE_SETS[value_set])
    spec = pod_spec(docs)
    pod = spec["securityContext"]
    assert pod["runAsNonRoot"] is True and pod["runAsUser"] != 0
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False
    for c in spec["containers"] + spec.get("initContainers", []):
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False, c["name"]
        assert sc["readOnlyRootFilesystem"] is True, c["name"]
        assert sc["runAsNonRoot"] is True and sc.get("runAsUser", pod["runAsUser"]) != 0, c["name"]
        assert sc["capabilities"] == {"drop": ["ALL"]}, c["name"]
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, c["name"]
        assert "privileged" not in sc and "hostNetwork" not in spec and "hostPID" not in spec
        mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
        # the init steps and the engine sidecar write only to their volumes
        assert c["name"] in ("model-repository", "engine-cache", "engine-cache-sync") or "/tmp" in mounts, \
            f"{c['name']} needs a writable /tmp"


def test_resources():
    docs = render("reading", VALUE_SETS["reading-engine-cache-shared"][1])
    for c in pod_spec(docs)["containers"] + pod_spec(docs)["initContainers"]:
        assert {"cpu", "memory"} <= set(c["resources"]["requests"]), c["name"]
        assert "memory" in c["resources"]["limits"], c["name"]
    node = render("node", node_values("tenant-a"))
    resources = container(node, "node")["resources"]
    assert resources == {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"cpu": "2", "memory": "4Gi"}}
    claim = workload(node)["spec"]["volumeClaimTemplates"][0]
    assert claim["spec"]["resources"]["requests"]["storage"] == "20Gi"
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert workload(node)["spec"]["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Retain",
                                                                             "whenScaled": "Retain"}


def _checksums(chart: str, values: dict) -> dict[str, str]:
    annotations = workload(render(chart, values))["spec"]["template"]["metadata"]["annotations"]
    return {k.split("/")[1]: v for k, v in annotations.items() if k.startswith("checksum/")}


@pytest.mark.parametrize("chart, base, config_change, tls_change", [
    ("reading", {}, {"frontend": {"maxQueueDepth": 512}},
     {"tls": {"certManager": {"issuerRef": {"name": "other-ca"}}}}),
    ("reading", VALUE_SETS["reading-cert-manager-off"][1], {"drain": {"graceSeconds": 600}},
     {"tls": {"existingSecret": "rotated-server-tls"}}),
    ("node", node_values("tenant-a"), {"reading": {"url": "dns:///reading.other:50051"}},
     {"certificate": {"certManager": {"issuerRef": {"name": "other-ca"}}}}),
])
def test_checksums_roll_pods_on_config_and_certificate_changes(chart, base, config_change, tls_change):
    before = _checksums(chart, base)
    assert set(before) == {"config", "tls"}
    after_config = _checksums(chart, _merge(base, config_change))
    assert after_config["config"] != before["config"] and after_config["tls"] == before["tls"]
    after_tls = _checksums(chart, _merge(base, tls_change))
    assert after_tls["tls"] != before["tls"] and after_tls["config"] == before["config"]
    assert _checksums(chart, base) == before, "the checksums are deterministic"


# --- node chart -----------------------------------------------------------------


@pytest.mark.parametrize("tenant", ["tenant-a", "tenant-b", "tenant-c"])
def test_tenant_certificate_has_only_the_tenant_uri_san(tenant):
    docs = render(*VALUE_SETS[f"node-{tenant}"])
    spec = one(docs, "Certificate", "-client")["spec"]
    assert spec["uris"] == [f"spiffe://percolate/tenant/{tenant}"]
    assert not {"dnsNames", "ipAddresses", "emailAddresses", "commonName", "otherNames"} & set(spec)
    assert spec["usages"] == ["client auth", "digital signature", "key encipherment"]
    reading_issuer = one(render("reading"), "Certificate")["spec"]["issuerRef"]
    assert spec["issuerRef"] == reading_issuer, "tenant and server certificates come from the same CA"
    tls_volume = next(v for v in pod_spec(docs)["volumes"] if v["name"] == "client-tls")
    assert tls_volume["secret"]["secretName"] == spec["secretName"]
    env = effective_env(docs, "node")
    assert env["PERCOLATE_NODE_READING_CERT"] == "/etc/percolate/client-tls/tls.crt"


def _policy_approves(policy: dict, namespace: str, issuer: dict, uris: list[str], dns: list[str],
                     usages: list[str]) -> bool:
    """approver-policy's decision for a request in ``namespace``: the policy must select it
    (issuer, namespace) and allow every SAN and usage it asks for (exact values here)."""
    spec = policy["spec"]
    selected = (namespace in spec["selector"]["namespace"]["matchNames"]
                and all(spec["selector"]["issuerRef"][k] == issuer[k] for k in ("name", "kind")))
    allowed = spec["allowed"]
    return (selected and set(uris) <= set(allowed["uris"]["values"])
            and set(dns) <= set(allowed["dnsNames"]["values"]) and set(usages) <= set(allowed["usages"]))


def test_certificate_issuance_is_constrained_to_the_tenant():
    """Each release renders an approver-policy CertificateRequestPolicy that approves in its
    own namespace only its tenant's identity and names, usable only by cert-manager there."""
    releases = {t: render("node", node_values(t)) for t in ("tenant-a", "tenant-b")}
    for tenant, docs in releases.items():
        (policy,) = [d for d in docs if d["kind"] == "CertificateRequestPolicy"]
        issuer = {"name": "percolate-ca", "kind": "ClusterIssuer"}
        for cert in (d for d in docs if d["kind"] == "Certificate"):  # its own certificates pass
            spec = cert["spec"]
            assert _policy_approves(policy, tenant, spec["issuerRef"], spec.get("uris", []),
                                    spec.get("dnsNames", []), spec["usages"]), cert["metadata"]["name"]
        other = "tenant-b" if tenant == "tenant-a" else "tenant-a"
        for uris, dns, namespace in [([f"spiffe://percolate/tenant/{other}"], [], tenant),
                                     ([], [f"{other}.{DOMAIN}"], tenant),
                                     ([f"spiffe://percolate/tenant/{tenant}"], [], other)]:
            assert not _policy_approves(policy, namespace, issuer, uris, dns, ["client auth"]), (uris, dns, namespace)
        assert policy["spec"]["allowed"]["isCA"] is False
        role, binding = one(docs, "Role", "-certificate-policy"), one(docs, "RoleBinding", "-certificate-policy")
        assert role["rules"] == [{"apiGroups": ["policy.cert-manager.io"], "resources": ["certificaterequestpolicies"],
                                  "verbs": ["use"], "resourceNames": [policy["metadata"]["name"]]}]
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "cert-manager", "namespace": "cert-manager"}]
        assert binding["roleRef"]["name"] == role["metadata"]["name"]
    names = {d["metadata"]["name"] for docs in releases.values() for d in docs if d["kind"] == "CertificateRequestPolicy"}
    assert len(names) == 2, "cluster-scoped: one name per tenant"
    off = render("node", node_values("tenant-a", certificate={"certManager": {"approverPolicy": {"enabled": False}}}))
    assert not [d for d in off if d["kind"] in ("CertificateRequestPolicy", "Role", "RoleBinding")]


def test_tenant_certificate_from_existing_secret():
    docs = render(*VALUE_SETS["node-cert-manager-off"])
    assert not [d for d in docs if d["kind"] == "Certificate"]
    volumes = {v["name"]: v["secret"]["secretName"] for v in pod_spec(docs)["volumes"] if "secret" in v}
    assert volumes["client-tls"] == "tenant-a-client-tls" and volumes["server-tls"] == "tenant-a-server-tls"
    assert "existingServerSecret is required" in render_error("node", node_values(
        "tenant-a", certificate={"certManager": {"enabled": False}, "existingSecret": "c"}))


def test_node_environment_kek_and_region():
    docs = render(*VALUE_SETS["node-tenant-c"])
    env = effective_env(docs, "node")
    assert env["TENANT_ID"] == "tenant-c"
    assert env["PERCOLATE_READING_URL"] == \
        "dns:///percolate-reading-headless.percolate-reading.svc.cluster.local:50051"
    config = json.loads(env["PERCOLATE_READING_SERVICE_CONFIG"])
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
    assert config["methodConfig"][0]["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
    kek = next(v for v in pod_spec(docs)["volumes"] if v["name"] == "kek")["secret"]
    assert kek["secretName"] == "tenant-c-kek" and kek["items"] == [{"key": "kek", "path": "kek"}]
    assert env["PERCOLATE_NODE_KEK_FILE"] == "/etc/percolate/kek/kek"
    assert env["PERCOLATE_NODE_KEY_FILES_GROUP_READABLE"] == "1" and kek["defaultMode"] == 0o440
    assert pod_spec(docs)["nodeSelector"] == {"topology.kubernetes.io/region": "us-east-1"}
    assert workload(docs)["spec"]["template"]["metadata"]["labels"]["percolate.dev/tenant"] == "tenant-c"
    assert env["PERCOLATE_STORE_CIPHER"] == "auto"


def test_node_store_cipher_is_passed_through_and_checked():
    env = effective_env(render("node", node_values("tenant-e", node={"storeCipher": "evp"})), "node")
    assert env["PERCOLATE_STORE_CIPHER"] == "evp"
    assert "storeCipher" in render_error("node", node_values("tenant-e", node={"storeCipher": "fast"}))


def test_node_probes():
    """The kubelet's gRPC probe is plaintext: it asks the node's health-only port, never
    the mutual-TLS API port (tests/test_chart_harness.py runs them against the node)."""
    docs = render("node", node_values("tenant-a"))
    node = container(docs, "node")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert node[probe]["grpc"] == {"port": 50062}
    assert effective_env(docs, "node")["PERCOLATE_NODE_HEALTH_PORT"] == "50062"
    for service in (d for d in docs if d["kind"] == "Service"):
        assert [p["name"] for p in service["spec"]["ports"]] == ["grpc"], "health stays off the Services"
    assert node["args"] == ["serve"]


def test_node_network_policy_is_default_deny_plus_exact_allowances():
    docs = render("node", node_values("tenant-a"))
    selector = workload(docs)["spec"]["selector"]["matchLabels"]
    deny = one(docs, "NetworkPolicy", "-default-deny")
    assert deny["spec"] == {"podSelector": {"matchLabels": selector}, "policyTypes": ["Ingress", "Egress"]}
    allow = one(docs, "NetworkPolicy", "-allow")
    assert allow["spec"] == {
        "podSelector": {"matchLabels": selector},
        "policyTypes": ["Ingress", "Egress"],
        "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "gateway-system"}},
                               "podSelector": {}}],
                     "ports": [{"port": "grpc", "protocol": "TCP"}]}],
        "egress": [
            {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": READING_NAMESPACE}},
                     "podSelector": {"matchLabels": {"app.kubernetes.io/name": "percolate-reading"}}}],
             "ports": [{"port": 50051, "protocol": "TCP"}]},
            {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                     "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
             "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]},
        ]}
    # with backups on, the backup rule reaches no pod, node or metadata address
    private = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16"]
    backup = one(render(*VALUE_SETS["node-backup-monitoring"]), "NetworkPolicy", "-allow")["spec"]["egress"][2]
    assert backup == {"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": private}}],
                      "ports": [{"port": 443, "protocol": "TCP"}]}
    for address in ("10.1.2.3", "172.20.0.1", "192.168.1.1", "100.100.1.1", "169.254.169.254"):
        assert any(ipaddress.ip_address(address) in ipaddress.ip_network(n) for n in private)


# --- a small NetworkPolicy evaluator: who may talk to whom, as a CNI enforces it ---------

def _matches(selector: dict | None, labels: dict) -> bool:
    """A label selector (matchLabels, matchExpressions In/NotIn/Exists/DoesNotExist)."""
    if selector is None:
        return False
    ops = {"In": lambda k, v: labels.get(k) in v, "NotIn": lambda k, v: labels.get(k) not in v,
           "Exists": lambda k, v: k in labels, "DoesNotExist": lambda k, v: k not in labels}
    return selects(selector.get("matchLabels", {}), labels) and all(
        ops[e["operator"]](e["key"], e.get("values", [])) for e in selector.get("matchExpressions", []))


def _peer_admits(peer: dict, policy_namespace: str, other: dict) -> bool:
    if "ipBlock" in peer:
        if "ip" not in other:
            return False  # ipBlock is for addresses outside the cluster's pods
        ip = ipaddress.ip_address(other["ip"])
        return ip in ipaddress.ip_network(peer["ipBlock"]["cidr"]) and not any(
            ip in ipaddress.ip_network(n) for n in peer["ipBlock"].get("except", []))
    if "namespace" not in other:
        return False
    namespace_ok = (_matches(peer["namespaceSelector"], other["namespace_labels"]) if "namespaceSelector" in peer
                    else other["namespace"] == policy_namespace)
    return namespace_ok and _matches(peer.get("podSelector", {}), other["labels"])


def _port_admits(ports: list[dict] | None, port: int, protocol: str, named: dict[str, int]) -> bool:
    if not ports:
        return True
    return any(p.get("protocol", "TCP") == protocol and named.get(p["port"], p["port"]) == port for p in ports)


def policy_allows(policies: list[dict], namespace: str, pod: dict, direction: str, other: dict,
                  port: int, protocol: str = "TCP", named_ports: dict[str, int] | None = None) -> bool:
    """Whether the policies in ``namespace`` let ``pod`` receive from (Ingress) or send to
    (Egress) ``other`` on ``port``: isolated once any policy of that type selects the pod,
    then allowed if any rule of any of them admits the peer and port."""
    selecting = [p for p in policies if _matches(p["spec"]["podSelector"], pod)
                 and direction in p["spec"].get("policyTypes", ["Ingress"])]
    if not selecting:
        return True
    key, peers = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    return any(
        (not rule.get(peers) or any(_peer_admits(peer, namespace, other) for peer in rule[peers]))
        and _port_admits(rule.get("ports"), port, protocol, named_ports or {})
        for policy in selecting for rule in policy["spec"].get(key, []))


def _pod(namespace: str, labels: dict) -> dict:
    return {"namespace": namespace, "namespace_labels": {"kubernetes.io/metadata.name": namespace}, "labels": labels}


@pytest.mark.parametrize("value_set", ["node-tenant-a", "node-backup-monitoring"])
def test_node_policies_admit_exactly_the_intended_peers(value_set):
    docs = render(*VALUE_SETS[value_set])
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    pod = workload(docs)["spec"]["template"]["metadata"]["labels"]
    named = {p["name"]: p["containerPort"] for p in container(docs, "node")["ports"]}
    opted_in = value_set == "node-backup-monitoring"
    gateway = _pod("gateway-system", {"app": "envoy"})
    other_tenant = _pod("tenant-b", {"app.kubernetes.io/name": "percolate-node", "percolate.dev/tenant": "tenant-b"})
    same_ns_pod = _pod("tenant-a", {"app": "debug"})
    prometheus = _pod("monitoring", {"app": "prometheus"})
    reading = _pod(READING_NAMESPACE, {"app.kubernetes.io/name": "percolate-reading"})
    dns = _pod("kube-system", {"k8s-app": "kube-dns"})
    ingress = {  # (peer, port) -> allowed
        (0, named["grpc"]): True, (1, named["grpc"]): False, (2, named["grpc"]): False,
        (0, named["metrics"]): False, (3, named["metrics"]): opted_in, (3, named["grpc"]): False,
        (0, named["health"]): False}
    peers = [gateway, other_tenant, same_ns_pod, prometheus]
    for (i, port), allowed in ingress.items():
        assert policy_allows(policies, "tenant-a", pod, "Ingress", peers[i], port, named_ports=named) == allowed, \
            (peers[i], port)
    egress = [(reading, 50051, "TCP", True), (reading, 8001, "TCP", False), (dns, 53, "UDP", True),
              (dns, 53, "TCP", True), (other_tenant, 50061, "TCP", False), (gateway, 443, "TCP", False),
              ({"ip": "52.95.110.1"}, 443, "TCP", opted_in), ({"ip": "52.95.110.1"}, 80, "TCP", False),
              ({"ip": "169.254.169.254"}, 443, "TCP", False), ({"ip": "10.0.0.7"}, 443, "TCP", False)]
    for other, port, protocol, allowed in egress:
        assert policy_allows(policies, "tenant-a", pod, "Egress", other, port, protocol) == allowed, (other, port)


def test_node_gateway_peers_by_cidr():
    """Gateways that are not pods (a load balancer, host-network proxies) by address
    range: the gRPC port only, nothing else from there, nothing from outside the range."""
    docs = render("node", node_values("tenant-a", networkPolicy={"gateway": {"cidrs": ["10.20.0.0/16"]}}))
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    pod = workload(docs)["spec"]["template"]["metadata"]["labels"]
    named = {p["name"]: p["containerPort"] for p in container(docs, "node")["ports"]}
    for other, port, allowed in [({"ip": "10.20.3.4"}, named["grpc"], True), ({"ip": "10.21.3.4"}, named["grpc"], False),
                                 ({"ip": "10.20.3.4"}, named["metrics"], False),
                                 ({"ip": "10.20.3.4"}, named["health"], False),
                                 (_pod("gateway-system", {"app": "envoy"}), named["grpc"], True)]:
        assert policy_allows(policies, "tenant-a", pod, "Ingress", other, port, named_ports=named) == allowed, other
    assert not policy_allows([d for d in render("node", node_values("tenant-a")) if d["kind"] == "NetworkPolicy"],
                             "tenant-a", pod, "Ingress", {"ip": "10.20.3.4"}, named["grpc"], named_ports=named)


def test_node_and_reading_policies_agree():
    """The node's egress reaches the reading pods on their gRPC port, and the reading
    pods' ingress admits the node's pods."""
    reading, node = render("reading"), render("node", node_values("tenant-a"))
    reading_pod = workload(reading)["spec"]["template"]["metadata"]["labels"]
    node_pod = workload(node)["spec"]["template"]["metadata"]["labels"]
    to_reading = one(node, "NetworkPolicy", "-allow")["spec"]["egress"][0]
    assert selects(to_reading["to"][0]["podSelector"]["matchLabels"], reading_pod)
    assert to_reading["ports"][0]["port"] == container(reading, "frontend")["ports"][0]["containerPort"]
    clients = one(reading, "NetworkPolicy")["spec"]["ingress"][0]["from"]
    assert any(selects(peer["podSelector"]["matchLabels"], node_pod) for peer in clients)


def _selectors(docs: list[dict]) -> list[tuple[str, dict]]:
    found = [(f"{workload(docs)['kind']}.spec.selector", workload(docs)["spec"]["selector"]["matchLabels"])]
    found += [(f"Service/{d['metadata']['name']}", d["spec"]["selector"]) for d in docs if d["kind"] == "Service"]
    found += [(f"NetworkPolicy/{d['metadata']['name']}", d["spec"]["podSelector"]["matchLabels"])
              for d in docs if d["kind"] == "NetworkPolicy"]
    return found


@pytest.mark.parametrize("same_release_name", [False, True])
def test_node_chart_for_one_tenant_cannot_select_another_tenants_pods(same_release_name):
    """Three tenants in one namespace (the worst case): every selector of each release
    matches its own pod and none of the others', even under the same release name."""
    releases = {t: render("node", node_values(t), release="node" if same_release_name else t, namespace="tenants")
                for t in ("tenant-a", "tenant-b", "tenant-c")}
    pods = {t: workload(docs)["spec"]["template"]["metadata"]["labels"] for t, docs in releases.items()}
    for tenant, docs in releases.items():
        selectors = _selectors(docs)
        assert len(selectors) == 5  # StatefulSet, 2 Services, 2 NetworkPolicies
        for where, selector in selectors:
            assert selector.get("percolate.dev/tenant") == tenant, where
            assert selects(selector, pods[tenant]), where
            for other in set(pods) - {tenant}:
                assert not selects(selector, pods[other]), f"{tenant}'s {where} selects {other}'s pod"


def test_route_passes_tls_through_tlsroute_or_ingress():
    """The node serves mutual TLS itself: the route forwards the TLS stream by SNI."""
    docs = render("node", node_values("tenant-b"))
    service = one(docs, "Service", "tenant-b-percolate-node")
    route = one(docs, "TLSRoute")
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1alpha2"
    assert route["spec"]["hostnames"] == [f"tenant-b.{DOMAIN}"]
    assert route["spec"]["rules"] == [{"backendRefs": [{"name": service["metadata"]["name"], "port": 50061}]}]
    assert route["spec"]["parentRefs"] == [{"name": "percolate", "namespace": "gateway-system",
                                            "sectionName": "tls-passthrough"}]
    assert not [d for d in docs if d["kind"] in ("Ingress", "GRPCRoute")]
    assert "appProtocol" not in service["spec"]["ports"][0], "not h2c: TLS reaches the pod"

    docs = render(*VALUE_SETS["node-ingress"])
    assert not [d for d in docs if d["kind"] == "TLSRoute"]
    ingress = one(docs, "Ingress")
    assert ingress["spec"]["rules"][0]["host"] == f"tenant-a.{DOMAIN}"
    assert "tls" not in ingress["spec"], "passthrough: no TLS secret at the ingress"
    assert ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"] == {
        "name": "tenant-a-percolate-node", "port": {"name": "grpc"}}
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/ssl-passthrough"] == "true"
    assert one(docs, "NetworkPolicy", "-allow")["spec"]["ingress"][0]["from"][0]["namespaceSelector"] == {
        "matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}


def test_node_backup_values_become_the_node_backup_settings():
    """backup.* -> the PERCOLATE_NODE_BACKUP_* settings NodeConfig reads; the credentials
    Secret mounted read-only where PERCOLATE_NODE_BACKUP_CREDENTIALS_DIR points."""
    from percolate_node.config import NodeConfig

    docs = render(*VALUE_SETS["node-backup-full"])
    env = effective_env(docs, "node")
    config = NodeConfig.from_env({**env, "PERCOLATE_NODE_KEK_FILE": "/k"})
    assert (config.backup_url, config.backup_region) == ("s3://percolate-eu/backups", "eu-west-1")
    assert (config.backup_replica_url, config.backup_replica_region) == ("s3://percolate-us/backups", "us-east-1")
    assert (config.backup_snapshot_interval_s, config.backup_keep_snapshots) == (3600, 3)
    assert (config.backup_ship_interval_s, config.backup_log_retention_s) == (1, 604800)
    mount = next(m for m in container(docs, "node")["volumeMounts"] if m["name"] == "backup-credentials")
    assert str(config.backup_credentials_dir) == mount["mountPath"] and mount["readOnly"]
    volume = next(v for v in pod_spec(docs)["volumes"] if v["name"] == "backup-credentials")
    assert volume["secret"] == {"secretName": "tenant-a-backup", "defaultMode": 0o440}
    assert one(docs, "ServiceAccount")["metadata"]["annotations"] == {
        "eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/tenant-a"}
    # region defaults to the tenant's; without backup.url nothing of it is rendered
    plain = render("node", node_values("tenant-a", backup={"url": "gs://b/p"}))
    assert effective_env(plain, "node")["PERCOLATE_NODE_BACKUP_REGION"] == "eu-west-1"
    assert "backup-credentials" not in str(pod_spec(plain)["volumes"])
    off = effective_env(render("node", node_values("tenant-a")), "node")
    assert not [k for k in off if "BACKUP" in k]
    assert len(one(render("node", node_values("tenant-a")), "NetworkPolicy", "-allow")["spec"]["egress"]) == 2


def test_node_chart_refuses_broken_backup_values():
    def error(**backup):
        return render_error("node", node_values("tenant-a", backup=backup))

    assert "use object storage" in error(url="/var/backups/percolate")
    assert "use object storage" in error(url="file:///data/backups")
    assert "need backup.url" in error(credentialsSecret="creds")
    assert "need backup.url" in error(replica={"url": "s3://other/p"})
    assert "must be another bucket" in error(url="s3://b/p", replica={"url": "s3://b/p"})
    assert "keepSnapshots" in error(url="s3://b/p", keepSnapshots=0)


def test_node_chart_refuses_broken_combinations():
    def error(**extra):
        return render_error("node", node_values("tenant-a", **extra))

    assert "set networkPolicy.gateway.namespace" in error(route={"kind": "Ingress"})
    assert "podMonitor.enabled needs networkPolicy.monitoring" in error(podMonitor={"enabled": True})
    assert "at most 52 fit" in render_error("node", node_values("tenant-a", fullnameOverride="x" * 53))
    # a tenant id may not end in a dash (labels, SANs and DNS names would be invalid)
    assert "tenant" in render_error("node", node_values("tenant-a-"))


# --- both charts: extra environment -----------------------------------------------

# (chart, values, container, the values' path, the chart's own env names in order, its envFrom sources)
EXTRA_ENV_CASES = [
    ("node", node_values("tenant-a"), "node", "node", [], ["tenant-a-percolate-node-config"]),
    ("node", VALUE_SETS["node-ha-extra-env"][1], "node", "node",
     ["POD_NAME", "PERCOLATE_NODE_REPLICA_ID", "PERCOLATE_NODE_HA_BOOTSTRAP_REPLICA",
      "PERCOLATE_NODE_REPLICATION_ADVERTISE"], ["tenant-a-percolate-node-config"]),
    ("reading", VALUE_SETS["reading-extra-env"][1], "frontend", "frontend", [], ["percolate-reading-config"]),
    ("reading", VALUE_SETS["reading-extra-env"][1], "triton", "triton", ["HOME", "TRITON_HTTP_ADMIN_TOKEN"],
     ["s3-creds"]),
]


@pytest.mark.parametrize("chart, values, name, path, own_env, own_sources", EXTRA_ENV_CASES)
def test_extra_env_is_rendered_verbatim_after_the_charts_own(chart, values, name, path, own_env, own_sources):
    """extraEnv follows the chart's env as given; extraEnvFrom precedes the chart's own
    sources, so for a key both carry the chart's (the last source) wins."""
    extra = {"extraEnv": [{"name": "EXTRA_ONE", "value": "1"},
                          {"name": "EXTRA_REF", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}],
             "extraEnvFrom": [{"secretRef": {"name": "operator-secret"}, "prefix": "OP_"}]}
    for given in (values, _merge(values, {path: extra})):
        spec = container(render(chart, given), name)
        own = [e for e in spec.get("env", []) if e["name"] in own_env]
        assert [e["name"] for e in own] == own_env
        wanted = (given.get(path) or {}).get("extraEnv", [])
        assert spec.get("env", []) == own + wanted, "the chart's env, then extraEnv exactly as given"
        names = [(s.get("configMapRef") or s["secretRef"])["name"] for s in spec.get("envFrom", [])]
        sources = [(s.get("configMapRef") or s["secretRef"])["name"]
                   for s in (given.get(path) or {}).get("extraEnvFrom", [])]
        assert names == sources + own_sources
        assert spec.get("envFrom", [])[:len(sources)] == (given.get(path) or {}).get("extraEnvFrom", [])


def test_extra_env_reaches_the_environment_and_never_replaces_the_charts():
    docs = render(*VALUE_SETS["node-ha-extra-env"])
    # a Secret from extraEnvFrom carrying a chart setting too: the chart's ConfigMap comes later and wins
    env = effective_env(docs, "node", {"tenant-a-aws": {"ACCESS_KEY_ID": "AKIA1"}, "site-settings": {
        "PERCOLATE_STORE_CIPHER": "evp", "PERCOLATE_NODE_GRAPH_SAVE_INTERVAL_S": "30"}})
    assert env["AWS_REGION"] == "eu-west-1" and env["PERCOLATE_NODE_DEK_SEAL_LIMIT"] == "1000000"
    assert env["AWS_ACCESS_KEY_ID"] == "AKIA1" and env["PERCOLATE_NODE_GRAPH_SAVE_INTERVAL_S"] == "30"
    assert env["PERCOLATE_STORE_CIPHER"] == "auto" and env["TENANT_ID"] == "tenant-a"
    docs = render(*VALUE_SETS["reading-extra-env"])
    env = effective_env(docs, "frontend", {"site-settings": {"PERCOLATE_READING_MAX_PAGES": "9999"}})
    assert env["GRPC_VERBOSITY"] == "info" and env["PERCOLATE_READING_MAX_PAGES"] == "500"
    assert effective_env(docs, "triton")["HOME"] == "/tmp"
    assert "GRPC_VERBOSITY" not in effective_env(docs, "triton"), "each container gets its own extraEnv"


@pytest.mark.parametrize("chart, values, path, variable", [
    ("node", node_values("tenant-e", node={"storeCipher": "evp"}), "node", "PERCOLATE_STORE_CIPHER"),
    ("node", node_values("tenant-e"), "node", "TENANT_ID"),
    ("node", node_values("tenant-e"), "node", "PERCOLATE_NODE_KEK_FILE"),
    ("node", node_values("tenant-e", backup={"url": "s3://b/p"}), "node", "PERCOLATE_NODE_BACKUP_URL"),
    ("node", node_values("tenant-e", ha={"enabled": True}), "node", "POD_NAME"),
    ("node", node_values("tenant-e", ha={"enabled": True}), "node", "PERCOLATE_NODE_REPLICA_ID"),
    ("reading", {}, "frontend", "PERCOLATE_READING_MAX_PAGES"),
    ("reading", {}, "frontend", "PERCOLATE_READING_TRITON_URL"),
    ("reading", {}, "triton", "HOME"),
    ("reading", {}, "triton", "TRITON_HTTP_ADMIN_TOKEN"),
])
def test_extra_env_naming_a_variable_the_chart_sets_fails_the_render(chart, values, path, variable):
    """Kubernetes would silently let env replace the chart's ConfigMap (or the later of two
    env entries win): the chart refuses it and names the variable."""
    extra = [{"name": "FINE", "value": "x"}, {"name": variable, "value": "operator"}]
    error = render_error(chart, _merge(values, {path: {"extraEnv": extra}}))
    assert f"{path}.extraEnv[1] sets {variable}, which the chart sets for this container itself" in error
    render(chart, _merge(values, {path: {"extraEnv": extra[:1]}}))  # the rest renders


def test_extra_env_refuses_managed_families_on_or_off_and_repeated_names():
    """Backup and HA settings without backup.url / ha.enabled would lack their volumes,
    ports and network policies (and with them on, the chart sets what it supports); a name
    listed twice would silently keep the last."""
    for variable, values in (("PERCOLATE_NODE_BACKUP_URL", "backup.*"), ("PERCOLATE_NODE_HA_LEASE_URL", "ha.*"),
                             ("PERCOLATE_NODE_REPLICATION_PORT", "ha.*")):
        error = render_error("node", node_values("tenant-e", node={"extraEnv": [{"name": variable, "value": "1"}]}))
        assert f"node.extraEnv[0] sets {variable}: the chart manages" in error and values in error
    on = node_values("tenant-e", ha={"enabled": True}, backup={"url": "s3://b/p"})
    for variable in ("PERCOLATE_NODE_REPLICATION_HOST", "PERCOLATE_NODE_BACKUP_REPLICA_REGION"):
        error = render_error("node", _merge(on, {"node": {"extraEnv": [{"name": variable, "value": "1"}]}}))
        assert f"node.extraEnv[0] sets {variable}: the chart manages" in error and "whether on or off" in error
    twice = [{"name": "AWS_REGION", "value": "a"}, {"name": "X", "value": "1"}, {"name": "AWS_REGION", "value": "b"}]
    assert "node.extraEnv[2] sets AWS_REGION again (node.extraEnv[0] set it first)" in render_error(
        "node", node_values("tenant-e", node={"extraEnv": twice}))
    assert "triton.extraEnv[2] sets AWS_REGION again" in render_error("reading", {"triton": {"extraEnv": twice}})
    # a name the chart sets for another container is that container's business
    docs = render("reading", {"frontend": {"extraEnv": [{"name": "HOME", "value": "/tmp"}]},
                              "triton": {"extraEnv": [{"name": "PERCOLATE_READING_MAX_PAGES", "value": "1"}]}})
    assert effective_env(docs, "frontend")["HOME"] == "/tmp"


def test_extra_env_from_cannot_slip_in_another_tenant_or_a_managed_family():
    """The node reads PERCOLATE_NODE_TENANT_ID before TENANT_ID (and PERCOLATE_NODE_READING_URL
    before PERCOLATE_READING_URL): the chart sets both spellings, so an operator's Secret
    carrying the first cannot make the node another tenant or dial another reading
    service; a prefix that could make a managed name is refused, since a Secret's keys are
    unknown at render time. The frontend's INSECURE is pinned off the same way."""
    from percolate_node.config import NodeConfig

    values = _merge(node_values("tenant-a"), {"node": {"extraEnvFrom": [{"secretRef": {"name": "operator"}}]}})
    docs = render("node", values)
    env = effective_env(docs, "node", {"operator": {"PERCOLATE_NODE_TENANT_ID": "tenant-b",
                                                    "PERCOLATE_NODE_READING_URL": "evil.example.com:443"}})
    config = NodeConfig.from_env(env)
    assert config.tenant_id == "tenant-a" and config.reading_url == env["PERCOLATE_READING_URL"] != "evil.example.com:443"
    for variable in ("PERCOLATE_NODE_TENANT_ID", "PERCOLATE_NODE_READING_URL"):
        error = render_error("node", _merge(node_values("tenant-a"), {"node": {"extraEnv": [{"name": variable, "value": "x"}]}}))
        assert f"node.extraEnv[0] sets {variable}, which the chart sets for this container itself" in error
    for prefix, family in (("PERCOLATE_NODE_", "PERCOLATE_NODE_BACKUP_"), ("PERCOLATE_NODE_HA_", "PERCOLATE_NODE_HA_"),
                           ("PERCOLATE_NODE_BACKUP_X", "PERCOLATE_NODE_BACKUP_"), ("P", "PERCOLATE_NODE_")):
        error = render_error("node", _merge(node_values("tenant-a"), {"node": {"extraEnvFrom": [
            {"secretRef": {"name": "fine"}}, {"secretRef": {"name": "operator"}, "prefix": prefix}]}}))
        assert f"node.extraEnvFrom[1].prefix {prefix} could set {family}" in error
    render("node", _merge(node_values("tenant-a"), {"node": {"extraEnvFrom": [
        {"secretRef": {"name": "operator"}, "prefix": "AWS_"}]}}))  # outside the families: fine
    docs = render("reading", {"frontend": {"extraEnvFrom": [{"secretRef": {"name": "operator"}, "prefix": "PERCOLATE_READING_"}]}})
    assert effective_env(docs, "frontend", {"operator": {"INSECURE": "1"}})["PERCOLATE_READING_INSECURE"] == "0"
    assert "frontend.extraEnv[0] sets PERCOLATE_READING_INSECURE" in render_error(
        "reading", {"frontend": {"extraEnv": [{"name": "PERCOLATE_READING_INSECURE", "value": "1"}]}})


@pytest.mark.parametrize("chart, path", [("node", "node"), ("reading", "frontend"), ("reading", "triton")])
def test_extra_env_schema_rejects_what_kubernetes_would(chart, path):
    base = node_values("tenant-e") if chart == "node" else {}

    def error(**extra) -> str:
        return render_error(chart, _merge(base, {path: extra}))

    assert f"/{path}/extraEnv': got object, want array" in error(extraEnv={"AWS_REGION": "eu-west-1"})
    assert f"/{path}/extraEnv/0': missing property 'name'" in error(extraEnv=[{"value": "x"}])
    assert f"/{path}/extraEnv/0/value': got number, want string" in error(extraEnv=[{"name": "N", "value": 5}])
    assert "'valuefrom' not allowed" in error(extraEnv=[{"name": "N", "valuefrom": {}}])
    assert f"/{path}/extraEnvFrom': got string, want array" in error(extraEnvFrom="my-secret")
    assert f"/{path}/extraEnvFrom/0'" in error(extraEnvFrom=[{"prefix": "X_"}])
    # what the API server would refuse at apply time, refused at render instead
    assert f"/{path}/extraEnv/0'" in error(extraEnv=[{"name": "N", "value": "1", "valueFrom": {"secretKeyRef": {}}}])
    assert f"/{path}/extraEnv/0/valueFrom'" in error(extraEnv=[{"name": "N", "valueFrom": {}}])
    assert f"/{path}/extraEnvFrom/0'" in error(extraEnvFrom=[{"secretRef": {"name": "s"}, "configMapRef": {"name": "c"}}])
    assert f"/{path}/extraEnvFrom/0/secretRef/name'" in error(extraEnvFrom=[{"secretRef": {"name": ""}}])
    assert "'bogus' not allowed" in error(extraEnvFrom=[{"configMapRef": {"name": "c", "bogus": 1}}])
    render(chart, _merge(base, {path: {"extraEnvFrom": [{"secretRef": {"name": "s", "optional": True}}]}}))


# --- Dockerfiles ----------------------------------------------------------------

DOCKERFILES = {"reading": ROOT / "docker" / "reading.Dockerfile", "node": ROOT / "docker" / "node.Dockerfile"}


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    instructions, pending = [], []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        pending.append(line.removesuffix("\\").strip())
        if not line.endswith("\\"):
            op, _, args = " ".join(pending).partition(" ")
            instructions.append((op.upper(), args.strip()))
            pending = []
    return instructions


def console_scripts() -> dict[str, str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


@pytest.mark.parametrize("image", DOCKERFILES)
def test_dockerfile_is_multi_stage_non_root_and_copies_what_exists(image):
    path = DOCKERFILES[image]
    instructions = dockerfile_instructions(path)
    stages = [args.split()[-1] for op, args in instructions if op == "FROM" and args.upper().split()[-2:-1] == ["AS"]]
    froms = [args for op, args in instructions if op == "FROM"]
    assert len(froms) >= 2, "multi-stage"
    final_stage = instructions[max(i for i, (op, _) in enumerate(instructions) if op == "FROM"):]
    users = [args for op, args in final_stage if op == "USER"]
    assert users and users[-1].split(":")[0].isdigit() and int(users[-1].split(":")[0]) != 0, "non-root by uid"
    assert users[-1] == "10001:10001"
    allowed = {line[1:].rstrip("/") for line in Path(f"{path}.dockerignore").read_text().splitlines()
               if line.startswith("!")}
    for op, args in instructions:
        if op not in ("COPY", "ADD"):
            continue
        words = args.split()
        flags = [w for w in words if w.startswith("--")]
        sources = [w for w in words if not w.startswith("--")][:-1]
        source_stage = next((f.split("=", 1)[1] for f in flags if f.startswith("--from=")), None)
        if source_stage:
            assert source_stage in stages, f"{args}: unknown stage"
            continue
        for source in sources:
            assert (ROOT / source).exists(), f"{path.name}: COPY {source} does not exist"
            assert any(source == a or source.startswith(a + "/") for a in allowed), (
                f"{path.name}: {source} is excluded by {path.name}.dockerignore")
    # the package's own include list is complete in the image
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    copied = {args.split()[0] for op, args in instructions if op == "COPY" and not args.startswith("--")}
    for pattern in packages:
        top = pattern.split(".")[0].rstrip("*")
        assert top in copied or not (ROOT / top).exists(), f"{top} is installed but not copied"


def _entry_point(image: str) -> tuple[list[str], list[str]]:
    instructions = dockerfile_instructions(DOCKERFILES[image])
    entrypoint = json.loads(next(args for op, args in reversed(instructions) if op == "ENTRYPOINT"))
    cmd = json.loads(next(args for op, args in reversed(instructions) if op == "CMD"))
    return entrypoint, cmd


@pytest.mark.parametrize("image", DOCKERFILES)
def test_dockerfile_entry_point_is_a_console_script(image):
    """The entry point runs (`<script> serve --help`) through pyproject's console script."""
    entrypoint, cmd = _entry_point(image)
    assert len(entrypoint) == 1 and cmd == ["serve"]
    chart = render(*VALUE_SETS["reading-defaults" if image == "reading" else "node-tenant-a"])
    assert container(chart, "frontend" if image == "reading" else "node")["args"] == cmd
    scripts = console_scripts()
    assert entrypoint[0] in scripts, f"{entrypoint[0]} is not a console script in pyproject.toml"
    module, function = scripts[entrypoint[0]].split(":")
    code = f"import sys, {module} as m; sys.exit(m.{function}({cmd + ['--help']!r}))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr


def test_reading_image_layout_matches_the_chart():
    """What the chart expects inside the image is where the Dockerfile puts it."""
    instructions = dockerfile_instructions(DOCKERFILES["reading"])
    final_copies = [args.split() for op, args in instructions if op == "COPY" and args.startswith("--from=models")]
    destinations = {words[-1] for words in final_copies}
    init = pod_spec(render("reading"))["initContainers"][0]
    assert init["command"][2].removesuffix("/.") in destinations
    env = " ".join(args for op, args in instructions if op == "ENV")
    assert "PERCOLATE_MODEL_ASSETS=/app/model_assets" in env and "/app/model_assets" in destinations
    assert "PATH=/opt/venv/bin:$PATH" in env  # the probe runs `python` from the venv
    assert (ROOT / "model_repository").is_dir()
