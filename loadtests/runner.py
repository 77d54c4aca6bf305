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
5. applies the thresholds, writes `reports/<shape>-<time>/` (summary.json, series.json, report.html,
   Locust's own report and CSVs) and exits 0 when every threshold holds, 1 when one does not.

It runs from any folder: every path it hands on is absolute (Locust runs in the checkout, so that it
finds the suites' modules). Without Locust (the `loadtest` extra) it refuses before starting anything.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import importlib.util
import json
import logging
import os
import re
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from deploy.local import ConfigError, settings_for
from deploy.stack import Stack, on_database
from deploy.stack import reconcile as reconcile_deployment
from deploy.waits import wait_certified, wait_streams_drained
from storage.migrate import migrate
from storage.sites import add_site
from vaxline.config import Settings
from vaxline.provinces import PROVINCES

from . import acks, environment, report
from .plan import Plan, duration, plan_from_args
from .sampling import Sampler, rss_mib, series
from .thresholds import print_summary, summarize

LOADTESTS = Path(__file__).resolve().parent
MiB = 1024 * 1024


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


# -- Locust -----------------------------------------------------------------------

def locust_command(plan: Plan, folder: Path, work: Path, start_at: float) -> list[str]:
    """Locust's command line. It runs in the checkout (to import the suites' modules), so every path in it
    is absolute: a relative one would land its CSVs there, not in the report folder."""
    base = f"http://{plan.addresses[0]}:{plan.port}"
    folder, work = folder.resolve(), work.resolve()
    command = [
        sys.executable, "-m", "locust", "-f", str(LOADTESTS / f"{plan.shape}.py"), "--headless",
        "--host", base, "--vx-destinations", ",".join(f"http://{a}:{plan.port}" for a in plan.addresses),
        "--vx-sites", str(work / "sites.json"), "--vx-acks", str(work / "acks"),
        "--vx-phases", str(work / "phases.jsonl"),
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


def failures(work: Path) -> list[str]:
    """Every failed request of the whole run, ramp included (the processes append them as they happen)."""
    return _lines(work, "failures-*.tsv")


def _lines(work: Path, pattern: str) -> list[str]:
    """The lines of the Locust processes' files matching `pattern` in the acknowledgements folder."""
    return [line for path in sorted((work / "acks").glob(pattern)) for line in path.read_text().splitlines()]


def client_counts(work: Path) -> dict[str, int]:
    """Doses the Locust processes started posting, had acknowledged, and had in flight when they last wrote
    their counts (at Locust's stop and at their exit), summed."""
    totals = {"started": 0, "acknowledged": 0, "in_flight": 0}
    for path in (work / "acks").glob("counts-*.json"):
        for key, value in json.loads(path.read_text()).items():
            totals[key] += value
    return totals


def interrupted_posts(work: Path) -> list[str]:
    """Posts whose user was stopped before their answer (users.Process.interrupted): began, stopped,
    doses, request name, what stopped it, and whether the batch was answered when posted again."""
    return _lines(work, "interrupted-*.tsv")


def wait_for_locust(locust: subprocess.Popen, timeout: float) -> int:
    """Locust's exit code, once its master and every worker process it forked have exited.

    With --processes, Locust's master does not wait for its workers: its atexit hook reaps them with
    os.waitpid(pid, WNOHANG) and takes the (0, 0) of a live child for an exit. A worker may still be
    finishing its stop, and writing its last acknowledgements, when the master is gone; the runner reads
    them only after.

    Locust runs in a process group of its own (start_new_session): its workers are waited for as the
    group's other members, which keep the group when the master is gone."""
    deadline = time.monotonic() + timeout
    with contextlib.suppress(subprocess.TimeoutExpired):
        locust.wait(timeout=timeout)
    if locust.poll() is None:
        locust.terminate()
        locust.wait(timeout=60)
    while _group_alive(locust.pid) and time.monotonic() < deadline + 60:
        time.sleep(0.2)
    return locust.returncode


def stop_locust(locust: subprocess.Popen, timeout: float = 30) -> None:
    """Locust's master and every worker it forked, stopped: TERM to its process group (Locust runs in a
    session of its own), KILL to whatever is left after `timeout`. A run cut short (SIGTERM, Ctrl-C, an
    error of the runner) leaves no user posting at a stack that is gone. Whether or not the master is still
    there: its workers may outlive it (wait_for_locust)."""
    group = locust.pid
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    with contextlib.suppress(subprocess.TimeoutExpired):
        locust.wait(timeout=timeout)  # reaped: a zombie master would keep its group alive
    while _group_alive(group) and time.monotonic() < deadline:
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGKILL)
    locust.wait()


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def read_phases(work: Path) -> dict[str, float]:
    return {entry["phase"]: entry["at"] for entry in _phase_lines(work)}


def read_measured_stats(work: Path) -> dict[str, dict]:
    """Locust's statistics of the measured phase, as the shape recorded them when it ended (shapes.measured_stats);
    empty when it did not end."""
    return next((entry["stats"] for entry in reversed(_phase_lines(work)) if "stats" in entry), {})


def _phase_lines(work: Path) -> list[dict]:
    path = work / "phases.jsonl"
    return list(map(json.loads, path.read_text().splitlines())) if path.exists() else []


# -- the run ----------------------------------------------------------------------

def raise_open_files() -> None:
    """Children inherit the soft limit: take it up to the hard one (20,000 here; it cannot go past)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def report_folder(out: Path, shape: str, started: dt.datetime) -> Path:
    """`out/<shape>-<time>`, absolute: resolved against the folder the command was run from, once, at start."""
    return out.resolve() / f"{shape}-{started:%Y%m%d-%H%M%S}"


def require_locust(find_spec=importlib.util.find_spec) -> None:
    """Refuse a run at once, before anything starts, when Locust (the `loadtest` extra) is not installed."""
    if find_spec("locust") is None:
        raise ConfigError("the load tests need Locust: pip install 'vaxline[loadtest]'")


def run(plan: Plan, out: Path) -> int:
    raise_open_files()
    # A line per batch from every process is noise at this rate; warnings and errors still show.
    os.environ.setdefault("VAXLINE_LOG_LEVEL", "WARNING")
    started = dt.datetime.now(dt.timezone.utc)
    folder = report_folder(out, plan.shape, started)
    folder.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="vaxline-loadtest-")).resolve()  # relative under a relative TMPDIR
    stack = LoadStack(plan, work)
    sampler = locust = None
    try:
        stack.start()
        write_private(work / "sites.json", json.dumps(stack.prepare()))
        stack.run_processes()
        ran_on = described(stack)  # before the load: the load average is the machine's own
        sampler = Sampler(f"http://{plan.addresses[0]}:{plan.port}/metrics", stack, plan.sample_every)
        sampler.start()
        t0 = time.time()
        users = plan.desks + plan.citizens + plan.clerks
        start_at = t0 + 15 + users / plan.spawn_rate  # the day begins once Locust runs every user
        print(f"vaxline loadtest {plan.shape}: {users:,} users; report in {folder}", flush=True)
        with (folder / "locust.log").open("w") as log:
            locust = subprocess.Popen(locust_command(plan, folder, work, start_at), stdout=log,
                                      stderr=subprocess.STDOUT, cwd=LOADTESTS.parent, start_new_session=True)
            sampler.watch("locust", locust.pid)  # its master; the workers are its children
            locust_exit = wait_for_locust(locust, planned_seconds(plan) + 600)
        drained = wait_drained(stack.settings)
        sampler.stop()
        with contextlib.closing(_redis(stack)) as client:
            sampler.sample_once(client)  # the drained state, for the plots
        peaks = {name: rss_mib(pid, "VmHWM") for name, pid in stack.ingest_pids().items()}
        stack.supervisor.stop()
        checked, unexplained = asyncio.run(reconcile(stack.settings, work / "acks"))
        counts = client_counts(work)
        checked["abandoned_by_clients"] = max(0, counts["started"] - checked["acknowledged"])
        checked["in_flight_at_exit"] = counts["in_flight"]
        sustained = sustained_rate(plan, folder) if plan.shape == "overload" and plan.sustained_doses else None
        summary = summarize(plan, started, t0, sampler.samples, read_phases(work), read_locust_stats(folder),
                            failures(work), checked, unexplained, peaks, locust_exit, drained,
                            sustained=sustained, measured_stats=read_measured_stats(work))
        summary["locust_html"] = "locust.html"
        summary["interrupted_posts"] = interrupted_posts(work)
        summary["environment"] = ran_on
        (folder / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False))
        rows = series(sampler.samples, t0)
        (folder / "series.json").write_text(json.dumps(rows))
        report.write_report(folder, summary, rows)
        print_summary(summary, folder)
        return 0 if summary["passed"] else 1
    finally:
        # A Ctrl-C or SIGTERM now would cut the clean-up short: nothing starts from here, so they wait.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
        with contextlib.ExitStack() as cleanup:  # each step runs whatever the ones before it raised
            cleanup.callback(shutil.rmtree, work, ignore_errors=True)
            cleanup.callback(stack.stop)
            if sampler is not None:
                cleanup.callback(sampler.close)  # after stop(), below: callbacks run last in, first out
                cleanup.callback(sampler.stop)
            if locust is not None:
                cleanup.callback(stop_locust, locust)


# benchmarks.e2e's line for its persisting stage: "all persisted after: 11.9 s (25,153 doses/s persisted)"
E2E_PERSISTED = re.compile(r"^\s*all persisted after:.*\(([\d,]+) doses/s persisted\)", re.MULTILINE)


def sustained_rate(plan: Plan, folder: Path) -> float | None:
    """The rate this machine sustains, measured now (the run's own stack stopped): `benchmarks.e2e` with
    `plan.sustained_doses` in 1,000-dose batches, the doses/s it persists. That is what the backpressure
    guards (the dose streams' backlog); certificates trail under overload by design, so its end-to-end rate
    (certified too) would be a far lower bar. Its output stays in the report folder as e2e.log; None when it
    did not run to its figures."""
    command = [sys.executable, "-m", "benchmarks.e2e", "--doses", str(plan.sustained_doses),
               "--port", str(plan.port + 1000)]
    with (folder / "e2e.log").open("w") as log:
        try:
            subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=LOADTESTS.parent, timeout=3600)
        except subprocess.TimeoutExpired:
            return None
    found = E2E_PERSISTED.search((folder / "e2e.log").read_text())
    return float(found.group(1).replace(",", "")) if found else None


def described(stack: Stack) -> dict[str, str]:
    """loadtests.environment for this run, with the versions its Postgres and Redis report."""
    postgres = asyncio.run(on_database(stack.settings, lambda conn: conn.fetchval("SHOW server_version")))
    with contextlib.closing(_redis(stack)) as client:
        redis_version = str(client.info("server").get("redis_version", "unknown"))
    return environment.describe(postgres=postgres, redis=redis_version)


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


# -- the command line ----------------------------------------------------------------

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
    overload.add_argument("--sustained-doses", type=int,
                          help="doses benchmarks.e2e posts after the run to measure the rate the stack sustains,"
                               " which goodput is held to (default 300000; 0: not measured)")
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
    # SIGTERM (a CI's timeout, `kill`) unwinds like Ctrl-C: Locust, the stack and the work folder are
    # stopped and removed on the way out, instead of being left running with nobody to stop them.
    signal.signal(signal.SIGTERM, _terminated)
    args = parser().parse_args(argv)
    try:
        if args.func is cmd_loadtest:
            require_locust()
        return args.func(args)
    except ConfigError as e:
        print(f"vaxline loadtest: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _terminated(signum, frame) -> None:
    raise SystemExit(128 + signum)


def cmd_loadtest(args) -> int:
    return run(plan_from_args(args), args.out)


def cmd_prepare(args) -> int:
    sites = asyncio.run(register_sites(settings_for(args.data_dir), args.sites))
    write_private(args.out, json.dumps(sites))
    print(f"{len(sites)} sites registered; their tokens are in {args.out} (mode 0600)")
    return 0
