"""The rendered charts, run: every container started with exactly the command, args and
environment the chart gives it, every probe run as the kubelet runs it (see
tests/chart_harness.py for the kubelet stand-in and its explicit translation tables).

One reading pod (the CPU Triton standing in for the NGC one, and the frontend) and one
tenant node pod; then a tenant reaches its node the way the route publishes it (TLS
passthrough to ``<id>.<domain>``, the tenant's client certificate), and the node reaches
the reading service with its own client certificate: an ingest and a search end to end.
"""
from __future__ import annotations

import os
import re
import time
from pathlib import Path

import grpc
import pytest

from percolate.node.v1 import node_pb2, node_pb2_grpc
from percolate.reading.v1 import reading_pb2, reading_pb2_grpc
from percolate_certs.tls import channel_credentials
from tests.chart_harness import Cluster, Pod, issue_certificates, secret_files
from tests.test_helm import DOMAIN, READING_NAMESPACE, _merge, node_values, one, render

PROBES = ("startupProbe", "readinessProbe", "livenessProbe")
TENANT = "tenant-a"


@pytest.fixture(scope="module")
def cluster() -> Cluster:
    return Cluster()


@pytest.fixture(scope="module")
def reading_pod(tmp_path_factory, pki, paths, cluster):
    """The reading chart's pod as rendered with its defaults (release percolate-reading
    in namespace percolate-reading: the names the node chart's defaults dial)."""
    docs = render("reading", release="percolate-reading", namespace=READING_NAMESPACE)
    root = tmp_path_factory.mktemp("reading-pod")
    secrets = issue_certificates(docs, pki.root, root / "cert-manager")
    pod = Pod(docs, "reading", root, secrets, cluster)
    cluster.register(docs, READING_NAMESPACE, pod)
    try:
        pod.run_init_containers()  # copies the image's model repository into the pod's volume
        pod.start("triton")
        pod.start("frontend")
        yield pod
    finally:
        pod.stop()


@pytest.fixture(scope="module")
def node_pod(tmp_path_factory, pki, reading_pod, cluster):
    docs = render("node", node_values(TENANT))
    root = tmp_path_factory.mktemp("node-pod")
    secrets = issue_certificates(docs, pki.root, root / "cert-manager")
    secrets[f"{TENANT}-kek"] = {"kek": os.urandom(32)}  # created outside the chart (KMS operator)
    pod = Pod(docs, "node", root, secrets, cluster)
    try:
        pod.start("node")
        yield pod
    finally:
        pod.stop()


@pytest.mark.parametrize("container", ["triton", "frontend"])
def test_reading_containers_pass_their_probes(reading_pod, container):
    for kind in PROBES:
        reading_pod.wait_for_probe(container, kind)


def test_triton_http_serves_only_health_without_the_chart_secret(reading_pod):
    """--http-restricted-api as rendered: the kubelet's health probes pass, model metadata,
    inference, repository control and statistics are refused without the Secret's header."""
    import urllib.error
    import urllib.request

    reading_pod.wait_for_probe("triton", "readinessProbe")
    base = f"http://127.0.0.1:{reading_pod.ports[reading_pod.container_port('triton-http')]}"
    token = reading_pod.secrets[next(d["metadata"]["name"] for d in reading_pod.docs
                                     if d["kind"] == "Secret" and d["metadata"]["name"].endswith("-triton-http"))]

    def status(path: str, headers: dict | None = None, body: bytes | None = None) -> int:
        request = urllib.request.Request(base + path, data=body, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=60) as reply:
                return reply.status
        except urllib.error.HTTPError as err:
            return err.code

    assert status("/v2/health/ready") == 200
    for path, body in [("/v2/models/text_embedding", None), ("/v2/models/stats", None),
                       ("/v2/repository/index", b"{}"), ("/v2/models/text_embedding/infer", b"{}"),
                       ("/v2/repository/models/text_embedding/unload", b"{}")]:
        assert status(path, body=body) == 403, path
    assert status("/v2/models/text_embedding", {"percolate-triton-admin": token["token"].decode()}) == 200


