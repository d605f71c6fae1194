"""A replica's role: active or standby, decided by the leader lease, and the moves between.

- start: standby (never active before holding the lease), NOT_SERVING on health.
- standby: try the lease every renew interval; while another replica holds it, follow
  that replica's log (``Follower``).
- promotion (lease taken, epoch bumped): stop following once nothing is being applied,
  write the epoch into the store and beside it, refresh the entity-type filter metadata,
  start the backup agent, report SERVING.
- active: renew; a write is accepted only while the lease is valid and acknowledged only
  after the standby confirmed it (``ReplicationSource.confirm``) and the lease is still
  valid then. Losing the lease (or failing to renew before the deadline) demotes:
  NOT_SERVING, backups stopped, streams ended, and this replica follows the new active
  (a copy with an unacknowledged tail gets a snapshot of the new active; its own copy is
  moved aside beside the data directory, ``<data>.diverged-*``, kept for the operator and
  reported in ``percolate admin status`` and ``percolate_replication_diverged_copies``).
- who may take the lease at all: ``lease.ineligible`` (this copy's epoch and LSN against
  what the last holder published as acknowledged); the active publishes it on every
  renewal, and before acknowledging any write while it goes on alone.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2

from percolate.node.v1 import replication_pb2_grpc
from percolate_certs.ca import CertPaths
from percolate_certs.tls import server_credentials
from percolate_common.files import sync_folder, sync_tree
from percolate_node.durability.agent import LOCAL_LOG_KEEP, trim_unshipped_log

from .errors import HandoverError, LeaseUnavailableError, NotActiveError
from .follower import Follower
from .lease import AckState, CopyPosition, LeaseElector, open_backend
from .source import MAX_MESSAGE_BYTES, ReplicationSource

log = logging.getLogger("percolate.replication")
ROLES = ("active", "standby")
LOG_KEEP = LOCAL_LOG_KEEP
"""Log records kept behind what the standby confirmed (active) or applied (standby: it becomes
the source of a new standby after a promotion, and a short gap then needs no snapshot)."""
ACTIVE_LOG_MAX = 100_000
"""The most records an active keeps for a standby that stays away (past it the standby gets a snapshot)."""


class ReplicaController:
    def __init__(self, node, elector: LeaseElector | None = None) -> None:
        self.node = node
        self.config = node.config
        self.tenant_id = node.config.tenant_id
        self.role = "standby"
        self.elector = elector
        self.source: ReplicationSource | None = None
        self.follower: Follower | None = None
        self.failovers = 0
        self.port = 0
        self._server: grpc.aio.Server | None = None
        self._loop_task: asyncio.Task | None = None
        self._metrics_ready = False
        self._writes = 0                 # writes between check_write and their acknowledgement
        self._handing_over = False
        self._abstain_until = 0.0        # after a handover: let the peer take the lease first
        self._publish_lock: asyncio.Lock | None = None
        self.replication_error = ""      # the last replication problem an operator must see
        self.installing = False          # a snapshot is being swapped in: reads answer UNAVAILABLE

    @property
    def memory(self):
        return self.node.memory

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        config = self.config
        if None in (config.replica_cert, config.replica_key, config.replica_ca):
            raise ValueError("replication needs PERCOLATE_NODE_REPLICA_CERT, _KEY and _CA (a replica "
                             "certificate of the tenant's CA: percolate-certs replica)")
        self.source = ReplicationSource(self, strict=config.ha_strict,
                                        standby_timeout_s=config.ha_standby_timeout_s)
        self.memory.store.add_log_listener(self.source.on_commit)
        self.follower = Follower(self)
        self._server = grpc.aio.server(options=[("grpc.max_send_message_length", MAX_MESSAGE_BYTES)])
        replication_pb2_grpc.add_ReplicationServiceServicer_to_server(self.source, self._server)
        paths = CertPaths(cert=config.replica_cert, key=config.replica_key, ca=config.replica_ca)
        self.port = self._server.add_secure_port(f"{config.replication_host or config.host}:{config.replication_port}",
                                                 server_credentials(paths, require_client_auth=True))
        await self._server.start()
        advertise = config.replication_advertise or f"{config.replication_host or config.host}:{self.port}"
        if self.elector is None:
            password = config.ha_etcd_password_file.read_text().strip() if config.ha_etcd_password_file else ""
            self.elector = LeaseElector(open_backend(config.ha_lease_url, self.tenant_id, config.ha_lease_name,
                                                     config.ha_kubernetes_dir,
                                                     (config.ha_etcd_ca, config.ha_etcd_cert, config.ha_etcd_key),
                                                     config.ha_etcd_user, password),
                                        config.replica_id, advertise, config.ha_lease_duration_s,
                                        bootstrap=config.ha_bootstrap_replica)
        else:
            self.elector.address = advertise
        self._publish_lock = asyncio.Lock()
        self._setup_metrics()
        await self._set_health(False)
        self._loop_task = asyncio.create_task(self._run())
        log.info("replica %s of tenant %s: replication on %s, lease %s", config.replica_id, self.tenant_id,
                 advertise, self.elector.backend.describe())

    async def stop(self, release: bool = True) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            try:
                await self._loop_task
            except (asyncio.CancelledError, Exception):
                pass
        if self.follower is not None:
            await self.follower.stop()
        if release and self.role == "active":
            try:
                await asyncio.to_thread(self.elector.release, self._ack_state())
            except Exception as error:
                log.warning("releasing the lease failed (%s); the peer takes over when it expires", error)
        self.role = "standby"
        if self._server is not None:
            await self._server.stop(1)

    # -- what the servicer asks --------------------------------------------------------------

    def is_active(self) -> bool:
        return self.role == "active" and self.elector.valid()

    def may_stream(self) -> bool:
        """Whether to serve the Replicate stream: while active, and while handing over (the
        standby must still receive what the writes in flight commit)."""
        return self.is_active() or (self._handing_over and self.elector.valid())

    def check_write(self) -> None:
        if not self.is_active():
            raise NotActiveError(self._not_active())
        self.source.check_writable()

    @contextlib.asynccontextmanager
    async def writing(self):
        """Around one write: accepted only on the active, acknowledged (the block left without
        an error) only once the standby has it and the lease is still ours. A handover waits
        for the writes inside."""
        self.check_write()
        self._writes += 1
        try:
            yield
            await self.confirm_write()
        finally:
            self._writes -= 1

    async def confirm_write(self) -> None:
        """After a write committed locally: acknowledge only once the standby has it and we are still active."""
        await self.source.confirm(self.memory.store.last_lsn)
        if not self.may_stream():
            raise NotActiveError("this replica lost its lease before the write was confirmed; it is not "
                                 "acknowledged (retry: the new active has it if the standby received it)")

    def _not_active(self) -> str:
        holder = self.elector.current.holder if self.elector and self.elector.current else ""
        return (f"this replica ({self.config.replica_id}) is the standby"
                + (f"; the active is {holder}" if holder and holder != self.config.replica_id else "")
                + ": retry (the tenant's Service routes to the active)")

    async def publish_acked(self, lsn: int) -> None:
        """Going on alone: record in the lease that writes up to ``lsn`` (and everything committed
        so far) are acknowledged, before they are: a copy without them may then never take the
        lease. One lease write covers every write waiting meanwhile."""
        async with self._publish_lock:
            if self.elector.state.acked_lsn >= lsn:
                return
            try:
                ok = await asyncio.to_thread(self.elector.renew, AckState(self.memory.store.last_lsn, False, ""))
            except LeaseUnavailableError as error:
                log.warning("lease service: %s", error)
                ok = False
            if not ok or self.elector.state.acked_lsn < lsn:
                raise NotActiveError("going on without a standby, this replica could not record the write as "
                                     "acknowledged in the lease; it is not acknowledged (retry)")

    def _ack_state(self) -> AckState:
        """What the lease says this active acknowledged (see ``lease.LeaseRecord``)."""
        source = self.source
        if source.synchronous and source.sync_peer:
            return AckState(source.acked_lsn, True, source.sync_peer)
        return AckState(self.elector.state.acked_lsn, False, "")

    def copy_position(self) -> CopyPosition:
        """This copy's newest epoch (of the store, or of its last record) and last LSN."""
        store = self.memory.store
        epoch, last = store.epoch, store.last_lsn
        if last:
            found = store.log_records(last - 1, 1)
            if found and found[0][0] == last:
                epoch = max(epoch, store.open_log_record(*found[0]).epoch)
        return CopyPosition(epoch, last)

    def report_oversized(self, lsn: int, size: int, limit: int) -> None:
        """A record too large for one replication message: said loudly; the standby gets a snapshot instead."""
        self.replication_error = (f"log record {lsn} needs a {size}-byte message, over the replication limit of "
                                  f"{limit}: the standby is sent a snapshot instead")
        log.error("replication: %s", self.replication_error)
        if self._metrics_ready:
            self._oversized.labels(self.tenant_id).inc()

    def report_stream_error(self, address: str, code: str, details: str) -> None:
        error = f"the replication stream from {address} failed: {code} {details}"
        if error != self.replication_error:
            log.error("replication: %s", error)
        self.replication_error = error
        if self._metrics_ready:
            self._stream_errors.labels(self.tenant_id, code).inc()

    def trim_log(self) -> int:
        """Keep the change log bounded (the node calls this periodically). The active trims only
        past what its standby confirmed (and, with backups, the agent trims past what was shipped
        and confirmed: ``on_standby_ack``), at most ``ACTIVE_LOG_MAX`` records behind; the standby
        keeps ``LOG_KEEP`` records behind what it applied."""
        store = self.memory.store
        last = store.last_lsn
        if self.role == "active":
            if self.node.backup is not None:
                return 0
            through = max(min(self.source.confirmed_lsn, last - LOG_KEEP), last - ACTIVE_LOG_MAX)
            return store.trim_log(through) if through > 0 else 0
        return trim_unshipped_log(store, LOG_KEEP)

    def on_standby_ack(self, lsn: int) -> None:
        agent = self.node.backup
        if agent is not None:
            agent.hold_lsn = lsn

    # -- the loop ------------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            try:
                if self._handing_over:  # still ours until released: keep it valid meanwhile
                    await asyncio.to_thread(self.elector.renew, self._ack_state())
                elif self.role == "active":
                    await asyncio.to_thread(self.elector.renew, self._ack_state())
                    if not self.elector.valid():
                        await self._demote("the lease could not be renewed in time or another replica holds it")
                elif time.monotonic() < self._abstain_until:
                    record = await asyncio.to_thread(self.elector.observe)
                    if record is not None and record.holder and record.holder != self.config.replica_id:
                        self._abstain_until = 0.0
                        self.follower.follow(record.address)
                elif await asyncio.to_thread(self.elector.try_acquire, self.memory.store.epoch,
                                             await asyncio.to_thread(self.copy_position)):
                    await self._promote()
                else:
                    current = self.elector.current
                    self.follower.follow(current.address if current and current.holder else None)
            except LeaseUnavailableError as error:
                log.warning("lease service: %s", error)
                if self.role == "active" and not self.elector.valid():
                    await self._demote(f"the lease service is unreachable ({error})")
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("replica role loop failed; trying again")
            self._update_metrics()
            await asyncio.sleep(self.elector.renew_interval_s)

    async def _promote(self) -> None:
        started = time.monotonic()
        await self.follower.stop()
        memory = self.memory
        epoch = self.elector.epoch
        memory.store.epoch = epoch
        memory.standby = False  # may save its search graph from now on
        from percolate_node.durability.epoch import write_epoch

        write_epoch(self.config.data_dir, epoch)
        await asyncio.to_thread(self._refresh_entity_types)
        self.source.reset(memory.store.last_lsn, peer_presumed_dead=bool(self.elector.taken_from))
        self.node.start_backups()
        self.role = "active"
        self.failovers += 1
        if self._metrics_ready:
            self._failovers.labels(self.tenant_id).inc()
        await self._set_health(True)
        log.warning("replica %s of tenant %s is now ACTIVE at epoch %d (LSN %d, promoted in %.2f s)",
                    self.config.replica_id, self.tenant_id, epoch, memory.store.last_lsn,
                    time.monotonic() - started)

    async def _demote(self, why: str) -> None:
        log.warning("replica %s of tenant %s steps down to standby: %s", self.config.replica_id, self.tenant_id, why)
        self.role = "standby"
        self.memory.standby = True
        self.elector.step_down()
        await self._set_health(False)
        await self.node.stop_backups()
        self.source._stream += 1  # ends the open stream

    async def handover(self, timeout_s: float = 30.0) -> dict:
        """A planned handover: stop taking writes, let those inside finish, wait until the
        standby confirmed every committed record, release the lease, and wait for the peer
        to take it. Refused (nothing changed, still active) without a connected standby or
        when it does not catch up within ``timeout_s``."""
        if not self.is_active():
            raise NotActiveError(self._not_active())
        if self.source.standby is None:
            raise HandoverError("no standby is connected: a handover now would leave the tenant without an "
                                "active replica until this one took the lease back")
        started = time.monotonic()
        deadline = started + timeout_s
        previous, epoch = self.config.replica_id, self.elector.epoch
        self._handing_over = True
        self.role = "standby"
        await self._set_health(False)
        try:
            while (self._writes or self.source.acked_lsn < self.memory.store.last_lsn) and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            lsn = self.memory.store.last_lsn
            if self._writes or self.source.acked_lsn < lsn or not self.elector.valid():
                self.role = "active"
                await self._set_health(True)
                raise HandoverError(f"the standby confirmed LSN {self.source.acked_lsn} of {lsn} within "
                                    f"{timeout_s:.0f} s; this replica stays active")
            self.memory.standby = True
            self._abstain_until = time.monotonic() + max(timeout_s, 3 * self.elector.duration_s)
            # the standby confirmed every record: it may take the lease, whatever its epoch
            await asyncio.to_thread(self.elector.release, AckState(lsn, True, self.source.standby or ""))
        finally:
            self._handing_over = False
        await self.node.stop_backups()
        self.source._stream += 1
        log.warning("replica %s of tenant %s handed over at LSN %d (epoch %d)", previous, self.tenant_id, lsn, epoch)
        while time.monotonic() < deadline + self.elector.duration_s:
            record = await asyncio.to_thread(self.elector.observe)
            if record is not None and record.holder and record.holder != previous and record.epoch > epoch:
                return {"previous_active": previous, "new_active": record.holder, "lsn": lsn, "epoch": record.epoch,
                        "seconds": time.monotonic() - started}
            await asyncio.sleep(0.05)
        raise HandoverError(f"the lease was released at LSN {lsn} but no replica took it within "
                            f"{timeout_s:.0f} s; this replica takes it back when it may")

    def _refresh_entity_types(self) -> None:
        memory = self.memory
        for record_id, types in memory.repository.entity_types_by_record().items():
            resource = memory.repository.get_resource(record_id)
            if resource is not None:
                memory.index.update_meta(record_id, memory._meta(resource, entity_types=types))

    async def install_snapshot(self, staging: Path, epoch: int, keep_old: bool = False, reason: str = "") -> None:
        """Replace our copy with the active's checkpoint in ``staging`` and reopen (standby only).
        ``keep_old``: our copy may hold what the active's does not; it is moved aside, never deleted."""
        if self.role == "active":
            raise NotActiveError("refusing a snapshot while active")
        from percolate_node.durability.epoch import write_epoch

        data_dir = Path(self.config.data_dir)
        store = self.memory.store
        keep_old = keep_old and store.last_lsn > 0
        if keep_old:
            old = data_dir.parent / f"{data_dir.name}.diverged-epoch{store.epoch}-lsn{store.last_lsn}-{time.time_ns()}"
        else:
            old = data_dir.parent / f".{data_dir.name}.replica-old"
        await asyncio.to_thread(sync_tree, staging)
        self.installing = True
        try:
            await self.node.reopen_memory(lambda: _swap(data_dir, staging, old, keep_old), epoch)
        finally:
            self.installing = False
        write_epoch(data_dir, epoch)
        self.memory.store.add_log_listener(self.source.on_commit)
        if keep_old:
            log.error("replication: this replica's copy held records the active's does not (%s); it was moved "
                      "aside to %s and kept (never deleted): inspect it, then remove it", reason, old)
            self._update_metrics()

    def diverged_copies(self) -> list[str]:
        """Copies of this replica moved aside because the active's snapshot replaced them."""
        data_dir = Path(self.config.data_dir)
        return sorted(str(path) for path in data_dir.parent.glob(f"{data_dir.name}.diverged-*"))

    # -- health and metrics ---------------------------------------------------------------------

    async def _set_health(self, serving: bool) -> None:
        from percolate_node.server import NODE_SERVICE

        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for service in ("", NODE_SERVICE):
            await self.node.health.set(service, status)
        self._update_metrics()

    def _setup_metrics(self) -> None:
        from prometheus_client import Counter, Gauge

        registry = self.node.metrics.registry
        self._role = Gauge("percolate_node_role", "1 for this replica's current role", ["tenant_id", "role"],
                           registry=registry)
        self._lag_records = Gauge("percolate_replication_lag_records",
                                  "Committed log records the standby has not confirmed", ["tenant_id"],
                                  registry=registry)
        self._lag_seconds = Gauge("percolate_replication_lag_seconds",
                                  "Age of the oldest record the standby has not confirmed", ["tenant_id"],
                                  registry=registry)
        self._mode = Gauge("percolate_replication_synchronous",
                           "1 while writes wait for the standby, 0 while the active goes on alone",
                           ["tenant_id"], registry=registry)
        self._epoch = Gauge("percolate_replication_epoch", "The lease generation this replica writes",
                            ["tenant_id"], registry=registry)
        self._failovers = Counter("percolate_failovers", "Times this replica became the active one",
                                  ["tenant_id"], registry=registry)
        self._diverged = Gauge("percolate_replication_diverged_copies",
                               "Copies of this replica moved aside (kept) when the active's snapshot replaced them",
                               ["tenant_id"], registry=registry)
        self._oversized = Counter("percolate_replication_oversized_records",
                                  "Log records too large for a replication message (sent as a snapshot)",
                                  ["tenant_id"], registry=registry)
        self._stream_errors = Counter("percolate_replication_stream_errors",
                                      "Replication streams this standby saw fail (other than the active going away)",
                                      ["tenant_id", "code"], registry=registry)
        self._refused = Gauge("percolate_replication_lease_refused",
                              "1 while this replica's copy may not take the lease (empty or behind)",
                              ["tenant_id"], registry=registry)
        self._metrics_ready = True

    def _update_metrics(self) -> None:
        if not self._metrics_ready:
            return
        for role in ROLES:
            self._role.labels(self.tenant_id, role).set(1 if role == self.role else 0)
        store = self.memory.store
        records, seconds = self.source.lag(store) if self.role == "active" else (0, 0.0)
        self._lag_records.labels(self.tenant_id).set(records)
        self._lag_seconds.labels(self.tenant_id).set(seconds)
        self._mode.labels(self.tenant_id).set(1 if self.source.synchronous else 0)
        self._epoch.labels(self.tenant_id).set(store.epoch)
        self._diverged.labels(self.tenant_id).set(len(self.diverged_copies()))
        self._refused.labels(self.tenant_id).set(1 if self.elector.refused and self.role != "active" else 0)

    def status(self) -> dict:
        store = self.memory.store
        active = self.role == "active"
        records, seconds = self.source.lag(store) if active else (0, 0.0)
        lease = self.elector.current if self.elector else None
        return {"replica_id": self.config.replica_id, "role": self.role, "epoch": store.epoch,
                "last_lsn": store.last_lsn, "standby": (self.source.standby or "") if active else "",
                "acked_lsn": self.source.acked_lsn if active else 0,
                "synchronous": self.source.synchronous, "lag_records": records, "lag_seconds": seconds,
                "failovers": self.failovers, "strict": self.source.strict,
                "lease_holder": lease.holder if lease else "", "lease_epoch": lease.epoch if lease else 0,
                "lease_valid_seconds": self.elector.remaining_s() if active else 0.0,
                "lease_refused": "" if active else self.elector.refused,
                "diverged_copies": self.diverged_copies(), "replication_error": self.replication_error}


def _swap(data_dir: Path, staging: Path, old: Path, keep_old: bool) -> None:
    if not keep_old:
        shutil.rmtree(old, ignore_errors=True)
    if data_dir.exists():
        os.rename(data_dir, old)
    os.rename(staging, data_dir)
    sync_folder(data_dir.parent)
    if not keep_old:
        shutil.rmtree(old, ignore_errors=True)
