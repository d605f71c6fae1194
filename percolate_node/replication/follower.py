"""The standby side: follow the active's log into our own encrypted copy, warm.

The standby dials the lease holder's replication address with its replica certificate,
first checks in a TLS handshake of its own that the server's certificate chains to the
tenant CA and names ``spiffe://percolate/tenant/<this tenant>/replica`` (gRPC's client
checks only the host name, and another tenant's replica shares the CA), installs a snapshot
(file names must be plain names; the end's file and byte counts must match what came) when the active sends one, applies records in order
(``store.apply_log_record``: same KEK, older epochs refused) and acknowledges the LSN it
has made durable before it indexes: search indexes are kept warm here, record by record
(a resource written or tombstoned is added to or dropped from the index), so a promotion
does not rebuild them. Entity-type filter metadata is refreshed once at promotion.
"""
from __future__ import annotations

import asyncio
import logging
import shutil
import threading
from pathlib import Path

import grpc

from percolate.node.v1 import replication_pb2 as pb
from percolate.node.v1 import replication_pb2_grpc
from percolate_certs.tls import channel_credentials
from percolate_node.rem.codec import decode
from percolate_node.rem.model import Resource
from percolate_node.store.layout import RESOURCES

from .errors import ReplicationError
from .source import MAX_MESSAGE_BYTES, record_digest

log = logging.getLogger("percolate.replication")
RETRY_S = 0.5


class Follower:
    def __init__(self, controller) -> None:
        self.controller = controller
        self.address: str | None = None
        self.applied_lsn = 0
        self.apply_lock = threading.Lock()  # held while records are applied (promotion waits on it)
        self._task: asyncio.Task | None = None
        self._keys: dict[bytes, str] = {}   # resources key -> id, for a purge (Delete) of a key
        self.connected = asyncio.Event()

    def follow(self, address: str | None) -> None:
        """Follow ``address`` (None: nobody to follow); restarts the stream when it changes."""
        if address == self.address and self._task is not None and not self._task.done():
            return
        self._cancel()
        self.address = address
        if address:
            self._task = asyncio.create_task(self._run(address))

    async def stop(self) -> None:
        """Stop following; returns once no record is being applied."""
        task = self._task
        self._cancel()
        if task is not None:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        await asyncio.to_thread(self.apply_lock.acquire)
        self.apply_lock.release()
        self.address = None

    def _cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self.connected.clear()

    async def _run(self, address: str) -> None:
        while True:
            try:
                await self._follow(address)
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as error:
                code = error.code()
                if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):  # the active went away
                    log.info("replication: stream from %s ended: %s %s", address, code.name, error.details())
                else:  # something an operator must see: it repeats until fixed
                    self.controller.report_stream_error(address, code.name, error.details())
            except (ReplicationError, PermissionError) as error:
                self.controller.report_stream_error(address, type(error).__name__, str(error))
            except Exception:
                log.exception("replication: following %s failed", address)
            self.connected.clear()
            await asyncio.sleep(RETRY_S)

    async def _follow(self, address: str) -> None:
        config = self.controller.config
        await asyncio.to_thread(verify_active, address, config)
        credentials = channel_credentials(config.replica_ca, config.replica_cert, config.replica_key)
        options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
        if config.replication_server_name:  # the peer's certificate names the headless Service
            options.append(("grpc.ssl_target_name_override", config.replication_server_name))
        async with grpc.aio.secure_channel(address, credentials, options=options) as channel:
            call = replication_pb2_grpc.ReplicationServiceStub(channel).Replicate()
            store = self.controller.memory.store
            last = store.last_lsn
            mine = store.log_records(last - 1, 1) if last else []
            digest = record_digest(mine[0][1]) if mine and mine[0][0] == last else b""
            await call.write(pb.ReplicateRequest(start=pb.ReplicaStart(
                tenant_id=config.tenant_id, replica_id=config.replica_id, last_lsn=last if digest else 0,
                last_record_sha256=digest, epoch=store.epoch)))
            staging: Path | None = None
            received: dict[str, int] = {}  # snapshot file -> bytes received
            while True:
                response = await call.read()
                if response is grpc.aio.EOF:
                    return
                self.connected.set()
                kind = response.WhichOneof("kind")
                if kind == "records":
                    changed = await asyncio.to_thread(self._apply, response.records.records)
                    self.controller.replication_error = ""
                    await call.write(pb.ReplicateRequest(ack=pb.ReplicaAck(durable_lsn=self.applied_lsn)))
                    if changed:
                        await asyncio.to_thread(self._index, changed)
                elif kind == "heartbeat":
                    await asyncio.to_thread(self._adopt_epoch, response.heartbeat)
                    await call.write(pb.ReplicateRequest(ack=pb.ReplicaAck(
                        durable_lsn=self.controller.memory.store.last_lsn)))
                elif kind == "snapshot_chunk":
                    chunk = response.snapshot_chunk
                    if staging is None:
                        staging, received = self._staging(), {}
                    name = plain_file_name(chunk.file)
                    received[name] = received.get(name, 0) + len(chunk.data)
                    await asyncio.to_thread(_write_chunk, staging / name, chunk.offset, chunk.data)
                elif kind == "snapshot_end":
                    end = response.snapshot_end
                    if staging is None:
                        staging, received = self._staging(), {}
                    if end.files != len(received) or end.bytes != sum(received.values()):
                        shutil.rmtree(staging, ignore_errors=True)
                        raise ReplicationError(f"the snapshot's end names {end.files} files and {end.bytes} bytes; "
                                               f"{len(received)} files and {sum(received.values())} bytes came: "
                                               "not installed")
                    keep = end.diverged or self.controller.memory.store.last_lsn > end.lsn
                    await self.controller.install_snapshot(staging, end.epoch, keep, end.reason)
                    staging = None
                    self._keys.clear()
                    self.applied_lsn = self.controller.memory.store.last_lsn
                    log.info("replication: installed the active's snapshot at LSN %d (%d files, %.1f MB)",
                             end.lsn, end.files, end.bytes / 1e6)
                    await call.write(pb.ReplicateRequest(ack=pb.ReplicaAck(durable_lsn=self.applied_lsn)))

    def _adopt_epoch(self, heartbeat) -> None:
        """Caught up with the active (same timeline, same LSN): this copy is the active's copy at
        its epoch, even before a record of that epoch arrived; written beside the store so the
        lease's check (``lease.ineligible``) sees it after a restart too."""
        from percolate_node.durability.epoch import write_epoch

        with self.apply_lock:
            store = self.controller.memory.store
            if heartbeat.epoch > store.epoch and store.last_lsn == heartbeat.last_lsn:
                store.epoch = heartbeat.epoch
                write_epoch(self.controller.config.data_dir, heartbeat.epoch)

    def _staging(self) -> Path:
        data_dir = Path(self.controller.config.data_dir)
        staging = data_dir.parent / f".{data_dir.name}.replica-incoming"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        return staging

    def _apply(self, records) -> list[bytes]:
        """Apply records in order (each one synced); the resources keys they touched."""
        changed: list[bytes] = []
        with self.apply_lock:
            store = self.controller.memory.store
            for record in records:
                if record.lsn <= store.last_lsn:
                    continue  # already here (a resent batch)
                applied = store.apply_log_record(record.lsn, record.sealed)
                changed += [key for cf, key, _ in applied.ops if cf == RESOURCES]
                self.applied_lsn = record.lsn
            self.applied_lsn = store.last_lsn
        return changed

    def _index(self, keys: list[bytes]) -> None:
        """Keep the search indexes warm: the resources just applied, in or out of the index."""
        memory = self.controller.memory
        for key in dict.fromkeys(keys):
            data = memory.store.get(RESOURCES, key)
            if data is None:
                gone = self._keys.pop(key, None)
                if gone and memory.index.remove(gone):
                    memory._graph_version += 1
                continue
            resource = decode(Resource, data)
            self._keys[key] = resource.id
            if resource.deleted:
                if memory.index.remove(resource.id):
                    memory._graph_version += 1
                continue
            memory.index.add(resource.id, resource.embedding, resource.text, memory._meta(resource))
            memory._graph_version += 1


