"""The notifications outbox: written beside a certificate or a decision, sent by the notifiers.

    certificates_stored(conn, ...)    in storage.certificates.issue's transaction (certifiers, lookups)
    correction_decided(conn, ...)     in storage.citizen.decide's transaction
    claim(conn, ...)                  a notifier takes due rows for a lease (FOR UPDATE SKIP LOCKED)
    sent / failed                     after the gateway answered, a round at a time: done, or due again later

See storage/migrations/0008_notifications.sql for the promises: nothing committed is lost, one notification
waiting per person's certificate, at least once. Nothing here holds a lock while an SMS is being sent: a
claim is one short statement, so an issuer's upsert never waits on a slow gateway.
"""

from __future__ import annotations

import datetime as dt

import asyncpg
import msgspec

from .locking import locked_rows

# A newer certificate replaces the UVCI of the one waiting for the person, and keeps its event (they have
# not heard of the first one yet: it is still "issued").
_CERTIFICATES = """
INSERT INTO notifications (kind, national_id, subject, event)
SELECT 'certificate', i.national_id, i.uvci, CASE WHEN i.superseding THEN 'updated' ELSE 'issued' END
FROM unnest($1::text[], $2::text[], $3::bool[]) AS i(national_id, uvci, superseding)
ORDER BY i.national_id
ON CONFLICT (national_id) WHERE kind = 'certificate' AND sent_at IS NULL
DO UPDATE SET subject = EXCLUDED.subject
"""

_CORRECTION = """
INSERT INTO notifications (kind, national_id, subject, event)
SELECT 'correction', national_id, request_id, $2 FROM correction_requests WHERE request_id = $1
ON CONFLICT (subject, event) WHERE kind = 'correction' DO NOTHING
"""

# The phone on record when it is sent: the person's (persons.phone, kept by every persisted record that has
# one); for a decision, the phone on record its code went to, else the person's. Never a phone typed into a
# request.
_CLAIM = """
WITH due AS (
    SELECT id FROM notifications WHERE sent_at IS NULL AND due_at <= now() AND leased_until <= now()
    ORDER BY due_at LIMIT $1 FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE notifications n SET leased_until = now() + $2::interval, attempts = n.attempts + 1
    FROM due WHERE n.id = due.id
    RETURNING n.id, n.kind, n.national_id, n.subject, n.event, n.attempts
)
SELECT c.id, c.kind, c.subject, c.event, c.attempts,
       CASE WHEN c.kind = 'correction' THEN coalesce(r.otp_phone, p.phone) ELSE p.phone END AS phone
FROM claimed c
LEFT JOIN persons p ON p.national_id = c.national_id
LEFT JOIN correction_requests r ON c.kind = 'correction' AND r.request_id = c.subject
ORDER BY c.id
"""

# Marking a round: its rows are locked in the order the issuers' upsert takes them (by national id), so that
# marking and an issuer's transaction only ever wait on each other, never deadlock. A row whose subject a
# newer certificate replaced while its SMS was out is not marked: it stays waiting, due at once, for the
# current certificate, as an update (the person heard of the one before). Locked, marked and put back in one
# statement.
#
# Whether a row is still waiting, and for which subject, is read from the locked rows (storage.locking): as a
# condition of the scan, `sent_at IS NULL` let the planner read the due index for the round's ids. With
# statistics taken while everything was sent and a burst after, it scanned the whole due index once for the
# lock and again for every row: 1.36 s for a round of 100 of a backlog of 150,000, against 1.4 ms this way.
def _locked(columns: str, rows: str) -> str:
    return locked_rows("notifications", key="id", state="t.kind, t.subject, t.sent_at", order="t.national_id, t.id",
                       rows=rows, columns=columns)