def test_reading_pod_serves_a_tenant(reading_pod, pki):
    reading_pod.wait_for_probe("frontend", "readinessProbe")
    creds = pki.tenants[TENANT]
    port = reading_pod.ports[reading_pod.container_port("grpc")]
    # the name a node dials (the headless Service) is on the certificate cert-manager issued
    with grpc.secure_channel(f"127.0.0.1:{port}", channel_credentials(creds.ca, creds.cert, creds.key), options=[
            ("grpc.ssl_target_name_override", f"percolate-reading-headless.{READING_NAMESPACE}.svc.cluster.local")
    ]) as channel:
        reply = reading_pb2_grpc.ReadingServiceStub(channel).Embed(
            reading_pb2.EmbedRequest(tenant_id=TENANT, texts=["hello"]), timeout=120)
    assert len(reply.embeddings[0].values) == 384


ENGINE_CACHE = {"triton": {"engineCache": {"type": "persistentVolumeClaim", "storageClassName": "efs-sc",
                                           "settleSeconds": 0, "syncIntervalSeconds": 0.2}}}


def _engine_files(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*")
            if p.is_file() and not p.name.startswith(".")}


def test_engine_cache_built_by_one_pod_is_restored_by_the_next(tmp_path, pki):
    """The rendered init step and sidecar, run as the kubelet would on a shared
    ReadWriteMany claim. Pod A's init prepares the folder of every gpu config's
    trt_engine_cache_path (as Triton's container mounts it); an engine appearing there
    (written by this test: the CPU Triton builds no TensorRT engines) is published by A's
    sidecar; pod B, started next, finds it in its own pod-local folder before Triton would
    start. Pod C, rendered for another repository version, starts without it."""
    from tests.test_helm import _engine_cache_paths

    cluster = Cluster()
    docs = render("reading", ENGINE_CACHE)

    def started(name: str, pod_docs) -> Pod:
        pod = Pod(pod_docs, "reading", tmp_path / name, issue_certificates(
            pod_docs, pki.root, tmp_path / name / "cert-manager"), cluster)
        pod.run_init_containers()  # the sidecar is started in its place and keeps running
        return pod

    def engines(pod: Pod):  # the folder Triton's container sees at /tmp/triton_trt_cache
        triton = next(c for c in pod.spec["containers"] if c["name"] == "triton")
        return pod.mounts(triton)["/tmp/triton_trt_cache"]

    pods = []
    try:
        pods.append(a := started("pod-a", docs))
        triton = next(c for c in a.spec["containers"] if c["name"] == "triton")
        for path in _engine_cache_paths():  # ONNX Runtime finds each model's folder made
            assert os.path.isdir(a.translate(triton, path)), path
        assert _engine_files(engines(a)) == {}
        engine = os.urandom(256 * 1024)
        (engines(a) / "text_embedding" / "TensorrtExecutionProvider_TRTKernel_sm89.engine").write_bytes(engine)
        (engines(a) / "text_embedding" / "TensorrtExecutionProvider_TRTKernel_sm89.profile").write_bytes(b"p")
        claim = cluster.claims["percolate-reading-trt-t4"]
        deadline = time.monotonic() + 120
        while not any(_engine_files(s) == _engine_files(engines(a)) for s in claim.glob("Tesla-T4/*/*/snapshots/*")):
            assert a.processes["engine-cache-sync"].poll() is None, a.log("engine-cache-sync")
            assert time.monotonic() < deadline, f"nothing published:\n{a.log('engine-cache-sync')}"
            time.sleep(0.2)
        # <product>/<Triton release>/<repository hash>/snapshots/<time>-<pod>
        assert {s.parts[-4] for s in claim.glob("Tesla-T4/*/*/snapshots/*")} == {"24.10-py3"}

        pods.append(b := started("pod-b", docs))
        assert _engine_files(engines(b)) == {
            "text_embedding/TensorrtExecutionProvider_TRTKernel_sm89.engine": engine,
            "text_embedding/TensorrtExecutionProvider_TRTKernel_sm89.profile": b"p"}
        # Triton runs as another user than the init step: the files are group-writable
        assert (engines(b) / "text_embedding").stat().st_mode & 0o2070 == 0o2070

        pods.append(c := started("pod-c", render("reading", _merge(ENGINE_CACHE, {
            "triton": {"engineCache": {"version": "next"}}}))))
        assert _engine_files(engines(c)) == {} and (engines(c) / "text_embedding").is_dir()
    finally:
        for pod in pods:
            pod.stop()


