"""GET /v1/revocations: keyset paging by revocation number, caching, bounded pages (issue 16, item 6).

Covers: every revocation is numbered once, at its commit, whichever statement revokes, under one lock per
transaction however many rows it revokes, and keeps its number whatever later updates do; numbers follow
commit order, so a revocation made first but committed last is numbered last and a reader who saw the
earlier commit (by `next`, or by `since` as old clients continue) still gets it; a number drawn holds later
revoking commits back until its transaction ends, and a rollback leaves a gap the feed passes over, even
inside an immutable page; the migration numbers earlier revocations in the order they were made; paging by
`next` lists every revocation exactly once even when hundreds share one revoked_at across page edges (the
time-based feed skipped those); a page is at most REVOCATIONS_PAGE rows; every answer has an ETag answered
by 304 and a Cache-Control (a full page immutable, the last one short); `since` still works for older
clients and hands them the cursor; malformed or conflicting cursors are 400.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from ingest import revocations
from storage import certificates as store
from storage.migrate import migration_files
from tests.conftest import wait_until
from tests.stack import running_stack
from vaxline.dcc.trust import uvci_hash

AT = dt.datetime(2021, 10, 1, 8, 0, tzinfo=dt.UTC)
REVOCATION_LOCK = 8530231576387483137  # storage/migrations/0007_revocation_feed.sql


async def certificates(db: asyncpg.Connection, count: int, *, first: int = 0, status: str = "current") -> list[str]:
    """`count` certificates (current, unless told) of as many persons; their UVCIs."""
    uvcis = [f"URN:UVCI:01:VN:{n:032d}" for n in range(first, first + count)]
    await db.execute(
        "INSERT INTO certificates (uvci, national_id, status, fingerprint, view_fingerprint, full_name, birth_date,"
        " doses, kid, hc1, issued_at, expires_at, revoked_at)"
        " SELECT u, 'N' || u, $3::text, '\\x00', '\\x00', 'A', '1990-01-01', '[]', '\\x00', 'HC1:', $2, $2,"
        "  CASE WHEN $3::text = 'revoked' THEN $2::timestamptz END"
        " FROM unnest($1::text[]) AS u", uvcis, AT, status)
    return uvcis


async def revoke(db, uvcis: list[str], at: dt.datetime | None = AT) -> None:
    """Revoke them in one statement, all stamped with the same revoked_at (`at`; None: the clock, as the
    certifiers stamp them)."""
    await db.execute("UPDATE certificates SET status = 'revoked', revoked_at = coalesce($2, clock_timestamp())"
                     " WHERE uvci = ANY($1::text[])", uvcis, at)


async def numbers(db) -> dict[str, int]:
    """Every revocation's number, by UVCI."""
    return {r["uvci"]: r["seq"] for r in await db.fetch("SELECT uvci, seq FROM revocations")}


async def waiting_for_the_revocation_lock(db) -> int:
    """How many sessions of this database wait for the lock that numbers revocations."""
    return await db.fetchval(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        " AND (classid::bigint << 32 | objid::bigint) = $1", REVOCATION_LOCK)


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


async def test_every_revocation_is_numbered_once_at_its_commit_whichever_statement_revokes(db):
    uvcis = await certificates(db, 53)
    chunk = uvcis[:50]
    async with db.transaction():  # a chunk, as the certifiers revoke
        await revoke(db, chunk)
        assert await numbers(db) == {}  # drawn at commit, not before
        await db.execute("SET CONSTRAINTS ALL IMMEDIATE")  # draw them now, to look at the lock while it is held
        held = await db.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
                                 " AND (classid::bigint << 32 | objid::bigint) = $1 AND granted", REVOCATION_LOCK)
        assert held == 1  # one lock for the whole transaction, however many rows it numbers
    drawn = await numbers(db)
    assert sorted(drawn) == sorted(chunk)
    assert sorted(drawn.values()) == list(range(min(drawn.values()), min(drawn.values()) + 50))
    await store.revoke_without_doses(db, ["N" + uvcis[50]])  # the other revoking path: a person without doses
    inserted = (await certificates(db, 1, first=60, status="revoked"))[0]  # and a row written revoked
    assert {uvcis[50], inserted} <= set(await numbers(db))
    current = uvcis[52]
    assert current not in await numbers(db)


