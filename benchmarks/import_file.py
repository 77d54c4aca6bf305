"""Back-entry import: `vaxline import` of a generated CSV and XLSX file, beside reading alone and HTTP.

    python -m benchmarks.import_file [--rows 1000000] [--xlsx-rows 1000000] [--workers 2]

Starts the stack (DATABASE_URL/REDIS_URL, or the embedded default in a temporary folder; a new
database either way): 2 ingest processes and the persisting workers (no certifiers or reviewers:
this measures the import and persisting). Writes a back-entry file as hospitals fill in the template
(Vietnamese headers, DD/MM/YYYY dates, Nam/Nữ, product names, a separate time column), as CSV and as
XLSX the way Excel writes a workbook (shared strings, date cells), and runs the real command as an
operator would, each in its own process:

- the CSV, direct to the stream (`--no-wait`: the time to read, validate and enqueue every row),
  then until every dose is persisted (the receipts in Postgres);
- the same CSV again (every row a duplicate; the command waits for the receipts);
- the same CSV over HTTP (`--url --token`: POST /v1/doses, another site), the in-run reference of
  what a site's client achieves through the API;
- the XLSX, direct.

Beside them, in the same run: reading and validating each file alone (no Redis, no Postgres), and
each command's peak memory.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from xml.sax.saxutils import escape


from deploy.stack import Stack, on_database
from deploy.waits import wait_persisted
from storage.sites import site_id_by_code
from vaxline.config import Settings

ROOT = Path(__file__).resolve().parent.parent
HEADER = ["STT", "Mã bản ghi", "Số CCCD/CMND", "Họ và tên", "Ngày sinh", "Giới tính", "Số điện thoại", "Vắc xin",
          "Số lô", "Mũi số", "Ngày tiêm", "Giờ tiêm"]
FAMILY = ["Nguyễn", "Trần", "Lê", "Phạm", "Hoàng", "Phan", "Vũ", "Đặng"]
GIVEN = ["Thị Ánh", "Văn Hùng", "Ngọc Lan", "Minh Dũng", "Thị Hoa", "Hữu Nam"]
VACCINES = ["AstraZeneca", "Pfizer", "Moderna", "Vero Cell"]
EXCEL_EPOCH = dt.date(1899, 12, 30)


def back_entry(n: int) -> tuple:
    """The n-th row as a hospital typed it: (serial, record id, CCCD, name, birth date, sex, phone, vaccine,
    lot, dose number, administration date, time of day)."""
    year = 1940 + n % 60
    female = n % 2
    national_id = f"{1 + n % 96:03d}{(0 if year < 2000 else 2) + female}{year % 100:02d}{n % 1_000_000:06d}"
    return (n + 1, f"BE-{n:08d}", national_id, f"{FAMILY[n % 8]} {GIVEN[n % 6]}", dt.date(year, 1 + n % 12, 1 + n % 28),
            "Nữ" if female else "Nam", f"09{n % 100_000_000:08d}", VACCINES[n % 4], f"LOT{n % 997}", 1 + n % 2,
            dt.date(2021, 7 + n % 3, 1 + n % 28), dt.time(7 + n % 11, n % 60))


def write_csv(path: Path, rows: int) -> None:
    with path.open("w", encoding="utf-8") as out:
        out.write(",".join(HEADER) + "\n")
        for n in range(rows):
            s, record, nid, name, birth, sex, phone, vaccine, lot, dose, day, clock = back_entry(n)
            out.write(f"{s},{record},{nid},{name},{birth:%d/%m/%Y},{sex},{phone},{vaccine},{lot},{dose},"
                      f"{day:%d/%m/%Y},{clock:%H:%M}\n")


def write_xlsx(path: Path, rows: int) -> None:
    """As Excel writes a workbook: every text cell in the shared-strings table, dates as serial numbers with
    a date style (numFmt 14), times as fractions of a day with a time style (numFmt 20), streamed out."""
    strings: dict[str, int] = {}

    def text(value: str) -> str:
        index = strings.setdefault(value, len(strings))
        return f'<c t="s"><v>{index}</v></c>'

    main = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
    rel = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as book:
        with book.open("xl/worksheets/sheet1.xml", "w", force_zip64=True) as sheet:
            sheet.write(f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n<worksheet xmlns="{main}">'
                        f'<dimension ref="A1:L{rows + 1}"/><sheetData>'.encode())
            sheet.write(("<row>" + "".join(text(h) for h in HEADER) + "</row>").encode())
            for n in range(rows):
                s, record, nid, name, birth, sex, phone, vaccine, lot, dose, day, clock = back_entry(n)
                sheet.write((
                    f"<row><c><v>{s}</v></c>{text(record)}{text(nid)}{text(name)}"
                    f'<c s="1"><v>{(birth - EXCEL_EPOCH).days}</v></c>{text(sex)}{text(phone)}{text(vaccine)}'
                    f'{text(lot)}<c><v>{dose}</v></c><c s="1"><v>{(day - EXCEL_EPOCH).days}</v></c>'
                    f'<c s="2"><v>{(clock.hour * 60 + clock.minute) / 1440!r}</v></c></row>').encode())
            sheet.write(b"</sheetData></worksheet>")
        with book.open("xl/sharedStrings.xml", "w", force_zip64=True) as table:
            table.write(f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n<sst xmlns="{main}"'
                        f' uniqueCount="{len(strings)}">'.encode())
            for value in strings:
                table.write(f"<si><t>{escape(value)}</t></si>".encode())
            table.write(b"</sst>")
        book.writestr("[Content_Types].xml", (
            '<?xml version="1.0" encoding="UTF-8"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/'
            'content-types"><Default Extension="rels" ContentType="application/vnd.openxmlformats-package.'
            'relationships+xml"/><Default Extension="xml" ContentType="application/xml"/><Override PartName="/xl/'
            'workbook.xml" ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"/>'
            '<Override PartName="/xl/worksheets/sheet1.xml" ContentType="application/vnd.openxmlformats-'
            'officedocument.spreadsheetml.worksheet+xml"/><Override PartName="/xl/styles.xml" ContentType='
            '"application/vnd.openxmlformats-officedocument.spreadsheetml.styles+xml"/><Override PartName="/xl/'
            'sharedStrings.xml" ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.'
            'sharedStrings+xml"/></Types>'))
        book.writestr("_rels/.rels", (
            '<?xml version="1.0" encoding="UTF-8"?><Relationships xmlns="http://schemas.openxmlformats.org/package/'
            f'2006/relationships"><Relationship Id="rId1" Type="{rel}/officeDocument" Target="xl/workbook.xml"/>'
            '</Relationships>'))
        book.writestr("xl/workbook.xml", (
            f'<?xml version="1.0" encoding="UTF-8"?><workbook xmlns="{main}" xmlns:r="{rel}"><sheets>'
            '<sheet name="Mũi tiêm" sheetId="1" r:id="rId1"/></sheets></workbook>'))
        book.writestr("xl/_rels/workbook.xml.rels", (
            '<?xml version="1.0" encoding="UTF-8"?><Relationships xmlns="http://schemas.openxmlformats.org/package/'
            f'2006/relationships"><Relationship Id="rId1" Type="{rel}/worksheet" Target="worksheets/sheet1.xml"/>'
            f'<Relationship Id="rId2" Type="{rel}/styles" Target="styles.xml"/>'
            f'<Relationship Id="rId3" Type="{rel}/sharedStrings" Target="sharedStrings.xml"/></Relationships>'))
        book.writestr("xl/styles.xml", (
            f'<?xml version="1.0" encoding="UTF-8"?><styleSheet xmlns="{main}"><fonts count="1"><font><sz val="11"/>'
            '<name val="Calibri"/></font></fonts><fills count="1"><fill><patternFill patternType="none"/></fill>'
            '</fills><borders count="1"><border/></borders><cellStyleXfs count="1"><xf numFmtId="0" fontId="0"'
            ' fillId="0" borderId="0"/></cellStyleXfs><cellXfs count="3"><xf numFmtId="0" fontId="0" fillId="0"'
            ' borderId="0" xfId="0"/><xf numFmtId="14" fontId="0" fillId="0" borderId="0" xfId="0"'
            ' applyNumberFormat="1"/><xf numFmtId="20" fontId="0" fillId="0" borderId="0" xfId="0"'
            ' applyNumberFormat="1"/></cellXfs></styleSheet>'))


class NullSender:
    """Reading and validating alone: every batch is taken at once, nothing leaves the process."""

    site = "benchmark"

    def __init__(self):
        self.batches = 0

    async def send(self, doses, rejected):
        self.batches += 1
        return f"0-{self.batches}-0", []

    async def count_rejected(self, rejected):
        pass

    async def receipts(self, batch_ids):
        return {}


def read_alone(path: Path) -> float:
    """Reading, converting and validating every row in this process, with the same driver, no I/O."""
    from backentry.importer import import_file

    started = time.perf_counter()
    summary = asyncio.run(import_file(path, NullSender(), wait=False, progress=False))
    elapsed = time.perf_counter() - started
    for leftover in (path.with_name(path.name + ".import-state.json"),):
        leftover.unlink(missing_ok=True)
    if summary.rejected:
        raise RuntimeError(f"{summary.rejected} rows of the generated file were rejected")
    return elapsed


# The command, reporting its own peak memory: VmHWM after exec (a child's ru_maxrss would count the memory
# of this process, which it was forked from).
COMMAND = ("import sys; from commands.main import main; code = main(sys.argv[1:]); print('VmHWM', next("
           "line.split()[1] for line in open('/proc/self/status') if line.startswith('VmHWM')), file=sys.stderr);"
           " sys.exit(code)")


def run_import(settings: Settings, folder: Path, path: Path, *args: str) -> tuple[float, str, float]:
    """`vaxline import` as an operator runs it: (seconds, its summary line, its peak memory in MiB)."""
    env = {**os.environ, **settings.to_env()}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", COMMAND, "--data-dir", str(folder), "import", str(path), *args],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"vaxline import exited {done.returncode}: {done.stderr[-2000:]}")
    peak = int(done.stderr.rsplit("VmHWM ", 1)[1].split()[0]) / 1024
    return elapsed, done.stdout.strip().splitlines()[-1], peak


SITES = [{"code": code, "name": f"Bệnh viện {code}", "province": 79, "kind": "fixed"}
         for code in ("BENCH-CSV", "BENCH-HTTP", "BENCH-XLSX")]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.import_file", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the CSV file")
    parser.add_argument("--xlsx-rows", type=int, default=1_000_000, help="rows of the XLSX file (0: skip)")
    parser.add_argument("--workers", type=int, default=2, help="persisting worker processes")
    parser.add_argument("--port", type=int, default=18081)
    args = parser.parse_args()
    os.environ.setdefault("VAXLINE_LOG_LEVEL", "WARNING")  # the workers' per-batch lines would bury the figures

    folder = Path(tempfile.mkdtemp(prefix="vaxline-import-bench-"))
    stack = Stack(folder, database=f"vaxline_import_bench_{secrets.token_hex(3)}")
    try:
        settings = stack.start(stream_prefix=f"bench{secrets.token_hex(3)}")
        tokens = dict(zip((site["code"] for site in SITES), stack.add_sites(SITES)))
        site_id = asyncio.run(site_id_of(settings, "BENCH-CSV"))
        stack.start_ingest(hosts="127.0.0.1", port=args.port, processes=2)
        stack.start_workers(name="bench-import", processes=args.workers, certifiers=0, reviewers=0)
        stack.wait_ready([f"http://127.0.0.1:{args.port}/readyz"])
        measure_csv(args, settings, folder, tokens, site_id, stack.embedded_redis)
        if args.xlsx_rows:
            measure_xlsx(args, settings, folder)
    finally:
        stack.stop()
        shutil.rmtree(folder, ignore_errors=True)


async def site_id_of(settings: Settings, code: str) -> int:
    return await on_database(settings, site_id_by_code, code)


def measure_csv(args, settings: Settings, folder: Path, tokens: dict[str, str], site_id: int,
                embedded_redis: bool) -> None:
    csv_path = folder / "bo-sung.csv"
    started = time.perf_counter()
    write_csv(csv_path, args.rows)
    written = time.perf_counter() - started
    csv_alone = read_alone(csv_path)

    started = time.perf_counter()
    enqueued, enqueued_summary, enqueued_peak = run_import(settings, folder, csv_path, "--site", "BENCH-CSV",
                                                           "--no-wait")
    asyncio.run(wait_persisted(settings, args.rows, site_id=site_id, every=0.05))
    persisted = time.perf_counter() - started
    again, again_summary, again_peak = run_import(settings, folder, csv_path, "--site", "BENCH-CSV")
    http, http_summary, http_peak = run_import(settings, folder, csv_path, "--url",
                                               f"http://127.0.0.1:{args.port}", "--token", tokens["BENCH-HTTP"])
    size = csv_path.stat().st_size / 1024**2

    print(f"\nvaxline back-entry import benchmark ({os.cpu_count()} cores; 2 ingest processes, {args.workers} workers,"
          f" Redis appendfsync {'always' if embedded_redis else 'as configured'})")
    print(f"  CSV, {args.rows:,} rows ({size:.0f} MiB, written in {written:.1f} s):")
    print(f"    reading and validating alone:  {csv_alone:6.1f} s  {args.rows / csv_alone:>9,.0f} rows/s"
          " (in-process, no Redis, no Postgres)")
    print(f"    import, enqueued (--no-wait):  {enqueued:6.1f} s  {args.rows / enqueued:>9,.0f} rows/s"
          f"  peak {enqueued_peak:.0f} MiB")
    print(f"    every dose persisted after:    {persisted:6.1f} s  {args.rows / persisted:>9,.0f} rows/s")
    print(f"                                   {enqueued_summary}")
    print(f"    same file again (waits):       {again:6.1f} s  {args.rows / again:>9,.0f} rows/s"
          f"  peak {again_peak:.0f} MiB")
    print(f"                                   {again_summary}")
    print(f"    reference, over HTTP (waits):  {http:6.1f} s  {args.rows / http:>9,.0f} rows/s"
          f"  peak {http_peak:.0f} MiB (POST /v1/doses, another site)")
    print(f"                                   {http_summary}")
    sys.stdout.flush()


def measure_xlsx(args, settings: Settings, folder: Path) -> None:
    xlsx_path = folder / "bo-sung.xlsx"
    started = time.perf_counter()
    write_xlsx(xlsx_path, args.xlsx_rows)
    written = time.perf_counter() - started
    xlsx_alone = read_alone(xlsx_path)
    xlsx, xlsx_summary, xlsx_peak = run_import(settings, folder, xlsx_path, "--site", "BENCH-XLSX")
    size = xlsx_path.stat().st_size / 1024**2
    print(f"  XLSX, {args.xlsx_rows:,} rows ({size:.0f} MiB, shared strings as Excel writes them;"
          f" written in {written:.1f} s):")
    print(f"    reading and validating alone:  {xlsx_alone:6.1f} s  {args.xlsx_rows / xlsx_alone:>9,.0f} rows/s"
          " (expat stream)")
    print(f"    import (waits):                {xlsx:6.1f} s  {args.xlsx_rows / xlsx:>9,.0f} rows/s"
          f"  peak {xlsx_peak:.0f} MiB")
    print(f"                                   {xlsx_summary}")


if __name__ == "__main__":
    sys.exit(main())
