"""Unknown bearer tokens (issue 16, item 7): cached apart, one query each, never more than a few at a time.

Covers: an unknown token costs one query, and none again while it is cached (negative caching); 100,001
unknown tokens leave a real site's cached entry in place (only the oldest unknown ones are dropped); a
known token whose ttl ran out is refreshed without waiting behind unknown ones; a flood of concurrent
unknown tokens holds at most `unknown_lookups` pool connections, leaving the rest to real requests, and
a lookup that waits too long for its turn fails as unavailable (503), not by hanging; the one statement
answers sites, provinces and the operator alike against real Postgres. Renewals: every known token asked for
again in one statement, so a post never waits for its token's answer and a deactivated token stops working at
the next renewal; a renewal that fails is retried and leaves the answers to run out as before.
"""

from __future__ import annotations

import asyncio

import pytest

from ingest.auth import SiteAuth, TokenCache
from storage import tokens
from storage.sites import add_site
from vaxline.tokens import token_hash


class FakePool:
    """`size` connections; a query answers from `known` (digest -> row), once `gate` is open."""

    def __init__(self, known: dict[bytes, dict], *, size: int = 4):
        self.known = known
        self.size = size
        self.in_use = 0
        self.most_in_use = 0
        self.queries = 0
        self.gate = asyncio.Event()
        self.gate.set()
        self.renewals = 0
        self.failing = False  # renewals raise, as with Postgres away

    def acquire(self):
        pool = self

        class Acquired:
            async def __aenter__(self):
                assert pool.in_use < pool.size, "the pool is exhausted"
                pool.in_use += 1
                pool.most_in_use = max(pool.most_in_use, pool.in_use)
                return pool

            async def __aexit__(self, *exc):
                pool.in_use -= 1
                return False

        return Acquired()

    async def fetchrow(self, query: str, digest: bytes):
        self.queries += 1
        await self.gate.wait()
        return self.known.get(digest)

    async def fetch(self, query: str, digests: list[bytes]):  # storage.tokens.principals_by_hash
        self.queries += 1
        self.renewals += 1
        if self.failing:
            raise OSError("Postgres is away")
        return [{"digest": d, **self.known[d]} for d in digests if d in self.known]


SITE_ROW = {"role": "site", "site_id": 7, "code": "S-007", "scope": 1}


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_a_flood_of_unknown_tokens_evicts_only_unknown_ones():
    real = "vx_real-site-token"
    pool = FakePool({token_hash(real): SITE_ROW})
    auth = SiteAuth(pool, ttl=30, clock=Clock())
    assert (await auth.site(f"Bearer {real}")).code == "S-007"
    assert pool.queries == 1
    for n in range(100_001):
        assert await auth.principal(f"Bearer vx_unknown-{n}") is None
    assert pool.queries == 1 + 100_001  # one query per unknown token, not two
    assert (await auth.site(f"Bearer {real}")).code == "S-007"
    assert pool.queries == 1 + 100_001  # the real site's entry survived the flood
    assert await auth.principal("Bearer vx_unknown-100000") is None
    assert pool.queries == 1 + 100_001  # negative caching: the newest unknown token is still cached
    assert await auth.principal("Bearer vx_unknown-0") is None
    assert pool.queries == 1 + 100_002  # the oldest unknown one was dropped, and only it


def test_the_cache_drops_the_least_recently_used_of_each_kind():
    from ingest.auth import Principal

    cache = TokenCache(max_known=2, max_unknown=2)
    site = Principal("operator")
    cache.put(b"k1", 10, site)
    cache.put(b"k2", 10, site)
    cache.get(b"k1")  # used: k2 is now the oldest known
    cache.put(b"k3", 10, site)
    assert cache.get(b"k2") is None and cache.get(b"k1") and cache.get(b"k3")
    for n in range(5):
        cache.put(f"u{n}".encode(), 10, None)
    assert cache.get(b"k1") and cache.get(b"k3") and len(cache) == 4
    cache.put(b"k1", 20, None)  # a token that stopped being known moves to the unknown side
    assert cache.get(b"k1") == (20, None) and len(cache) == 3  # k3 known; k1 and u4 unknown


