"""The population registry in Postgres: importing an extract, reconciling persons against it.

An import goes chunk by chunk (50,000 rows), each chunk one short transaction: COPY into a
per-connection staging table, upsert into `registry` (a row is written, with this import's
`imported_at`, only when its name, birth date or sex changed), then reconcile the chunk's persons.
Counts are as if the rows were applied one by one in line order: a national ID repeated in the
extract is added (or updated) by its first row and updated again by a later row that differs; the
last one stays. An interrupted import leaves the chunks it committed imported and reconciled;
running it again is safe. One import at a time per database (an advisory lock).

Reconciling a person writes `registry_status = vx_registry_status(...)` and `review_due = true`
when this import wrote their registry row or their status comes out different, so importing the
same extract again rewrites no person. After the import, persons never reconciled (status NULL)
get their status from the registry as it now is: `not_found` when it has no row for them.
A chunk that loses a deadlock to the persist transaction (both lock persons) is retried.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from collections.abc import Awaitable, Callable, Iterator, Sequence

import asyncpg

from vaxline.registry import ROW_FIELDS, Chunk

STATUSES = ("verified", "name_mismatch", "birth_date_mismatch", "not_found")
CHUNK_ROWS = 50_000
DEADLOCK_ATTEMPTS = 5
IMPORT_LOCK = 0x7661786C72656701  # "vaxlreg\x01": the advisory lock of registry imports

# A chunk's transaction: its sorts in memory (the default 4MB spills them to disk), and the registry
# and persons probed by key, 50,000 keys a chunk, whatever their size. Left to its costs, the planner
# hashes the whole registry for every chunk instead, until the registry is tens of millions of rows
# (measured at 1,000,000: 0.5 s a chunk, against 0.15 s probing).
CHUNK_SETTINGS = "SET LOCAL work_mem = '16MB'; SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off"

CREATE_STAGING = """
CREATE TEMP TABLE IF NOT EXISTS registry_staging (
    line bigint NOT NULL, national_id text NOT NULL, full_name text NOT NULL, birth_date date NOT NULL, sex text
) ON COMMIT DELETE ROWS
"""

# Each staged row is compared with the row before it: the previous row of the same national ID in
# this chunk, else the registry's. Only the last row of a national ID is written.
_UPSERT = """
WITH staged AS (
    SELECT s.*, lag(s.line) OVER w IS NULL AS first, lead(s.line) OVER w IS NULL AS last,
           lag(ROW(s.full_name, s.birth_date, s.sex)) OVER w AS previous
    FROM registry_staging s WINDOW w AS (PARTITION BY s.national_id ORDER BY s.line)
), outcomes AS (
    SELECT s.national_id, s.full_name, s.birth_date, s.sex, s.last,
           ROW(r.full_name, r.birth_date, r.sex) IS DISTINCT FROM ROW(s.full_name, s.birth_date, s.sex) AS differs,
           CASE WHEN s.first AND r.national_id IS NULL THEN 'added'
                WHEN (CASE WHEN s.first THEN ROW(r.full_name, r.birth_date, r.sex) ELSE s.previous END)
                     IS DISTINCT FROM ROW(s.full_name, s.birth_date, s.sex) THEN 'updated'
                ELSE 'unchanged' END AS outcome
    FROM staged s LEFT JOIN registry r USING (national_id)
), written AS (
    -- Only rows that change anything: ON CONFLICT would lock even a row its WHERE leaves alone.
    INSERT INTO registry AS r (national_id, full_name, birth_date, sex, imported_at)
    SELECT national_id, full_name, birth_date, sex, $1 FROM outcomes WHERE last AND differs ORDER BY national_id
    ON CONFLICT (national_id) DO UPDATE SET full_name = EXCLUDED.full_name, birth_date = EXCLUDED.birth_date,
        sex = EXCLUDED.sex, imported_at = EXCLUDED.imported_at
    WHERE (r.full_name, r.birth_date, r.sex) IS DISTINCT FROM (EXCLUDED.full_name, EXCLUDED.birth_date, EXCLUDED.sex)
)
SELECT count(*) FILTER (WHERE outcome = 'added') AS added, count(*) FILTER (WHERE outcome = 'updated') AS updated,
       count(*) FILTER (WHERE outcome = 'unchanged') AS unchanged
FROM outcomes
"""

# vx_registry_status of person p against registry row r (NULL: none). A name written exactly as the
# registry writes it needs no folding, and vx_fold_name costs about 5 us a call: the common case
# stays cheap.
_STATUS = """CASE WHEN p.full_name = r.full_name AND p.birth_date = r.birth_date THEN 'verified'
     ELSE vx_registry_status(p.full_name, p.birth_date, r.full_name, r.birth_date) END"""

# A person is written when this import wrote their registry row (the status is then computed once,
# in SET: OR stops at its first test) or when their status changes (computed in WHERE for each,
# again in SET for the few it changes). SET reads the person's current version: one changed by a
# dose meanwhile is judged on the change.
_RECONCILE = f"""
UPDATE persons p SET registry_status = {_STATUS}, review_due = true, review_seq = p.review_seq + 1
FROM registry r
WHERE r.national_id = p.national_id AND p.national_id = ANY($1::text[])
  AND (r.imported_at = $2 OR p.registry_status IS DISTINCT FROM {_STATUS})