def test_engine_cache_key_follows_the_repository_and_old_keys_are_pruned(tmp_path):
    """The script as the init step runs it, on a small repository: a changed model file
    is a new key (its engines are not offered), and a key unused for keepDays goes."""
    import subprocess
    import sys

    from tests.test_helm import CHARTS

    script = CHARTS["reading"] / "files" / "engine_cache.py"
    repository = tmp_path / "repository"
    (repository / "m" / "configs").mkdir(parents=True)
    (repository / "m" / "1").mkdir()
    (repository / "m" / "configs" / "gpu.pbtxt").write_text(
        'parameters { key: "trt_engine_cache_path" value: "/tmp/triton_trt_cache/m" }')
    (repository / "m" / "1" / "model.onnx").write_bytes(b"weights-1")
    claim = tmp_path / "engine-claim"  # the ReadWriteMany claim pods share

    def restore(local: str) -> Path:
        subprocess.run([sys.executable, str(script), "restore", f"--repository={repository}",
                        "--cache-path=/tmp/triton_trt_cache", f"--local={tmp_path / local}",
                        f"--shared={claim}", "--release=r1", "--keep-days=1"], check=True)
        return tmp_path / local

    first = restore("one")
    (key,) = [p.name for p in (claim / "r1").iterdir()]
    snapshot = claim / "r1" / key / "snapshots" / "20240101T000000Z-pod"
    (snapshot / "m").mkdir(parents=True)
    (snapshot / "m" / "e.engine").write_bytes(b"engine")
    assert _engine_files(restore("two")) == {"m/e.engine": b"engine"} and _engine_files(first) == {}
    (repository / "m" / "1" / "model.onnx").write_bytes(b"weights-2")  # same graph, new weights
    assert _engine_files(restore("three")) == {}
    assert len(list((claim / "r1").iterdir())) == 2
    old = time.time() - 2 * 86400
    os.utime(claim / "r1" / key / "last-used", (old, old))
    restore("four")
    assert key not in [p.name for p in (claim / "r1").iterdir()]


def test_node_passes_its_probes(node_pod):
    for kind in PROBES:
        node_pod.wait_for_probe("node", kind)
    # the chart's node.storeCipher (auto, tests/test_helm.py) reached the store, which says how it seals
    assert re.search(r"opened the store at \S+: values sealed with (aes-ni|evp)", node_pod.log("node"))


