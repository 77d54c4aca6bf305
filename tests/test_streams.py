"""Stream mechanics on every Redis at hand: the embedded 6.2, when one
answers, a Redis 7 (TEST_REDIS7_URL, or the machine's 127.0.0.1:6379), and
the Redis Cluster of tests/redis_cluster.py (where each shard is read on its own).

XAUTOCLAIM's reply and XINFO's fields differ between the two; a worker that
crashes on one of them stops draining without a word.

Covers: own pending list after restart, XAUTOCLAIM, trimming that keeps pending and undelivered entries, a
pending entry whose data was deleted, the oldest entry a group has not finished, on Redis 6.2, 7 and a Redis 7
Cluster.
"""

import asyncio
import dataclasses
import os
import time

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from vaxline.streams import connect_redis, ensure_groups, oldest_unfinished
from workers.consume import ShardReader
from workers.trim import safe_min_id, trim

REDIS7 = os.environ.get("TEST_REDIS7_URL", "redis://127.0.0.1:6379/0")


async def _reachable(url: str) -> str | None:
    client = aioredis.Redis.from_url(url, socket_connect_timeout=1)
    try:
        return (await client.info("server"))["redis_version"]
    except (RedisConnectionError, OSError):
        return None
    finally:
        await client.aclose()


@pytest.fixture(params=["embedded", "redis7", "cluster"])
async def stream_settings(request, make_settings):
    if request.param == "embedded":
        settings = make_settings()
    elif request.param == "cluster":
        settings = make_settings(redis_url=request.getfixturevalue("redis_cluster").url)
    else:
        version = await _reachable(REDIS7)
        if not version or int(version.split(".")[0]) < 7:
            pytest.skip(f"no Redis 7 at {REDIS7}")
        settings = make_settings(redis_url=REDIS7)
    client = connect_redis(settings)
    await ensure_groups(client, settings)
    yield settings, client
    keys = [k async for k in client.scan_iter(match=f"{settings.stream_prefix}:*")]
    for key in keys:  # one by one: a cluster's keys are in several slots
        await client.delete(key)
    await client.aclose()


async def add(client, settings, n, shard=0):
    return [(await client.xadd(settings.stream(shard), {b"b": b"x%d" % i})).decode() for i in range(n)]


async def test_a_reader_sees_its_own_pending_list_first_after_a_restart(stream_settings):
    settings, client = stream_settings
    ids = await add(client, settings, 3)
    first = ShardReader(client, settings, "w-0")
    assert [e.entry_id for e in await first.read(block_ms=10, count=10)] == ids
    await add(client, settings, 1)
    again = ShardReader(client, settings, "w-0")  # the same consumer, restarted
    assert [e.entry_id for e in await again.read(block_ms=10, count=10)] == ids


async def test_idle_entries_of_a_dead_consumer_are_claimed(stream_settings):
    settings, client = stream_settings
    settings = dataclasses.replace(settings, claim_idle_ms=100)
    ids = await add(client, settings, 2)
    await ShardReader(client, settings, "dead").read(block_ms=10, count=10)
    await asyncio.sleep(settings.claim_idle_ms / 1000 + 0.05)  # the idle time is the point of this test
    heir = ShardReader(client, settings, "heir")
    heir._history.clear()
    heir._next_claim = 0
    claimed = await heir.read(block_ms=10, count=10)
    assert [e.entry_id for e in claimed] == ids and all(e.payload for e in claimed)
    assert await heir.deliveries(claimed[0]) == 2


async def test_trim_keeps_pending_and_undelivered_entries(stream_settings):
    settings, client = stream_settings
    ids = await add(client, settings, 5)
    reader = ShardReader(client, settings, "w-0")
    read = await reader.read(block_ms=10, count=3)
    await reader.ack(read[:1])
    assert await safe_min_id(client, settings.stream(0)) == ids[1]
    await trim(client, settings)
    assert [e[0].decode() for e in await client.xrange(settings.stream(0))] == ids[1:]
    await reader.ack(read)
    await trim(client, settings)
    assert [e[0].decode() for e in await client.xrange(settings.stream(0))] == ids[3:]


async def test_an_empty_stream_is_never_trimmed_blindly(stream_settings):
    settings, client = stream_settings
    assert await trim(client, settings) == 0


async def test_a_pending_entry_whose_data_was_deleted_is_handed_on_without_payload(stream_settings):
    """Redis 6.2 answers such an entry as nil, 7.0 in a third list: either way it must surface."""
    settings, client = stream_settings
    settings = dataclasses.replace(settings, claim_idle_ms=100)
    kept, deleted = await add(client, settings, 2)
    await ShardReader(client, settings, "dead").read(block_ms=10, count=10)
    await client.xdel(settings.stream(0), deleted)
    await asyncio.sleep(0.15)  # past claim_idle_ms: the idle time is the point of this test
    heir = ShardReader(client, settings, "heir")
    heir._history.clear()
    heir._next_claim = 0
    claimed = {e.entry_id: e.payload for e in await heir.read(block_ms=10, count=10)}
    assert claimed == {kept: b"x0", deleted: None}


async def test_the_oldest_unfinished_entry_is_the_oldest_pending_or_undelivered_one(stream_settings):
    settings, client = stream_settings
    stream, group = settings.stream(0), settings.group
    assert await oldest_unfinished(client, stream, group) is None
    t0 = int(time.time() * 1000) - 10_000
    for i in range(3):
        await client.xadd(stream, {b"b": b"x"}, id=f"{t0 + i * 1000}-0")
    assert await oldest_unfinished(client, stream, group) == t0  # none delivered yet
    reader = ShardReader(client, settings, "w-0")
    [first] = await reader.read(block_ms=10, count=1)
    assert await oldest_unfinished(client, stream, group) == t0  # delivered, not acknowledged
    await reader.ack([first])
    assert await oldest_unfinished(client, stream, group) == t0 + 1000  # the first not delivered
    rest = await reader.read(block_ms=10, count=10)
    await reader.ack(rest[1:])
    assert await oldest_unfinished(client, stream, group) == t0 + 1000  # pending, behind an acknowledged one
    await reader.ack(rest[:1])
    reader.close()
    assert await oldest_unfinished(client, stream, group) is None
    assert await oldest_unfinished(client, settings.stream(1), "no such group") is None
