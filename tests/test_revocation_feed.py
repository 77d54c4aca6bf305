"""GET /v1/revocations: keyset paging by revocation number, caching, bounded pages (issue 16, item 6).

Covers: every revocation is numbered when it is made, whichever statement revokes; paging by `next` lists
every revocation exactly once even when hundreds share one revoked_at across page edges (the time-based
feed skipped those); a page is at most REVOCATIONS_PAGE rows; a number still uncommitted behind the settled
bound holds nothing back yet lists nothing early; every answer has an ETag answered by 304 and a
Cache-Control (a full page immutable, the last one short); `since` still works for older clients and hands
them the cursor; malformed or conflicting cursors are 400.
"""

from __future__ import annotations

import datetime as dt

import asyncpg
import pytest

from ingest import revocations
from storage import certificates as store
from tests.stack import running_stack
from vaxline.dcc.trust import uvci_hash

AT = dt.datetime(2021, 10, 1, 8, 0, tzinfo=dt.UTC)


async def certificates(db: asyncpg.Connection, count: int, *, first: int = 0) -> list[str]:
    """`count` current certificates of as many persons; their UVCIs."""
    uvcis = [f"URN:UVCI:01:VN:{n:032d}" for n in range(first, first + count)]
    await db.execute(
        "INSERT INTO certificates (uvci, national_id, status, fingerprint, view_fingerprint, full_name, birth_date,"
        " doses, kid, hc1, issued_at, expires_at)"
        " SELECT u, 'N' || u, 'current', '\\x00', '\\x00', 'A', '1990-01-01', '[]', '\\x00', 'HC1:', $2, $2"
        " FROM unnest($1::text[]) AS u", uvcis, AT)
    return uvcis


async def revoke(db, uvcis: list[str], at: dt.datetime | None = AT) -> None:
    """Revoke them in one statement, all stamped with the same revoked_at (`at`; None: the clock, as the
    certifiers stamp them)."""
    await db.execute("UPDATE certificates SET status = 'revoked', revoked_at = coalesce($2, clock_timestamp())"
                     " WHERE uvci = ANY($1::text[])", uvcis, at)


async def follow(client, url: str = "/v1/revocations") -> tuple[list[dict], list]:
    """Every hash by following `next` until complete; (hashes, answers)."""
    hashes, answers = [], []
    while True:
        response = await client.get(url)
        assert response.status == 200
        body = await response.json()
        answers.append((response, body))
        hashes += body["hashes"]
        url = body["next"]
        if body["complete"]:
            return hashes, answers


async def test_every_revocation_is_numbered_whichever_statement_revokes(db):
    uvcis = await certificates(db, 3)
    await revoke(db, uvcis[:2])
    await store.revoke_without_doses(db, ["N" + uvcis[2]])  # the other revoking path: a person without doses
    rows = await db.fetch("SELECT uvci, revocation_seq FROM certificates ORDER BY revocation_seq")
    assert all(r["revocation_seq"] is not None for r in rows)
    assert len({r["revocation_seq"] for r in rows}) == 3
    current = (await certificates(db, 1, first=10))[0]
    assert await db.fetchval("SELECT revocation_seq FROM certificates WHERE uvci = $1", current) is None
    with pytest.raises(asyncpg.CheckViolationError):  # a revoked row without its number cannot exist
        await db.execute("UPDATE certificates SET revocation_seq = NULL WHERE uvci = $1", uvcis[0])


async def test_paging_by_next_never_skips_revocations_that_share_a_time(make_settings, db, monkeypatch):
    monkeypatch.setattr(revocations, "REVOCATIONS_PAGE", 7)
    settings = make_settings(revocations_settled=0.0)
    uvcis = await certificates(db, 50)
    # Ties across every page edge: 20, then 25 at one instant, then 5.
    await revoke(db, uvcis[:20], AT)
    await revoke(db, uvcis[20:45], AT + dt.timedelta(seconds=1))
    await revoke(db, uvcis[45:], AT + dt.timedelta(seconds=2))
    async with running_stack(settings, workers=0) as stack:
        hashes, answers = await follow(stack.client)
        assert sorted(h["hash"] for h in hashes) == sorted(uvci_hash(u) for u in uvcis)  # each exactly once
        assert [h["seq"] for h in hashes] == sorted(h["seq"] for h in hashes)
        assert all(len(body["hashes"]) <= 7 for _, body in answers)  # bounded work per call
        assert [body["complete"] for _, body in answers] == [False] * 7 + [True]
        # The time-based continuation of old (since = the last revoked_at, exclusive) lost the page-edge ties:
        # `since` now repeats instead, from a second before.
        first = answers[0][1]
        since = first["hashes"][-1]["revoked_at"].replace("+00:00", "Z")
        again = await (await stack.client.get("/v1/revocations", params={"since": since})).json()
        assert {h["hash"] for h in first["hashes"]} <= {h["hash"] for h in again["hashes"]}
        # New revocations come after the last `next`, and only there.
        last_next = answers[-1][1]["next"]
        more = await certificates(db, 3, first=100)
        await revoke(db, more, AT + dt.timedelta(seconds=3))
        body = await (await stack.client.get(last_next)).json()
        assert [h["hash"] for h in body["hashes"]] == [uvci_hash(u) for u in more]


