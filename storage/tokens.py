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


# Whoever a digest names, site or province/operator token, in one statement: an unknown token (every guess)
# costs one round trip of two unique-index probes, not two round trips.
_PRINCIPAL = """
SELECT 'site' AS role, site_id, code, province AS scope FROM sites WHERE token_hash = $1 AND active
UNION ALL
SELECT role, NULL, NULL, scope FROM tokens WHERE token_hash = $1
LIMIT 1
"""


async def principal_by_hash(conn: asyncpg.Connection, digest: bytes) -> asyncpg.Record | None:
    """(role, site_id, code, scope) of an active site's token (role "site", scope its province) or of a
    province or operator token (site_id and code NULL); None for an unknown digest."""
    return await conn.fetchrow(_PRINCIPAL, digest)
