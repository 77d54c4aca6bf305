"""Plans that must not depend on the statistics of the moment. The chunked history reads (a certifier's, a
reviewer's) join the sites once per statement, not once per person.

With the monthly partitions in place the planner expects a row from each of them for every person, and had put
the join to `sites` inside the loop over the chunk's persons: a scan and a hash of the whole sites table for
each person, 43-48 us of Postgres a person with 500 sites against 12-14 us now (docs/benchmarks.md,
2026-12-07, night). Read with EXPLAIN ANALYZE on a real Postgres: the sites table is read exactly once, and
every dose still comes with its own site's code.

Revoking and updating a certificate's view read their rows by UVCI even with statistics that say few
certificates are current (a fresh day's, whose first statistics were taken while the table was small).
"""

from __future__ import annotations

import datetime as dt
import json

from storage import certificates, review
from storage.partitions import ensure_partitions

SITES = 300
PERSONS = 200
START = dt.datetime(2021, 7, 1, 8, tzinfo=dt.timezone(dt.timedelta(hours=7)))


async def _populate(db) -> None:
    await ensure_partitions(db)
    await db.execute("INSERT INTO sites (code, name, province) SELECT 'PLAN-' || g, 'Plan site', 1"
                     " FROM generate_series(1, $1) g", SITES)
    first = await db.fetchval("SELECT min(site_id) FROM sites WHERE code LIKE 'PLAN-%'")
    # Two doses a person, 28 days apart (two monthly partitions for some), at two different sites.
    await db.execute("""
        INSERT INTO persons (national_id, full_name, birth_date, first_administered_at, last_administered_at)
        SELECT 'P' || lpad(g::text, 11, '0'), 'Plan Person', '1990-01-01', $1::timestamptz + g * interval '1 h',
               $1::timestamptz + g * interval '1 h' + interval '28 days'
        FROM generate_series(1, $2) g""", START, PERSONS)
    await db.execute("""
        INSERT INTO doses (site_id, record_id, national_id, full_name, birth_date, vaccine, lot, dose_number,
                           administered_at, batch_id, received_at, counted)
        SELECT $3 + (g * 7 + n) % $4, 'R' || g || '-' || n, 'P' || lpad(g::text, 11, '0'), 'Plan Person',
               '1990-01-01', 'EU/1/20/1528', 'LOT1', n,
               $1::timestamptz + g * interval '1 h' + (n - 1) * interval '28 days', 'plan', now(), true
        FROM generate_series(1, $2) g, generate_series(1, 2) n""", START, PERSONS, first, SITES)
    await db.execute("ANALYZE")


def plan_nodes(plan: dict):
    """Every node of an EXPLAIN (FORMAT JSON) plan."""
    yield plan
    for child in plan.get("Plans", []):
        yield from plan_nodes(child)


async def explained(db, statement: str, *args) -> dict:
    """The plan of `statement` as it ran (EXPLAIN ANALYZE executes it), with its buffers."""
    [row] = await db.fetch("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + statement, *args)
    return json.loads(row[0])[0]["Plan"]


async def _sites_loops(db, statement: str, ids: list[str]) -> list[int]:
    """How many times each plan node that reads `sites` ran."""
    return [node["Actual Loops"] for node in plan_nodes(await explained(db, statement, ids))
            if node.get("Relation Name") == "sites"]


async def test_a_certifiers_history_reads_the_sites_once_for_the_chunk(db):
    await _populate(db)
    ids = [f"P{g:011d}" for g in range(1, PERSONS + 1)]
    loops = await _sites_loops(db, certificates._HISTORY, ids)
    assert loops and all(count == 1 for count in loops), loops

    people = await certificates.people(db, ids)
    codes = dict(await db.fetch("SELECT site_id, code FROM sites"))
    stored = {(r["national_id"], r["record_id"]): codes[r["site_id"]]
              for r in await db.fetch("SELECT national_id, record_id, site_id FROM doses")}
    assert len(people) == PERSONS
    assert sum(len(p.history) for p in people) == 2 * PERSONS
    for person in people:
        for item in person.history:
            assert item.site == stored[(person.national_id, item.record_id)]


async def test_a_reviewers_history_reads_the_sites_once_for_the_chunk(db):
    await _populate(db)
    ids = [f"P{g:011d}" for g in range(1, PERSONS + 1)] + ["P99999999999"]  # one unknown: no row, no error
    loops = await _sites_loops(db, review._HISTORY, ids)
    assert loops and all(count == 1 for count in loops), loops

    rows = await db.fetch(review._HISTORY, ids)
    stored = {(r["national_id"], r["record_id"]): (r["site_id"], r["code"]) for r in await db.fetch(
        "SELECT d.national_id, d.record_id, d.site_id, s.code FROM doses d JOIN sites s USING (site_id)")}
    assert len(rows) == 2 * PERSONS
    assert {(r["national_id"], r["record_id"]): (r["site_id"], r["site"]) for r in rows} == stored


async def test_revoking_and_updating_views_read_the_certificates_by_uvci_whatever_the_statistics_say(db):
    """Statistics taken while nearly every certificate was revoked, then a day's worth made current: the
    planner, told certificates_current holds a handful, read that whole index for a few UVCIs (its predicate,
    `status = 'current'`, was the compare-and-swap's condition). Both statements read their rows by UVCI, and
    still change only a certificate that is current with the view they were built against."""
    count, size = 20_000, 12
    await db.execute("""
        INSERT INTO certificates (uvci, national_id, status, fingerprint, view_fingerprint, full_name, birth_date,
                                  doses, kid, hc1, issued_at, expires_at)
        SELECT 'URN:UVCI:01:VN:' || md5(g::text), 'P' || lpad(g::text, 11, '0'), 'revoked', '\\x01', '\\x01',
               'Plan Person', '1990-01-01', '[]', '\\x00', 'HC1:', now(), now() + interval '1 year'
        FROM generate_series(1, $1) g""", count)
    await db.execute("ANALYZE certificates")
    await db.execute("UPDATE certificates SET status = 'current'")  # what the statistics did not see
    rows = await db.fetch("SELECT uvci FROM certificates ORDER BY uvci LIMIT $1", 3 * size)
    revoked, viewed, stale = ([r["uvci"] for r in rows[k * size:(k + 1) * size]] for k in range(3))

    executed = [
        await explained(db, certificates._REVOKE, revoked, [f"NEW-{u}" for u in revoked], [b"\x01"] * size),
        await explained(db, certificates._UPDATE_VIEW, viewed, [b"\x01"] * size, [b"\x02"] * size, ["[1]"] * size),
        await explained(db, certificates._UPDATE_VIEW, stale, [b"\x09"] * size, [b"\x02"] * size, ["[1]"] * size),
    ]
    for root in executed:
        assert {node.get("Index Name") for node in plan_nodes(root)} - {None} == {"certificates_pkey"}
        assert max(node["Shared Hit Blocks"] + node["Shared Read Blocks"] for node in plan_nodes(root)) < 50 * size
    changed = dict(await db.fetch("SELECT uvci, status || ' ' || encode(view_fingerprint, 'hex') FROM certificates"
                                  " WHERE uvci = ANY($1::text[])", revoked + viewed + stale))
    assert changed == {**dict.fromkeys(revoked, "revoked 01"), **dict.fromkeys(viewed, "current 02"),
                       **dict.fromkeys(stale, "current 01")}  # a view built against another is left alone