async def test_concurrent_unknown_tokens_leave_the_pool_to_real_requests():
    real = "vx_real-site-token"
    pool = FakePool({token_hash(real): SITE_ROW}, size=4)
    clock = Clock()
    auth = SiteAuth(pool, ttl=30, clock=clock, unknown_lookups=2, lookup_wait=30)
    assert await auth.site(f"Bearer {real}")
    pool.gate.clear()  # Postgres slow: every lookup in flight holds its connection
    flood = [asyncio.create_task(auth.principal(f"Bearer vx_flood-{n}")) for n in range(500)]
    same = [asyncio.create_task(auth.principal("Bearer vx_same")) for _ in range(50)]
    while pool.in_use < 2:
        await asyncio.sleep(0)
    for _ in range(100):  # let every task run as far as it can
        await asyncio.sleep(0)
    assert pool.in_use == 2  # two turns for unknown tokens, whatever the flood
    clock.now = 31  # the real site's entry is stale: its refresh does not queue behind the flood
    refresh = asyncio.create_task(auth.site(f"Bearer {real}"))
    while pool.in_use < 3:
        await asyncio.sleep(0)
    async with pool.acquire():  # and a connection is left for a dose receipt, a lookup, ...
        assert pool.in_use == 4
    pool.gate.set()
    assert (await refresh).code == "S-007"
    assert await asyncio.gather(*flood, *same) == [None] * 550
    assert pool.most_in_use <= 4
    assert pool.queries == 2 + 500 + 1  # the 50 lookups of one token asked once: the others found its answer


async def test_a_lookup_that_waits_too_long_for_its_turn_fails_as_unavailable():
    pool = FakePool({})
    auth = SiteAuth(pool, unknown_lookups=1, lookup_wait=0.05)
    pool.gate.clear()
    stuck = asyncio.create_task(auth.principal("Bearer vx_first"))
    while pool.in_use < 1:
        await asyncio.sleep(0)
    with pytest.raises(TimeoutError):  # ingest.http answers it 503 with Retry-After
        await auth.principal("Bearer vx_second")
    pool.gate.set()
    assert await stuck is None


async def test_one_statement_answers_every_kind_of_token(db):
    site, site_token = await add_site(db, code="S-1", name="Site 1", province=4, kind="fixed")
    province_token = await tokens.issue(db, tokens.PROVINCE, 4)
    operator_token = await tokens.issue(db, tokens.OPERATOR, 0)

    class Pool:
        queries = 0

        def acquire(self):
            outer = self

            class Acquired:
                async def __aenter__(self):
                    outer.queries += 1
                    return db

                async def __aexit__(self, *exc):
                    return False

            return Acquired()

    pool = Pool()
    auth = SiteAuth(pool, ttl=0)
    found = await auth.principal(f"Bearer {site_token}")
    assert (found.role, found.site, found.province) == ("site", site, 4)
    assert (await auth.principal(f"Bearer {province_token}")).province == 4
    assert (await auth.principal(f"Bearer {operator_token}")).is_operator
    assert await auth.principal("Bearer vx_" + "0" * 43) is None
    assert pool.queries == 4
    await db.execute("UPDATE sites SET active = false WHERE code = 'S-1'")
    assert await auth.principal(f"Bearer {site_token}") is None


async def test_a_renewal_keeps_tokens_in_use_answered_without_a_query_on_the_post():
    real, other, idle = "vx_real-site-token", "vx_other-site-token", "vx_idle-site-token"
    pool = FakePool({token_hash(real): SITE_ROW, token_hash(other): {**SITE_ROW, "site_id": 8, "code": "S-008"},
                     token_hash(idle): {**SITE_ROW, "site_id": 9, "code": "S-009"}})
    clock = Clock()
    auth = SiteAuth(pool, ttl=30, clock=clock)
    for token in (real, other, idle):
        assert await auth.site(f"Bearer {token}")
    assert await auth.principal("Bearer vx_unknown") is None
    assert pool.queries == 4
    assert await auth.renew() == 0  # just asked for: nothing used since
    clock.now = 5
    assert await auth.site(f"Bearer {real}") and await auth.site(f"Bearer {other}")  # answered from the cache
    assert pool.queries == 4
    clock.now = 10
    assert await auth.renew() == 2  # the tokens used since, in one statement; not the idle one
    assert pool.queries == 5
    clock.now = 20
    assert await auth.renew() == 2  # still within a ttl of their use
    clock.now = 45  # past the first answers (30), within the renewed ones (50)
    assert (await auth.site(f"Bearer {real}")).code == "S-007"
    assert (await auth.site(f"Bearer {other}")).code == "S-008"
    assert pool.queries == 6
    assert (await auth.site(f"Bearer {idle}")).code == "S-009"  # never renewed: its post asks for it alone
    assert pool.queries == 7
    del pool.known[token_hash(other)]  # deactivated, or replaced by a new token
    assert await auth.renew() == 3  # the idle one is in use again too
    assert await auth.principal(f"Bearer {other}") is None  # at the renewal, not when its answer runs out
    assert (await auth.site(f"Bearer {real}")).code == "S-007"
    assert pool.queries == 8


