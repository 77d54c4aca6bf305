"""`vaxline loadtest sessions|day|overload`: the stack, distributed Locust, thresholds, reconciliation, report.

One run:
1. starts the stack on DATABASE_URL/REDIS_URL or the embedded default (a new database either way): ingest
   processes sharing one port with SO_REUSEPORT on several loopback addresses (each (address, port) has
   only 28,232 ephemeral ports), persisting workers, certifiers, a reviewer; registers the sites;
2. runs Locust headless, a master and --locust-processes workers (each under the 20,000 open files a
   process may have), the suite's shape resetting Locust's statistics when the measured phase begins;
3. scrapes the server's own metrics throughout (throughput, connections, backlog, freshness, latency),
   with each ingest process's memory and Redis's;
4. waits until every acknowledged dose is persisted and certified, stops the stack, reconciles (the
   clients' acknowledgements against Postgres, and `vaxline reconcile`);
5. applies the thresholds, writes `reports/<shape>-<time>/` (summary.json, report.html, Locust's own
   report and CSVs) and exits 0 when every threshold holds, 1 when one does not.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import logging
import os
import resource
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from deploy.local import ConfigError, settings_for
from deploy.stack import Stack, on_database
from deploy.stack import reconcile as reconcile_deployment
from deploy.waits import wait_certified, wait_streams_drained
from monitoring.status import Snapshot, Unreachable, quantile, scrape
from storage.migrate import migrate
from storage.sites import add_site
from vaxline.config import Settings
from vaxline.provinces import PROVINCES

from . import acks, report

LOADTESTS = Path(__file__).resolve().parent
DOSES_NAME = "POST /v1/doses"
GRACE = 30.0  # seconds after a paced day during which its last batches still count as the day's
MiB = 1024 * 1024


@dataclasses.dataclass(frozen=True)
class Plan:
    """What one run does; built from the command line by `plan_from_args`."""

    shape: str  # sessions | day | overload
    desks: int
    citizens: int
    clerks: int
    spawn_rate: float
    hold: float = 0.0  # sessions
    think: str = "120,270"  # sessions
    doses: int = 0  # day, overload
    within: float = 0.0  # day, overload
    backentry_share: float = 0.5
    ingest: int = 4
    destinations: int = 4
    locust_processes: int = 4
    workers: int = 2
    certifiers: int = 2
    reviewers: int = 1
    shards: int = 4
    port: int = 18080
    sites: int = 500
    sample_every: float = 5.0
    max_backlog_entries: int = 50_000
    seed: int = 1
    ingest_p99_limit: float = 0.25
    certified_p99_limit: float = 2.0
    ingest_memory_limit_mib: float = 300.0

    @property
    def paced(self) -> bool:
        return self.shape in ("day", "overload")

    @property
    def addresses(self) -> list[str]:
        return [f"127.0.0.{i + 1}" for i in range(self.destinations)]


# -- the stack -------------------------------------------------------------------

class LoadStack(Stack):
    """The stack of one run: a fresh database, ingest on the plan's loopback destinations, its consumers."""

    def __init__(self, plan: Plan, work: Path) -> None:
        super().__init__(work, database=f"vaxline_load_{secrets.token_hex(3)}")
        self.plan, self.work = plan, work

    def start(self) -> Settings:
        return super().start(
            metrics_dir=self.work / "metrics",  # ingest's /metrics then shows every process
            shards=self.plan.shards, stream_prefix=f"load{secrets.token_hex(3)}",
            max_backlog_entries=self.plan.max_backlog_entries,
            # Every Locust user comes from one loopback address: the per-address lookup limit would
            # refuse the citizens of a whole country, so it is lifted for the run.
            lookup_rate_limit=1_000_000_000)

    def prepare(self) -> list[dict]:
        """Register the sites (tokens for the clients), create a signing key."""
        sites = load_sites(self.plan.sites)
        tokens = self.add_sites(sites)
        self.ensure_signing_key()
        return [{"code": site["code"], "token": token} for site, token in zip(sites, tokens)]

    def run_processes(self) -> None:
        p = self.plan
        self.start_ingest(hosts=",".join(p.addresses), port=p.port, processes=p.ingest)
        self.start_workers(name="load", processes=p.workers, certifiers=p.certifiers, reviewers=p.reviewers)
        self.wait_ready([f"http://{address}:{p.port}/readyz" for address in p.addresses])

    def ingest_pids(self) -> dict[str, int]:
        return {name: pid for name, pid in self.supervisor.pids().items() if name.startswith("ingest-")}


