"""`vaxline registry import` and `vaxline import` (back-entry): files into the deployment."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path


from vaxline.config import Settings

from .common import settings_for


def add_parsers(commands) -> None:
    registry = commands.add_parser("registry", help="the national population registry"
                                   ).add_subparsers(dest="registry_command", required=True)
    registry_import = registry.add_parser(
        "import", help="import an extract (CSV) and reconcile persons against it; exit 1 if rows were rejected")
    registry_import.add_argument("file", type=Path, metavar="FILE.csv",
                                 help="header national_id,full_name,birth_date,sex")
    registry_import.set_defaults(func=cmd_registry_import)

    back_entry = commands.add_parser(
        "import", help="back-entry: import a site's doses from a CSV or XLSX file through the validation and"
        " stream of POST /v1/doses; exit 1 if rows were rejected (see FILE.errors.csv/.xlsx)")
    back_entry.add_argument("file", nargs="?", type=Path, metavar="FILE", help="CSV or XLSX, the template's columns")
    back_entry.add_argument("--site", metavar="CODE", help="the site that gave these doses (direct import)")
    back_entry.add_argument("--url", help="import over HTTP instead: POST /v1/doses of ingest at URL"
                            " (e.g. http://127.0.0.1:8080), with --token")
    back_entry.add_argument("--token", default=os.environ.get("VAXLINE_SITE_TOKEN"),
                            help="with --url: the site's bearer token (default $VAXLINE_SITE_TOKEN)")
    back_entry.add_argument("--resume", action="store_true",
                            help="go on after the last row an interrupted import of this file had sent")
    back_entry.add_argument("--no-wait", dest="wait", action="store_false",
                            help="do not wait for the receipts (new and duplicate counts)")
    back_entry.add_argument("--wait-timeout", type=float, default=30.0, metavar="SECONDS",
                            help="stop waiting for receipts once none came for this long (default 30)")
    back_entry.add_argument("--template", type=Path, metavar="OUT.xlsx",
                            help="write the back-entry template (XLSX; CSV for a .csv name) and exit")
    back_entry.add_argument("--batch-size", type=int, default=1000, help=argparse.SUPPRESS)
    back_entry.set_defaults(func=cmd_import)


def cmd_registry_import(args) -> int:
    """Import a population-registry extract, streamed, and reconcile persons against it.

    Each rejected row is reported as `line N: field: reason` (the first 100 rows; never a value:
    they are personal data); the good rows import anyway. A national ID repeated in the file: the
    later row wins. Exit 0, 1 when rows were rejected, 2 when the file is not an extract.
    """
    import datetime as dt

    import asyncpg
    from tqdm import tqdm

    from storage import registry as store

    from vaxline import registry

    # Only Postgres is needed: DATABASE_URL alone will do.
    database_url = Settings.from_env(data_dir=args.data_dir).database_url or settings_for(args.data_dir).database_url
    shown_rows, started = 100, time.monotonic()
    try:
        extract = args.file.open("rb")
        rows = registry.read_extract(extract, today=dt.datetime.now(dt.timezone(dt.timedelta(hours=7))).date())
    except (OSError, registry.ExtractError) as e:
        print(f"vaxline registry import: {args.file}: {getattr(e, 'strerror', None) or e}", file=sys.stderr)
        return 2
    bar = tqdm(total=args.file.stat().st_size, unit="B", unit_scale=True, unit_divisor=1024, desc="registry",
               file=sys.stderr, disable=None)
    total = store.ImportCounts()

    def on_chunk(chunk, counts):
        for line, errors in chunk.rejected[:max(0, shown_rows - total.rejected)]:
            for error in errors:
                tqdm.write(f"line {line}: {error.field}: {error.reason}", file=sys.stderr)
        total.add(counts)
        bar.set_postfix_str(f"{total.rows:,} rows, {total.rows / (time.monotonic() - started):,.0f} rows/s",
                            refresh=False)
        bar.update(chunk.position - bar.n)

    async def run():
        conn = await asyncpg.connect(database_url)
        try:
            await store.import_extract(conn, registry.chunks(rows, store.CHUNK_ROWS, position=extract.tell),
                                       on_chunk=on_chunk)
            return await store.status_counts(conn)
        finally:
            await conn.close()

    try:
        with extract, bar:
            statuses = asyncio.run(run())
    except store.ImportRunning as e:
        print(f"vaxline registry import: {e}", file=sys.stderr)
        return 2
    if total.rejected > shown_rows:
        print(f"... and {total.rejected - shown_rows:,} more rejected rows", file=sys.stderr)
    print(f"{total.rows} rows: {total.added} added, {total.updated} updated, {total.unchanged} unchanged,"
          f" {total.rejected} rejected; {sum(statuses.values())} persons reconciled: "
          + ", ".join(f"{status} {count}" for status, count in statuses.items()))
    return 1 if total.rejected else 0


def cmd_import(args) -> int:
    """Import a site's back-entry file (backentry/). Exit 0 when every row was accepted, 1 when
    some were rejected (the others are imported; the rejected ones are in FILE.errors.*), 2 on a usage
    error: unknown site, unreadable file, unknown or missing columns."""
    from tqdm import tqdm

    from backentry.importer import import_file
    from backentry.readers import UsageError
    from backentry.senders import HttpSender, StreamSender
    from backentry.template import write_template

    if args.template:
        write_template(args.template)
        print(f"template written to {args.template}")
        return 0
    problem = ("FILE is needed (or --template OUT.xlsx)" if args.file is None
               else "--site CODE is needed (or --url URL --token TOKEN)" if not args.url and not args.site
               else "--url needs --token (or VAXLINE_SITE_TOKEN)" if args.url and not args.token
               else "--batch-size must be 1-1000" if not 1 <= args.batch_size <= 1000 else None)
    if problem:
        print(f"vaxline import: {problem}", file=sys.stderr)
        return 2

    def waiting(reason: str, seconds: float) -> None:
        tqdm.write(f"vaxline import: {reason}; retrying in {seconds:g} s", file=sys.stderr)

    sender = (HttpSender(args.url, args.token, on_wait=waiting) if args.url
              else StreamSender(settings_for(args.data_dir), args.site, on_wait=waiting))

    async def run():
        async with sender:
            return await import_file(args.file, sender, resume=args.resume, wait=args.wait,
                                               wait_timeout=args.wait_timeout, batch_doses=args.batch_size)

    try:
        summary = asyncio.run(run())
    except UsageError as e:
        print(f"vaxline import: {args.file}: {e}", file=sys.stderr)
        return 2
    print("\n".join(summary.lines()))
    return 1 if summary.rejected or summary.failed else 0
