"""Service faults: ingest and workers reach Postgres and Redis only through fault-injecting proxies.

While connections are dropped, reset and delayed at random, and while a service is unreachable
altogether, sites keep posting and retry whatever got no 202 (with the same record ids, as a desk
does). Neither ingest nor the workers are restarted. At the end, with the faults off: every batch
that got a 202 has its receipt, every record is in Postgres exactly once, nothing is pending, no
good dose was dead-lettered, and reconciliation has nothing unexplained. Exact counts throughout.

Covers: ingest and workers reach Postgres and Redis only through a fault-injecting TCP proxy
(`tests/proxy.py`): while 0.5% of chunks are dropped and 0.5% reset, each is delayed up to 5 ms, and every
connection is ended every 0.5-2 s, and while the service is refused for a while, a site posts 60 batches and
retries whatever got no 202 with the same records; then every 202 has its receipt, every record is in
Postgres exactly once (count and per-record), nothing is pending, nothing was dead-lettered and
reconciliation has 0 unexplained, for Postgres and for Redis alike (while Postgres is refused, ingest
answers 202 and no receipt is written). With Redis refused, posts get 503 with `Retry-After` and `/readyz`
503, both recover in the same process; with Postgres refused, `/readyz` is 503 while a known site's post
still gets 202. With Redis partitioned (all traffic held), the post in flight gets its 503 after the socket
timeout, later ones at once, `/readyz` within 2 s; the held XADD lands when the partition heals and its
retry counts as duplicates. Postgres restarted while the proxy holds a persist transaction's COPY data half
sent: the worker retries and the group lands once.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import datetime as dt
import time
from urllib.parse import parse_qs, urlsplit

import aiohttp
import asyncpg
import pytest

from storage import reconcile
from tests.conftest import wait_until
from tests.factory import batch, dose
from tests.proxy import FaultProxy
from tests.stack import running_stack
from tests.test_crash import exactly_once, nothing_pending
from vaxline.streams import drained, read_ingest_counts

COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"  # the first bytes of a binary COPY's data (asyncpg's copy_records_to_table)


def postgres_target(url: str) -> str | tuple[str, int]:
    """Where a Postgres URL points: a Unix socket path or (host, port)."""
    parts = urlsplit(url)
    host = parse_qs(parts.query).get("host", [parts.hostname or "127.0.0.1"])[0]
    port = parts.port or 5432
    return f"{host}/.s.PGSQL.{port}" if host.startswith("/") else (host, port)


def redis_target(url: str) -> str | tuple[str, int]:
    parts = urlsplit(url)
    return parts.path if parts.scheme == "unix" else (parts.hostname or "127.0.0.1", parts.port or 6379)


class Desk:
    """Posts batches until each gets a 202, retrying the same records after a 503 or a lost connection."""

    def __init__(self, stack, token: str, *, per_batch: int, pace: float = 0.0):
        self.stack = stack
        self.pace = pace  # seconds between a lane's batches, as desks spread over a day
        self.token = token
        self.per_batch = per_batch
        self.got_202: dict[int, str] = {}  # first record number -> batch id
        self.answers: collections.Counter = collections.Counter()

    async def post(self, start: int) -> None:
        while True:
            try:
                response = await self.stack.post(self.token, batch(start, self.per_batch))
                self.answers[response.status] += 1
                if response.status == 202:
                    body = await response.json()
                    assert body["accepted"] == self.per_batch and not body["rejected"]
                    self.got_202[start] = body["batch_id"]
                    return
                # Only "retry later" is acceptable under a service fault: never a 500, never a 4xx.
                assert response.status == 503, (response.status, await response.text())
                assert int(response.headers["Retry-After"]) > 0
            except (aiohttp.ClientError, asyncio.TimeoutError):
                self.answers["connection"] += 1
            await asyncio.sleep(0.05)

    async def post_all(self, starts: list[int], *, lanes: int = 2) -> None:
        queue = list(starts)

        async def lane():
            while queue:
                await self.post(queue.pop(0))
                await asyncio.sleep(self.pace)

        await asyncio.gather(*(lane() for _ in range(lanes)))


async def every_202_persisted_exactly_once(db, redis, settings, desk: Desk, total: int) -> None:
    """The end state every fault test asserts, with the faults off."""
    batch_ids = list(desk.got_202.values())
    await wait_until(lambda: db.fetchval("SELECT count(*) = $1 FROM batches WHERE batch_id = ANY($2)",
                                         len(batch_ids), batch_ids),
                     timeout=60, message="a receipt for every 202")
    await wait_until(lambda: nothing_pending(redis, settings), timeout=30, message="nothing pending")
    for stream in settings.streams:
        assert await drained(redis, stream, settings.group)
    assert len(desk.got_202) * desk.per_batch == total
    await exactly_once(db, total)  # count(*) = distinct (site, record_id) = total; receipts balance
    assert await db.fetchval("SELECT count(*) FROM dead_letters") == 0  # a fault is never the data's fault
    # Exactly the records posted, each once. A batch whose XADD landed but whose answer was lost (a 503)
    # was posted again: two receipts for the same records, whichever persisted first inserted them.
    records = await db.fetchrow("SELECT min(record_id) AS first, max(record_id) AS last FROM doses")
    assert (records["first"], records["last"]) == (dose(0)["record_id"], dose(total - 1)["record_id"])
    extra = await db.fetchval("SELECT count(*) FROM batches WHERE NOT batch_id = ANY($1)", batch_ids)
    assert extra <= desk.answers[503] + desk.answers["connection"]
    counts = await read_ingest_counts(redis, settings)  # Redis first, as vaxline reconcile reads it
    report = await reconcile.reconcile(db, counts, first=dt.date(2021, 1, 1),
                                       last=dt.date.today() + dt.timedelta(days=1))
    assert report["unexplained"] == 0, report["totals"]
    assert report["totals"]["present"] == total


@contextlib.asynccontextmanager
async def faults_on(proxy: FaultProxy, *, at_least: float = 2.0):
    """Random faults for the block, and for `at_least` seconds: 0.5% of chunks dropped, 0.5% reset, each
    held up to 5 ms, and every connection ended every 0.5-2 s."""
    proxy.faults(drop=0.005, reset=0.005, delay=0.005)
    cutting = asyncio.create_task(proxy.cut_at_random(every=(0.5, 2.0)))
    until = time.monotonic() + at_least
    try:
        yield
        await asyncio.sleep(until - time.monotonic())
    finally:
        cutting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await cutting
        proxy.faults()


def faults_seen(proxy: FaultProxy) -> int:
    return proxy.stats["drop"] + proxy.stats["reset"] + proxy.stats["cut"]


@pytest.fixture
async def pg_proxy(settings):
    proxy = await FaultProxy(postgres_target(settings.database_url), seed=8).start()
    yield proxy
    await proxy.close()


@pytest.fixture
async def redis_proxy(settings):
    proxy = await FaultProxy(redis_target(settings.redis_url), seed=9).start()
    yield proxy
    await proxy.close()


async def test_postgres_connections_dropped_reset_delayed_and_down_every_202_persists_once(
        settings, db, redis, pg_proxy):
    proxied = dataclasses.replace(settings, database_url=pg_proxy.postgres_url(settings.database_url),
                                  gather_max_doses=1_000)
    batches, per_batch = 60, 200
    starts = list(range(0, batches * per_batch, per_batch))
    async with running_stack(proxied, workers=2) as stack:
        _, token = await stack.site()
        desk = Desk(stack, token, per_batch=per_batch, pace=0.1)
        await desk.post_all(starts[:4], lanes=1)  # the site's token is cached from here on (30 s)
        async with faults_on(pg_proxy):
            await desk.post_all(starts[4:30])
            await wait_until(lambda: db.fetchval("SELECT count(*) >= 20 FROM batches"), message="persisting")

        # Postgres unreachable: ingest keeps accepting known sites' batches, the workers wait.
        pg_proxy.refuse()
        await asyncio.sleep(0.3)  # what was mid-commit settles
        receipts_before = await db.fetchval("SELECT count(*) FROM batches")
        await desk.post_all(starts[30:40])
        assert all(start in desk.got_202 for start in starts[30:40])
        assert await db.fetchval("SELECT count(*) FROM batches") == receipts_before  # nothing persisted meanwhile

        pg_proxy.open()
        async with faults_on(pg_proxy):
            await desk.post_all(starts[40:])
        await every_202_persisted_exactly_once(db, redis, settings, desk, batches * per_batch)
    assert faults_seen(pg_proxy) >= 5 and pg_proxy.stats["refused"] >= 1, pg_proxy.stats


async def test_redis_connections_dropped_reset_delayed_and_down_every_202_persists_once(
        settings, db, redis, redis_proxy):
    proxied = dataclasses.replace(settings, redis_url=redis_proxy.redis_url(settings.redis_url),
                                  gather_max_doses=1_000)
    batches, per_batch = 60, 200
    starts = list(range(0, batches * per_batch, per_batch))
    async with running_stack(proxied, workers=2) as stack:
        _, token = await stack.site()
        desk = Desk(stack, token, per_batch=per_batch, pace=0.1)
        await desk.post_all(starts[:4], lanes=1)
        async with faults_on(redis_proxy):
            await desk.post_all(starts[4:30])

        redis_proxy.refuse()  # Redis unreachable for a while: 503s, which the desk retries
        outage = asyncio.create_task(desk.post_all(starts[30:40]))
        await asyncio.sleep(1.5)
        assert not outage.done()
        redis_proxy.open()
        async with faults_on(redis_proxy):
            await outage
            await desk.post_all(starts[40:])
        await every_202_persisted_exactly_once(db, redis, settings, desk, batches * per_batch)
    assert faults_seen(redis_proxy) >= 5 and redis_proxy.stats["refused"] >= 1, redis_proxy.stats
    assert desk.answers[503] >= 1, desk.answers


async def test_while_redis_is_unreachable_posts_get_503_and_readyz_is_not_ready_then_both_recover(
        settings, db, redis, redis_proxy, pg_proxy):
    proxied = dataclasses.replace(settings, redis_url=redis_proxy.redis_url(settings.redis_url),
                                  database_url=pg_proxy.postgres_url(settings.database_url))
    async with running_stack(proxied, workers=1) as stack:
        _, token = await stack.site()
        desk = Desk(stack, token, per_batch=10)
        await desk.post(0)
        assert (await stack.client.get("/readyz")).status == 200

        redis_proxy.refuse()
        started = time.monotonic()
        for n in range(1, 4):
            response = await stack.post(token, batch(n * 10, 10))
            assert response.status == 503, await response.text()
            assert int(response.headers["Retry-After"]) > 0
        ready = await stack.client.get("/readyz")
        assert ready.status == 503
        assert (await ready.json())["checks"]["redis"].startswith("unreachable")
        assert time.monotonic() - started < 20

        redis_proxy.calm()  # the same ingest process, never restarted, accepts again
        await wait_until(lambda: _status(stack, "/readyz", 200), timeout=20, message="ready again")
        for n in range(1, 4):
            await desk.post(n * 10)

        pg_proxy.refuse()  # Postgres unreachable: not ready, but a known site's batches are still accepted
        ready = await stack.client.get("/readyz")
        assert ready.status == 503 and (await ready.json())["checks"]["postgres"].startswith("unreachable")
        response = await stack.post(token, batch(40, 10))
        assert response.status == 202
        desk.got_202[40] = (await response.json())["batch_id"]
        pg_proxy.calm()
        await wait_until(lambda: _status(stack, "/readyz", 200), timeout=20, message="ready again")
        await every_202_persisted_exactly_once(db, redis, settings, desk, 50)


async def test_while_redis_is_partitioned_posts_get_503_never_202_and_the_held_xadd_persists_once(
        settings, db, redis, redis_proxy):
    """Packets to Redis dropped (no RST: connections hang): the XADD in flight waits for the socket timeout
    and answers 503; later posts get 503 at once (the backlog reading is stale); /readyz answers 503 within
    its 2 s. When the partition heals, the held XADD is delivered after all: that batch is persisted, and
    the desk's retry of it (the same records) counts as duplicates."""
    proxied = dataclasses.replace(settings, redis_url=redis_proxy.redis_url(settings.redis_url))
    async with running_stack(proxied, workers=1) as stack:
        _, token = await stack.site()
        desk = Desk(stack, token, per_batch=10)
        await desk.post(0)
        redis_proxy.hold()
        started = time.monotonic()
        in_flight = asyncio.create_task(stack.post(token, batch(10, 10)))
        await asyncio.sleep(6)  # past 10 poll intervals: the backlog reading is stale
        response = await stack.post(token, batch(20, 10))
        assert response.status == 503 and int(response.headers["Retry-After"]) > 0
        ready_started = time.monotonic()
        assert (await stack.client.get("/readyz")).status == 503
        assert time.monotonic() - ready_started < 3
        response = await in_flight
        assert response.status == 503 and int(response.headers["Retry-After"]) > 0
        assert time.monotonic() - started < 15
        redis_proxy.calm()
        await desk.post(10)
        await desk.post(20)
        await every_202_persisted_exactly_once(db, redis, settings, desk, 30)
    assert await db.fetchval("SELECT count(*) FROM batches") == 4  # 0, 10 held, 10 again, 20


