"""The site registry: who may post doses, found by the hash of their token."""

from __future__ import annotations

import dataclasses

import asyncpg

from vaxline.tokens import new_token, token_hash


@dataclasses.dataclass(frozen=True, slots=True)
class Site:
    site_id: int
    code: str
    province: int


async def add_site(conn: asyncpg.Connection, *, code: str, name: str, province: int, kind: str) -> tuple[Site, str]:
    """Register a site (or update its name, province and kind) and issue a new token."""
    token = new_token()
    row = await conn.fetchrow(
        "INSERT INTO sites (code, name, province, kind, token_hash) VALUES ($1, $2, $3, $4, $5)"
        " ON CONFLICT (code) DO UPDATE SET name = EXCLUDED.name, province = EXCLUDED.province,"
        " kind = EXCLUDED.kind, token_hash = EXCLUDED.token_hash"
        " RETURNING site_id, code, province",
        code, name, province, kind, token_hash(token),
    )
    return Site(**row), token


async def site_by_token_hash(conn: asyncpg.Connection, digest: bytes) -> Site | None:
    row = await conn.fetchrow("SELECT site_id, code, province FROM sites WHERE token_hash = $1 AND active", digest)
    return Site(**row) if row else None
