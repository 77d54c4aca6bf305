"""Persisting gathered doses, and reading them back.

`persist` is the one transaction of the pipeline: COPY into a per-connection
staging table, claim the idempotency keys, insert the new doses into the
partitioned table, upsert their persons and write the batch receipts. Either
all of it commits or none of it does; redelivery then finds the keys taken
and the receipts written, so at-least-once delivery has an exactly-once
effect. Rows are inserted in key order so that two workers meeting on the
same keys lock them in the same order.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

import asyncpg

from vaxline.entries import DOSE_FIELDS, batch_id, decoded

# The order of a row built by workers.rows: the dose's fields as the stream carries them.
STAGING_COLUMNS = ("site_id", *DOSE_FIELDS, "batch_id", "received_at")
_COLUMN_LIST = ", ".join(STAGING_COLUMNS)
_BATCH_ID = STAGING_COLUMNS.index("batch_id")

CREATE_STAGING = f"""
CREATE TEMP TABLE IF NOT EXISTS dose_staging ON COMMIT DELETE ROWS AS
SELECT {_COLUMN_LIST} FROM doses WITH NO DATA
"""

# A person's details come from their newest dose, so a back-entered old record never overwrites a newer
# name, whatever order workers persist them in; any new or changed dose makes them due for review.
PERSON_UPSERT = """ON CONFLICT (national_id) DO UPDATE SET
        full_name = CASE WHEN EXCLUDED.last_administered_at >= persons.last_administered_at THEN EXCLUDED.full_name ELSE persons.full_name END,
        birth_date = CASE WHEN EXCLUDED.last_administered_at >= persons.last_administered_at THEN EXCLUDED.birth_date ELSE persons.birth_date END,
        sex = CASE WHEN EXCLUDED.last_administered_at >= persons.last_administered_at THEN COALESCE(EXCLUDED.sex, persons.sex) ELSE persons.sex END,
        phone = CASE WHEN EXCLUDED.last_administered_at >= persons.last_administered_at THEN COALESCE(EXCLUDED.phone, persons.phone) ELSE persons.phone END,
        first_administered_at = least(persons.first_administered_at, EXCLUDED.first_administered_at),
        last_administered_at = greatest(persons.last_administered_at, EXCLUDED.last_administered_at),
        review_due = true,
        review_seq = persons.review_seq + 1,
        updated_at = now()"""

_INSERT = f"""
WITH new_keys AS (
    INSERT INTO dose_keys (site_id, record_id, administered_at, national_id)
    SELECT site_id, record_id, administered_at, national_id FROM dose_staging ORDER BY site_id, record_id
    ON CONFLICT DO NOTHING
    RETURNING site_id, record_id
), new_doses AS (
    SELECT s.*, vx_day(s.administered_at) AS day FROM dose_staging s JOIN new_keys k USING (site_id, record_id)
), days AS (
    -- The first record of a person on a day claims it; a second one (two sites, or the hospital and the
    -- district entering the same dose) is stored but not counted: a probable duplicate.
    -- A day held already is locked (DO UPDATE .. WHERE false updates nothing but locks the row), so a
    -- correction cannot hand it on meanwhile without seeing this transaction's record as a candidate.
    INSERT INTO person_days (national_id, day, site_id, record_id)
    SELECT DISTINCT ON (national_id, day) national_id, day, site_id, record_id FROM new_doses
    ORDER BY national_id, day, administered_at, site_id, record_id
    ON CONFLICT (national_id, day) DO UPDATE SET day = EXCLUDED.day WHERE false
    RETURNING site_id, record_id
), inserted AS (
    INSERT INTO doses ({_COLUMN_LIST}, counted)
    SELECT {", ".join("n." + c for c in STAGING_COLUMNS)}, d.record_id IS NOT NULL
    FROM new_doses n LEFT JOIN days d USING (site_id, record_id)
    RETURNING batch_id, site_id, vaccine, dose_number, administered_at, counted
), stats AS (
    -- Statistics in the same transaction as the doses they count: they cannot drift.
    INSERT INTO dose_stats (day, site_id, vaccine, dose_number, doses)
    SELECT vx_day(administered_at), site_id, vaccine, dose_number, count(*) FROM inserted WHERE counted
    GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
    ON CONFLICT (day, site_id, vaccine, dose_number) DO UPDATE SET doses = dose_stats.doses + EXCLUDED.doses
), tally AS (
    INSERT INTO intake (site_id, day, received, inserted)
    SELECT r.site_id, r.day, r.received, coalesce(i.inserted, 0)
    FROM unnest($1::int[], $2::date[], $3::int[]) AS r(site_id, day, received)
    LEFT JOIN (SELECT site_id, vx_day(administered_at) AS day, count(*) AS inserted FROM inserted GROUP BY 1, 2) i
           USING (site_id, day)
    ORDER BY 1, 2
    ON CONFLICT (site_id, day) DO UPDATE SET received = intake.received + EXCLUDED.received,
                                             inserted = intake.inserted + EXCLUDED.inserted
), people AS (
    -- Details come from the newest dose; the range of administration times grows with every dose
    -- (a certifier reads a person's doses from the partitions in that range only). A new dose makes
    -- the person due for review (sequence flags, registry status).
    INSERT INTO persons (national_id, full_name, birth_date, sex, phone, first_administered_at, last_administered_at)
    SELECT DISTINCT ON (national_id) national_id, full_name, birth_date, sex, phone,
           min(administered_at) OVER (PARTITION BY national_id), administered_at
    FROM new_doses ORDER BY national_id, administered_at DESC
    {PERSON_UPSERT}
)
SELECT batch_id, count(*)::int AS inserted FROM inserted GROUP BY batch_id
"""

# Receipts are claimed first: a batch that another worker (which took over the same entry) committed
# meanwhile is skipped whole, so its doses, statistics and tallies are never counted twice.
_CLAIM = """
INSERT INTO batches (batch_id, site_id, accepted, inserted, duplicates, received_at, kind)
SELECT batch_id, site_id, accepted, 0, 0, received_at, kind
FROM unnest($1::text[], $2::int[], $3::int[], $4::timestamptz[], $5::text[])
     AS b(batch_id, site_id, accepted, received_at, kind)
ORDER BY batch_id
ON CONFLICT (batch_id) DO NOTHING
RETURNING batch_id
"""

_RECEIVED = """
INSERT INTO intake (site_id, day, received)
SELECT * FROM unnest($1::int[], $2::date[], $3::int[]) ORDER BY 1, 2
ON CONFLICT (site_id, day) DO UPDATE SET received = intake.received + EXCLUDED.received
"""

_COUNT = """
UPDATE batches b SET inserted = c.inserted, duplicates = b.accepted - c.inserted
FROM unnest($1::text[], $2::int[]) AS c(batch_id, inserted)
WHERE b.batch_id = c.batch_id
"""


@dataclasses.dataclass(frozen=True, slots=True)
class BatchCount:
    """What a receipt needs to know about one batch before it is persisted."""

    batch_id: str
    site_id: int
    accepted: int
    received_at: dt.datetime
    days: tuple[tuple[dt.date, int], ...] = ()  # doses per administration day (Vietnam), for the intake tally


@dataclasses.dataclass(frozen=True, slots=True)
class Receipt:
    batch_id: str
    site_id: int
    accepted: int
    inserted: int
    duplicates: int


async def prepare_connection(conn: asyncpg.Connection) -> None:
    """Pool `init`: each connection gets its own staging table."""
    await conn.execute(CREATE_STAGING)


async def persisted_batches(conn: asyncpg.Connection, batch_ids: list[str]) -> set[str]:
    rows = await conn.fetch("SELECT batch_id FROM batches WHERE batch_id = ANY($1::text[])", batch_ids)
    return {r["batch_id"] for r in rows}


async def claim(conn: asyncpg.Connection, batches: list[BatchCount], kind: str = "doses") -> set[str]:
    """Write the receipts of the batches no one persisted yet (inside the caller's transaction); their ids."""
    batches = sorted(batches, key=lambda b: b.batch_id)  # two workers holding the same batches lock them alike
    rows = await conn.fetch(_CLAIM, [b.batch_id for b in batches], [b.site_id for b in batches],
                            [b.accepted for b in batches], [b.received_at for b in batches],
                            [kind] * len(batches))
    return {r["batch_id"] for r in rows}


async def persist(conn: asyncpg.Connection, rows: list[tuple], batches: list[BatchCount]) -> list[Receipt]:
    """Claim receipts, COPY, insert, count and upsert in one transaction; the receipts this transaction wrote.

    `rows` must be free of repeated (site_id, record_id) (see workers.rows).
    """
    async with conn.transaction():
        claimed = await claim(conn, batches)
        if not claimed:
            return []
        batches = [b for b in batches if b.batch_id in claimed]
        rows = [r for r in rows if r[_BATCH_ID] in claimed]
        received: dict[tuple[int, dt.date], int] = {}
        for b in batches:
            for day, count in b.days:
                received[(b.site_id, day)] = received.get((b.site_id, day), 0) + count
        inserted: dict[str, int] = {}
        keys = sorted(received)
        if rows:
            await conn.copy_records_to_table("dose_staging", records=rows, columns=STAGING_COLUMNS)
            inserted = {r["batch_id"]: r["inserted"] for r in await conn.fetch(
                _INSERT, [k[0] for k in keys], [k[1] for k in keys], [received[k] for k in keys])}
        elif keys:  # only resubmissions, whose first copies another worker's batch carried: received all the same
            await conn.execute(_RECEIVED, [k[0] for k in keys], [k[1] for k in keys], [received[k] for k in keys])
        receipts = [Receipt(b.batch_id, b.site_id, b.accepted, inserted.get(b.batch_id, 0),
                            b.accepted - inserted.get(b.batch_id, 0)) for b in batches]
        await conn.execute(_COUNT, [r.batch_id for r in receipts], [r.inserted for r in receipts])
    return receipts


async def receipt(conn: asyncpg.Connection, batch_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT batch_id, site_id, accepted, inserted, duplicates FROM batches WHERE batch_id = $1", batch_id
    )


async def dead_letter_of(conn: asyncpg.Connection, batch_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT site_id, error FROM dead_letters WHERE batch_id = $1", batch_id)


async def person_doses(conn: asyncpg.Connection, national_id: str) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT d.record_id, s.code AS site, d.vaccine, d.lot, d.dose_number, d.administered_at,"
        " d.full_name, d.birth_date, d.batch_id, d.counted"
        " FROM doses d JOIN sites s USING (site_id)"
        " WHERE d.national_id = $1 ORDER BY d.administered_at, d.persisted_at",
        national_id,
    )


async def dead_letter(conn: asyncpg.Connection, *, shard: int, stream: str, entry_id: str, deliveries: int,
                      error: str, payload: bytes) -> bool:
    """Keep a failed entry with its error; True if it was not kept already.

    The site id is read back when the payload allows, so the site can see it.
    """
    entry = decoded(payload)  # None: the payload may be exactly what is broken
    site_id = entry.site_id if entry else None
    inserted = await conn.fetchval(
        "INSERT INTO dead_letters (batch_id, stream, entry_id, deliveries, error, payload, site_id)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (batch_id) DO NOTHING RETURNING true",
        batch_id(shard, entry_id), stream, entry_id, deliveries, error, payload, site_id,
    )
    return bool(inserted)
