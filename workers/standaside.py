"""Standing aside: reviewers and notifiers wait while persisting or certifying is behind.

Everything shares the machine's cores, and a day's peak can want more CPU than there is for a while.
Certificates have a deadline (2 s from the 202); review flags and SMS do not, yet both cost as much
Postgres as signing does. So before each round a reviewer or notifier looks at the oldest entry the
persisting workers or the certifiers have not finished (a dose entry on any shard, a handoff on the
certify stream) and, while it is older than `stand_aside_after` seconds, waits:

    aside = StandAside(redis, settings, stop, role="review")
    await aside.wait()          # returns once caught up, or after stand_aside_max seconds in a row
    ...one round...

The wait is bounded so that a sustained overload still lets a round through, and Redis failing is no
reason to wait: the round goes ahead. Nothing is skipped, only later; vaxline_stood_aside_seconds_total
says how long.
"""

from __future__ import annotations

import asyncio
import logging
import time

import redis.asyncio as aioredis

from monitoring import metrics
from vaxline.config import Settings
from vaxline.streams import REDIS_TRANSIENT, oldest_unfinished

from .loop import sleep_unless

log = logging.getLogger(__name__)

LOOK_EVERY = 0.25  # seconds between looks while standing aside
CONSUMED_WITHIN_MS = 10_000  # a group with no consumer reading within this long is not waited for


class StandAside:
    def __init__(self, redis: aioredis.Redis, settings: Settings, stop: asyncio.Event, *, role: str):
        self._redis = redis
        self._stop = stop
        self._after = settings.stand_aside_after
        self._max = settings.stand_aside_max
        # The certify stream first: at a peak it is the one behind, and a look stops at the first group that is.
        self._groups = [(settings.certify_stream, settings.certify_group)]
        self._groups += [(stream, settings.group) for stream in settings.streams]
        self._waited = metrics.stood_aside.labels(role=role)
        self._looked = -LOOK_EVERY  # when a look last found persisting and certifying caught up

    async def behind(self, enough: float | None = None) -> float:
        """Seconds since the oldest entry that persisting or certifying has not finished was added (0: none).
        A group none of whose consumers read lately is left out: standing aside would not help it along
        (no certifier running, or all of them down), and the rounds would only be held back.

        With `enough`, the look stops at the first group found at least that far behind: whether to wait
        is all a round needs to know, and while standing aside a look comes every LOOK_EVERY seconds."""
        oldest, now = None, time.time()
        for stream, group in self._groups:
            added = await oldest_unfinished(self._redis, stream, group)
            if added is not None and (oldest is None or added < oldest) and await self._consumed(stream, group):
                oldest = added
                if enough is not None and now - oldest / 1000 >= enough:
                    break
        return 0.0 if oldest is None else max(0.0, now - oldest / 1000)

    async def _consumed(self, stream: str, group: str) -> bool:
        consumers = await self._redis.xinfo_consumers(stream, group)
        return any(c["idle"] < CONSUMED_WITHIN_MS for c in consumers)

    async def _caught_up(self) -> bool:
        """Whether persisting and certifying are within stand_aside_after; looked up at most every LOOK_EVERY
        seconds (a notifier's rounds come many a second when it is busy)."""
        now = time.monotonic()
        if now - self._looked < LOOK_EVERY:
            return True  # it was, a moment ago (only a look that found them caught up is remembered)
        caught_up = await self.behind(enough=self._after) < self._after
        if caught_up:
            self._looked = now
        return caught_up

    async def wait(self) -> float:
        """Wait while persisting or certifying is behind, at most stand_aside_max seconds; seconds waited."""
        if self._after <= 0:
            return 0.0
        started, stood = time.monotonic(), False
        while not self._stop.is_set() and time.monotonic() - started < self._max:
            try:
                if await self._caught_up():
                    break
            except REDIS_TRANSIENT as e:  # no reason to hold the round back
                log.debug("standing aside skipped, redis failed (%s)", type(e).__name__)
                break
            stood = True
            await sleep_unless(self._stop, LOOK_EVERY)
        waited = time.monotonic() - started if stood else 0.0
        self._waited.inc(waited)
        return waited
