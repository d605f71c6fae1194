"""The leader lease: who is the tenant's active replica, decided in a coordination service.

One record per tenant, read and written with compare-and-swap (etcd v3: a transaction on
the key's mod_revision; Kubernetes: a Lease replaced with its resourceVersion, 409 on a
conflict). The decisions live here, once, for both backends:

- The record names the holder, its replication address, and the **epoch** (the lease's
  generation, bumped by every change of holder): the fencing token written into every
  change-log record, segment and snapshot.
- Expiry is judged on the observer's own monotonic clock, as client-go's leader election
  does: a record whose version has not changed for ``duration_s`` since this replica first
  saw it is expired, whatever the wall clocks say.
- The holder renews every ``renew_interval_s``; it counts as leader only until
  ``renew_deadline_s`` after the start of its last successful renewal, which is shorter
  than ``duration_s``: it stops accepting writes before anyone else may take over.
- A holder that restarts finds its own name in the record and takes it back at once
  with a new epoch (its copy holds everything it ever acknowledged).
"""
from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import asdict, dataclass
from typing import Protocol

log = logging.getLogger("percolate.replication")


@dataclass(frozen=True)
class LeaseRecord:
    holder: str       # replica id; "" when released
    address: str      # the holder's replication address (host:port)
    epoch: int        # generation: the fencing token
    duration_s: float
    renewed_ns: int   # wall time of the last renewal (shown to operators; never decides)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> "LeaseRecord":
        data = json.loads(text)
        return cls(str(data["holder"]), str(data["address"]), int(data["epoch"]), float(data["duration_s"]),
                   int(data.get("renewed_ns", 0)))


class LeaseBackend(Protocol):
    """A record with compare-and-swap; ``version`` None means absent (create)."""

    def read(self) -> tuple[LeaseRecord | None, str | None]: ...

    def write(self, record: LeaseRecord, version: str | None) -> bool:
        """Store ``record`` if the stored version is still ``version``; False on a conflict."""

    def describe(self) -> str: ...


class LeaseElector:
    """One replica's view of the lease; every method is blocking (call it off the event loop)."""

    def __init__(self, backend: LeaseBackend, holder: str, address: str, duration_s: float = 10.0,
                 renew_deadline_s: float | None = None, renew_interval_s: float | None = None) -> None:
        if not holder:
            raise ValueError("a replica needs an id to hold the lease (PERCOLATE_NODE_REPLICA_ID)")
        self.backend = backend
        self.holder = holder
        self.address = address
        self.duration_s = duration_s
        self.renew_deadline_s = renew_deadline_s or duration_s * 2 / 3
        self.renew_interval_s = renew_interval_s or duration_s / 5
        if not self.renew_interval_s < self.renew_deadline_s < duration_s:
            raise ValueError("the lease needs renew interval < renew deadline < duration")
        self.epoch = 0
        self.taken_from = ""  # the holder whose expired lease we took last ("" : it was free or released)
        self.current: LeaseRecord | None = None
        self._version: str | None = None
        self._seen_version: str | None = None
        self._seen_at = 0.0
        self._valid_until = 0.0
        self._lock = threading.Lock()

    # -- what the node asks ---------------------------------------------------------------

    def valid(self) -> bool:
        """Whether this replica may accept and acknowledge writes now."""
        return time.monotonic() < self._valid_until

    def remaining_s(self) -> float:
        return max(0.0, self._valid_until - time.monotonic())

    def observe(self) -> LeaseRecord | None:
        """Read the record (and note when its version last changed, for expiry)."""
        record, version = self.backend.read()
        now = time.monotonic()
        with self._lock:
            if version != self._seen_version:
                self._seen_version, self._seen_at = version, now
            self.current = record
            self._version = version
        return record

    def expired(self) -> bool:
        """The record observed last is free: absent, released, or unchanged for ``duration_s``."""
        record = self.current
        if record is None or not record.holder:
            return True
        return time.monotonic() - self._seen_at >= max(record.duration_s, self.duration_s)

    def try_acquire(self, floor_epoch: int = 0) -> bool:
        """Take the lease if it is free, expired, or names this replica; True when held now.

        The new epoch is above the record's and above ``floor_epoch`` (the local copy's, so
        a lease service that lost its data can never hand out an epoch already used).
        """
        started = time.monotonic()
        record = self.observe()
        if record is not None and record.holder == self.holder and self.valid() and record.epoch == self.epoch:
            return True
        if record is not None and record.holder and record.holder != self.holder and not self.expired():
            return False
        epoch = max(record.epoch if record else 0, floor_epoch) + 1
        mine = LeaseRecord(self.holder, self.address, epoch, self.duration_s, time.time_ns())
        if not self.backend.write(mine, self._version):
            return False
        with self._lock:
            self.epoch, self.current = epoch, mine
            self._valid_until = started + self.renew_deadline_s
            self.taken_from = record.holder if record is not None and record.holder != self.holder else ""
        log.info("replica %s took the lease (%s) with epoch %d; previous holder %s", self.holder,
                 self.backend.describe(), epoch, record.holder if record and record.holder else "none")
        return True

    def renew(self) -> bool:
        """Extend the lease; False (and no longer valid) when another replica holds it now.

        A renewal that fails for a transient reason (the service unreachable) returns False
        but leaves validity to run out at the deadline of the last success.
        """
        started = time.monotonic()
        record = self.observe()
        if record is None or record.holder != self.holder or record.epoch != self.epoch:
            self._valid_until = 0.0
            return False
        renewed = LeaseRecord(self.holder, self.address, self.epoch, self.duration_s, time.time_ns())
        if not self.backend.write(renewed, self._version):
            return False
        with self._lock:
            self.current = renewed
            self._valid_until = started + self.renew_deadline_s
        return True

    def release(self) -> None:
        """Hand the lease back (a planned handover or a clean stop): the peer may take it at once."""
        self._valid_until = 0.0
        record = self.observe()
        if record is not None and record.holder == self.holder and record.epoch == self.epoch:
            released = LeaseRecord("", "", self.epoch, self.duration_s, time.time_ns())
            if self.backend.write(released, self._version):
                log.info("replica %s released the lease at epoch %d", self.holder, self.epoch)

    def step_down(self) -> None:
        """Stop counting as leader now (nothing is written)."""
        self._valid_until = 0.0


def open_backend(url: str, tenant_id: str, name: str = "", credentials_dir=None):
    """``etcd://host:port[/prefix]`` or ``kubernetes[://namespace]`` (in-cluster credentials)."""
    from urllib.parse import urlparse

    parsed = urlparse(url)
    if parsed.scheme in ("etcd", "etcd+https"):
        from .etcd_lease import EtcdLease

        prefix = parsed.path.strip("/") or "percolate"
        return EtcdLease(parsed.hostname or "127.0.0.1", parsed.port or 2379, f"/{prefix}/tenants/{tenant_id}/lease",
                         protocol="https" if parsed.scheme == "etcd+https" else "http")
    if parsed.scheme == "kubernetes" or url == "kubernetes":
        from .k8s_lease import KubernetesLease

        return KubernetesLease.in_cluster(parsed.netloc or None, name or f"percolate-node-{tenant_id}",
                                          credentials_dir)
    raise ValueError(f"unknown lease backend {url!r}: use etcd://host:port or kubernetes[://namespace]")
