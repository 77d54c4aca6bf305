"""Dead letters and failed certify handoffs: what `vaxline deadletters` lists and re-drives.

A dead letter is a stream entry that failed past its delivery bound (workers.persist), kept with its
payload; a failed handoff is a chunk of persons a certifier could not certify on an error of the data
(workers.certify), kept as the certify stream carries it. Once the cause is fixed, each is appended
again (the dead letter to its shard, the handoff to the certify stream) and marked replayed here, with
an audit entry. Marking happens after the append: a replay interrupted in between is done again, which
the append makes harmless (see vaxline.enqueue.Enqueuer.replay; a handoff twice is one certificate).
"""

from __future__ import annotations

import dataclasses
import datetime as dt

import asyncpg

from vaxline.entries import decoded, parse_batch_id

from .citizen import audit


@dataclasses.dataclass(frozen=True, slots=True)
class DeadLetter:
    batch_id: str
    shard: int
    site: str | None  # the site's code, when the payload names a site
    doses: int  # in the payload (0: undecodable, or a correction)
    correction: bool
    decodable: bool
    deliveries: int
    error: str
    dead_at: dt.datetime
    replayed_at: dt.datetime | None
    replayed_as: str | None
    payload: bytes = dataclasses.field(repr=False)


_DEAD_LETTERS = """
SELECT d.batch_id, d.error, d.deliveries, d.dead_at, d.replayed_at, d.replayed_as, d.payload, s.code AS site
FROM dead_letters d LEFT JOIN sites s ON s.site_id = d.site_id
WHERE ($1::text[] IS NULL OR d.batch_id = ANY($1::text[])) AND ($2 OR d.replayed_at IS NULL)
ORDER BY d.dead_at, d.batch_id
"""


async def dead_letters(conn: asyncpg.Connection, *, batch_ids: list[str] | None = None,
                       replayed: bool = True) -> list[DeadLetter]:
    """The dead letters, oldest first: these batch ids only, or every one; without `replayed`, only
    those not replayed yet."""
    letters = []
    for r in await conn.fetch(_DEAD_LETTERS, batch_ids, replayed):
        entry = decoded(bytes(r["payload"]))
        shard, _ = parse_batch_id(r["batch_id"]) or (0, "")
        letters.append(DeadLetter(
            batch_id=r["batch_id"], shard=shard, site=r["site"], doses=len(entry.doses) if entry else 0,
            correction=bool(entry and entry.corrections), decodable=entry is not None, deliveries=r["deliveries"],
            error=r["error"], dead_at=r["dead_at"], replayed_at=r["replayed_at"], replayed_as=r["replayed_as"],
            payload=bytes(r["payload"])))
    return letters


async def mark_replayed(conn: asyncpg.Connection, letter: DeadLetter, replayed_as: str, *, actor: str) -> bool:
    """Record that the dead letter was appended again as `replayed_as`, audited; False if it was marked
    already (another replay got there first)."""
    async with conn.transaction():
        marked = await conn.fetchval(
            "UPDATE dead_letters SET replayed_at = now(), replayed_as = $2 WHERE batch_id = $1 AND replayed_at IS NULL"
            " RETURNING true", letter.batch_id, replayed_as)
        if marked:
            await audit(conn, actor, "dead_letter_replayed", before={"batch_id": letter.batch_id},
                        after={"batch_id": replayed_as, "doses": letter.doses})
    return bool(marked)


# -- failed certify handoffs --------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, slots=True)
class FailedHandoff:
    handoff_id: int
    persons: int
    error: str
    failed_at: dt.datetime
    replayed_at: dt.datetime | None
    payload: bytes = dataclasses.field(repr=False)


async def record_failed_handoff(conn: asyncpg.Connection, *, payload: bytes, persons: int, error: str) -> int:
    """Keep a handoff the certifiers dropped (the certify stream's payload: national ids); its id."""
    return await conn.fetchval("INSERT INTO failed_handoffs (payload, persons, error) VALUES ($1, $2, $3)"
                               " RETURNING handoff_id", payload, persons, error.replace("\x00", "\\0"))


async def failed_handoffs(conn: asyncpg.Connection, *, replayed: bool = True) -> list[FailedHandoff]:
    rows = await conn.fetch("SELECT handoff_id, persons, error, failed_at, replayed_at, payload FROM failed_handoffs"
                            " WHERE $1 OR replayed_at IS NULL ORDER BY handoff_id", replayed)
    return [FailedHandoff(**{**dict(r), "payload": bytes(r["payload"])}) for r in rows]


async def mark_handoff_replayed(conn: asyncpg.Connection, handoff: FailedHandoff, *, actor: str) -> bool:
    async with conn.transaction():
        marked = await conn.fetchval("UPDATE failed_handoffs SET replayed_at = now() WHERE handoff_id = $1"
                                     " AND replayed_at IS NULL RETURNING true", handoff.handoff_id)
        if marked:
            await audit(conn, actor, "failed_handoff_replayed", after={"handoff_id": handoff.handoff_id,
                                                                        "persons": handoff.persons})
    return bool(marked)
