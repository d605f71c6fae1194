"""The tenant key-encryption key (KEK): 32 random bytes in a file outside the database.

Key files (the KEK, the node's bearer token) are read through ``read_secret_file``,
which refuses a file another user owns or one with any group or other access: a
key that others could read or replace is not a key. ``allow_group_read`` (the
``PERCOLATE_NODE_KEY_FILES_GROUP_READABLE`` setting) lets group read through, for
mounts that can only be shared with a group (a Kubernetes Secret with ``fsGroup``:
root-owned, mode 0440); other access is refused all the same.
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from percolate_node.store.errors import StoreError

KEK_BYTES = 32
GROUP_READABLE_SETTING = "PERCOLATE_NODE_KEY_FILES_GROUP_READABLE"


def read_secret_file(path: Path | str, what: str, allow_group_read: bool = False, max_bytes: int = 4096) -> bytes:
    """The bytes of a key file, after checking who owns it and who else may use it.

    The checks are made on the open file (fstat), so a file swapped in between cannot
    pass them; symlinks are followed (Kubernetes mounts secrets through them).
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise StoreError(f"{what} {path} does not exist") from None
    except OSError as error:
        raise StoreError(f"cannot read {what} {path}: {error.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise StoreError(f"{what} {path} is not a regular file")
        if info.st_uid not in (os.geteuid(), 0):
            raise StoreError(f"{what} {path} belongs to uid {info.st_uid}, not to this user "
                             f"({os.geteuid()}) or root: another user could replace the key")
        mode = stat.S_IMODE(info.st_mode)
        shared = mode & (0o037 if allow_group_read else 0o077)
        if shared:
            allowed = "group read is allowed, nothing else" if allow_group_read else (
                f"chmod 600 it, or set {GROUP_READABLE_SETTING}=1 where only a group-readable mount is possible")
            raise StoreError(f"{what} {path} is open to other users (mode {mode:04o}): {allowed}")
        with os.fdopen(os.dup(fd), "rb") as file:
            data = file.read(max_bytes + 1)
    except OSError as error:
        raise StoreError(f"cannot read {what} {path}: {error.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise StoreError(f"{what} {path} is over {max_bytes} bytes: not a key file")
    return data


def load_kek(path: Path | str, allow_group_read: bool = False) -> bytes:
    """Read a KEK file, failing with a message that says what is wrong with it."""
    kek = read_secret_file(path, "KEK file", allow_group_read)
    if len(kek) != KEK_BYTES:
        raise StoreError(f"KEK file {path} holds {len(kek)} bytes; a KEK is exactly {KEK_BYTES} random bytes")
    return kek


@dataclass(frozen=True)
class KekFile:
    """Where the KEK is: the store reads it only when it needs it (open, DEK rotation,
    KEK rotation), so the key is not held in memory between those moments."""

    path: Path
    allow_group_read: bool = False

    def read(self) -> bytes:
        return load_kek(self.path, self.allow_group_read)


def kek_source(kek: bytes | Path | str | KekFile) -> bytes | KekFile:
    """A KEK as the store keeps it: a path becomes a ``KekFile`` (read when needed), a key or a
    ``KekFile`` stays as it is."""
    return KekFile(Path(kek)) if isinstance(kek, (str, Path)) else kek


def kek_bytes(source: bytes | Path | str | KekFile) -> bytes:
    """The key itself, read now where ``source`` names a file."""
    source = kek_source(source)
    return source.read() if isinstance(source, KekFile) else source


def generate_kek(path: Path | str) -> bytes:
    """Write a new random KEK to ``path`` (mode 0600), never over an existing file."""
    path = Path(path)
    kek = os.urandom(KEK_BYTES)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        raise StoreError(f"KEK file {path} already exists; refusing to overwrite a key") from None
    except OSError as error:
        raise StoreError(f"cannot create KEK file {path}: {error.strerror}") from None
    with os.fdopen(fd, "wb") as file:
        file.write(kek)
        file.flush()
        os.fsync(file.fileno())
    return kek


def destroy_kek_file(path: Path | str) -> None:
    """Overwrite the KEK file with zeros, fsync, and delete it (``percolate admin shred --destroy-kek``).

    On copy-on-write or flash storage the old blocks may survive the overwrite, and any
    copy elsewhere (a secret store, a backup of this folder) is untouched: the caller says so.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as error:
        raise StoreError(f"cannot destroy KEK file {path}: {error.strerror}") from None
    try:
        size = os.fstat(fd).st_size
        os.write(fd, bytes(max(size, KEK_BYTES)))
        os.fsync(fd)
    finally:
        os.close(fd)
    path.unlink()
    from percolate_common.files import sync_folder

    sync_folder(path.parent)
