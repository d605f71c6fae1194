"""The suite reads only what the clone carries: the guard in tests/hermetic.py, and the sources."""
from __future__ import annotations

import subprocess
import sys

import pytest

from tests import hermetic


def test_guard_refuses_a_file_beside_the_checkout():
    sibling = hermetic.ROOT.parent / "shared" / "data" / "jfk.flac"
    before = len(hermetic.violations)
    with pytest.raises(PermissionError, match="outside the checkout"):
        open(sibling, "rb")
    with pytest.raises(PermissionError, match="outside the checkout"):
        subprocess.run([sys.executable, "-c", "pass", str(sibling)], check=False)
    assert len(hermetic.violations) == before + 2
    del hermetic.violations[before:]  # expected here; any other violation fails the session


def test_guard_allows_the_checkout_and_temporary_files(tmp_path):
    (tmp_path / "x").write_bytes(b"1")
    assert (tmp_path / "x").read_bytes() == b"1"
    assert (hermetic.ROOT / "data" / "jfk.flac").read_bytes()[:4] == b"fLaC"
    assert hermetic.outside_checkout(hermetic.ROOT / "pyproject.toml") is None
    assert hermetic.outside_checkout(hermetic.ROOT / ".." / "shared" / "x") is not None


def test_no_source_names_a_path_beside_the_checkout():
    """Code, scripts and tests never point at ../shared (the docs may mention it)."""
    tracked = subprocess.run(["git", "ls-files"], cwd=hermetic.ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    offenders = []
    for name in tracked:
        if not name.endswith((".py", ".sh", ".js", ".yaml", ".yml", ".toml", ".tpl")) and name not in (
                "Makefile", ".ci/run"):
            continue
        if name in ("tests/test_hermetic.py", "tests/hermetic.py"):
            continue
        text = (hermetic.ROOT / name).read_text(errors="replace")
        if "../shared" in text or '"shared" / "data"' in text or "parent / \"shared\"" in text:
            offenders.append(name)
    assert offenders == []
