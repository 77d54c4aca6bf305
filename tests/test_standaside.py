"""Standing aside (workers/standaside.py) against a real Redis: a reviewer or notifier waits while a dose entry
or a certify handoff is older than stand_aside_after, no longer than stand_aside_max, not for a group no consumer
reads, and not when Redis fails."""

import asyncio
import dataclasses
import time

import pytest
import redis.asyncio as aioredis

from monitoring import metrics
from tests.conftest import wait_until
from vaxline.streams import ensure_groups
from workers import standaside
from workers.consume import ShardReader, StreamEntry
from workers.standaside import StandAside


@pytest.fixture
async def grouped(settings, redis):
    await ensure_groups(redis, settings)
    return settings, redis


async def old_entry(redis, stream: str, seconds_ago: float) -> str:
    entry_id = f"{int((time.time() - seconds_ago) * 1000)}-0"
    return (await redis.xadd(stream, {b"b": b"x"}, id=entry_id)).decode()


async def pending_old_entry(redis, settings, shard: int = 0) -> tuple[ShardReader, StreamEntry]:
    """An entry added 30 s ago on a dose shard, delivered to a consumer (pending, not finished): the reader
    (closed; the consumer's idle time counts from this read) and the entry."""
    await old_entry(redis, settings.stream(shard), 30.0)
    reader = ShardReader(redis, settings, "w-0")
    [entry] = await reader.read(block_ms=10, count=1)
    reader.close()
    return reader, entry


def stood(role: str) -> float:
    return metrics.stood_aside.labels(role=role)._value.get()


def counting(aside: StandAside) -> list[float]:
    """Record every look `aside` takes (what behind() found), so a test can wait for one without a sleep."""
    looks: list[float] = []
    behind = aside.behind

    async def counted(enough: float | None = None) -> float:
        looks.append(await behind(enough))
        return looks[-1]

    aside.behind = counted
    return looks


async def test_nothing_behind_means_no_wait(grouped):
    settings, redis = grouped
    await old_entry(redis, settings.stream(0), 0.0)  # fresh: within stand_aside_after
    aside = StandAside(redis, settings, asyncio.Event(), role="test-none")
    assert await aside.behind() < settings.stand_aside_after
    assert await aside.wait() == 0.0
    assert stood("test-none") == 0.0


async def test_a_pending_entry_with_a_reading_consumer_holds_the_round_back_at_most_stand_aside_max(grouped):
    settings, redis = grouped
    settings = dataclasses.replace(settings, stand_aside_max=0.6)
    await old_entry(redis, settings.certify_stream, 30.0)
    reader = ShardReader(redis, settings, "c-0", streams=[settings.certify_stream], group=settings.certify_group)
    assert await reader.read(block_ms=10, count=1)  # delivered to a consumer that reads: pending, not finished
    aside = StandAside(redis, settings, asyncio.Event(), role="test-max")
    assert await aside.behind() >= 29.0
    waited = await aside.wait()
    assert 0.6 <= waited < 5.0
    assert stood("test-max") == pytest.approx(waited)


async def test_a_look_for_whether_to_wait_stops_at_the_first_group_behind_enough(grouped):
    settings, redis = grouped
    reader, _ = await pending_old_entry(redis, settings)  # a dose shard, 30 s behind
    await old_entry(redis, settings.certify_stream, 5.0)
    certifier = ShardReader(redis, settings, "c-0", streams=[settings.certify_stream], group=settings.certify_group)
    assert await certifier.read(block_ms=10, count=1)  # the handoff, 5 s behind, pending with a reading consumer
    certifier.close()
    aside = StandAside(redis, settings, asyncio.Event(), role="test-enough")
    assert await aside.behind() >= 29.0  # the whole look: the oldest of all
    assert 4.0 <= await aside.behind(enough=1.0) < 29.0  # the certify stream comes first, and is enough


async def test_the_round_goes_ahead_once_the_entry_is_acknowledged(grouped):
    settings, redis = grouped
    reader, entry = await pending_old_entry(redis, settings, shard=1)
    aside = StandAside(redis, settings, asyncio.Event(), role="test-ack")
    looks = counting(aside)
    waiting = asyncio.create_task(aside.wait())
    await wait_until(lambda: len(looks) >= 2, timeout=10, message="standing aside")
    assert not waiting.done()
    await reader.ack([entry])
    waited = await asyncio.wait_for(waiting, timeout=5)
    assert 0 < waited < settings.stand_aside_max


async def test_stop_ends_the_wait(grouped):
    settings, redis = grouped
    await pending_old_entry(redis, settings)
    stop = asyncio.Event()
    aside = StandAside(redis, settings, stop, role="test-stop")
    looks = counting(aside)
    waiting = asyncio.create_task(aside.wait())
    await wait_until(lambda: looks, timeout=10, message="a look")
    assert looks[0] >= 29.0 and not waiting.done()
    stop.set()
    assert await asyncio.wait_for(waiting, timeout=5) < settings.stand_aside_max


async def test_a_group_no_consumer_reads_is_not_waited_for(grouped, monkeypatch):
    settings, redis = grouped
    await old_entry(redis, settings.stream(0), 30.0)  # undelivered, and no consumer at all (no workers running)
    aside = StandAside(redis, settings, asyncio.Event(), role="test-idle")
    assert await aside.behind() == 0.0
    monkeypatch.setattr(standaside, "CONSUMED_WITHIN_MS", 200)
    await pending_old_entry(redis, settings)  # with a consumer that then stops reading
    assert await aside.behind() >= 29.0  # it read a moment ago

    async def consumer_idle():
        [consumer] = await redis.xinfo_consumers(settings.stream(0), settings.group)
        return consumer["idle"] >= 200

    await wait_until(consumer_idle, timeout=10, message="the consumer idle")
    assert await aside.behind() == 0.0
    assert await aside.wait() == 0.0


async def test_redis_failing_is_no_reason_to_wait(settings):
    down = aioredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
    try:
        aside = StandAside(down, settings, asyncio.Event(), role="test-down")
        assert await aside.wait() == 0.0
    finally:
        await down.aclose()


async def test_zero_turns_it_off(grouped):
    settings, redis = grouped
    await pending_old_entry(redis, settings)
    off = dataclasses.replace(settings, stand_aside_after=0)
    assert await StandAside(redis, off, asyncio.Event(), role="test-off").wait() == 0.0
