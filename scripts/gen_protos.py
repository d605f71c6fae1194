"""Generate the Python gRPC code in percolate/ from proto/ (the one way to do it).

    python scripts/gen_protos.py          # regenerate
    python scripts/gen_protos.py --check  # exit 1 if the committed code is stale
"""
from __future__ import annotations

import filecmp
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[1]
PROTO_DIR = ROOT / "proto"
OUT_PACKAGE = "percolate"


def generate(out: Path) -> list[Path]:
    protos = sorted(PROTO_DIR.rglob("*.proto"))
    well_known = Path(protoc.__file__).parent / "_proto"  # google/protobuf/*.proto
    args = ["grpc_tools.protoc", f"-I{PROTO_DIR}", f"-I{well_known}", f"--python_out={out}", f"--pyi_out={out}",
            f"--grpc_python_out={out}", *map(str, protos)]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed; see the message above")
    for folder in {p.parent for p in (out / OUT_PACKAGE).rglob("*_pb2.py")}:
        while folder != out:  # make every folder an importable package
            (folder / "__init__.py").touch()
            folder = folder.parent
    return sorted(p.relative_to(out) for p in (out / OUT_PACKAGE).rglob("*") if p.is_file())


def main() -> int:
    check = "--check" in sys.argv[1:]
    if not check:
        files = generate(ROOT)
        print(f"generated {len(files)} files under {ROOT / OUT_PACKAGE}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        committed = sorted(p.relative_to(ROOT) for p in (ROOT / OUT_PACKAGE).rglob("*")
                           if p.is_file() and "__pycache__" not in p.parts)
        stale = [str(f) for f in fresh if not (ROOT / f).is_file()
                 or not filecmp.cmp(Path(tmp) / f, ROOT / f, shallow=False)]
        stale += [str(f) for f in committed if f not in fresh]
    if stale:
        print("generated code is stale: " + ", ".join(stale)
              + "; run `python scripts/gen_protos.py` and commit", file=sys.stderr)
        return 1
    print("generated code matches proto/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