async def test_a_revocation_keeps_its_number_whatever_later_updates_do(db):
    uvci = (await certificates(db, 1))[0]
    async with db.transaction():  # revoked, then updated again before its commit
        await revoke(db, [uvci])
        await db.execute("UPDATE certificates SET status = 'revoked', superseded_by = 'X' WHERE uvci = $1", uvci)
    [seq] = (await numbers(db)).values()
    spent = await db.fetchval("SELECT last_value FROM revocation_numbers")
    # Updated again later, its status written again included: no second number, none drawn at all.
    await db.execute("UPDATE certificates SET status = 'revoked', revoked_at = $2, doses = '[1]' WHERE uvci = $1",
                     uvci, AT + dt.timedelta(days=1))
    assert await numbers(db) == {uvci: seq}
    assert await db.fetchval("SELECT last_value FROM revocation_numbers") == spent
    for statement in ("UPDATE revocations SET seq = seq + 1000", "DELETE FROM revocations", "TRUNCATE revocations"):
        with pytest.raises(asyncpg.InsufficientPrivilegeError):  # the feed is append-only
            await db.execute(statement)
    assert await numbers(db) == {uvci: seq}


async def test_a_revocation_made_first_but_committed_last_is_numbered_last_and_never_missed(make_settings, db,
                                                                                             monkeypatch):
    monkeypatch.setattr(store, "SINCE_MARGIN", dt.timedelta(0))  # exact without the clock's margin, too
    settings = make_settings()
    early, late = await certificates(db, 2)
    open_revocation = await asyncpg.connect(settings.database_url)
    try:
        async with running_stack(settings, workers=0) as stack:
            transaction = open_revocation.transaction()
            await transaction.start()
            await revoke(open_revocation, [early], None)  # revoked first...
            await revoke(db, [late], None)  # ...than this one, committed at once
            seen = await (await stack.client.get("/v1/revocations")).json()
            assert [h["hash"] for h in seen["hashes"]] == [uvci_hash(late)]
            await transaction.commit()  # ...and committed last, however long after
            # The reader continues after the number it saw: the late commit is there, numbered above it.
            after = await (await stack.client.get(seen["next"])).json()
            assert [h["hash"] for h in after["hashes"]] == [uvci_hash(early)]
            # An old client continuing from the last revoked_at it saw gets it too (the time-based feed lost it).
            since = seen["hashes"][-1]["revoked_at"]
            again = await (await stack.client.get("/v1/revocations", params={"since": since})).json()
            assert uvci_hash(early) in {h["hash"] for h in again["hashes"]}
    finally:
        await open_revocation.close()
    rows = {r["uvci"]: r for r in await db.fetch("SELECT uvci, seq, revoked_at FROM revocations")}
    assert rows[early]["revoked_at"] < rows[late]["revoked_at"] and rows[early]["seq"] > rows[late]["seq"]


async def test_a_number_drawn_holds_later_commits_back_until_its_transaction_ends_and_a_rollback_is_a_gap(
        make_settings, db, monkeypatch):
    monkeypatch.setattr(revocations, "REVOCATIONS_PAGE", 2)
    settings = make_settings()
    first, rolled_back, waiting, last = await certificates(db, 4)
    await revoke(db, [first], None)
    drawing = await asyncpg.connect(settings.database_url)
    blocked = await asyncpg.connect(settings.database_url)
    try:
        transaction = drawing.transaction()
        await transaction.start()
        await revoke(drawing, [rolled_back], None)
        await drawing.execute("SET CONSTRAINTS ALL IMMEDIATE")  # its number now; the lock until it ends
        drawn = await drawing.fetchval("SELECT seq FROM revocations WHERE uvci = $1", rolled_back)
        later = asyncio.create_task(revoke(blocked, [waiting], None))  # one statement: numbered at its commit
        await wait_until(lambda: waiting_for_the_revocation_lock(db), message="a later commit waiting for the lock")
        assert not later.done()
        assert list(await numbers(db)) == [first]  # neither is visible, and nothing above them
        await transaction.rollback()
        await later
    finally:
        await drawing.close()
        await blocked.close()
    await revoke(db, [last], None)
    seqs = await numbers(db)
    assert rolled_back not in seqs and seqs[first] < drawn < seqs[waiting] < seqs[last]
    async with running_stack(settings, workers=0) as stack:
        hashes, answers = await follow(stack.client)
        assert [h["hash"] for h in hashes] == [uvci_hash(u) for u in (first, waiting, last)]
        full, _ = answers[0]  # the gap inside a full page: it never fills, so the page never changes
        assert full.headers["Cache-Control"] == revocations.IMMUTABLE


