"""Corrections: a site replaces or withdraws one of its persisted records, versioned.

A correction travels the same stream as the batches and is applied by the same workers, each in a
transaction of its own (they are rare beside batches):

- its receipt is claimed first, so a redelivered correction changes nothing;
- the record's key is locked and the correction applies only if its version (its place in the
  site's shard) is newer than the record's: two corrections applied by two workers in either order
  end in the later one. An older one is kept in the record's history, marked not applied;
- the record's original is copied into its history at its first correction (a record never
  corrected costs nothing there), and every version names who asked and when;
- the old version leaves the statistics and its person's day (which passes to a probable duplicate
  of it, if one was recorded), the new one enters them, and the intake tally says what moved where,
  all in the same transaction: statistics cannot drift, and reconciliation can account for it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections import defaultdict

import asyncpg

from vaxline.entries import DOSE_FIELDS, Correction
from vaxline.sequence import VIETNAM

from .doses import PERSON_UPSERT, STAGING_COLUMNS, BatchCount, Receipt, claim

_DOSE_COLUMNS = ", ".join(DOSE_FIELDS)
_VERSION_FIELDS = tuple(f for f in DOSE_FIELDS if f != "record_id")  # the record id is the version's key
_VERSION_COLUMNS = ", ".join(_VERSION_FIELDS)

_KEEP_ORIGINAL = f"""
INSERT INTO dose_versions (site_id, record_id, version, op, {_VERSION_COLUMNS}, batch_id, changed_by, received_at, applied)
SELECT d.site_id, d.record_id, '', 'insert', {", ".join("d." + f for f in _VERSION_FIELDS)}, d.batch_id,
       'site:' || s.code, d.received_at, true
FROM doses d JOIN sites s USING (site_id)
WHERE d.site_id = $1 AND d.record_id = $2 AND d.national_id = $3 AND d.administered_at = $4
ON CONFLICT DO NOTHING
"""

_KEEP_VERSION = f"""
INSERT INTO dose_versions (site_id, record_id, version, op, {_VERSION_COLUMNS}, batch_id, changed_by, received_at, applied)
VALUES ($1, $2, $3, $4, {", ".join(f"${i}" for i in range(5, 5 + len(_VERSION_FIELDS)))},
        ${5 + len(_VERSION_FIELDS)}, ${6 + len(_VERSION_FIELDS)}, ${7 + len(_VERSION_FIELDS)}, ${8 + len(_VERSION_FIELDS)})
ON CONFLICT DO NOTHING
"""

_STATS_ADD = """
INSERT INTO dose_stats (day, site_id, vaccine, dose_number, doses) VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (day, site_id, vaccine, dose_number) DO UPDATE SET doses = dose_stats.doses + EXCLUDED.doses
"""

_INSERT_DOSE = f"""
INSERT INTO doses ({", ".join(STAGING_COLUMNS)}, counted)
VALUES ({", ".join(f"${i}" for i in range(1, len(STAGING_COLUMNS) + 2))})
"""

_UPSERT_PERSON = f"""
INSERT INTO persons (national_id, full_name, birth_date, sex, phone, first_administered_at, last_administered_at)
VALUES ($1, $2, $3, $4, $5, $6, $6)
{PERSON_UPSERT}
"""

_TALLY = {
    column: f"INSERT INTO intake (site_id, day, {column}) VALUES ($1, $2, $3)"
            f" ON CONFLICT (site_id, day) DO UPDATE SET {column} = intake.{column} + EXCLUDED.{column}"
    for column in ("withdrawn", "restored", "moved_in", "moved_out")
}


@dataclasses.dataclass(frozen=True, slots=True)
class Applied:
    receipt: Receipt
    persons: frozenset[str]  # whose history changed: their certificates are rebuilt


def vietnam_day(at: dt.datetime) -> dt.date:
    return at.astimezone(VIETNAM).date()


def _day_bounds(day: dt.date) -> tuple[dt.datetime, dt.datetime]:
    start = dt.datetime(day.year, day.month, day.day, tzinfo=VIETNAM)
    return start, start + dt.timedelta(days=1)


async def apply(conn: asyncpg.Connection, *, batch_id: str, site_id: int, version: str,
                received_at: dt.datetime, correction: Correction) -> Applied | None:
    """Apply one correction; None when another delivery of it was applied already.

    Locks are taken in the order a batch's transaction takes them (the record's key, its row, the
    persons' days, statistics, tallies, persons; each sorted), so the two only wait, never deadlock."""
    async with conn.transaction():
        if not await claim(conn, [BatchCount(batch_id, site_id, 1, received_at)], kind=correction.op):
            return None
        new = dict(zip(DOSE_FIELDS, correction.dose)) if correction.dose is not None else None
        key = await conn.fetchrow(
            "SELECT administered_at, national_id, version, withdrawn FROM dose_keys"
            " WHERE site_id = $1 AND record_id = $2 FOR UPDATE", site_id, correction.record_id)
        if key is None or key["version"] >= version:  # unknown record, or a newer version came first
            await _keep_version(conn, site_id, correction, version, new, batch_id, received_at, applied=False)
            await conn.execute(_RECEIPT, batch_id, 0, [])
            return Applied(Receipt(batch_id, site_id, 1, 0, 1), frozenset())

        current = None if key["withdrawn"] else await conn.fetchrow(
            "SELECT * FROM doses WHERE site_id = $1 AND record_id = $2 AND national_id = $3 AND administered_at = $4"
            " FOR UPDATE", site_id, correction.record_id, key["national_id"], key["administered_at"])
        if current is not None:
            await conn.execute(_KEEP_ORIGINAL, site_id, correction.record_id, key["national_id"],
                               key["administered_at"])
        persons = await _move(conn, site_id, correction, current, new, batch_id, received_at)
        if new is not None:
            await conn.execute(
                "UPDATE dose_keys SET administered_at = $3, national_id = $4, version = $5, withdrawn = false"
                " WHERE site_id = $1 AND record_id = $2",
                site_id, correction.record_id, new["administered_at"], new["national_id"], version)
        else:
            await conn.execute("UPDATE dose_keys SET version = $3, withdrawn = true WHERE site_id = $1 AND record_id = $2",
                               site_id, correction.record_id, version)
        await _keep_version(conn, site_id, correction, version, new, batch_id, received_at, applied=True)
        await conn.execute(_RECEIPT, batch_id, 1, sorted(persons))
    return Applied(Receipt(batch_id, site_id, 1, 1, 0), frozenset(persons))


