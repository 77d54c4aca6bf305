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


# The same answer for many digests at once (ingest renewing every token it knows): one round trip, the same
# two unique-index probes per digest.
_PRINCIPALS = """
SELECT i.digest, p.role, p.site_id, p.code, p.scope
FROM unnest($1::bytea[]) AS i(digest)
CROSS JOIN LATERAL (
""" + _PRINCIPAL.replace("$1", "i.digest") + """) p
"""


async def principals_by_hash(conn: asyncpg.Connection, digests: list[bytes]) -> dict[bytes, asyncpg.Record]:
    """principal_by_hash of each digest, by digest; an unknown digest has no entry."""
    return {row["digest"]: row for row in await conn.fetch(_PRINCIPALS, digests)}
