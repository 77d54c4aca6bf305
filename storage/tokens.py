"""Province and operator tokens: read-only views beyond one site.

One live token per scope (a province, or the national operator): issuing a new one replaces the old,
which stops working. Like site tokens, only the SHA-256 is stored and lookup is by hash.
"""

from __future__ import annotations

import asyncpg

from vaxline.tokens import new_token, token_hash

OPERATOR = "operator"
PROVINCE = "province"


async def issue(conn: asyncpg.Connection, role: str, scope: int = 0) -> str:
    """A new token for the role's scope (province code, or 0 for the operator); the old one stops working."""
    token = new_token()
    await conn.execute(
        "INSERT INTO tokens (role, scope, token_hash) VALUES ($1, $2, $3)"
        " ON CONFLICT (role, scope) DO UPDATE SET token_hash = EXCLUDED.token_hash, created_at = now()",
        role, scope, token_hash(token))
    return token


async def by_hash(conn: asyncpg.Connection, digest: bytes) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT role, scope FROM tokens WHERE token_hash = $1", digest)
