"""The run loop and retry every consumer shares: persisting workers, certifiers and reviewers.

`run_consumer` holds a Postgres pool once Postgres answers, runs `drain` again after each Redis failure
until asked to stop, keeps `housekeeping` beside it, and closes cleanly. `retrying` waits out a failure
of the system (Postgres or Redis unreachable, a deadlock) and raises a failure of the data (`POISON`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable

import asyncpg
import redis.asyncio as aioredis

from monitoring import metrics
from storage import session_settings
from storage.doses import prepare_connection
from storage.errors import POISON
from vaxline.config import Settings
from vaxline.streams import REDIS_TRANSIENT, connect_redis

log = logging.getLogger(__name__)


class Stopped(Exception):
    """Shutdown was asked for while waiting for Postgres: nothing was acknowledged."""


async def run_consumer(settings: Settings, stop: asyncio.Event, *, name: str, running,
                       drain: Callable[[aioredis.Redis, asyncpg.Pool], Awaitable[None]],
                       housekeeping: Callable[[aioredis.Redis, asyncpg.Pool], Awaitable[None]]) -> None:
    """What persisting workers and certifiers share: a pool once Postgres answers, `drain` again after
    each Redis failure until `stop`, `housekeeping` beside it, the `running` gauge, a clean close."""
    pool = await _create_pool(settings, stop, name)
    if pool is None:
        return
    redis = connect_redis(settings)
    keeping = asyncio.create_task(housekeeping(redis, pool))
    running.inc()
    try:
        while not stop.is_set():
            try:
                await drain(redis, pool)
            except REDIS_TRANSIENT as e:  # unreachable, failing over (a cluster's too), a stream deleted: start over
                log.warning("redis failed (%s: %s); reconnecting", type(e).__name__, str(e)[:200])
                await sleep_unless(stop, 1.0)
    except Stopped:
        log.info("stopped while waiting for postgres; what %s holds stays pending", name)
    except Exception:
        log.exception("%s failed; its pending entries go to the next consumer", name)
        raise
    finally:
        running.dec()
        # Housekeeping ends by itself once `stop` is set (a cancellation alone can be swallowed by a redis-py
        # command in flight); nothing here may wait forever, or a stopping process would hang.
        if not stop.is_set():
            keeping.cancel()
        _, still_running = await asyncio.wait([keeping], timeout=5)
        for task in still_running:
            task.cancel()
        await redis.aclose()
        try:
            await asyncio.wait_for(pool.close(), 10)
        except TimeoutError:
            pool.terminate()


async def _create_pool(settings: Settings, stop: asyncio.Event, name: str) -> asyncpg.Pool | None:
    """A pool once Postgres answers, its backends named after `name`; None if asked to stop first."""
    while not stop.is_set():
        try:
            return await asyncpg.create_pool(settings.database_url, min_size=1, max_size=3, init=prepare_connection,
                                             command_timeout=settings.statement_timeout,
                                             server_settings=session_settings(settings.database_url, name))
        except Exception as e:  # unreachable or starting up: wait for it
            log.warning("postgres unreachable (%s); retrying", type(e).__name__)
            await sleep_unless(stop, 1.0)
    return None


async def retrying(stop: asyncio.Event, operation, *args, retries=metrics.persist_retries):
    """Run `operation` until it succeeds or fails for a reason of the data (which is raised);
    `retries` counts the attempts that failed."""
    delay = 0.05
    while True:
        try:
            return await operation(*args)
        except POISON:
            raise
        except Exception as e:  # anything else is the system's fault: wait it out
            retries.labels(error=type(e).__name__).inc()
            log.warning("%s failed (%s); retrying in %.2fs", operation.__name__, error_kind(e), delay)
        if stop.is_set():
            raise Stopped()
        await asyncio.sleep(delay * random.uniform(0.5, 1.0))
        delay = min(delay * 2, 5.0)


def error_kind(error: BaseException) -> str:
    """The error's class and SQLSTATE, never its message: Postgres quotes the offending value,
    which may be a name or a national ID, and those never go to a log."""
    sqlstate = getattr(error, "sqlstate", None)
    return f"{type(error).__name__} {sqlstate}" if sqlstate else type(error).__name__


GAUGE_SHARE = 0.01  # of one Postgres backend's time, at most, for counting a backlog gauge


def gauge_every(settings: Settings) -> float:
    """Seconds between two counts of a backlog gauge when counting is quick (a test's short trim_interval
    makes it half a second)."""
    return max(settings.trim_interval, 5.0 if settings.trim_interval >= 1 else 0.5)


async def count_into(gauge, count: Awaitable[int]) -> float:
    """Set `gauge` to what `count` counts; the seconds the count took (for count_pause)."""
    started = time.monotonic()
    gauge.set(await count)
    return time.monotonic() - started


def count_pause(took: float, every: float) -> float:
    """Seconds until a backlog gauge is counted again: `every`, or longer when the count itself was slow.
    A `count(*)` grows with the backlog it counts (persons due for review, notifications not sent), so at
    millions it would cost seconds of Postgres every few seconds just when Postgres is behind; spaced by
    its own duration, counting never takes more than GAUGE_SHARE of a backend."""
    return max(every, took / GAUGE_SHARE)


async def sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