def load_sites(count: int) -> list[dict]:
    """`count` sites over the 63 provinces, fixed and mobile."""
    provinces = sorted(PROVINCES)
    return [{"code": f"LT-{provinces[i % len(provinces)]:03d}-{i:05d}", "name": f"Trạm Y tế thử tải {i}",
             "province": provinces[i % len(provinces)], "kind": "mobile" if i % 10 == 9 else "fixed"}
            for i in range(count)]


async def register_sites(settings: Settings, count: int) -> list[dict]:
    """Register `count` load-test sites on a running deployment; their codes and new tokens."""
    async def register(conn):
        await migrate(conn)
        return [{"code": site["code"], "token": (await add_site(conn, **site))[1]} for site in load_sites(count)]

    return await on_database(settings, register)


def write_private(path: Path, text: str) -> None:
    """A file only this user can read (site tokens are secrets)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)


# -- sampling the server ----------------------------------------------------------

@dataclasses.dataclass
class Sample:
    at: float  # epoch
    snapshot: Snapshot
    ingest_rss_mib: dict[str, float]
    redis_memory_mib: float | None


class Sampler(threading.Thread):
    """Reads ingest's /metrics, the ingest processes' memory and Redis's every `every` seconds."""

    def __init__(self, url: str, stack: Stack, every: float) -> None:
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
            "accepted_per_s": rate("vaxline_doses_accepted_total"),
            "persisted_per_s": max(0.0, a.persisted() - b.persisted()) / seconds,
            "certified_per_s": rate("vaxline_certificates_issued_total"),
            "requests_per_s": rate("vaxline_http_requests_total"),
            "rejected_503_per_s": rate("vaxline_backpressure_rejections_total"),
            "connections": a.value("vaxline_open_connections"),
            "backlog": a.value("vaxline_stream_backlog"),
            "certify_backlog": a.value("vaxline_certify_backlog"),
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


# -- Locust -----------------------------------------------------------------------

def locust_command(plan: Plan, folder: Path, work: Path, start_at: float) -> list[str]:
    base = f"http://{plan.addresses[0]}:{plan.port}"
    command = [
        sys.executable, "-m", "locust", "-f", str(LOADTESTS / f"{plan.shape}.py"), "--headless",
        "--host", base, "--vx-destinations", ",".join(f"http://{a}:{plan.port}" for a in plan.addresses),
        "--vx-sites", str(work / "sites.json"), "--vx-acks", str(work / "acks"), "--vx-phases", str(work / "phases.jsonl"),
        "--vx-seed", str(plan.seed), "--vx-desks", str(plan.desks), "--vx-citizens", str(plan.citizens),
        "--vx-clerks", str(plan.clerks), "--vx-spawn-rate", str(plan.spawn_rate),
        "--csv", str(folder / "locust"), "--csv-full-history", "--html", str(folder / "locust.html"),
        # In-flight posts finish at the stop (an overloaded one may wait out several Retry-Afters).
        "--stop-timeout", "150" if plan.shape == "overload" else "30", "--loglevel", "WARNING",
    ]
    if plan.locust_processes > 1:
        command += ["--processes", str(plan.locust_processes)]
    if plan.paced:
        command += ["--vx-doses", str(plan.doses), "--vx-within", str(plan.within),
                    "--vx-backentry-share", str(plan.backentry_share), "--vx-start-at", f"{start_at:.3f}"]
    else:
        command += ["--vx-hold", str(plan.hold), "--vx-think", plan.think]
    if plan.shape == "overload":
        command.append("--vx-expect-503")
    return command


def planned_seconds(plan: Plan) -> float:
    users = plan.desks + plan.citizens + plan.clerks
    if plan.paced:
        return users / plan.spawn_rate + plan.within + 1200  # and up to 15 min for the last posts
    return users / plan.spawn_rate * 2 + 30 + plan.hold + users / (4 * plan.spawn_rate) + 180


