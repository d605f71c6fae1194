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
- Who may take it (Patroni's rule): the holder records in the lease what it acknowledged
  (``acked_lsn``) and whether its acknowledgements waited for a synchronous standby (and
  which). Only that standby, or a copy on the holder's timeline (its epoch at least the
  lease's) at or past ``acked_lsn``, may take the lease. An empty copy never takes a lease
  that was held before (epoch above 0); a lease never held goes first to a copy with data,
  and to an empty copy only if it is the named bootstrap replica (or, none named, after the
  lease stayed free for two durations). A restarted holder waits for its old record to
  expire like anyone else (its old process may still count as active) and passes the same
  check: with a lost or older volume it does not take its own lease back.
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
    # What the holder acknowledged. Asynchronous: every acknowledged write has an LSN <= this
    # (published before the write is acknowledged). Synchronous: a lower bound, and every
    # acknowledged write is also on ``standby``.
    acked_lsn: int = 0
    synchronous: bool = False
    standby: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> "LeaseRecord":
        data = json.loads(text)
        return cls(str(data["holder"]), str(data["address"]), int(data["epoch"]), float(data["duration_s"]),
                   int(data.get("renewed_ns", 0)), int(data.get("acked_lsn", 0)), bool(data.get("synchronous", False)),
                   str(data.get("standby", "")))


@dataclass(frozen=True)
class CopyPosition:
    """Where a replica's own copy stands: the newest epoch it holds records of, and its last LSN."""
    epoch: int
    last_lsn: int


@dataclass(frozen=True)
class AckState:
    """What the holder publishes in the lease (see ``LeaseRecord``)."""
    acked_lsn: int = 0
    synchronous: bool = False
    standby: str = ""


def ineligible(record: LeaseRecord | None, holder: str, copy: CopyPosition, bootstrap: str = "") -> str | None:
    """Why this copy may not take the lease (None: it may). See the module's docstring."""
    if record is None or (not record.holder and record.epoch == 0):  # never held
        if copy.last_lsn == 0 and bootstrap and bootstrap != holder:
            return (f"this copy is empty and the lease was never held: {bootstrap} starts the tenant "
                    "(PERCOLATE_NODE_HA_BOOTSTRAP_REPLICA)")
        return None
    if copy.last_lsn == 0:
        return (f"this copy is empty and the lease was held before (epoch {record.epoch}): it never takes over "
                "from data that exists; it follows the active")
    if copy.last_lsn < record.acked_lsn:
        return (f"this copy ends at LSN {copy.last_lsn}, before LSN {record.acked_lsn} that "
                f"{record.holder or 'the last holder'} acknowledged")
    if record.synchronous and record.standby == holder:
        return None
    if copy.epoch < record.epoch:
        return (f"this copy's newest epoch is {copy.epoch}, older than the lease's {record.epoch}, and it was not "
                f"the synchronous standby ({record.standby or 'none'}): it may lack acknowledged writes")
    return None


class LeaseBackend(Protocol):
    """A record with compare-and-swap; ``version`` None means absent (create)."""

    def read(self) -> tuple[LeaseRecord | None, str | None]: ...

    def write(self, record: LeaseRecord, version: str | None) -> bool:
        """Store ``record`` if the stored version is still ``version``; False on a conflict."""

    def describe(self) -> str: ...


class LeaseElector:
    """One replica's view of the lease; every method is blocking (call it off the event loop)."""

    def __init__(self, backend: LeaseBackend, holder: str, address: str, duration_s: float = 10.0,
                 renew_deadline_s: float | None = None, renew_interval_s: float | None = None,
                 bootstrap: str = "") -> None:
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
        self._write_lock = threading.Lock()  # the role loop's renewals and the writers' publications
        self.bootstrap = bootstrap
        self.state = AckState()          # what this holder published last
        self.refused = ""                # why this copy last declined the lease ("" : it did not)
        self._free_since: float | None = None  # monotonic time the lease was first seen never held

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

    def try_acquire(self, floor_epoch: int = 0, copy: CopyPosition | None = None) -> bool:
        """Take the lease if it is free or expired and ``copy`` may (``ineligible``); True when held now.

        The new epoch is above the record's and above ``floor_epoch`` (the local copy's, so
        a lease service that lost its data can never hand out an epoch already used).
        ``copy`` None skips the data check (tests of the lease alone).
        """
        started = time.monotonic()
        record = self.observe()
        if record is not None and record.holder == self.holder and self.valid() and record.epoch == self.epoch:
            return True
        why = None
        if copy is not None:  # judged whether or not the lease is free now, so operators see it
            why = ineligible(record, self.holder, copy, self.bootstrap)
            never_held = record is None or (not record.holder and record.epoch == 0)
            if why is None and never_held and copy.last_lsn == 0 and not self.bootstrap:
                # nobody named to start the tenant: give a copy with data two durations to claim it first
                self._free_since = self._free_since or started
                if started - self._free_since < 2 * self.duration_s:
                    why = "this copy is empty: it waits two lease durations for a copy with data to start the tenant"
            if why is not None and why != self.refused:
                log.warning("replica %s may not take the lease (%s): %s", self.holder, self.backend.describe(), why)
            self.refused = why or ""
        if record is not None and record.holder and not self.expired():
            # another replica's, or our own from before a restart: its process may still be active
            return False
        if why is not None:
            return False
        epoch = max(record.epoch if record else 0, floor_epoch) + 1
        self.state = AckState(copy.last_lsn if copy else 0, False, "")
        mine = LeaseRecord(self.holder, self.address, epoch, self.duration_s, time.time_ns(), self.state.acked_lsn)
        with self._write_lock:
            if not self.backend.write(mine, self._version):
                return False
        with self._lock:
            self.epoch, self.current = epoch, mine
            self._valid_until = started + self.renew_deadline_s
            self.taken_from = record.holder if record is not None and record.holder != self.holder else ""
        log.info("replica %s took the lease (%s) with epoch %d; previous holder %s", self.holder,
                 self.backend.describe(), epoch, record.holder if record and record.holder else "none")
        return True

    def renew(self, state: AckState | None = None) -> bool:
        """Extend the lease, publishing ``state`` (default: the last one); False (and no
        longer valid) when another replica holds it now.

        A renewal that fails for a transient reason (the service unreachable, or our own
        concurrent write) returns False but leaves validity to run out at the deadline of
        the last success. The published ``acked_lsn`` never goes down.
        """
        with self._write_lock:
            started = time.monotonic()
            record = self.observe()
            if record is None or record.holder != self.holder or record.epoch != self.epoch:
                self._valid_until = 0.0
                return False
            state = state or self.state
            state = AckState(max(state.acked_lsn, self.state.acked_lsn), state.synchronous, state.standby)
            renewed = LeaseRecord(self.holder, self.address, self.epoch, self.duration_s, time.time_ns(),
                                  state.acked_lsn, state.synchronous, state.standby)
            if not self.backend.write(renewed, self._version):
                return False
            with self._lock:
                self.current, self.state = renewed, state
                self._valid_until = started + self.renew_deadline_s
            return True

    def release(self, state: AckState | None = None) -> None:
        """Hand the lease back (a planned handover or a clean stop): a peer that may (see
        ``ineligible``) takes it at once. ``state``: what was acknowledged, as in ``renew``."""
        self._valid_until = 0.0
        with self._write_lock:
            record = self.observe()
            if record is not None and record.holder == self.holder and record.epoch == self.epoch:
                state = state or self.state
                state = AckState(max(state.acked_lsn, self.state.acked_lsn), state.synchronous, state.standby)
                released = LeaseRecord("", "", self.epoch, self.duration_s, time.time_ns(), state.acked_lsn,
                                       state.synchronous, state.standby)
                if self.backend.write(released, self._version):
                    log.info("replica %s released the lease at epoch %d (acknowledged LSN %d, %s)", self.holder,
                             self.epoch, state.acked_lsn,
                             f"synchronous standby {state.standby}" if state.synchronous else "asynchronous")

    def step_down(self) -> None:
        """Stop counting as leader now (nothing is written)."""
        self._valid_until = 0.0


def open_backend(url: str, tenant_id: str, name: str = "", credentials_dir=None, etcd_tls=None,
                 etcd_user: str = "", etcd_password: str = ""):
    """``etcd://host:port[/prefix]`` (``etcd+https://`` with ``etcd_tls`` = (ca, cert, key) files,
    any of them None) or ``kubernetes[://namespace]`` (in-cluster credentials)."""
    from urllib.parse import urlparse

    parsed = urlparse(url)
    if parsed.scheme in ("etcd", "etcd+https"):
        from .etcd_lease import EtcdLease

        prefix = parsed.path.strip("/") or "percolate"
        ca, cert, key = (str(path) if path else None for path in (etcd_tls or (None, None, None)))
        return EtcdLease(parsed.hostname or "127.0.0.1", parsed.port or 2379, f"/{prefix}/tenants/{tenant_id}/lease",
                         protocol="https" if parsed.scheme == "etcd+https" else "http", ca=ca, cert=cert,
                         key_file=key, user=etcd_user, password=etcd_password)
    if parsed.scheme == "kubernetes" or url == "kubernetes":
        from .k8s_lease import KubernetesLease

        return KubernetesLease.in_cluster(parsed.netloc or None, name or f"percolate-node-{tenant_id}",
                                          credentials_dir)
    raise ValueError(f"unknown lease backend {url!r}: use etcd://host:port or kubernetes[://namespace]")