RETURNING p.registry_status
"""

# Persons never reconciled, a chunk at a time in national ID order after $1 (keyset: each person is
# read once), locked in that order as the persist transaction locks them.
_RECONCILE_UNCHECKED = f"""
WITH due AS (
    SELECT national_id FROM persons WHERE registry_status IS NULL AND national_id > $1
    ORDER BY national_id LIMIT $2 FOR NO KEY UPDATE
), written AS (
    UPDATE persons p SET registry_status = {_STATUS}, review_due = true, review_seq = p.review_seq + 1
    FROM due LEFT JOIN registry r USING (national_id)
    WHERE p.national_id = due.national_id AND p.registry_status IS NULL
    RETURNING 1
)
SELECT (SELECT max(national_id) FROM due) AS last, (SELECT count(*) FROM written) AS written
"""


class ImportRunning(Exception):
    """Another registry import holds this database's import lock."""


@dataclasses.dataclass(slots=True)
class ImportCounts:
    """What an import did with each row of the extract (`rejected`: rows that never reached Postgres)."""

    added: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: int = 0

    @property
    def rows(self) -> int:
        return self.added + self.updated + self.unchanged + self.rejected

    def add(self, other: ImportCounts) -> None:
        self.added += other.added
        self.updated += other.updated
        self.unchanged += other.unchanged
        self.rejected += other.rejected


async def import_rows(conn: asyncpg.Connection, rows: Sequence[tuple], *, imported_at: dt.datetime) -> ImportCounts:
    """Upsert one chunk of valid rows (`vaxline.registry.ROW_FIELDS` order) and reconcile their persons,
    in one transaction. `imported_at` is the import's time, the same for all its chunks."""

    async def chunk() -> ImportCounts:
        async with conn.transaction():
            await conn.execute(f"{CHUNK_SETTINGS}; {CREATE_STAGING}")
            await conn.copy_records_to_table("registry_staging", records=rows, columns=ROW_FIELDS)
            counts = await conn.fetchrow(_UPSERT, imported_at)
            await reconcile(conn, [row[1] for row in rows], imported_at=imported_at)
        return ImportCounts(added=counts["added"], updated=counts["updated"], unchanged=counts["unchanged"])

    return await _retrying_deadlocks(chunk)


async def reconcile(conn: asyncpg.Connection, national_ids: Sequence[str], *,
                    imported_at: dt.datetime | None = None) -> dict[str, int]:
    """Recompute these persons' registry status and mark them for review where it matters: their
    registry row was written at `imported_at`, or their status changes. Persons without a registry
    row are left as they are. Returns the statuses written, counted."""
    counts = dict.fromkeys(STATUSES, 0)
    for row in await conn.fetch(_RECONCILE, national_ids, imported_at):
        counts[row["registry_status"]] += 1
    return counts


async def reconcile_unchecked(conn: asyncpg.Connection, *, chunk: int = CHUNK_ROWS) -> int:
    """Give every person whose status is still NULL their status (`not_found` when the registry has
    no row for them), a chunk at a time, each its own transaction. Returns how many were written."""
    async def next_chunk(after: str) -> asyncpg.Record:
        async with conn.transaction():
            await conn.execute(CHUNK_SETTINGS)
            return await conn.fetchrow(_RECONCILE_UNCHECKED, after, chunk)

    last, total = "", 0
    while True:
        row = await _retrying_deadlocks(lambda: next_chunk(last))
        if row["last"] is None:
            return total
        last, total = row["last"], total + row["written"]


async def status_counts(conn: asyncpg.Connection) -> dict[str, int]:
    """How many persons have each registry status (NULL, never reconciled, is not counted)."""
    counts = dict.fromkeys(STATUSES, 0)
    for row in await conn.fetch("SELECT registry_status, count(*) AS n FROM persons"
                                " WHERE registry_status IS NOT NULL GROUP BY 1"):
        counts[row["registry_status"]] = row["n"]
    return counts


async def import_extract(conn: asyncpg.Connection, chunks: Iterator[Chunk], *,
                         on_chunk: Callable[[Chunk, ImportCounts], None] = lambda chunk, counts: None) -> ImportCounts:
    """Import an extract's chunks in order, then reconcile the persons never reconciled.

    The next chunk is read and validated in a thread while Postgres writes this one. `on_chunk` is
    called after each chunk commits (progress, rejected rows). Raises ImportRunning when another
    import holds the lock.
    """
    if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", IMPORT_LOCK):
        raise ImportRunning("another registry import is running on this database")
    try:
        imported_at = await conn.fetchval("SELECT clock_timestamp()")
        total = ImportCounts()
        reading = asyncio.ensure_future(asyncio.to_thread(next, chunks, None))
        while chunk := await reading:
            reading = asyncio.ensure_future(asyncio.to_thread(next, chunks, None))
            counts = await import_rows(conn, chunk.rows, imported_at=imported_at) if chunk.rows else ImportCounts()
            counts.rejected = len(chunk.rejected)
            total.add(counts)
            on_chunk(chunk, counts)
        await reconcile_unchecked(conn)
        return total
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", IMPORT_LOCK)


async def _retrying_deadlocks(transaction: Callable[[], Awaitable]):
    """Run a transaction again when Postgres chose it as a deadlock's victim (it rolled back whole)."""
    for attempt in range(1, DEADLOCK_ATTEMPTS + 1):
        try:
            return await transaction()
        except asyncpg.DeadlockDetectedError:
            if attempt == DEADLOCK_ATTEMPTS:
                raise
