"""Monthly partitions of `doses`, created ahead of time.

Months run in Vietnam's time (UTC+7 all year). Partitions are created from
the first valid month through `AHEAD_MONTHS` past today; a dose whose month
has no partition yet lands in the default partition, and the month's rows
move out of it when that month's partition is created, so no valid date can
ever fail at persist time.
"""

from __future__ import annotations

import datetime as dt
import logging

import asyncpg

from . import SCHEMA_LOCK

log = logging.getLogger(__name__)

VIETNAM = dt.timezone(dt.timedelta(hours=7))
FIRST_MONTH = dt.date(2021, 1, 1)
AHEAD_MONTHS = 3


def next_month(month: dt.date) -> dt.date:
    return dt.date(month.year + month.month // 12, month.month % 12 + 1, 1)


def months(first: dt.date, last: dt.date) -> list[dt.date]:
    """First days of every month from first's month through last's month."""
    month, out = first.replace(day=1), []
    while month <= last:
        out.append(month)
        month = next_month(month)
    return out


def partition_name(month: dt.date) -> str:
    return f"doses_{month:%Y_%m}"


def month_start(month: dt.date) -> dt.datetime:
    return dt.datetime(month.year, month.month, 1, tzinfo=VIETNAM)


async def ensure_partitions(conn: asyncpg.Connection, *, today: dt.date | None = None) -> list[str]:
    """Create every missing monthly partition up to AHEAD_MONTHS from today."""
    today = today or dt.datetime.now(VIETNAM).date()
    last = today
    for _ in range(AHEAD_MONTHS):
        last = next_month(last)
    existing = {
        r["relname"]
        for r in await conn.fetch(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'doses'::regclass"
        )
    }
    created = []
    for month in months(FIRST_MONTH, last):
        name = partition_name(month)
        if name not in existing:
            await _create_partition(conn, month)
            created.append(name)
    if created:
        log.info("created %d dose partitions through %s", len(created), created[-1])
    return created


async def _create_partition(conn: asyncpg.Connection, month: dt.date) -> None:
    """Create one month's partition, moving that month's rows out of the default."""
    name = partition_name(month)
    low, high = month_start(month), month_start(next_month(month))
    async with conn.transaction():
        await conn.execute(f"CREATE TABLE {name} (LIKE doses INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
        await conn.execute(
            f"WITH moved AS (DELETE FROM doses_default WHERE administered_at >= $1 AND administered_at < $2"
            f" RETURNING *) INSERT INTO {name} SELECT * FROM moved",
            low,
            high,
        )
        await conn.execute(
            f"ALTER TABLE doses ATTACH PARTITION {name} FOR VALUES FROM ('{low.isoformat()}') TO ('{high.isoformat()}')"
        )


async def maintain(conn: asyncpg.Connection) -> list[str]:
    """ensure_partitions, by one process at a time (the migrations' lock)."""
    if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", SCHEMA_LOCK):
        return []
    try:
        return await ensure_partitions(conn)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", SCHEMA_LOCK)
