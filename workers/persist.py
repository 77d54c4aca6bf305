"""Persist: one transaction per gathered group, then acknowledge.

Promises, in order of importance:
- an entry is acknowledged only after the COMMIT that persisted it, and
  after its persons were handed to the certifiers (workers.handoff): a crash
  in between redelivers the entry, which is found persisted and handed off
  again, so no persisted dose ever misses its certificate;
- a failure of the system (Postgres restarting, a dropped connection, a
  deadlock, a timeout; see storage.errors) is retried with backoff for as
  long as it lasts and never counts against the data; on shutdown the group
  is left pending for the next start;
- a group that fails for a reason of its data is split into its entries, so
  one poison entry cannot block the rest; an entry that keeps failing is
  dead-lettered (stream and table, with its error) once the group has
  delivered it `max_deliveries` times. It is never dropped.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time

import asyncpg
import redis.asyncio as aioredis

from monitoring import metrics
from storage import corrections
from storage import ACQUIRE_TIMEOUT
from storage import doses as dose_store
from storage.errors import POISON
from vaxline.config import Settings
from vaxline.entries import version_of

from . import handoff
from .consume import ShardReader, StreamEntry
from .loop import error_kind, retrying
from .rows import DecodedEntry, PoisonEntry, to_rows

log = logging.getLogger(__name__)


class Persister:
    def __init__(self, pool: asyncpg.Pool, redis: aioredis.Redis, reader: ShardReader, settings: Settings,
                 stop: asyncio.Event):
        self._pool = pool
        self._redis = redis
        self._reader = reader
        self._settings = settings
        self._stop = stop

    async def persist(self, group: list[DecodedEntry]) -> list[dose_store.Receipt]:
        """Persist and acknowledge a group; returns the receipts written."""
        try:
            receipts, corrected = await self._retrying(self._attempt, group)
        except POISON as e:
            if len(group) == 1:
                await self._failed(group[0].entry, e)
                return []
            log.warning("group of %d entries failed (%s); persisting them one by one", len(group), type(e).__name__)
            receipts = []
            for decoded in group:
                receipts.extend(await self.persist([decoded]))
            return receipts
        await handoff.send(self._redis, self._settings, group, corrected)
        await self._reader.ack([d.entry for d in group])
        return receipts

    async def poison(self, poison: PoisonEntry) -> None:
        """An entry that cannot be decoded will never persist: dead-letter it now."""
        await self._dead_letter(poison.entry, str(poison), deliveries=await self._reader.deliveries(poison.entry))

    async def _retrying(self, operation, *args):
        return await retrying(self._stop, operation, *args)

    async def _attempt(self, group: list[DecodedEntry]) -> tuple[list[dose_store.Receipt], dict[str, float]]:
        """Persist the group's batches in one transaction, then apply its corrections one by one;
        (receipts written, persons whose records a correction changed -> its 202 time)."""
        started = time.perf_counter()
        batches = [d for d in group if not d.batch.corrections]
        async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
            done = await dose_store.persisted_batches(conn, [d.batch_id for d in group])
            todo = [d for d in batches if d.batch_id not in done]
            rows, counts = to_rows(todo)
            receipts = await dose_store.persist(conn, rows, counts) if todo else []
            for decoded in group:
                if decoded.batch.corrections and decoded.batch_id not in done:
                    receipts.extend(await self._correct(conn, decoded))
            # Every correction's persons, applied now or by an earlier delivery (the receipt keeps them):
            # a crash or a retry between its COMMIT and the handoff cannot leave a certificate stale.
            fixes = [d.batch_id for d in group if d.batch.corrections]
            corrected = await corrections.persisted_persons(conn, fixes) if fixes else {}
        now = time.time()
        log.debug("group persisted", extra={"batches": len(todo), "doses": len(rows),
                                            "duration_ms": round(1000 * (time.perf_counter() - started))})
        metrics.persist_duration.observe(time.perf_counter() - started)
        metrics.gathered_doses.observe(len(rows))
        received = {d.batch_id: d.batch.received_at for d in group}
        dose_batches = {d.batch_id for d in todo}
        for receipt in receipts:
            log.info("batch persisted", extra={"batch_id": receipt.batch_id, "site_id": receipt.site_id,
                                               "inserted": receipt.inserted, "duplicates": receipt.duplicates})
            metrics.batches_persisted.inc()
            metrics.freshness.labels(stage="persisted").observe(max(0.0, now - received[receipt.batch_id]))
            if receipt.batch_id not in dose_batches:
                continue  # a correction: counted in corrections_applied, not as new doses
            metrics.doses_inserted.inc(receipt.inserted)
            metrics.doses_duplicate.inc(receipt.duplicates)
        return receipts, {nid: received[batch_id] for nid, batch_id in corrected.items()}

    @staticmethod
    async def _correct(conn, decoded: DecodedEntry) -> list[dose_store.Receipt]:
        """Apply the entry's correction (each in its own transaction); the receipts written."""
        received_at = dt.datetime.fromtimestamp(decoded.batch.received_at, dt.timezone.utc)
        receipts = []
        for correction in decoded.batch.corrections:
            applied = await corrections.apply(
                conn, batch_id=decoded.batch_id, site_id=decoded.batch.site_id,
                version=version_of(decoded.entry.entry_id), received_at=received_at, correction=correction)
            if applied is None:  # another delivery applied it
                continue
            metrics.corrections_applied.labels(op=correction.op, applied=str(bool(applied.receipt.inserted)).lower()
                                               ).inc()
            receipts.append(applied.receipt)
        return receipts

    async def _failed(self, entry: StreamEntry, error: Exception) -> None:
        deliveries = await self._reader.deliveries(entry)
        reason = f"{type(error).__name__}: {error}".replace("\x00", "\\0")  # stored as text: no NUL
        if deliveries >= self._settings.max_deliveries:
            await self._dead_letter(entry, reason, deliveries=deliveries)
        else:
            # Left pending: XAUTOCLAIM delivers it again after claim_idle_ms.
            log.warning("entry %s failed on delivery %d (%s); left pending", entry.entry_id, deliveries,
                        error_kind(error))

    async def _dead_letter(self, entry: StreamEntry, reason: str, *, deliveries: int) -> None:
        stream = self._settings.stream(entry.shard)
        new = await self._retrying(self._store_dead_letter, entry, stream, reason, deliveries)
        if new:  # a redelivered dead letter is in the table already and on the stream
            await self._redis.xadd(self._settings.dead_letter_stream, {
                b"stream": stream, b"entry_id": entry.entry_id, b"error": reason, b"payload": entry.payload or b"",
            })
            metrics.dead_letters.inc()
            log.error("dead-lettered entry %s of %s after %d deliveries (its error is in dead_letters)",
                      entry.entry_id, stream, deliveries)
        await self._reader.ack([entry])

    async def _store_dead_letter(self, entry: StreamEntry, stream: str, reason: str, deliveries: int) -> bool:
        async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
            return await dose_store.dead_letter(conn, shard=entry.shard, stream=stream, entry_id=entry.entry_id,
                                                deliveries=deliveries, error=reason, payload=entry.payload or b"")
