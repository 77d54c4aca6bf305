"""Reconciliation: per site and administration day, every dose ingest acknowledged is accounted for.

Four identities, each from independent records:

    accepted (ingest's own count, in Redis, written with the XADD)
        = received (doses in persisted batches, resubmissions included) + dead-lettered + pending (still in the stream)
    inserted - withdrawn + restored - moved out + moved in (the intake tally, written with each change)
        = present (a count over `doses`)
    counted in `dose_stats` = counted in `doses` (present minus probable duplicates)
    counted = on the person's current certificate + pending certification (no certificate built since)

Whatever none of these explains is `unexplained`; it is 0 on a healthy deployment at rest. Under live
traffic a batch in flight between the reads can show for a moment: run it again, or on a quiet day.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict

import asyncpg

from vaxline.entries import decoded, doses_by_day
from vaxline.sequence import VIETNAM
from vaxline.streams import IngestCounts

COLUMNS = ("site", "day", "accepted", "rejected", "received", "resubmitted", "inserted", "withdrawn", "restored",
           "moved_in", "moved_out", "present", "counted", "duplicates", "stats", "certified",
           "pending_certification", "dead_lettered", "pending", "unexplained", "explanation")

_INTAKE = """
SELECT site_id, day, received, inserted, withdrawn, restored, moved_in, moved_out FROM intake
WHERE day BETWEEN $1 AND $2 AND ($3::int IS NULL OR site_id = $3)
"""

# What was persisted before reconciliation began counts as accepted (ingest's count starts with it).
_BASELINE = """
SELECT site_id, day, accepted FROM accepted_baseline
WHERE day BETWEEN $1 AND $2 AND ($3::int IS NULL OR site_id = $3)
"""

_PRESENT = """
SELECT site_id, vx_day(administered_at) AS day, count(*) AS present, count(*) FILTER (WHERE counted) AS counted
FROM doses WHERE administered_at >= $1 AND administered_at < $2 AND ($3::int IS NULL OR site_id = $3)
GROUP BY 1, 2
"""

_STATS = """
SELECT site_id, day, sum(doses) AS stats FROM dose_stats
WHERE day BETWEEN $1 AND $2 AND ($3::int IS NULL OR site_id = $3) GROUP BY 1, 2
"""

# A counted dose is certified when its person's current certificate lists the record as counted; it is pending
# when no certificate was stored since the dose was (a certifier has not got to it yet, or none runs).
_CERTIFIED = """
SELECT d.site_id, vx_day(d.administered_at) AS day,
       count(*) FILTER (WHERE x.listed) AS certified,
       count(*) FILTER (WHERE NOT x.listed AND (c.uvci IS NULL OR c.certified_at < d.persisted_at)) AS pending
FROM doses d JOIN sites s ON s.site_id = d.site_id
LEFT JOIN certificates c ON c.national_id = d.national_id AND c.status = 'current'
CROSS JOIN LATERAL (SELECT coalesce(c.doses @> jsonb_build_array(jsonb_build_object(
                                        'site', s.code, 'record_id', d.record_id, 'counted', true)),
                                    false) AS listed) x