async def _status(stack, path: str, status: int) -> bool:
    return (await stack.client.get(path)).status == status


async def test_postgres_restarted_while_a_copy_is_half_sent_the_group_persists_once(services, settings, db, redis,
                                                                                     pg_proxy, caplog):
    """The proxy holds a persist transaction's COPY data mid-way; Postgres restarts under it (fast: the
    transaction is killed); the worker retries on a new connection and the group lands exactly once."""
    pg_server = services[3]
    if pg_server is None:
        pytest.skip("restarts only the embedded Postgres, never a server given by TEST_DATABASE_URL")
    from pgserver._commands import pg_ctl

    proxied = dataclasses.replace(settings, database_url=pg_proxy.postgres_url(settings.database_url))
    async with running_stack(proxied, workers=0) as stack:
        _, token = await stack.site()
        desk = Desk(stack, token, per_batch=500)
        await desk.post_all(list(range(0, 4000, 500)))  # queued: no worker yet
        trap = pg_proxy.trap(COPY_SIGNATURE)
        stack.start_worker("copy-0")
        await asyncio.wait_for(trap.sprung.wait(), 30)
        await asyncio.to_thread(pg_ctl, ["-w", "-m", "fast", "restart"], pgdata=pg_server.pgdata,
                                user=pg_server.system_user, timeout=60)
        trap.release()  # the rest of the COPY goes to a server that no longer has its session
        fresh = await asyncpg.connect(settings.database_url)
        try:
            await desk.post_all(list(range(4000, 5000, 500)))
            await every_202_persisted_exactly_once(fresh, redis, settings, desk, 5000)
        finally:
            await fresh.close()
    assert pg_proxy.stats["trapped"] == 1
    assert any(r.getMessage().startswith("_attempt failed") for r in caplog.records)  # the COPY did fail
