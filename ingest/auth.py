"""Bearer-token authentication, with a short cache.

Three kinds of token: a site's (it posts and corrects its own doses and reads its own data), a
province's (reads its province's statistics and review list) and the operator's (the national view).
A desk posts every few minutes over a held connection; looking its token up in Postgres each time
would put the database on the ingest path. Answers (known and unknown tokens alike) are cached for
`ttl` seconds, so a rotated or deactivated token stops working within that time, and ingest keeps
accepting from known sites while Postgres is briefly unreachable.

Tokens in use are renewed together, before their answers run out: every `ttl / RENEWAL_ROUNDS` (10) seconds
one statement asks again for every known token used within the last ttl (`keep_renewed`, a task of each
ingest process).
A token posting at least every 40 s or so then never waits on Postgres, and one deactivated or replaced
stops working at the next renewal. Tokens unused for a ttl are not asked for, so a renewal asks for no
more tokens than posted in the last ttl, in one statement; their answers run out as before, and their
next post asks for its token alone. Before, every answer ran out after the ttl and the next post paid a
Postgres round trip: over 150 s of a sessions load test's hold (4,200 desks at 100 sites over 4 ingest
processes, so a site's desks reach one process every 19 s or so) 1,223 of 3,167 site requests did; with
renewals 214 did, beside 60 renewals of 4,585 tokens in all. A renewal that fails leaves the answers to
run out as before.

Unknown tokens are what an attacker can make without end, so they are kept apart: cached in their own
bounded LRU (a flood of them pushes out only older unknown tokens, never a site's entry), looked up one
query each (sites and tokens in one statement), and at most `unknown_lookups` at a time, so they never
hold more than that many of the pool's connections; a lookup that waits past `lookup_wait` for its turn
fails as Postgres being unavailable (503). A known token's refresh after its ttl takes no turn.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import time

import asyncpg

from storage import tokens
from storage.sites import Site
from vaxline.tokens import token_hash

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class Principal:
    """Who a token speaks for: a site, a province (read-only), or the national operator."""

    role: str  # "site", tokens.PROVINCE or tokens.OPERATOR
    site: Site | None = None
    province: int | None = None  # a site's or a province token's province

    @property
    def is_operator(self) -> bool:
        return self.role == tokens.OPERATOR


MAX_KNOWN = 100_000  # more than the tokens of every site, province and operator of a country
MAX_UNKNOWN = 100_000  # about 20 MB per ingest process
UNKNOWN_LOOKUPS = 2  # of ingest's 4 Postgres connections: the others stay for doses, receipts and lookups
LOOKUP_WAIT = 2.0  # seconds an unknown token waits for its turn, as long as a pool acquire may
RENEW_CHUNK = 10_000  # digests a renewal asks for in one statement
# Renewals a ttl: one every ttl / RENEWAL_ROUNDS seconds, and a token is renewed for as many after its last use
# (a ttl), so one that posts at least every ttl + a round or so never waits.
RENEWAL_ROUNDS = 3


class TokenCache:
    """Answers by token digest, (expires, principal): known tokens and unknown ones in two LRUs, each
    bounded, the least recently used dropped first. Used on the event loop only: no lock."""

    def __init__(self, *, max_known: int = MAX_KNOWN, max_unknown: int = MAX_UNKNOWN):
        self._known: collections.OrderedDict[bytes, tuple[float, Principal]] = collections.OrderedDict()
        self._unknown: collections.OrderedDict[bytes, tuple[float, None]] = collections.OrderedDict()
        self._max_known, self._max_unknown = max_known, max_unknown
        # The known tokens answered from here in each of the last RENEWAL_ROUNDS rounds (take_used starts one).
        self._used: collections.deque[set[bytes]] = collections.deque([set()], maxlen=RENEWAL_ROUNDS)

    def __len__(self) -> int:
        return len(self._known) + len(self._unknown)

    def get(self, key: bytes) -> tuple[float, Principal | None] | None:
        for entries in (self._known, self._unknown):
            entry = entries.get(key)
            if entry is not None:
                entries.move_to_end(key)
                if entries is self._known:
                    self._used[-1].add(key)
                return entry
        return None

    def put(self, key: bytes, expires: float, principal: Principal | None) -> None:
        if principal is not None:
            entries, other, bound = self._known, self._unknown, self._max_known
        else:
            entries, other, bound = self._unknown, self._known, self._max_unknown
        other.pop(key, None)  # a token that became known, or stopped being
        entries[key] = (expires, principal)
        entries.move_to_end(key)
        while len(entries) > bound:
            entries.popitem(last=False)

    def take_used(self) -> list[bytes]:
        """The known tokens still cached that were looked up here within the last RENEWAL_ROUNDS calls (this
        round included), and a new round begun."""
        used = [key for key in set().union(*self._used) if key in self._known]
        self._used.append(set())
        return used

    def renew(self, key: bytes, expires: float, principal: Principal | None) -> None:
        """A fresh answer for a known token, keeping its place in the LRU (a renewal is not a use); one that
        stopped being known moves to the unknown side. A token dropped from the cache meanwhile stays out."""
        if key not in self._known:
            return
        if principal is None:
            self.put(key, expires, None)
        else:
            self._known[key] = (expires, principal)

    def clear(self) -> None:
        self._known.clear()
        self._unknown.clear()


class SiteAuth:
    def __init__(self, pool: asyncpg.Pool, *, ttl: float = 30.0, clock=time.monotonic,
                 cache: TokenCache | None = None, unknown_lookups: int = UNKNOWN_LOOKUPS,
                 lookup_wait: float = LOOKUP_WAIT):
        self._pool = pool
        self._ttl = ttl
        self._clock = clock
        self._cache = cache or TokenCache()
        self._turns = asyncio.BoundedSemaphore(unknown_lookups)  # lookups of tokens not known to be real
        self._lookup_wait = lookup_wait

    async def site(self, authorization: str | None) -> Site | None:
        """The site a `Bearer` header names, or None (also for a province or operator token)."""
        principal = await self.principal(authorization)
        return principal.site if principal else None

    async def principal(self, authorization: str | None) -> Principal | None:
        """Whoever a `Bearer` header names, or None."""
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        key = token_hash(token.strip())
        cached = self._cache.get(key)
        if cached and cached[0] > self._clock():
            return cached[1]
        if cached and cached[1] is not None:  # a real token's refresh: attackers cannot make these
            return await self._lookup(key)
        return await self._lookup_unknown(key)

    async def _lookup_unknown(self, key: bytes) -> Principal | None:
        """A token not known to be real: one of `unknown_lookups` at a time, then asked of Postgres unless
        a lookup of the same token answered while this one waited."""
        async with asyncio.timeout(self._lookup_wait):  # TimeoutError: a 503, as a pool that is exhausted
            await self._turns.acquire()
        try:
            cached = self._cache.get(key)
            if cached and cached[0] > self._clock():
                return cached[1]
            return await self._lookup(key)
        finally:
            self._turns.release()

    async def _lookup(self, key: bytes) -> Principal | None:
        asked = self._clock()  # the answer holds from when it was asked for
        async with self._pool.acquire() as conn:
            row = await tokens.principal_by_hash(conn, key)
        principal = _principal(row)
        self._cache.put(key, asked + self._ttl, principal)
        return principal

    async def renew(self) -> int:
        """Ask again for every known token used within the last ttl, in one statement (RENEW_CHUNK digests at a
        time); how many."""
        keys = self._cache.take_used()
        for start in range(0, len(keys), RENEW_CHUNK):
            chunk = keys[start:start + RENEW_CHUNK]
            asked = self._clock()
            async with self._pool.acquire() as conn:
                rows = await tokens.principals_by_hash(conn, chunk)
            for key in chunk:
                self._cache.renew(key, asked + self._ttl, _principal(rows.get(key)))
        return len(keys)

    async def keep_renewed(self) -> None:
        """Renew the tokens in use every ttl / RENEWAL_ROUNDS seconds, until cancelled (nothing to do with a ttl of
        0)."""
        if self._ttl <= 0:
            return
        every = self._ttl / RENEWAL_ROUNDS
        while True:
            await asyncio.sleep(every)
            try:
                await self.renew()
            except Exception as e:  # Postgres away, or a bug: either way the next round tries again
                # The answers run out as they did before renewals; each token's next post asks for it alone.
                log.warning("renewing the known tokens failed (%s); retried in %g s", type(e).__name__, every)


def _principal(row) -> Principal | None:
    if row is None:
        return None
    if row["role"] == "site":
        site = Site(row["site_id"], row["code"], row["scope"])
        return Principal("site", site=site, province=site.province)
    return Principal(row["role"], province=row["scope"] if row["role"] == tokens.PROVINCE else None)
