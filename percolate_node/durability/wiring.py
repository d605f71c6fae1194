"""From a ``NodeConfig`` to object stores and a backup agent (the node, the CLI and tests share it)."""
from __future__ import annotations

import os
from pathlib import Path

from percolate_node.durability.agent import BackupAgent, BackupMetrics, BackupPolicy
from percolate_node.durability.errors import BackupError
from percolate_node.durability.objstore import ObjectStore, open_object_store

_CREDENTIAL_FILES = {"access_key_id": "access_key_id", "secret_access_key": "secret_access_key",
                     "session_token": "token", "endpoint": "endpoint"}


def store_options(region: str, credentials_dir: Path | None) -> dict[str, str]:
    """obstore options: the region, plus credentials read from a mounted Secret's files."""
    options = {"region": region} if region else {}
    if credentials_dir is not None:
        folder = Path(credentials_dir)
        if not folder.is_dir():
            raise BackupError(f"backup credentials folder {folder} does not exist "
                              "(PERCOLATE_NODE_BACKUP_CREDENTIALS_DIR)")
        for name, option in _CREDENTIAL_FILES.items():
            path = folder / name
            if path.is_file():
                options[option] = path.read_text().strip()
    return options


def object_stores(config) -> tuple[ObjectStore, tuple[ObjectStore, ...]]:
    """The home region's store and the redundancy copies (``BackupError`` when unconfigured)."""
    if not config.backup_url:
        raise BackupError("backups are not configured: set PERCOLATE_NODE_BACKUP_URL "
                          "(a folder, or s3://bucket/prefix in the tenant's home region)")
    home = open_object_store(config.backup_url, store_options(config.backup_region, config.backup_credentials_dir))
    replicas = ()
    if config.backup_replica_url:
        replicas = (open_object_store(config.backup_replica_url,
                                      store_options(config.backup_replica_region or config.backup_region,
                                                    config.backup_credentials_dir)),)
    return home, replicas


def policy(config) -> BackupPolicy:
    return BackupPolicy(ship_interval_s=config.backup_ship_interval_s,
                        snapshot_interval_s=config.backup_snapshot_interval_s,
                        keep_snapshots=config.backup_keep_snapshots,
                        log_retention_s=config.backup_log_retention_s)


def snapshot_scratch(data_dir: Path) -> Path:
    """Where checkpoints are cut before upload: on the data directory's own filesystem, so
    RocksDB hard-links the SSTs instead of copying the database (``/tmp`` in a pod is a small
    emptyDir). Beside the data directory where that is writable, else inside it (RocksDB
    leaves folders it does not know alone). Only this node's agent uses it."""
    data_dir = Path(data_dir).resolve()
    beside = data_dir.parent / f".{data_dir.name}.snapshots"
    try:
        if os.access(data_dir.parent, os.W_OK) and data_dir.parent.stat().st_dev == data_dir.stat().st_dev:
            return beside
    except OSError:
        pass
    return data_dir / ".snapshots"


def backup_agent(config, store, registry=None) -> BackupAgent | None:
    """A started agent for ``store`` when backups are configured, else None."""
    if not config.backup_url:
        return None
    home, replicas = object_stores(config)
    return BackupAgent(store, home, policy(config), BackupMetrics(registry), replicas=replicas,
                       work_dir=snapshot_scratch(config.data_dir)).start()
