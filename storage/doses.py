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
import msgspec

from vaxline.entries import DOSE_FIELDS, batch_id, decode_entry

# The order of a row built by workers.rows: the dose's fields as the stream carries them.
STAGING_COLUMNS = ("site_id", *DOSE_FIELDS, "batch_id", "received_at")
_COLUMN_LIST = ", ".join(STAGING_COLUMNS)

CREATE_STAGING = f"""
CREATE TEMP TABLE IF NOT EXISTS dose_staging ON COMMIT DELETE ROWS AS
SELECT {_COLUMN_LIST} FROM doses WITH NO DATA
"""

_INSERT = f"""
WITH new_keys AS (
    INSERT INTO dose_keys (site_id, record_id, administered_at)
    SELECT site_id, record_id, administered_at FROM dose_staging ORDER BY site_id, record_id
    ON CONFLICT DO NOTHING
    RETURNING site_id, record_id
), new_doses AS (
    SELECT s.* FROM dose_staging s JOIN new_keys k USING (site_id, record_id)
), inserted AS (
    INSERT INTO doses ({_COLUMN_LIST}) SELECT {_COLUMN_LIST} FROM new_doses
    RETURNING batch_id
), people AS (
    -- Details come from the newest dose; the range of administration times grows with every dose
    -- (a certifier reads a person's doses from the partitions in that range only).
    INSERT INTO persons (national_id, full_name, birth_date, sex, phone, first_administered_at, last_administered_at)
    SELECT DISTINCT ON (national_id) national_id, full_name, birth_date, sex, phone,
           min(administered_at) OVER (PARTITION BY national_id), administered_at
    FROM new_doses ORDER BY national_id, administered_at DESC
    ON CONFLICT (national_id) DO UPDATE SET
        full_name = CASE WHEN EXCLUDED.last_administered_at >= persons.last_administered_at THEN EXCLUDED.full_name ELSE persons.full_name END,
        birth_date = CASE WHEN EXCLUDED.last_administered_at >= persons.last_administered_at THEN EXCLUDED.birth_date ELSE persons.birth_date END,
        sex = CASE WHEN EXCLUDED.last_administered_at >= persons.last_administered_at THEN COALESCE(EXCLUDED.sex, persons.sex) ELSE persons.sex END,
        phone = CASE WHEN EXCLUDED.last_administered_at >= persons.last_administered_at THEN COALESCE(EXCLUDED.phone, persons.phone) ELSE persons.phone END,
        first_administered_at = least(persons.first_administered_at, EXCLUDED.first_administered_at),
        last_administered_at = greatest(persons.last_administered_at, EXCLUDED.last_administered_at),
        updated_at = now()
    WHERE EXCLUDED.last_administered_at > persons.last_administered_at
       OR EXCLUDED.first_administered_at < persons.first_administered_at
       OR (EXCLUDED.last_administered_at = persons.last_administered_at
           AND (persons.full_name, persons.birth_date, persons.sex, persons.phone)
               IS DISTINCT FROM (EXCLUDED.full_name, EXCLUDED.birth_date,
                                 COALESCE(EXCLUDED.sex, persons.sex), COALESCE(EXCLUDED.phone, persons.phone)))
)
SELECT batch_id, count(*)::int AS inserted FROM inserted GROUP BY batch_id
"""

_RECEIPTS = """
INSERT INTO batches (batch_id, site_id, accepted, inserted, duplicates, received_at)
SELECT * FROM unnest($1::text[], $2::int[], $3::int[], $4::int[], $5::int[], $6::timestamptz[])
ON CONFLICT (batch_id) DO NOTHING
RETURNING batch_id
"""


@dataclasses.dataclass(frozen=True, slots=True)
class BatchCount:
    """What a receipt needs to know about one batch before it is persisted."""

    batch_id: str
    site_id: int
    accepted: int
    received_at: dt.datetime


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


async def persist(conn: asyncpg.Connection, rows: list[tuple], batches: list[BatchCount]) -> list[Receipt]:
    """COPY, insert, upsert and write receipts in one transaction.

    `rows` must be free of repeated (site_id, record_id) (see workers.rows).
    """
    async with conn.transaction():
        if rows:
            await conn.copy_records_to_table("dose_staging", records=rows, columns=STAGING_COLUMNS)
        inserted = {r["batch_id"]: r["inserted"] for r in await conn.fetch(_INSERT)} if rows else {}
        # In batch id order, like the keys: two workers holding the same batches lock them alike.
        batches = sorted(batches, key=lambda b: b.batch_id)
        receipts = [
            Receipt(b.batch_id, b.site_id, b.accepted, inserted.get(b.batch_id, 0), b.accepted - inserted.get(b.batch_id, 0))
            for b in batches
        ]
        written = await conn.fetch(
            _RECEIPTS,
            [r.batch_id for r in receipts],
            [r.site_id for r in receipts],
            [r.accepted for r in receipts],
            [r.inserted for r in receipts],
            [r.duplicates for r in receipts],
            [b.received_at for b in batches],
        )
    # Another worker that took over the same entry may have committed it first: only what this
    # transaction wrote is reported (and counted in metrics), so nothing is counted twice.
    written_ids = {r["batch_id"] for r in written}
    return [r for r in receipts if r.batch_id in written_ids]


async def receipt(conn: asyncpg.Connection, batch_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT batch_id, site_id, accepted, inserted, duplicates FROM batches WHERE batch_id = $1", batch_id
    )


async def dead_letter_of(conn: asyncpg.Connection, batch_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT site_id, error FROM dead_letters WHERE batch_id = $1", batch_id)


async def person_doses(conn: asyncpg.Connection, national_id: str) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT d.record_id, s.code AS site, d.vaccine, d.lot, d.dose_number, d.administered_at,"
        " d.full_name, d.birth_date, d.batch_id"
        " FROM doses d JOIN sites s USING (site_id)"
        " WHERE d.national_id = $1 ORDER BY d.administered_at, d.persisted_at",
        national_id,
    )


async def dead_letter(conn: asyncpg.Connection, *, shard: int, stream: str, entry_id: str, deliveries: int,
                      error: str, payload: bytes) -> bool:
    """Keep a failed entry with its error; True if it was not kept already.

    The site id is read back when the payload allows, so the site can see it.
    """
    try:
        site_id = decode_entry(payload).site_id
    except msgspec.DecodeError:  # the payload may be exactly what is broken
        site_id = None
    inserted = await conn.fetchval(
        "INSERT INTO dead_letters (batch_id, stream, entry_id, deliveries, error, payload, site_id)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (batch_id) DO NOTHING RETURNING true",
        batch_id(shard, entry_id), stream, entry_id, deliveries, error, payload, site_id,
    )
    return bool(inserted)
