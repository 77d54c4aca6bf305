"""Retry-After derived from the backlog and the pace the workers drain it.

The derivation is pure (vaxline.enqueue.Backpressure, Drain): driven here with made-up readings and times.
The count it measures the drain from is written by the real enqueue path, checked against a real Redis.

Covers: a backlog draining at a known pace (trims once a second, entries still arriving from another ingest)
gets the time to its bound, jittered; jitter spreads the answers; the clamps to [1, 30] s; an unknown, failed
or stale reading gets the fixed fallback, jittered; the pace is measured only while batches are refused and
kept between refusals; a lost count is not read as a drain; the memory bound; XADDs counted per shard.
"""

from __future__ import annotations

import json
import math
import random

import msgspec
import pytest

from tests.factory import dose
from vaxline.config import Settings
from vaxline.doses import Dose
from vaxline.enqueue import (
    RETRY_MAX,
    RETRY_MIN,
    RETRY_UNMEASURED,
    RETRY_UNREACHABLE,
    Backpressure,
    Drain,
    Enqueuer,
    Overloaded,
    jittered,
    seconds_to_bounds,
)
from vaxline.streams import Backlog, read_backlog

BOUND = 100


def pure_settings(**overrides) -> Settings:
    return Settings(database_url="postgresql://unused", redis_url="redis://unused", shards=2,
                    max_backlog_entries=BOUND, **overrides)


def reading(entries: tuple[int, ...], added: tuple[int, ...], memory: int = 1 << 20) -> Backlog:
    return Backlog(entries_per_shard=entries, redis_memory_bytes=memory, added_per_shard=added)


def retry_afters(backpressure: Backpressure, now: float, n: int = 500) -> list[int]:
    answers = []
    for _ in range(n):
        with pytest.raises(Overloaded) as refused:
            backpressure.check(now)
        answers.append(refused.value.retry_after)
    assert all(isinstance(a, int) and RETRY_MIN <= a <= RETRY_MAX for a in answers)
    return answers


def allowed(seconds: float) -> set[int]:
    """What jittered() may answer for `seconds` between 2 and 20: half to one and a half times it, to the
    nearest second (a bound reached only by a factor of exactly 1.5 left out)."""
    return set(range(math.floor(seconds * 0.5 + 0.5), math.ceil(seconds * 1.5 + 0.5)))


class FakeShards:
    """Two shards read twice a second: shard 0 trimmed by `pace` entries once a second, shard 1 small."""

    def __init__(self, backpressure: Backpressure, *, entries: int, pace: int):
        self.backpressure, self.pace = backpressure, pace
        self.entries, self.added, self.now = [entries, 10], [1_000, 50], 0.0
        self.backpressure.take(self.read(), self.now)

    def read(self) -> Backlog:
        return reading(tuple(self.entries), tuple(self.added))

    def half_second(self, *, arriving: int = 0) -> None:
        """Half a second on: `arriving` entries XADDed to shard 0 (another ingest process not yet refusing),
        and the workers' trim on each whole second."""
        self.now += 0.5
        self.entries[0] += arriving
        self.added[0] += arriving
        if self.now == int(self.now):
            self.entries[0] -= self.pace
        self.backpressure.take(self.read(), self.now)


def test_a_backlog_draining_at_a_known_pace_is_told_the_time_to_its_bound_jittered():
    backpressure = Backpressure(pure_settings(), window=1.0, stale_after=5.0, rng=random.Random(1))
    shards = FakeShards(backpressure, entries=500, pace=40)
    # Past the bound before any drain was measured: the short fixed answer, jittered.
    assert set(retry_afters(backpressure, shards.now)) == allowed(RETRY_UNMEASURED) == {1, 2, 3}
    for arriving in (0, 5, 0, 20, 0, 0):  # entries still arriving as a trim runs: not read as a slower drain
        shards.half_second(arriving=arriving)
    assert shards.now == 3.0 and shards.entries[0] == 500 + 25 - 3 * 40
    expected = (shards.entries[0] - BOUND) / 40  # 7.625 s
    answers = retry_afters(backpressure, shards.now)
    assert set(answers) == allowed(expected) == set(range(4, 12))
    assert sum(answers) / len(answers) == pytest.approx(expected, abs=0.3)
    # A request a moment after the reading is told the time left from then.
    assert set(retry_afters(backpressure, shards.now + 0.4)) == allowed(expected - 0.4) == set(range(4, 12))


def test_jitter_spreads_the_answers():
    rng = random.Random(2)
    answers = [jittered(10, rng) for _ in range(1_000)]
    assert set(answers) == set(range(5, 16))  # every whole second between: no wave on one of them
    assert max(answers.count(a) for a in set(answers)) < 0.15 * len(answers)
    assert {jittered(2, rng) for _ in range(200)} == {1, 2, 3}


def test_the_answers_stay_within_one_and_thirty_seconds():
    rng = random.Random(3)
    for seconds in (-5.0, 0.0, 0.01, 0.6, 1.0):
        assert {jittered(seconds, rng) for _ in range(200)} == {1}
    for seconds in (20.0, 45.0, 1e9, math.inf):  # spread below the clamp, not piled up on it
        answers = [jittered(seconds, rng) for _ in range(1_000)]
        assert set(answers) == set(range(10, 31)) and answers.count(30) < 0.1 * len(answers)


