"""The population registry: `vaxline registry import`, reconciliation of persons, name folding.

Covers: every status, and `review_due`; Vietnamese names with and without diacritics, in capitals, with
extra spaces, decomposed (NFD) on either side, all `verified`; a later extract that corrects a birth date
turns `birth_date_mismatch` into `verified` (the registry row updated in place, not duplicated) and leaves
persons it does not name as they were, while persons never reconciled are judged on the registry as it is;
the same file again reports every row unchanged and rewrites no person; a person whose record changed is
judged again; a repeated national ID (the later row wins) counted alike in one chunk, across chunks and one
row per chunk; bad rows of every kind reported by line and field (a stray quote not swallowing the next
line, bytes that are not UTF-8) with no value in the output while the good rows import, and past 100 only a
count; a file without a header refused without echoing its first line; one import at a time; a deadlock
victim retried; the pure reader (columns in any order, BOM, CRLF, quotes, `D/M/YYYY`, ISO forms other than
`YYYY-MM-DD` refused); `vx_fold_name` on tricky names.
"""

import asyncio
import datetime as dt
import io
import logging
import unicodedata

import asyncpg
import pytest

from commands.main import main
from storage import registry as store
from tests.conftest import PERSONAL_DATA
from vaxline import registry

TODAY = dt.date(2024, 6, 1)
HEADER = "national_id,full_name,birth_date,sex"


def write_extract(tmp_path, lines: list[str], name: str = "extract.csv", header: str = HEADER):
    path = tmp_path / name
    path.write_bytes("\n".join([header, *lines, ""]).encode())
    return path


async def add_person(db, national_id: str, full_name: str, birth_date: str, *, status: str | None = None) -> None:
    """A person as the persist transaction leaves them, already reviewed (review_due false)."""
    administered = dt.datetime(2021, 8, 14, 9, 30, tzinfo=dt.timezone.utc)
    await db.execute(
        "INSERT INTO persons (national_id, full_name, birth_date, sex, phone, first_administered_at,"
        " last_administered_at, registry_status, review_due) VALUES ($1, $2, $3, 'F', '0912345678', $4, $4, $5, false)",
        national_id, full_name, dt.date.fromisoformat(birth_date), administered, status)


async def persons(db) -> dict[str, tuple[str, bool]]:
    return {r["national_id"]: (r["registry_status"], r["review_due"])
            for r in await db.fetch("SELECT national_id, registry_status, review_due FROM persons")}


@pytest.fixture
def import_extract(settings, monkeypatch, capsys):
    """Run `vaxline registry import FILE` in-process: (exit code, stdout, stderr)."""
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    monkeypatch.setenv("REDIS_URL", settings.redis_url)

    async def run(path) -> tuple[int, str, str]:
        root = logging.getLogger()
        handlers, level = root.handlers[:], root.level
        try:  # main() configures logging for the process; the session's own handlers come back after
            argv = ["--data-dir", str(settings.data_dir), "registry", "import", str(path)]
            code = await asyncio.to_thread(main, argv)
        finally:
            root.handlers[:], root.level = handlers, level
        out, err = capsys.readouterr()
        return code, out, err

    return run


def summary(rows, added, updated, unchanged, rejected, verified, name_mismatch, birth_date_mismatch, not_found):
    return (f"{rows} rows: {added} added, {updated} updated, {unchanged} unchanged, {rejected} rejected;"
            f" {verified + name_mismatch + birth_date_mismatch + not_found} persons reconciled: verified {verified},"
            f" name_mismatch {name_mismatch}, birth_date_mismatch {birth_date_mismatch}, not_found {not_found}\n")


# -- reconciliation --------------------------------------------------------------------

