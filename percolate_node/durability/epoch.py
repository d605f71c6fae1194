"""The node's epoch outside a lease, and where its timeline starts: a small file beside the database.

The epoch fences writes to the object store (segments go under ``log/<epoch>/``, and an
agent whose epoch is older than one already there refuses to ship). With a lease (HA) the
lease's generation is the epoch. Without one it starts at 1, and a restore that forks a
new timeline from an earlier point writes the next epoch and the first LSN that is its own
(``start_lsn``): the agent publishes both as ``tenants/<t>/timelines/<epoch>`` so that the
original node's later records can never be mistaken for the restored one's, even after
retention has removed log segments.

File format: ``<epoch>`` or ``<epoch> <start_lsn>`` on one line.
"""
from __future__ import annotations

import os
from pathlib import Path

from percolate_common.files import sync_folder

FILE = "percolate-epoch"


def read_timeline(data_dir: Path) -> tuple[int, int | None]:
    """(epoch, first LSN of this timeline or None when not forked by a restore)."""
    path = Path(data_dir) / FILE
    try:
        fields = path.read_text().split()
    except FileNotFoundError:
        return 1, None
    try:
        return int(fields[0]), (int(fields[1]) if len(fields) > 1 else None)
    except (ValueError, IndexError):
        raise ValueError(f"{path} does not hold an epoch number") from None


def read_epoch(data_dir: Path) -> int:
    return read_timeline(data_dir)[0]


def write_epoch(data_dir: Path, epoch: int, start_lsn: int | None = None) -> None:
    path = Path(data_dir) / FILE
    temp = path.with_name(f".{FILE}.tmp-{os.getpid()}")
    with open(temp, "w") as handle:
        handle.write(f"{epoch}\n" if start_lsn is None else f"{epoch} {start_lsn}\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, path)
    sync_folder(path.parent)  # the fencing token: the rename itself must survive a crash
