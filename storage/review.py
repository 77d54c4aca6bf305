"""The review list in Postgres: persons due for review, their flags, and listing them.

A persisted or corrected dose, or a registry import, marks its person `review_due` and bumps their
`review_seq`; a reviewer takes due persons a chunk at a time, reads their whole history with each
record's registry comparison, replaces their flags, and clears `review_due` (setting the registry
status) only where `review_seq` is still what it read: a dose persisted meanwhile leaves the person
due, so no change is ever left unreviewed. The reviewer holds no person's row while it works (persisting
never waits for it); an advisory lock per person keeps two reviewers off the same one.
"""

from __future__ import annotations

import dataclasses

import asyncpg

from vaxline.review import Flag, RecordedDose, flags

from .certificates import doses_lateral

# pg_try_advisory_xact_lock: one reviewer per person at a time, without blocking anyone; a person's
# lock may be taken a little beyond the LIMIT, and is let go at the end of the transaction.
_DUE = """
SELECT national_id, review_seq FROM persons
WHERE review_due AND pg_try_advisory_xact_lock(hashtextextended('vaxline.review:' || national_id, 0))
LIMIT $1
"""

# As storage.certificates' history: the person's doses by its LATERAL probe into their partitions, and the site
# codes joined once for the whole chunk outside the loop over its persons, not scanned again for each person.
_HISTORY = """
SELECT h.national_id, h.person_status, h.site_id, s.code AS site, h.record_id, h.vaccine, h.dose_number,
       h.administered_at, h.counted, h.birth_date, h.sex, h.record_status
FROM (
    SELECT p.national_id,
           vx_registry_status(p.full_name, p.birth_date, r.full_name, r.birth_date) AS person_status,
           d.site_id, d.record_id, d.vaccine, d.dose_number, d.administered_at, d.counted, d.birth_date, d.sex,
           vx_registry_status(d.full_name, d.birth_date, r.full_name, r.birth_date) AS record_status
    FROM unnest($1::text[]) AS i(national_id)
    JOIN persons p ON p.national_id = i.national_id
    LEFT JOIN registry r ON r.national_id = p.national_id
    """ + doses_lateral("d.site_id, d.record_id, d.vaccine, d.dose_number, d.administered_at, d.counted,"
                        " d.full_name, d.birth_date, d.sex", keep_persons=True) + """
    OFFSET 0
) h
LEFT JOIN sites s ON s.site_id = h.site_id
"""

_WRITE_FLAGS = """
INSERT INTO review_flags (site_id, record_id, flag, national_id, administered_at, detail)
SELECT * FROM unnest($1::int[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::text[])
ON CONFLICT (site_id, record_id, flag) DO UPDATE SET national_id = EXCLUDED.national_id,
    administered_at = EXCLUDED.administered_at, detail = EXCLUDED.detail
"""

_DONE = """
UPDATE persons p SET review_due = false, registry_status = s.status
FROM (SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[]) AS s(national_id, status, seq) ORDER BY 1) s
WHERE p.national_id = s.national_id AND p.review_seq = s.seq
"""


async def review_due(conn: asyncpg.Connection, *, limit: int) -> int:
    """Review up to `limit` due persons; how many were reviewed."""
    async with conn.transaction():
        due = {r["national_id"]: r["review_seq"] for r in await conn.fetch(_DUE, limit)}
        ids = list(due)
        if not ids:
            return 0
        registry_loaded = await conn.fetchval("SELECT EXISTS (SELECT 1 FROM registry)")
        histories: dict[str, list[RecordedDose]] = {nid: [] for nid in ids}
        status: dict[str, str | None] = dict.fromkeys(ids)
        for r in await conn.fetch(_HISTORY, ids):
            nid = r["national_id"]
            status[nid] = r["person_status"] if registry_loaded else None
            if r["record_id"] is not None:
                histories[nid].append(RecordedDose(
                    r["site_id"], r["site"], r["record_id"], r["vaccine"], r["dose_number"], r["administered_at"],
                    r["counted"], r["birth_date"], r["sex"], r["record_status"] if registry_loaded else None))
        found: list[tuple[str, Flag]] = [(nid, f) for nid, doses in histories.items() for f in flags(nid, doses)]
        await conn.execute("DELETE FROM review_flags WHERE national_id = ANY($1::text[])", ids)
        if found:
            await conn.execute(_WRITE_FLAGS, [f.site_id for _, f in found], [f.record_id for _, f in found],
                               [f.flag for _, f in found], [nid for nid, _ in found],
                               [f.administered_at for _, f in found], [f.detail for _, f in found])
        await conn.execute(_DONE, ids, [status[nid] for nid in ids], [due[nid] for nid in ids])
    return len(ids)


async def due_count(conn: asyncpg.Connection) -> int:
    return await conn.fetchval("SELECT count(*) FROM persons WHERE review_due")


@dataclasses.dataclass(frozen=True, slots=True)
class ReviewQuery:
    site_id: int | None = None
    province: int | None = None
    flag: str | None = None
    limit: int = 1000
    offset: int = 0


REVIEW_COLUMNS = ("site", "province", "record_id", "national_id", "administered_at", "flag", "detail", "flagged_at")


async def review_list(conn: asyncpg.Connection, query: ReviewQuery) -> tuple[list[asyncpg.Record], int]:
    """(One page of flagged records, the total), by site, administration time and record."""
    where, args = [], []
    for column, value in (("f.site_id", query.site_id), ("s.province", query.province), ("f.flag", query.flag)):
        if value is not None:
            args.append(value)
            where.append(f"{column} = ${len(args)}")
    condition = f"WHERE {' AND '.join(where)}" if where else ""
    base = f"FROM review_flags f JOIN sites s USING (site_id) {condition}"
    total = await conn.fetchval(f"SELECT count(*) {base}", *args)
    rows = await conn.fetch(
        f"SELECT s.code AS site, s.province, f.record_id, f.national_id, f.administered_at, f.flag, f.detail,"
        f" f.flagged_at {base} ORDER BY s.code, f.administered_at, f.record_id, f.flag"
        f" LIMIT ${len(args) + 1} OFFSET ${len(args) + 2}", *args, query.limit, query.offset)
    return rows, total


async def person(conn: asyncpg.Connection, national_id: str) -> tuple[asyncpg.Record | None, list[asyncpg.Record]]:
    """A person's details with registry status and counts, and their records' flags."""
    row = await conn.fetchrow(
        "SELECT p.national_id, p.full_name, p.birth_date, p.sex, p.registry_status, p.review_due,"
        " (SELECT count(*) FROM doses d WHERE d.national_id = p.national_id) AS records,"
        " (SELECT count(*) FROM person_days pd WHERE pd.national_id = p.national_id) AS counted_doses"
        " FROM persons p WHERE p.national_id = $1", national_id)
    if row is None:
        return None, []
    flagged = await conn.fetch(
        "SELECT s.code AS site, f.record_id, f.flag, f.detail, f.administered_at FROM review_flags f"
        " JOIN sites s USING (site_id) WHERE f.national_id = $1 ORDER BY f.administered_at, f.record_id, f.flag",
        national_id)
    return row, flagged