_SENT = _locked("i.subject AS told, i.outcome",
                "unnest($1::bigint[], $2::text[], $3::text[]) AS i(id, subject, outcome)") + """,
replaced AS (
    UPDATE notifications n SET due_at = now(), leased_until = '-infinity', attempts = 0, event = 'updated'
    FROM l WHERE n.id = l.id AND l.sent_at IS NULL AND l.kind = 'certificate' AND l.subject <> l.told
)
UPDATE notifications n SET sent_at = now(), outcome = l.outcome
FROM l WHERE n.id = l.id AND l.sent_at IS NULL AND l.subject = l.told
RETURNING n.id
"""

# A failed round: each row due again after its wait, in seconds.
_FAILED = _locked("i.wait", "unnest($1::bigint[], $2::float8[]) AS i(id, wait)") + """
UPDATE notifications n SET due_at = now() + l.wait * interval '1 second', leased_until = '-infinity'
FROM l WHERE n.id = l.id AND l.sent_at IS NULL
"""

CORRECTION_EVENTS = ("approved", "rejected")  # the decisions a citizen is told of (a deferral is not one)


class Notification(msgspec.Struct, frozen=True):  # a Struct: a notifier makes thousands a second
    id: int
    kind: str  # certificate, correction
    subject: str  # the UVCI, or the correction request's id
    event: str  # issued, updated, approved, rejected
    attempts: int  # this one included
    phone: str | None  # the phone on record; None: nobody to tell


async def certificates_stored(conn: asyncpg.Connection, stored: list[tuple[str, str, bool]]) -> None:
    """In the transaction that stores them: (national id, UVCI, whether it supersedes one) per certificate."""
    if stored:
        await conn.execute(_CERTIFICATES, [s[0] for s in stored], [s[1] for s in stored], [s[2] for s in stored])


async def correction_decided(conn: asyncpg.Connection, request_id: str, status: str) -> None:
    """In the transaction that records the decision: the citizen is told of an approval or a rejection."""
    if status in CORRECTION_EVENTS:
        await conn.execute(_CORRECTION, request_id, status)


async def claim(conn: asyncpg.Connection, *, limit: int, lease: float) -> list[Notification]:
    """Take up to `limit` due notifications for `lease` seconds: another notifier skips them until then, and
    takes them again after it if this one never says how they went."""
    rows = await conn.fetch(_CLAIM, limit, dt.timedelta(seconds=lease))
    return [Notification(**dict(r)) for r in rows]


async def sent(conn: asyncpg.Connection, done: list[tuple[Notification, str]]) -> int:
    """Mark these sent, each with its outcome (`sent`, or `no_phone`: nobody to send it to); how many. One whose
    subject a newer certificate replaced meanwhile stays waiting, due at once, for the current certificate (as
    an update: the person heard of the one before)."""
    if not done:
        return 0
    rows = await conn.fetch(_SENT, [n.id for n, _ in done], [n.subject for n, _ in done],
                            [outcome for _, outcome in done])
    return len(rows)


async def failed(conn: asyncpg.Connection, retries: list[tuple[Notification, float]]) -> None:
    """The gateway failed these: each due again after its wait in seconds (the notifier's backoff)."""
    if not retries:
        return
    await conn.execute(_FAILED, [n.id for n, _ in retries], [wait for _, wait in retries])


async def backlog(conn: asyncpg.Connection) -> int:
    """Notifications not sent yet (due, leased or waiting out a backoff)."""
    return await conn.fetchval("SELECT count(*) FROM notifications WHERE sent_at IS NULL")


async def purge(conn: asyncpg.Connection, *, older_than: float, limit: int = 10_000) -> int:
    """Forget sent notifications older than `older_than` seconds, at most `limit` at a time; how many."""
    rows = await conn.fetch(
        "DELETE FROM notifications WHERE id IN (SELECT id FROM notifications WHERE sent_at < now() - $1::interval"
        " ORDER BY sent_at LIMIT $2) RETURNING id", dt.timedelta(seconds=older_than), limit)
    return len(rows)