def test_tenant_reaches_its_node_through_the_route_and_the_node_reaches_reading(node_pod, reading_pod, pki):
    """TLS passthrough: the tenant's client sees the node's own certificate for the
    route's hostname and presents its client certificate; the node ingests through the
    reading service with its client certificate."""
    for kind in PROBES:
        node_pod.wait_for_probe("node", kind)
    reading_pod.wait_for_probe("frontend", "readinessProbe")
    docs = render("node", node_values(TENANT))
    route = next(d for d in docs if d["kind"] in ("TLSRoute", "Ingress"))
    host = route["spec"]["hostnames"][0] if route["kind"] == "TLSRoute" else route["spec"]["rules"][0]["host"]
    assert host == f"{TENANT}.{DOMAIN}"
    backend = one(docs, "Service", f"{TENANT}-percolate-node")["spec"]["ports"][0]
    port = node_pod.ports[node_pod.container_port(backend["targetPort"])]
    creds = pki.tenants[TENANT]
    with grpc.secure_channel(f"127.0.0.1:{port}", channel_credentials(creds.ca, creds.cert, creds.key),
                             options=[("grpc.ssl_target_name_override", host)]) as channel:
        stub = node_pb2_grpc.NodeServiceStub(channel)
        text = b"The harness proves the rendered charts against the real processes."
        ingested = stub.Ingest(node_pb2.IngestRequest(content=text, filename="harness.txt"), timeout=300)
        assert ingested.resources >= 1
        hits = stub.Search(node_pb2.SearchRequest(query="rendered charts", mode=node_pb2.SEARCH_MODE_SEMANTIC),
                           timeout=120).hits
        assert hits and "rendered charts" in hits[0].text


def test_another_tenant_is_refused_by_the_node(node_pod, pki):
    node_pod.wait_for_probe("node", "readinessProbe")
    port = node_pod.ports[node_pod.container_port("grpc")]
    creds = pki.tenants["tenant-b"]
    with grpc.secure_channel(f"127.0.0.1:{port}", channel_credentials(creds.ca, creds.cert, creds.key),
                             options=[("grpc.ssl_target_name_override", f"{TENANT}.{DOMAIN}")]) as channel:
        with pytest.raises(grpc.RpcError) as err:
            node_pb2_grpc.NodeServiceStub(channel).Search(node_pb2.SearchRequest(query="x"), timeout=60)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_node_reading_client_picks_up_a_renewed_certificate(reading_pod, pki, tmp_path):
    """cert-manager renews the node's client certificate in place (a Secret volume swaps
    its files); the running client must present the new one without a restart. Here the
    first certificate comes from a CA the reading service does not trust (as a lapsed
    one would be refused), the renewal from the right one."""
    import asyncio
    import shutil

    from percolate_certs.ca import create_ca, issue_tenant_cert
    from percolate_node.config import NodeConfig
    from percolate_node.errors import ReadingServiceError
    from percolate_node.reading_client import ReadingClient

    reading_pod.wait_for_probe("frontend", "readinessProbe")
    foreign = create_ca(tmp_path / "other-ca")
    stale = issue_tenant_cert(foreign.cert.parent, tmp_path / "stale", TENANT)
    mounted = tmp_path / "client-tls"
    mounted.mkdir()

    def install(cert, key) -> None:  # as the kubelet does: new files, then one rename
        staging = tmp_path / "staging"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        for source, name in ((cert, "tls.crt"), (key, "tls.key"), (pki.ca.cert, "ca.crt")):
            shutil.copyfile(source, staging / name)
        for name in ("tls.crt", "tls.key", "ca.crt"):
            os.replace(staging / name, mounted / name)

    install(stale.cert, stale.key)
    port = reading_pod.ports[reading_pod.container_port("grpc")]
    config = NodeConfig(tenant_id=TENANT, data_dir=tmp_path / "data", kek_file=tmp_path / "kek",
                        reading_url=f"127.0.0.1:{port}", reading_cert=mounted / "tls.crt",
                        reading_key=mounted / "tls.key", reading_ca=mounted / "ca.crt", reading_timeout_s=30)

    async def scenario() -> None:
        client = ReadingClient(config)
        try:
            with pytest.raises(ReadingServiceError):
                await client.embed_query("before the renewal")
            install(pki.tenants[TENANT].cert, pki.tenants[TENANT].key)
            assert len(await client.embed_query("after the renewal")) == 384
        finally:
            await client.close()

    asyncio.run(scenario())


