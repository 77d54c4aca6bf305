"""The worker pipeline: consume -> gather -> persist -> ack, plus trimming.

    reader = ShardReader(...)            # own pending list, XAUTOCLAIM, new entries
    for group in gather(reader, ...):    # up to gather_max_doses or gather_max_wait
        persister.persist(group)         # one transaction; XACK after COMMIT

The next group is read and decoded while the current one is in Postgres, so
the worker's Python and the database work at the same time.

Shutdown (the `stop` event) ends reading; the groups already read (the one
in Postgres and the one read ahead) are persisted and acknowledged. A group
still waiting for an unreachable Postgres stays pending instead.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import asyncpg
import redis.asyncio as aioredis

from monitoring import metrics
from storage import partitions
from storage import ACQUIRE_TIMEOUT
from vaxline.config import Settings
from vaxline.streams import ensure_groups

from .consume import ShardReader
from .loop import run_consumer, sleep_unless
from .persist import Persister
from .rows import DecodedEntry, PoisonEntry, decode
from .trim import trim_shards

log = logging.getLogger(__name__)



# Reads within one gather window, once a read has taken all there was: desk batches trickle in, and a blocking
# read answers as soon as one entry comes, so a worker made about one read an entry, each a redis-py call (17% of
# a worker's samples under py-spy at 470 desk batches a second, 9% after). A backlog is read without a pause.
READS_PER_WINDOW = 4


async def gather(reader: ShardReader, persister: Persister, settings: Settings,
                 stop: asyncio.Event) -> AsyncIterator[list[DecodedEntry]]:
    """Yield groups of decoded entries: up to gather_max_doses, or whatever came in gather_max_wait.

    Entries hold 1 to 1,000 doses, so each read asks for as many entries as
    should fill the rest of the group at the average size seen so far: a
    group stays near its bound whatever the mix of desk and bulk batches.
    Once a read found fewer than it asked for, the next waits a quarter of
    the window (READS_PER_WINDOW) so that it takes several entries at once.
    """
    entry_doses = float(settings.max_batch_doses)  # running average of doses per entry; start pessimistic
    while not stop.is_set():
        group: list[DecodedEntry] = []
        doses = 0
        deadline = None
        caught_up = False  # the last read took all there was
        while doses < settings.gather_max_doses and not stop.is_set():
            remaining = 0.2 if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                break
            if caught_up:  # let the next entries pile up rather than read them as they come, one by one
                await asyncio.sleep(min(remaining, settings.gather_max_wait / READS_PER_WINDOW))
                remaining = max(0.0, deadline - time.monotonic())
            # COUNT applies to each shard's stream, hence the division.
            count = max(1, min(500, int((settings.gather_max_doses - doses) / entry_doses / settings.shards)))
            entries = await reader.read(block_ms=max(1, int(remaining * 1000)), count=count)
            for entry in entries:
                try:
                    decoded = decode(entry)
                except PoisonEntry as poison:
                    await persister.poison(poison)
                    continue
                group.append(decoded)
                doses += decoded.dose_count
                entry_doses = 0.9 * entry_doses + 0.1 * max(1, decoded.dose_count)
            if group and deadline is None:
                deadline = time.monotonic() + settings.gather_max_wait
            caught_up = deadline is not None and len(entries) < count
        if group:
            yield group


async def run_worker(settings: Settings, *, consumer: str, stop: asyncio.Event) -> None:
    """Drain the shards until `stop` is set, surviving Redis and Postgres outages."""
    await run_consumer(
        settings, stop, name=f"worker {consumer}", running=metrics.workers_running,
        drain=lambda redis, pool: _drain(redis, pool, settings, consumer, stop),
        housekeeping=lambda redis, pool: _housekeeping(redis, pool, settings, stop))


async def _drain(redis, pool, settings: Settings, consumer: str, stop: asyncio.Event) -> None:
    """Persist groups while the next one is read and decoded (one group ahead, no more)."""
    await ensure_groups(redis, settings)
    reader = ShardReader(redis, settings, consumer)
    persister = Persister(pool, redis, reader, settings, stop)
    ahead: asyncio.Queue[list[DecodedEntry] | BaseException | None] = asyncio.Queue(maxsize=1)

    async def read_ahead() -> None:
        try:
            async for group in gather(reader, persister, settings, stop):
                await ahead.put(group)
            await ahead.put(None)
        except Exception as e:  # handed to the persisting side, which raises it
            await ahead.put(e)

    reading = asyncio.create_task(read_ahead())
    try:
        while (group := await ahead.get()) is not None:
            if isinstance(group, BaseException):
                raise group
            await persister.persist(group)
    finally:
        reading.cancel()
        await asyncio.wait([reading], timeout=5)
        reader.close()


async def _housekeeping(redis: aioredis.Redis, pool: asyncpg.Pool, settings: Settings, stop: asyncio.Event) -> None:
    """Trim streams, report backlog, keep partitions ahead, until `stop`; never fatal."""
    next_partitions = 0.0
    while not stop.is_set():
        try:
            _, states = await trim_shards(redis, settings)
            for shard, state in enumerate(states):
                metrics.stream_backlog.labels(shard=str(shard)).set(state.length)
                metrics.stream_pending.labels(shard=str(shard)).set(state.pending)
                metrics.stream_lag.labels(shard=str(shard)).set(state.lag)
            metrics.pg_pool_in_use.labels(role="worker").set(pool.get_size() - pool.get_idle_size())
            if time.monotonic() >= next_partitions:
                async with pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
                    await partitions.maintain(conn)
                next_partitions = time.monotonic() + 3600
        except Exception as e:  # housekeeping retries on its next round, whatever failed
            log.warning("housekeeping failed: %s", type(e).__name__)
        await sleep_unless(stop, settings.trim_interval)
