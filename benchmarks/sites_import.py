"""Site registry import: a national registry file, imported twice, beside a raw COPY of the same rows.

    python -m benchmarks.sites_import [--sites 20000] [--mobile 4000]

Generates a registry CSV (fixed sites across the 63 provinces and mobile
teams, each under a fixed site), imports it into a fresh database (in
DATABASE_URL's server, or the embedded default in a temporary folder) the way
`vaxline sites import` does (read, validate, COPY into a temporary table, one
upsert, one parent update), then imports the same file again, which must
change nothing. Prints each import's time and rows/s, split into validating
and storing, and, as the reference from the same run, a bare COPY of the same
records into an unindexed table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from deploy.stack import admin
from storage.migrate import migrate
from storage.sites import import_sites, registered_codes
from deploy import embedded
from vaxline.provinces import PROVINCES
from vaxline.siteimport import parse_sites

HEADER = "code,name,province,district,kind,parent"


def write_registry(path: Path, sites: int, mobile: int) -> None:
    """`sites` rows in all, the last `mobile` of them teams under the fixed sites, round robin."""
    provinces = sorted(PROVINCES)
    fixed = sites - mobile
    with path.open("w", encoding="utf-8") as out:
        out.write(HEADER + "\n")
        for n in range(fixed):
            province = provinces[n % len(provinces)]
            out.write(f"{province:02d}-TYT-{n:06d},Trạm Y tế xã số {n},{province},Huyện {n % 17 + 1},fixed,\n")
        for n in range(mobile):
            parent = n % fixed
            province = provinces[parent % len(provinces)]
            out.write(f"{province:02d}-LD-{n:06d},Đội tiêm lưu động số {n},{province},Huyện {parent % 17 + 1},mobile,"
                      f"{province:02d}-TYT-{parent:06d}\n")


async def import_once(database_url: str, path: Path) -> tuple[str, float, float]:
    """(the command's summary line, seconds validating, seconds storing), as `vaxline sites import` does it."""
    conn = await asyncpg.connect(database_url)
    try:
        started = time.perf_counter()
        text = path.read_text(encoding="utf-8-sig")
        registry = parse_sites(io.StringIO(text, newline=""), registered=await registered_codes(conn))
        validated = time.perf_counter()
        counts = await import_sites(conn, registry.sites, parents=registry.has_parents)
        stored = time.perf_counter()
    finally:
        await conn.close()
    summary = (f"{registry.rows:,} rows: {counts.added:,} added, {counts.updated:,} updated,"
               f" {counts.unchanged:,} unchanged, {len(registry.rejected):,} rejected")
    return summary, validated - started, stored - validated


async def copy_reference(database_url: str, path: Path) -> float:
    """Seconds for a bare COPY of the same validated records into an unindexed table."""
    registry = parse_sites(io.StringIO(path.read_text(encoding="utf-8"), newline=""))
    records = [(s.code, s.name, s.province, s.district, s.kind, s.parent) for s in registry.sites]
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("CREATE TABLE sites_reference (code text, name text, province smallint, district text,"
                           " kind text, parent text)")
        started = time.perf_counter()
        await conn.copy_records_to_table("sites_reference", records=records)
        elapsed = time.perf_counter() - started
        await conn.execute("DROP TABLE sites_reference")
    finally:
        await conn.close()
    return elapsed


async def _migrate(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await migrate(conn)
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sites_import", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sites", type=int, default=20_000, help="rows in the registry file")
    parser.add_argument("--mobile", type=int, default=4_000, help="of which mobile teams")
    args = parser.parse_args()
    if not 0 <= args.mobile < args.sites:
        parser.error("--mobile must be at least 0 and less than --sites")

    folder = Path(tempfile.mkdtemp(prefix="vaxline-sites-bench-"))
    server_url, embedded_server = os.environ.get("DATABASE_URL"), None
    if not server_url:
        embedded.silence_pgserver_warnings()
        embedded_server, server_url = embedded.start_postgres(folder / "postgres")
    name = f"vaxline_sites_bench_{secrets.token_hex(3)}"
    database_url = urlunsplit(urlsplit(server_url)._replace(path=f"/{name}"))
    asyncio.run(admin(server_url, f"CREATE DATABASE {name}"))
    try:
        asyncio.run(_migrate(database_url))
        path = folder / "sites.csv"
        write_registry(path, args.sites, args.mobile)
        print(f"\nvaxline sites import benchmark ({os.cpu_count()} cores; {args.sites:,} sites,"
              f" {args.mobile:,} of them mobile teams under a fixed site; {path.stat().st_size / 2**20:.1f} MiB CSV)")
        for label in ("first import (all new)", "second import (same file)"):
            summary, validating, storing = asyncio.run(import_once(database_url, path))
            total = validating + storing
            print(f"  {label:<26} {total:6.2f} s  {args.sites / total:>9,.0f} rows/s"
                  f"  (validate {validating:.2f} s, store {storing:.2f} s)  {summary}")
        reference = asyncio.run(copy_reference(database_url, path))
        print(f"  {'reference: bare COPY':<26} {reference:6.2f} s  {args.sites / reference:>9,.0f} rows/s"
              "  (same records, unindexed table, no upsert)")
    finally:
        with contextlib.suppress(Exception):
            asyncio.run(admin(server_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        if embedded_server:  # stopped before its folder goes: pg_ctl needs the data directory
            embedded_server.cleanup()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
