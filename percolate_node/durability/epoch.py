"""The node's epoch outside a lease: a small file beside the database.

The epoch fences writes to the object store (segments go under ``log/<epoch>/``, and an
agent whose epoch is older than one already there refuses to ship). With a lease (the HA
work) the lease's generation is the epoch. Without one it starts at 1, and a restore that
forks a new timeline from an earlier point writes the next epoch, so the original node's
later records can never be mistaken for the restored one's.
"""
from __future__ import annotations

import os
from pathlib import Path

FILE = "percolate-epoch"


def read_epoch(data_dir: Path) -> int:
    try:
        return int((Path(data_dir) / FILE).read_text().strip() or 1)
    except FileNotFoundError:
        return 1
    except ValueError:
        raise ValueError(f"{Path(data_dir) / FILE} does not hold an epoch number") from None


def write_epoch(data_dir: Path, epoch: int) -> None:
    path = Path(data_dir) / FILE
    temp = path.with_name(f".{FILE}.tmp-{os.getpid()}")
    with open(temp, "w") as handle:
        handle.write(f"{epoch}\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, path)
