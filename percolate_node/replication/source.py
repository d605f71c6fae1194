"""The active side: the ``Replicate`` stream, and the wait that makes writes synchronous.

A standby opens the stream and says where its copy stands; this side sends a snapshot
first when that copy is new, diverged (its last record differs from ours: an old active's
unacknowledged tail) or behind the oldest record still in our log, then the sealed log
records in order, and heartbeats while idle. The standby's acks move ``acked_lsn``.

``confirm(lsn)`` is what a write awaits before it is acknowledged: the standby's ack of
``lsn`` (synchronous mode). A standby silent for ``standby_timeout_s`` turns the active
asynchronous (a log line, ``percolate_replication_synchronous`` 0) until it has caught up
again; in strict mode the write is refused instead (UNAVAILABLE). While asynchronous a
write is acknowledged only once the lease records an acknowledged LSN at or past it
(``controller.publish_acked``), so a copy without it can never take the lease.

A standby's copy that is ahead of ours or on another timeline is never deleted: the
snapshot's end says ``diverged`` and the standby moves its copy aside.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import shutil
import tempfile
import time
from collections import deque
from pathlib import Path

import grpc

from percolate.node.v1 import replication_pb2 as pb
from percolate.node.v1 import replication_pb2_grpc
from percolate_certs.identity import IdentityError, replica_tenant_from_auth_context

from percolate_node.config import MAX_REQUEST_BYTES

from .errors import NoStandbyError

log = logging.getLogger("percolate.replication")
BATCH_RECORDS = 256
BATCH_BYTES = 4 << 20          # a batch of records stops here (one record always goes alone)
RECORD_FRAMING = 64            # per record in a LogRecords message: tag, LSN, length
# One write's record holds what its request carried, sealed, possibly twice (a document and its
# chunks): the replication channel (both ends) takes messages up to this.
MAX_MESSAGE_BYTES = 2 * MAX_REQUEST_BYTES + (16 << 20)
CHUNK_BYTES = 1 << 20
HEARTBEAT_S = 0.5


def record_digest(sealed: bytes) -> bytes:
    return hashlib.sha256(sealed).digest()


def needs_snapshot(store, last_lsn: int, digest: bytes) -> tuple[str, bool] | None:
    """Why the standby's copy cannot follow our log from ``last_lsn``, and whether that copy
    may hold what ours does not (diverged: to be kept); None when it can follow."""
    if last_lsn == 0:
        return "the standby has no copy", False
    if last_lsn > store.last_lsn:
        return f"the standby is ahead (LSN {last_lsn} > {store.last_lsn}): a tail this active never had", True
    first = store.first_lsn()
    if first > last_lsn + 1 or first == 0:
        # behind our log: whether its records are ours can no longer be checked, so it is kept
        return f"our log starts at {first}, after the standby's LSN {last_lsn}", True
    mine = store.log_records(last_lsn - 1, 1)
    if not mine or mine[0][0] != last_lsn:
        return f"record {last_lsn} is no longer in our log", True
    if record_digest(mine[0][1]) != digest:
        return f"the standby's record {last_lsn} differs from ours (another timeline)", True
    return None


class ReplicationSource(replication_pb2_grpc.ReplicationServiceServicer):
    """Serves ``Replicate`` on the active; ``controller`` says whether we are it."""

    def __init__(self, controller, strict: bool = False, standby_timeout_s: float = 5.0) -> None:
        self.controller = controller
        self.strict = strict
        self.standby_timeout_s = standby_timeout_s
        self.acked_lsn = 0
        self.standby: str | None = None      # the replica id streaming now
        self.sync_peer = ""                 # the standby whose acks this active's synchronous writes waited for
        self.confirmed_lsn = 0              # the newest LSN a standby confirmed since this replica's promotion
        self.synchronous = True             # False while going on alone
        self.last_contact = time.monotonic()
        self._stream = 0                    # id of the newest stream: an older one ends
        self._acked = asyncio.Event()
        self._new_record = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._commits: deque[tuple[int, float]] = deque()  # (lsn, monotonic) not yet acked

    # -- the write path -----------------------------------------------------------------

    def on_commit(self, lsn: int) -> None:
        """Store log listener (writer's thread, under the store lock): wake the stream."""
        self._commits.append((lsn, time.monotonic()))
        self._loop.call_soon_threadsafe(self._new_record.set)

    def reset(self, acked_lsn: int, peer_presumed_dead: bool = False) -> None:
        """On promotion: nothing confirmed beyond what we hold; the standby gets the timeout to
        appear. After taking an expired lease the peer is the replica that just failed: waiting
        the timeout for it would only add to the outage, so (unless strict) the new active
        starts asynchronous and turns synchronous once the peer is back and caught up."""
        self.acked_lsn = acked_lsn
        self.synchronous = True
        self.sync_peer = ""
        self.confirmed_lsn = 0
        self.last_contact = time.monotonic()
        self._commits.clear()
        if peer_presumed_dead and not self.strict:
            self.last_contact -= self.standby_timeout_s
            self._go_async(self.standby_timeout_s)

    def check_writable(self) -> None:
        if self.strict and (self.standby is None or not self.synchronous):
            raise NoStandbyError("strict replication: no standby confirms writes now "
                                 "(PERCOLATE_NODE_HA_STRICT); retry when it is back")

    async def confirm(self, lsn: int) -> None:
        """Wait until the standby made ``lsn`` durable (synchronous mode), or the standby
        has been silent past the timeout (then asynchronous; strict: refused)."""
        while self.acked_lsn < lsn:
            if not self.synchronous and not self.strict:
                await self.controller.publish_acked(lsn)
                return
            silent = time.monotonic() - self.last_contact
            if silent >= self.standby_timeout_s:
                if self.strict:
                    raise NoStandbyError(f"strict replication: the standby has not confirmed LSN {lsn} for "
                                         f"{silent:.1f} s; the write is not acknowledged")
                self._go_async(silent)
                await self.controller.publish_acked(lsn)
                return
            self._acked.clear()
            try:
                await asyncio.wait_for(self._acked.wait(), timeout=min(0.25, self.standby_timeout_s - silent))
            except asyncio.TimeoutError:
                pass

    def _go_async(self, silent: float) -> None:
        if self.synchronous:
            self.synchronous = False
            log.warning("replication: the standby %s has confirmed nothing for %.1f s (timeout %.1f s): the active "
                        "goes on alone (asynchronous) and catches it up when it returns; writes are now "
                        "acknowledged without a second copy", self.standby or "(none connected)", silent,
                        self.standby_timeout_s)

    def _on_ack(self, lsn: int, store) -> None:
        self.last_contact = time.monotonic()
        self.acked_lsn = max(self.acked_lsn, min(lsn, store.last_lsn))  # never past what we wrote
        self.confirmed_lsn = max(self.confirmed_lsn, min(lsn, store.last_lsn))
        while self._commits and self._commits[0][0] <= self.acked_lsn:
            self._commits.popleft()
        if not self.synchronous and self.acked_lsn >= store.last_lsn:
            self.synchronous = True
            log.warning("replication: the standby %s caught up at LSN %d: synchronous again", self.standby,
                        self.acked_lsn)
        if self.synchronous and self.standby:
            self.sync_peer = self.standby
        self.controller.on_standby_ack(self.acked_lsn)
        self._acked.set()

    def lag(self, store) -> tuple[int, float]:
        """(records, seconds) the standby is behind."""
        records = max(0, store.last_lsn - self.acked_lsn)
        seconds = time.monotonic() - self._commits[0][1] if records and self._commits else 0.0
        return records, seconds

    # -- the stream ----------------------------------------------------------------------

    async def Replicate(self, request_iterator, context):
        try:
            tenant = replica_tenant_from_auth_context(context.auth_context())
        except IdentityError as error:
            await context.abort(error.code, f"{error}; the replication port takes replica certificates only")
        if tenant != self.controller.tenant_id:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                f"this node replicates tenant {self.controller.tenant_id!r}, not {tenant!r}")
        first = await context.read()
        if first is grpc.aio.EOF or first.WhichOneof("kind") != "start":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a Replicate stream begins with a start message")
        start = first.start
        if start.tenant_id and start.tenant_id != self.controller.tenant_id:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"start names tenant {start.tenant_id!r}")
        if not self.controller.may_stream():
            await context.abort(grpc.StatusCode.UNAVAILABLE, "this replica is not the active one; follow the lease")
        self._stream += 1
        stream = self._stream
        self.standby = start.replica_id or "standby"
        self.last_contact = time.monotonic()
        store = self.controller.memory.store
        reader = asyncio.create_task(self._read_acks(context, store, stream))
        try:
            position = start.last_lsn
            found = needs_snapshot(store, start.last_lsn, start.last_record_sha256)
            if found:
                why, diverged = found
                (log.warning if diverged else log.info)(
                    "replication: sending a snapshot to %s (%s)%s", self.standby, why,
                    "; it keeps its own copy aside" if diverged else "")
                position = await self._send_snapshot(context, store, why, diverged)
            limit = BATCH_RECORDS
            while stream == self._stream and self.controller.may_stream() and not reader.done():
                self._new_record.clear()
                records = await asyncio.to_thread(store.log_records, position, limit)
                if records:
                    if records[0][0] != position + 1:  # trimmed meanwhile: start again with a snapshot
                        await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                            f"log records after {position} are gone; reconnect")
                    batch, size = _batch(records)
                    # large records: read fewer next time (the rest is read again from ``position``)
                    limit = BATCH_RECORDS if len(batch) == len(records) else max(1, len(batch))
                    if size > MAX_MESSAGE_BYTES:
                        lsn = batch[0][0]
                        self.controller.report_oversized(lsn, size, MAX_MESSAGE_BYTES)
                        position = await self._send_snapshot(
                            context, store, f"record {lsn} ({size} bytes) is over the replication message limit")
                        continue
                    await context.write(pb.ReplicateResponse(records=pb.LogRecords(
                        epoch=store.epoch, records=[pb.LogRecord(lsn=lsn, sealed=sealed) for lsn, sealed in batch])))
                    position = batch[-1][0]
                    continue
                try:
                    await asyncio.wait_for(self._new_record.wait(), timeout=HEARTBEAT_S)
                except asyncio.TimeoutError:
                    await context.write(pb.ReplicateResponse(heartbeat=pb.ReplicaHeartbeat(
                        last_lsn=store.last_lsn, epoch=store.epoch)))
        finally:
            reader.cancel()
            if stream == self._stream:
                self.standby = None
        if not self.controller.may_stream():
            await context.abort(grpc.StatusCode.UNAVAILABLE, "this replica is no longer the active one")

    async def _read_acks(self, context, store, stream: int) -> None:
        while True:
            request = await context.read()
            if request is grpc.aio.EOF:
                return
            if request.WhichOneof("kind") == "ack" and stream == self._stream:
                self._on_ack(request.ack.durable_lsn, store)

    async def _send_snapshot(self, context, store, reason: str = "", diverged: bool = False) -> int:
        """A checkpoint of our database, file by file; returns the LSN it covers."""
        scratch = Path(tempfile.mkdtemp(prefix=".replica-snapshot-", dir=store.path.parent))
        try:
            folder = scratch / "checkpoint"
            lsn = await asyncio.to_thread(store.checkpoint, folder)
            files = total = 0
            for path in sorted(folder.iterdir()):
                if not path.is_file():
                    continue
                files += 1
                offset = 0
                with open(path, "rb") as handle:
                    while True:
                        data = await asyncio.to_thread(handle.read, CHUNK_BYTES)
                        if not data and offset:
                            break
                        await context.write(pb.ReplicateResponse(snapshot_chunk=pb.SnapshotChunk(
                            file=path.name, offset=offset, data=data)))
                        offset += len(data)
                        if not data:
                            break
                total += offset
            await context.write(pb.ReplicateResponse(snapshot_end=pb.SnapshotEnd(
                lsn=lsn, epoch=store.epoch, files=files, bytes=total, diverged=diverged, reason=reason)))
            log.info("replication: snapshot at LSN %d sent to %s (%d files, %.1f MB)", lsn, self.standby, files,
                     total / 1e6)
            return lsn
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


def _batch(records: list[tuple[int, bytes]]) -> tuple[list[tuple[int, bytes]], int]:
    """The leading records that fit ``BATCH_BYTES`` (at least one), and their message size."""
    batch, size = [], 0
    for lsn, sealed in records:
        grown = size + len(sealed) + RECORD_FRAMING
        if batch and grown > BATCH_BYTES:
            break
        batch.append((lsn, sealed))
        size = grown
    return batch, size
