"""The read replica (DATABASE_READ_URL), on a real hot standby.

A primary of its own (initdb, a replication entry in pg_hba, TCP on a free loopback port) and a standby made
from it with `pg_basebackup -R`, streaming; both from pgserver's Postgres binaries (run as the `pgserver`
user when the tests run as root, as pgserver does). The proof that reads are served by the standby: with
its replay paused, a person persisted on the primary since is not found by the person read, the statistics
or the lookup, and is once replay resumes. A lookup whose certificate is behind issues it on the primary
(the standby is read-only: issuing there would fail), and its link answers at once although the standby has
not replayed the new certificate (a miss falls back to the primary). Receipts stay on the primary. The lag
query reads 0 on a caught-up standby and more while replay is paused; ingest exports it as
vaxline_postgres_replica_lag_seconds, +Inf when the standby does not answer. Past one Postgres: the Citus
plan in docs/operations.md names every table the migrations create.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
import socket
import subprocess
from pathlib import Path

import asyncpg
import pytest
from prometheus_client import REGISTRY

from ingest.server import export_replica_lag
from monitoring import names
from storage.migrate import migrate
from storage.replica import replica_lag
from tests.conftest import ROOT, wait_until
from tests.factory import dose
from tests.stack import running_stack
from vaxline.dcc.keys import KeyStore

DATABASE = "vaxline"
INGEST_ROLE = {"role": "ingest"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Postgres:
    """One postmaster from pgserver's binaries, on 127.0.0.1 only, logging under a `postgres` folder (which the
    personal-data scan of the logs leaves out, as it does the embedded server's)."""

    def __init__(self, data: Path, log: Path):
        from pgserver._commands import POSTGRES_BIN_PATH

        self.bin, self.data, self.log, self.port = POSTGRES_BIN_PATH, data, log, _free_port()
        self.user = None
        if os.geteuid() == 0:  # initdb and postgres refuse root: pgserver's own user
            from pgserver.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists

            self.user = "pgserver"
            ensure_user_exists(self.user)
            ensure_prefix_permissions(self.bin)
            ensure_folder_permissions(self.bin, 0o055)
            ensure_folder_permissions(self.bin.parent / "lib", 0o044)

    def run(self, tool: str, *args: str) -> None:
        done = subprocess.run([str(self.bin / tool), *args], user=self.user, timeout=120,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False)
        assert done.returncode == 0, f"{tool} failed: {done.stderr}"

    def own(self, *folders: Path) -> None:
        for folder in folders:
            folder.mkdir(parents=True, exist_ok=True)
            if self.user:
                from pgserver.utils import ensure_prefix_permissions

                ensure_prefix_permissions(folder)
                os.chown(folder, *_ids(self.user))

    def start(self) -> None:
        self.run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start", "-o",
                 f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories=''")

    def stop(self) -> None:
        with contextlib.suppress(AssertionError, subprocess.SubprocessError):
            self.run("pg_ctl", "-D", str(self.data), "-w", "-t", "30", "-m", "fast", "stop")

    def url(self, database: str = DATABASE) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"


def _ids(user: str) -> tuple[int, int]:
    import pwd

    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid


HBA = """\
local   all             all                                     trust
host    all             all             127.0.0.1/32            trust
host    replication     all             127.0.0.1/32            trust
"""


@pytest.fixture(scope="module")
def replicated(tmp_path_factory):
    """(primary, standby): a migrated database on the primary, streamed to a hot standby."""
    folder = tmp_path_factory.mktemp("replica")
    logs = folder / "postgres"
    primary = Postgres(folder / "primary", logs / "primary.log")
    standby = Postgres(folder / "standby", logs / "standby.log")
    primary.own(logs, primary.data)
    primary.run("initdb", "-D", str(primary.data), "-U", "postgres", "--auth=trust", "--encoding=utf8")
    (primary.data / "pg_hba.conf").write_text(HBA)
    with (primary.data / "postgresql.conf").open("a") as conf:
        conf.write("wal_level = replica\nmax_wal_senders = 4\nhot_standby = on\nhot_standby_feedback = on\n")
    primary.start()
    try:
        asyncio.run(_create_database(primary.url("postgres"), primary.url()))
        standby.own(standby.data)
        standby.data.chmod(0o700)
        primary.run("pg_basebackup", "-h", "127.0.0.1", "-p", str(primary.port), "-U", "postgres",
                    "-D", str(standby.data), "-R", "-X", "stream", "-c", "fast")
        standby.start()
        try:
            asyncio.run(_streaming(primary.url()))
            yield primary, standby
        finally:
            standby.stop()
    finally:
        primary.stop()