def test_a_token_is_renewed_for_a_ttl_after_its_last_use_and_a_renewal_is_not_a_use():
    from ingest.auth import RENEWAL_ROUNDS, Principal

    cache = TokenCache(max_known=2)
    site = Principal("operator")
    cache.put(b"k1", 10, site)
    cache.put(b"k2", 10, site)
    cache.get(b"k1")
    cache.get(b"k2")  # k1 is the least recently used
    for _ in range(RENEWAL_ROUNDS):  # the round of their use, and the next ones up to a ttl
        assert sorted(cache.take_used()) == [b"k1", b"k2"]
    assert cache.take_used() == []  # unused for a ttl: their answers run out, and the next post asks
    cache.get(b"k1")
    cache.get(b"k2")
    cache.renew(b"k1", 20, site)  # k1 stays the least recently used, and a renewal is not a use
    cache.put(b"k3", 10, site)  # a new token: k1 is dropped
    assert cache.get(b"k1") is None and cache.get(b"k2") == (10, site)
    cache.renew(b"k1", 30, site)  # not brought back
    assert cache.get(b"k1") is None and cache.take_used() == [b"k2"]


async def test_renewals_run_every_third_of_the_ttl_and_go_on_after_a_failure():
    real = "vx_real-site-token"
    pool = FakePool({token_hash(real): SITE_ROW})
    auth = SiteAuth(pool, ttl=0.3)
    assert await auth.site(f"Bearer {real}")
    pool.failing = True
    task = asyncio.create_task(auth.keep_renewed())
    loop = asyncio.get_running_loop()
    try:
        deadline = loop.time() + 10
        while pool.renewals < 2 and loop.time() < deadline:
            assert await auth.site(f"Bearer {real}")  # in use: every renewal asks for it
            await asyncio.sleep(0.01)
        assert pool.renewals >= 2  # the first failed; the loop went on
        assert not task.done()
        pool.failing = False
        renewed = pool.renewals
        while pool.renewals < renewed + 2 and loop.time() < deadline:
            assert await auth.site(f"Bearer {real}")
            await asyncio.sleep(0.01)
        assert pool.renewals >= renewed + 2
    finally:
        task.cancel()
    assert await SiteAuth(pool, ttl=0).keep_renewed() is None  # no cache, nothing to renew


async def test_one_statement_renews_every_kind_of_token(db):
    site, site_token = await add_site(db, code="S-1", name="Site 1", province=4, kind="fixed")
    province_token = await tokens.issue(db, tokens.PROVINCE, 4)
    operator_token = await tokens.issue(db, tokens.OPERATOR, 0)
    digests = [token_hash(t) for t in (site_token, province_token, operator_token, "vx_" + "0" * 43)]
    rows = await tokens.principals_by_hash(db, digests)
    assert set(rows) == set(digests[:3])
    assert (rows[digests[0]]["role"], rows[digests[0]]["code"], rows[digests[0]]["scope"]) == ("site", "S-1", 4)
    assert (rows[digests[1]]["role"], rows[digests[1]]["scope"]) == (tokens.PROVINCE, 4)
    assert rows[digests[2]]["role"] == tokens.OPERATOR
    await db.execute("UPDATE sites SET active = false WHERE code = 'S-1'")
    new_operator_token = await tokens.issue(db, tokens.OPERATOR, 0)  # replaces the old one
    rows = await tokens.principals_by_hash(db, [*digests, token_hash(new_operator_token)])
    assert set(rows) == {digests[1], token_hash(new_operator_token)}