# The receipt of a correction: whether it applied, and whose history it changed (read again by
# persisted_persons, so a redelivered correction still hands its persons to the certifiers).
_RECEIPT = "UPDATE batches SET inserted = $2, duplicates = 1 - $2, persons = $3::text[] WHERE batch_id = $1"


async def persisted_persons(conn: asyncpg.Connection, batch_ids: list[str]) -> dict[str, str]:
    """The persons the persisted corrections among these batches changed -> the correction's batch id."""
    rows = await conn.fetch("SELECT batch_id, persons FROM batches WHERE batch_id = ANY($1::text[])"
                            " AND persons IS NOT NULL", batch_ids)
    return {nid: r["batch_id"] for r in rows for nid in r["persons"]}


async def _move(conn: asyncpg.Connection, site_id: int, correction: Correction, current: asyncpg.Record | None,
                new: dict | None, batch_id: str, received_at: dt.datetime) -> set[str]:
    """Take the current version out (doses, statistics, its day) and put the new one in; whose history changed."""
    stats: dict[tuple, int] = defaultdict(int)  # (day, site_id, vaccine, dose_number) -> change
    tally: dict[tuple, int] = defaultdict(int)  # (site_id, day, column) -> change
    old_day = vietnam_day(current["administered_at"]) if current is not None else None
    new_day = vietnam_day(new["administered_at"]) if new is not None else None
    held = current is not None and current["counted"]
    keeps_day = held and new is not None and (new["national_id"], new_day) == (current["national_id"], old_day)
    days = {(new["national_id"], new_day)} if new is not None else set()
    if held:
        days.add((current["national_id"], old_day))
    if days:
        ordered = sorted(days)
        await conn.execute(_LOCK_DAYS, [nid for nid, _ in ordered], [day for _, day in ordered])

    persons: set[str] = set()
    if current is not None:
        persons.add(current["national_id"])
        await conn.execute(
            "DELETE FROM doses WHERE site_id = $1 AND record_id = $2 AND national_id = $3 AND administered_at = $4",
            site_id, correction.record_id, current["national_id"], current["administered_at"])
        tally[(site_id, old_day, "moved_out" if new is not None else "withdrawn")] += 1
        if held:
            stats[(old_day, site_id, current["vaccine"], current["dose_number"])] -= 1
            if not keeps_day:  # the same person on the same day keeps it; otherwise it passes to a duplicate
                if heir := await _release_day(conn, current["national_id"], old_day):
                    stats[(old_day, heir["site_id"], heir["vaccine"], heir["dose_number"])] += 1
    if new is not None:
        counted = keeps_day or bool(await conn.fetchval(
            "INSERT INTO person_days (national_id, day, site_id, record_id) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT DO NOTHING RETURNING true", new["national_id"], new_day, site_id, correction.record_id))
        await conn.execute(_INSERT_DOSE, site_id, *correction.dose, batch_id, received_at, counted)
        if counted:
            stats[(new_day, site_id, new["vaccine"], new["dose_number"])] += 1
        tally[(site_id, new_day, "moved_in" if current is not None else "restored")] += 1
        persons.add(new["national_id"])
    for (day, site, vaccine, dose_number), change in sorted(stats.items()):
        if change:
            await conn.execute(_STATS_ADD, day, site, vaccine, dose_number, change)
    for (site, day, column), change in sorted(tally.items()):
        await conn.execute(_TALLY[column], site, day, change)
    for nid in sorted(persons):  # a new or changed dose makes each of them due for review
        if new is not None and nid == new["national_id"]:
            await conn.execute(_UPSERT_PERSON, nid, new["full_name"], new["birth_date"], new["sex"], new["phone"],
                               new["administered_at"])
        # A correction can move the newest record earlier or take it away: details and range are read
        # again from what remains (a person left with no record keeps them, and is only made due).
        if await conn.fetchval(_RECOMPUTE_PERSON, nid) is None:
            await conn.execute(_DUE, nid)
    return persons