async def test_a_revocation_still_uncommitted_holds_back_nothing_and_is_listed_once_committed(make_settings, db):
    settings = make_settings(revocations_settled=0.0)
    early, late = await certificates(db, 2)
    open_revocation = await asyncpg.connect(settings.database_url)
    try:
        transaction = open_revocation.transaction()
        await transaction.start()
        await revoke(open_revocation, [early], None)  # numbered first, committed last
        await revoke(db, [late], None)
        rows, _ = await store.revocations(db, settled=dt.timedelta(0), limit=10)
        # With settled 0 the bound is the latest revocation visible: the open one's number is below it,
        # which is why the feed waits VAXLINE_REVOCATIONS_SETTLED (60 s, longer than any transaction).
        assert [r["hash"] for r in rows] == [uvci_hash(late)]
        # Settled 60 s: neither is listed yet, and the cursor does not move past the open one.
        assert await store.revocations(db, settled=dt.timedelta(minutes=1), limit=10) == ([], 0)
        await transaction.commit()
    finally:
        await open_revocation.close()
    rows, _ = await store.revocations(db, settled=dt.timedelta(0), limit=10)
    assert {r["hash"] for r in rows} == {uvci_hash(early), uvci_hash(late)}


async def test_etag_if_none_match_and_cache_control(make_settings, db, monkeypatch):
    monkeypatch.setattr(revocations, "REVOCATIONS_PAGE", 2)
    settings = make_settings(revocations_settled=0.0)
    await revoke(db, await certificates(db, 3))
    async with running_stack(settings, workers=0) as stack:
        full = await stack.client.get("/v1/revocations")
        assert full.status == 200 and not (await full.json())["complete"]
        assert full.headers["Cache-Control"] == "public, max-age=86400, immutable"
        etag = full.headers["ETag"]
        assert etag.startswith('"') and etag.endswith('"')
        cached = await stack.client.get("/v1/revocations", headers={"If-None-Match": f'W/"x", {etag}'})
        assert cached.status == 304 and await cached.read() == b""
        assert cached.headers["ETag"] == etag and cached.headers["Cache-Control"]
        last = await stack.client.get((await full.json())["next"])
        assert (await last.json())["complete"]
        assert last.headers["Cache-Control"] == f"public, max-age={revocations.REVOCATIONS_MAX_AGE}"
        assert last.headers["ETag"] != etag
        # The last page changes when a revocation comes: the old ETag no longer matches.
        url = (await full.json())["next"]
        unchanged = await stack.client.get(url, headers={"If-None-Match": last.headers["ETag"]})
        assert unchanged.status == 304
        await revoke(db, await certificates(db, 1, first=10), AT + dt.timedelta(seconds=5))
        changed = await stack.client.get(url, headers={"If-None-Match": last.headers["ETag"]})
        assert changed.status == 200 and len((await changed.json())["hashes"]) == 2


async def test_cursors_are_checked(make_settings):
    async with running_stack(make_settings(), workers=0) as stack:
        for query in ("after=-1", "after=x", "after=1e3", f"after={2**63}", "after=1&since=2021-10-01T00:00:00Z",
                      "since=yesterday"):
            response = await stack.client.get(f"/v1/revocations?{query}")
            assert response.status == 400, query
            assert (await response.json())["error"]
        empty = await (await stack.client.get("/v1/revocations?after=5")).json()
        assert empty == {"hashes": [], "algorithm": "SHA-256, first 16 bytes of the UVCI", "complete": True,
                         "next": "/v1/revocations?after=5"}


async def test_since_hands_older_clients_the_cursor(make_settings, db):
    settings = make_settings(revocations_settled=0.0)
    old, new = await certificates(db, 2)
    await revoke(db, [old], AT)
    await revoke(db, [new], AT + dt.timedelta(hours=1))
    async with running_stack(settings, workers=0) as stack:
        body = await (await stack.client.get("/v1/revocations",
                                             params={"since": "2021-10-01T08:30:00+00:00"})).json()
        assert [h["hash"] for h in body["hashes"]] == [uvci_hash(new)]
        later = await (await stack.client.get("/v1/revocations", params={"since": "2022-01-01T00:00:00Z"})).json()
        assert later["hashes"] == [] and later["complete"]
        assert (await (await stack.client.get(later["next"])).json())["hashes"] == []  # nothing older comes back
