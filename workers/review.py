"""Review: the reviewer processes, which keep every person's review flags and registry status current.

    due = persons marked review_due            # by a persisted or corrected dose, or a registry import
    storage.review.review_due(conn, limit)     # read histories, flag, set registry status, in one transaction

Reviewers poll Postgres rather than a stream: the mark is written in the same transaction as the
change, so nothing can be missed, and several reviewers share the work without waiting on each other
(SKIP LOCKED). They run below the certifiers' CPU priority and stand aside while persisting or certifying
is behind (workers/standaside.py): flags may trail a burst, certificates never wait for them.
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg

from monitoring import metrics
from storage import review as store
from storage import ACQUIRE_TIMEOUT
from vaxline.config import Settings

from .loop import count_into, count_pause, gauge_every, retrying, run_consumer, sleep_unless
from .standaside import StandAside

log = logging.getLogger(__name__)


async def run_reviewer(settings: Settings, *, consumer: str, stop: asyncio.Event) -> None:
    """Review due persons until `stop` is set, surviving Postgres outages."""
    await run_consumer(
        settings, stop, name=f"reviewer {consumer}", running=metrics.reviewers_running,
        drain=lambda redis, pool: _drain(pool, settings, stop, StandAside(redis, settings, stop, role="review")),
        housekeeping=lambda redis, pool: _housekeeping(pool, settings, stop))


async def _drain(pool: asyncpg.Pool, settings: Settings, stop: asyncio.Event, aside: StandAside) -> None:
    while not stop.is_set():
        await aside.wait()  # while persisting or certifying is behind (workers/standaside.py)
        reviewed = await retrying(stop, _review, pool, settings.review_max_persons, retries=metrics.review_retries)
        metrics.review_persons.inc(reviewed)
        if reviewed < settings.review_max_persons:  # caught up: look again shortly
            await sleep_unless(stop, settings.review_interval)


async def _review(pool: asyncpg.Pool, limit: int) -> int:
    async with pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
        return await store.review_due(conn, limit=limit)


async def _housekeeping(pool: asyncpg.Pool, settings: Settings, stop: asyncio.Event) -> None:
    """Report how many persons wait for review, every few seconds (less often when counting them is slow,
    workers.loop.count_pause), until `stop`."""
    every = gauge_every(settings)
    while not stop.is_set():
        took = 0.0
        try:
            async with pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
                took = await count_into(metrics.review_backlog, store.due_count(conn))
        except Exception as e:  # retried on the next round
            log.warning("review housekeeping failed: %s", type(e).__name__)
        await sleep_unless(stop, count_pause(took, every))
