"""Bearer-token authentication of sites, with a short cache.

A desk posts every few minutes over a held connection; looking its token up
in Postgres each time would put the database on the ingest path. Answers
(known and unknown tokens alike) are cached for `ttl` seconds, so a rotated
or deactivated token stops working within that time, and ingest keeps
accepting from known sites while Postgres is briefly unreachable.
"""

from __future__ import annotations

import time

import asyncpg

from storage.sites import Site, site_by_token_hash
from vaxline.tokens import token_hash


class SiteAuth:
    def __init__(self, pool: asyncpg.Pool, *, ttl: float = 30.0, clock=time.monotonic):
        self._pool = pool
        self._ttl = ttl
        self._clock = clock
        self._cache: dict[bytes, tuple[float, Site | None]] = {}

    async def site(self, authorization: str | None) -> Site | None:
        """The site a `Bearer` header names, or None."""
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        token = token.strip()
        key = token_hash(token)
        now = self._clock()
        cached = self._cache.get(key)
        if cached and cached[0] > now:
            return cached[1]
        async with self._pool.acquire() as conn:
            site = await site_by_token_hash(conn, key)
        if len(self._cache) > 100_000:  # bounded: unknown tokens must not grow it forever
            self._cache.clear()
        self._cache[key] = (now + self._ttl, site)
        return site
