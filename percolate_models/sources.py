"""Find packaged weights in installed distributions, without importing them."""
from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
from pathlib import Path

from .catalog import WeightsSource
from .errors import MissingPackageError

SETUP_HINT = "run `make setup` (or `pip install -e '.[export]'`) and build again"


def distribution_version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        raise MissingPackageError(
            f"package {distribution} (which carries model weights) is not installed",
            SETUP_HINT) from None


def locate(source: WeightsSource) -> Path:
    """Absolute path of ``source`` inside its installed package."""
    version = distribution_version(source.distribution)
    spec = importlib.util.find_spec(source.module)
    if spec is None or not spec.submodule_search_locations:
        raise MissingPackageError(
            f"{source.distribution} {version} is installed but module {source.module} is not "
            "importable", f"reinstall it: pip install --force-reinstall {source.distribution}=={version}")
    path = Path(next(iter(spec.submodule_search_locations))) / source.path
    if not path.exists():
        raise MissingPackageError(
            f"{path} is missing from {source.distribution} {version}",
            f"reinstall it: pip install --force-reinstall {source.distribution}=={version}")
    return path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_tree(path: Path) -> str:
    """Hash of a file, or of every file under a folder (names and contents)."""
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{file.relative_to(path).as_posix()}\0{sha256_file(file)}\n".encode())
    return digest.hexdigest()
