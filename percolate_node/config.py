"""The tenant node's configuration: one typed object, read once from the environment."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class NodeConfig:
    tenant_id: str
    data_dir: Path
    kek_file: Path
    """The tenant's key-encryption key (32 bytes); never written to the database."""
    reading_url: str = "127.0.0.1:50051"
    reading_ca: Path | None = None
    reading_cert: Path | None = None
    """This tenant's client certificate for the reading service (URI SAN names the tenant)."""
    reading_key: Path | None = None
    host: str = "127.0.0.1"
    port: int = 0
    metrics_port: int = 0
    """-1 disables the Prometheus endpoint."""
    health_port: int = -1
    """A plaintext port serving only gRPC health (for the kubelet's gRPC probes, which
    cannot speak mutual TLS); -1 (default) serves none."""
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    """Callers present certificates from this CA (the tenant's)."""
    token_file: Path | None = None
    """Bearer token for local use (plaintext on loopback, or beside TLS); mode 0600, 16+ characters
    (``percolate keys token FILE`` makes one)."""
    key_files_group_readable: bool = False
    """Accept a KEK or token file that its group may read (a Kubernetes Secret mounted with
    ``fsGroup``, root-owned 0440); otherwise any group or other access is refused."""
    dek_seal_limit: int = 2**31
    """Values one data key seals before the store rotates to a new one (GCM's random-nonce
    bound is 2**32); small values are for tests."""
    reading_service_config: str = ""
    """gRPC service config (JSON) for the reading channel: round robin, health checks,
    retries on UNAVAILABLE, so a reading pod that drains is skipped (the Helm chart sets it)."""
    reading_timeout_s: float = 300.0
    drain_grace_s: float = 20.0
    backup_url: str = ""
    """Where snapshots and the change log go: a folder (``/var/backups/percolate`` or
    ``file:///...``) or ``s3://bucket/prefix`` (``gs://``, ``az://``) in the tenant's home
    region. Credentials and endpoint come from the usual ``AWS_*`` (or GCS/Azure) variables,
    or from files in ``backup_credentials_dir`` (a mounted Secret). Empty: no backups."""
    backup_region: str = ""
    """The home region of the tenant (the bucket's region for S3)."""
    backup_replica_url: str = ""
    """Optional redundancy copy in another region: the same ciphertext, object by object; it
    is only ever restored with the home region's KEK."""
    backup_replica_region: str = ""
    backup_credentials_dir: Path | None = None
    """Files ``access_key_id``, ``secret_access_key`` (and optionally ``session_token``,
    ``endpoint``) for the object store, e.g. a Kubernetes Secret mounted read-only."""
    backup_snapshot_interval_s: float = 6 * 3600.0
    backup_ship_interval_s: float = 1.0
    """How long a burst of writes is gathered before its log segment is uploaded: the recovery point."""
    backup_keep_snapshots: int = 7
    backup_log_retention_s: float = 7 * 86400.0
    graph_save_interval_s: float = 300.0
    """How often a changed search graph is saved while serving (it is also saved at a
    clean stop): after a crash, the next start patches in only what came since. 0 or
    less: only at a clean stop."""
    ha_lease_url: str = ""
    """The leader lease of a tenant's two replicas (percolate_node/replication): ``etcd://host:port``
    or ``kubernetes[://namespace]``. Empty: a single node, always active, no replication."""
    ha_lease_name: str = ""
    """The Kubernetes Lease's name (default ``percolate-node-<tenant>``)."""
    ha_lease_duration_s: float = 10.0
    """A standby takes over after the lease went unrenewed this long; the active stops
    accepting writes at two thirds of it."""
    ha_standby_timeout_s: float = 5.0
    """A standby silent this long no longer holds up writes: the active goes on alone
    (asynchronous) until it has caught up."""
    ha_strict: bool = False
    """Refuse writes (UNAVAILABLE) rather than accept them without a standby's confirmation."""
    ha_bootstrap_replica: str = ""
    """The one replica whose empty copy may take a lease that was never held (the chart: ordinal 0,
    which holds the data when HA is enabled on an existing node). Empty: an empty copy waits two
    lease durations for a copy with data to claim the lease first."""
    replica_id: str = ""
    """This replica's name in the lease (the pod name)."""
    replication_host: str = ""
    replication_port: int = 0
    replication_advertise: str = ""
    """host:port the peer dials for the replication stream (default: host and bound port)."""
    replica_cert: Path | None = None
    """Replica certificate (URI SAN spiffe://percolate/tenant/<id>/replica) and key, and the tenant CA."""
    replica_key: Path | None = None
    replica_ca: Path | None = None
    replication_server_name: str = ""
    """The name the peer's replica certificate is checked against (the chart: its headless
    Service's name); empty: the host of the address dialled."""
    ha_etcd_ca: Path | None = None
    """etcd over TLS (``etcd+https://``): the CA of etcd's server certificate, and this node's client
    certificate and key (etcd's ``--client-cert-auth``)."""
    ha_etcd_cert: Path | None = None
    ha_etcd_key: Path | None = None
    ha_etcd_user: str = ""
    """etcd authentication: user, and a file holding its password (a mounted Secret)."""
    ha_etcd_password_file: Path | None = None
    ha_kubernetes_dir: Path | None = None
    """Folder with the service-account ``token``, ``ca.crt`` and ``namespace`` for the Lease
    API (the chart's projected volume); default: the kubelet's automount folder."""

    def to_env(self) -> dict[str, str]:
        """The ``PERCOLATE_NODE_*`` variables that ``from_env`` reads back as this config
        (to start ``percolate serve`` as a separate process)."""
        names = {"tenant_id": "TENANT_ID", "data_dir": "DATA_DIR", "kek_file": "KEK_FILE",
                 "reading_url": "READING_URL", "reading_ca": "READING_CA", "reading_cert": "READING_CERT",
                 "reading_key": "READING_KEY", "host": "HOST", "port": "PORT", "metrics_port": "METRICS_PORT", "health_port": "HEALTH_PORT",
                 "tls_cert": "TLS_CERT", "tls_key": "TLS_KEY", "tls_client_ca": "TLS_CLIENT_CA",
                 "token_file": "TOKEN_FILE", "reading_timeout_s": "READING_TIMEOUT_S",
                 "drain_grace_s": "DRAIN_GRACE_S", "graph_save_interval_s": "GRAPH_SAVE_INTERVAL_S",
                 "key_files_group_readable": "KEY_FILES_GROUP_READABLE", "dek_seal_limit": "DEK_SEAL_LIMIT",
                 **{name: name.upper() for name in BACKUP_FIELDS + HA_FIELDS}}
        env = {f"PERCOLATE_NODE_{name}": str(getattr(self, field)) for field, name in names.items()
               if getattr(self, field) not in (None, "")}
        if self.reading_service_config:
            env["PERCOLATE_READING_SERVICE_CONFIG"] = self.reading_service_config
        return env

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "NodeConfig":
        env = os.environ if env is None else env

        def get(name: str, default=None, kind=str):
            raw = env.get(f"PERCOLATE_NODE_{name}")
            return default if raw in (None, "") else kind(raw)

        tenant = get("TENANT_ID") or env.get("TENANT_ID", "")
        data_dir = Path(get("DATA_DIR", "data"))
        tls_cert, tls_key = get("TLS_CERT", None, Path), get("TLS_KEY", None, Path)
        tls_ca = get("TLS_CLIENT_CA", None, Path) or get("TLS_CA", None, Path)
        return cls(
            tenant_id=tenant, data_dir=data_dir, kek_file=get("KEK_FILE", data_dir.parent / "kek.bin", Path),
            reading_url=get("READING_URL") or env.get("PERCOLATE_READING_URL", cls.reading_url),
            # in a pod one tenant certificate serves both ways: callers and the reading service
            reading_ca=get("READING_CA", tls_ca, Path), reading_cert=get("READING_CERT", tls_cert, Path),
            reading_key=get("READING_KEY", tls_key, Path), host=get("HOST", cls.host),
            port=get("PORT", cls.port, int), metrics_port=get("METRICS_PORT", cls.metrics_port, int),
            health_port=get("HEALTH_PORT", cls.health_port, int),
            tls_cert=tls_cert, tls_key=tls_key, tls_client_ca=tls_ca,
            token_file=get("TOKEN_FILE", None, Path),
            reading_service_config=env.get("PERCOLATE_READING_SERVICE_CONFIG", ""),
            reading_timeout_s=get("READING_TIMEOUT_S", cls.reading_timeout_s, float),
            drain_grace_s=get("DRAIN_GRACE_S", cls.drain_grace_s, float),
            graph_save_interval_s=get("GRAPH_SAVE_INTERVAL_S", cls.graph_save_interval_s, float),
            key_files_group_readable=get("KEY_FILES_GROUP_READABLE", False, _flag),
            dek_seal_limit=get("DEK_SEAL_LIMIT", cls.dek_seal_limit, int),
            backup_url=get("BACKUP_URL", ""), backup_region=get("BACKUP_REGION", ""),
            backup_replica_url=get("BACKUP_REPLICA_URL", ""),
            backup_replica_region=get("BACKUP_REPLICA_REGION", ""),
            backup_credentials_dir=get("BACKUP_CREDENTIALS_DIR", None, Path),
            backup_snapshot_interval_s=get("BACKUP_SNAPSHOT_INTERVAL_S", cls.backup_snapshot_interval_s, float),
            backup_ship_interval_s=get("BACKUP_SHIP_INTERVAL_S", cls.backup_ship_interval_s, float),
            backup_keep_snapshots=get("BACKUP_KEEP_SNAPSHOTS", cls.backup_keep_snapshots, int),
            backup_log_retention_s=get("BACKUP_LOG_RETENTION_S", cls.backup_log_retention_s, float),
            ha_lease_url=get("HA_LEASE_URL", ""), ha_lease_name=get("HA_LEASE_NAME", ""),
            ha_lease_duration_s=get("HA_LEASE_DURATION_S", cls.ha_lease_duration_s, float),
            ha_standby_timeout_s=get("HA_STANDBY_TIMEOUT_S", cls.ha_standby_timeout_s, float),
            ha_strict=get("HA_STRICT", False, _flag), ha_bootstrap_replica=get("HA_BOOTSTRAP_REPLICA", ""),
            replica_id=get("REPLICA_ID", env.get("HOSTNAME", "")),
            replication_host=get("REPLICATION_HOST", ""), replication_port=get("REPLICATION_PORT", 0, int),
            replication_advertise=get("REPLICATION_ADVERTISE", ""),
            replica_cert=get("REPLICA_CERT", None, Path), replica_key=get("REPLICA_KEY", None, Path),
            replica_ca=get("REPLICA_CA", tls_ca, Path),
            replication_server_name=get("REPLICATION_SERVER_NAME", ""),
            ha_kubernetes_dir=get("HA_KUBERNETES_DIR", None, Path),
            ha_etcd_ca=get("HA_ETCD_CA", None, Path), ha_etcd_cert=get("HA_ETCD_CERT", None, Path),
            ha_etcd_key=get("HA_ETCD_KEY", None, Path), ha_etcd_user=get("HA_ETCD_USER", ""),
            ha_etcd_password_file=get("HA_ETCD_PASSWORD_FILE", None, Path),
        )


MAX_REQUEST_BYTES = 80 << 20
"""The largest request the node's API accepts (and reply it sends); replication sizes its messages from it."""

BACKUP_FIELDS = ("backup_url", "backup_region", "backup_replica_url", "backup_replica_region",
                 "backup_credentials_dir", "backup_snapshot_interval_s", "backup_ship_interval_s",
                 "backup_keep_snapshots", "backup_log_retention_s")

HA_FIELDS = ("ha_lease_url", "ha_lease_name", "ha_lease_duration_s", "ha_standby_timeout_s", "ha_strict",
             "ha_bootstrap_replica",
             "replica_id", "replication_host", "replication_port", "replication_advertise", "replica_cert",
             "replica_key", "replica_ca", "replication_server_name", "ha_kubernetes_dir", "ha_etcd_ca",
             "ha_etcd_cert", "ha_etcd_key", "ha_etcd_user", "ha_etcd_password_file")


def _flag(raw: str) -> bool:
    return raw.strip().lower() in ("1", "true", "yes", "on")