def read_locust_stats(folder: Path) -> dict[str, dict]:
    """Locust's own statistics (since its reset at the measured phase), by request name."""
    import csv

    path = folder / "locust_stats.csv"
    if not path.exists():
        return {}
    with path.open(newline="") as lines:
        return {row["Name"]: row for row in csv.DictReader(lines)}


def locust_at(folder: Path, name: str, until: float) -> dict | None:
    """Locust's cumulative statistics of `name` (since its reset) as they stood at `until` (an epoch): the
    hold's own percentiles, without the ramp-down that the final CSV also counts."""
    import csv

    path, found = folder / "locust_stats_history.csv", None
    if not path.exists():
        return None
    with path.open(newline="") as lines:
        for row in csv.DictReader(lines):
            if row["Name"] == name and float(row["Timestamp"]) <= until and row["99%"] not in ("N/A", ""):
                found = row
    return found


def failures(work: Path) -> list[str]:
    """Every failed request of the whole run, ramp included (the processes append them as they happen)."""
    lines = []
    for path in sorted((work / "acks").glob("failures-*.tsv")):
        lines += path.read_text().splitlines()
    return lines


def client_counts(work: Path) -> dict[str, int]:
    """Doses the Locust processes started posting and had acknowledged, summed."""
    totals = {"started": 0, "acknowledged": 0}
    for path in (work / "acks").glob("counts-*.json"):
        for key, value in json.loads(path.read_text()).items():
            totals[key] += value
    return totals


def read_phases(work: Path) -> dict[str, float]:
    path = work / "phases.jsonl"
    if not path.exists():
        return {}
    return {entry["phase"]: entry["at"] for entry in map(json.loads, path.read_text().splitlines())}


# -- the run ----------------------------------------------------------------------

