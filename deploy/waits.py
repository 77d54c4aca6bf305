"""Waits on a running stack, each a poll with a deadline: persisted, drained, certified, reviewed.

They raise TimeoutError past `timeout`. The benchmarks, the load tests and the tests read their figures
only once the stack has caught up this way.
"""

from __future__ import annotations

import asyncio
import time

import asyncpg

from vaxline.config import Settings
from vaxline.streams import connect_redis, drained


async def wait_persisted(settings: Settings, doses: int, *, site_id: int | None = None, timeout: float = 3600,
                         every: float = 0.1) -> None:
    """Until the receipts count `doses` persisted (of one site, or of all)."""
    conn = await asyncpg.connect(settings.database_url)
    deadline = time.monotonic() + timeout
    try:
        while await conn.fetchval("SELECT coalesce(sum(accepted), 0) FROM batches"
                                  " WHERE $1::int IS NULL OR site_id = $1", site_id) < doses:
            if time.monotonic() > deadline:
                raise TimeoutError("not every dose was persisted in time")
            await asyncio.sleep(every)
    finally:
        await conn.close()


async def wait_streams_drained(settings: Settings, timeout: float = 3600) -> None:
    """Until every entry of every dose shard was delivered and acknowledged (committed)."""
    redis = connect_redis(settings)
    deadline = time.monotonic() + timeout
    try:
        while not all([await drained(redis, stream, settings.group) for stream in settings.streams]):
            if time.monotonic() > deadline:
                raise TimeoutError("the dose streams were not drained in time")
            await asyncio.sleep(0.5)
    finally:
        await redis.aclose()


async def wait_certified(settings: Settings, timeout: float = 3600) -> None:
    """Until every person has a current certificate stating all of their persisted doses.

    Polled cheaply on the certify stream (drained: every handoff delivered and acknowledged), then
    checked exactly in Postgres, which would steal the certifiers' CPU if it were polled."""
    redis = connect_redis(settings)
    conn = await asyncpg.connect(settings.database_url)
    deadline = time.monotonic() + timeout
    try:
        while True:
            if await drained(redis, settings.certify_stream, settings.certify_group) and await conn.fetchval(
                    "SELECT (SELECT count(*) FROM persons) = count(*)"
                    " AND (SELECT count(*) FROM doses) = coalesce(sum(jsonb_array_length(doses)), 0)"
                    " FROM certificates WHERE status = 'current'"):
                return
            if time.monotonic() > deadline:
                raise TimeoutError("not every person was certified in time")
            await asyncio.sleep(0.5)
    finally:
        await conn.close()
        await redis.aclose()


async def wait_reviewed(settings: Settings, timeout: float = 3600) -> None:
    """Until no person is due for review (flags and registry status current)."""
    conn = await asyncpg.connect(settings.database_url)
    deadline = time.monotonic() + timeout
    try:
        while await conn.fetchval("SELECT count(*) FROM persons WHERE review_due"):
            if time.monotonic() > deadline:
                raise TimeoutError("not every person was reviewed in time")
            await asyncio.sleep(0.5)
    finally:
        await conn.close()
