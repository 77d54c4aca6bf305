"""Schema migrations: plain SQL files applied in order, each recorded once.

Each file runs in its own transaction under an advisory lock, so several
processes starting at once apply it exactly once. Running again is a no-op.
"""

from __future__ import annotations

import importlib.resources
import logging

import asyncpg

from . import SCHEMA_LOCK, partitions

log = logging.getLogger(__name__)



def migration_files() -> list[tuple[str, str]]:
    """(version, sql) for every file in storage/migrations, in order."""
    folder = importlib.resources.files(__package__) / "migrations"
    files = sorted(f for f in folder.iterdir() if f.name.endswith(".sql"))
    return [(f.name.removesuffix(".sql"), f.read_text()) for f in files]


async def migrate(conn: asyncpg.Connection) -> list[str]:
    """Apply pending migrations and create partitions ahead; returns what ran."""
    applied: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", SCHEMA_LOCK)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for version, sql in migration_files():
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", version)
            log.info("applied migration %s", version)
            applied.append(version)
        await partitions.ensure_partitions(conn)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", SCHEMA_LOCK)
    return applied
