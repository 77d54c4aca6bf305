"""Bearer-token authentication, with a short cache.

Three kinds of token: a site's (it posts and corrects its own doses and reads its own data), a
province's (reads its province's statistics and review list) and the operator's (the national view).
A desk posts every few minutes over a held connection; looking its token up in Postgres each time
would put the database on the ingest path. Answers (known and unknown tokens alike) are cached for
`ttl` seconds, so a rotated or deactivated token stops working within that time, and ingest keeps
accepting from known sites while Postgres is briefly unreachable.
"""

from __future__ import annotations

import dataclasses
import time

import asyncpg

from storage import tokens
from storage.sites import Site, site_by_token_hash
from vaxline.tokens import token_hash


@dataclasses.dataclass(frozen=True, slots=True)
class Principal:
    """Who a token speaks for: a site, a province (read-only), or the national operator."""

    role: str  # "site", tokens.PROVINCE or tokens.OPERATOR
    site: Site | None = None
    province: int | None = None  # a site's or a province token's province

    @property
    def is_operator(self) -> bool:
        return self.role == tokens.OPERATOR


class SiteAuth:
    def __init__(self, pool: asyncpg.Pool, *, ttl: float = 30.0, clock=time.monotonic):
        self._pool = pool
        self._ttl = ttl
        self._clock = clock
        self._cache: dict[bytes, tuple[float, Principal | None]] = {}

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
        now = self._clock()
        cached = self._cache.get(key)
        if cached and cached[0] > now:
            return cached[1]
        async with self._pool.acquire() as conn:
            principal = await _lookup(conn, key)
        if len(self._cache) > 100_000:  # bounded: unknown tokens must not grow it forever
            self._cache.clear()
        self._cache[key] = (now + self._ttl, principal)
        return principal


async def _lookup(conn: asyncpg.Connection, key: bytes) -> Principal | None:
    site = await site_by_token_hash(conn, key)
    if site is not None:
        return Principal("site", site=site, province=site.province)
    row = await tokens.by_hash(conn, key)
    if row is None:
        return None
    return Principal(row["role"], province=row["scope"] if row["role"] == tokens.PROVINCE else None)
