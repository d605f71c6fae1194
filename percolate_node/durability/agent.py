"""The backup agent: a background thread that ships the change log, takes scheduled
snapshots and applies retention, without ever blocking the node's writes.

- Log shipping: after a write it waits ``ship_interval_s`` (so a burst becomes one
  segment), then uploads every unshipped record as one segment; the recovery point is
  about that interval plus one upload.
- Snapshots: at start when none exists, every ``snapshot_interval_s``, and on request.
- Retention: the newest ``keep_snapshots`` snapshots; log segments older than the oldest
  kept snapshot and than ``log_retention_s``; SSTs still referenced by a kept manifest stay.
- Local log: trimmed only past what the object store holds (and what ``hold_lsn`` keeps
  for a standby) and past ``local_log_retention_s``.
- An unreachable object store grows ``percolate_backup_log_lag_seconds`` and is retried
  with exponential backoff; writes go on. A newer epoch in the object store (another
  primary, or a restored timeline) stops the agent: it never writes over the fence.
"""
from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from percolate_node.durability import segments
from percolate_node.durability.epoch import read_timeline
from percolate_node.durability.errors import BackupError, FencedError, ObjectExistsError, ObjectMissingError
from percolate_node.durability.logchain import chain, read_markers, timeline_key, timeline_marker
from percolate_node.durability.objstore import ObjectStore
from percolate_node.durability.segments import tenant_prefix
from percolate_node.durability.snapshots import SnapshotReport, list_snapshots, snapshots_prefix, take_snapshot

log = logging.getLogger("percolate.backup")
FENCE_CHECK_S = 30.0
"""How often a shipping agent looks for a newer epoch's timeline marker (besides at start and
before each snapshot)."""


@dataclass(frozen=True)
class BackupPolicy:
    ship_interval_s: float = 1.0
    snapshot_interval_s: float = 6 * 3600.0
    keep_snapshots: int = 7
    log_retention_s: float = 7 * 86400.0
    local_log_retention_s: float = 600.0
    max_segment_records: int = 5000
    max_backoff_s: float = 30.0


class BackupMetrics:
    """The Prometheus series of backups (registered once per process, labelled by tenant)."""

    def __init__(self, registry=None) -> None:
        from prometheus_client import REGISTRY, Counter, Gauge

        registry = registry or REGISTRY
        self.last_success = _metric(registry, Gauge, "percolate_backup_last_success_timestamp_seconds",
                                    "Unix time of the last finished snapshot upload", ["tenant_id"])
        self.log_lag = _metric(registry, Gauge, "percolate_backup_log_lag_seconds",
                               "Age of the oldest committed change-log record not yet in object storage",
                               ["tenant_id"])
        self.shipped_lsn = _metric(registry, Gauge, "percolate_backup_shipped_lsn",
                                   "Newest log sequence number in object storage", ["tenant_id"])
        self.uploaded = _metric(registry, Counter, "percolate_backup_uploaded_bytes",
                                "Bytes uploaded to object storage (snapshots and log segments)", ["tenant_id", "kind"])
        self.failures = _metric(registry, Counter, "percolate_backup_failures",
                                "Failed backup attempts (retried with backoff)", ["tenant_id", "kind"])
        self.fenced = _metric(registry, Gauge, "percolate_backup_fenced",
                              "1 while a newer epoch in object storage stops this node's backups "
                              "(another primary or a restored timeline owns the tenant)", ["tenant_id"])
        self.replica_pending = _metric(registry, Gauge, "percolate_backup_replica_pending_objects",
                                       "Objects the redundancy copy still lacks", ["tenant_id"])


def _metric(registry, kind, name, doc, labels):
    existing = registry._names_to_collectors.get(name) or registry._names_to_collectors.get(name + "_total")
    return existing or kind(name, doc, labels, registry=registry)