async def _create_database(admin_url: str, url: str) -> None:
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f"CREATE DATABASE {DATABASE}")
    finally:
        await admin.close()
    conn = await asyncpg.connect(url)
    try:
        await migrate(conn)
    finally:
        await conn.close()


async def _streaming(primary_url: str) -> None:
    conn = await asyncpg.connect(primary_url)
    try:
        streaming = "SELECT count(*) = 1 FROM pg_stat_replication WHERE state = 'streaming'"
        await wait_until(lambda: conn.fetchval(streaming), message="the standby streaming")
    finally:
        await conn.close()


@pytest.fixture
async def nodes(replicated):
    """Connections to the primary and the standby; the standby replaying, and caught up, after the test."""
    primary, standby = replicated
    p, s = await asyncpg.connect(primary.url()), await asyncpg.connect(standby.url())
    yield p, s
    await s.execute("SELECT pg_wal_replay_resume()")
    await caught_up(p, s)
    await p.close()
    await s.close()


async def caught_up(primary: asyncpg.Connection, standby: asyncpg.Connection) -> None:
    target = await primary.fetchval("SELECT pg_current_wal_lsn()")
    await wait_until(lambda: standby.fetchval("SELECT pg_last_wal_replay_lsn() >= $1", target),
                     message="the standby caught up")


async def paused(standby: asyncpg.Connection) -> None:
    await standby.execute("SELECT pg_wal_replay_pause()")
    await wait_until(lambda: standby.fetchval("SELECT pg_get_wal_replay_pause_state() = 'paused'"),
                     message="replay paused")


@pytest.fixture
def replica_settings(make_settings, replicated):
    primary, standby = replicated
    return make_settings(database_url=primary.url(), database_read_url=standby.url())


async def persisted(stack, token: str, doses: list[dict]) -> None:
    """Posted, and persisted as the batch's receipt (read on the primary) says."""
    response = await stack.post(token, {"doses": doses})
    assert response.status == 202, await response.text()
    batch_id = (await response.json())["batch_id"]

    async def receipt():
        answer = await stack.client.get(f"/v1/batches/{batch_id}", headers={"Authorization": f"Bearer {token}"})
        return (await answer.json()).get("status") == "persisted"

    await wait_until(receipt, message="the batch persisted")


async def person_status(stack, token: str, person: dict) -> int:
    response = await stack.client.get(f"/v1/persons/{person['national_id']}",
                                      headers={"Authorization": f"Bearer {token}"})
    return response.status


async def stats_total(stack, token: str) -> int:
    response = await stack.client.get("/v1/stats", headers={"Authorization": f"Bearer {token}"})
    assert response.status == 200
    return (await response.json())["total"]


async def lookup(stack, person: dict):
    response = await stack.client.post("/v1/certificates/lookup", json={
        "national_id": person["national_id"], "birth_date": person["birth_date"]})
    return response.status, json.loads(await response.text())


