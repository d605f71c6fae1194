"""Generated gRPC code is what proto/ generates (one way to regenerate it, checked here)."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def check(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(root / "scripts" / "gen_protos.py"), "--check"],
                          capture_output=True, text=True, timeout=120)


def test_generated_code_is_current():
    done = check(ROOT)
    assert done.returncode == 0, done.stderr


def test_a_changed_proto_is_reported_stale(tmp_path):
    for part in ("scripts", "proto", "percolate"):
        shutil.copytree(ROOT / part, tmp_path / part, ignore=shutil.ignore_patterns("__pycache__"))
    proto = tmp_path / "proto" / "percolate" / "reading" / "v1" / "reading.proto"
    proto.write_text(proto.read_text().replace("message GetInfoRequest {}",
                                               "message GetInfoRequest { bool verbose = 1; }"))
    done = check(tmp_path)
    assert done.returncode == 1
    assert "stale" in done.stderr and "reading_pb2.py" in done.stderr
