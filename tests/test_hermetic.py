"""The suite reads only what the clone carries: the guard in tests/hermetic.py, and the sources."""
from __future__ import annotations

import subprocess
import sys

import pytest

from tests import hermetic


def test_guard_names_paths_inside_what_lies_beside_the_checkout():
    siblings = frozenset({"notes-next-door"})
    beside = hermetic.ROOT.parent / "notes-next-door" / "data" / "jfk.flac"
    assert hermetic.outside_checkout(beside, siblings) == str(beside)
    assert hermetic.outside_checkout(hermetic.ROOT / ".." / "notes-next-door" / "x", siblings) is not None
    assert hermetic.outside_checkout(hermetic.ROOT / "data" / "jfk.flac", siblings) is None
    assert hermetic.outside_checkout(hermetic.ROOT.parent / "made-by-this-session", siblings) is None
    assert hermetic.outside_checkout("/usr/lib/x", siblings) is None


def test_guard_refuses_an_existing_sibling_live(tmp_path):
    """The hook itself, on whatever lies beside this checkout (a made one when nothing does)."""
    present = sorted(hermetic._siblings)
    if not present:  # a lone clone: plant a sibling and let the guard know it was there
        made = hermetic.ROOT.parent / f"hermetic-probe-{tmp_path.name}"
        made.mkdir()
        hermetic._siblings = frozenset({made.name})
        present = [made.name]
    else:
        made = None
    target = hermetic.ROOT.parent / present[0] / "anything"
    before = len(hermetic.violations)
    try:
        with pytest.raises(PermissionError, match="beside the checkout"):
            open(target, "rb")
        with pytest.raises(PermissionError, match="beside the checkout"):
            subprocess.run([sys.executable, "-c", "pass", str(target)], check=False)
        assert len(hermetic.violations) == before + 2
    finally:
        del hermetic.violations[before:]  # expected here; any other violation fails the session
        if made is not None:
            hermetic._siblings = frozenset()
            made.rmdir()


def test_guard_allows_the_checkout_and_temporary_files(tmp_path):
    (tmp_path / "x").write_bytes(b"1")
    assert (tmp_path / "x").read_bytes() == b"1"
    assert (hermetic.ROOT / "data" / "jfk.flac").read_bytes()[:4] == b"fLaC"


def test_no_source_names_a_path_beside_the_checkout():
    """Code, scripts and tests never build a path that leaves the checkout upwards (a relative
    ``../name`` or the checkout's parent joined with a name); the docs may mention such folders."""
    import re

    leaving = re.compile(r"""["']\.\./[A-Za-z][\w-]{2,}|ROOT\.parent\s*/|parents\[\d\]\.parent\s*/""")
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
        if leaving.search(text):
            offenders.append(name)
    assert offenders == []
