"""The site registry: provinces, the registry file's validation (pure units), and `vaxline sites import | token
| activate | deactivate` against a real Postgres.

Covers: the site-file import (fixed and mobile sites with parents, re-import unchanged, edits, bad rows with
their line numbers beside the good ones, unknown provinces), token rotation, deactivation, the 63 provinces.
"""

import asyncio
import re
import unicodedata

import pytest

from commands.main import main
from storage.sites import import_sites, site_by_token_hash
from vaxline.provinces import PROVINCES, province_code, province_name
from vaxline.siteimport import SiteFileError, parse_sites
from vaxline.tokens import token_hash

HEADER = "code,name,province,district,kind,parent"


# -- provinces ------------------------------------------------------------------

def test_the_63_provinces_are_data_in_the_package():
    assert len(PROVINCES) == 63
    assert (PROVINCES[1], PROVINCES[48], PROVINCES[79], PROVINCES[96]) == ("Hà Nội", "Đà Nẵng", "Hồ Chí Minh", "Cà Mau")
    assert province_name("079") == "Hồ Chí Minh" and province_code(" 1") == 1
    assert all(unicodedata.is_normalized("NFC", name) for name in PROVINCES.values())
    for unknown in (0, 3, 97, "abc", "", True):
        with pytest.raises(ValueError):
            province_name(unknown)


# -- the registry file, pure ------------------------------------------------------

def parse(*rows: str, header: str = HEADER, registered=frozenset()):
    return parse_sites([f"{line}\n" for line in (header, *rows)], registered=registered)


def errors_of(*rows: str, **kwargs) -> list[str]:
    return [message for rejection in parse(*rows, **kwargs).rejected for message in rejection.messages()]


def test_a_valid_file_gives_one_record_per_row_and_kind_defaults_to_fixed():
    registry = parse("M-1,Đội lưu động 1,79,Quận 1,mobile,F-1", "F-1,Trạm Y tế Bến Nghé,079,Quận 1,,")
    assert registry.rows == 2 and registry.rejected == [] and registry.has_parents
    mobile, fixed = registry.sites
    assert (mobile.line, mobile.kind, mobile.parent) == (2, "mobile", "F-1")  # a parent further down is fine
    assert (fixed.line, fixed.province, fixed.kind, fixed.parent) == (3, 79, "fixed", None)


@pytest.mark.parametrize("row, field, reason", [
    (",Trạm,1,Ba Đình,fixed,", "code", "empty"),
    ("A B,Trạm,1,Ba Đình,fixed,", "code", "without spaces"),
    ("A\tB,Trạm,1,Ba Đình,fixed,", "code", "without spaces"),
    ("X" * 33 + ",Trạm,1,Ba Đình,fixed,", "code", "33 characters, at most 32"),
    ("A-1,,1,Ba Đình,fixed,", "name", "empty"),
    ("A-1," + "n" * 201 + ",1,Ba Đình,fixed,", "name", "201 characters, at most 200"),
    ("A-1,Trạm\x07,1,Ba Đình,fixed,", "name", "printable"),
    ("A-1,Trạm,,Ba Đình,fixed,", "province", "empty"),
    ("A-1,Trạm,99,Ba Đình,fixed,", "province", "'99' is not one of the 63 official province codes"),
    ("A-1,Trạm,3,Ba Đình,fixed,", "province", "not one of the 63"),
    ("A-1,Trạm,Hà Nội,Ba Đình,fixed,", "province", "not one of the 63"),
    ("A-1,Trạm,1,,fixed,", "district", "empty"),
    ("A-1,Trạm,1," + "d" * 101 + ",fixed,", "district", "101 characters, at most 100"),
    ("A-1,Trạm,1,Ba Đình,boat,", "kind", "'boat' is not one of fixed, mobile"),
    ("A-1,Trạm,1,Ba Đình,mobile,A-1", "parent", "its own parent"),
    ("A-1,Trạm,1,Ba Đình,mobile,NOWHERE", "parent", "'NOWHERE' is neither in this file nor registered"),
    ("A-1,Trạm,1,Ba Đình,fixed", "row", "5 fields where the header has 6"),
])
def test_each_bad_field_is_named_with_its_reason(row, field, reason):
    [message] = errors_of(row)
    assert message.startswith(f"line 2: {field}: ") and reason in message


