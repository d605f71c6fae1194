"""The tenant key-encryption key (KEK): 32 random bytes in a file outside the database."""
from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from percolate_node.store.errors import StoreError

KEK_BYTES = 32
log = logging.getLogger(__name__)


def load_kek(path: Path | str) -> bytes:
    """Read a KEK file, failing with a message that says what is wrong with it."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
        kek = path.read_bytes()
    except FileNotFoundError:
        raise StoreError(f"KEK file {path} does not exist") from None
    except OSError as error:
        raise StoreError(f"cannot read KEK file {path}: {error.strerror}") from None
    if len(kek) != KEK_BYTES:
        raise StoreError(f"KEK file {path} holds {len(kek)} bytes; a KEK is exactly {KEK_BYTES} random bytes")
    if mode & (stat.S_IROTH | stat.S_IWOTH):
        log.warning("KEK file %s is readable or writable by every user (mode %03o); chmod 600 it",
                    path, stat.S_IMODE(mode))
    return kek


def generate_kek(path: Path | str) -> bytes:
    """Write a new random KEK to ``path`` (mode 0600), never over an existing file."""
    path = Path(path)
    kek = os.urandom(KEK_BYTES)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise StoreError(f"KEK file {path} already exists; refusing to overwrite a key") from None
    except OSError as error:
        raise StoreError(f"cannot create KEK file {path}: {error.strerror}") from None
    with os.fdopen(fd, "wb") as file:
        file.write(kek)
        file.flush()
        os.fsync(file.fileno())
    return kek
