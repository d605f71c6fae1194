"""The lease record as a Kubernetes ``coordination.k8s.io/v1`` Lease (the official client).

``spec.holderIdentity`` names the holder, ``spec.leaseTransitions`` is the epoch,
``spec.leaseDurationSeconds`` the duration and ``spec.renewTime`` the last renewal; the
holder's replication address and what it acknowledged (LSN, synchronous standby) are
annotations. Compare-and-swap is a replace carrying the
``resourceVersion`` that was read: the API server answers 409 Conflict when another
replica wrote in between (create: 409 when it exists). The replace carries over the
metadata that was read (labels, other annotations, owner references): the chart's Lease keeps
Helm's ownership and ``helm.sh/resource-policy: keep``.
"""
from __future__ import annotations

import datetime as dt

from .errors import LeaseUnavailableError
from .lease import LeaseRecord

ADDRESS_ANNOTATION = "percolate.dev/replication-address"
ACKED_ANNOTATION = "percolate.dev/acked-lsn"
SYNCHRONOUS_ANNOTATION = "percolate.dev/synchronous"
STANDBY_ANNOTATION = "percolate.dev/synchronous-standby"
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


class KubernetesLease:
    def __init__(self, api_client, namespace: str, name: str) -> None:
        from kubernetes import client

        self.api = client.CoordinationV1Api(api_client)
        self.namespace = namespace
        self.name = name
        self._read = None  # the Lease as read last: its metadata goes into the next replace

    @classmethod
    def in_cluster(cls, namespace: str | None, name: str, credentials_dir: str | None = None) -> "KubernetesLease":
        """The pod's service account: ``token``, ``ca.crt`` and ``namespace`` in ``credentials_dir``
        (default the kubelet's automount folder), the API server from KUBERNETES_SERVICE_HOST/PORT."""
        from pathlib import Path

        from kubernetes import client
        from kubernetes.config.incluster_config import InClusterConfigLoader

        folder = Path(credentials_dir or SERVICE_ACCOUNT_DIR)
        configuration = client.Configuration()
        InClusterConfigLoader(token_filename=str(folder / "token"), cert_filename=str(folder / "ca.crt"),
                              try_refresh_token=True).load_and_set(configuration)
        if namespace is None:
            namespace = (folder / "namespace").read_text().strip()
        return cls(client.ApiClient(configuration), namespace, name)

    def describe(self) -> str:
        return f"Lease {self.namespace}/{self.name}"

    def read(self) -> tuple[LeaseRecord | None, str | None]:
        from kubernetes.client.rest import ApiException

        try:
            lease = self.api.read_namespaced_lease(self.name, self.namespace, _request_timeout=2)
        except ApiException as error:
            if error.status == 404:
                return None, None
            raise LeaseUnavailableError(f"{self.describe()}: {error.status} {error.reason}") from None
        except Exception as error:
            raise LeaseUnavailableError(f"{self.describe()}: {error}") from None
        self._read = lease
        spec = lease.spec
        annotations = lease.metadata.annotations or {}
        renewed = spec.renew_time
        return (LeaseRecord(spec.holder_identity or "", annotations.get(ADDRESS_ANNOTATION, ""),
                            int(spec.lease_transitions or 0), float(spec.lease_duration_seconds or 0),
                            int(renewed.timestamp() * 1e9) if renewed else 0,
                            int(annotations.get(ACKED_ANNOTATION) or 0),
                            annotations.get(SYNCHRONOUS_ANNOTATION, "") == "true",
                            annotations.get(STANDBY_ANNOTATION, "")),
                lease.metadata.resource_version)

    def write(self, record: LeaseRecord, version: str | None) -> bool:
        from kubernetes import client
        from kubernetes.client.rest import ApiException

        now = dt.datetime.fromtimestamp(record.renewed_ns / 1e9, dt.timezone.utc)
        read = None
        if version is not None:
            read = self._read
            if read is None or read.metadata.resource_version != version:
                self.read()  # the metadata to carry over; a newer version now is a conflict
                read = self._read
                if read is None or read.metadata.resource_version != version:
                    return False
        metadata = client.V1ObjectMeta(name=self.name, namespace=self.namespace, resource_version=version,
                                       labels=read.metadata.labels if read else None,
                                       owner_references=read.metadata.owner_references if read else None,
                                       annotations=dict((read.metadata.annotations or {}) if read else {}))
        metadata.annotations.update({ADDRESS_ANNOTATION: record.address, ACKED_ANNOTATION: str(record.acked_lsn),
                                     SYNCHRONOUS_ANNOTATION: str(record.synchronous).lower(),
                                     STANDBY_ANNOTATION: record.standby})
        body = client.V1Lease(
            metadata=metadata,
            spec=client.V1LeaseSpec(holder_identity=record.holder or None, lease_transitions=record.epoch,
                                    lease_duration_seconds=max(1, round(record.duration_s)),
                                    renew_time=now, acquire_time=now))
        try:
            if version is None:
                self.api.create_namespaced_lease(self.namespace, body, _request_timeout=2)
            else:
                self.api.replace_namespaced_lease(self.name, self.namespace, body, _request_timeout=2)
            return True
        except ApiException as error:
            if error.status == 409:
                return False
            raise LeaseUnavailableError(f"{self.describe()}: {error.status} {error.reason}") from None
        except Exception as error:
            raise LeaseUnavailableError(f"{self.describe()}: {error}") from None