def test_every_bad_field_of_a_row_is_listed_and_good_rows_are_kept():
    registry = parse("G-1,Trạm,1,Ba Đình,,", "B-1,,99,,boat,", "G-2,Trạm 2,1,Ba Đình,,")
    assert [s.code for s in registry.sites] == ["G-1", "G-2"]
    [bad] = registry.rejected
    assert bad.line == 3 and [field for field, _ in bad.errors] == ["name", "province", "district", "kind"]


def test_a_duplicated_code_is_an_error_for_the_later_row():
    registry = parse("A-1,First,1,Ba Đình,,", "A-2,Other,1,Ba Đình,,", "A-1,Second,1,Ba Đình,,")
    assert [s.name for s in registry.sites] == ["First", "Other"]
    assert [m for r in registry.rejected for m in r.messages()] == ["line 4: code: duplicate of line 2"]


def test_a_parent_must_be_a_good_row_or_registered_and_rejection_cascades():
    messages = errors_of(
        "F-OLD-TEAM,Đội,1,Ba Đình,mobile,F-OLD",  # registered before: fine
        "F-BAD,,1,Ba Đình,fixed,",  # rejected itself
        "M-1,Đội 1,1,Ba Đình,mobile,F-BAD",  # so its team is
        "M-1-SUB,Tổ,1,Ba Đình,mobile,M-1",  # and, in turn, what hangs below that team
        "C-1,Vòng 1,1,Ba Đình,mobile,C-2", "C-2,Vòng 2,1,Ba Đình,mobile,C-1",  # a cycle of parents
        registered={"F-OLD"})
    assert messages == [
        "line 3: name: empty",
        "line 4: parent: 'F-BAD' is not registered and its row (line 3) was rejected",
        "line 5: parent: 'M-1' is not registered and its row (line 4) was rejected",
        "line 6: parent: 'C-2' leads back to this site: a cycle of parents",
        "line 7: parent: 'C-1' leads back to this site: a cycle of parents",
    ]


def test_line_numbers_count_physical_lines_and_an_open_quote_is_one_bad_row():
    lines = ["\ufeffcode,name,province,district,kind\n", "\n", "A-1,Trạm,1,Ba Đình,\n", "\n",
             'B-1,"Trạm B,1,Ba Đình,\n', "C-1,Trạm C,1,Ba Đình,\n"]
    registry = parse_sites(lines)
    assert [s.code for s in registry.sites] == ["A-1"] and registry.rows == 2 and not registry.has_parents
    assert registry.rejected[0].messages() == ["line 5: row: a quoted field runs on to line 6 (a quote not closed?)"]


def test_names_are_stored_in_nfc_so_a_decomposed_file_reimports_unchanged():
    [site] = parse(unicodedata.normalize("NFD", "A-1, Trạm Y tế Láng Hạ ,1,Đống Đa,FIXED,")).sites
    assert site.name == "Trạm Y tế Láng Hạ" and unicodedata.is_normalized("NFC", site.name)
    assert site.district == "Đống Đa" and site.kind == "fixed"


@pytest.mark.parametrize("header, problem", [
    ("code,name,province,district", "missing column 'kind'"),
    ("code,name,province,district,kind,parnet", "unknown column 'parnet'"),
    ("code,name,province,district,kind,code", "column 'code' twice"),
])
def test_a_bad_header_refuses_the_whole_file(header, problem):
    with pytest.raises(SiteFileError, match=problem):
        parse("A-1,Trạm,1,Ba Đình,fixed,", header=header)
    with pytest.raises(SiteFileError, match="empty"):
        parse_sites([])


# -- the commands, on a real database ------------------------------------------------