async def test_reads_are_served_by_the_standby(replica_settings, nodes):
    primary, standby = nodes
    KeyStore(replica_settings.signing_keys_dir).create()
    async with running_stack(replica_settings, certifiers=1) as stack:
        _, token = await stack.site("R-001")
        first, second = dose(501), dose(502)
        await persisted(stack, token, [first])
        await caught_up(primary, standby)
        assert await person_status(stack, token, first) == 200
        await wait_until(lambda: _found(stack, first), message="the first person's certificate on the standby")
        assert await stats_total(stack, token) == 1

        await paused(standby)
        await persisted(stack, token, [second])  # the receipt is read on the primary: it says persisted
        assert await primary.fetchval("SELECT count(*) FROM doses") == 2
        assert await person_status(stack, token, second) == 404  # the standby has not replayed it
        assert await stats_total(stack, token) == 1
        assert (await lookup(stack, second))[0] == 404
        assert await replica_lag(standby) > 0
        assert await replica_lag(primary) is None

        await standby.execute("SELECT pg_wal_replay_resume()")
        await caught_up(primary, standby)
        assert await person_status(stack, token, second) == 200
        assert await stats_total(stack, token) == 2
        await wait_until(lambda: _found(stack, second), message="the second person's certificate")
        assert await replica_lag(standby) == 0


async def _found(stack, person: dict) -> bool:
    return (await lookup(stack, person))[0] == 200


async def test_a_lookup_issues_on_the_primary_and_its_link_answers_before_the_standby_replays(replica_settings, nodes):
    primary, standby = nodes
    KeyStore(replica_settings.signing_keys_dir).create()
    async with running_stack(replica_settings) as stack:  # no certifier: the lookup issues
        _, token = await stack.site("R-002")
        person = dose(503)
        await persisted(stack, token, [person])
        await caught_up(primary, standby)
        await paused(standby)
        status, certificate = await lookup(stack, person)
        assert status == 200, certificate  # signed and stored on the primary, read back there
        stored = await primary.fetchval("SELECT uvci FROM certificates WHERE national_id = $1 AND status = 'current'",
                                        person["national_id"])
        assert stored == certificate["uvci"]
        assert await standby.fetchval("SELECT count(*) FROM certificates WHERE national_id = $1",
                                      person["national_id"]) == 0  # not replayed yet
        linked = await stack.client.get(certificate["link"])
        assert linked.status == 200 and (await linked.json())["uvci"] == certificate["uvci"]


async def test_the_lag_is_exported_and_an_unreachable_standby_reads_as_infinitely_behind(replica_settings, nodes):
    primary, standby = nodes
    pool = await asyncpg.create_pool(replica_settings.database_read_url, min_size=0, max_size=1)
    exporting = asyncio.create_task(export_replica_lag(pool, every=0.05))
    try:
        await wait_until(lambda: REGISTRY.get_sample_value(names.REPLICA_LAG, INGEST_ROLE) == 0.0, message="lag 0")
        await paused(standby)
        await primary.execute("CREATE TABLE lag_probe (n int); INSERT INTO lag_probe VALUES (1)")
        await wait_until(lambda: (REGISTRY.get_sample_value(names.REPLICA_LAG, INGEST_ROLE) or 0) > 0,
                         message="lag above 0")
    finally:
        exporting.cancel()
        await pool.close()
        await primary.execute("DROP TABLE IF EXISTS lag_probe")
    gone = await asyncpg.create_pool(f"postgresql://postgres@127.0.0.1:{_free_port()}/x", min_size=0, max_size=1)
    exporting = asyncio.create_task(export_replica_lag(gone, every=0.05))
    try:
        await wait_until(lambda: REGISTRY.get_sample_value(names.REPLICA_LAG, INGEST_ROLE) == math.inf, message="+Inf")
    finally:
        exporting.cancel()
        await gone.close()


def test_the_citus_plan_names_every_table():
    migrations = " ".join(p.read_text() for p in (ROOT / "storage" / "migrations").glob("*.sql"))
    tables = set(re.findall(r"CREATE TABLE (\w+) \(", migrations))  # partitions are "PARTITION OF", not "("
    docs = (ROOT / "docs" / "operations.md").read_text()
    plan = docs[docs.index("## Past one Postgres: a Citus plan"):docs.index("## Durability")]
    planned = set(re.findall(r"^\| (.+?) \|", plan, flags=re.MULTILINE))
    named = {name for row in planned for name in re.findall(r"`(\w+)`", row)}
    assert tables and tables <= named, tables - named
