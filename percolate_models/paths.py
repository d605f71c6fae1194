"""Where the model repository, the frontend's assets and the build cache live.

Read once from the environment; defaults are folders of the source checkout so that
``make demo`` and ``make test`` need no configuration.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class ProjectPaths:
    model_repository: Path
    """Triton model repository: config.pbtxt and model.py committed, weights built."""
    assets: Path
    """Files the frontend needs beside the repository (tokenizer, OCR keys, manifest)."""
    cache: Path
    """Content-addressed build outputs and Triton's backend folder."""

    @property
    def manifest(self) -> Path:
        return self.assets / "manifest.json"

    def build_entry(self, model: str) -> Path:
        """The build cache folder of ``model``'s installed build (every variant's ``<variant>.onnx``),
        as the manifest's cache key names it."""
        import json

        key = json.loads(self.manifest.read_text())["models"][model]["cache_key"]
        return self.cache / "models" / model / key

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "ProjectPaths":
        env = os.environ if env is None else env

        def path(name: str, default: Path) -> Path:
            return Path(env.get(name) or default).resolve()

        return cls(
            model_repository=path("PERCOLATE_MODEL_REPOSITORY", PROJECT_ROOT / "model_repository"),
            assets=path("PERCOLATE_MODEL_ASSETS", PROJECT_ROOT / "model_assets"),
            cache=path("PERCOLATE_CACHE_DIR", PROJECT_ROOT / ".cache"),
        )