async def test_every_status_and_review_due(tmp_path, db, import_extract):
    await add_person(db, "001090000001", "Nguyễn Thị Ánh", "1990-04-02")  # verified
    await add_person(db, "001090000002", "Trần Văn Hùng", "1985-01-15")  # name_mismatch
    await add_person(db, "001090000003", "Lê Ngọc Lan", "1970-12-31")  # birth_date_mismatch
    await add_person(db, "001090000004", "Phạm Minh Dũng", "2001-07-07")  # not_found
    await add_person(db, "B1234567", "Hoàng Thị Hoa", "1999-09-09")  # a passport, verified
    path = write_extract(tmp_path, [
        "001090000001,Nguyễn Thị Ánh,1990-04-02,F",
        "001090000002,Trần Văn Hải,1985-01-15,M",
        "001090000003,Lê Ngọc Lan,1970-12-30,F",
        "B1234567,HOANG THI HOA,09/09/1999,",
        "079199000009,Võ Hữu Nam,1999-03-03,M",  # in the registry, not (yet) a person
    ])
    code, out, err = await import_extract(path)
    assert (code, err) == (0, "")
    assert out == summary(5, 5, 0, 0, 0, verified=2, name_mismatch=1, birth_date_mismatch=1, not_found=1)
    assert await persons(db) == {
        "001090000001": ("verified", True), "001090000002": ("name_mismatch", True),
        "001090000003": ("birth_date_mismatch", True), "001090000004": ("not_found", True),
        "B1234567": ("verified", True)}
    assert await db.fetchval("SELECT count(*) FROM registry") == 5
    assert await db.fetchrow("SELECT full_name, birth_date, sex FROM registry WHERE national_id = 'B1234567'") == (
        "HOANG THI HOA", dt.date(1999, 9, 9), None)


async def test_vietnamese_names_with_or_without_diacritics_case_and_spacing_are_verified(tmp_path, db, import_extract):
    pairs = [  # (as the sites recorded the person, as the registry writes them)
        ("Đặng Thị Ánh Tuyết", "DANG THI ANH TUYET"),
        ("DANG THI ANH TUYET", "Đặng Thị Ánh Tuyết"),
        ("  đặng   thị ánh  tuyết ", "Đặng Thị Ánh Tuyết"),
        (unicodedata.normalize("NFD", "Nguyễn Hữu Đức"), "Nguyễn Hữu Đức"),  # decomposed, as some keyboards type
        ("Nguyễn Hữu Đức", unicodedata.normalize("NFD", "NGUYỄN HỮU ĐỨC")),  # decomposed in the extract
        ("Huỳnh Thị Mỹ Dung", "huynh thi my dung"),
        ("Phan Văn Ưng", "PHAN VAN UNG"),
    ]
    lines = []
    for n, (recorded, registered) in enumerate(pairs, start=1):
        national_id = f"0010900001{n:02d}"
        await add_person(db, national_id, recorded, "1990-04-02")
        lines.append(f"{national_id},{registered},1990-04-02,F")
    code, out, err = await import_extract(write_extract(tmp_path, lines))
    assert (code, err) == (0, "")
    assert out == summary(len(pairs), len(pairs), 0, 0, 0, verified=len(pairs), name_mismatch=0,
                          birth_date_mismatch=0, not_found=0)
    # An extract in decomposed Unicode is stored composed (NFC).
    assert await db.fetchval("SELECT full_name FROM registry WHERE national_id = '001090000105'") == "NGUYỄN HỮU ĐỨC"


async def test_a_later_extract_updates_the_person_in_place(tmp_path, db, import_extract):
    await add_person(db, "001090000001", "Nguyễn Thị Ánh", "1990-04-02")
    await add_person(db, "001090000002", "Trần Văn Hùng", "1985-01-15")
    await add_person(db, "001090000003", "Lê Ngọc Lan", "1970-12-31")
    first = write_extract(tmp_path, ["001090000001,Nguyễn Thị Ánh,1990-02-04,F",  # day and month swapped
                                     "001090000002,Trần Văn Hùng,1985-01-15,M",
                                     "001090000005,Hoàng Thị Hoa,1999-09-09,F"], name="first.csv")
    assert (await import_extract(first))[:2] == (0, summary(3, 3, 0, 0, 0, verified=1, name_mismatch=0,
                                                               birth_date_mismatch=1, not_found=1))
    before = await db.fetchrow("SELECT imported_at FROM registry WHERE national_id = '001090000001'")
    await db.execute("UPDATE persons SET review_due = false")  # the reviewer has read them
    await add_person(db, "001090000004", "Phạm Minh Dũng", "2001-07-07")  # new since: status NULL
    await add_person(db, "001090000005", "Hoàng Thị Hoa", "1999-09-09")  # new since, in the first extract only

    second = write_extract(tmp_path, ["001090000001,Nguyễn Thị Ánh,02/04/1990,F",  # corrected
                                      "001090000003,Lê Ngọc Lan,1970-12-31,F",  # was not_found
                                      "001090000004,Phạm Minh Dũng,2001-07-07,M"], name="second.csv")
    code, out, err = await import_extract(second)
    assert (code, err) == (0, "")
    assert out == summary(3, 2, 1, 0, 0, verified=5, name_mismatch=0, birth_date_mismatch=0, not_found=0)
    assert await persons(db) == {
        "001090000001": ("verified", True),  # its registry row changed
        "001090000002": ("verified", False),  # not in the second extract: left as it was
        "001090000003": ("verified", True),
        "001090000004": ("verified", True),
        "001090000005": ("verified", True)}  # never reconciled: judged on the registry as it is
    rows = await db.fetch("SELECT birth_date, imported_at FROM registry WHERE national_id = '001090000001'")
    assert len(rows) == 1 and rows[0]["birth_date"] == dt.date(1990, 4, 2)
    assert rows[0]["imported_at"] > before["imported_at"]
    assert await db.fetchval("SELECT count(*) FROM registry") == 5


