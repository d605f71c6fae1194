"""Fail the suite when it reads anything beside the checkout (a newcomer has only the clone).

An audit hook (PEP 578) watches every ``open``, directory listing and subprocess start in
the test process. A path inside something that already lay beside the checkout when the
session started (notes or data kept next to the clone, a sibling clone) is refused with ``PermissionError`` at
once, so the offending test fails where it happens, and it is recorded, so the session
fails even if the caller swallowed the error. What the session creates itself (temporary
folders, even when the checkout sits in ``/tmp``), the Python installation and hidden tool
folders (``~/.cache`` when the checkout sits in a home folder) stay allowed.
``PERCOLATE_HERMETIC=0`` turns the guard off for a local experiment; CI never sets it.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PARENT = os.path.normpath(str(ROOT.parent))

violations: list[str] = []
_active = False
_siblings: frozenset[str] = frozenset()
_ALLOWED = tuple(os.path.normpath(r) for r in {sys.prefix, sys.base_prefix, sys.exec_prefix})


def existing_siblings() -> frozenset[str]:
    """What lies beside the checkout now (hidden entries and pytest's own folders excepted)."""
    try:
        names = os.listdir(PARENT)
    except OSError:
        return frozenset()
    return frozenset(n for n in names if n != ROOT.name and not n.startswith((".", "pytest-of-")))


def outside_checkout(path, siblings: frozenset[str] | None = None) -> str | None:
    """The normalised path when it lies inside one of ``siblings`` of the checkout, else None."""
    siblings = _siblings if siblings is None else siblings
    if isinstance(path, int):
        return None
    try:
        text = os.fsdecode(os.fspath(path))
    except TypeError:
        return None
    full = os.path.normpath(os.path.abspath(text))
    if not full.startswith(PARENT + os.sep):
        return None  # elsewhere on the system (/usr, /etc, /proc ...): not the newcomer's problem
    if any(full == root or full.startswith(root + os.sep) for root in _ALLOWED):
        return None
    first = full[len(PARENT) + 1:].split(os.sep, 1)[0]
    return full if first in siblings else None


def _hook(event: str, args: tuple) -> None:
    if not _active:
        return
    candidates = ()
    if event in ("open", "os.listdir", "os.scandir"):
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
            test = os.environ.get("PYTEST_CURRENT_TEST", "outside any test").rsplit(" (", 1)[0]
            message = (f"hermetic test guard: {event} of {bad}, beside the checkout {ROOT}, in {test}; "
                       f"carry the file in the repository or generate it in the test")
            violations.append(message)
            raise PermissionError(message)


def install() -> None:
    """Start guarding (idempotent; audit hooks cannot be removed, so this only flips a flag)."""
    global _active, _siblings
    if os.environ.get("PERCOLATE_HERMETIC", "1") == "0":
        return
    _siblings = existing_siblings()
    if not getattr(install, "_hooked", False):
        sys.addaudithook(_hook)
        install._hooked = True
    _active = True
