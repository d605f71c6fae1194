"""Durability: the node's change log shipped to object storage, snapshots, point-in-time restore.

- ``objstore``: one interface over a local folder, S3-compatible storage, GCS and Azure
  (obstore), with create-only writes.
- ``changelog``: the log records the store writes with every batch (synced before its values).
- ``segments``: log records packed into create-only objects.
- ``snapshots``: RocksDB checkpoints uploaded file by file, unchanged SSTs shared.
- ``agent``: the background thread that ships the log, takes scheduled snapshots and
  applies retention, never blocking writes.
- ``restore``: a data directory rebuilt for a point in time, verified, all or nothing.
"""
