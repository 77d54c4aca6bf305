"""Crash safety: processes killed mid-stream lose nothing and store nothing twice.

These run workers and ingest as real processes (python -m workers / ingest)
and SIGKILL them; the assertions are exact counts in Postgres.

Covers: 50,000 doses streaming in while a worker process is SIGKILLed three times mid-drain and restarted
(alternately under its own name and a new one), then exactly once in Postgres, nothing pending, and no
national ID in the worker's log; an ingest process SIGKILLed twice mid-request while four clients post and
retry what got no 202: every 202 persisted, exactly once; Redis SIGKILLed while acknowledged batches exist
only in its AOF, restarted on it: every 202 persisted exactly once (a batch whose reply was lost with Redis
is retried by its site and counts as duplicates); Postgres restarted (fast: sessions killed mid-transaction)
while workers persist and ingest keeps answering 202 for known sites: workers retry, then drain exactly
once; a poison entry (undecodable) and a data-poison entry (a NUL byte Postgres refuses) dead-lettered with
their errors while a good batch persists. A certifier process SIGKILLed three times while 20,000 persons are
certified (restarted under its own name and a new one): exactly 20,000 certificates, one current per person,
none signed twice.
"""

import asyncio
import datetime as dt
import random
import signal
import socket

import aiohttp
import asyncpg
import msgspec
import pytest

from tests.conftest import reaped, spawn, wait_until
from tests.factory import batch, dose
from tests.stack import running_stack
from vaxline.doses import Dose
from vaxline.entries import ENTRY_FIELD, encode_entry
from vaxline.streams import drained


async def exactly_once(db, expected: int) -> None:
    row = await db.fetchrow(
        "SELECT count(*) AS rows, count(DISTINCT (site_id, record_id)) AS keys FROM doses")
    assert row["rows"] == row["keys"] == expected
    receipts = await db.fetchrow("SELECT count(*) AS n, sum(inserted) AS inserted, sum(accepted) AS accepted,"
                                 " bool_and(inserted + duplicates = accepted) AS balanced FROM batches")
    assert receipts["inserted"] == expected and receipts["balanced"]


async def nothing_pending(redis, settings) -> bool:
    for stream in settings.streams:
        if (await redis.xpending(stream, settings.group))["pending"]:
            return False
    return True


async def test_workers_killed_three_times_mid_drain_lose_nothing(make_settings, db, redis):
    settings = make_settings(claim_idle_ms=1000, gather_max_doses=2000)
    total, per_batch = 50_000, 500
    rng = random.Random(7)
    async with running_stack(settings, workers=0) as stack:
        _, token = await stack.site()
        workers = [spawn("workers", settings, "--consumer", "crash-0")]
        accepted: list[str] = []
        persisted_at_kill: list[int] = []

        async def post_all():
            for start in range(0, total, per_batch):
                response = await stack.post(token, batch(start, per_batch))
                assert response.status == 202
                accepted.append((await response.json())["batch_id"])

        async def kill_and_restart():
            for kill in range(1, 4):
                await wait_until(lambda: db.fetchval("SELECT count(*) >= $1 FROM doses", kill * 10_000),
                                 timeout=120, message=f"{kill * 10_000} doses before kill {kill}")
                await asyncio.sleep(rng.uniform(0, 0.2))
                workers[-1].send_signal(signal.SIGKILL)
                workers[-1].wait()
                persisted_at_kill.append(await db.fetchval("SELECT count(*) FROM doses"))
                # Alternately restart under the same name (own pending list) and a new one (XAUTOCLAIM).
                workers.append(spawn("workers", settings, "--consumer", f"crash-{kill % 2}"))

        with reaped(workers):
            await asyncio.gather(post_all(), kill_and_restart())
            await wait_until(lambda: db.fetchval("SELECT count(*) = $1 FROM batches", len(accepted)),
                             timeout=180, message="every accepted batch persisted")
            await wait_until(lambda: nothing_pending(redis, settings), timeout=30, message="pending lists empty")
        for process in workers[:-1]:
            assert process.returncode == -signal.SIGKILL
        assert all(count < total for count in persisted_at_kill), persisted_at_kill  # killed mid-drain
    await exactly_once(db, total)
    log = (settings.data_dir / "workers.log").read_text()
    assert log and not any(national_id(n) in log for n in range(0, total, 97))  # no personal data in logs


