"""``percolate``: run a tenant node, and use one from the command line.

    percolate serve                      run the node (PERCOLATE_NODE_* configure it)
    percolate keys generate FILE         make a tenant key-encryption key (0600)
    percolate keys token FILE            make a bearer-token file for local clients (0600)
    percolate ingest PATH...             ingest files and folders, with progress
    percolate search "what was agreed"   hybrid search; --mode semantic|keyword
    percolate stats                      counts and sizes
    percolate admin purge|rotate-dek|rotate-kek NEW|shred [--destroy-kek]   offline, on a stopped node
    percolate admin verify               read every value; list damage (exit 1 if any)
    percolate admin snapshot             snapshot the running node to object storage now
    percolate admin status               role, epoch, lease holder, replication lag, sync/async (HA)
    percolate admin failover [--timeout S]   planned handover: the active hands the lease to the standby
    percolate backups list|verify        snapshots and shipped log in object storage; check every object
    percolate restore --to latest|LSN|2026-11-27T10:02:00Z --into DIR
                                         rebuild a data directory for that moment (all or nothing)

Client commands reach the node at PERCOLATE_NODE_URL with the bearer token in
PERCOLATE_NODE_TOKEN_FILE, or a client certificate (PERCOLATE_NODE_CA/CERT/KEY).
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from dataclasses import replace
from pathlib import Path

import grpc

from .client import NodeClient, NodeTarget, bulk_ingest, files_under
from .config import NodeConfig
from .store.errors import StoreError


def _serve(args: argparse.Namespace) -> int:
    from .server import NodeServer

    config = NodeConfig.from_env()
    overrides = {k: v for k, v in (("tenant_id", args.tenant), ("data_dir", args.data_dir),
                                   ("kek_file", args.kek_file), ("port", args.port),
                                   ("metrics_port", args.metrics_port), ("reading_url", args.reading_url))
                 if v is not None}
    config = replace(config, **overrides)
    if not config.tenant_id:
        print("percolate: set TENANT_ID (or --tenant)", file=sys.stderr)
        return 2

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        server = NodeServer(config)
        await server.start()
        print(f"node for tenant {config.tenant_id} on {server.address}, data {config.data_dir}, "
              f"{server.memory.index_size} resources indexed in {server.memory.rebuild_seconds:.2f} s "
              f"({server.memory.rebuild_graph})",
              flush=True)
        await stop.wait()
        await server.stop()

    asyncio.run(run())
    return 0


def _keys(args: argparse.Namespace) -> int:
    from .store import generate_kek

    generate_kek(args.file)
    print(f"wrote a new key-encryption key to {args.file} (mode 0600); keep it out of the data directory")
    return 0


def _token(args: argparse.Namespace) -> int:
    from .auth import generate_token_file

    try:
        generate_token_file(args.file)
    except FileExistsError:
        print(f"percolate: {args.file} already exists; refusing to overwrite it", file=sys.stderr)
        return 2
    print(f"wrote a new bearer token to {args.file} (mode 0600); point PERCOLATE_NODE_TOKEN_FILE at it "
          "for the node and its local clients")
    return 0


SHRED_WARNING = (
    "percolate: shred destroys this tenant's live keyring: the data directory can never be read "
    "again. Backups stay readable with an exported keyring and the KEK until those are destroyed "
    "too (--destroy-kek also deletes the KEK file). Repeat with --yes")


def _shred(config: NodeConfig, store, destroy_kek: bool) -> None:
    """Shred the live keyring (``store`` None: already shredded), then the KEK file if asked; says exactly what went."""
    from .store.kek import destroy_kek_file

    if store is not None:
        store.shred()
    done = (f"tenant {config.tenant_id}: the live keyring in {config.data_dir} is destroyed: "
            "that data can never be read again.")
    if not destroy_kek:
        print(f"{done} NOT destroyed: the KEK file {config.kek_file} and any exported keyring file; backups "
              "stay readable with them. Delete every exported keyring, or rerun with --destroy-kek to delete "
              "the KEK as well.")
        return
    try:
        destroy_kek_file(config.kek_file)
    except (OSError, StoreError) as error:  # e.g. a Kubernetes Secret: a read-only mount of symlinks
        print(f"{done} The KEK file {config.kek_file} could NOT be destroyed ({error}): "
              "backups and exported keyrings stay readable with it. Delete it where it comes from (for a "
              "mounted Secret: delete the Secret and every copy of it).", file=sys.stderr)
        raise SystemExit(1)
    print(f"{done} The KEK file {config.kek_file} was overwritten and deleted: every backup and exported "
          "keyring of this tenant is unreadable too, unless a copy of that KEK exists elsewhere "
          "(a secret store, a backup of its folder): destroy those copies yourself.")


def _ingest(args: argparse.Namespace) -> int:
    files = files_under(args.paths)
    if not files:
        print("percolate: no files to ingest", file=sys.stderr)
        return 2

    def progress(number: int, total: int, outcome) -> None:
        bar = "#" * (30 * number // total)
        status = (f"failed: {outcome.error}" if outcome.error else
                  f"{'new' if outcome.response.created else 'already stored'}, "
                  f"{outcome.response.resources} chunks, {outcome.response.format}")
        print(f"[{bar:<30}] {number}/{total} {outcome.path.name}: {status}", flush=True)

    with NodeClient(NodeTarget.from_env()) as client:
        outcomes = list(bulk_ingest(client, files, progress))
    failed = [o for o in outcomes if o.error]
    print(f"\n{len(outcomes) - len(failed)} ingested, {len(failed)} failed")
    for outcome in failed:
        print(f"  {outcome.path}: {outcome.error}")
    return 1 if failed else 0


def _search(args: argparse.Namespace) -> int:
    with NodeClient(NodeTarget.from_env()) as client:
        response = client.search(args.query, args.mode, args.limit)
    if not response.hits:
        print("no hits")
    for rank, hit in enumerate(response.hits, 1):
        place = f"p{hit.page_start}" + (f"-{hit.page_end}" if hit.page_end != hit.page_start else "")
        text = " ".join(hit.text.split())
        print(f"{rank:2d}. {hit.score:.4f}  {hit.uri} {place}  {' > '.join(hit.heading_path)}")
        print(f"     {text[:160]}{'...' if len(text) > 160 else ''}")
    return 0


def _stats(args: argparse.Namespace) -> int:
    from percolate.node.v1 import node_pb2 as pb

    with NodeClient(NodeTarget.from_env()) as client:
        print(client.call("Stats", pb.StatsRequest()))
    return 0


def _snapshot_now() -> int:
    """``admin snapshot``: ask the running node (its RPC), which keeps serving meanwhile."""
    from percolate.node.v1 import node_pb2 as pb

    with NodeClient(NodeTarget.from_env()) as client:
        done = client.call("CreateSnapshot", pb.CreateSnapshotRequest(), timeout=3600)
    print(f"snapshot {done.snapshot_id}: LSN {done.lsn}, {done.files} files ({done.uploaded_files} uploaded, "
          f"{done.uploaded_bytes / 1e6:.1f} MB) in {done.seconds:.1f} s at {done.location}")
    return 0


def _replica_status() -> int:
    """``admin status``: the running replica's view (ReplicaStatus)."""
    from percolate.node.v1 import node_pb2 as pb

    with NodeClient(NodeTarget.from_env()) as client:
        s = client.call("ReplicaStatus", pb.ReplicaStatusRequest())
    if s.role == "single":
        print(f"role: single (no standby, no lease)  epoch: {s.epoch}  last LSN: {s.last_lsn}")
        return 0
    print(f"replica: {s.replica_id}  role: {s.role}  epoch: {s.epoch}  last LSN: {s.last_lsn}")
    print(f"lease: held by {s.lease_holder or '(nobody)'} at epoch {s.lease_epoch}"
          + (f", valid {s.lease_valid_seconds:.1f} s more" if s.role == "active" else ""))
    if s.role == "active":
        mode = "synchronous" if s.synchronous else "ASYNCHRONOUS (going on alone)"
        print(f"standby: {s.standby or '(none connected)'}  confirmed LSN: {s.acked_lsn}  lag: {s.lag_records} "
              f"records, {s.lag_seconds:.2f} s  mode: {mode}{' (strict)' if s.strict else ''}")
    if s.lease_refused:
        print(f"may not take the lease: {s.lease_refused}")
    if s.replication_error:
        print(f"REPLICATION PROBLEM: {s.replication_error}")
    for path in s.diverged_copies:
        print(f"DIVERGED COPY kept (records the active does not hold; inspect, then remove): {path}")
    print(f"failovers to this replica: {s.failovers}")
    return 0


