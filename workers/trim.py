"""Trim: drop stream entries that every consumer group has finished with.

Redis 7 silently drops a pending entry that a blind MAXLEN trim removes, so
the stream is trimmed only with MINID, below both the oldest pending entry
and the first entry not yet delivered, of every group on the shard.
"""

from __future__ import annotations

import dataclasses

import redis.asyncio as aioredis

from vaxline.config import Settings
from vaxline.streams import ShardState, shard_state


async def safe_min_id(redis: aioredis.Redis, stream: str) -> str | None:
    """The lowest entry id any group still needs, or None if nothing may be trimmed."""
    return (await shard_state(redis, stream, "")).trim_floor


async def trim_stream(redis: aioredis.Redis, stream: str, group: str) -> tuple[int, ShardState]:
    """Trim one stream; (entries removed, its state after the trim)."""
    state = await shard_state(redis, stream, group)
    if state.trim_floor is None:
        return 0, state
    trimmed = await redis.xtrim(stream, minid=state.trim_floor, approximate=False)
    return trimmed, dataclasses.replace(state, length=state.length - trimmed)


async def trim_shards(redis: aioredis.Redis, settings: Settings) -> tuple[int, list[ShardState]]:
    """Trim every shard; (entries removed, each shard's state after the trim, for the metrics)."""
    removed, states = 0, []
    for stream in settings.streams:
        trimmed, state = await trim_stream(redis, stream, settings.group)
        removed += trimmed
        states.append(state)
    return removed, states


async def trim(redis: aioredis.Redis, settings: Settings) -> int:
    """Trim every shard; returns how many entries were removed."""
    return (await trim_shards(redis, settings))[0]