def plain_file_name(name: str) -> str:
    """A snapshot file's name as sent: a plain name in the staging folder, nothing else."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name or Path(name).name != name:
        raise ReplicationError(f"the active sent a snapshot file named {name[:200]!r}: not a plain file name")
    return name


def verify_active(address: str, config, timeout_s: float = 10.0) -> None:
    """A TLS handshake with our replica certificate: the server's certificate must chain to the
    tenant CA and carry exactly the URI SAN of this tenant's replica; PermissionError otherwise."""
    import socket
    import ssl

    from cryptography import x509

    from percolate_certs.identity import replica_uri

    host, _, port = address.rpartition(":")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False  # gRPC checks the name; this checks the identity
    context.load_verify_locations(str(config.replica_ca))
    context.load_cert_chain(str(config.replica_cert), str(config.replica_key))
    context.set_alpn_protocols(["h2"])
    with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s) as raw:
        with context.wrap_socket(raw, server_hostname=config.replication_server_name or host.strip("[]")) as tls:
            der = tls.getpeercert(binary_form=True)
    cert = x509.load_der_x509_certificate(der)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    expected = replica_uri(config.tenant_id)
    if uris != [expected]:
        raise PermissionError(f"the server at {address} is not a replica of tenant {config.tenant_id}: its "
                              f"certificate names {uris or 'no URI'}, not {expected}; not following it")


def _write_chunk(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b" if offset else "wb") as handle:
        handle.seek(offset)
        handle.write(data)