def test_a_backlog_that_does_not_drain_gets_the_longest_answer_and_a_fast_drain_the_shortest():
    stalled = Backpressure(pure_settings(), window=1.0, stale_after=5.0, rng=random.Random(4))
    shards = FakeShards(stalled, entries=500, pace=0)  # workers stopped: nothing trimmed
    shards.half_second()
    shards.half_second()
    assert set(retry_afters(stalled, shards.now, n=1_000)) == set(range(10, 31))

    fast = Backpressure(pure_settings(), window=1.0, stale_after=5.0, rng=random.Random(5))
    shards = FakeShards(fast, entries=BOUND + 300, pace=200)
    shards.half_second()
    shards.half_second()  # 100 past the bound, draining 200 a second: half a second away
    assert set(retry_afters(fast, shards.now)) == {1}


@pytest.mark.parametrize("how", ["never read", "read failed", "reading stale"])
def test_an_unknown_backlog_gets_the_fixed_fallback_jittered(how):
    backpressure = Backpressure(pure_settings(), window=1.0, stale_after=5.0, rng=random.Random(6))
    now = 100.0
    if how == "read failed":
        backpressure.take(reading((500, 0), (0, 0)), now - 1)
        backpressure.take(None, now)
    elif how == "reading stale":
        backpressure.take(reading((0, 0), (0, 0)), now - 5.1)
    assert set(retry_afters(backpressure, now)) == allowed(RETRY_UNREACHABLE) == set(range(3, 8))
    with pytest.raises(Overloaded, match="cannot be reached"):
        backpressure.check(now)


def test_under_the_bounds_nothing_is_refused():
    backpressure = Backpressure(pure_settings(), window=1.0, stale_after=5.0, rng=random.Random(7))
    backpressure.take(reading((BOUND, 3), (BOUND, 3)), 0.0)
    backpressure.check(4.9)  # raises nothing


def test_the_pace_is_measured_only_while_refusing_and_kept_between_refusals():
    drain = Drain(window=1.0)
    # Under the bound the workers trim what arrives (5 a second), which says nothing of their pace.
    drain.observe(reading((20, 0), (100, 0)), 0.0, refusing=False)
    drain.observe(reading((20, 0), (105, 0)), 1.0, refusing=False)
    assert drain.per_shard is None
    # Refusing: 30 trimmed over 0.5 s is not yet a sample (shorter than a trim interval) ...
    drain.observe(reading((150, 0), (235, 0)), 1.5, refusing=False)
    drain.observe(reading((120, 0), (235, 0)), 2.0, refusing=True)
    assert drain.per_shard is None
    # ... the refusal ends (50 more arrive), and the next one completes the sample: 30 + 50 over 1 s.
    drain.observe(reading((170, 0), (285, 0)), 2.5, refusing=False)
    drain.observe(reading((120, 0), (285, 0)), 3.0, refusing=True)
    assert drain.per_shard == pytest.approx((80, 0))
    # Between refusals, slower trims change nothing.
    drain.observe(reading((119, 0), (285, 0)), 10.0, refusing=False)
    assert drain.per_shard == pytest.approx((80, 0))
    # A slower pace while refusing moves the rate towards it, smoothed.
    drain.observe(reading((109, 0), (285, 0)), 11.0, refusing=True)
    assert 10 < drain.per_shard[0] < 80


def test_a_lost_count_is_not_read_as_a_drain():
    drain = Drain(window=1.0)
    drain.observe(reading((500, 0), (1_000, 0)), 0.0, refusing=True)
    drain.observe(reading((500, 0), (3, 0)), 1.0, refusing=True)  # the count's key was lost (a flush)
    assert drain.per_shard is None
    drain.observe(reading((460, 0), (3, 0)), 2.0, refusing=True)
    assert drain.per_shard == pytest.approx((40, 0))


def test_the_memory_bound_drains_with_the_entries():
    settings = pure_settings(max_redis_memory_bytes=2_000)
    # A third of the memory is past its bound: a third of the 180 entries at 30 a second.
    assert seconds_to_bounds(reading((90, 90), (0, 0), memory=3_000), (15.0, 15.0), settings) == pytest.approx(2)
    assert seconds_to_bounds(reading((0, 0), (0, 0), memory=3_000), (25.0, 25.0), settings) == math.inf
    # The entry bound of the slowest shard rules: 150 past it at 10 a second.
    assert seconds_to_bounds(reading((250, 250), (0, 0), memory=1_000), (100.0, 10.0), settings) == pytest.approx(15)


async def test_each_entry_added_is_counted_on_its_shard(settings, redis):
    enqueuer = Enqueuer(redis, settings)  # not started: no poller, only the enqueue path
    doses = [msgspec.json.decode(json.dumps(dose(n)), type=Dose) for n in range(3)]
    site = next(s for s in range(100) if settings.shard_of(s) == 1)
    before = await read_backlog(redis, settings)
    await enqueuer.enqueue(site_id=site, doses=doses)
    await enqueuer.enqueue(site_id=site, doses=doses[:1])
    await enqueuer.enqueue_correction(site_id=site, op="withdraw", record_id="R-0000000", dose=None, changed_by="t")
    after = await read_backlog(redis, settings)
    assert [a - b for a, b in zip(after.added_per_shard, before.added_per_shard)] == [
        3 if shard == 1 else 0 for shard in range(settings.shards)]
    assert after.entries_per_shard[1] - before.entries_per_shard[1] == 3  # nothing trimmed yet
