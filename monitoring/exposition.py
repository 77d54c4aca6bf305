"""Reading the metrics back: for /metrics, and for the terminal status line.

In multiprocess mode (PROMETHEUS_MULTIPROC_DIR set by the parent before any
child started) every process writes its own files, and readers aggregate
them; otherwise the default registry is the whole truth.
"""

from __future__ import annotations

import dataclasses
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


@dataclasses.dataclass(frozen=True)
class Totals:
    accepted: float
    persisted: float
    backlog: float
    dead_letters: float


def totals(source: CollectorRegistry) -> Totals:
    def value(name: str) -> float:
        return sum(s.value for m in source.collect() for s in m.samples if s.name == name)

    return Totals(
        accepted=value("vaxline_doses_accepted_total"),
        persisted=value("vaxline_doses_inserted_total") + value("vaxline_doses_duplicate_total"),
        backlog=value("vaxline_stream_backlog"),
        dead_letters=value("vaxline_dead_letters_total"),
    )


def status_line(before: Totals, after: Totals, seconds: float) -> str:
    rate = lambda a, b: (b - a) / seconds if seconds > 0 else 0.0  # noqa: E731
    return (
        f"accepted {after.accepted:,.0f} ({rate(before.accepted, after.accepted):,.0f}/s)  "
        f"persisted {after.persisted:,.0f} ({rate(before.persisted, after.persisted):,.0f}/s)  "
        f"backlog {after.backlog:,.0f} entries  dead letters {after.dead_letters:,.0f}"
    )
