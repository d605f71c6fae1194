"""Every column family of a tenant database, in one place.

The store opens all of them and seals every value in the data families; the REM
repository decides what the data families hold. ``keys`` holds the wrapped keyring and
nothing else, so leaving it out of a backup leaves the backup unreadable without it.
"""
from __future__ import annotations

KEYS = "keys"

DOCUMENTS = "documents"
RESOURCES = "resources"
DOCUMENT_RESOURCES = "document_resources"  # document key + ordinal -> resource id
URIS = "uris"                              # name_key(uri) -> current document id
ENTITIES = "entities"
NAMES = "names"                            # name_key(name) + entity key -> entity id
EDGES = "edges"                            # node key + direction + node key + relation key
MOMENTS = "moments"
MOMENT_TIMES = "moment_times"              # big-endian start + moment key -> id, type
DELETED = "deleted"                        # kind code + record key -> id, for purge
INDEXES = "indexes"                        # the search graph saved at shutdown (graph_snapshot.py)

LOG = "log"
"""The change log (``durability/changelog.py``): big-endian LSN -> sealed record of one batch."""
META = "meta"
"""The store's own bookkeeping, in plain bytes: ``DURABLE_LSN`` (see ``store.py``, "Writes")."""
DURABLE_LSN = b"durable-lsn"
"""Every logged batch up to this LSN (8 bytes, big-endian) is in the data families' SST files;
later ones may live only in the change log, and ``EncryptedStore.open`` replays them."""

DATA_FAMILIES = (DOCUMENTS, RESOURCES, DOCUMENT_RESOURCES, URIS, ENTITIES, NAMES, EDGES,
                 MOMENTS, MOMENT_TIMES, DELETED, INDEXES)
COLUMN_FAMILIES = (KEYS, *DATA_FAMILIES, LOG, META)
UNLOGGED_FAMILIES = frozenset({INDEXES})
"""Families left out of change-log records: the saved search graph is derived data that a
restored or standby node rebuilds (and patches) from the resources, and it is large."""
LOGGED_DATA_FAMILIES = tuple(cf for cf in DATA_FAMILIES if cf not in UNLOGGED_FAMILIES)
"""The data families whose values a split write puts in memtables only (``store.py``)."""
