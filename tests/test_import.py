"""Back-entry import (`vaxline import`): CSV and XLSX files through the validation and stream of POST /v1/doses.

The readers, the driver and the command run against real Postgres and Redis, with in-process workers
(tests/stack.py) persisting what the import enqueues; the resume and memory tests run the command as
a real process.

Covers: header matching (case, diacritics, synonyms; unknown, repeated and missing columns named; a data row
is never echoed), dates and times as people type them and as Excel stores them, a row to the dose POST would
accept or every reason it would not, the compact shared-strings table; a CSV with Vietnamese headers and
mixed date formats: good rows persisted with the right times, bad ones in the error report with their row
numbers and reasons, the same file again all duplicates and nothing new in `doses`, the fixed report
imported as it is; an XLSX with Excel date, time and number cells (leading zeros restored), a title row and
a notes sheet; the template filled in and imported; the same over HTTP with the site's token (a wrong token
exits 2); receipts pending without workers, and `--no-wait`; usage errors exit 2 (unknown site, missing and
unknown columns, an `.xls`, a damaged workbook, a missing file); a real process killed mid-import (SIGKILL)
and resumed with `--resume`: every row in Postgres exactly once, the acknowledged rows skipped, at most the
batches in flight sent twice; the peak memory (VmHWM) of 40,000 and 200,000-row imports is the same.
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from openpyxl import Workbook, load_workbook

from backentry import rows as backentry
from backentry.importer import IN_FLIGHT
from backentry.rows import HeaderError, map_header
from backentry.xlsx import SharedStrings
from commands.main import main
from tests.conftest import PERSONAL_DATA, ROOT, wait_until
from tests.factory import dose as factory_dose
from tests.stack import running_stack

VIETNAM = dt.timezone(dt.timedelta(hours=7))
VI_HEADER = ["STT", "Mã bản ghi", "Số CCCD/CMND", "Họ và tên", "Ngày sinh", "Giới tính", "Số điện thoại", "Vắc xin",
             "Số lô", "Mũi tiêm thứ", "Ngày tiêm", "Thời gian tiêm"]
EN_HEADER = ["record_id", "national_id", "full_name", "birth_date", "sex", "phone", "vaccine", "lot", "dose_number",
             "administered_at"]


@pytest.fixture
def vaxline(settings, monkeypatch, tmp_path, capsys):
    """Run `vaxline ...` in-process: (exit code, stdout, stderr)."""
    for name, value in settings.to_env().items():
        monkeypatch.setenv(name, value)
    # main() points the root logger at stderr; keep the session's handlers (the personal-data check).
    monkeypatch.setattr("monitoring.logs.configure", lambda level=None: None)

    async def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = await asyncio.to_thread(main, ["--data-dir", str(tmp_path), *args])
        out, err = capsys.readouterr()
        shown = (out + err).replace("must be Nam or Nữ", "")  # the rule for sex, not someone's name
        assert not PERSONAL_DATA.search(shown), "personal data on stdout/stderr"
        return code, out, err

    return run


def summary(out: str) -> str:
    return out.strip().splitlines()[-1]


def write_csv(path, header, rows, *, encoding="utf-8", delimiter=","):
    with path.open("w", newline="", encoding=encoding) as f:
        writer = csv.writer(f, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def read_csv(path):
    with path.open(newline="", encoding="utf-8-sig") as f:
        return list(csv.reader(f))


async def stored(db, site_id: int) -> dict[str, dict]:
    rows = await db.fetch("SELECT record_id, national_id, full_name, birth_date, sex, phone, vaccine, lot, dose_number,"
                          " administered_at FROM doses WHERE site_id = $1", site_id)
    return {r["record_id"]: dict(r) for r in rows}


def vi_row(n: int) -> list[str]:
    """A dose as a hospital typed it: formats vary from row to row."""
    d = factory_dose(n, record_prefix="BV")
    birth = dt.date.fromisoformat(d["birth_date"])
    birth_text = [birth.strftime("%d/%m/%Y"), birth.isoformat(), birth.strftime("%d-%m-%Y"),
                  f"{birth.day}/{birth.month}/{birth.year}"][n % 4]
    sex = [{"M": "Nam", "F": "Nữ"}[d["sex"]], d["sex"]][n % 2 == 0 and n % 4 == 0]
    vaccine = ["AstraZeneca", "EU/1/21/1529", "astra zeneca"][n % 3]
    day, clock = f"{14 + n % 5}/08/2021", f"{8 + n % 8}:{n % 60:02d}"
    administered, time_cell = [
        (day, clock),  # a date and a separate time
        (f"2021-08-{14 + n % 5} {clock}", ""),  # a date-time
        (f"{14 + n % 5}-08-2021", ""),  # a date alone: noon
        (f"2021-08-{14 + n % 5}T{8 + n % 8:02d}:{n % 60:02d}:00+07:00", ""),  # RFC 3339
        (str((dt.date(2021, 8, 14 + n % 5) - dt.date(1899, 12, 30)).days), f"{8 + n % 8}h{n % 60:02d}"),  # a serial
    ][n % 5]
    return [str(n + 1), d["record_id"], d["national_id"], d["full_name"], birth_text, sex, d["phone"], vaccine,
            d["lot"], str(d["dose_number"]), administered, time_cell]


def expected_time(n: int) -> dt.datetime:
    day = dt.date(2021, 8, 14 + n % 5)
    if n % 5 == 2:
        return dt.datetime.combine(day, dt.time(12, 0), VIETNAM)
    return dt.datetime.combine(day, dt.time(8 + n % 8, n % 60), VIETNAM)


# -- pure: headers, dates, rows --------------------------------------------------------------------

def test_headers_compare_without_case_diacritics_or_punctuation():
    columns = map_header(["stt", "MÃ BẢN GHI", "so cccd - cmnd", "Họ tên", "NGÀY SINH", "gioi tinh", "SĐT", "vaccine",
                          "Số lô", "Mũi số", "Ngày tiêm", "Giờ tiêm", "", "errors", "row"])
    assert columns.positions == {"record_id": 1, "national_id": 2, "full_name": 3, "birth_date": 4, "sex": 5,
                                 "phone": 6, "vaccine": 7, "lot": 8, "dose_number": 9, "administered_at": 10,
                                 "administered_time": 11}
    assert map_header(EN_HEADER).positions["administered_at"] == 9
    with pytest.raises(HeaderError, match=r"unknown columns: 'Ghi chu'.*missing required columns: "
                                          r"national_id \(Số CCCD/CMND\), lot \(Số lô\)"):
        map_header([h for h in EN_HEADER if h not in ("national_id", "lot")] + ["Ghi chu"])
    with pytest.raises(HeaderError, match="'full_name' and 'Họ tên' are both full_name"):
        map_header(EN_HEADER + ["Họ tên"])
    with pytest.raises(HeaderError, match="no row names a known column") as refused:  # data, not a header: never shown
        map_header(["001099012345", "Nguyễn Thị Ánh", "02/04/1990"])
    assert not PERSONAL_DATA.search(str(refused.value))


@pytest.mark.parametrize("cell, expected", [
    ("14/08/2021", (dt.date(2021, 8, 14), None)),
    ("2021-08-14", (dt.date(2021, 8, 14), None)),
    ("14-08-2021", (dt.date(2021, 8, 14), None)),
    ("4.8.2021", (dt.date(2021, 8, 4), None)),
    ("14/08/2021 9:30", (dt.date(2021, 8, 14), dt.time(9, 30))),
    ("14/08/2021 9:30 PM", (dt.date(2021, 8, 14), dt.time(21, 30))),
    ("2021-08-14 21:05:10", (dt.date(2021, 8, 14), dt.time(21, 5, 10))),
    ("44422", (dt.date(2021, 8, 14), None)),
    ("44422.75", (dt.date(2021, 8, 14), dt.time(18, 0))),
    (44422, (dt.date(2021, 8, 14), None)),
    (44422.375, (dt.date(2021, 8, 14), dt.time(9, 0))),
    (dt.datetime(2021, 8, 14), (dt.date(2021, 8, 14), None)),  # an Excel date cell: midnight is no time
    (dt.datetime(2021, 8, 14, 9, 30), (dt.date(2021, 8, 14), dt.time(9, 30))),
    (dt.date(2021, 8, 14), (dt.date(2021, 8, 14), None)),
])
def test_administration_dates_as_people_type_them(cell, expected):
    date, clock, _ = backentry.read_moment(cell)
    assert (date, clock) == expected


@pytest.mark.parametrize("cell, expected", [
    ("09:30", dt.time(9, 30)), ("9h30", dt.time(9, 30)), ("9h", dt.time(9)), ("9:30:15", dt.time(9, 30, 15)),
    ("2:15 CH", dt.time(14, 15)), (dt.time(9, 30), dt.time(9, 30)), (0.5, dt.time(12)),
])
def test_times_of_day(cell, expected):
    assert backentry.read_time(cell) == expected


@pytest.mark.parametrize("cell, reason", [
    ("31/02/2021", "is not a calendar date"), ("14 08 2021", "must be a date"), ("2021/14/08", "calendar"),
    (60, "29/02/1900"), (True, "must be a date"),
])
def test_dates_that_are_not_dates_say_why(cell, reason):
    with pytest.raises(backentry.Unreadable, match=reason):
        backentry.read_moment(cell)


def test_a_row_becomes_the_dose_post_would_accept_or_every_reason_it_would_not():
    rows = backentry.DoseRows(map_header(VI_HEADER), ragged=True)
    now = dt.datetime(2022, 1, 1, tzinfo=dt.timezone.utc)
    dose = rows.convert(["1", "BV-1", 1099012345, "Nguyễn Thị Ánh", dt.datetime(1990, 4, 2), "Nữ", 912345678,
                         "Vero Cell", "LOT1", 2.0, dt.datetime(2021, 8, 14), dt.time(9, 30)], now)
    assert (dose.national_id, dose.phone, dose.sex, dose.vaccine, dose.dose_number, dose.birth_date,
            dose.administered_at) == ("001099012345", "0912345678", "F", "BBIBP-CorV", 2, dt.date(1990, 4, 2),
                                      dt.datetime(2021, 8, 14, 9, 30, tzinfo=VIETNAM))
    errors = rows.convert(["2", "BV-2", "12345", "", "31/02/1990", "X", "", "Sinovax", "L", "10", "14/08/2021",
                           "25:00"], now)
    assert [(e.field, e.reason.split(" (")[0]) for e in errors] == [
        ("national_id", "must be a 12-digit CCCD, a 9-digit CMND or a passport number"), ("full_name", "required"),
        ("birth_date", "is not a calendar date"), ("sex", "must be Nam or Nữ"),
        ("vaccine", "must be a product name"), ("dose_number", "expected `int` <= 9"),
        ("administered_time", "is not a time of day")]
    late = rows.convert(["3", "BV-3", "001099012345", "A", "02/04/1990", "", "", "Pfizer", "L", "1", "14/08/2031",
                         ""], now)
    assert [(e.field, e.reason) for e in late] == [("administered_at", "is in the future")]
    shifted = rows.convert(["4", "BV-4", "001099012345", "Nguyễn", "Thị Ánh", "02/04/1990", "F", "", "Pfizer", "L",
                            "1", "14/08/2021", "09:00"], now)
    assert shifted[0].field == "(row)"
    garbled = rows.convert(["5", "BV-5", "001099012345", "Nguy\ufffdn", "02/04/1990", "", "", "Pfizer", "L", "1",
                            "14/08/2021", ""], now)
    assert [(e.field, e.reason) for e in garbled] == [("full_name", "contains an unreadable character (\ufffd):"
                                                      " retype it")]


def test_the_shared_strings_table_reads_as_openpyxl_reads_it():
    """Rich-text runs are joined, phonetic runs left out, namespace prefixes and escapes as Excel writes them."""
    import io

    table = SharedStrings(io.BytesIO(
        '<?xml version="1.0" encoding="UTF-8"?><x:sst xmlns:x="http://schemas.openxmlformats.org/spreadsheetml/'
        '2006/main" count="4"><x:si><x:t>Mã bản ghi</x:t></x:si><x:si><x:r><x:t>Nguyễn </x:t></x:r><x:r><x:t'
        ' xml:space="preserve">Thị </x:t></x:r><x:r><x:t>Ánh</x:t></x:r><x:rPh sb="0" eb="1"><x:t>グエン</x:t>'
        '</x:rPh></x:si><x:si><x:t/></x:si><x:si><x:t>a &amp; b &lt;c&gt;</x:t></x:si></x:sst>'.encode()))
    assert [table[i] for i in range(len(table))] == ["Mã bản ghi", "Nguyễn Thị Ánh", "", "a & b <c>"]
    with pytest.raises(IndexError):
        table[4]


# -- the command, on the real pipeline -------------------------------------------------------------

async def test_csv_with_vietnamese_headers_imports_good_rows_reports_bad_ones_and_reimports_idempotently(
        settings, db, redis, vaxline, tmp_path):
    rows = [vi_row(n) for n in range(30)]
    rows[5][2] = "12345"  # file row 7: a bad national ID
    rows[12][4], rows[12][5] = "31/02/1990", "X"  # file row 14: two bad fields
    path = write_csv(tmp_path / "bo-sung.csv", VI_HEADER, rows)
    async with running_stack(settings) as stack:
        site_id, _ = await stack.site("BV-001")
        code, out, err = await vaxline("import", str(path), "--site", "BV-001")
        assert code == 1, err
        assert summary(out) == "30 rows: 28 accepted (28 new, 0 duplicates, 0 pending), 2 rejected"
        assert "row 7: national_id (Số CCCD/CMND): must be a 12-digit CCCD" in err
        assert "row 14: birth_date (Ngày sinh): is not a calendar date" in err
        doses = await stored(db, site_id)
        assert len(doses) == 28 and "BV-0000005" not in doses and "BV-0000012" not in doses
        for n in (0, 1, 2, 3, 4, 9):
            assert doses[f"BV-{n:07d}"]["administered_at"] == expected_time(n), n
        assert doses["BV-0000001"]["sex"] == "M" and doses["BV-0000002"]["vaccine"] == "EU/1/21/1529"
        assert doses["BV-0000003"]["birth_date"] == dt.date.fromisoformat(factory_dose(3)["birth_date"])

        report = read_csv(tmp_path / "bo-sung.errors.csv")
        assert report[0] == VI_HEADER + ["row", "errors"]
        assert [r[-2] for r in report[1:]] == ["7", "14"]
        assert report[1][:-2] == rows[5]
        assert report[2][-1].startswith("birth_date (Ngày sinh): is not a calendar date; sex (Giới tính): must be")

        # The same file again: nothing new, every accepted row a duplicate.
        code, out, _ = await vaxline("import", str(path), "--site", "BV-001")
        assert code == 1
        assert summary(out) == "30 rows: 28 accepted (0 new, 28 duplicates, 0 pending), 2 rejected"
        assert len(await stored(db, site_id)) == 28

        # The report, fixed, imports as it is (its row and errors columns are read past).
        report[1][2] = factory_dose(5)["national_id"]
        report[2][4], report[2][5] = "02/04/1990", "Nam"
        write_csv(tmp_path / "bo-sung.errors.csv", report[0], report[1:])
        code, out, _ = await vaxline("import", str(tmp_path / "bo-sung.errors.csv"), "--site", "BV-001")
        assert (code, summary(out)) == (0, "2 rows: 2 accepted (2 new, 0 duplicates, 0 pending), 0 rejected")
        assert not (tmp_path / "bo-sung.errors.errors.csv").exists()
        assert len(await stored(db, site_id)) == 30
        # Accepted exactly as ingest counts an HTTP batch: per site and administration day, in Redis.
        accepted = await redis.hgetall(settings.accepted_key(settings.shard_of(site_id)))
        assert sum(int(v) for k, v in accepted.items() if not k.endswith(b":rejected")) == 28 + 28 + 2


async def test_xlsx_with_excel_cells_a_title_row_and_a_notes_sheet(settings, db, vaxline, tmp_path):
    book = Workbook()
    book.active.title = "Ghi chú"
    book.active.append(["Danh sách tiêm bổ sung tháng 8"])
    sheet = book.create_sheet("Dữ liệu")
    sheet.append(["DANH SÁCH NGƯỜI ĐƯỢC TIÊM"])  # a title row, then the header in row 3
    sheet.append([])
    sheet.append(["Mã bản ghi", "Số CCCD/CMND", "Họ và tên", "Ngày sinh", "Giới tính", "Số điện thoại", "Vắc xin",
                  "Số lô", "Mũi số", "Ngày tiêm", "Giờ tiêm"])
    expected = {}
    for n in range(8):
        d = factory_dose(n, record_prefix="XL")
        administered = [dt.datetime(2021, 8, 14), dt.datetime(2021, 8, 15, 10, 45), dt.date(2021, 8, 16),
                        44422.375][n % 4]
        clock = [dt.time(9, 30), None, None, None][n % 4]
        expected[d["record_id"]] = [dt.datetime(2021, 8, 14, 9, 30), dt.datetime(2021, 8, 15, 10, 45),
                                    dt.datetime(2021, 8, 16, 12), dt.datetime(2021, 8, 14, 9)][n % 4]
        sheet.append([d["record_id"], int(d["national_id"]), d["full_name"],
                      dt.datetime.fromisoformat(d["birth_date"]), "Nữ" if d["sex"] == "F" else "Nam",
                      int(d["phone"]), "Pfizer", d["lot"], 1, administered, clock])
    sheet["J6"] = dt.datetime(2031, 1, 1, 9)  # row 6: in the future
    sheet["G9"] = "Sinovax"  # row 9: no such vaccine
    path = tmp_path / "excel.xlsx"
    book.save(path)
    async with running_stack(settings) as stack:
        site_id, _ = await stack.site("BV-002")
        code, out, err = await vaxline("import", str(path), "--site", "BV-002")
        assert code == 1, err
        assert summary(out) == "8 rows: 6 accepted (6 new, 0 duplicates, 0 pending), 2 rejected"
        doses = await stored(db, site_id)
        assert set(doses) == set(expected) - {"XL-0000002", "XL-0000005"}
        for record_id, dose in doses.items():
            assert dose["administered_at"] == expected[record_id].replace(tzinfo=VIETNAM), record_id
            assert dose["national_id"] == factory_dose(int(record_id[3:]))["national_id"]  # leading zeros back
            assert dose["phone"] == "0912345678" and dose["vaccine"] == "EU/1/20/1528"

        report_path = tmp_path / "excel.errors.xlsx"
        report = load_workbook(report_path)
        assert report.sheetnames == ["Dữ liệu"]
        rows = list(report.active.iter_rows(values_only=True))
        assert rows[0][-2:] == ("row", "errors") and [r[-2] for r in rows[1:]] == [6, 9]
        assert rows[1][-1] == "administered_at (Ngày tiêm): is in the future"
        assert rows[2][-1].startswith("vaccine (Vắc xin): must be a product name")
        report.active["J2"], report.active["G3"] = dt.datetime(2021, 8, 20), "Vero Cell"
        report.save(report_path)
        code, out, _ = await vaxline("import", str(report_path), "--site", "BV-002")
        assert (code, summary(out)) == (0, "2 rows: 2 accepted (2 new, 0 duplicates, 0 pending), 0 rejected")
        assert not report_path.exists() or load_workbook(report_path)  # the fixed report itself stays
        assert len(await stored(db, site_id)) == 8


async def test_the_template_round_trips(settings, db, vaxline, tmp_path):
    template = tmp_path / "mau.xlsx"
    code, out, _ = await vaxline("import", "--template", str(template))
    assert code == 0 and template.exists()
    book = load_workbook(template)
    assert book.sheetnames == ["Mũi tiêm", "Hướng dẫn"]
    sheet = book["Mũi tiêm"]
    assert [c.value for c in sheet[1]] == [c.header for c in backentry.COLUMNS]
    assert [c.value for c in sheet[2]] == [c.field for c in backentry.COLUMNS]
    for n in range(5):  # filled in from row 3, as the instructions say
        d = factory_dose(n, record_prefix="TP")
        sheet.append([d["record_id"], d["national_id"], d["full_name"], dt.datetime.fromisoformat(d["birth_date"]),
                      "Nam" if d["sex"] == "M" else "Nữ", d["phone"], "AstraZeneca", d["lot"], n % 3 + 1,
                      dt.datetime(2021, 9, 1 + n), dt.time(8, n)])
    book.save(template)
    async with running_stack(settings) as stack:
        site_id, _ = await stack.site("BV-003")
        code, out, err = await vaxline("import", str(template), "--site", "BV-003")
        assert (code, summary(out)) == (0, "5 rows: 5 accepted (5 new, 0 duplicates, 0 pending), 0 rejected"), err
        doses = await stored(db, site_id)
        assert doses["TP-0000004"]["administered_at"] == dt.datetime(2021, 9, 5, 8, 4, tzinfo=VIETNAM)
        assert doses["TP-0000004"]["dose_number"] == 2
    csv_template = tmp_path / "mau.csv"
    assert (await vaxline("import", "--template", str(csv_template)))[0] == 0
    assert read_csv(csv_template) == [[c.header for c in backentry.COLUMNS], [c.field for c in backentry.COLUMNS]]


async def test_over_http_with_the_sites_token(settings, db, vaxline, tmp_path):
    rows = [[factory_dose(n, record_prefix="H")[f] for f in EN_HEADER] for n in range(5)]
    rows[3][9] = "2021-08-14"  # a date alone: noon
    path = write_csv(tmp_path / "http.csv", EN_HEADER, rows, delimiter=";", encoding="utf-8-sig")
    async with running_stack(settings) as stack:
        site_id, token = await stack.site("BV-004")
        url = str(stack.client.make_url("")).rstrip("/")
        code, out, err = await vaxline("import", str(path), "--url", url, "--token", token)
        assert (code, summary(out)) == (0, "5 rows: 5 accepted (5 new, 0 duplicates, 0 pending), 0 rejected"), err
        doses = await stored(db, site_id)
        assert doses["H-0000003"]["administered_at"] == dt.datetime(2021, 8, 14, 12, tzinfo=VIETNAM)
        code, out, _ = await vaxline("import", str(path), "--url", url, "--token", token)
        assert summary(out) == "5 rows: 5 accepted (0 new, 5 duplicates, 0 pending), 0 rejected"
        code, _, err = await vaxline("import", str(path), "--url", url, "--token", "not-a-token")
        assert code == 2 and "401" in err


async def test_without_workers_receipts_are_pending(settings, db, vaxline, tmp_path):
    from storage.sites import add_site

    await add_site(db, code="BV-005", name="Trạm", province=1, kind="fixed")
    path = write_csv(tmp_path / "p.csv", EN_HEADER,
                     [[factory_dose(n)[f] for f in EN_HEADER] for n in range(3)])
    code, out, _ = await vaxline("import", str(path), "--site", "BV-005", "--wait-timeout", "0.3")
    assert (code, summary(out)) == (0, "3 rows: 3 accepted (0 new, 0 duplicates, 3 pending), 0 rejected")
    code, out, _ = await vaxline("import", str(path), "--site", "BV-005", "--no-wait")
    assert summary(out) == "3 rows: 3 accepted (3 pending, receipts not waited for), 0 rejected"


async def test_usage_errors_exit_2_and_name_the_problem(settings, db, vaxline, tmp_path):
    from storage.sites import add_site

    await add_site(db, code="BV-006", name="Trạm", province=1, kind="fixed")
    good = write_csv(tmp_path / "good.csv", EN_HEADER, [[factory_dose(0)[f] for f in EN_HEADER]])
    code, _, err = await vaxline("import", str(good), "--site", "NO-SUCH")
    assert code == 2 and "no site with code 'NO-SUCH'" in err
    missing = write_csv(tmp_path / "missing.csv", ["Mã bản ghi", "Họ và tên", "Ghi chú thêm"], [["A", "B", "C"]])
    code, _, err = await vaxline("import", str(missing), "--site", "BV-006")
    assert code == 2 and "unknown columns: 'Ghi chú thêm'" in err and "national_id (Số CCCD/CMND)" in err
    (tmp_path / "old.xls").write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(100))
    code, _, err = await vaxline("import", str(tmp_path / "old.xls"), "--site", "BV-006")
    assert code == 2 and ".xls" in err
    (tmp_path / "broken.xlsx").write_bytes(b"PK\x03\x04 not really a zip")
    code, _, err = await vaxline("import", str(tmp_path / "broken.xlsx"), "--site", "BV-006")
    assert code == 2 and "not a readable XLSX" in err
    code, _, err = await vaxline("import", str(tmp_path / "nowhere.csv"), "--site", "BV-006")
    assert code == 2 and "No such file" in err
    code, _, err = await vaxline("import", str(good))
    assert code == 2 and "--site CODE is needed" in err


# -- a real process: killed and resumed; memory -------------------------------------------------------------

def big_csv(path, rows: int, prefix: str = "K"):
    """A generated file, written line by line (fast: no factory per row)."""
    with path.open("w", encoding="utf-8") as f:
        f.write(",".join(EN_HEADER) + "\n")
        for n in range(rows):
            f.write(f"{prefix}-{n:07d},{1 + n % 96:03d}{n % 2}90{n % 1_000_000:06d},Nguyễn Thị Ánh,"
                    f"{1 + n % 28:02d}/04/1990,{'MF'[n % 2]},09{n % 100_000_000:08d},EU/1/21/1529,LOT{n % 97},1,"
                    f"{1 + n % 28:02d}/08/2021 {8 + n % 10}:{n % 60:02d}\n")
    return path


def command(settings, tmp_path, *args: str, log_name: str) -> subprocess.Popen:
    """`vaxline import ...` as its own process; it prints its peak memory last on stderr: VmHWM, the
    high-water mark since exec (ru_maxrss would count the pytest process it was forked from)."""
    env = {**os.environ, **settings.to_env()}
    code = ("import sys; from commands.main import main; code = main(sys.argv[1:]); print('peak_kib', next("
            "line.split()[1] for line in open('/proc/self/status') if line.startswith('VmHWM')), file=sys.stderr);"
            " sys.exit(code)")
    log = open(tmp_path / log_name, "ab")
    with log:
        return subprocess.Popen([sys.executable, "-c", code, "--data-dir", str(tmp_path), "import", *args], cwd=ROOT,
                                env=env, stdout=subprocess.PIPE, stderr=log, text=True)


async def test_an_import_killed_midway_resumes_after_the_last_acknowledged_row(settings, db, tmp_path):
    total = 60_000
    path = big_csv(tmp_path / "killed.csv", total)
    state = tmp_path / "killed.csv.import-state.json"
    async with running_stack(settings) as stack:
        site_id, _ = await stack.site("BV-007")
        first = command(settings, tmp_path, str(path), "--site", "BV-007", "--no-wait", "--batch-size", "250",
                        log_name="killed-first.log")
        try:
            await wait_until(lambda: state.exists() and json.loads(state.read_text())["last_row"] >= 10_000,
                             timeout=60, interval=0.01, message="the import's progress")
            first.send_signal(signal.SIGKILL)
        finally:
            first.wait()
        sent = json.loads(state.read_text())
        assert not sent["complete"] and sent["last_row"] < total + 1, "killed too late to test resuming"

        second = command(settings, tmp_path, str(path), "--site", "BV-007", "--resume", log_name="killed-second.log")
        out, _ = await asyncio.to_thread(second.communicate, timeout=120)
        assert second.returncode == 0, (tmp_path / "killed-second.log").read_text()
        lines = out.strip().splitlines()
        skipped = int(re.search(r"resumed: (\d+) rows", out)[1])
        assert skipped >= sent["last_row"] - 1  # every row the first run's acknowledged batches held
        # Batches the stream had taken but the state file did not name yet (at most the IN_FLIGHT batches
        # in flight at the kill) were sent again: their receipts count those records as duplicates.
        new, duplicates = map(int, re.fullmatch(rf"{total} rows: {total} accepted \((\d+) new, (\d+) duplicates,"
                                                r" 0 pending\), 0 rejected", lines[-1]).groups())
        assert new + duplicates == total and duplicates <= IN_FLIGHT * 250
    assert await db.fetchval("SELECT count(*) FROM doses WHERE site_id = $1", site_id) == total
    assert await db.fetchval("SELECT count(DISTINCT record_id) FROM doses WHERE site_id = $1", site_id) == total
    resent = await db.fetchval("SELECT sum(accepted) FROM batches WHERE site_id = $1", site_id) - total
    assert resent == duplicates


async def test_memory_does_not_grow_with_the_file(settings, db, tmp_path):
    from storage.sites import add_site

    await add_site(db, code="BV-008", name="Trạm", province=1, kind="fixed")
    peaks = {}
    for rows in (40_000, 200_000):
        path = big_csv(tmp_path / f"m{rows}.csv", rows, prefix=f"M{rows}")
        started = time.monotonic()
        process = command(settings, tmp_path, str(path), "--site", "BV-008", "--no-wait", log_name=f"m{rows}.log")
        out, _ = await asyncio.to_thread(process.communicate, timeout=120)
        assert process.returncode == 0, (tmp_path / f"m{rows}.log").read_text()
        assert summary(out).startswith(f"{rows} rows: {rows} accepted")
        log = (tmp_path / f"m{rows}.log").read_text()
        peaks[rows] = int(re.search(r"peak_kib (\d+)", log)[1]) / 1024
        print(f"{rows} rows: {time.monotonic() - started:.1f} s, peak {peaks[rows]:.0f} MiB")
    assert peaks[200_000] < peaks[40_000] + 10, peaks  # five times the rows, the same memory


def test_the_xlsx_reader_gives_the_rows_openpyxl_gives(tmp_path):
    """The streaming sheet reader and openpyxl's read-only reader: the same rows, values and types."""
    import zipfile

    from openpyxl.cell.rich_text import CellRichText, TextBlock
    from openpyxl.cell.text import InlineFont

    from backentry.xlsx import _CompactReader, sheet_rows

    book = Workbook()
    sheet = book.active
    sheet.title = "Dữ liệu"
    sheet.append(["Mã bản ghi", "Ngày sinh", "Giờ tiêm", "Ngày tiêm", "Mũi số", "x", "Số lô"])
    sheet.append(["BV-1", dt.date(1990, 4, 2), dt.time(9, 30), dt.datetime(2021, 8, 15, 10, 45), 1, True, 2.5])
    sheet.append(["BV-2", dt.datetime(2021, 8, 14), dt.time(0, 0, 1), dt.datetime(1900, 1, 3, 6), -3, False, 1e20])
    sheet.append(["BV-3", None, "giữa", None, 7])  # empty cells in the middle
    sheet["A6"] = "after a missing row"
    sheet["D6"] = dt.timedelta(hours=30)
    sheet["D6"].number_format = "[h]:mm:ss"
    sheet["A7"] = CellRichText([TextBlock(InlineFont(b=True), "Nguyễn "), "Thị"])  # an inline string
    sheet["B7"] = 44422.5
    sheet["B7"].number_format = 'dd/mm/yyyy" ngày" hh:mm'
    sheet["C7"] = 44422.5
    sheet["C7"].number_format = '"d"0.00'  # "d" in quotes: not a date
    sheet["E7"] = "=1+1"
    sheet["F7"] = 3.0
    sheet["F7"].number_format = "[Red]0.00"
    sheet.append([])
    path = tmp_path / "kinds.xlsx"
    book.save(path)
    # Cells as other writers write them: no r attributes, inline strings with runs and phonetic text,
    # a formula's text result, ISO dates, errors, a row without cells, a row out of order.
    extra = ('<row r="10"><c t="inlineStr"><is><t>plain</t></is></c><c t="inlineStr"><is><r><t>a &amp; </t></r>'
             '<r><rPr><b/></rPr><t xml:space="preserve">b </t></r><rPh sb="0" eb="1"><t>ph</t></rPh></is></c>'
             '<c t="inlineStr"><is><t/></is></c><c t="inlineStr"/><c t="str"><f>A1</f><v>Mã</v></c>'
             '<c t="d"><v>2021-08-14T09:30:00</v></c><c t="e"><v>#DIV/0!</v></c><c t="s"><v></v></c></row>'
             '<row><c r="C11" s="1"><v>0.25</v></c><c><v>5</v></c><c r="B11"><v>6</v></c></row>'
             '<row r="12"/><row spans="1:2"><c><v>1E3</v></c></row><row r="9"><c><v>9</v></c></row>')
    with zipfile.ZipFile(path) as source:
        parts = {name: source.read(name) for name in source.namelist()}
    parts["xl/worksheets/sheet1.xml"] = parts["xl/worksheets/sheet1.xml"].replace(
        b"</sheetData>", extra.encode() + b"</sheetData>")
    with zipfile.ZipFile(path, "w") as target:
        for name, content in parts.items():
            target.writestr(name, content)

    def read_both():
        reader = _CompactReader(path, read_only=True, data_only=True)
        reader.read()
        worksheet = reader.wb.worksheets[0]
        worksheet.reset_dimensions()
        theirs = list(worksheet.iter_rows(values_only=True))
        ours = list(sheet_rows(reader.wb, worksheet))
        reader.wb.close()
        return theirs, ours

    theirs, ours = read_both()
    assert len(ours) == len(theirs) == 13
    for number, (mine, expected) in enumerate(zip(ours, theirs), start=1):
        assert mine == expected, number
        assert type(mine) is type(expected), number
        assert [type(v) for v in mine] == [type(v) for v in expected], number
    assert ours[1][1:4] == (dt.datetime(1990, 4, 2), dt.time(9, 30), dt.datetime(2021, 8, 15, 10, 45))
    assert ours[6][0] == "Nguyễn Thị" and ours[9][:4] == ("plain", "a & b ", "", None)
    assert ours[4] == [] and ours[11] == ()

    # The 1904 date system.
    with zipfile.ZipFile(path) as source:
        parts = {name: source.read(name) for name in source.namelist()}
    parts["xl/workbook.xml"] = parts["xl/workbook.xml"].replace(b"<workbookPr />", b"<workbookPr date1904=\"1\" />")
    assert b"date1904" in parts["xl/workbook.xml"]
    with zipfile.ZipFile(path, "w") as target:
        for name, content in parts.items():
            target.writestr(name, content)
    theirs, ours = read_both()
    assert ours == theirs and ours[1][1] == dt.datetime(1994, 4, 3)

    # A sheet whose elements carry a namespace prefix (as some writers write them).
    main = b"http://schemas.openxmlformats.org/spreadsheetml/2006/main"
    parts["xl/worksheets/sheet1.xml"] = re.sub(rb"<(/?)([a-zA-Z])", rb"<\1x:\2", parts["xl/worksheets/sheet1.xml"]
                                               ).replace(b'xmlns="' + main, b'xmlns:x="' + main)
    with zipfile.ZipFile(path, "w") as target:
        for name, content in parts.items():
            target.writestr(name, content)
    theirs, ours = read_both()
    assert ours == theirs and len(ours) == 13 and ours[9][1] == "a & b "
