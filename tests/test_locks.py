"""requirements/*.lock agree with pyproject.toml: every pin is locked at its version, with hashes.

The locks are what setup.sh and the Dockerfiles install (``--require-hashes``); a pin changed
in pyproject.toml without rerunning ``scripts/lock.sh`` fails here.
"""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LOCKS = {  # lock -> extras it is compiled from (scripts/lock.sh)
    "dev.lock": ("dev",),
    "node.lock": ("node",),
    "reading.lock": ("reading",),
    "export.lock": ("reading", "export"),
}
PIN = re.compile(r"^([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==([^;\s]+)")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins(requirements: list[str], extras_table: dict, seen: set[str]) -> dict[str, str]:
    """Pinned name -> version, following ``percolate[...]`` self-references."""
    pins: dict[str, str] = {}
    for requirement in requirements:
        self_ref = re.match(r"^percolate\[([^\]]+)\]$", requirement)
        if self_ref:
            for extra in self_ref.group(1).split(","):
                if extra not in seen:
                    seen.add(extra)
                    pins.update(_pins(extras_table[extra], extras_table, seen))
            continue
        match = PIN.match(requirement)
        assert match, f"pyproject.toml: {requirement!r} is not pinned with =="
        pins[_canonical(match.group(1))] = match.group(2)
    return pins


def expected_pins(extras: tuple[str, ...]) -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    table = project["optional-dependencies"]
    pins = _pins(project["dependencies"], table, set())
    for extra in extras:
        pins.update(_pins(table[extra], table, {extra}))
    pins.update(_pins([line for line in (ROOT / "requirements/build.in").read_text().splitlines()
                       if line and not line.startswith("#")], table, set()))
    return pins


def parse_lock(text: str) -> dict[str, tuple[str, list[str]]]:
    """name -> (version, hashes) of a pip-style lock with ``--hash`` continuation lines."""
    entries: dict[str, tuple[str, list[str]]] = {}
    current = None
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("--hash="):
            assert current, f"hash without a requirement: {line}"
            entries[current][1].append(stripped.removeprefix("--hash=").rstrip(" \\"))
            continue
        match = PIN.match(stripped)
        assert match, f"unpinned line in lock: {line}"
        current = _canonical(match.group(1))
        entries[current] = (match.group(2), [])
    return entries


@pytest.mark.parametrize("lock", sorted(LOCKS))
def test_lock_pins_every_dependency_at_pyproject_version_with_hashes(lock):
    entries = parse_lock((ROOT / "requirements" / lock).read_text())
    for name, (version, hashes) in entries.items():
        assert hashes and all(h.startswith("sha256:") for h in hashes), f"{lock}: {name} has no sha256 hash"
    wrong = {name: (version, entries.get(name, ("missing",))[0])
             for name, version in expected_pins(LOCKS[lock]).items()
             if entries.get(name, ("missing",))[0].split("+")[0] != version}
    assert wrong == {}, f"{lock} disagrees with pyproject.toml (pin, lock): run scripts/lock.sh"


def test_images_lock_only_what_their_process_imports():
    node = parse_lock((ROOT / "requirements/node.lock").read_text())
    reading = parse_lock((ROOT / "requirements/reading.lock").read_text())
    heavy = {"torch", "onnxruntime", "nvidia-pytriton", "opencv-python-headless", "av", "transformers"}
    assert heavy & set(node) == set()
    assert {"torch", "transformers", "nvidia-pytriton"} & set(reading) == set()
    assert {"rocksdict", "usearch"} & set(reading) == set()


def test_a_stale_lock_is_detected(tmp_path):
    """The check above can fail: a lock whose pin differs from pyproject.toml."""
    text = (ROOT / "requirements/node.lock").read_text().replace("rocksdict==0.3.29", "rocksdict==0.3.28")
    entries = parse_lock(text)
    assert entries["rocksdict"][0] == "0.3.28" != expected_pins(("node",))["rocksdict"]