@pytest.fixture
def vaxline(settings, monkeypatch, tmp_path, capsys):
    """Run `vaxline ...` in-process: (exit code, stdout, stderr)."""
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    monkeypatch.setenv("REDIS_URL", settings.redis_url)
    # main() points the root logger at stderr; keep the session's handlers (the personal-data check).
    monkeypatch.setattr("monitoring.logs.configure", lambda level=None: None)

    async def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        # In a thread: main() runs its own event loop, and this test's loop is running.
        code = await asyncio.to_thread(main, ["--data-dir", str(tmp_path), *args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def registry_rows(fixed: int = 20, teams: int = 2) -> list[str]:
    """Mobile teams first (their parents come later in the file), then the fixed sites."""
    provinces = sorted(PROVINCES)
    rows = [f"M-{i:03d}-{t},Đội tiêm lưu động {i}.{t},{provinces[i % 63]},Huyện {i % 7},mobile,F-{i:03d}"
            for i in range(fixed) for t in range(teams)]
    rows += [f"F-{i:03d},Trạm Y tế số {i},{provinces[i % 63]},Huyện {i % 7},fixed," for i in range(fixed)]
    return rows


def write(tmp_path, rows: list[str], name: str = "sites.csv") -> str:
    path = tmp_path / name
    path.write_text("\n".join([HEADER, *rows]) + "\n", encoding="utf-8")
    return str(path)


async def snapshot(db) -> dict:
    rows = await db.fetch("SELECT s.code, s.name, s.province, s.district, s.kind, p.code AS parent, s.token_hash,"
                          " s.active, s.updated_at FROM sites s LEFT JOIN sites p ON p.site_id = s.parent_id")
    return {row["code"]: dict(row) for row in rows}


def summary(out: str) -> str:
    return out.strip().splitlines()[-1]


async def test_import_registers_fixed_sites_and_mobile_teams_under_them(vaxline, db, tmp_path):
    code, out, err = await vaxline("sites", "import", write(tmp_path, registry_rows()))
    assert (code, err) == (0, "")
    assert summary(out) == "60 rows: 60 added, 0 updated, 0 unchanged, 0 rejected"
    sites = await snapshot(db)
    assert len(sites) == 60 and all(s["token_hash"] is None and s["active"] for s in sites.values())
    assert {c: s["parent"] for c, s in sites.items() if s["kind"] == "mobile"} == {
        f"M-{i:03d}-{t}": f"F-{i:03d}" for i in range(20) for t in range(2)}
    assert all(s["parent"] is None for s in sites.values() if s["kind"] == "fixed")
    assert (sites["F-005"]["name"], sites["F-005"]["province"], sites["F-005"]["district"]) == (
        "Trạm Y tế số 5", sorted(PROVINCES)[5], "Huyện 5")


async def test_a_second_import_changes_nothing_and_leaves_tokens_alone(vaxline, db, tmp_path):
    path = write(tmp_path, registry_rows())
    assert (await vaxline("sites", "import", path))[0] == 0
    code, out, _ = await vaxline("sites", "token", "F-003")
    token = out.strip().splitlines()[-1]
    before = await snapshot(db)
    code, out, err = await vaxline("sites", "import", path)
    assert (code, summary(out), err) == (0, "60 rows: 0 added, 0 updated, 60 unchanged, 0 rejected", "")
    assert await snapshot(db) == before  # updated_at included
    assert (await site_by_token_hash(db, token_hash(token))).code == "F-003"


async def test_an_edited_row_is_updated_and_only_it(vaxline, db, tmp_path):
    rows = registry_rows()
    assert (await vaxline("sites", "import", write(tmp_path, rows)))[0] == 0
    before = await snapshot(db)
    edited = [row.replace("Trạm Y tế số 4,", "Trạm Y tế Phường 4,") if row.startswith("F-004,") else
              row.replace(",F-001", ",F-002") if row.startswith("M-001-0,") else row for row in rows]
    edited.append("F-NEW,Trạm mới,1,Ba Đình,fixed,")
    code, out, _ = await vaxline("sites", "import", write(tmp_path, edited, "edited.csv"))
    assert (code, summary(out)) == (0, "61 rows: 1 added, 2 updated, 58 unchanged, 0 rejected")
    after = await snapshot(db)
    assert after["F-004"]["name"] == "Trạm Y tế Phường 4" and after["M-001-0"]["parent"] == "F-002"
    changed = {c for c in before if after[c]["updated_at"] != before[c]["updated_at"]}
    assert changed == {"F-004", "M-001-0"}


async def test_a_file_without_a_parent_column_leaves_parents_as_they_are(db):
    teams = parse("F-1,Trạm,1,Ba Đình,fixed,", "M-1,Đội,1,Ba Đình,mobile,F-1").sites
    await import_sites(db, teams)
    renamed = parse("M-1,Đội số 1,1,Ba Đình,mobile", header="code,name,province,district,kind")
    counts = await import_sites(db, renamed.sites, parents=renamed.has_parents)
    assert (counts.added, counts.updated, counts.unchanged) == (0, 1, 0)
    assert (await snapshot(db))["M-1"]["parent"] == "F-1"


async def test_bad_rows_are_reported_by_line_and_field_and_good_rows_are_imported(vaxline, db, tmp_path):
    rows = registry_rows(fixed=3, teams=1)  # M-000-0, M-001-0, M-002-0, F-000, F-001, F-002: lines 2-7
    rows[4] = "F-001,Trạm Y tế số 1,97,,fixed,"  # line 6: unknown province, no district
    rows += ["F-000,Again,1,Ba Đình,fixed,",  # line 8: duplicate
             "bad code,Trạm,1,Ba Đình,ship,"]  # line 9
    code, out, err = await vaxline("sites", "import", write(tmp_path, rows))
    assert code == 1
    assert summary(out) == "8 rows: 4 added, 0 updated, 0 unchanged, 4 rejected"
    assert err.splitlines() == [
        "line 3: parent: 'F-001' is not registered and its row (line 6) was rejected",
        "line 6: province: '97' is not one of the 63 official province codes",
        "line 6: district: empty",
        "line 8: code: duplicate of line 5",
        "line 9: code: printable characters without spaces only",
        "line 9: kind: 'ship' is not one of fixed, mobile",
    ]
    assert sorted(await snapshot(db)) == ["F-000", "F-002", "M-000-0", "M-002-0"]


async def test_an_unreadable_file_is_a_usage_error(vaxline, tmp_path):
    (tmp_path / "latin1.csv").write_bytes(f"{HEADER}\nA-1,Tr\xe1m,1,Ba Dinh,fixed,\n".encode("latin-1"))
    code, _, err = await vaxline("sites", "import", str(tmp_path / "latin1.csv"))
    assert code == 2 and "not UTF-8" in err
    code, _, err = await vaxline("sites", "import", str(tmp_path / "missing.csv"))
    assert code == 2 and "missing.csv" in err


async def test_sites_add_refuses_an_unknown_province(vaxline, db):
    code, out, err = await vaxline("sites", "add", "--code", "X-1", "--name", "Trạm", "--province", "99")
    assert (code, out) == (2, "") and "--province" in err and "63 official province codes" in err
    assert await db.fetchval("SELECT count(*) FROM sites") == 0
    assert (await vaxline("sites", "add", "--code", "X-1", "--name", "Trạm", "--province", "96"))[0] == 0


async def test_a_token_is_issued_then_rotated_and_the_old_one_stops_working(vaxline, db, tmp_path):
    await vaxline("sites", "import", write(tmp_path, registry_rows(fixed=2, teams=1)))
    code, out, err = await vaxline("sites", "token", "M-001-0")
    first = out.strip().splitlines()[-1]
    assert (code, err) == (0, "") and re.fullmatch(r"vx_[A-Za-z0-9_-]{40,}", first)
    assert (await site_by_token_hash(db, token_hash(first))).code == "M-001-0"
    code, out, _ = await vaxline("sites", "token", "M-001-0")
    second = out.strip().splitlines()[-1]
    assert code == 0 and second != first
    assert await site_by_token_hash(db, token_hash(first)) is None
    assert (await site_by_token_hash(db, token_hash(second))).code == "M-001-0"
    assert await db.fetchval("SELECT count(*) FROM sites WHERE token_hash IS NOT NULL") == 1
    code, out, err = await vaxline("sites", "token", "NO-SUCH-SITE")
    assert (code, out) == (1, "") and "no site with code 'NO-SUCH-SITE'" in err


async def test_a_deactivated_site_is_refused_and_keeps_its_history(vaxline, db, tmp_path):
    await vaxline("sites", "import", write(tmp_path, registry_rows(fixed=2, teams=1)))
    token = (await vaxline("sites", "token", "F-000"))[1].strip().splitlines()[-1]
    site = await site_by_token_hash(db, token_hash(token))
    await db.execute("INSERT INTO dose_stats VALUES ('2021-08-14', $1, 'EU/1/21/1529', 1, 42)", site.site_id)
    code, out, _ = await vaxline("sites", "deactivate", "F-000")
    assert code == 0 and "deactivated" in out
    assert await site_by_token_hash(db, token_hash(token)) is None
    row = await db.fetchrow("SELECT active, token_hash FROM sites WHERE code = 'F-000'")
    assert row["active"] is False and row["token_hash"] == token_hash(token)
    assert await db.fetchval("SELECT doses FROM dose_stats WHERE site_id = $1", site.site_id) == 42
    assert "already" in (await vaxline("sites", "deactivate", "F-000"))[1]
    code, out, err = await vaxline("sites", "token", "F-000")  # issued, but refused until activated
    rotated = out.strip().splitlines()[-1]
    assert code == 0 and "deactivated" in err and await site_by_token_hash(db, token_hash(rotated)) is None
    assert (await vaxline("sites", "activate", "F-000"))[0] == 0
    assert (await site_by_token_hash(db, token_hash(rotated))).code == "F-000"
    assert (await vaxline("sites", "activate", "NOPE"))[0] == 1
