"""Enqueue: append one accepted batch to its shard, with explicit backpressure.

The batch id is returned only after XADD returned, so a 202 always names an
entry that Redis has (with `appendfsync always`, on disk). The backlog is
polled in the background, not per request, so the hot path costs one XADD.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from vaxline.config import Settings
from vaxline.doses import Dose
from vaxline.entries import ENTRY_FIELD, batch_id, encode_correction, encode_entry
from vaxline.sequence import VIETNAM
from vaxline.streams import Backlog, check_shard_count, read_backlog

log = logging.getLogger(__name__)


def _rejected_field(site_id: int) -> str:
    """Rejected items may have no valid date: they count on the day ingest refused them."""
    return f"{site_id}:{dt.datetime.now(VIETNAM).date().isoformat()}:rejected"


class Overloaded(Exception):
    """The stream backlog is past its bound, or Redis cannot be reached: retry later."""

    def __init__(self, reason: str, retry_after: int):
        super().__init__(reason)
        self.retry_after = retry_after


class Enqueuer:
    def __init__(self, redis: aioredis.Redis, settings: Settings, *, poll_interval: float = 0.5,
                 clock=time.monotonic, on_backlog: Callable[[int, int], None] = lambda shard, entries: None):
        """`on_backlog(shard, entries)` hears each reading (ingest exports it as vaxline_stream_backlog)."""
        self._redis = redis
        self._on_backlog = on_backlog
        self._settings = settings
        self._poll_interval = poll_interval
        self._clock = clock
        self._backlog: Backlog | None = None
        self._read_at = float("-inf")
        self._shards_checked = False
        self._poller: asyncio.Task | None = None

    async def start(self) -> None:
        """Start polling; refuses to start with another shard count than the deployment's."""
        with contextlib.suppress(RedisError):  # Redis down: checked by the poller once it is back
            await check_shard_count(self._redis, self._settings)
            self._shards_checked = True
            await self._warn_if_weakly_durable()
        await self._refresh()
        self._poller = asyncio.create_task(self._poll())

    async def stop(self) -> None:
        if self._poller:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller

    def check_capacity(self) -> None:
        """Raise Overloaded when the last backlog reading is past a bound."""
        backlog = self._backlog
        if backlog is None or self._clock() - self._read_at > 10 * self._poll_interval:
            raise Overloaded("the stream cannot be reached", retry_after=5)
        if max(backlog.entries_per_shard) > self._settings.max_backlog_entries:
            raise Overloaded("the stream backlog is past its bound", retry_after=10)
        if backlog.redis_memory_bytes > self._settings.max_redis_memory_bytes:
            raise Overloaded("the stream's memory is past its bound", retry_after=10)

    async def enqueue(self, *, site_id: int, doses: list[Dose], rejected: int = 0) -> str:
        """XADD the batch to its shard and count its doses per administration day as accepted, atomically
        (MULTI: both or neither, in the AOF too); returns the batch id. The count is ingest's own
        witness of what it acknowledged, which reconciliation holds Postgres to."""
        shard = self._settings.shard_of(site_id)
        payload = encode_entry(site_id=site_id, received_at=time.time(), doses=doses)
        days: dict[str, int] = {}
        for dose in doses:
            day = dose.administered_at.astimezone(VIETNAM).date().isoformat()
            days[day] = days.get(day, 0) + 1
        accepted = self._settings.accepted_key(shard)
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.xadd(self._settings.stream(shard), {ENTRY_FIELD: payload})
                for day, count in days.items():
                    pipe.hincrby(accepted, f"{site_id}:{day}", count)
                if rejected:
                    pipe.hincrby(accepted, _rejected_field(site_id), rejected)
                entry_id, *_ = await pipe.execute()
        except RedisError as e:  # unreachable, out of memory, read-only after failover, AOF disk full
            log.warning("XADD failed: %s: %s", type(e).__name__, str(e)[:200])
            raise Overloaded("the stream cannot take the batch now", retry_after=5) from e
        return batch_id(shard, entry_id.decode())

    async def count_rejected(self, *, site_id: int, rejected: int) -> None:
        """Count doses rejected in a batch with nothing to enqueue (by the day they were refused)."""
        with contextlib.suppress(RedisError):  # informational: a batch of rejections needs no Redis
            await self._redis.hincrby(self._settings.accepted_key(self._settings.shard_of(site_id)),
                                      _rejected_field(site_id), rejected)

    async def enqueue_correction(self, *, site_id: int, op: str, record_id: str, dose: Dose | None,
                                 changed_by: str) -> str:
        """XADD one correction to the site's shard (after its batches: the stream orders them); its id."""
        shard = self._settings.shard_of(site_id)
        payload = encode_correction(site_id=site_id, received_at=time.time(), op=op, record_id=record_id, dose=dose,
                                    changed_by=changed_by)
        try:
            entry_id = await self._redis.xadd(self._settings.stream(shard), {ENTRY_FIELD: payload})
        except RedisError as e:
            log.warning("XADD failed: %s: %s", type(e).__name__, str(e)[:200])
            raise Overloaded("the stream cannot take the correction now", retry_after=5) from e
        return batch_id(shard, entry_id.decode())

    async def _warn_if_weakly_durable(self) -> None:
        """A 202 promises the batch is on disk; say so loudly when Redis does not fsync each write."""
        try:
            config = await self._redis.config_get("append*")
        except RedisError:  # CONFIG is often disabled on managed Redis: nothing to check
            return
        appendonly, appendfsync = config.get("appendonly"), config.get("appendfsync")
        if appendonly != "yes" or appendfsync != "always":
            log.warning("Redis runs with appendonly=%s appendfsync=%s: acknowledged batches can be lost if the Redis"
                        " host crashes (1-2 s with everysec; everything since the last save without AOF)."
                        " vaxline's default is appendonly yes, appendfsync always.", appendonly, appendfsync)

    async def _refresh(self) -> None:
        """Read the backlog; an unknown backlog (any failure) refuses batches until the next good reading."""
        try:
            if not self._shards_checked:
                await check_shard_count(self._redis, self._settings)
                self._shards_checked = True
            self._backlog = await read_backlog(self._redis, self._settings)
            self._read_at = self._clock()
        except Exception as e:  # the poller must survive whatever Redis answers (a shard mismatch included)
            log.warning("reading the stream backlog failed: %s: %s", type(e).__name__, str(e)[:200])
            self._backlog = None
            return
        for shard, entries in enumerate(self._backlog.entries_per_shard):
            self._on_backlog(shard, entries)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self._poll_interval)
            await self._refresh()
