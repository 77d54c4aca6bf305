"""Trim: drop stream entries that every consumer group has finished with.

Redis 7 silently drops a pending entry that a blind MAXLEN trim removes, so
the stream is trimmed only with MINID, below both the oldest pending entry
and the first entry not yet delivered, of every group on the shard.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from vaxline.config import Settings


def _after(entry_id: str) -> str:
    ms, _, seq = entry_id.partition("-")
    return f"{ms}-{int(seq) + 1}"


def _smaller(a: str, b: str) -> str:
    return min(a, b, key=lambda i: tuple(int(p) for p in i.split("-")))


async def safe_min_id(redis: aioredis.Redis, stream: str) -> str | None:
    """The lowest entry id any group still needs, or None if nothing may be trimmed."""
    if not await redis.exists(stream):
        return None
    groups = await redis.xinfo_groups(stream)
    if not groups:
        return None
    floor = None
    for group in groups:
        name = group["name"]
        last = group["last-delivered-id"]
        last = last.decode() if isinstance(last, bytes) else last
        needed = _after(last)
        summary = await redis.xpending(stream, name)
        if summary["pending"]:
            oldest = summary["min"].decode() if isinstance(summary["min"], bytes) else summary["min"]
            needed = _smaller(needed, oldest)
        floor = needed if floor is None else _smaller(floor, needed)
    return floor


async def trim(redis: aioredis.Redis, settings: Settings) -> int:
    """Trim every shard; returns how many entries were removed."""
    removed = 0
    for stream in settings.streams:
        floor = await safe_min_id(redis, stream)
        if floor is not None:
            removed += await redis.xtrim(stream, minid=floor, approximate=False)
    return removed