_LOCK_DAYS = """
SELECT 1 FROM person_days p JOIN unnest($1::text[], $2::date[]) AS k(national_id, day) USING (national_id, day)
ORDER BY p.national_id, p.day FOR UPDATE OF p
"""

_DUE = "UPDATE persons SET review_due = true, review_seq = review_seq + 1 WHERE national_id = $1"

_RECOMPUTE_PERSON = """
UPDATE persons p SET full_name = d.full_name, birth_date = d.birth_date, sex = coalesce(d.sex, p.sex),
    phone = coalesce(d.phone, p.phone), first_administered_at = r.first, last_administered_at = r.last,
    review_due = true, review_seq = p.review_seq + 1, updated_at = now()
FROM (SELECT min(administered_at) AS first, max(administered_at) AS last FROM doses WHERE national_id = $1) r,
     LATERAL (SELECT full_name, birth_date, sex, phone FROM doses WHERE national_id = $1
              ORDER BY administered_at DESC, persisted_at DESC LIMIT 1) d
WHERE p.national_id = $1
RETURNING true
"""


async def _release_day(conn: asyncpg.Connection, national_id: str, day: dt.date) -> asyncpg.Record | None:
    """The counted record of this person's day is gone: the earliest-persisted duplicate, if any, takes
    its place (returned, for the statistics)."""
    await conn.execute("DELETE FROM person_days WHERE national_id = $1 AND day = $2", national_id, day)
    start, end = _day_bounds(day)
    heir = await conn.fetchrow(
        "SELECT site_id, record_id, vaccine, dose_number, administered_at FROM doses"
        " WHERE national_id = $1 AND administered_at >= $2 AND administered_at < $3 AND NOT counted"
        " ORDER BY persisted_at, administered_at, site_id, record_id LIMIT 1 FOR UPDATE",
        national_id, start, end)
    if heir is None:
        return None
    await conn.execute(
        "UPDATE doses SET counted = true WHERE national_id = $1 AND administered_at = $2 AND site_id = $3"
        " AND record_id = $4", national_id, heir["administered_at"], heir["site_id"], heir["record_id"])
    await conn.execute("INSERT INTO person_days (national_id, day, site_id, record_id) VALUES ($1, $2, $3, $4)",
                       national_id, day, heir["site_id"], heir["record_id"])
    return heir


async def _keep_version(conn: asyncpg.Connection, site_id: int, correction: Correction, version: str,
                        new: dict | None, batch_id: str, received_at: dt.datetime, *, applied: bool) -> None:
    fields = [new[f] for f in _VERSION_FIELDS] if new is not None else [None] * len(_VERSION_FIELDS)
    await conn.execute(_KEEP_VERSION, site_id, correction.record_id, version, correction.op, *fields, batch_id,
                       correction.changed_by, received_at, applied)


async def record_owner(conn: asyncpg.Connection, site_id: int, record_id: str) -> str | None:
    """'own' (this site's persisted record), 'withdrawn' (this site's, withdrawn), 'other' (only another
    site has a record with this id) or None (no persisted record has it)."""
    row = await conn.fetchrow(
        "SELECT bool_or(site_id = $1) AS own, bool_or(site_id = $1 AND withdrawn) AS withdrawn, count(*) AS n"
        " FROM dose_keys WHERE record_id = $2", site_id, record_id)
    if not row["n"]:
        return None
    if row["own"]:
        return "withdrawn" if row["withdrawn"] else "own"
    return "other"


async def history(conn: asyncpg.Connection, site_id: int, record_id: str) -> tuple[asyncpg.Record | None, list]:
    """A record's current version (None when withdrawn or unknown) and its earlier versions, oldest first."""
    key = await conn.fetchrow("SELECT administered_at, national_id, version, withdrawn FROM dose_keys"
                              " WHERE site_id = $1 AND record_id = $2", site_id, record_id)
    if key is None:
        return None, []
    current = None if key["withdrawn"] else await conn.fetchrow(
        f"SELECT {_DOSE_COLUMNS}, counted, batch_id, received_at FROM doses"
        " WHERE site_id = $1 AND record_id = $2 AND national_id = $3 AND administered_at = $4",
        site_id, record_id, key["national_id"], key["administered_at"])
    versions = await conn.fetch(
        f"SELECT version, op, {_VERSION_COLUMNS}, batch_id, changed_by, received_at, applied FROM dose_versions"
        " WHERE site_id = $1 AND record_id = $2 ORDER BY version", site_id, record_id)
    return current, list(versions)
