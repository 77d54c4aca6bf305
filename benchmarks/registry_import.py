"""Population-registry import: `vaxline registry import` of a generated extract, beside psql COPY.

    python -m benchmarks.registry_import [--rows 1000000] [--persons 500000]

On DATABASE_URL or the embedded default (a new database either way, migrated), writes an extract of
N rows to a temporary file (12-digit CCCDs, Vietnamese names, ISO birth dates), and P persons, half
the registry's people, as the persist transaction would have left them: most with the registry's
name, some without diacritics or in capitals, a few with another name or birth date, and some the
registry does not know. Then runs the real command as an operator would, twice (the first import,
which reconciles every person, then the same file again, which changes nothing), and prints rows/s
and the command's peak memory, beside what the same machine does in the same run: reading and
validating the file alone (no database), and psql `COPY` of the same file into a plain table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import os
import resource
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import unicodedata
from pathlib import Path

import asyncpg

from deploy.embedded import psql_binary
from deploy.stack import admin, with_database
from storage.migrate import migrate
from deploy import embedded
from vaxline import registry

ROOT = Path(__file__).resolve().parent.parent
FAMILY = ["Nguyễn", "Trần", "Lê", "Phạm", "Hoàng", "Huỳnh", "Phan", "Vũ", "Võ", "Đặng", "Bùi", "Đỗ"]
MIDDLE = ["Thị", "Văn", "Hữu", "Minh", "Ngọc", "Đức", "Thanh", "Quốc"]
GIVEN = ["Ánh", "Tuyết", "Hùng", "Lan", "Dũng", "Hoa", "Nam", "Mai", "Hải", "Phương", "Trung", "Yến", "Khoa"]


def person(n: int) -> tuple[str, str, dt.date, str]:
    """The n-th person of the registry: national ID, name, birth date, sex."""
    year = 1930 + n % 90
    female = n % 2
    national_id = f"{1 + n % 96:03d}{(0 if year < 2000 else 2) + female}{year % 100:02d}{n % 1_000_000:06d}"
    name = f"{FAMILY[n % 12]} {MIDDLE[n // 12 % 8]} {GIVEN[n // 96 % 13]}"
    return national_id, name, dt.date(year, 1 + n // 7 % 12, 1 + n // 3 % 28), "F" if female else "M"


def write_extract(path: Path, rows: int) -> None:
    with path.open("w", encoding="utf-8") as out:
        out.write(",".join(registry.COLUMNS) + "\n")
        for n in range(rows):
            national_id, name, birth, sex = person(n)
            out.write(f"{national_id},{name},{birth.isoformat()},{sex}\n")


def recorded_person(n: int) -> tuple:
    """A person as the sites recorded them (every other registry person, and some it lacks)."""
    national_id, name, birth, sex = person(n)
    match n % 20:
        case 2:
            plain = unicodedata.normalize("NFKD", name.replace("Đ", "D").replace("đ", "d"))
            name = plain.encode("ascii", "ignore").decode().upper()  # without diacritics: verified still
        case 4:
            name = name.rsplit(" ", 1)[0] + " Xuân"  # name_mismatch
        case 6:
            birth = birth + dt.timedelta(days=1)  # birth_date_mismatch
        case 8:
            national_id = "B" + national_id[-8:]  # a passport the registry does not know: not_found
    administered = dt.datetime(2021, 8, 14, tzinfo=dt.timezone.utc) + dt.timedelta(seconds=n)
    return national_id, name, birth, sex, administered, administered


async def prepare(database_url: str, persons: int) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await migrate(conn)
        await conn.copy_records_to_table(
            "persons", columns=("national_id", "full_name", "birth_date", "sex", "first_administered_at",
                                "last_administered_at"),
            records=(recorded_person(2 * i) for i in range(persons)))
        await conn.execute("VACUUM ANALYZE persons")  # as a live table is: hint bits set, visibility map current
    finally:
        await conn.close()


def run_import(database_url: str, path: Path, folder: Path) -> tuple[float, str]:
    """The command as an operator runs it: (seconds, its summary line)."""
    env = {**os.environ, "DATABASE_URL": database_url}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "commands", "--data-dir", str(folder), "registry", "import",
                           str(path)], cwd=ROOT, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"vaxline registry import exited {done.returncode}: {done.stderr[-2000:]}")
    return elapsed, done.stdout.strip()


def read_only(path: Path) -> float:
    """Reading and validating the file, chunked, without a database: the Python side alone."""
    started = time.perf_counter()
    with path.open("rb") as extract:
        rows = registry.read_extract(extract, today=dt.date.today())
        for _ in registry.chunks(rows, 50_000):
            pass
    return time.perf_counter() - started


def psql_copy(database_url: str, path: Path) -> float:
    """psql COPY of the same file into a plain table (no index, no key): the in-run reference."""
    asyncio.run(admin(database_url, "CREATE TABLE registry_copy (national_id text, full_name text,"
                                     " birth_date date, sex text)"))
    started = time.perf_counter()
    subprocess.run([psql_binary(), database_url, "-q", "-c", f"\\copy registry_copy FROM '{path}' CSV HEADER"],
                   check=True)
    elapsed = time.perf_counter() - started
    asyncio.run(admin(database_url, "DROP TABLE registry_copy"))
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.registry_import", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--persons", type=int, default=500_000, help="persons already persisted (<= rows / 2)")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="vaxline-registry-bench-"))
    admin_url = os.environ.get("DATABASE_URL")
    if not admin_url:
        embedded.silence_pgserver_warnings()
        _server, admin_url = embedded.start_postgres(folder / "postgres")
    name = f"vaxline_registry_bench_{secrets.token_hex(3)}"
    asyncio.run(admin(admin_url, f"CREATE DATABASE {name}"))
    database_url = with_database(admin_url, name)
    try:
        path = folder / "extract.csv"
        started = time.perf_counter()
        write_extract(path, args.rows)
        asyncio.run(prepare(database_url, min(args.persons, args.rows // 2)))
        prepared = time.perf_counter() - started

        parse = read_only(path)
        first, first_summary = run_import(database_url, path, folder)
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        again, again_summary = run_import(database_url, path, folder)
        reference = psql_copy(database_url, path)

        size = path.stat().st_size / 1024**2
        print(f"\nvaxline registry import benchmark ({os.cpu_count()} cores; {args.rows:,} rows, {size:.0f} MiB;"
              f" {min(args.persons, args.rows // 2):,} persons; prepared in {prepared:.1f} s)")
        print(f"  first import:       {first:6.1f} s  {args.rows / first:>9,.0f} rows/s  {size / first:5.1f} MiB/s")
        print(f"                      {first_summary}")
        print(f"  same file again:    {again:6.1f} s  {args.rows / again:>9,.0f} rows/s")
        print(f"                      {again_summary}")
        print(f"  peak memory of the command (VmHWM): {peak:.0f} MiB")
        print(f"  reading and validating alone:  {parse:6.1f} s  {args.rows / parse:>9,.0f} rows/s (no database)")
        print(f"  reference, psql COPY of the same file into a plain table: {reference:6.1f} s"
              f"  {args.rows / reference:>9,.0f} rows/s")
        print(f"  first import / reference: {reference / first:.0%}")
    finally:
        with contextlib.suppress(Exception):
            asyncio.run(admin(admin_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
