"""One stack start-up: services, database, migrations, sites, processes, readiness, and the stop.

    stack = Stack(folder, database="vaxline_bench_1a2b3c")  # a fresh database, dropped on stop
    settings = stack.start(shards=4)                         # DATABASE_URL/REDIS_URL, or embedded ones
    tokens = stack.add_sites([...])
    stack.start_ingest(hosts="127.0.0.1", port=8080, processes=2)
    stack.start_workers(name="bench", processes=2, certifiers=2, reviewers=1)  # and one notifier
    stack.wait_ready(["http://127.0.0.1:8080/readyz"])
    ...
    stack.stop()

`vaxline run`, the benchmarks and the load tests all start vaxline this way. Postgres and Redis are the
servers that DATABASE_URL and REDIS_URL name, or the embedded default under the folder (Redis with
`appendfsync always`). Every child process is spawned by the supervisor, which restarts the fallen.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from ingest.server import run_process as ingest_process
from monitoring.exposition import ENV, prepare_multiprocess_dir, process_exited
from storage.migrate import migrate
from storage.reconcile import reconcile as reconcile_store
from storage.sites import add_site
from vaxline import notify, otp
from vaxline.config import Settings
from vaxline.dcc.keys import KeyStore
from vaxline.streams import connect_redis, read_ingest_counts
from workers.process import run_process as worker_process

from . import embedded
from .supervisor import Supervisor, wait_ready

log = logging.getLogger("vaxline")


class Stack:
    """Postgres and Redis (given or embedded), the schema, the vaxline processes; `stop` undoes it all.

    `database`: the name of a database to create for this stack on the Postgres server and drop on stop
    (benchmarks and load tests); None uses the database of the URL itself (`vaxline run`).
    `appendfsync`: the embedded Redis's setting (always: every acknowledged batch is on disk first).
    """

    def __init__(self, folder: Path, *, database: str | None = None, appendfsync: str = "always") -> None:
        self.folder = folder
        self.database = database
        self.appendfsync = appendfsync
        self.settings: Settings | None = None
        self.supervisor = Supervisor(on_exit=process_exited)
        self.service_pids: dict[str, int] = {}
        self.embedded_redis = False
        self._redis_server: embedded.EmbeddedRedis | None = None
        self._server_url = ""
        self._postgres = None  # pgserver's handle, held while the stack runs

    # -- services, database, schema ------------------------------------------------------------------------

    def start(self, *, metrics_dir: Path | None = None, **settings) -> Settings:
        """Start (or find) Postgres and Redis, create the database when asked, migrate; the stack's settings.

        `metrics_dir`: where the processes' Prometheus files go, unless PROMETHEUS_MULTIPROC_DIR is set
        (then one /metrics shows every process). `settings` override Settings' defaults."""
        given = Settings.from_env(data_dir=self.folder)
        database_url, redis_url = given.database_url, given.redis_url
        if not database_url:
            embedded.silence_pgserver_warnings()
            self._postgres, database_url = embedded.start_postgres(self.folder / "postgres")
            self.service_pids["postgres (postmaster)"] = self._postgres.get_pid()
        if self.database:
            self._server_url = database_url
            asyncio.run(admin(database_url, f"CREATE DATABASE {self.database}"))
            database_url = with_database(database_url, self.database)
        if not redis_url:
            self._redis_server = embedded.EmbeddedRedis(self.folder / "redis", appendfsync=self.appendfsync).start()
            redis_url = self._redis_server.url
            self.service_pids["redis"] = self._redis_server.process.pid
            self.embedded_redis = True
        # A stack started here is the demo's, a benchmark's or a load test's: the development OTP sender,
        # unless the environment names a real one (`vaxline serve` has no such default).
        defaults = {"data_dir": self.folder, "otp_sender": given.otp_sender or otp.DEVELOPMENT,
                    "notifier": given.notifier or notify.DEVELOPMENT}  # and the development notifier too
        self.attach(Settings.from_env(**{**defaults, **settings, "database_url": database_url,
                                         "redis_url": redis_url}), metrics_dir=metrics_dir)
        self.migrated = asyncio.run(on_database(self.settings, migrate))
        return self.settings

    def attach(self, settings: Settings, *, metrics_dir: Path | None = None) -> None:
        """Run processes on services that are already there (`vaxline serve`, `vaxline work`)."""
        if metrics_dir is not None and not os.environ.get(ENV):
            prepare_multiprocess_dir(metrics_dir)
        self.settings = settings

    def add_sites(self, sites: list[dict]) -> list[str]:
        """Register sites (code, name, province, kind); their new bearer tokens, in order."""
        async def register(conn):
            return [(await add_site(conn, **site))[1] for site in sites]

        return asyncio.run(on_database(self.settings, register))

    def ensure_signing_key(self):
        """A signing key and its DSC unless one exists (the first start, or the newest key's last year);
        the key created, or None."""
        return KeyStore(self.settings.signing_keys_dir).ensure()

    # -- processes --------------------------------------------------------------------------------------

    def start_ingest(self, *, hosts: str, port: int, processes: int) -> None:
        """`processes` ingest processes sharing `port` (SO_REUSEPORT) on each of `hosts` (comma-separated)."""
        for i in range(processes):
            self.supervisor.add(f"ingest-{i}", ingest_process, self.settings, hosts, port)

    def start_workers(self, *, name: str, processes: int, certifiers: int, reviewers: int, notifiers: int = 1) -> None:
        """Persisting workers, certifiers, reviewers and notifiers, consumers named after `name` (keep it stable: a
        restarted worker reads its own pending list). Without a usable notifier (VAXLINE_NOTIFIER, and for a
        real one VAXLINE_PUBLIC_BASE_URL) none starts, said in the log: notifications wait in Postgres until one
        runs."""
        for i in range(processes):
            self.supervisor.add(f"worker-{i}", worker_process, self.settings, f"{name}-{i}")
        for i in range(certifiers):
            self.supervisor.add(f"certifier-{i}", worker_process, self.settings, f"{name}-certifier-{i}", "certify")
        for i in range(reviewers):
            self.supervisor.add(f"reviewer-{i}", worker_process, self.settings, f"{name}-reviewer-{i}", "review")
        if notifiers:
            try:  # here, not in a child that would fall at start and be restarted for ever
                notify.notifier(self.settings)
            except notify.NoNotifier as e:  # the rest of the stack runs: notifications wait in Postgres, lost to none
                log.warning("no notifier started (%s); citizens' SMS wait in the outbox", e)
                notifiers = 0
        for i in range(notifiers):
            self.supervisor.add(f"notifier-{i}", worker_process, self.settings, f"{name}-notifier-{i}", "notify")

    def wait_ready(self, urls: list[str], timeout: float = 60) -> None:
        """Until every ingest URL's /readyz answers 200, restarting fallen children meanwhile."""
        for url in urls:
            wait_ready(url, timeout=timeout, while_waiting=self.supervisor.poll)

    def supervise(self, *, every: float = 1.0, tick=None) -> None:
        """Keep the children alive until Ctrl-C or SIGTERM (then stop them cleanly); `tick()` every round."""
        signal.signal(signal.SIGTERM, _interrupt)
        signal.signal(signal.SIGINT, _interrupt)  # even when started with SIGINT ignored (`cmd &` in a script)
        try:
            while True:
                time.sleep(every)
                self.supervisor.poll()
                if tick:
                    tick()
        except KeyboardInterrupt:
            log.info("stopping: workers finish and acknowledge the groups in hand")
        finally:
            self.supervisor.stop()

    @property
    def pids(self) -> dict[str, int]:
        """Every process of the stack by name: the services it started and the supervisor's children."""
        return {**self.service_pids, **self.supervisor.pids()}

    def stop(self) -> None:
        """Stop the processes (workers acknowledge what they committed), then Redis; drop a created database.
        Idempotent."""
        self.supervisor.stop()
        if self._redis_server:
            self._redis_server.stop()
        if self._server_url:
            with contextlib.suppress(Exception):
                asyncio.run(admin(self._server_url, f"DROP DATABASE IF EXISTS {self.database} WITH (FORCE)"))
            self._server_url = ""
        if self._postgres is not None:  # stopped now: pgserver's own stop at exit fails once a caller has
            self._postgres.cleanup()    # removed the folder (benchmarks do), leaving a postmaster running
            self._postgres = None


def _interrupt(signum, frame):
    raise KeyboardInterrupt


async def on_database(settings: Settings, operation, *args):
    """`operation(conn, *args)` on a connection of its own to the deployment's database."""
    conn = await asyncpg.connect(settings.database_url)
    try:
        return await operation(conn, *args)
    finally:
        await conn.close()


async def admin(database_url: str, sql: str) -> None:
    """One statement on the server's connection (CREATE DATABASE, DROP DATABASE)."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def with_database(url: str, name: str) -> str:
    """The same server's URL, naming another database."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


async def reconcile(settings: Settings, *, first, last, site_id: int | None = None) -> dict:
    """`vaxline reconcile` of the deployment: ingest's counts in Redis, read first, against Postgres."""
    redis = connect_redis(settings)
    try:
        counts = await read_ingest_counts(redis, settings)
    finally:
        await redis.aclose()
    return await on_database(settings, lambda conn: reconcile_store(conn, counts, first=first, last=last,
                                                                    site_id=site_id))
