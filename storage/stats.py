"""Statistics: counted doses per day, province, site, product and dose number.

`dose_stats` is written in the same transaction as the doses it counts (storage.doses, storage.corrections),
so these figures equal a count over `doses` at every commit: probable duplicates and withdrawn records
excluded, a corrected record counted where its correction put it. A site's province is read from the
registry at query time, so moving a site moves its history with it, as a count over `doses` would.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

import asyncpg

# group_by value -> (SQL expression, key in the answer)
GROUPS: dict[str, str] = {
    "day": "s.day",
    "province": "si.province",
    "site": "si.code",
    "product": "s.vaccine",
    "dose": "s.dose_number",
}


@dataclasses.dataclass(frozen=True, slots=True)
class StatsQuery:
    first: dt.date
    last: dt.date
    group_by: tuple[str, ...] = ("day",)
    province: int | None = None
    site_id: int | None = None


async def counted_doses(conn: asyncpg.Connection, query: StatsQuery) -> list[dict]:
    """One row per group: its keys and "doses"; groups with no counted dose are left out."""
    keys = ", ".join(f"{GROUPS[g]} AS {g}" for g in query.group_by)
    where, args = ["s.day BETWEEN $1 AND $2"], [query.first, query.last]
    if query.province is not None:
        args.append(query.province)
        where.append(f"si.province = ${len(args)}")
    if query.site_id is not None:
        args.append(query.site_id)
        where.append(f"s.site_id = ${len(args)}")
    positions = ", ".join(str(i + 1) for i in range(len(query.group_by)))
    rows = await conn.fetch(
        f"SELECT {keys + ',' if keys else ''} sum(s.doses)::bigint AS doses"
        f" FROM dose_stats s JOIN sites si USING (site_id) WHERE {' AND '.join(where)}"
        + (f" GROUP BY {positions} HAVING sum(s.doses) <> 0 ORDER BY {positions}" if keys else ""),
        *args)
    return [dict(r) for r in rows if r["doses"]]