def national_id(n: int) -> str:
    return dose(n)["national_id"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_ingest_killed_mid_request_keeps_every_202_and_retries_are_safe(settings, db):
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1/doses"
    batches, per_batch = 80, 100
    async with running_stack(settings, workers=1) as stack:
        _, token = await stack.site()
        servers = [spawn("ingest", settings, "--port", str(port))]
        got_202: dict[int, str] = {}
        failures = 0

        async def post(session, start):
            nonlocal failures
            while True:
                try:
                    async with session.post(url, json=batch(start, per_batch),
                                            headers={"Authorization": f"Bearer {token}"}) as response:
                        if response.status == 202:
                            got_202[start] = (await response.json())["batch_id"]
                            return
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    pass
                failures += 1  # no 202: the site retries the same records
                await asyncio.sleep(0.05)

        async def clients():
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
                queue = list(range(0, batches * per_batch, per_batch))

                async def lane():
                    while queue:
                        await post(session, queue.pop(0))

                await asyncio.gather(*(lane() for _ in range(4)))

        async def kill_and_restart():
            for kill in range(1, 3):
                await wait_until(lambda: len(got_202) >= kill * 20, timeout=60, message="202s before the kill")
                servers[-1].send_signal(signal.SIGKILL)
                servers[-1].wait()
                servers.append(spawn("ingest", settings, "--port", str(port)))

        async def ready():
            try:
                async with aiohttp.ClientSession() as session:
                    async with session.get(f"http://127.0.0.1:{port}/readyz") as response:
                        return response.status == 200
            except aiohttp.ClientError:
                return False

        with reaped(servers):
            await wait_until(ready, timeout=30, message="ingest ready")
            await asyncio.gather(clients(), kill_and_restart())
            assert len(got_202) == batches
            await wait_until(lambda: db.fetchval("SELECT count(*) >= $1 FROM batches", batches),
                             timeout=60, message="receipts for every 202")
    await exactly_once(db, batches * per_batch)
    receipted = {r["batch_id"] for r in await db.fetch("SELECT batch_id FROM batches")}
    assert set(got_202.values()) <= receipted


async def test_a_poison_entry_is_dead_lettered_and_does_not_block_the_rest(make_settings, db, redis):
    settings = make_settings(max_deliveries=2, claim_idle_ms=200)
    async with running_stack(settings, workers=1) as stack:
        site_id, token = await stack.site()
        stream = settings.stream(settings.shard_of(site_id))
        garbage = await redis.xadd(stream, {ENTRY_FIELD: b"\xc1 not msgpack"})
        nul = msgspec.convert(batch(900, 1)["doses"][0] | {"lot": "LOT\x00"}, Dose)
        unstorable = await redis.xadd(stream, {ENTRY_FIELD: encode_entry(
            site_id=site_id, received_at=dt.datetime.now().timestamp(), doses=[nul])})
        good = (await (await stack.post(token, batch(0, 10))).json())["batch_id"]

        await wait_until(lambda: db.fetchval("SELECT count(*) = 2 FROM dead_letters"), timeout=30,
                         message="two dead letters")
        await wait_until(lambda: db.fetchval("SELECT count(*) = 1 FROM batches WHERE batch_id = $1", good),
                         message="the good batch")
        unstorable_id = f"{settings.shard_of(site_id)}-{unstorable.decode()}"
        response = await stack.client.get(f"/v1/batches/{unstorable_id}", headers={"Authorization": f"Bearer {token}"})
        assert (await response.json())["status"] == "failed"

    letters = {r["entry_id"]: r for r in await db.fetch("SELECT entry_id, error, deliveries, site_id FROM dead_letters")}
    assert "undecodable" in letters[garbage.decode()]["error"]
    assert letters[unstorable.decode()]["deliveries"] >= 2
    assert letters[unstorable.decode()]["site_id"] == site_id
    assert "Character" in letters[unstorable.decode()]["error"] or "0x00" in letters[unstorable.decode()]["error"]
    assert await redis.xlen(settings.dead_letter_stream) == 2
    assert await db.fetchval("SELECT count(*) FROM doses") == 10
    assert await nothing_pending(redis, settings)


async def test_redis_killed_mid_drain_restarts_from_its_aof_and_every_202_persists_once(make_settings, db, tmp_path):
    """SIGKILL Redis (appendfsync always) while batches stream in and workers drain; restart it on its AOF."""
    from deploy.embedded import EmbeddedRedis

    redis_server = EmbeddedRedis(tmp_path / "redis").start()
    settings = make_settings(redis_url=redis_server.url)
    batches, per_batch = 60, 200
    got_202: dict[int, str] = {}
    async with running_stack(settings, workers=0) as stack:
        _, token = await stack.site()
        workers = [spawn("workers", settings, "--consumer", "aof-0")]

        async def post_all():
            queue = list(range(0, batches * per_batch, per_batch))

            async def lane():
                while queue:
                    start = queue.pop(0)
                    while True:  # a site retries what got no 202, with the same record ids
                        response = await stack.post(token, batch(start, per_batch))
                        if response.status == 202:
                            got_202[start] = (await response.json())["batch_id"]
                            break
                        assert response.status == 503 and response.headers["Retry-After"]
                        await asyncio.sleep(0.05)

            await asyncio.gather(lane(), lane())

        queued_at_kill: list[int] = []

        async def kill_and_restart():
            await wait_until(lambda: len(got_202) >= batches // 3, timeout=60, message="a third posted")
            workers[-1].send_signal(signal.SIGSTOP)  # so that acknowledged batches wait in the stream ...
            posted = len(got_202)
            await wait_until(lambda: len(got_202) >= posted + 5, timeout=60, message="more 202s")
            queued_at_kill.append(len(got_202) - await db.fetchval("SELECT count(*) FROM batches"))
            redis_server.kill()  # ... when Redis dies
            await asyncio.sleep(0.5)  # Redis is down for a while: ingest answers 503
            redis_server.start()
            workers[-1].send_signal(signal.SIGCONT)

        with reaped(workers):
            try:
                await asyncio.gather(post_all(), kill_and_restart())
                # A batch whose XADD landed but whose reply was lost with Redis got a 503 and was
                # posted again: it is persisted twice, its records once (the second is all duplicates).
                await wait_until(lambda: db.fetchval("SELECT count(*) = $1 FROM batches WHERE batch_id = ANY($2)",
                                                     batches, list(got_202.values())),
                                 timeout=120, message="every 202 persisted")
            finally:
                redis_server.stop()
    assert len(got_202) == batches
    assert queued_at_kill[0] >= 5  # acknowledged, only in Redis's AOF when it was killed
    await exactly_once(db, batches * per_batch)


async def test_postgres_restarted_mid_copy_workers_wait_then_drain_exactly_once(services, settings, db):
    """Restart Postgres (fast: sessions killed mid-transaction) while workers persist and ingest accepts."""
    pg_server = services[3]
    if pg_server is None:
        pytest.skip("restarts only the embedded Postgres, never a server given by TEST_DATABASE_URL")
    from pgserver._commands import pg_ctl

    batches, per_batch = 60, 500
    got_202: list[str] = []
    async with running_stack(settings, workers=0) as stack:
        _, token = await stack.site()
        workers = [spawn("workers", settings, "--consumer", "pg-0")]

        async def post_all():
            for start in range(0, batches * per_batch, per_batch):
                response = await stack.post(token, batch(start, per_batch))
                assert response.status == 202  # ingest never needs Postgres for a known site's batch
                got_202.append((await response.json())["batch_id"])

        async def restart():
            await wait_until(lambda: db.fetchval("SELECT count(*) >= 5 FROM batches"), message="persisting")
            await asyncio.to_thread(pg_ctl, ["-w", "-m", "fast", "restart"], pgdata=pg_server.pgdata,
                                    user=pg_server.system_user, timeout=60)

        with reaped(workers):
            await asyncio.gather(post_all(), restart())
            check = await asyncpg.connect(settings.database_url)
            try:
                await wait_until(lambda: check.fetchval("SELECT count(*) = $1 FROM batches", batches),
                                 timeout=120, message="every batch persisted after the restart")
                retried = await check.fetchval("SELECT 1")  # the new server answers
            finally:
                await check.close()
        assert retried == 1
    assert "_attempt failed" in (settings.data_dir / "workers.log").read_text()  # the restart hit a persist
    conn = await asyncpg.connect(settings.database_url)
    try:
        await exactly_once(conn, batches * per_batch)
    finally:
        await conn.close()


async def test_certifier_killed_three_times_issues_each_certificate_exactly_once(make_settings, db, redis):
    """A certifier SIGKILLed mid-run (between signing and storing, or mid-transaction) loses no person and,
    on redelivery, signs nobody twice: one certificate per person, all current, none revoked."""
    from vaxline.dcc.keys import KeyStore

    settings = make_settings(claim_idle_ms=1000, certify_max_persons=500)
    KeyStore(settings.signing_keys_dir).ensure()
    total, per_batch = 20_000, 500
    rng = random.Random(11)
    async with running_stack(settings, workers=1) as stack:
        _, token = await stack.site()
        certifiers = [spawn("workers", settings, "--consumer", "cert-0", "--certify")]

        async def post_all():
            for start in range(0, total, per_batch):
                assert (await stack.post(token, batch(start, per_batch))).status == 202

        async def kill_and_restart():
            for kill in range(1, 4):
                await wait_until(lambda: db.fetchval("SELECT count(*) >= $1 FROM certificates", kill * 4_000),
                                 timeout=120, message=f"{kill * 4_000} certificates before kill {kill}")
                await asyncio.sleep(rng.uniform(0, 0.2))
                certifiers[-1].send_signal(signal.SIGKILL)
                certifiers[-1].wait()
                certifiers.append(spawn("workers", settings, "--consumer", f"cert-{kill % 2}", "--certify"))

        with reaped(certifiers):
            await asyncio.gather(post_all(), kill_and_restart())
            await wait_until(lambda: db.fetchval("SELECT count(*) = $1 FROM certificates", total), timeout=180,
                             message="every person certified")
            await wait_until(lambda: drained(redis, settings.certify_stream, settings.certify_group), timeout=60,
                             message="handoffs acknowledged")
    row = await db.fetchrow("SELECT count(*) AS certificates, count(DISTINCT national_id) AS persons,"
                            " count(*) FILTER (WHERE status = 'current') AS current FROM certificates")
    assert tuple(row) == (total, total, total)
    assert await db.fetchval("SELECT count(*) FROM persons") == total
    log = (settings.data_dir / "workers.log").read_text()
    assert log and not any(national_id(n) in log for n in range(0, total, 97))
