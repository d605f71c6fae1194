"""Fail the suite when it reads anything beside the checkout (a newcomer has only the clone).

An audit hook (PEP 578) watches every ``open``, directory listing and subprocess
start in the test process. A path under the checkout's parent folder but outside the
checkout (``../shared/...``, a sibling clone) is refused with ``PermissionError`` at
once, so the offending test fails where it happens, and it is recorded, so the
session fails even if the caller swallowed the error. Temporary folders, the Python
installation and hidden tool folders (``~/.cache`` when the checkout sits in a home
folder) stay allowed. ``PERCOLATE_HERMETIC=0`` turns the guard off for a local
experiment; CI never sets it.
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

violations: list[str] = []
_active = False


def _allowed_roots() -> tuple[str, ...]:
    roots = {str(ROOT), tempfile.gettempdir(), sys.prefix, sys.base_prefix, sys.exec_prefix}
    return tuple(os.path.normpath(r) for r in roots)


_ALLOWED = _allowed_roots()
_PARENT = os.path.normpath(str(ROOT.parent))


def outside_checkout(path) -> str | None:
    """The normalised path when it lies beside the checkout (forbidden), else None."""
    if isinstance(path, int):
        return None
    try:
        text = os.fsdecode(os.fspath(path))
    except TypeError:
        return None
    full = os.path.normpath(os.path.abspath(text))
    if full == _PARENT or not full.startswith(_PARENT + os.sep):
        return None  # elsewhere on the system (/usr, /etc, /proc ...): not the newcomer's problem
    if any(full == root or full.startswith(root + os.sep) for root in _ALLOWED):
        return None
    first = full[len(_PARENT) + 1:].split(os.sep, 1)[0]
    if first.startswith("."):
        return None  # ~/.cache, ~/.npm ... when the checkout sits in a home folder
    return full


def _hook(event: str, args: tuple) -> None:
    if not _active:
        return
    candidates = ()
    if event == "open":
        candidates = args[:1]
    elif event in ("os.listdir", "os.scandir"):
        candidates = args[:1]
    elif event == "subprocess.Popen":
        executable, argv, cwd = args[0], args[1], args[2]
        argv = [argv] if isinstance(argv, (str, bytes, os.PathLike)) else list(argv or [])
        candidates = [executable, cwd, *argv]
    for candidate in candidates:
        if candidate is None:
            continue
        bad = outside_checkout(candidate)
        if bad is not None:
            message = (f"hermetic test guard: {event} of {bad}, outside the checkout {ROOT}; "
                       f"carry the file in the repository or generate it in the test")
            violations.append(message)
            raise PermissionError(message)


def install() -> None:
    """Start guarding (idempotent; audit hooks cannot be removed, so this only flips a flag)."""
    global _active
    if os.environ.get("PERCOLATE_HERMETIC", "1") == "0":
        return
    if not getattr(install, "_hooked", False):
        sys.addaudithook(_hook)
        install._hooked = True
    _active = True
