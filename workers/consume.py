"""Consume: read entries of every shard through the consumer group.

A worker first re-reads its own pending list (entries it read before a crash
but never acknowledged), then new entries; every `claim_interval` it also
takes over entries that another consumer left idle longer than
`claim_idle_ms` (XAUTOCLAIM). Acknowledging is separate and happens only
after the COMMIT (see workers.pipeline).

Redis 6.2 answers XAUTOCLAIM with two elements and 7.0 with three (the third
lists pending entries whose data is gone, which 7.0 drops from the pending
list); 6.2 answers such an entry as nil and keeps it pending. Either way the
entry is handed on with no payload, so that it is dead-lettered (recorded,
acknowledged) rather than silently forgotten or pinning the trim floor.

On a Redis Cluster the shards live in different slots (vaxline.config.shard_tag spreads them over the
masters), and one XREADGROUP may name streams of one slot only. There each shard is read on its own: the
own-pending pass and the claims shard by shard, and new entries by one blocking read standing per shard;
a read returns what the first of them brought, and the others stay standing for the next read, so no
entry delivered to this consumer is dropped on the floor (cancelled at a stop, it is in this consumer's
pending list, read first by its next reader or claimed by another consumer).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time

import redis.asyncio as aioredis

from vaxline.config import Settings
from vaxline.entries import ENTRY_FIELD
from vaxline.streams import as_text, is_cluster


@dataclasses.dataclass(frozen=True, slots=True)
class StreamEntry:
    shard: int
    entry_id: str
    payload: bytes | None  # None: the entry's data is gone from the stream


class ShardReader:
    def __init__(self, redis: aioredis.Redis, settings: Settings, consumer: str, *, clock=time.monotonic,
                 streams: list[str] | None = None, group: str | None = None):
        """Reads the dose shards for the persist group, unless other `streams` and `group` are given
        (the certifiers read the certify stream with their own group)."""
        self._redis = redis
        self._settings = settings
        self.consumer = consumer
        self._clock = clock
        self._names = streams or settings.streams  # an entry's `shard` is its stream's index here
        self._group = group or settings.group
        self._streams = {stream: shard for shard, stream in enumerate(self._names)}
        # Own pending list first: the last id read per shard, until it runs dry.
        self._history: dict[str, str] = {stream: "0" for stream in self._names}
        self._claim_interval = max(settings.claim_idle_ms / 2000, 0.1)
        self._next_claim = clock() + self._claim_interval
        self._claim_cursor: dict[str, str] = {stream: "0-0" for stream in self._names}
        self._per_shard = is_cluster(redis) and len(self._names) > 1  # one slot per XREADGROUP
        self._standing: dict[str, asyncio.Task] = {}  # per shard, on a cluster: the blocking read of new entries

    async def read(self, *, block_ms: int, count: int) -> list[StreamEntry]:
        """Up to `count` entries: own pending first, then idle ones of others, then new ones."""
        if self._history:
            entries = await self._read_history(count)
            if entries:
                return entries
        if self._clock() >= self._next_claim:
            entries, more = await self._claim_idle(count)
            # A full page means more may be waiting: claim again at the next read.
            self._next_claim = self._clock() + (0 if more else self._claim_interval)
            if entries:
                return entries
        if self._per_shard:
            return await self._read_standing(block_ms=block_ms, count=count)
        return await self._read(dict.fromkeys(self._streams, ">"), block_ms=block_ms, count=count)

    async def _read_standing(self, *, block_ms: int, count: int) -> list[StreamEntry]:
        """New entries of whichever shards bring some first, within block_ms; the other reads stay standing."""
        for stream in self._names:
            if stream not in self._standing:
                self._standing[stream] = asyncio.ensure_future(
                    self._read({stream: ">"}, block_ms=block_ms, count=count))
        done, _ = await asyncio.wait(self._standing.values(), timeout=block_ms / 1000 + 0.05,
                                     return_when=asyncio.FIRST_COMPLETED)
        entries: list[StreamEntry] = []
        failed: BaseException | None = None
        for stream, task in list(self._standing.items()):
            if task in done:
                del self._standing[stream]
                if task.exception() is None:
                    entries.extend(task.result())
                else:
                    failed = failed or task.exception()
        if failed is not None:  # the caller starts over; what was read is in the pending list, read first then
            self.close()
            raise failed
        return entries

    def close(self) -> None:
        """Cancel the standing reads (what they were delivered stays in this consumer's pending list)."""
        for task in self._standing.values():
            task.cancel()
        self._standing.clear()

    async def _read_history(self, count: int) -> list[StreamEntry]:
        if self._per_shard:
            entries = [entry for stream, last in self._history.items()
                       for entry in await self._read({stream: last}, block_ms=None, count=count)]
        else:
            entries = await self._read(dict(self._history), block_ms=None, count=count)
        done = set(self._history)
        for entry in entries:
            stream = self._names[entry.shard]
            self._history[stream] = entry.entry_id
            done.discard(stream)
        for stream in done:
            del self._history[stream]
        return entries

    async def _read(self, streams: dict[str, str], *, block_ms: int | None, count: int) -> list[StreamEntry]:
        reply = await self._redis.xreadgroup(self._group, self.consumer, streams, count=count, block=block_ms)
        return [
            self._entry(stream, entry_id, fields)
            for stream, messages in (reply or [])
            for entry_id, fields in messages
        ]

    async def _claim_idle(self, count: int) -> tuple[list[StreamEntry], bool]:
        """Entries idle past claim_idle_ms, from where the last pass stopped; (entries, page was full)."""
        claimed: list[StreamEntry] = []
        more = False
        for stream, shard in self._streams.items():
            start = self._claim_cursor[stream]
            reply = await self._redis.xautoclaim(stream, self._group, self.consumer,
                                                 self._settings.claim_idle_ms, start_id=start, count=count)
            cursor = as_text(reply[0])
            self._claim_cursor[stream] = cursor
            more = more or (len(reply[1]) >= count and cursor != "0-0")
            claimed.extend(self._entry(stream, i, f) for i, f in reply[1] if i is not None)
            gone = [as_text(i) for i in reply[2]] if len(reply) > 2 else []  # Redis 7
            if any(i is None for i, _ in reply[1]):  # Redis 6.2 answers nil for them
                gone += await self._vanished(stream, start, cursor, count)
            claimed.extend(StreamEntry(shard, entry_id, None) for entry_id in gone)
        return claimed, more

    async def _vanished(self, stream: str, start: str, end: str, count: int) -> list[str]:
        """This consumer's pending ids in [start, end) whose data is no longer in the stream."""
        pending = await self._redis.xpending_range(stream, self._group, min=start,
                                                   max="+" if end == "0-0" else end, count=count,
                                                   consumername=self.consumer)
        gone = []
        for item in pending:
            entry_id = as_text(item["message_id"])
            if not await self._redis.xrange(stream, min=entry_id, max=entry_id, count=1):
                gone.append(entry_id)
        return gone

    def _entry(self, stream, entry_id, fields) -> StreamEntry:
        return StreamEntry(self._streams[as_text(stream)], as_text(entry_id), (fields or {}).get(ENTRY_FIELD))

    async def ack(self, entries: list[StreamEntry]) -> None:
        by_stream: dict[str, list[str]] = {}
        for entry in entries:
            by_stream.setdefault(self._names[entry.shard], []).append(entry.entry_id)
        async with self._redis.pipeline(transaction=False) as pipe:
            for stream, ids in by_stream.items():
                pipe.xack(stream, self._group, *ids)
            await pipe.execute()

    async def deliveries(self, entry: StreamEntry) -> int:
        """How many times the group has delivered this entry (0 if no longer pending)."""
        pending = await self._redis.xpending_range(
            self._names[entry.shard], self._group,
            min=entry.entry_id, max=entry.entry_id, count=1,
        )
        return pending[0]["times_delivered"] if pending else 0