def test_node_with_backups_ships_a_snapshot_to_object_storage(tmp_path, pki, reading_pod, cluster, moto):
    """backup.* rendered into the node's environment and a mounted credentials Secret
    (as an operator would create it) reach a real S3 server: the node's agent uploads its
    first snapshot (manifest written last) and ships the change log of an ingest."""
    import boto3

    from tests.durability_fixtures import S3_ENV, new_bucket

    bucket = new_bucket(moto)
    values = node_values(TENANT, backup={"url": f"s3://{bucket}/percolate", "region": S3_ENV["AWS_REGION"],
                                         "credentialsSecret": f"{TENANT}-backup-credentials"})
    docs = render("node", values)
    env = {k: v for k, v in one(docs, "ConfigMap", "-config")["data"].items() if "BACKUP" in k}
    assert env["PERCOLATE_NODE_BACKUP_CREDENTIALS_DIR"] == "/etc/percolate/backup-credentials"
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": f"{TENANT}-backup-credentials"},
              "stringData": {"access_key_id": S3_ENV["AWS_ACCESS_KEY_ID"],
                             "secret_access_key": S3_ENV["AWS_SECRET_ACCESS_KEY"], "endpoint": moto.endpoint}}
    secrets = issue_certificates(docs, pki.root, tmp_path / "cert-manager")
    secrets[f"{TENANT}-kek"] = {"kek": os.urandom(32)}
    secrets.update(secret_files(secret))
    pod = Pod(docs, "node", tmp_path / "pod", secrets, cluster)
    s3 = boto3.client("s3", endpoint_url=moto.endpoint, aws_access_key_id=S3_ENV["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=S3_ENV["AWS_SECRET_ACCESS_KEY"], region_name=S3_ENV["AWS_REGION"])

    def keys(prefix: str) -> list[str]:
        reply = s3.list_objects_v2(Bucket=bucket, Prefix=f"percolate/tenants/{TENANT}/{prefix}")
        return [o["Key"] for o in reply.get("Contents", [])]

    def wait_for(what: str, found) -> list[str]:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if found():
                return found()
            assert pod.processes["node"].poll() is None, pod.log("node")
            time.sleep(0.5)
        raise AssertionError(f"no {what} in s3://{bucket} after 300 s:\n{pod.log('node')}")

    try:
        pod.start("node")
        pod.wait_for_probe("node", "readinessProbe")
        manifests = wait_for("snapshot manifest",
                             lambda: [k for k in keys("snapshots/") if k.endswith("/manifest.json")])
        assert manifests and all(k.startswith(f"percolate/tenants/{TENANT}/snapshots/") for k in manifests)
        assert len(keys("snapshots/")) > len(manifests), "the snapshot's files are there too"

        reading_pod.wait_for_probe("frontend", "readinessProbe")
        port = pod.ports[pod.container_port("grpc")]
        creds = pki.tenants[TENANT]
        with grpc.secure_channel(f"127.0.0.1:{port}", channel_credentials(creds.ca, creds.cert, creds.key),
                                 options=[("grpc.ssl_target_name_override", f"{TENANT}.{DOMAIN}")]) as channel:
            node_pb2_grpc.NodeServiceStub(channel).Ingest(
                node_pb2.IngestRequest(content=b"Backed up through the rendered chart.", filename="b.txt"),
                timeout=300)
        wait_for("change-log segment", lambda: keys("log/"))
    finally:
        pod.stop()


def test_node_process_sees_the_operators_extra_environment(tmp_path, pki, reading_pod, cluster):
    """node.extraEnv and node.extraEnvFrom, passed as the kubelet passes them, are in the
    started node's own environment (/proc/<pid>/environ), a ``$(VAR)`` of the chart's
    expanded; a node setting the chart does not manage (PERCOLATE_NODE_DEK_SEAL_LIMIT) takes
    effect, as the node's percolate_dek_seal_limit reports; and a Secret from extraEnvFrom
    that also carries one of the chart's settings does not replace it."""
    import urllib.request

    values = node_values(TENANT, node={
        "extraEnv": [{"name": "PERCOLATE_NODE_DEK_SEAL_LIMIT", "value": "123457"},
                     {"name": "PERCOLATE_OPERATOR_NOTE", "value": "$(TENANT_ID) via extraEnv"}],
        "extraEnvFrom": [{"secretRef": {"name": f"{TENANT}-operator-env"}, "prefix": "OPERATOR_"},
                         {"secretRef": {"name": f"{TENANT}-site-env"}}]})
    docs = render("node", values)
    secrets = issue_certificates(docs, pki.root, tmp_path / "cert-manager")
    secrets[f"{TENANT}-kek"] = {"kek": os.urandom(32)}
    secrets[f"{TENANT}-operator-env"] = {"GREETING": b"from a Secret"}
    secrets[f"{TENANT}-site-env"] = {"PERCOLATE_STORE_CIPHER": b"evp", "SITE": b"eu"}
    pod = Pod(docs, "node", tmp_path / "pod", secrets, cluster)
    try:
        process = pod.start("node")
        pod.wait_for_probe("node", "startupProbe")
        raw = Path(f"/proc/{process.pid}/environ").read_bytes().decode()
        environ = dict(item.split("=", 1) for item in raw.split("\0") if item)
        assert environ["PERCOLATE_OPERATOR_NOTE"] == f"{TENANT} via extraEnv"
        assert environ["OPERATOR_GREETING"] == "from a Secret" and environ["SITE"] == "eu"
        assert environ["PERCOLATE_STORE_CIPHER"] == "auto", "the chart's ConfigMap comes after extraEnvFrom"
        assert environ["PERCOLATE_NODE_DEK_SEAL_LIMIT"] == "123457"
        url = f"http://127.0.0.1:{pod.ports[pod.container_port('metrics')]}/metrics"
        line = f'percolate_dek_seal_limit{{tenant_id="{TENANT}"}} 123457.0'
        deadline, text = time.monotonic() + 120, ""
        while time.monotonic() < deadline and line not in text:
            assert process.poll() is None, pod.log("node")
            with urllib.request.urlopen(url, timeout=10) as reply:
                text = reply.read().decode()
            time.sleep(0.5)
        assert line in text, [m for m in text.splitlines() if "dek_seal_limit" in m]
    finally:
        pod.stop()


# -- high availability: the rendered pair ------------------------------------------------------

HA_NAMESPACE = TENANT  # the release's namespace (render's default: the tenant id)


def ha_docs() -> list[dict]:
    return render("node", node_values(TENANT, ha={"enabled": True, "leaseDurationSeconds": 4,
                                                  "standbyTimeoutSeconds": 3}))


def test_ha_render_two_replicas_lease_rbac_pdb_probes_and_replication_policy():
    """What the chart promises for the standby, as objects: two replicas apart, a PDB, RBAC on
    the one Lease (get/update only: the chart creates it), the replica certificate, liveness
    that a standby passes while only the active is Ready, and replication between the
    tenant's own pods only."""
    from tests.test_helm import _pod, container, policy_allows, selects, validate, workload

    docs = ha_docs()
    for doc in docs:  # Kubernetes' own schemas (strict), and the small CRD schemas
        validate(doc)
    sts = workload(docs)
    spec = sts["spec"]["template"]["spec"]
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert sts["spec"]["replicas"] == 2 and sts["spec"]["podManagementPolicy"] == "Parallel"
    anti = spec["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]
    assert anti["topologyKey"] == "kubernetes.io/hostname" and selects(anti["labelSelector"]["matchLabels"], labels)
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1 and selects(pdb["spec"]["selector"]["matchLabels"], labels)
    lease = one(docs, "Lease")
    role, binding = one(docs, "Role", "-lease"), one(docs, "RoleBinding", "-lease")
    assert role["rules"] == [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                              "resourceNames": [lease["metadata"]["name"]], "verbs": ["get", "update"]}]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": spec["serviceAccountName"],
                                    "namespace": HA_NAMESPACE}]
    replica = one(docs, "Certificate", "-replica")["spec"]
    assert replica["uris"] == [f"spiffe://percolate/tenant/{TENANT}/replica"]
    assert {"server auth", "client auth"} <= set(replica["usages"])
    node = container(docs, "node")
    assert node["readinessProbe"]["grpc"].get("service", "") == ""
    for kind in ("startupProbe", "livenessProbe"):
        assert node[kind]["grpc"]["service"] == "percolate.node.v1.Liveness"
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    named = {p["name"]: p["containerPort"] for p in node["ports"]}
    port = named["replication"]
    twin = _pod(HA_NAMESPACE, labels)
    other_tenant = _pod("tenant-b", {**labels, "percolate.dev/tenant": "tenant-b"})
    same_namespace = _pod(HA_NAMESPACE, {"app": "debug"})
    gateway = _pod("gateway-system", {"app": "envoy"})
    for peer, allowed in ((twin, True), (other_tenant, False), (same_namespace, False), (gateway, False)):
        assert policy_allows(policies, HA_NAMESPACE, labels, "Ingress", peer, port, named_ports=named) == allowed
        assert policy_allows(policies, HA_NAMESPACE, labels, "Egress", peer, port) == allowed
    headless = one(docs, "Service", "-headless")
    assert "replication" in [p["name"] for p in headless["spec"]["ports"]]
    assert headless["spec"]["publishNotReadyAddresses"] is True
    assert "replication" not in [p["name"] for p in one(docs, "Service", "-node")["spec"]["ports"]]


