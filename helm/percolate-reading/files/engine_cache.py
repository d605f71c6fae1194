"""TensorRT engine cache of the reading pods: restore at start, publish what Triton built.

ONNX Runtime's TensorRT execution provider writes its engines (and, for dynamic shapes,
their shape profiles) into each gpu config's ``trt_engine_cache_path`` as it builds them,
at load or at the first inference of a new shape range. Building takes minutes per model,
so a fresh pod would spend them again on every start. This script keeps a shared copy on a
ReadWriteMany volume, one folder per GPU product (the volume's subPath), Triton release and
model repository version (``<release>/<key>/``), because an engine is only valid for the
GPU model, TensorRT and weights it was built with (ONNX Runtime's engine names hash the
graph's structure, not its weights).

Triton itself only ever sees a pod-local folder, so nothing reads a half-written engine:

- ``restore`` (an init container): creates every model's cache folder (ONNX Runtime makes
  only the last path component, and two instances creating it at once fail), and copies
  the newest complete snapshot for this key into it.
- ``sync`` (a sidecar): once every file has stood unchanged for ``--settle-seconds``,
  copies the pod's whole cache into a hidden folder on the shared volume and renames it
  into ``snapshots/`` (a rename is atomic, so a snapshot is complete or absent, and an
  engine always comes with the profile it was built for).

Folders of other keys unused for ``--keep-days`` are removed at restore. Standard library
only: it runs in the frontend image with ``python``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import socket
import sys
import time
from pathlib import Path

STATE = ".percolate-engine-cache.json"
"""In the pod-local cache: the key and what the shared copy already holds."""
CACHE_PATH = re.compile(r'key:\s*"trt_engine_cache_path"\s*value:\s*"([^"]+)"')
KEEP_SNAPSHOTS = 3


def repository_key(repository: Path) -> str:
    """A content hash of the model repository (every file's path and bytes): engines
    built for one set of weights and configs are never offered to another."""
    digest = hashlib.sha256()
    for path in sorted(p for p in repository.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(repository)).encode() + b"\0")
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def cache_folders(repository: Path, config_name: str, cache_path: str) -> list[str]:
    """Each model's ``trt_engine_cache_path`` relative to ``cache_path`` (the mount)."""
    folders = []
    for config in sorted(repository.glob(f"*/configs/{config_name}.pbtxt")):
        for path in CACHE_PATH.findall(config.read_text()):
            relative = os.path.relpath(path, cache_path)
            if relative.startswith(".."):
                raise SystemExit(f"{config}: trt_engine_cache_path {path} is not under {cache_path}, "
                                 "the folder the chart mounts for engines")
            folders.append(relative)
    return folders


def _files(folder: Path) -> dict[str, tuple[int, int]]:
    """relative path -> (size, mtime ns) of every file but the state file."""
    found = {}
    for path in folder.rglob("*"):
        if path.is_file() and path.name != STATE:
            stat = path.stat()
            found[str(path.relative_to(folder))] = (stat.st_size, stat.st_mtime_ns)
    return found


def _group_writable_folder(path: Path) -> None:
    """Triton runs as another user; the pod's fsGroup is what both share."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o2775)


def _copy_tree(source: Path, target: Path) -> None:
    for path in sorted(source.rglob("*")):
        destination = target / path.relative_to(source)
        if path.is_dir():
            _group_writable_folder(destination)
        elif path.is_file() and path.name != STATE:
            _group_writable_folder(destination.parent)
            shutil.copyfile(path, destination)
            destination.chmod(0o664)


def _snapshots(key_folder: Path) -> list[Path]:
    """Complete snapshots, newest first (names start with a sortable time stamp)."""
    folder = key_folder / "snapshots"
    return sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")),
                  reverse=True) if folder.is_dir() else []


def _prune(shared: Path, keep: Path, keep_days: float) -> None:
    """Remove ``<release>/<key>`` folders not used for ``keep_days``, and abandoned
    partial snapshots (a pod stopped while copying)."""
    horizon = time.time() - keep_days * 86400
    for key_folder in shared.glob("*/*"):
        if key_folder == keep or not key_folder.is_dir():
            continue
        used = key_folder / "last-used"
        if (used.stat().st_mtime if used.exists() else key_folder.stat().st_mtime) < horizon:
            shutil.rmtree(key_folder, ignore_errors=True)
            print(f"removed unused engine cache {key_folder.relative_to(shared)}")
    for partial in shared.glob("*/*/snapshots/.partial-*"):
        if partial.stat().st_mtime < time.time() - 86400:
            shutil.rmtree(partial, ignore_errors=True)


def restore(args: argparse.Namespace) -> int:
    local = Path(args.local)
    key = args.version or repository_key(Path(args.repository))
    for relative in cache_folders(Path(args.repository), args.config_name, args.cache_path):
        _group_writable_folder(local / relative)
    state = {"key": key, "release": args.release, "published": {}}
    if args.shared:
        shared = Path(args.shared)
        key_folder = shared / args.release / key
        _group_writable_folder(key_folder / "snapshots")
        (key_folder / "last-used").touch()
        for snapshot in _snapshots(key_folder):
            try:  # a snapshot may be pruned by another pod while we read it: take the next
                _copy_tree(snapshot, local)
            except OSError as err:
                print(f"snapshot {snapshot.name} unreadable ({err}); trying an older one", file=sys.stderr)
                continue
            state["published"] = _files(local)
            print(f"restored {len(state['published'])} engine files of {args.release}/{key} "
                  f"from snapshot {snapshot.name}")
            break
        else:
            print(f"no engines cached for {args.release}/{key}: Triton builds them")
        _prune(shared, key_folder, args.keep_days)
    (local / STATE).write_text(json.dumps(state))
    return 0


def publish(local: Path, shared: Path, state: dict, settle_seconds: float) -> bool:
    """One snapshot of ``local`` if it changed since the last one and has settled
    (``state`` is the restore's, kept in memory: the sidecar only reads ``local``)."""
    files = _files(local)
    if not files or files == state["published"]:
        return False
    newest = max(mtime for _, mtime in files.values()) / 1e9
    if time.time() - newest < settle_seconds:
        return False  # Triton may still be writing an engine
    key_folder = shared / state["release"] / state["key"]
    now = time.time_ns()
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now // 10**9)) + f".{now % 10**9:09d}Z"
    name = f"{stamp}-{socket.gethostname()}"
    partial = key_folder / "snapshots" / f".partial-{name}"
    shutil.rmtree(partial, ignore_errors=True)
    _copy_tree(local, partial)
    if _files(local) != files:  # changed while copying: next round
        shutil.rmtree(partial, ignore_errors=True)
        return False
    try:
        os.rename(partial, key_folder / "snapshots" / name)
    except OSError:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    (key_folder / "last-used").touch()
    state["published"] = files
    for old in _snapshots(key_folder)[KEEP_SNAPSHOTS:]:
        shutil.rmtree(old, ignore_errors=True)
    print(f"published {len(files)} engine files as {state['release']}/{state['key']}/snapshots/{name}")
    return True


def sync(args: argparse.Namespace) -> int:
    local, shared = Path(args.local), Path(args.shared)
    state = json.loads((local / STATE).read_text())
    while True:
        try:
            publish(local, shared, state, args.settle_seconds)
        except OSError as err:  # a full or unreachable volume must not stop the pod
            print(f"engine cache sync failed: {err}", file=sys.stderr)
        time.sleep(args.interval_seconds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    first = commands.add_parser("restore", help="init: create the cache folders, copy the newest snapshot in")
    first.add_argument("--repository", required=True, help="the model repository Triton serves")
    first.add_argument("--config-name", default="gpu", help="Triton's --model-config-name")
    first.add_argument("--cache-path", required=True, help="where Triton's container mounts --local")
    first.add_argument("--local", required=True, help="the pod-local engine folder")
    first.add_argument("--shared", default="", help="the shared volume's folder for this GPU product")
    first.add_argument("--release", default="", help="Triton's release (image tag): engines are per TensorRT")
    first.add_argument("--version", default="", help="the repository's version; empty: its content hash")
    first.add_argument("--keep-days", type=float, default=30)
    second = commands.add_parser("sync", help="sidecar: publish settled engines to the shared volume")
    second.add_argument("--local", required=True)
    second.add_argument("--shared", required=True)
    second.add_argument("--settle-seconds", type=float, default=30)
    second.add_argument("--interval-seconds", type=float, default=60)
    args = parser.parse_args()
    return restore(args) if args.command == "restore" else sync(args)


if __name__ == "__main__":
    sys.exit(main())