def raise_open_files() -> None:
    """Children inherit the soft limit: take it up to the hard one (20,000 here; it cannot go past)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def run(plan: Plan, out: Path) -> int:
    raise_open_files()
    # A line per batch from every process is noise at this rate; warnings and errors still show.
    os.environ.setdefault("VAXLINE_LOG_LEVEL", "WARNING")
    started = dt.datetime.now(dt.timezone.utc)
    folder = out / f"{plan.shape}-{started:%Y%m%d-%H%M%S}"
    folder.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="vaxline-loadtest-"))
    stack = LoadStack(plan, work)
    sampler = None
    try:
        stack.start()
        write_private(work / "sites.json", json.dumps(stack.prepare()))
        stack.run_processes()
        sampler = Sampler(f"http://{plan.addresses[0]}:{plan.port}/metrics", stack, plan.sample_every)
        sampler.start()
        t0 = time.time()
        users = plan.desks + plan.citizens + plan.clerks
        start_at = t0 + 15 + users / plan.spawn_rate  # the day begins once Locust runs every user
        print(f"vaxline loadtest {plan.shape}: {users:,} users; report in {folder}", flush=True)
        with (folder / "locust.log").open("w") as log:
            locust = subprocess.Popen(locust_command(plan, folder, work, start_at), stdout=log, stderr=subprocess.STDOUT,
                                      cwd=LOADTESTS.parent)
            try:
                locust_exit = locust.wait(timeout=planned_seconds(plan) + 600)
            except subprocess.TimeoutExpired:
                locust.terminate()
                locust_exit = locust.wait(timeout=60)
        drained = wait_drained(stack.settings)
        sampler.stop()
        with contextlib.closing(_redis(stack)) as client:
            sampler.sample_once(client)  # the drained state, for the plots
        peaks = {name: rss_mib(pid, "VmHWM") for name, pid in stack.ingest_pids().items()}
        stack.supervisor.stop()
        checked, unexplained = asyncio.run(reconcile(stack.settings, work / "acks"))
        checked["abandoned_by_clients"] = max(0, client_counts(work)["started"] - checked["acknowledged"])
        summary = summarize(plan, started, t0, sampler.samples, read_phases(work), read_locust_stats(folder),
                            failures(work), checked, unexplained, peaks, locust_exit, drained, folder)
        summary["locust_html"] = "locust.html"
        (folder / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False))
        rows = series(sampler.samples, t0)
        (folder / "series.json").write_text(json.dumps(rows))
        report.write_report(folder, summary, rows)
        print_summary(summary, folder)
        return 0 if summary["passed"] else 1
    finally:
        if sampler is not None:
            with contextlib.suppress(Exception):
                sampler.stop()
        stack.stop()
        shutil.rmtree(work, ignore_errors=True)


def _redis(stack: Stack):
    import redis

    return redis.Redis.from_url(stack.settings.redis_url, socket_timeout=5)


def wait_drained(settings: Settings, timeout: float = 3600) -> float | None:
    """Seconds until every dose shard and the certify stream were drained and every person certified;
    None when that did not happen within `timeout` (the report then says so)."""
    started = time.monotonic()
    try:
        asyncio.run(wait_streams_drained(settings, timeout))
        asyncio.run(wait_certified(settings, timeout=max(1.0, timeout - (time.monotonic() - started))))
    except TimeoutError:
        return None
    return time.monotonic() - started


async def reconcile(settings: Settings, acks_dir: Path) -> tuple[dict, int]:
    """The clients' acknowledgements against Postgres, and `vaxline reconcile`'s unexplained count."""
    checked = await on_database(settings, acks.check, acks_dir)
    found = await reconcile_deployment(settings, first=dt.date(2021, 1, 1),
                                       last=dt.date.today() + dt.timedelta(days=1))
    return checked, found["unexplained"]


# -- thresholds and the summary -----------------------------------------------------

def window(plan: Plan, phases: dict[str, float]) -> tuple[float, float] | None:
    """The measured phase, as epochs: the hold, or the day and its grace for the last posts."""
    if plan.paced:
        start, end = phases.get("day start"), phases.get("day end")
        return (start, end + GRACE) if start and end else None
    start, end = phases.get("hold start"), phases.get("hold end")
    return (start, end) if start and end else None


def at_or_after(samples: list[Sample], epoch: float) -> Sample:
    return next((s for s in samples if s.at >= epoch), samples[-1])


def at_or_before(samples: list[Sample], epoch: float) -> Sample:
    return next((s for s in reversed(samples) if s.at <= epoch), samples[0])


def threshold(name: str, limit: str, measured: str, passed: bool) -> dict:
    return {"name": name, "limit": limit, "measured": measured, "passed": bool(passed)}


def summarize(plan: Plan, started: dt.datetime, t0: float, samples: list[Sample], phases: dict[str, float],
              stats: dict[str, dict], failed: list[str], checked: dict, unexplained: int,
              peaks: dict[str, float], locust_exit: int, drained: float | None, folder: Path = Path("/nonexistent")
              ) -> dict:
    measured = window(plan, phases)
    thresholds, figures = [], {}
    doses_row, total_row = stats.get(DOSES_NAME, {}), stats.get("Aggregated", {})
    locust_failures = int(total_row.get("Failure Count", 0) or 0)
    thresholds.append(threshold("failed requests (whole run)", "0", f"{len(failed):,}", not failed and not locust_failures))
    if measured and (held := locust_at(folder, DOSES_NAME, measured[1])) is not None:
        doses_row = held | {"Request Count": held["Total Request Count"]}
    client_p99 = float(doses_row.get("99%", "nan") or "nan") / 1000
    overload = plan.shape == "overload"  # past capacity, latency is not the promise; bounded memory and no loss are
    if not overload:
        thresholds.append(threshold("ingest p99, Locust (POST /v1/doses, measured phase)", f"<= {plan.ingest_p99_limit * 1000:.0f} ms",
                                    f"{client_p99 * 1000:.0f} ms", client_p99 <= plan.ingest_p99_limit))
    if measured and samples:
        before, after = at_or_after(samples, measured[0]), at_or_before(samples, measured[1])
        b, a = before.snapshot, after.snapshot
        seconds = max(after.at - before.at, 1e-9)
        requests, ingest_share = share_within(b.latency, a.latency, "/v1/doses", plan.ingest_p99_limit)
        certified, certified_share = share_within(b.freshness, a.freshness, "certified", plan.certified_p99_limit)
        certified_p99 = quantile_between(b.freshness, a.freshness, "certified")
        if not overload:
            thresholds.append(threshold(
                "202 -> certificate p99 (server)", f"<= {plan.certified_p99_limit:g} s",
                f"{certified_p99:.2f} s ({certified_share:.2%} within)" if certified_p99 is not None
                else "no certificates", certified and certified_share >= 0.99))
        figures.update({
            "measured window (s)": round(seconds),
            "requests/s (server, all routes)": round((a.value("vaxline_http_requests_total")
                                                      - b.value("vaxline_http_requests_total")) / seconds, 1),
            "doses accepted/s (server)": round((a.value("vaxline_doses_accepted_total")
                                               - b.value("vaxline_doses_accepted_total")) / seconds, 1),
            "ingest p50 / p99, server (ms)": _ms(quantile_between(b.latency, a.latency, "/v1/doses", 0.5),
                                                 quantile_between(b.latency, a.latency, "/v1/doses")),
            "ingest within 250 ms, server": f"{ingest_share:.3%} of {requests:,.0f}",
            "persisted freshness p50 / p99 (s)": _s(quantile_between(b.freshness, a.freshness, "persisted", 0.5),
                                                    quantile_between(b.freshness, a.freshness, "persisted")),
            "202 -> certificate p50 / p99 (s)": _s(quantile_between(b.freshness, a.freshness, "certified", 0.5),
                                                   certified_p99),
        })
        ended = phases["day end"] if plan.paced else measured[1]  # the users run until then
        inside = [s for s in samples if measured[0] + plan.sample_every <= s.at <= ended] or [after]
        held = min(s.snapshot.value("vaxline_open_connections") for s in inside)
        figures["open connections during the window (min / max)"] = (
            f"{held:,.0f} / {max(s.snapshot.value('vaxline_open_connections') for s in inside):,.0f}")
        if plan.shape == "sessions":
            # The target is the desks' sessions; citizens and clerks hold a few connections beside them.
            thresholds.append(threshold("sessions held (server's open connections, min over the hold)",
                                        f">= {plan.desks:,}", f"{held:,.0f}", held >= plan.desks))
        if plan.shape == "day":
            deadline = at_or_before(samples, phases["day end"] + 60)
            persisted = deadline.snapshot.persisted()
            thresholds.append(threshold(f"doses persisted within {plan.within:g} s (+60 s)", f">= {plan.doses:,}",
                                        f"{persisted:,.0f}", persisted >= plan.doses))
        if plan.shape == "overload":
            refused = a.value("vaxline_backpressure_rejections_total")
            thresholds.append(threshold("503 with Retry-After under overload", "> 0", f"{refused:,.0f}", refused > 0))
            thresholds += memory_flat(samples, measured)
    else:
        thresholds.append(threshold("measured phase reached", "yes", "no", False))
    heaviest = max(peaks.values(), default=0.0)
    thresholds.append(threshold("ingest memory per process (peak)", f"< {plan.ingest_memory_limit_mib:g} MiB",
                                f"{heaviest:.0f} MiB", 0 < heaviest < plan.ingest_memory_limit_mib))
    if plan.shape == "day":
        thresholds.append(threshold("doses acknowledged", f"= {plan.doses:,}", f"{checked['acknowledged']:,}",
                                    checked["acknowledged"] == plan.doses))
    thresholds.append(threshold("doses a client started posting and never got a 202 for", "0",
                                f"{checked['abandoned_by_clients']:,}", checked["abandoned_by_clients"] == 0))
    thresholds.append(threshold("reconciliation gap (acknowledged, not stored once and certified)", "0",
                                f"{checked['gap']:,}", checked["gap"] == 0))
    thresholds.append(threshold("vaxline reconcile: unexplained", "0", f"{unexplained:,}", unexplained == 0))
    thresholds.append(threshold("drained: every acknowledged dose persisted and certified", "within an hour",
                                "no" if drained is None else f"{drained:.0f} s after Locust stopped", drained is not None))
    thresholds.append(threshold("Locust exited cleanly", "0, or 1 for failed requests", str(locust_exit),
                                locust_exit in (0, 1)))
    figures.update({
        "Locust requests (measured phase)": int(total_row.get("Request Count", 0) or 0),
        "Locust requests/s": round(float(total_row.get("Requests/s", 0) or 0), 1),
        "Locust POST /v1/doses p50 / p99 over the measured phase (ms)":
            f"{doses_row.get('50%', '-')} / {doses_row.get('99%', '-')}",
        "Locust POST /v1/doses p99 to the end, ramp-down or stop included (ms)":
            stats.get(DOSES_NAME, {}).get("99%", "-"),
        "doses acknowledged (202)": checked["acknowledged"],
        "doses persisted, acknowledged or not": checked["acknowledged"] - checked["missing"]
                                                 + checked["persisted_unacknowledged"],
        "reconciliation gap": checked["gap"],
        "ingest memory peak per process (MiB)": ", ".join(f"{v:.0f}" for v in peaks.values()),
    })
    return {
        "shape": plan.shape, "started_at": started.isoformat(timespec="seconds"),
        "passed": all(t["passed"] for t in thresholds), "plan": dataclasses.asdict(plan),
        "thresholds": thresholds, "figures": figures,
        "phases": {name: round(at - t0, 1) for name, at in phases.items()},
        "reconciliation": checked | {"vaxline_reconcile_unexplained": unexplained},
        "failures": failed[:50], "locust": stats,
    }


def memory_flat(samples: list[Sample], measured: tuple[float, float]) -> list[dict]:
    """Past the first third of the overload (the backlog reaching its bound), memory grows no further."""
    inside = [s for s in samples if measured[0] <= s.at <= measured[1]]
    third = max(1, len(inside) // 3)
    early, late = inside[third: 2 * third] or inside, inside[2 * third:] or inside
    result = []
    for name, read in (("Redis", lambda s: s.redis_memory_mib or 0.0),
                       ("ingest", lambda s: max(s.ingest_rss_mib.values(), default=0.0))):
        first, last = max(map(read, early)), max(map(read, late))
        result.append(threshold(f"{name} memory flat under overload (last third vs. middle third)",
                                "<= +10% + 16 MiB", f"{first:.0f} -> {last:.0f} MiB", last <= first * 1.1 + 16))
    return result


def _ms(p50, p99) -> str:
    return " / ".join("-" if v is None else f"{v * 1000:.0f}" for v in (p50, p99))


def _s(p50, p99) -> str:
    return " / ".join("-" if v is None else f"{v:.2f}" for v in (p50, p99))


def print_summary(summary: dict, folder: Path) -> None:
    print(f"\nvaxline loadtest {summary['shape']}: {'PASSED' if summary['passed'] else 'FAILED'}")
    for t in summary["thresholds"]:
        print(f"  {'pass' if t['passed'] else 'FAIL'}  {t['name']}: {t['measured']} (limit {t['limit']})")
    for name, value in summary["figures"].items():
        print(f"        {name}: {value:,}" if isinstance(value, int) else f"        {name}: {value}")
    print(f"  report: {folder / 'report.html'}\n  summary: {folder / 'summary.json'}", flush=True)


# -- the command line ----------------------------------------------------------------

SHAPE_DEFAULTS = {
    # 42,000 desks over 4 ingest processes, 4 destinations and 4 Locust workers: about 10,500 connections
    # each, under the 20,000 open files a process may have and the 28,232 ports of a destination.
    # 100 new sessions a second saturated both cores here (each opens a connection and its desk begins
    # posting): the ramp then left requests queued well into the hold. 50 a second is a 14-minute ramp.
    "sessions": dict(desks=42_000, citizens=20, clerks=2, spawn_rate=50, hold=600, sites=1_000),
    # A busy day's desks post every few seconds: a thousand of them carry the desks' share of the day.
    "day": dict(desks=1_000, citizens=20, clerks=8, spawn_rate=100, doses=5_000_000, within=1_800, ingest=2,
                destinations=2, locust_processes=2, sites=500),
    # Certificates trail the doses past capacity (by design: doses are never refused for them), so no
    # citizens here: a lookup 10 s after the 202 would fail for a reason the run means to cause.
    "overload": dict(desks=200, citizens=0, clerks=16, spawn_rate=100, within=60, ingest=2, destinations=2,
                     locust_processes=2, sites=200, backentry_share=0.9, max_backlog_entries=50),
}


def duration(text: str) -> float:
    """Seconds from `90`, `90s`, `10m` or `1h`."""
    units = {"s": 1, "m": 60, "h": 3600}
    try:
        if text[-1:] in units:
            return float(text[:-1]) * units[text[-1]]
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (90s, 10m, 1h)") from None


def parser() -> argparse.ArgumentParser:
    """`vaxline loadtest ...` (also `python -m loadtests ...`)."""
    top = argparse.ArgumentParser(prog="vaxline loadtest", description=__doc__.split("\n\n")[0])
    top.add_argument("--data-dir", type=Path, default=Path(os.environ.get("VAXLINE_DATA_DIR", ".vaxline")),
                     help="with prepare: the data folder of a `vaxline run` to register the sites on")
    loadtest = top.add_subparsers(dest="loadtest_command", required=True)
    sessions = loadtest.add_parser("sessions", help="hold N concurrent desk sessions (default 42,000 for 10 min)")
    sessions.add_argument("--users", type=int, dest="desks", help="desk sessions to hold (default 42000)")
    sessions.add_argument("--hold", type=duration, help="how long to hold them (default 10m)")
    sessions.add_argument("--think", help="a desk's seconds between posts, min,max (default 120,270)")
    day = loadtest.add_parser("day", help="a compressed vaccination day (default 5,000,000 doses within 30 min)")
    overload = loadtest.add_parser("overload", help="past capacity: 503 with Retry-After, everything still gets in")
    overload.add_argument("--rate", type=float, default=30_000, help="doses/s offered (default 30000)")
    for paced in (day, overload):
        paced.add_argument("--doses", type=int, help="doses in all (overload: default rate x within)")
        paced.add_argument("--within", type=duration, help="in this long (default 30m; overload 60s)")
        paced.add_argument("--desks", type=int)
        paced.add_argument("--backentry-share", type=float, help="share of the doses in 1,000-dose batches")
    for shape in (sessions, day, overload):
        shape.add_argument("--citizens", type=int)
        shape.add_argument("--clerks", type=int)
        shape.add_argument("--spawn-rate", type=float, help="users started per second")
        shape.add_argument("--ingest", type=int, help="ingest processes")
        shape.add_argument("--destinations", type=int, help="loopback addresses ingest listens on (127.0.0.1 ...)")
        shape.add_argument("--locust-processes", type=int, help="Locust worker processes (beside the master)")
        shape.add_argument("--workers", type=int)
        shape.add_argument("--certifiers", type=int)
        shape.add_argument("--reviewers", type=int)
        shape.add_argument("--sites", type=int, help="sites registered for the run")
        shape.add_argument("--port", type=int)
        shape.add_argument("--sample-every", type=float, help="seconds between readings of the server's metrics")
        shape.add_argument("--seed", type=int)
        shape.add_argument("--max-backlog-entries", type=int,
                           help="ingest's backpressure bound per shard, in entries (default 50000; overload 50)")
        shape.add_argument("--out", type=Path, default=Path("reports"), help="reports folder (default reports/)")
        shape.set_defaults(func=cmd_loadtest)
    prepare = loadtest.add_parser("prepare", help="register load-test sites on the deployment and write their"
                                  " tokens, for running the Locust files yourself (--vx-sites)")
    prepare.add_argument("--sites", type=int, default=100)
    prepare.add_argument("--out", type=Path, default=Path("sites.json"))
    prepare.set_defaults(func=cmd_prepare)
    return top


def main(argv: list[str] | None = None) -> int:
    from monitoring.logs import configure

    configure(logging.WARNING)
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"vaxline loadtest: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def plan_from_args(args) -> Plan:
    values = dict(SHAPE_DEFAULTS[args.loadtest_command])
    names = {f.name for f in dataclasses.fields(Plan)}
    values.update({k: v for k, v in vars(args).items() if k in names and v is not None})
    if args.loadtest_command == "overload" and getattr(args, "doses", None) is None:
        values["doses"] = int(args.rate * values["within"])
    # Locust spreads each kind of user evenly over its processes, and each process posts an equal part of
    # that kind's doses: so each kind comes in a multiple of the processes.
    processes = max(1, values.get("locust_processes", Plan.locust_processes))
    for kind in ("desks", "clerks"):
        values[kind] = -(-values[kind] // processes) * processes
    if not values["clerks"]:
        values["backentry_share"] = 0.0
    return Plan(shape=args.loadtest_command, **{k: v for k, v in values.items() if k != "shape"})


def cmd_loadtest(args) -> int:
    return run(plan_from_args(args), args.out)


def cmd_prepare(args) -> int:
    sites = asyncio.run(register_sites(settings_for(args.data_dir), args.sites))
    write_private(args.out, json.dumps(sites))
    print(f"{len(sites)} sites registered; their tokens are in {args.out} (mode 0600)")
    return 0
