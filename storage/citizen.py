"""Citizen correction requests in Postgres: the requests, their evidence, and the append-only audit log.

Every change of a request is written with its audit entry in the same transaction. The one-time code is
stored only as a hash, checked under the request's row lock (so two guesses cannot both pass the attempt
limit), and cleared once used. It goes to a phone on record for the person, never to the phone a request
names. An unconfirmed request carries an expiry (cleared once confirmed or decided); `expire` deletes the
expired ones with their evidence. Each identity has its own room for unconfirmed requests (`room`): a
code's, each province's for checks in person, and one for requests about records that do not exist, so
a flood of one never refuses another. Confirming and asking for a code answer alike whatever the
identity (a request with no phone on record just never matches), and not at all once the request lapsed.
An approval's changes go through the outbox in storage.approvals.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json

import asyncpg
import msgspec

from vaxline.citizen import RequestBody, code_matches

from . import notifications

_COLUMNS = ("request_id, status, kind, national_id, full_name, birth_date, phone, claimed, note, site_id, province,"
            " identity, message, decided_by, decided_at, applied, created_at, submitted_at, updated_at")


def _json(value) -> str | None:
    return None if value is None else msgspec.json.encode(value).decode()


async def audit(conn: asyncpg.Connection, actor: str, action: str, *, request_id: str | None = None,
                site_id: int | None = None, record_id: str | None = None, before=None, after=None) -> None:
    await conn.execute(
        "INSERT INTO audit_log (actor, action, request_id, site_id, record_id, before, after)"
        " VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7::jsonb)",
        actor, action, request_id, site_id, record_id, _json(before), _json(after))


async def audit_of(conn: asyncpg.Connection, request_id: str) -> list[dict]:
    rows = await conn.fetch("SELECT entry_id, at, actor, action, site_id, record_id, before, after FROM audit_log"
                            " WHERE request_id = $1 ORDER BY entry_id", request_id)
    return [{**dict(r), "before": json.loads(r["before"]) if r["before"] else None,
             "after": json.loads(r["after"]) if r["after"] else None} for r in rows]


@dataclasses.dataclass(frozen=True, slots=True)
class Route:
    site_id: int | None  # None: the province's queue
    province: int
    phone: str | None  # the phone on record the code goes to; None: an identity check in person
    on_record: bool = True  # the person has records
    kind: str = "missing_dose"

    @property
    def identity(self) -> str:
        """code (a phone on record), in_person (none: checked at the province), or no_record (a request
        about existing records for a national ID that has none: nobody is to check it)."""
        if self.phone is not None:
            return "code"
        return "in_person" if self.on_record or self.kind == "missing_dose" else "no_record"


async def phone_on_record(conn: asyncpg.Connection, national_id: str) -> str | None:
    """The phone a site recorded for the person on their latest record that has one, or None."""
    return await conn.fetchval("SELECT phone FROM doses WHERE national_id = $1 AND phone IS NOT NULL"
                               " ORDER BY administered_at DESC LIMIT 1", national_id)


async def route(conn: asyncpg.Connection, body: RequestBody, provinces: set[int]) -> Route | None:
    """Where a request goes, and the phone its code goes to. None: no province known.

    - a missing dose at a registered site: that site (its approval adds the site's own record);
    - wrong dose details at a registered site that holds a record of the person: that site;
    - wrong personal details of a person whose records are all at one site: that site;
    - anything else (an unregistered place, a site without a record of the person, records at several
      sites, a person with no phone on record): the province's queue, decided by the operator. The
      province is the named site's, else `dose.province`, else that of the person's latest record, else
      the CCCD's."""
    claimed = body.dose
    named = None
    if claimed is not None and claimed.site is not None:
        named = await conn.fetchrow("SELECT site_id, province FROM sites WHERE code = $1", claimed.site)
    held = await conn.fetch(
        "SELECT d.site_id, s.province, max(d.administered_at) AS latest FROM doses d JOIN sites s USING (site_id)"
        " WHERE d.national_id = $1 GROUP BY d.site_id, s.province ORDER BY latest DESC", body.national_id)
    phone = await phone_on_record(conn, body.national_id)
    site_id = None
    if body.kind == "wrong_personal_details":
        site_id = held[0]["site_id"] if len(held) == 1 else None
    elif named is not None and (body.kind == "missing_dose" or named["site_id"] in {h["site_id"] for h in held}):
        site_id = named["site_id"]
    for province in (named["province"] if named else None, claimed.province if claimed else None,
                     held[0]["province"] if held else None,
                     int(body.national_id[:3]) if len(body.national_id) == 12 else None):
        if province in provinces:
            return Route(site_id if phone is not None else None, province, phone, bool(held), body.kind)
    return None


async def room_load(conn: asyncpg.Connection, route: Route) -> tuple[int, int]:
    """How many unconfirmed requests share `route`'s room, and the bytes of their evidence: what hostile
    filing could pile up there, capped by the settings. Rooms: the code requests', each province's in-person
    requests', the no_record requests'."""
    row = await conn.fetchrow(
        "SELECT count(*) AS n, coalesce(sum(evidence_bytes), 0) AS size FROM correction_requests"
        " WHERE expires_at IS NOT NULL AND identity = $1 AND ($2::int IS NULL OR province = $2)",
        route.identity, route.province if route.identity == "in_person" else None)
    return row["n"], row["size"]


async def create(conn: asyncpg.Connection, *, request_id: str, body: RequestBody, route: Route,
                 code_hash: bytes | None, code_expires_at: dt.datetime, expires_at: dt.datetime,
                 confirm_by: dt.datetime, evidence: list[tuple[str, bytes, bytes]]) -> None:
    """A new request, kept until `expires_at` unless confirmed or decided: awaiting its code, or, without a
    phone on record, submitted to the province's queue for an identity check in person; a no_record request
    awaits nothing (pending, in no queue) until it expires. Evidence is (content type, sha256, bytes)."""
    status = "submitted" if route.identity == "in_person" else "pending_otp"
    size = sum(len(content) for _, _, content in evidence)
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO correction_requests (request_id, status, kind, national_id, full_name, birth_date, phone,"
            " claimed, note, site_id, province, otp_hash, otp_expires_at, identity, otp_phone, evidence_bytes,"
            " expires_at, confirm_by, submitted_at)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18,"
            "  CASE WHEN $2 = 'submitted' THEN now() END)",
            request_id, status, body.kind, body.national_id, body.full_name, body.birth_date, body.phone,
            _json(body.dose or {}), body.note, route.site_id, route.province, code_hash, code_expires_at,
            route.identity, route.phone, size, expires_at, confirm_by)
        for n, (content_type, digest, content) in enumerate(evidence, start=1):
            await conn.execute("INSERT INTO correction_evidence (request_id, n, content_type, sha256, content)"
                               " VALUES ($1, $2, $3, $4, $5)", request_id, n, content_type, digest, content)
        await audit(conn, "citizen", "created", request_id=request_id, site_id=route.site_id,
                    after={"status": status, "kind": body.kind, "claimed": body.dose, "identity": route.identity,
                           "routed_to": {"site_id": route.site_id, "province": route.province},
                           "evidence": [{"n": n, "type": t, "sha256": d.hex()}
                                        for n, (t, d, _) in enumerate(evidence, start=1)]})


async def expire(conn: asyncpg.Connection, now: dt.datetime, *, limit: int = 500) -> list[asyncpg.Record]:
    """Delete up to `limit` unconfirmed requests past their expiry, with their evidence, each with an audit
    entry; what was deleted (request id, status, evidence bytes). Rows another process holds are skipped."""
    async with conn.transaction():
        gone = await conn.fetch(
            "DELETE FROM correction_requests WHERE request_id IN ("
            " SELECT request_id FROM correction_requests WHERE expires_at IS NOT NULL AND expires_at <= $1"
            " ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED)"
            " RETURNING request_id, status, identity, evidence_bytes", now, limit)
        for row in gone:
            await audit(conn, "retention", "expired", request_id=row["request_id"],
                        before={"status": row["status"], "identity": row["identity"]},
                        after={"deleted": True, "evidence_bytes": row["evidence_bytes"]})
    return gone


_AWAITING = ("SELECT status, otp_hash, otp_expires_at, otp_attempts, otp_sends, otp_phone, expires_at, confirm_by"
             " FROM correction_requests WHERE request_id = $1 FOR UPDATE")


def _lapsed(row, now: dt.datetime) -> bool:
    """An unconfirmed request past its expiry or its `confirm_by` (an in-person one is kept longer for its
    check, yet takes codes no longer than one awaiting a code): as good as gone."""
    return row["expires_at"] is not None and (row["expires_at"] <= now or (row["confirm_by"] or now) <= now)


async def confirm(conn: asyncpg.Connection, request_id: str, code: str, *, max_attempts: int, now: dt.datetime) -> str | None:
    """Check a code: 'submitted', 'wrong', 'locked' (too many wrong codes), 'expired', 'used' (confirmed or
    decided already), or None for an unknown or lapsed request. A request no code was sent for (no phone on
    record) answers as one whose code is wrong, so the answers do not tell the identities apart."""
    async with conn.transaction():
        row = await conn.fetchrow(_AWAITING, request_id)
        if row is None or _lapsed(row, now):
            return None
        if row["expires_at"] is None:
            return "used"
        if row["otp_attempts"] >= max_attempts:
            return "locked"
        if row["otp_expires_at"] is None or row["otp_expires_at"] <= now:
            return "expired"
        if not code_matches(request_id, code, row["otp_hash"]):
            await conn.execute("UPDATE correction_requests SET otp_attempts = otp_attempts + 1, updated_at = now()"
                               " WHERE request_id = $1", request_id)
            await audit(conn, "citizen", "wrong_code", request_id=request_id,
                        after={"attempts": row["otp_attempts"] + 1})
            return "locked" if row["otp_attempts"] + 1 >= max_attempts else "wrong"
        await conn.execute(
            "UPDATE correction_requests SET status = 'submitted', otp_hash = NULL, otp_expires_at = NULL,"
            " expires_at = NULL, submitted_at = now(), updated_at = now() WHERE request_id = $1", request_id)
        await audit(conn, "citizen", "confirmed", request_id=request_id, before={"status": "pending_otp"},
                    after={"status": "submitted"})
        return "submitted"


async def resend(conn: asyncpg.Connection, request_id: str, code_hash: bytes, expires_at: dt.datetime, *,
                 max_sends: int, now: dt.datetime) -> tuple[str | None, str | None, dt.datetime]:
    """A new code replaces the old (attempts start again): ('sent', the phone on record it goes to, or None
    when there is none: nothing is sent, and it is answered alike), or ('used' | 'exhausted' | None for an
    unknown or lapsed request, None). The code never outlives the request; its expiry is the third value."""
    async with conn.transaction():
        row = await conn.fetchrow(_AWAITING, request_id)
        if row is None or _lapsed(row, now):
            return None, None, expires_at
        if row["expires_at"] is None:
            return "used", None, expires_at
        if row["otp_sends"] >= max_sends:
            return "exhausted", None, expires_at
        expires_at = min(expires_at, row["expires_at"], row["confirm_by"] or expires_at)
        await conn.execute(
            "UPDATE correction_requests SET otp_hash = $2, otp_expires_at = $3, otp_attempts = 0,"
            " otp_sends = otp_sends + 1, updated_at = now() WHERE request_id = $1", request_id,
            code_hash if row["otp_phone"] is not None else None, expires_at)
        await audit(conn, "citizen", "code_resent", request_id=request_id, after={"sends": row["otp_sends"] + 1})
        return "sent", row["otp_phone"], expires_at


async def get(conn: asyncpg.Connection, request_id: str, *, lock: bool = False) -> asyncpg.Record | None:
    return await conn.fetchrow(f"SELECT {_COLUMNS} FROM correction_requests WHERE request_id = $1"
                               + (" FOR UPDATE" if lock else ""), request_id)


async def evidence(conn: asyncpg.Connection, request_id: str, n: int | None = None) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT n, content_type, sha256, length(content) AS size" + (", content" if n is not None else "")
        + " FROM correction_evidence WHERE request_id = $1" + (" AND n = $2" if n is not None else "")
        + " ORDER BY n", request_id, *([n] if n is not None else []))


