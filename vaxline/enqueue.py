"""Enqueue: append one accepted batch to its shard, with explicit backpressure.

The batch id is returned only after XADD returned, so a 202 always names an
entry that Redis has (with `appendfsync always`, on disk). The backlog is
polled in the background, not per request, so the hot path costs one XADD.

A refused batch is told when to come back: the time the backlog takes to fall
back under its bound at the pace the workers drain it, measured from the
readings, jittered so that the clients refused together do not return together.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import math
import random
import time
from collections.abc import Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from vaxline.config import Settings
from vaxline.doses import Dose
from vaxline.entries import ENTRY_FIELD, batch_id, encode_correction, encode_entry
from vaxline.redispipe import RedisPipe
from vaxline.sequence import VIETNAM
from vaxline.shardwrite import ClusterWriter, NotReplicated, Replicas
from vaxline.streams import (
    REDIS_TRANSIENT,
    Backlog,
    added_key,
    check_shard_count,
    eviction_risk,
    is_cluster,
    read_backlog,
)

log = logging.getLogger(__name__)


def _rejected_field(site_id: int) -> str:
    """Rejected items may have no valid date: they count on the day ingest refused them."""
    return f"{site_id}:{dt.datetime.now(VIETNAM).date().isoformat()}:rejected"


# KEYS: the shard's stream, its added counter, its accepted hash; ARGV: the entry's field and payload, then
# (hash field, count) pairs. Returns the entry id.
_APPEND = """
local id = redis.call('XADD', KEYS[1], '*', ARGV[1], ARGV[2])
redis.call('INCR', KEYS[2])
for i = 3, #ARGV, 2 do redis.call('HINCRBY', KEYS[3], ARGV[i], ARGV[i + 1]) end
return id
"""


# A dead letter appended again (vaxline deadletters replay). KEYS: the shard's stream, its added counter, its
# replayed hash; ARGV: the entry's field and payload, the dead letter's batch id. Not counted as accepted again:
# ingest counted these doses when it first acknowledged them. The replayed hash, written with the XADD, is what
# tells reconciliation (and a replay interrupted before Postgres heard of it) where the doses went.
_REPLAY = """
local earlier = redis.call('HGET', KEYS[3], ARGV[3])
if earlier then return earlier end
local id = redis.call('XADD', KEYS[1], '*', ARGV[1], ARGV[2])
redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[3], ARGV[3], id)
return id
"""


class Overloaded(Exception):
    """The stream backlog is past its bound, or Redis cannot be reached: retry later."""

    def __init__(self, reason: str, retry_after: int):
        super().__init__(reason)
        self.retry_after = retry_after


# Retry-After is whole seconds (HTTP); 30 s is the longest a desk is sent away, even by a backlog that does not
# drain (the clients come back to a 503 as cheap as the first).
RETRY_MIN, RETRY_MAX = 1, 30
RETRY_UNREACHABLE = 5  # the backlog cannot be read, or Redis cannot take an entry: nothing to derive it from
# Past a bound before any drain was measured (the first refusals after start): a short answer costs at worst
# one more 503, cheap, and the next readings measure the drain.
RETRY_UNMEASURED = 2


def jittered(seconds: float, rng: random.Random) -> int:
    """A Retry-After within [RETRY_MIN, RETRY_MAX]: `seconds` times a random factor in [0.5, 1.5], to the
    nearest second, so that the clients refused together come back spread out, not in one wave. Past
    RETRY_MAX / 1.5, seconds count as that: the longest answers spread over 10-30 s rather than pile up on
    the clamp."""
    wait = math.floor(min(seconds, RETRY_MAX / 1.5) * rng.uniform(0.5, 1.5) + 0.5)
    return min(max(wait, RETRY_MIN), RETRY_MAX)


def bound_passed(backlog: Backlog, settings: Settings) -> str | None:
    """Why batches are refused at this reading, or None."""
    if max(backlog.entries_per_shard) > settings.max_backlog_entries:
        return "the stream backlog is past its bound"
    if backlog.redis_memory_bytes > settings.max_redis_memory_bytes:
        return "the stream's memory is past its bound"
    return None


def seconds_to_bounds(backlog: Backlog, drain: tuple[float, ...], settings: Settings) -> float:
    """Seconds until every shard is back under the entry bound and Redis under the memory bound, trimming
    `drain` entries a second from each shard; infinite when what is past a bound does not drain."""
    bound = settings.max_backlog_entries
    waits = [_seconds(entries - bound, rate) for entries, rate in zip(backlog.entries_per_shard, drain)
             if entries > bound]
    memory_over = backlog.redis_memory_bytes - settings.max_redis_memory_bytes
    if memory_over > 0:  # memory falls with the entries trimmed: taken as proportional to them
        entries = sum(backlog.entries_per_shard)
        waits.append(_seconds(entries * memory_over / backlog.redis_memory_bytes, sum(drain)) if entries
                     else math.inf)  # the memory is not the streams': trimming will not free it
    return max(waits, default=0.0)


def _seconds(entries: float, rate: float) -> float:
    return entries / rate if rate > 0 else math.inf


class Drain:
    """Entries trimmed from each shard per second, measured while ingest refuses batches: then the workers
    have more than they can take, and their trims show their pace, not the arrivals'. Between two readings a
    shard lost what was added to it minus its growth. The intervals spent refusing add up, across refusals,
    to samples of at least `window` seconds (the workers' trim interval: a shorter one would see a trim or
    none), smoothed exponentially over `smoothing` seconds; the rates are kept between refusals. A refusal
    ends with a trim, so short refusals read the pace somewhat high: a client may come back a little early,
    to a cheap 503, rather than late, which would cost throughput."""

    def __init__(self, *, window: float, smoothing: float = 2.0):
        self._window = window
        self._smoothing = smoothing
        self._last: tuple[Backlog, float] | None = None
        self._trimmed: list[int] | None = None  # the sample being gathered, over _elapsed seconds
        self._elapsed = 0.0
        self.per_shard: tuple[float, ...] | None = None  # entries a second; None until measured

    def observe(self, backlog: Backlog, at: float, *, refusing: bool) -> None:
        """Take a reading; `refusing`: batches were refused since the previous one."""
        last, self._last = self._last, (backlog, at)
        if last is None or not _comparable(last[0], backlog):
            self._trimmed, self._elapsed = None, 0.0
            return
        if not refusing:
            return
        trimmed = [max(0, added - grown) for added, grown in zip(
            _deltas(last[0].added_per_shard, backlog.added_per_shard),
            _deltas(last[0].entries_per_shard, backlog.entries_per_shard))]
        self._trimmed = trimmed if self._trimmed is None else [a + b for a, b in zip(self._trimmed, trimmed)]
        self._elapsed += at - last[1]
        if self._elapsed >= self._window:
            self._smooth([n / self._elapsed for n in self._trimmed], self._elapsed)
            self._trimmed, self._elapsed = None, 0.0

    def _smooth(self, rates: list[float], elapsed: float) -> None:
        if self.per_shard is not None and len(self.per_shard) == len(rates):
            weight = 1 - math.exp(-elapsed / self._smoothing)
            rates = [old + weight * (new - old) for old, new in zip(self.per_shard, rates)]
        self.per_shard = tuple(rates)


def _comparable(before: Backlog, after: Backlog) -> bool:
    """Same shards, and no count went back (its key lost: a Redis restarted without its AOF, a flush)."""
    return len(before.added_per_shard) == len(after.added_per_shard) and all(
        a <= b for a, b in zip(before.added_per_shard, after.added_per_shard))


def _deltas(before: tuple[int, ...], after: tuple[int, ...]) -> list[int]:
    return [b - a for a, b in zip(before, after)]


class Backpressure:
    """Whether batches are refused, and the Retry-After, from the backlog readings the Enqueuer takes."""

    def __init__(self, settings: Settings, *, window: float, stale_after: float, rng: random.Random):
        """`window`: the shortest drain sample; `stale_after`: seconds after which a reading is no longer
        trusted (the poller is stuck)."""
        self._settings = settings
        self._drain = Drain(window=window)
        self._stale_after = stale_after
        self._rng = rng
        self._read_at: float | None = None  # None: the backlog is unknown
        self._refusal: tuple[str, float] | None = None  # (why, when the backlog is expected back under its bounds)

    def take(self, backlog: Backlog | None, at: float) -> None:
        """A reading at `at`, or None when the backlog could not be read: refuse until the next good one."""
        if backlog is None:
            self._read_at, self._refusal = None, None
            return
        self._drain.observe(backlog, at, refusing=self._refusal is not None)
        self._read_at = at
        reason = bound_passed(backlog, self._settings)
        if reason is None:
            self._refusal = None
            return
        drain = self._drain.per_shard
        seconds = RETRY_UNMEASURED if drain is None else seconds_to_bounds(backlog, drain, self._settings)
        self._refusal = (reason, at + seconds)

    def check(self, now: float) -> None:
        """Raise Overloaded past a bound, with the time left until the backlog is expected back under it."""
        if self._read_at is None or now - self._read_at > self._stale_after:
            raise Overloaded("the stream cannot be reached", retry_after=self.retry_after(RETRY_UNREACHABLE))
        if self._refusal is not None:
            reason, clear_at = self._refusal
            raise Overloaded(reason, retry_after=self.retry_after(clear_at - now))

    def retry_after(self, seconds: float) -> int:
        return jittered(seconds, self._rng)


class Enqueuer:
    def __init__(self, redis: aioredis.Redis, settings: Settings, *, poll_interval: float = 0.5,
                 clock=time.monotonic, rng: random.Random | None = None,
                 on_backlog: Callable[[int, int], None] = lambda shard, entries: None):
        """`on_backlog(shard, entries)` hears each reading (ingest exports it as vaxline_stream_backlog);
        `rng` jitters Retry-After."""
        self._redis = redis
        self._script = redis.register_script(_APPEND)  # EVALSHA, loading the script again after a restart
        # The hot path's own pipelined connection (vaxline/redispipe.py); redis-py for what it cannot reach. On a
        # Redis Cluster, one per master (vaxline/shardwrite.py). Either waits for the replicas a 202 needs.
        self._cluster = ClusterWriter(redis, settings) if is_cluster(redis) else None
        self._pipe = RedisPipe(settings.redis_url) if (
            self._cluster is None and RedisPipe.supports(settings.redis_url)) else None
        self._replicas = Replicas(settings)
        self._append_keys = [[settings.stream(shard), added_key(settings, shard), settings.accepted_key(shard)]
                             for shard in range(settings.shards)]  # per shard, built once: the hot path's keys
        self._replay = redis.register_script(_REPLAY)
        self._on_backlog = on_backlog
        self._settings = settings
        self._poll_interval = poll_interval
        self._clock = clock
        self._backpressure = Backpressure(settings, window=max(settings.trim_interval, poll_interval),
                                          stale_after=10 * poll_interval, rng=rng or random.Random())
        self._shards_checked = False
        self._poller: asyncio.Task | None = None
        self._stopping = False

    async def start(self) -> None:
        """Start polling; refuses to start with another shard count than the deployment's."""
        with contextlib.suppress(*REDIS_TRANSIENT):  # Redis down: checked by the poller once it is back
            await check_shard_count(self._redis, self._settings)
            self._shards_checked = True
            if self._pipe is not None:  # whether a 202 waits for a replica (a cluster's masters: at first write)
                await self._replicas.required("", self._pipe)
            await self._warn_if_weakly_durable()
            if risk := await eviction_risk(self._redis):  # /readyz reports it too, and answers 503
                log.error("%s", risk)
        await self._refresh()
        self._poller = asyncio.create_task(self._poll())

    async def stop(self) -> None:
        if self._pipe is not None:
            await self._pipe.close()
        if self._cluster is not None:
            await self._cluster.close()
        if self._poller:
            # A cancellation can be swallowed by a redis-py command in flight (the poller then sleeps on,
            # and awaiting it would hang the caller for ever): the loop also ends on `_stopping`, and the
            # wait is bounded.
            self._stopping = True
            self._poller.cancel()
            _, running = await asyncio.wait([self._poller], timeout=2 * self._poll_interval + 5)
            if running:
                log.warning("the backlog poller did not stop in time; left behind")

    def check_capacity(self) -> None:
        """Raise Overloaded when the last backlog reading is past a bound, with a jittered Retry-After: the
        time left until the backlog is expected back under its bounds."""
        self._backpressure.check(self._clock())

    async def enqueue(self, *, site_id: int, doses: list[Dose], rejected: int = 0) -> str:
        """XADD the batch to its shard and count its doses per administration day as accepted, atomically
        (one script: both or neither, in the AOF too); returns the batch id. The count is ingest's own
        witness of what it acknowledged, which reconciliation holds Postgres to."""
        shard = self._settings.shard_of(site_id)
        payload = encode_entry(site_id=site_id, received_at=time.time(), doses=doses)
        days: dict[str, int] = {}
        for dose in doses:
            day = dose.administered_at.astimezone(VIETNAM).date().isoformat()
            days[day] = days.get(day, 0) + 1
        counts: list[str | int] = []
        for day, count in days.items():
            counts += [f"{site_id}:{day}", count]
        if rejected:
            counts += [_rejected_field(site_id), rejected]
        try:
            entry_id = await self._append(shard, payload, counts)
        except NotReplicated as e:  # in the stream, persisted all the same; the retry's records are duplicates
            log.warning("XADD not replicated in time: %s", e)
            raise Overloaded("the batch could not be replicated in time",
                             retry_after=self._backpressure.retry_after(RETRY_UNREACHABLE)) from e
        except REDIS_TRANSIENT as e:  # unreachable, out of memory, read-only or failing over, AOF disk full
            log.warning("XADD failed: %s: %s", type(e).__name__, str(e)[:200])
            raise Overloaded("the stream cannot take the batch now", retry_after=self._backpressure.retry_after(RETRY_UNREACHABLE)) from e
        return batch_id(shard, entry_id.decode())

    async def count_rejected(self, *, site_id: int, rejected: int) -> None:
        """Count doses rejected in a batch with nothing to enqueue (by the day they were refused)."""
        with contextlib.suppress(*REDIS_TRANSIENT):  # informational: a batch of rejections needs no Redis
            await self._redis.hincrby(self._settings.accepted_key(self._settings.shard_of(site_id)),
                                      _rejected_field(site_id), rejected)

    async def enqueue_correction(self, *, site_id: int, op: str, record_id: str, dose: Dose | None,
                                 changed_by: str) -> str:
        """XADD one correction to the site's shard (after its batches: the stream orders them); its id."""
        shard = self._settings.shard_of(site_id)
        payload = encode_correction(site_id=site_id, received_at=time.time(), op=op, record_id=record_id, dose=dose,
                                    changed_by=changed_by)
        try:
            entry_id = await self._append(shard, payload, [])
        except REDIS_TRANSIENT as e:
            log.warning("XADD failed: %s: %s", type(e).__name__, str(e)[:200])
            raise Overloaded("the stream cannot take the correction now",
                             retry_after=self._backpressure.retry_after(RETRY_UNREACHABLE)) from e
        return batch_id(shard, entry_id.decode())

    async def replay(self, *, shard: int, payload: bytes, dead_batch_id: str) -> str:
        """Append a dead-lettered entry's payload to its shard again, as it was (its doses are keyed by site
        and record id: whatever of it persisted before counts as duplicates); the new batch id. Once per
        dead letter: a replay that reached Redis before is found in the shard's replayed hash (in the same
        script) and named again. Raises Overloaded as enqueue does."""
        self.check_capacity()
        settings = self._settings
        keys = [settings.stream(shard), added_key(settings, shard), settings.replayed_key(shard)]
        try:
            entry_id = await self._run(_REPLAY, self._replay, keys, [ENTRY_FIELD, payload, dead_batch_id])
        except REDIS_TRANSIENT as e:
            raise Overloaded("the stream cannot take the replay now",
                             retry_after=self._backpressure.retry_after(RETRY_UNREACHABLE)) from e
        return batch_id(shard, entry_id.decode())

    async def _append(self, shard: int, payload: bytes, counts: list[str | int]) -> bytes:
        """XADD the entry, count it as added to its shard (what the drain is measured from) and add
        `counts` (field, number, ...) to the shard's accepted hash: one script, so all or nothing (the
        first write is the XADD; Redis refuses the script before it when out of memory), written to the
        AOF as one transaction, in one round trip that costs ingest a third less CPU than MULTI ... EXEC."""
        keys = self._append_keys[shard]
        if self._pipe is not None and self._replicas.none_required(""):  # standalone, no replica: as before
            return await self._pipe.evalsha(_APPEND, keys, [ENTRY_FIELD, payload, *counts])
        return await self._run(_APPEND, self._script, keys, [ENTRY_FIELD, payload, *counts])

    async def _run(self, source: str, script, keys: list, args: list) -> bytes:
        """The script on the shard's master, then the WAIT for its replicas (vaxline/shardwrite.py)."""
        if self._cluster is not None:
            return await self._cluster.run(source, keys, args)
        if self._pipe is not None:
            if self._replicas.none_required(""):  # a standalone Redis without replicas: the plain hot path
                return await self._pipe.evalsha(source, keys, args)
            return await self._replicas.write("", self._pipe, source, keys, args)
        return await script(keys=keys, args=args)  # a URL the pipe cannot reach: redis-py, without WAIT

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
            backlog = await read_backlog(self._redis, self._settings)
        except Exception as e:  # the poller must survive whatever Redis answers (a shard mismatch included)
            log.warning("reading the stream backlog failed: %s: %s", type(e).__name__, str(e)[:200])
            self._backpressure.take(None, self._clock())
            return
        self._backpressure.take(backlog, self._clock())
        for shard, entries in enumerate(backlog.entries_per_shard):
            self._on_backlog(shard, entries)

    async def _poll(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self._poll_interval)
            if not self._stopping:
                await self._refresh()
