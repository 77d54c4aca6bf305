"""The terminal picture of a deployment, read from its metrics.

`vaxline status` scrapes one or more /metrics endpoints (ingest, and the
workers' own port when they run apart); `vaxline run`'s live line reads the
same numbers from its local registry. Rates and freshness percentiles come
from the difference between two readings, as Prometheus's `rate()` and
`histogram_quantile()` would compute them.
"""

from __future__ import annotations

import dataclasses
import math
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Iterable

from prometheus_client.parser import text_string_to_metric_families

from . import names


class Unreachable(Exception):
    """No metrics endpoint answered."""


@dataclasses.dataclass
class Snapshot:
    at: float
    totals: dict[str, float]  # sample name -> sum over labels and endpoints
    by_shard: dict[str, dict[str, float]]  # gauge name -> shard -> value
    freshness: dict[str, dict[float, float]]  # stage -> le -> cumulative count
    latency: dict[str, dict[float, float]] = dataclasses.field(default_factory=dict)  # route -> le -> count

    @classmethod
    def from_families(cls, families: Iterable, at: float | None = None) -> "Snapshot":
        totals: dict[str, float] = defaultdict(float)
        by_shard: dict[str, dict[str, float]] = defaultdict(dict)
        freshness: dict[str, dict[float, float]] = defaultdict(lambda: defaultdict(float))
        latency: dict[str, dict[float, float]] = defaultdict(lambda: defaultdict(float))
        for family in families:
            for sample in family.samples:
                totals[sample.name] += sample.value
                if "shard" in sample.labels:
                    shard = sample.labels["shard"]
                    by_shard[sample.name][shard] = max(by_shard[sample.name].get(shard, 0.0), sample.value)
                if sample.name == names.FRESHNESS + "_bucket":
                    freshness[sample.labels["stage"]][float(sample.labels["le"])] += sample.value
                elif sample.name == names.HTTP_LATENCY + "_bucket":
                    latency[sample.labels["route"]][float(sample.labels["le"])] += sample.value
        return cls(at or time.monotonic(), dict(totals), dict(by_shard), {k: dict(v) for k, v in freshness.items()},
                   {k: dict(v) for k, v in latency.items()})

    def value(self, name: str) -> float:
        return self.totals.get(name, 0.0)

    def persisted(self) -> float:
        return self.value(names.DOSES_INSERTED) + self.value(names.DOSES_DUPLICATE)


def scrape(urls: list[str]) -> Snapshot:
    families = []
    errors = []
    for url in urls:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                families.extend(text_string_to_metric_families(response.read().decode()))
        except (urllib.error.URLError, OSError) as e:
            errors.append(f"{url}: {e}")
    if errors and not families:
        raise Unreachable("; ".join(errors))
    return Snapshot.from_families(families)


def quantile(q: float, before: dict[float, float], after: dict[float, float]) -> float | None:
    """histogram_quantile over the observations between two readings (all of them if none came since)."""
    buckets = sorted(after)
    counts = [after[le] - before.get(le, 0.0) for le in buckets]
    if not counts or counts[-1] <= 0:
        counts = [after[le] for le in buckets]
    if not counts or counts[-1] <= 0:
        return None
    rank = q * counts[-1]
    lower_bound, lower_count = 0.0, 0.0
    for le, count in zip(buckets, counts):
        if count >= rank:
            if math.isinf(le):
                return lower_bound
            return lower_bound + (le - lower_bound) * (rank - lower_count) / max(count - lower_count, 1e-9)
        lower_bound, lower_count = le, count
    return None


def render(before: Snapshot, after: Snapshot) -> str:
    seconds = max(after.at - before.at, 1e-9)

    def rate(name: str) -> float:
        return max(0.0, after.value(name) - before.value(name)) / seconds

    persisted_rate = max(0.0, after.persisted() - before.persisted()) / seconds
    lines = [
        f"doses accepted   {after.value(names.DOSES_ACCEPTED):>14,.0f}  {rate(names.DOSES_ACCEPTED):>10,.0f}/s",
        f"doses persisted  {after.persisted():>14,.0f}  {persisted_rate:>10,.0f}/s"
        f"  (duplicates {after.value(names.DOSES_DUPLICATE):,.0f})",
        f"doses rejected   {after.value(names.DOSES_REJECTED):>14,.0f}"
        f"  backpressure 503s {after.value(names.BACKPRESSURE_REJECTIONS):,.0f}",
        f"dead letters     {after.value(names.DEAD_LETTERS):>14,.0f}",
        f"certificates     {after.value(names.CERTIFICATES_ISSUED):>14,.0f}"
        f"  {rate(names.CERTIFICATES_ISSUED):>10,.0f}/s  (revoked"
        f" {after.value(names.CERTIFICATES_REVOKED):,.0f}, backlog {after.value(names.CERTIFY_BACKLOG):,.0f})",
        f"connections      {after.value(names.OPEN_CONNECTIONS):>14,.0f}"
        f"  workers running {after.value(names.WORKERS_RUNNING):,.0f}"
        f"  certifiers running {after.value(names.CERTIFIERS_RUNNING):,.0f}",
    ]
    for stage in ("persisted", "certified"):
        p50, p99 = (quantile(q, before.freshness.get(stage, {}), after.freshness.get(stage, {})) for q in (0.5, 0.99))
        shown = "no observations" if p50 is None else f"p50 {p50:.2f} s  p99 {p99:.2f} s"
        lines.append(f"freshness 202->{stage:<10} {shown}")
    shards = sorted(after.by_shard.get(names.STREAM_BACKLOG, {}), key=int)
    if shards:
        lines.append("shard  backlog  pending      lag")
        for shard in shards:
            lines.append(f"{shard:>5} {after.by_shard[names.STREAM_BACKLOG].get(shard, 0):>8,.0f}"
                         f" {after.by_shard.get(names.STREAM_PENDING, {}).get(shard, 0):>8,.0f}"
                         f" {after.by_shard.get(names.STREAM_LAG, {}).get(shard, 0):>8,.0f}")
    return "\n".join(lines)


def status_line(before: Snapshot, after: Snapshot) -> str:
    """One line for `vaxline run`."""
    seconds = max(after.at - before.at, 1e-9)
    accepted = after.value(names.DOSES_ACCEPTED)
    return (
        f"accepted {accepted:,.0f} ({(accepted - before.value(names.DOSES_ACCEPTED)) / seconds:,.0f}/s)  "
        f"persisted {after.persisted():,.0f} ({(after.persisted() - before.persisted()) / seconds:,.0f}/s)  "
        f"certified {after.value(names.CERTIFICATES_ISSUED):,.0f}  "
        f"backlog {after.value(names.STREAM_BACKLOG):,.0f} entries  "
        f"dead letters {after.value(names.DEAD_LETTERS):,.0f}"
    )


def once(urls: list[str], interval: float = 1.0) -> str:
    before = scrape(urls)
    time.sleep(interval)  # two readings make a rate
    return render(before, scrape(urls))


def watch(urls: list[str], every: float) -> None:
    before = scrape(urls)
    try:
        while True:
            time.sleep(every)
            after = scrape(urls)
            print("\033[H\033[J" + time.strftime("%H:%M:%S ") + "vaxline status\n" + render(before, after), flush=True)
            before = after
    except KeyboardInterrupt:
        pass