def _failover(timeout_s: float) -> int:
    """``admin failover``: ask the active (through the Service) to hand over to the standby."""
    from percolate.node.v1 import node_pb2 as pb

    with NodeClient(NodeTarget.from_env()) as client:
        done = client.call("Failover", pb.FailoverRequest(timeout_seconds=timeout_s), timeout=timeout_s * 3 + 30)
    print(f"handed over: {done.previous_active} -> {done.new_active} at LSN {done.lsn} (epoch {done.epoch}) "
          f"in {done.seconds:.2f} s; {done.previous_active} now follows as the standby")
    return 0


def _backups(args: argparse.Namespace) -> int:
    from datetime import datetime

    from .durability.logchain import chain
    from .durability.snapshots import list_snapshots, verify_snapshot
    from .durability.segments import unpack
    from .durability.wiring import object_stores

    config = NodeConfig.from_env()
    objects, _ = object_stores(config)
    unreadable: list[str] = []
    snapshots = list_snapshots(objects, config.tenant_id, unreadable)
    log = chain(objects, config.tenant_id)
    print(f"tenant {config.tenant_id} in {objects.url}: {len(snapshots)} snapshot(s), "
          f"{len(log.segments)} log segment(s) up to LSN {log.last_lsn}")
    problems = len(unreadable)
    for line in unreadable:
        print(f"  UNREADABLE: {line}")
    for info in snapshots:
        when = datetime.fromtimestamp(info.commit_time_ns / 1e9).astimezone().isoformat(timespec="seconds")
        line = f"  snapshot {info.id}  LSN {info.lsn}  epoch {info.epoch}  as of {when}  " \
               f"{len(info.files)} files {info.bytes / 1e6:.1f} MB"
        if args.action == "verify":
            found = verify_snapshot(objects, info)
            problems += len(found)
            line += "  OK" if not found else "  DAMAGED: " + "; ".join(found)
        print(line)
    if args.action == "verify":
        expected = None
        for name in log.segments:
            try:
                unpack(objects.get(name.key), name.key, config.tenant_id)
            except StoreError as error:
                problems += 1
                print(f"  segment {name.key}: {error}")
            if expected is not None and name.first > expected:
                problems += 1
                print(f"  log records {expected}-{name.first - 1} are missing")
            expected = max(expected or 0, name.last + 1)
        print("every object matches its checksum" if not problems else f"{problems} problem(s) found")
    return 1 if problems else 0