async def listing(conn: asyncpg.Connection, *, site_id: int | None, province: int | None, status: str | None,
                  limit: int, offset: int) -> tuple[list[asyncpg.Record], int]:
    """A queue: a site's requests, a province's (its sites' and its own queue), or all; oldest first."""
    where, args = [], []
    for column, value in (("r.site_id", site_id), ("r.province", province), ("r.status", status)):
        if value is not None:
            args.append(value)
            where.append(f"{column} = ${len(args)}")
    if status is None:
        where.append("r.status <> 'pending_otp'")  # unconfirmed requests are nobody's work yet
    condition = " AND ".join(where) or "true"
    total = await conn.fetchval(f"SELECT count(*) FROM correction_requests r WHERE {condition}", *args)
    rows = await conn.fetch(
        f"SELECT r.request_id, r.status, r.kind, r.national_id, r.full_name, r.birth_date, r.claimed, r.note,"
        f" s.code AS site, r.province, r.identity, r.message, r.decided_by, r.decided_at, r.submitted_at"
        f" FROM correction_requests r LEFT JOIN sites s USING (site_id) WHERE {condition}"
        f" ORDER BY r.submitted_at NULLS LAST, r.request_id LIMIT ${len(args) + 1} OFFSET ${len(args) + 2}",
        *args, limit, offset)
    return rows, total