async def test_the_migration_numbers_earlier_revocations_in_the_order_they_were_made(services):
    admin_url = services[0]
    name = f"vx_revocations_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(admin_url)
    await admin.execute(f"CREATE DATABASE {name}")
    conn = await asyncpg.connect(urlunsplit(urlsplit(admin_url)._replace(path=f"/{name}")))
    try:
        files = migration_files()
        for version, sql in files:
            if version < "0007":
                await conn.execute(sql)
        old = await certificates(conn, 4)
        await revoke(conn, [old[2]], AT)
        await revoke(conn, [old[0]], AT + dt.timedelta(hours=1))
        await revoke(conn, [old[1]], AT + dt.timedelta(hours=2))
        [feed] = [sql for version, sql in files if version.startswith("0007")]
        async with conn.transaction():
            await conn.execute(feed)
        assert await numbers(conn) == {old[2]: 1, old[0]: 2, old[1]: 3}
        assert await conn.fetchval("SELECT count(*) FROM revocations WHERE numbered_at <> revoked_at") == 0
        await revoke(conn, [old[3]], None)  # and the next one after them
        assert (await numbers(conn))[old[3]] == 4
    finally:
        await conn.close()
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()


async def test_paging_by_next_never_skips_revocations_that_share_a_time(make_settings, db, monkeypatch):
    monkeypatch.setattr(revocations, "REVOCATIONS_PAGE", 7)
    settings = make_settings()
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
        # `since` now repeats instead.
        first = answers[0][1]
        since = first["hashes"][-1]["revoked_at"].replace("+00:00", "Z")
        again = await (await stack.client.get("/v1/revocations", params={"since": since})).json()
        assert {h["hash"] for h in first["hashes"]} <= {h["hash"] for h in again["hashes"]}
        # New revocations come after the last `next`, and only there.
        last_next = answers[-1][1]["next"]
        more = await certificates(db, 3, first=100)
        await revoke(db, more, AT + dt.timedelta(seconds=3))
        body = await (await stack.client.get(last_next)).json()
        assert sorted(h["hash"] for h in body["hashes"]) == sorted(uvci_hash(u) for u in more)


async def test_etag_if_none_match_and_cache_control(make_settings, db, monkeypatch):
    monkeypatch.setattr(revocations, "REVOCATIONS_PAGE", 2)
    settings = make_settings()
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


async def test_since_hands_older_clients_the_cursor(make_settings, db, monkeypatch):
    monkeypatch.setattr(store, "SINCE_MARGIN", dt.timedelta(0))
    settings = make_settings()
    old, new = await certificates(db, 2)
    await revoke(db, [old], None)
    between = await db.fetchval("SELECT clock_timestamp()")  # after the first commit, before the second
    await revoke(db, [new], None)
    async with running_stack(settings, workers=0) as stack:
        body = await (await stack.client.get("/v1/revocations", params={"since": between.isoformat()})).json()
        assert [h["hash"] for h in body["hashes"]] == [uvci_hash(new)]
        later = await (await stack.client.get("/v1/revocations", params={"since": "2999-01-01T00:00:00Z"})).json()
        assert later["hashes"] == [] and later["complete"]
        assert (await (await stack.client.get(later["next"])).json())["hashes"] == []  # nothing older comes back
        newer = (await certificates(db, 1, first=10))[0]
        await revoke(db, [newer], None)
        assert [h["hash"] for h in (await (await stack.client.get(later["next"])).json())["hashes"]] == [
            uvci_hash(newer)]