async def test_importing_the_same_extract_again_changes_nothing(tmp_path, db, import_extract):
    await add_person(db, "001090000001", "Nguyễn Thị Ánh", "1990-04-02")
    await add_person(db, "001090000002", "Trần Văn Hùng", "1985-01-15")
    path = write_extract(tmp_path, ["001090000001,Nguyễn Thị Ánh,1990-04-02,F",
                                    "001090000002,Trần Văn Hải,1985-01-15,M",
                                    "001090000003,Lê Ngọc Lan,1970-12-31,F"])
    assert (await import_extract(path))[:2] == (0, summary(3, 3, 0, 0, 0, verified=1, name_mismatch=1,
                                                              birth_date_mismatch=0, not_found=0))
    await db.execute("UPDATE persons SET review_due = false")
    registry_before = await db.fetch("SELECT * FROM registry ORDER BY national_id")
    code, out, err = await import_extract(path)
    assert (code, err) == (0, "")
    assert out == summary(3, 0, 0, 3, 0, verified=1, name_mismatch=1, birth_date_mismatch=0, not_found=0)
    assert await db.fetch("SELECT * FROM registry ORDER BY national_id") == registry_before
    assert await persons(db) == {"001090000001": ("verified", False), "001090000002": ("name_mismatch", False)}


async def test_a_person_whose_record_changed_is_reconciled_again(tmp_path, db, import_extract):
    await add_person(db, "001090000001", "Nguyễn Thi Anh", "1990-04-02")
    path = write_extract(tmp_path, ["001090000001,Nguyễn Thị Ánh Tuyết,1990-04-02,F"])
    await import_extract(path)
    assert await persons(db) == {"001090000001": ("name_mismatch", True)}
    await db.execute("UPDATE persons SET full_name = 'Nguyễn Thị Ánh Tuyết', review_due = false")  # a newer dose
    code, out, _ = await import_extract(path)
    assert code == 0 and out.startswith("1 rows: 0 added, 0 updated, 1 unchanged, 0 rejected;")
    assert await persons(db) == {"001090000001": ("verified", True)}


async def test_a_repeated_national_id_the_later_row_wins_counted_row_by_row(tmp_path, db):
    lines = [HEADER, "001090000001,Nguyễn Thị Ánh,1990-04-02,F", "001090000002,Trần Văn Hùng,1985-01-15,M",
             "001090000001,Nguyễn Thị Ánh Tuyết,1990-04-02,F", "001090000001,Nguyễn Thị Ánh Tuyết,1990-04-02,F"]
    await add_person(db, "001090000001", "Nguyễn Thị Ánh Tuyết", "1990-04-02")
    data = "\n".join(lines).encode()
    for size in (50_000, 2, 1):  # one chunk, a repeat across chunks, every row its own chunk
        await db.execute("TRUNCATE registry")
        await db.execute("UPDATE persons SET registry_status = NULL")
        rows = registry.read_extract(io.BytesIO(data), today=TODAY)
        counts = await store.import_extract(db, registry.chunks(rows, size))
        assert counts == store.ImportCounts(added=2, updated=1, unchanged=1, rejected=0), size
        assert await db.fetch("SELECT national_id, full_name FROM registry ORDER BY 1") == [
            ("001090000001", "Nguyễn Thị Ánh Tuyết"), ("001090000002", "Trần Văn Hùng")]
        assert await persons(db) == {"001090000001": ("verified", True)}