def _restore(args: argparse.Namespace) -> int:
    from .durability.restore import Target, restore
    from .durability.wiring import object_stores
    from .store import KekFile

    config = NodeConfig.from_env()
    objects, replicas = object_stores(config)
    source = objects if not args.from_replica else (replicas or (None,))[0]
    if source is None:
        print("percolate: --from-replica needs PERCOLATE_NODE_BACKUP_REPLICA_URL", file=sys.stderr)
        return 2
    kek = KekFile(config.kek_file, config.key_files_group_readable)
    previous = [KekFile(path, config.key_files_group_readable) for path in args.previous_kek]
    report = restore(source, config.tenant_id, kek, args.into, Target.parse(args.to), say=print,
                     previous_keks=previous)
    print(f"start the node with PERCOLATE_NODE_DATA_DIR={report.into} (the same KEK file) to serve that state")
    return 0


def _admin(args: argparse.Namespace) -> int:
    from .store import EncryptedStore, KekFile, ShreddedError

    if args.action == "snapshot":
        return _snapshot_now()
    if args.action == "status":
        return _replica_status()
    if args.action == "failover":
        return _failover(args.timeout)
    config = NodeConfig.from_env()
    if args.action == "shred" and not args.yes:
        print(SHRED_WARNING, file=sys.stderr)
        return 2
    if args.destroy_kek and args.action != "shred":
        print("percolate: --destroy-kek goes with shred only", file=sys.stderr)
        return 2
    kek = KekFile(config.kek_file, config.key_files_group_readable)
    try:
        store = EncryptedStore.open(config.data_dir, config.tenant_id, kek, create=False)
    except ShreddedError:
        if args.action != "shred" or not args.destroy_kek:
            raise
        _shred(config, None, destroy_kek=True)  # the keyring went in an earlier shred; now the KEK
        return 0
    try:
        if args.action == "verify":
            return _verify(store)
        if args.action == "purge":
            from .rem import MemoryRepository

            from . import graph_snapshot

            graph_snapshot.drop(store)  # it may hold embeddings of the purged chunks; the next start rebuilds it
            print(f"purged: {MemoryRepository(store).purge()}")
        elif args.action == "rotate-dek":
            store.rotate_dek()
            store.reseal(progress=lambda p: print(f"\rre-sealed {p.resealed} of {p.scanned} values", end=""))
            store.retire_old_deks()
            print("\nnew data key in use; old values re-sealed; old key retired")
        elif args.action == "rotate-kek":
            store.rotate_kek(KekFile(args.new_kek, config.key_files_group_readable))
            print(f"data keys re-wrapped with {args.new_kek}; point PERCOLATE_NODE_KEK_FILE at it")
        elif args.action == "shred":
            _shred(config, store, args.destroy_kek)
    finally:
        store.close()
    return 0


