"""The reading service on a background event loop (demo, tests, benchmarks)."""
from __future__ import annotations

from percolate_common.background import BackgroundServer
from percolate_models.paths import ProjectPaths

from .config import FrontendConfig
from .server import ReadingServer


def EmbeddedReading(config: FrontendConfig, paths: ProjectPaths | None = None) -> BackgroundServer[ReadingServer]:
    """A ``ReadingServer`` started on its own loop thread; use as a context manager."""
    return BackgroundServer(ReadingServer(config, paths))
