"""Waiting on observable state and stopping child processes: what tests, benches and the demo
share (a busy 2-core machine is the norm, so deadlines are generous and nothing sleeps blind)."""
from __future__ import annotations

import subprocess
import time
from typing import Callable, TypeVar

T = TypeVar("T")


def wait_for(condition: Callable[[], T], what: str = "condition", deadline_s: float = 120.0, *,
             interval_s: float = 0.05, error: type[Exception] = AssertionError) -> T:
    """Poll ``condition`` until it returns something truthy (returned); raise ``error`` naming
    ``what`` when ``deadline_s`` passes first."""
    end = time.monotonic() + deadline_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > end:
            raise error(f"timed out after {deadline_s:.0f} s waiting for {what}")
        time.sleep(interval_s)


def stop_process(process: subprocess.Popen, timeout_s: float = 30.0) -> None:
    """SIGTERM (a clean stop), then SIGKILL if it has not ended within ``timeout_s``."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
