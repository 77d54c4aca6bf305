"""Where the metrics live: the multiprocess folder, and the registry that reads it back
(for /metrics, the workers' metrics port and `vaxline run`'s status line).

In multiprocess mode (PROMETHEUS_MULTIPROC_DIR set by the parent before any
child started) every process writes its own files, and readers aggregate
them; otherwise the default registry is the whole truth.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from prometheus_client import REGISTRY, CollectorRegistry, multiprocess

ENV = "PROMETHEUS_MULTIPROC_DIR"


def prepare_multiprocess_dir(folder: Path) -> None:
    """Wipe and point every process started from now on at `folder`."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    os.environ[ENV] = str(folder)


def registry() -> CollectorRegistry:
    if os.environ.get(ENV):
        aggregated = CollectorRegistry()
        multiprocess.MultiProcessCollector(aggregated)
        return aggregated
    return REGISTRY


def process_exited(pid: int) -> None:
    """Drop a dead process's live gauges (open connections)."""
    if os.environ.get(ENV):
        multiprocess.mark_process_dead(pid)