async def test_one_import_at_a_time(tmp_path, db, import_extract):
    await db.execute("SELECT pg_advisory_lock($1)", store.IMPORT_LOCK)  # an import in progress
    code, out, err = await import_extract(write_extract(tmp_path, ["001090000001,Nguyễn Thị Ánh,1990-04-02,F"]))
    assert (code, out) == (2, "") and "another registry import is running" in err
    await db.execute("SELECT pg_advisory_unlock($1)", store.IMPORT_LOCK)
    assert (await import_extract(tmp_path / "extract.csv"))[0] == 0


async def test_a_chunk_chosen_as_a_deadlock_victim_is_retried():
    attempts = []

    async def transaction():
        attempts.append(1)
        if len(attempts) < 3:
            raise asyncpg.DeadlockDetectedError("deadlock detected")
        return "committed"

    assert await store._retrying_deadlocks(transaction) == "committed" and len(attempts) == 3


# -- bad rows --------------------------------------------------------------------------

async def test_bad_rows_are_reported_by_line_and_field_without_their_values(tmp_path, db, import_extract):
    await add_person(db, "001090000001", "Nguyễn Thị Ánh", "1990-04-02")
    lines = [
        "001090000001,Nguyễn Thị Ánh,02/04/1990,F",  # line 2: good (DD/MM/YYYY)
        "00109000000,Trần Văn Hùng,1985-01-15,M",  # 3: 11 digits
        "001090000003,,1970-12-31,F",  # 4: no name
        "001090000004,Phạm Minh Dũng,1990-02-30,M",  # 5: no such day
        "001090000005,Hoàng Thị Hoa,2099-01-01,X",  # 6: future, and sex
        "",  # 7: blank, skipped
        "001090000007,Võ Hữu Nam,1990-01-01",  # 8: three fields
        "001090000008,Huỳnh\tMai,1991-01-01,F",  # 9: a tab in the name
        "001090000009,Đặng Thị Lan,1888-01-01,F",  # 10: before 1900
        "001090000010,Phan Văn Hùng,14.08.1990,M",  # 11: a date format nobody promised
        '"001090000011,Vũ Ngọc Lan,1992-02-02,F',  # 12: a stray quote, which must not swallow line 13
        "001090000012,Lê Văn Hùng,1993-03-03,M",  # 13: good
    ]
    path = write_extract(tmp_path, lines)
    with path.open("ab") as extract:
        extract.write(b"001090000013,Nguy\xe1\xbb n Lan,1994-04-04,F\n")  # 14: not UTF-8
        extract.write(b"B1234567,Tr\xe1\xba\xa7n Th\xe1\xbb\x8b Mai,1995-05-05,F\n")  # 15: good
    code, out, err = await import_extract(path)
    assert code == 1
    assert err.splitlines() == [
        "line 3: national_id: " + registry.FIELD_RULES["national_id"],
        "line 4: full_name: is empty",
        "line 5: birth_date: is not a calendar date",
        "line 6: birth_date: is in the future",
        "line 6: sex: must be M, F or empty",
        "line 8: (row): has 3 fields, the header 4",
        "line 9: full_name: contains control characters",
        "line 10: birth_date: is before 1900-01-01",
        "line 11: birth_date: must be YYYY-MM-DD or DD/MM/YYYY",
        "line 12: (row): malformed quoting",
        "line 14: full_name: is not valid UTF-8",
    ]
    assert out == summary(13, 3, 0, 0, 10, verified=1, name_mismatch=0, birth_date_mismatch=0, not_found=0)
    assert await db.fetchval("SELECT count(*) FROM registry") == 3
    values = {value for line in lines for value in line.strip('"').split(",") if len(value) > 2} - {"F", "M"}
    assert not [value for value in values if value in out + err]
    assert not PERSONAL_DATA.search(out + err)


async def test_past_a_hundred_bad_rows_only_a_count(tmp_path, db, import_extract):
    lines = [f"0010900{n:05d},Nguyễn Thị Ánh,1990-13-01,F" for n in range(150)] + ["001090099999,Lê Lan,1990-01-01,F"]
    code, out, err = await import_extract(write_extract(tmp_path, lines))
    assert code == 1
    reported = err.splitlines()
    assert reported[0] == "line 2: birth_date: is not a calendar date"
    assert reported[99] == "line 101: birth_date: is not a calendar date"
    assert reported[100:] == ["... and 50 more rejected rows"]
    assert out.startswith("151 rows: 1 added, 0 updated, 0 unchanged, 150 rejected;")