WHERE d.counted AND d.administered_at >= $1 AND d.administered_at < $2 AND ($3::int IS NULL OR d.site_id = $3)
GROUP BY 1, 2
"""


async def reconcile(conn: asyncpg.Connection, ingest: IngestCounts, *, first: dt.date, last: dt.date,
                    site_id: int | None = None) -> dict:
    """{"rows": [one per site and day], "totals": {...}, "unexplained": N}.

    `ingest` is Redis's side (vaxline.streams.read_ingest_counts), read before this is called: a batch
    persisted in between is then found done here, never counted twice; a dead letter replayed in between
    is found replayed here only once its replay is persisted (or dead-lettered again)."""
    figures: dict[tuple[int, dt.date], dict[str, int]] = defaultdict(lambda: dict.fromkeys(COLUMNS[2:-2], 0))

    def keep(site: int, day: dt.date) -> bool:
        return first <= day <= last and (site_id is None or site == site_id)

    for name, counts in (("accepted", ingest.accepted), ("rejected", ingest.rejected)):
        for (site, day), count in counts.items():
            if keep(site, day):
                figures[(site, day)][name] += count
    stream_batches = ingest.in_streams
    start = dt.datetime(first.year, first.month, first.day, tzinfo=VIETNAM)
    end = dt.datetime(last.year, last.month, last.day, tzinfo=VIETNAM) + dt.timedelta(days=1)
    async with conn.transaction(isolation="repeatable_read", readonly=True):  # one snapshot for every count
        replays = ingest.replays | dict(await conn.fetch(
            "SELECT batch_id, replayed_as FROM dead_letters WHERE replayed_as IS NOT NULL"))
        done = {r["batch_id"] for r in await conn.fetch(
            "SELECT batch_id FROM batches WHERE batch_id = ANY($1::text[])"
            " UNION SELECT batch_id FROM dead_letters WHERE batch_id = ANY($1::text[])",
            [*stream_batches, *replays.values()])}
        for bid, (site, days) in stream_batches.items():
            if bid not in done:
                for day, count in days.items():
                    if keep(site, day):
                        figures[(site, day)]["pending"] += count
        # Dead letters from before reconciliation began (migration 0003) were never counted by ingest. A
        # replayed one is counted where its replay is: pending, received, or dead-lettered again.
        for dead, payload in await conn.fetch("SELECT batch_id, payload FROM dead_letters WHERE counted_by_ingest"):
            if replays.get(dead) in done or replays.get(dead) in stream_batches:
                continue
            for site, day, count in _doses_by_day(payload):
                if keep(site, day):
                    figures[(site, day)]["dead_lettered"] += count
        for r in await conn.fetch(_BASELINE, first, last, site_id):
            figures[(r["site_id"], r["day"])]["accepted"] += r["accepted"]
        for query, args in ((_INTAKE, (first, last, site_id)), (_PRESENT, (start, end, site_id)),
                            (_STATS, (first, last, site_id)), (_CERTIFIED, (start, end, site_id))):
            for r in await conn.fetch(query, *args):
                row = figures[(r["site_id"], r["day"])]
                for name, value in r.items():
                    if name not in ("site_id", "day"):
                        row["pending_certification" if query is _CERTIFIED and name == "pending" else name] = value
        codes = dict(await conn.fetch("SELECT site_id, code FROM sites"))
    rows = [_explained(codes.get(site, str(site)), day, values) for (site, day), values in sorted(figures.items())]
    totals = {name: sum(r[name] for r in rows) for name in COLUMNS[2:-1]}
    return {"rows": rows, "totals": totals, "unexplained": totals["unexplained"]}


def _doses_by_day(payload: bytes) -> list[tuple[int, dt.date, int]]:
    entry = decoded(payload)
    if entry is None:
        return []  # undecodable: it never had a site or a day ingest could have counted
    return [(entry.site_id, day, count) for day, count in doses_by_day(entry.doses).items()]


def _explained(site: str, day: dt.date, f: dict[str, int]) -> dict:
    f = {name: int(value) for name, value in f.items()}
    f["resubmitted"] = f["received"] - f["inserted"]
    f["duplicates"] = f["present"] - f["counted"]
    gaps = {
        "accepted but neither persisted, dead-lettered nor pending":
            f["accepted"] - f["received"] - f["dead_lettered"] - f["pending"],
        "records inserted and corrected do not add up to those present":
            f["inserted"] - f["withdrawn"] + f["restored"] - f["moved_out"] + f["moved_in"] - f["present"],
        "statistics differ from the counted doses": f["stats"] - f["counted"],
        "counted doses missing from current certificates":
            f["counted"] - f["certified"] - f["pending_certification"],
    }
    f["unexplained"] = sum(abs(gap) for gap in gaps.values())
    explanation = [f"{what}: {gap:+d}" for what, gap in gaps.items() if gap]
    for name, why in (("rejected", "rejected at ingest"), ("resubmitted", "resubmitted records (same record id)"),
                      ("duplicates", "probable duplicates, not counted"), ("withdrawn", "withdrawn"),
                      ("dead_lettered", "dead-lettered"), ("pending", "still in the stream"),
                      ("pending_certification", "awaiting certification")):
        if f[name]:
            explanation.append(f"{f[name]} {why}")
    return {"site": site, "day": day.isoformat(), **f, "explanation": "; ".join(explanation)}