def _verify(store) -> int:
    """Read and open every value of the store; list what is damaged, named as records where possible."""
    from .rem import MemoryRepository
    from .rem.integrity import REPAIR, DamageReport, verify

    report = DamageReport()
    intact = verify(MemoryRepository(store), store, report)
    if not report:
        print(f"{intact} values read and authenticated: no damage")
        return 0
    for record in report.records():
        print(f"damaged: {record.describe()}")
    print(f"\n{report.summary()}; {intact} values intact. The node serves what is intact; {REPAIR}.")
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="percolate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the tenant node")
    serve.add_argument("--tenant")
    serve.add_argument("--data-dir", type=Path)
    serve.add_argument("--kek-file", type=Path)
    serve.add_argument("--port", type=int)
    serve.add_argument("--metrics-port", type=int)
    serve.add_argument("--reading-url")
    serve.set_defaults(run=_serve)
    keys = sub.add_parser("keys", help="key management")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    generate = keys_sub.add_parser("generate", help="make a new KEK file")
    generate.add_argument("file", type=Path)
    generate.set_defaults(run=_keys)
    token = keys_sub.add_parser("token", help="make a new bearer-token file (0600)")
    token.add_argument("file", type=Path)
    token.set_defaults(run=_token)
    ingest = sub.add_parser("ingest", help="ingest files and folders")
    ingest.add_argument("paths", nargs="+", type=Path)
    ingest.set_defaults(run=_ingest)
    search = sub.add_parser("search", help="search the memory")
    search.add_argument("query")
    search.add_argument("--mode", choices=("hybrid", "semantic", "keyword"), default="hybrid")
    search.add_argument("--limit", type=int, default=10)
    search.set_defaults(run=_search)
    sub.add_parser("stats", help="counts and sizes").set_defaults(run=_stats)
    admin = sub.add_parser("admin", help="offline maintenance on a stopped node's data directory")
    admin.add_argument("action", choices=("purge", "rotate-dek", "rotate-kek", "shred", "verify", "snapshot",
                                           "status", "failover"),
                       help="snapshot, status and failover run on the live node (through its API); the others "
                            "on a stopped one")
    admin.add_argument("--timeout", type=float, default=30.0,
                       help="failover: seconds the standby may take to confirm everything and take the lease")
    admin.add_argument("new_kek", nargs="?", type=Path, help="rotate-kek: the new KEK file")
    admin.add_argument("--yes", action="store_true", help="shred: confirm")
    admin.add_argument("--destroy-kek", action="store_true",
                       help="shred: also overwrite and delete the KEK file, so backups and exported keyrings die too")
    admin.set_defaults(run=_admin)
    backups = sub.add_parser("backups", help="what object storage holds for this tenant")
    backups.add_argument("action", choices=("list", "verify"))
    backups.set_defaults(run=_backups)
    restore = sub.add_parser("restore", help="rebuild a data directory from object storage for a moment")
    restore.add_argument("--to", required=True, help="latest, a log sequence number, or an RFC 3339 time")
    restore.add_argument("--into", required=True, type=Path, help="a new (or empty) folder")
    restore.add_argument("--from-replica", action="store_true", help="read the redundancy copy instead")
    restore.add_argument("--previous-kek", action="append", default=[], type=Path, metavar="FILE",
                         help="a KEK replaced since the snapshot (rotate-kek); repeatable")
    restore.set_defaults(run=_restore)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.run(args)
    except grpc.RpcError as err:
        print(f"percolate: {err.code().name}: {err.details()}", file=sys.stderr)
        return 1
    except (OSError, ValueError, StoreError) as err:
        print(f"percolate: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
