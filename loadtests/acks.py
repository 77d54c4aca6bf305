"""The load test's own reconciliation: every dose a client was told is accepted, in Postgres exactly once
and on its person's current certificate.

The Locust processes append one line per acknowledged batch to `acks-<pid>.tsv` (site code, record-id
prefix, first sequence number, count: record ids are `<prefix><sequence:06d>`). These are loaded into a
temporary table and checked against `dose_keys`, `doses` and the current certificates' dose lists in a
few set queries, so five million doses take seconds, not a round trip each. `vaxline reconcile`'s
identities (accepted = received + dead-lettered + pending, and the rest) are checked beside it by the
runner; this is the client's side of the same question.
"""

from __future__ import annotations

import csv
from pathlib import Path

import asyncpg


def read_acks(folder: Path) -> list[tuple[str, str, int, int]]:
    rows = []
    for path in sorted(folder.glob("acks-*.tsv")):
        with path.open(newline="") as lines:
            for site, prefix, first, count in csv.reader(lines, delimiter="\t"):
                rows.append((site, prefix, int(first), int(count)))
    return rows


async def check(conn: asyncpg.Connection, folder: Path) -> dict[str, int]:
    """Counts of the acknowledged doses and of each way one could be missing; `gap` sums the failures."""
    await conn.execute("CREATE TEMP TABLE acked_batches (site text, prefix text, first integer, count integer)")
    await conn.copy_records_to_table("acked_batches", records=read_acks(folder))
    await conn.execute("""
        CREATE TEMP TABLE acked AS
        SELECT s.site_id, a.prefix || lpad(n::text, greatest(6, length(n::text)), '0') AS record_id
        FROM acked_batches a JOIN sites s ON s.code = a.site, generate_series(a.first, a.first + a.count - 1) n""")
    await conn.execute("CREATE INDEX ON acked (site_id, record_id)")
    await conn.execute("ANALYZE acked")
    # What the current certificates state, dose by dose (site code and record id, as their views list them).
    await conn.execute("""
        CREATE TEMP TABLE certified AS
        SELECT s.site_id, e->>'record_id' AS record_id, c.national_id
        FROM certificates c, jsonb_array_elements(c.doses) e JOIN sites s ON s.code = e->>'site'
        WHERE c.status = 'current'""")
    await conn.execute("CREATE INDEX ON certified (site_id, record_id)")
    await conn.execute("ANALYZE certified")
    row = await conn.fetchrow("""
        SELECT
          (SELECT count(*) FROM acked) AS acknowledged,
          (SELECT count(*) FROM (SELECT DISTINCT site_id, record_id FROM acked) d) AS distinct_acknowledged,
          (SELECT count(*) FROM acked a WHERE NOT EXISTS
             (SELECT 1 FROM doses d WHERE d.site_id = a.site_id AND d.record_id = a.record_id)) AS missing,
          (SELECT count(*) FROM (SELECT 1 FROM doses GROUP BY site_id, record_id HAVING count(*) > 1) t)
             AS stored_twice,
          (SELECT count(*) FROM acked a JOIN doses d USING (site_id, record_id) WHERE NOT EXISTS
             (SELECT 1 FROM certified c WHERE c.site_id = a.site_id AND c.record_id = a.record_id
                AND c.national_id = d.national_id)) AS not_certified,
          (SELECT count(*) FROM doses d WHERE NOT EXISTS
             (SELECT 1 FROM acked a WHERE a.site_id = d.site_id AND a.record_id = d.record_id))
             AS persisted_unacknowledged""")
    await conn.execute("DROP TABLE acked_batches, acked, certified")
    result = dict(row)
    # A client's record id acknowledged twice would be the generator's bug, and would hide a loss.
    result["acknowledged_twice"] = result["acknowledged"] - result["distinct_acknowledged"]
    result["gap"] = result["missing"] + result["stored_twice"] + result["not_certified"] + result["acknowledged_twice"]
    return result
