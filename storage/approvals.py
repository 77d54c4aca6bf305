"""The outbox of approved correction requests: all of an approval's changes, or none.

An approval writes its changes here in the same transaction that marks the request approved and audits
the decision, and nothing enters the stream before that commit: a failed commit leaves nothing applied.
After the commit each change is put into the stream (`deliver`): under the change's row lock, taken with
SKIP LOCKED so two processes never put the same change in at once, the XADD, then its batch id, the
request's `applied` list and an `applied:<op>` audit entry in one transaction. A change the stream refuses
stays pending, audited as `enqueue_failed`, and is re-driven until it is in. Should a process die between
the XADD and that commit, the re-drive puts the change in again, which changes nothing more: an insert's
record id is then a duplicate, and a replace carries the same fields.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable

import asyncpg
import msgspec

from .citizen import audit


@dataclasses.dataclass(frozen=True, slots=True)
class Change:
    request_id: str
    n: int  # its place in the request's `applied` list, from 1
    site_id: int
    op: str  # insert, replace
    record_id: str
    dose: dict  # the dose's fields, as JSON
    actor: str


async def plan(conn: asyncpg.Connection, changes: list[Change]) -> None:
    """Write an approval's changes, inside the transaction that records the approval."""
    await conn.executemany(
        "INSERT INTO correction_changes (request_id, n, site_id, op, record_id, dose, actor)"
        " VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7)",
        [(c.request_id, c.n, c.site_id, c.op, c.record_id, msgspec.json.encode(c.dose).decode(), c.actor)
         for c in changes])


async def pending(conn: asyncpg.Connection) -> int:
    """Changes approved but not yet in the stream."""
    return await conn.fetchval("SELECT count(*) FROM correction_changes WHERE batch_id IS NULL")


async def deliver(conn: asyncpg.Connection, put: Callable[[Change], Awaitable[str]], *,
                  failures: tuple[type[Exception], ...], request_id: str | None = None,
                  limit: int = 100) -> tuple[int, int]:
    """Put pending changes (of one request, or of all) into the stream in order, one transaction each:
    `put` returns the batch id. Stops at the first change that fails with one of `failures` (the stream
    cannot take it now), which is audited and left pending. Returns (changes delivered, changes failed)."""
    delivered = 0
    while delivered < limit:
        async with conn.transaction():
            row = await conn.fetchrow(
                "SELECT request_id, n, site_id, op, record_id, dose, actor FROM correction_changes"
                " WHERE batch_id IS NULL AND ($1::text IS NULL OR request_id = $1)"
                " ORDER BY request_id, n LIMIT 1 FOR UPDATE SKIP LOCKED", request_id)
            if row is None:
                return delivered, 0
            change = Change(**{**dict(row), "dose": msgspec.json.decode(row["dose"])})
            try:
                batch_id = await put(change)
            except failures as e:
                failure = e
            else:
                await _delivered(conn, change, batch_id)
                delivered += 1
                continue
        await _failed(conn, change, failure)
        return delivered, 1
    return delivered, 0


async def _delivered(conn: asyncpg.Connection, change: Change, batch_id: str) -> None:
    await conn.execute("UPDATE correction_changes SET batch_id = $3 WHERE request_id = $1 AND n = $2",
                       change.request_id, change.n, batch_id)
    applied = await conn.fetchval(
        "UPDATE correction_requests SET applied = jsonb_set(applied, ARRAY[($2 - 1)::text, 'batch_id'],"
        " to_jsonb($3::text)), updated_at = now() WHERE request_id = $1"
        " RETURNING applied -> ($2 - 1)", change.request_id, change.n, batch_id)
    entry = msgspec.json.decode(applied) if applied else {}
    await audit(conn, change.actor, f"applied:{change.op}", request_id=change.request_id, site_id=change.site_id,
                record_id=change.record_id, before=entry.get("before"), after={**(entry.get("after") or {}),
                                                                              "batch_id": batch_id})


async def _failed(conn: asyncpg.Connection, change: Change, error: Exception) -> None:
    async with conn.transaction():
        attempts = await conn.fetchval(
            "UPDATE correction_changes SET attempts = attempts + 1 WHERE request_id = $1 AND n = $2"
            " RETURNING attempts", change.request_id, change.n)
        await audit(conn, "system", "enqueue_failed", request_id=change.request_id, site_id=change.site_id,
                    record_id=change.record_id,
                    after={"change": change.n, "attempts": attempts, "error": type(error).__name__,
                           "reason": str(error)[:200], "will_retry": True})
