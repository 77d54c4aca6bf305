"""What ingest and workers both need to know about the stream shards.

The backlog is what backpressure, the status line and metrics read. Streams
are trimmed only below what every group still needs (see workers.trim), so a
shard's length is its unfinished work plus at most one trim interval of
acknowledged entries.
"""

from __future__ import annotations

import dataclasses

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from .config import Settings


@dataclasses.dataclass(frozen=True, slots=True)
class Backlog:
    entries_per_shard: tuple[int, ...]
    redis_memory_bytes: int

    @property
    def entries(self) -> int:
        return sum(self.entries_per_shard)


async def read_backlog(redis: aioredis.Redis, settings: Settings) -> Backlog:
    async with redis.pipeline(transaction=False) as pipe:
        for stream in settings.streams:
            pipe.xlen(stream)
        pipe.info("memory")
        *lengths, memory = await pipe.execute()
    return Backlog(tuple(lengths), int(memory["used_memory"]))


@dataclasses.dataclass(frozen=True, slots=True)
class ShardState:
    length: int  # entries not yet trimmed
    pending: int  # delivered, not acknowledged
    lag: int  # not yet delivered (capped at LAG_CAP on Redis 6.2, which does not report it)


LAG_CAP = 10_000


async def shard_states(redis: aioredis.Redis, settings: Settings) -> list[ShardState]:
    """Length, pending and lag of the persist group on every shard, on Redis 6.2 and 7."""
    states = []
    for stream in settings.streams:
        length = await redis.xlen(stream)
        if not length and not await redis.exists(stream):
            states.append(ShardState(0, 0, 0))
            continue
        group = next((g for g in await redis.xinfo_groups(stream) if _text(g["name"]) == settings.group), None)
        if group is None:
            states.append(ShardState(length, 0, length))
            continue
        lag = group.get("lag")
        if lag is None:  # Redis 6.2: count what lies after the last delivered entry
            after = f"({_text(group['last-delivered-id'])}"
            lag = len(await redis.xrange(stream, min=after, max="+", count=LAG_CAP))
        states.append(ShardState(length, group["pending"], lag))
    return states


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value


class ShardCountMismatch(RuntimeError):
    """This process would use another number of shards than the deployment: entries would be stranded."""


async def check_shard_count(redis: aioredis.Redis, settings: Settings) -> None:
    """The first process fixes the deployment's shard count in Redis; every later one must agree."""
    key = f"{settings.stream_prefix}:shards"
    await redis.set(key, settings.shards, nx=True)
    recorded = int(await redis.get(key))
    if recorded != settings.shards:
        raise ShardCountMismatch(
            f"this deployment's streams use {recorded} shards ({key}); this process was configured with"
            f" {settings.shards}. Set VAXLINE_SHARDS={recorded}: changing it strands entries.")


async def ensure_groups(redis: aioredis.Redis, settings: Settings) -> None:
    """Check the shard count, then create the consumer group on every shard (from the stream's start)."""
    await check_shard_count(redis, settings)
    for stream in settings.streams:
        try:
            await redis.xgroup_create(stream, settings.group, id="0", mkstream=True)
        except ResponseError as e:
            if "BUSYGROUP" not in str(e):  # redis-py has no class for this reply
                raise


def connect_redis(settings: Settings) -> aioredis.Redis:
    """Explicit timeouts: a half-open connection must fail, not hang an XADD or XREADGROUP
    (reads block for at most a fraction of a second, well under the socket timeout)."""
    tcp = {} if settings.redis_url.startswith("unix:") else {"socket_keepalive": True}
    return aioredis.Redis.from_url(settings.redis_url, health_check_interval=10, socket_timeout=10,
                                   socket_connect_timeout=5, **tcp)