class BackupAgent:
    """Ships ``store``'s log and snapshots to ``objects``; ``start()``/``stop()`` or a ``with`` block."""

    def __init__(self, store, objects: ObjectStore, policy: BackupPolicy = BackupPolicy(),
                 metrics: BackupMetrics | None = None, work_dir: Path | None = None,
                 replicas: tuple[ObjectStore, ...] = ()) -> None:
        self.store = store
        self.objects = objects
        self.replicas = replicas
        self.policy = policy
        self.metrics = metrics or BackupMetrics()
        self.work_dir = work_dir
        self.tenant = store.tenant_id
        self.shipped_lsn = 0
        self.hold_lsn: int | None = None
        """A standby's confirmed LSN: the local log is kept past it (None: no standby)."""
        self.fenced: str | None = None
        self.last_snapshot: SnapshotReport | None = None
        self.last_error: str | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._snapshot_requests: deque[threading.Event] = deque()
        self._results: dict[int, SnapshotReport | BaseException] = {}
        self._commit_times: deque[tuple[int, float]] = deque()  # (lsn, monotonic time committed), unshipped
        self._shipped_at: deque[tuple[int, float]] = deque()   # (lsn, monotonic time shipped)
        self._trimmable = 0  # shipped and past retention; the store trims only what is flushed, so kept
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._next_snapshot = 0.0
        self._stop_deadline = 0.0
        self._ready = threading.Event()
        self._replica_pending: dict[ObjectStore, set[str]] = {replica: set() for replica in replicas}
        self._fence_checked = 0.0
        for kind in ("ship", "internal", "replica", "fenced"):  # every series exists from the start
            self.metrics.failures.labels(self.tenant, kind).inc(0)
        self.metrics.fenced.labels(self.tenant).set(0)
        self.metrics.log_lag.labels(self.tenant).set(0)

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> "BackupAgent":
        if self._thread is not None:
            return self  # already running
        if self.work_dir is not None:  # this node's own scratch: a killed snapshot may have left a checkpoint
            shutil.rmtree(self.work_dir, ignore_errors=True)
            Path(self.work_dir).mkdir(parents=True, exist_ok=True)
        self.store.add_log_listener(self._on_commit)
        self._thread = threading.Thread(target=self._run, name=f"backup-{self.tenant}", daemon=True)
        self._thread.start()
        return self

    def stop(self, flush_timeout_s: float = 10.0) -> None:
        """Ship what is pending (bounded by ``flush_timeout_s``), then end the thread."""
        if self._thread is None:
            return
        self._stop_deadline = time.monotonic() + flush_timeout_s
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=flush_timeout_s + 30)
        self._thread = None

    def __enter__(self) -> "BackupAgent":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def request_snapshot(self, timeout_s: float = 600.0) -> SnapshotReport:
        """Take a snapshot now (on the agent's thread) and wait for it."""
        done = threading.Event()
        with self._lock:
            self._snapshot_requests.append(done)
        self._wake.set()
        if not done.wait(timeout_s):
            raise BackupError(f"the snapshot did not finish within {timeout_s:.0f} s")
        result = self._results.pop(id(done))
        if isinstance(result, BaseException):
            raise result
        return result

    def wait_shipped(self, lsn: int, timeout_s: float) -> bool:
        """Block until the object store holds every record through ``lsn`` (tests, drills)."""
        deadline = time.monotonic() + timeout_s
        while self.shipped_lsn < lsn and time.monotonic() < deadline:
            self._wake.set()
            time.sleep(0.02)
        return self.shipped_lsn >= lsn

    def wait_ready(self, timeout_s: float) -> bool:
        return self._ready.wait(timeout_s)

    # -- the thread -----------------------------------------------------------------------

    def _on_commit(self, lsn: int) -> None:
        self._commit_times.append((lsn, time.monotonic()))
        self._wake.set()

    def _run(self) -> None:
        _lower_priority()
        backoff = 0.0
        discovered = False
        while True:
            try:
                if not discovered:
                    self._discover()
                    discovered = True
                    self._ready.set()
                self._serve_requests()
                self._ship()
                if time.monotonic() >= self._next_snapshot and not self._stop.is_set():
                    self._snapshot()
                    self._retention()
                self._trim_local()
                backoff, self.last_error = 0.0, None
            except FencedError as error:
                self._fenced(error)
                return
            except Exception as error:  # unreachable store, transient failure, or a bug: never silent
                self.last_error = f"{type(error).__name__}: {error}"
                kind = "ship" if isinstance(error, (BackupError, OSError)) else "internal"
                self.metrics.failures.labels(self.tenant, kind).inc()
                backoff = min(max(backoff * 2, 0.5), self.policy.max_backoff_s)
                (log.warning if kind == "ship" else log.exception)(
                    "backup for %s failed (%s); retrying in %.1f s; writes go on", self.tenant, error, backoff)
                self._fail_requests(error)
            self._update_lag()
            if self._stop.is_set():
                if backoff == 0.0 or time.monotonic() > self._stop_deadline:
                    return
                time.sleep(min(backoff, 0.5))
                continue
            if backoff:
                self._stop.wait(backoff)
                continue
            self._wake.wait(timeout=min(self.policy.ship_interval_s * 5, self._until_snapshot()))
            self._wake.clear()
            if not self._stop.is_set() and not self._snapshot_requests:
                self._stop.wait(self.policy.ship_interval_s)  # gather a burst into one segment

    def _fenced(self, error: FencedError) -> None:
        """Stop writing for good, but keep saying so: the metrics show a fenced node whose
        writes are no longer backed up, and its lag keeps growing."""
        self.fenced = str(error)
        self.last_error = str(error)
        log.error("backup agent for %s stopped writing: %s", self.tenant, error)
        self.metrics.fenced.labels(self.tenant).set(1)
        self.metrics.failures.labels(self.tenant, "fenced").inc()
        self._fail_requests(error)
        self._ready.set()
        while not self._stop.is_set():
            self._update_lag()
            self._fail_requests(error)
            self._stop.wait(self.policy.ship_interval_s)

    def _until_snapshot(self) -> float:
        return max(0.05, self._next_snapshot - time.monotonic())

    def _discover(self) -> None:
        """Where the object store stands: what is shipped, whether a newer epoch fenced us."""
        log_chain = chain(self.objects, self.tenant)
        snapshots = list_snapshots(self.objects, self.tenant)
        newest_epoch = max([log_chain.newest_epoch] + [s.epoch for s in snapshots] + [0])
        if newest_epoch > self.store.epoch:
            raise FencedError(f"the object store holds epoch {newest_epoch}, newer than this node's "
                              f"{self.store.epoch}: another node or a restored timeline owns tenant "
                              f"{self.tenant}; this node must not write there")
        mine = [s for s in log_chain.segments if s.last <= self.store.last_lsn]
        self.shipped_lsn = max([s.last for s in mine] + [0])
        _, start = read_timeline(self.store.path)
        if start is not None:  # a restored timeline ships its own records from where it forked
            self.shipped_lsn = min(self.shipped_lsn, start - 1)
        if self.store.epoch not in read_markers(self.objects, self.tenant):
            # publish where this epoch starts: it fences the older epochs' later records for
            # good, even after retention removes their segments
            first = start if start is not None else self.shipped_lsn + 1
            self._put(timeline_key(self.tenant, self.store.epoch), timeline_marker(self.store.epoch, first),
                      "timeline")
        for replica in self.replicas:  # what the redundancy copy lacks (it was away, or new)
            have = set(replica.list(tenant_prefix(self.tenant))) if self._reachable(replica) else set()
            self._replica_pending[replica] = set(self.objects.list(tenant_prefix(self.tenant))) - have
        if snapshots:
            age = time.time() - snapshots[-1].commit_time_ns / 1e9
            self._next_snapshot = time.monotonic() + max(0.0, self.policy.snapshot_interval_s - age)
        else:
            self._next_snapshot = 0.0  # the first snapshot carries the keyring: take it now
        if self.store.first_lsn() > self.shipped_lsn + 1 and not snapshots:
            log.warning("tenant %s: the local log starts at %d but the object store has nothing: "
                        "the first snapshot covers it", self.tenant, self.store.first_lsn())

    def _serve_requests(self) -> None:
        while True:
            with self._lock:
                if not self._snapshot_requests:
                    return
                done = self._snapshot_requests.popleft()
            try:
                self._ship()
                self._results[id(done)] = self._snapshot()
                self._retention()
            except BaseException as error:  # handed to the waiting caller
                self._results[id(done)] = error
                if isinstance(error, (FencedError,)):
                    done.set()
                    raise
            done.set()

    def _fail_requests(self, error: BaseException) -> None:
        with self._lock:
            while self._snapshot_requests:
                done = self._snapshot_requests.popleft()
                self._results[id(done)] = error
                done.set()

    def _ship(self) -> None:
        if time.monotonic() - self._fence_checked > FENCE_CHECK_S:
            self._check_fence()
        self._sync_replicas()
        while True:
            pending = self.store.log_records(self.shipped_lsn, self.policy.max_segment_records)
            if not pending:
                return
            if pending[0][0] != self.shipped_lsn + 1 and self.shipped_lsn:
                # the local log was trimmed past what was shipped: only a snapshot can cover it now
                log.warning("tenant %s: log records %d-%d are gone locally; taking a snapshot to cover them",
                            self.tenant, self.shipped_lsn + 1, pending[0][0] - 1)
                self._snapshot()
            key = segments.segment_key(self.tenant, self.store.epoch, pending[0][0], pending[-1][0])
            data = segments.pack(self.tenant, self.store.epoch, pending)
            self._put(key, data, "log")
            self.shipped_lsn = pending[-1][0]
            now = time.monotonic()
            self._shipped_at.append((self.shipped_lsn, now))
            while self._commit_times and self._commit_times[0][0] <= self.shipped_lsn:
                self._commit_times.popleft()
            self.metrics.shipped_lsn.labels(self.tenant).set(self.shipped_lsn)

    def _put(self, key: str, data: bytes, kind: str) -> None:
        """Create ``key`` in the home region (must succeed), then in the redundancy copies (best
        effort: a copy region that is away never holds up the home region's backups)."""
        try:
            self.objects.put_new(key, data)
        except ObjectExistsError:
            if self.objects.get(key) != data:  # not our own earlier attempt: someone else wrote here
                raise FencedError(f"{self.objects.url}/{key} exists with other content: another writer "
                                  f"holds tenant {self.tenant}'s log at epoch {self.store.epoch}") from None
        self.metrics.uploaded.labels(self.tenant, kind).inc(len(data))
        for replica in self.replicas:
            self._replica_pending[replica].add(key)
        self._sync_replicas()

    def _sync_replicas(self) -> None:
        for replica, pending in self._replica_pending.items():
            for key in sorted(pending):
                try:
                    self._copy_to(replica, key)
                except BackupError as error:
                    self.metrics.failures.labels(self.tenant, "replica").inc()
                    log.warning("redundancy copy %s of tenant %s is behind (%d objects): %s", replica.url,
                                self.tenant, len(pending), error)
                    break
                pending.discard(key)
        self.metrics.replica_pending.labels(self.tenant).set(sum(map(len, self._replica_pending.values())))

    @staticmethod
    def _reachable(store: ObjectStore) -> bool:
        try:
            store.list("tenants/.probe/")
            return True
        except BackupError:
            return False

    def _snapshot(self) -> SnapshotReport:
        self._check_fence()
        report = take_snapshot(self.store, self.objects, self.work_dir, say=log.info)
        for replica in self.replicas:  # the redundancy copy: the same ciphertext, object by object
            self._replica_pending[replica].update(entry["object"] for entry in report.info.files)
            self._replica_pending[replica].add(f"{snapshots_prefix(self.tenant)}{report.info.id}/manifest.json")
        self._sync_replicas()
        self.last_snapshot = report
        self.metrics.uploaded.labels(self.tenant, "snapshot").inc(report.uploaded_bytes)
        self.metrics.last_success.labels(self.tenant).set(time.time())
        self._next_snapshot = time.monotonic() + self.policy.snapshot_interval_s
        return report

    def _copy_to(self, replica: ObjectStore, key: str) -> None:
        try:
            data = self.objects.get(key)
        except ObjectMissingError:
            return  # removed by retention meanwhile
        try:
            replica.put_new(key, data)
        except ObjectExistsError:
            pass

    def _check_fence(self) -> None:
        """A newer epoch's timeline marker (cheap to list) means this node no longer owns the tenant."""
        self._fence_checked = time.monotonic()
        newest = max(read_markers(self.objects, self.tenant), default=0)
        if newest > self.store.epoch:
            raise FencedError(f"epoch {newest} in the object store is newer than this node's {self.store.epoch}")

    def _retention(self) -> None:
        """Keep what a restore to any moment of the last ``log_retention_s`` needs (the newest
        snapshot at or before the window's start, every later one, the log after it) and at
        least the newest ``keep_snapshots``; remove the rest, older timelines' leftovers too
        once they are out of the window. Shared SSTs stay while a kept manifest names them."""
        log_chain = chain(self.objects, self.tenant)
        snapshots = list_snapshots(self.objects, self.tenant)
        live = [s for s in snapshots if not log_chain.is_fenced(s.epoch, s.lsn)]
        if not live:
            return
        cutoff_ns = time.time_ns() - int(self.policy.log_retention_s * 1e9)
        before_window = [s for s in live if s.commit_time_ns <= cutoff_ns]
        keep = {s.id for s in live if s.commit_time_ns > cutoff_ns}
        if before_window:
            keep.add(before_window[-1].id)  # the base a restore to the window's start needs
        keep.update(s.id for s in live[-max(self.policy.keep_snapshots, 1):])
        kept = [s for s in live if s.id in keep]
        drop = [s for s in snapshots if s.id not in keep and (s in live or s.commit_time_ns < cutoff_ns)]
        referenced = {f["object"] for s in kept for f in s.files}
        for info in drop:
            folder = f"{snapshots_prefix(self.tenant)}{info.id}/"
            self._delete(folder + "manifest.json")  # first: the snapshot stops being one
            for key in self.objects.list(folder):
                if key not in referenced:
                    self._delete(key)
            log.info("retention: removed snapshot %s of tenant %s", info.id, self.tenant)
        # the log before the base goes; while every snapshot is inside the window, a restore to
        # its start may need the log from LSN 1 (replayed over an empty database), so all stays
        oldest_kept = kept[0].lsn if before_window else 0
        for name in log_chain.segments:
            if name.last <= oldest_kept:
                self._delete(name.key)
        for name in log_chain.fenced_segments:  # an abandoned timeline's log, once out of the window
            if name.last <= oldest_kept or kept[0].commit_time_ns < cutoff_ns:
                self._delete(name.key)

    def _delete(self, key: str) -> None:
        self.objects.delete(key)
        for replica, pending in self._replica_pending.items():  # the copy follows, best effort
            pending.discard(key)
            try:
                replica.delete(key)
            except BackupError:
                pass

    def _trim_local(self) -> None:
        limit = self.shipped_lsn if self.hold_lsn is None else min(self.shipped_lsn, self.hold_lsn)
        horizon = time.monotonic() - self.policy.local_log_retention_s
        while self._shipped_at and self._shipped_at[0][1] <= horizon:
            self._trimmable = max(self._trimmable, self._shipped_at.popleft()[0])
        through = min(self._trimmable, limit)
        if through:  # asked again each round: a trim stops at what is flushed (and costs a seek when done)
            self.store.trim_log(through)

    def _update_lag(self) -> None:
        lag = time.monotonic() - self._commit_times[0][1] if self._commit_times else 0.0
        self.metrics.log_lag.labels(self.tenant).set(lag)


def _lower_priority(niceness: int = 10) -> None:
    """Run this thread (only it: Linux schedules threads by their own nice value) behind the
    request handlers, so hashing and uploading a snapshot yield the CPU to Search and Ingest."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)
    except (AttributeError, OSError):  # not Linux, or not allowed: run at normal priority
        pass


LOCAL_LOG_KEEP = 10_000
"""Log records a node without backups or a standby keeps (so the log cannot grow without end)."""


def trim_unshipped_log(store, keep: int = LOCAL_LOG_KEEP) -> int:
    """Without an agent or a standby nothing consumes the log: keep only the newest ``keep``."""
    return store.trim_log(store.last_lsn - keep) if store.last_lsn > keep else 0
