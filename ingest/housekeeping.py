"""Ingest's housekeeping of citizen correction requests, every `correction_housekeeping_interval` seconds:

- retention: unconfirmed requests (awaiting a code, or an identity check in person) past their expiry are
  deleted with their evidence, each with an audit entry, and counted in
  vaxline_correction_requests_expired_total;
- re-drive: approved changes the stream could not take are put into it (storage.approvals), and those
  still waiting are exported as vaxline_correction_changes_pending.

It runs in ingest because ingest files the requests and owns the enqueuer the re-drive needs, and runs
whenever requests can be filed. Every ingest process runs it: rows another process holds are skipped
(SKIP LOCKED), so they share the work and never do it twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging

from aiohttp import web

from monitoring import metrics
from storage import approvals
from storage import citizen as store

from .citizen import CITIZEN
from .decisions import deliver
from .http import INGEST, UNAVAILABLE, Ingest

log = logging.getLogger(__name__)

EXPIRE_BATCH = 500


@dataclasses.dataclass(frozen=True, slots=True)
class Swept:
    expired: int  # unconfirmed requests deleted
    expired_bytes: int  # their evidence
    delivered: int  # approved changes put into the stream
    pending: int  # approved changes still waiting for it


async def sweep(ingest: Ingest, now: dt.datetime) -> Swept:
    """One round: delete what expired by `now`, then re-drive what the stream could not take."""
    expired, expired_bytes = 0, 0
    while True:
        async with ingest.pool.acquire() as conn:
            gone = await store.expire(conn, now, limit=EXPIRE_BATCH)
        expired += len(gone)
        expired_bytes += sum(row["evidence_bytes"] for row in gone)
        for row in gone:
            metrics.correction_requests_expired.labels(identity=row["identity"]).inc()
        if len(gone) < EXPIRE_BATCH:
            break
    delivered, _ = await deliver(ingest)
    async with ingest.pool.acquire() as conn:
        pending = await approvals.pending(conn)
    metrics.correction_changes_pending.set(pending)
    if expired:
        log.info("expired unconfirmed correction requests", extra={"requests": expired, "bytes": expired_bytes})
    return Swept(expired, expired_bytes, delivered, pending)


async def _run(app: web.Application) -> None:
    ingest = app[INGEST]
    while True:
        await asyncio.sleep(ingest.settings.correction_housekeeping_interval)
        now = dt.datetime.fromtimestamp(app[CITIZEN]["clock"](), dt.UTC)
        try:
            await sweep(ingest, now)
        except UNAVAILABLE as e:  # Postgres or Redis away: the next round tries again
            log.warning("correction housekeeping failed: %s", type(e).__name__)


async def _housekeeping(app: web.Application):
    task = asyncio.create_task(_run(app))
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def register(app: web.Application) -> None:
    app.cleanup_ctx.append(_housekeeping)