def test_ha_chart_refuses_colliding_ports_names_the_bootstrap_replica_and_probes_readiness_often():
    """ha.replicationPort equal to another of the node's ports fails the render; ordinal 0 is the
    only replica whose empty copy may start the tenant (enabling HA on an existing node keeps its
    data); the promoted standby turns Ready within 2 s; `create` on Leases only when asked."""
    from tests.test_helm import container, render_error, workload

    for port in (50061, 9090, 50062):  # node.port, node.metricsPort, node.healthPort
        error = render_error("node", node_values(TENANT, ha={"enabled": True, "replicationPort": port}))
        assert "ha.replicationPort" in error and "must differ" in error, error
    docs = ha_docs()
    node = container(docs, "node")
    env = {item["name"]: item.get("value") for item in node["env"]}
    assert env["PERCOLATE_NODE_HA_BOOTSTRAP_REPLICA"] == f"{workload(docs)['metadata']['name']}-0"
    assert node["readinessProbe"]["periodSeconds"] <= 2
    assert all("create" not in rule["verbs"] for rule in one(docs, "Role", "-lease")["rules"])
    created = render("node", node_values(TENANT, ha={"enabled": True, "leaseCreate": True}))
    assert {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]} in \
        one(created, "Role", "-lease")["rules"]


