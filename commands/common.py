"""What the command modules share: the deployment's settings and database, paging, CSV, dates."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from deploy import local
from deploy.local import ConfigError  # noqa: F401 (a usage error: exit 2; raised by the command modules)
from deploy.stack import on_database  # noqa: F401 (a command's own connection to the deployment's database)
from storage.sites import site_id_by_code
from vaxline import csvsafe

PAGE = 10_000


def settings_for(data_dir: Path):
    """The deployment's settings: the environment, or a `vaxline run` running on the same data folder."""
    return local.settings_for(data_dir)


async def site_id_of(conn, code: str | None) -> int | None:
    """The site id of a --site code (None without one); a usage error for an unknown code."""
    if code is None:
        return None
    found = await site_id_by_code(conn, code)
    if found is None:
        raise ConfigError(f"no site {code!r}")
    return found


async def every_page(page_at) -> list[dict]:
    """Every row of a listing read PAGE rows at a time: `page_at(offset)` answers (rows, total)."""
    rows: list[dict] = []
    while True:
        page, _ = await page_at(len(rows))
        rows.extend(dict(r) for r in page)
        if len(page) < PAGE:
            return rows


def write_csv(path: Path | None, columns, rows: list[dict]) -> None:
    import csv

    out = path.open("w", newline="", encoding="utf-8") if path else sys.stdout
    try:
        writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(map(csvsafe.record, rows))  # spreadsheets read names and notes as text, never formulas
    finally:
        if path:
            out.close()


def date_arg(text: str):
    import datetime as dt

    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from None