async def decide(conn: asyncpg.Connection, request_id: str, *, status: str, message: str, actor: str,
                 applied: list[dict] | None, before_status: str) -> None:
    """Record a decision and its audit entry, inside the caller's transaction (the request row locked); a
    decided request no longer expires. `applied` is what an approval is to put through the stream (each
    change is audited as it enters it: storage.approvals)."""
    await conn.execute(
        "UPDATE correction_requests SET status = $2, message = $3, decided_by = $4, decided_at = now(),"
        " applied = $5::jsonb, expires_at = NULL, updated_at = now() WHERE request_id = $1",
        request_id, status, message, actor, _json(applied))
    await audit(conn, actor, f"decision:{status}", request_id=request_id, before={"status": before_status},
                after={"status": status, "message": message, **({"changes": len(applied)} if applied else {})})
    await notifications.correction_decided(conn, request_id, status)  # an SMS with the link, in this transaction


async def person_records(conn: asyncpg.Connection, national_id: str, *, site_id: int | None = None
                         ) -> list[asyncpg.Record]:
    """The person's current records (of one site, if given), oldest first, with each record's site code."""
    return await conn.fetch(
        "SELECT d.site_id, s.code AS site, d.record_id, d.national_id, d.full_name, d.birth_date, d.sex, d.phone,"
        " d.vaccine, d.lot, d.dose_number, d.administered_at FROM doses d JOIN sites s USING (site_id)"
        " WHERE d.national_id = $1 AND ($2::int IS NULL OR d.site_id = $2) ORDER BY d.administered_at, d.record_id",
        national_id, site_id)


async def record(conn: asyncpg.Connection, site_id: int, record_id: str) -> asyncpg.Record | None:
    """A site's current record (not withdrawn), by its record id."""
    return await conn.fetchrow(
        "SELECT d.site_id, s.code AS site, d.record_id, d.national_id, d.full_name, d.birth_date, d.sex, d.phone,"
        " d.vaccine, d.lot, d.dose_number, d.administered_at"
        " FROM dose_keys k JOIN doses d ON d.site_id = k.site_id AND d.record_id = k.record_id"
        "  AND d.national_id = k.national_id AND d.administered_at = k.administered_at"
        " JOIN sites s ON s.site_id = d.site_id"
        " WHERE k.site_id = $1 AND k.record_id = $2 AND NOT k.withdrawn", site_id, record_id)