def test_rendered_ha_pair_elects_one_active_replicates_and_fails_over_on_kill_9(tmp_path, pki):
    """Two pods of the rendered StatefulSet, run with the rendered command, env, volumes and
    probes, against a Lease API double over HTTPS that enforces the rendered Role: one becomes
    active (Ready, holds the Lease), the other standby (alive, not Ready); writes acknowledged
    by the active are on the standby; kill -9 of the active's process promotes the standby
    with every acknowledged write, and the restarted pod rejoins as the standby."""
    import signal

    from tests.chart_harness import rbac_authorizer
    from tests.replication_fixtures import LeaseApiServer

    docs = ha_docs()
    cluster = Cluster(config_maps={"kube-root-ca.crt": {"ca.crt": pki.ca.cert.read_bytes()}})
    api = LeaseApiServer(tls=pki.server, authorize=rbac_authorizer(docs, HA_NAMESPACE, cluster))
    cluster.api_server = ("127.0.0.1", api.port)
    lease = one(docs, "Lease")["metadata"]["name"]
    api.apply(one(docs, "Lease"), HA_NAMESPACE)
    secrets = issue_certificates(docs, pki.root, tmp_path / "cert-manager")
    secrets[f"{TENANT}-kek"] = {"kek": os.urandom(32)}
    pods = [Pod(docs, "node", tmp_path / f"pod-{i}", secrets, cluster, ordinal=i, namespace=HA_NAMESPACE)
            for i in (0, 1)]
    for pod in pods:
        cluster.register_pod(docs, HA_NAMESPACE, pod)
    creds = pki.tenants[TENANT]

    def stub(pod):
        channel = grpc.secure_channel(f"127.0.0.1:{pod.ports[pod.container_port('grpc')]}",
                                      channel_credentials(creds.ca, creds.cert, creds.key),
                                      options=[("grpc.ssl_target_name_override", f"{TENANT}.{DOMAIN}")])
        return node_pb2_grpc.NodeServiceStub(channel)

    def ready(pod) -> bool:
        return pod.processes["node"].poll() is None and pod.probe("node", "readinessProbe")[0]

    def wait(what: str, condition, deadline_s: float = 180):
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            value = condition()
            if value:
                return value
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}:\n" + "\n".join(p.log("node") for p in pods))

    try:
        for pod in pods:
            pod.start("node")
        for pod in pods:
            pod.wait_for_probe("node", "startupProbe")
        active = wait("one replica to become active (Ready)", lambda: next((p for p in pods if ready(p)), None))
        standby = pods[1 - pods.index(active)]
        assert api.holder(HA_NAMESPACE, lease)[0] == active.name
        # the standby: alive (liveness passes, never restarted) but not Ready (no traffic)
        assert standby.probe("node", "livenessProbe")[0] and not ready(standby)
        acked = []
        for i in range(20):
            acked.append(stub(active).PutEntity(node_pb2.PutEntityRequest(type="note", name=f"w{i}"),
                                                timeout=60).id)
        # synchronous: every acknowledged write is already on the standby (reads are served there)
        for entity_id in acked:
            assert stub(standby).GetEntity(node_pb2.GetRequest(id=entity_id), timeout=30).id == entity_id
        with pytest.raises(grpc.RpcError) as refused:
            stub(standby).PutEntity(node_pb2.PutEntityRequest(type="note", name="no"), timeout=30)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        # kill -9 of the active's process: the standby takes the Lease and becomes Ready
        _, epoch = api.holder(HA_NAMESPACE, lease)
        os.killpg(active.processes["node"].pid, signal.SIGKILL)
        active.processes["node"].wait()
        wait("the standby to take over (Ready)", lambda: ready(standby))
        holder, new_epoch = api.holder(HA_NAMESPACE, lease)
        assert holder == standby.name and new_epoch > epoch
        for entity_id in acked:
            assert stub(standby).GetEntity(node_pb2.GetRequest(id=entity_id), timeout=30).id == entity_id
        after = stub(standby).PutEntity(node_pb2.PutEntityRequest(type="note", name="after"), timeout=60)
        # the kubelet restarts the killed container: it rejoins as the standby and catches up
        active.start("node")
        active.wait_for_probe("node", "startupProbe")
        wait("the old active to catch up", lambda: _entity(stub(active), after.id))
        assert not ready(active) and active.probe("node", "livenessProbe")[0]
        assert api.refused == [], "the node asked the API for more than the rendered Role grants"
    finally:
        for pod in pods:
            pod.stop()
        api.stop()


def _entity(stub, entity_id: str) -> bool:
    try:
        return stub.GetEntity(node_pb2.GetRequest(id=entity_id), timeout=10).id == entity_id
    except grpc.RpcError:
        return False
