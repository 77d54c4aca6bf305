"""The site registry: who may post doses, found by the hash of their token.

A site is never deleted: deactivating it refuses its token and keeps its doses
and statistics. Importing the registry file is an idempotent upsert by code
that touches neither tokens nor `active`, and changes `updated_at` only for a
row whose data changed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import asyncpg

from vaxline.siteimport import SiteRecord
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
        " kind = EXCLUDED.kind, token_hash = EXCLUDED.token_hash, updated_at = now()"
        " RETURNING site_id, code, province",
        code, name, province, kind, token_hash(token),
    )
    return Site(**row), token


async def site_by_code(conn: asyncpg.Connection, code: str) -> asyncpg.Record | None:
    """The registered site with this code (site_id, code, province, active), or None."""
    return await conn.fetchrow("SELECT site_id, code, province, active FROM sites WHERE code = $1", code)


async def site_id_by_code(conn: asyncpg.Connection, code: str) -> int | None:
    site = await site_by_code(conn, code)
    return site["site_id"] if site else None


async def site_by_token_hash(conn: asyncpg.Connection, digest: bytes) -> Site | None:
    row = await conn.fetchrow("SELECT site_id, code, province FROM sites WHERE token_hash = $1 AND active", digest)
    return Site(**row) if row else None


async def rotate_token(conn: asyncpg.Connection, code: str) -> tuple[Site, bool, str] | None:
    """Issue a new token for the site (its old one stops working): (site, active, token), or None."""
    token = new_token()
    row = await conn.fetchrow(
        "UPDATE sites SET token_hash = $2, updated_at = now() WHERE code = $1"
        " RETURNING site_id, code, province, active", code, token_hash(token))
    if row is None:
        return None
    return Site(row["site_id"], row["code"], row["province"]), row["active"], token


async def set_active(conn: asyncpg.Connection, code: str, active: bool) -> bool | None:
    """Activate or deactivate a site: True when that changed it, False when it was so already, None
    for an unknown code. Its doses, statistics and token hash stay either way."""
    return await conn.fetchval(
        "UPDATE sites s SET active = $2, updated_at = CASE WHEN old.active = $2 THEN s.updated_at ELSE now() END"
        " FROM (SELECT site_id, active FROM sites WHERE code = $1 FOR UPDATE) old"
        " WHERE s.site_id = old.site_id RETURNING old.active <> $2", code, active)


async def registered_codes(conn: asyncpg.Connection) -> set[str]:
    """Every registered site's code: the parents a registry file may name besides its own rows."""
    return {code for (code,) in await conn.fetch("SELECT code FROM sites")}


@dataclasses.dataclass(frozen=True, slots=True)
class ImportCounts:
    added: int
    updated: int
    unchanged: int


_SITE_FIELDS = ("code", "name", "province", "district", "kind", "parent")


async def import_sites(conn: asyncpg.Connection, sites: Sequence[SiteRecord], *, parents: bool = True) -> ImportCounts:
    """Upsert validated sites by code, in one transaction: new ones get no token (`sites token` issues
    it), existing ones keep theirs. With `parents`, each site's parent becomes the site its record
    names (none when it names none); without, parents are left as they are. Every parent code must be
    in `sites` or registered (vaxline.siteimport guarantees it)."""
    async with conn.transaction():
        await conn.execute(
            "CREATE TEMP TABLE site_import (code text PRIMARY KEY, name text, province smallint, district text,"
            " kind text, parent text) ON COMMIT DROP")
        await conn.copy_records_to_table(
            "site_import", columns=_SITE_FIELDS,
            records=[(s.code, s.name, s.province, s.district, s.kind, s.parent) for s in sites])
        written = await conn.fetch(
            "INSERT INTO sites AS s (code, name, province, district, kind)"
            " SELECT code, name, province, district, kind FROM site_import"
            " ON CONFLICT (code) DO UPDATE SET name = EXCLUDED.name, province = EXCLUDED.province,"
            " district = EXCLUDED.district, kind = EXCLUDED.kind, updated_at = now()"
            " WHERE (s.name, s.province, s.district, s.kind)"
            "   IS DISTINCT FROM (EXCLUDED.name, EXCLUDED.province, EXCLUDED.district, EXCLUDED.kind)"
            " RETURNING s.code, (s.xmax = 0) AS added")
        added = {row["code"] for row in written if row["added"]}
        updated = {row["code"] for row in written if not row["added"]}
        if parents:
            # After the insert: a parent may be a site this same import adds.
            reparented = await conn.fetch(
                "UPDATE sites s SET parent_id = p.site_id, updated_at = now()"
                " FROM site_import i LEFT JOIN sites p ON p.code = i.parent"
                " WHERE s.code = i.code AND s.parent_id IS DISTINCT FROM p.site_id RETURNING s.code")
            updated |= {row["code"] for row in reparented} - added
    return ImportCounts(added=len(added), updated=len(updated), unchanged=len(sites) - len(added) - len(updated))
