"""The server's own metrics, sampled through the run; memory of its processes; the report's series."""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from pathlib import Path

from monitoring import names
from monitoring.status import Snapshot, Unreachable, quantile, scrape

MiB = 1024 * 1024


# -- sampling the server ----------------------------------------------------------

@dataclasses.dataclass
class Sample:
    at: float  # epoch
    snapshot: Snapshot
    ingest_rss_mib: dict[str, float]
    redis_memory_mib: float | None


class Sampler(threading.Thread):
    """Reads ingest's /metrics, the ingest processes' memory and Redis's every `every` seconds."""

    def __init__(self, url: str, stack, every: float) -> None:
        super().__init__(daemon=True, name="sampler")
        self.url, self.stack, self.every = url, stack, every
        self.samples: list[Sample] = []
        self._done = threading.Event()

    def run(self) -> None:
        import redis

        client = redis.Redis.from_url(self.stack.settings.redis_url, socket_timeout=5)
        while not self._done.is_set():
            self.sample_once(client)
            self._done.wait(self.every)
        client.close()

    def sample_once(self, client) -> None:
        try:
            snapshot = scrape([self.url])
        except Unreachable:
            return
        memory = None
        with contextlib.suppress(Exception):
            memory = client.info("memory")["used_memory"] / MiB
        rss = {name: rss_mib(pid, "VmRSS") for name, pid in self.stack.ingest_pids().items()}
        self.samples.append(Sample(time.time(), snapshot, rss, memory))

    def stop(self) -> None:
        self._done.set()
        self.join(timeout=30)


def rss_mib(pid: int, field: str) -> float:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    return 0.0


def series(samples: list[Sample], t0: float) -> list[dict]:
    """The samples as the report's rows: rates and percentiles over each interval."""
    rows = []
    for before, after in zip(samples, samples[1:]):
        b, a = before.snapshot, after.snapshot
        seconds = max(after.at - before.at, 1e-9)

        def rate(name: str) -> float:
            return max(0.0, a.value(name) - b.value(name)) / seconds

        rows.append({
            "t": round(after.at - t0, 1),
            "accepted_per_s": rate(names.DOSES_ACCEPTED),
            "persisted_per_s": max(0.0, a.persisted() - b.persisted()) / seconds,
            "certified_per_s": rate(names.CERTIFICATES_ISSUED),
            "requests_per_s": rate(names.HTTP_REQUESTS),
            "rejected_503_per_s": rate(names.BACKPRESSURE_REJECTIONS),
            "connections": a.value(names.OPEN_CONNECTIONS),
            "backlog": a.value(names.STREAM_BACKLOG),
            "certify_backlog": a.value(names.CERTIFY_BACKLOG),
            "freshness_persisted_p99": quantile_between(b.freshness, a.freshness, "persisted"),
            "freshness_certified_p99": quantile_between(b.freshness, a.freshness, "certified"),
            "ingest_p99": quantile_between(b.latency, a.latency, "/v1/doses"),
            "ingest_rss_mib_max": max(after.ingest_rss_mib.values(), default=None),
            "redis_memory_mib": after.redis_memory_mib,
        })
    return rows


def quantile_between(before: dict, after: dict, key: str, q: float = 0.99) -> float | None:
    """q over the observations between two readings only (None when there were none)."""
    b, a = before.get(key, {}), after.get(key, {})
    if not a or max(a.values()) - max(b.values(), default=0.0) <= 0:
        return None
    return quantile(q, b, a)


def share_within(before: dict, after: dict, key: str, limit: float) -> tuple[float, float]:
    """(observations between the readings, the share of them at or under `limit`, a bucket bound)."""
    b, a = before.get(key, {}), after.get(key, {})
    total = a.get(float("inf"), 0.0) - b.get(float("inf"), 0.0)
    under = a.get(limit, 0.0) - b.get(limit, 0.0)
    return total, (under / total if total else 1.0)