async def test_a_file_without_the_header_is_refused_without_showing_its_first_line(tmp_path, import_extract):
    path = tmp_path / "no-header.csv"
    path.write_text("001090000001,Nguyễn Thị Ánh,1990-04-02,F\n")
    code, out, err = await import_extract(path)
    assert code == 2 and out == ""
    assert "national_id,full_name,birth_date,sex" in err and "001090000001" not in err and "Ánh" not in err
    code, _, err = await import_extract(tmp_path / "missing.csv")
    assert code == 2 and "No such file" in err


# -- the pure reader -------------------------------------------------------------------

def read(data: bytes) -> list:
    return list(registry.read_extract(io.BytesIO(data), today=TODAY))


def test_reader_columns_in_any_order_bom_quotes_and_crlf():
    data = ("\ufeffsex,birth_date,full_name,national_id,province\r\n"
            'F,1990-04-02,"Nguyễn Thị Ánh",001090000001,1\r\n'
            '  ,2/4/1990,"Lê, Văn Hùng", B12345678 ,79\r\n').encode()
    assert read(data) == [
        (2, (2, "001090000001", "Nguyễn Thị Ánh", dt.date(1990, 4, 2), "F")),
        (3, (3, "B12345678", "Lê, Văn Hùng", dt.date(1990, 4, 2), None)),
    ]


def test_reader_refuses_a_file_that_is_not_an_extract():
    for data in (b"", b"national_id,full_name,sex\n", b"001090000001,Nguyen Thi Anh,1990-04-02,F\n"):
        with pytest.raises(registry.ExtractError):
            registry.read_extract(io.BytesIO(data), today=TODAY)


def test_reader_iso_forms_other_than_yyyy_mm_dd_are_refused():
    rows = read(f"{HEADER}\n001090000001,A,19900402,F\n001090000001,A,1990-W14-1,F\n".encode())
    refused = registry.FieldError("birth_date", "must be YYYY-MM-DD or DD/MM/YYYY")
    assert [errors for _, errors in rows] == [[refused]] * 2


def test_chunks_keep_rejections_with_their_chunk():
    rows = read(f"{HEADER}\n001090000001,A,1990-04-02,F\nbad,A,1990-04-02,F\n001090000002,B,1990-04-02,M\n".encode())
    parts = list(registry.chunks(iter(rows), 1, position=lambda: 7))
    assert [([r[0] for r in c.rows], [line for line, _ in c.rejected], c.position) for c in parts] == [
        ([2], [], 7), ([4], [3], 7)]


# -- vx_fold_name ------------------------------------------------------------------------

async def test_vx_fold_name_on_tricky_names(db):
    cases = {
        "Nguyễn Thị Ánh": "nguyen thi anh",
        "NGUYỄN THỊ ÁNH": "nguyen thi anh",
        "Đặng Thị Ánh Tuyết": "dang thi anh tuyet",
        "ĐẶNG THỊ ÁNH TUYẾT": "dang thi anh tuyet",
        unicodedata.normalize("NFD", "Đặng Thị Ánh Tuyết"): "dang thi anh tuyet",
        unicodedata.normalize("NFD", "HUỲNH ƯỚC MƠ"): "huynh uoc mo",
        "  Trần\t\tVăn   Hùng  ": "tran van hung",
        "Phạm Ngọc Lan\n": "pham ngoc lan",
        "Vũ Thị Ỷ Lan": "vu thi y lan",
        "Lò Văn Páo": "lo van pao",
        "Ksor H'Bia": "ksor h'bia",
        "Nguyen-Tran Anh": "nguyen-tran anh",
        "Œ Müller Ñúñez": "œ muller nunez",  # only what the function's table folds
    }
    folded = await db.fetch("SELECT n, vx_fold_name(n) AS folded FROM unnest($1::text[]) n", list(cases))
    assert {r["n"]: r["folded"] for r in folded} == cases
    statuses = await db.fetch(
        "SELECT vx_registry_status($1, $2, $3, $4), vx_registry_status($1, $2, NULL, NULL),"
        " vx_registry_status($1, $2, 'Tran Van Hung', $2), vx_registry_status($1, $2, $3, $2 + 1)",
        "Nguyễn Thị Ánh", dt.date(1990, 4, 2), "NGUYEN THI ANH", dt.date(1990, 4, 2))
    assert tuple(statuses[0]) == ("verified", "not_found", "name_mismatch", "birth_date_mismatch")
