"""The site registry file: CSV rows in, validated site records and per-row rejections out.

    code,name,province,district,kind,parent
    HCM-Q1-001,Trạm Y tế Phường Bến Nghé,79,Quận 1,fixed,
    HCM-Q1-M01,Đội tiêm lưu động Quận 1 số 1,79,Quận 1,mobile,HCM-Q1-001

Pure: no database, no files. It promises that every bad field of a row is
named with its reason, that a bad row never costs the good ones, and that
every record it returns can be stored as is: unique codes, and a parent that
is a good row of the same file or an already registered site.
"""

from __future__ import annotations

import csv
import dataclasses
import unicodedata
from collections.abc import Container, Iterable, Iterator

from .provinces import PROVINCES, province_code
from .valuesets import SITE_KINDS

REQUIRED_COLUMNS = ("code", "name", "province", "district", "kind")
OPTIONAL_COLUMNS = ("parent",)
CODE_MAX, NAME_MAX, DISTRICT_MAX = 32, 200, 100


class SiteFileError(ValueError):
    """The file cannot be read as a site registry at all (no header, missing or unknown columns)."""


@dataclasses.dataclass(frozen=True, slots=True)
class SiteRecord:
    line: int
    code: str
    name: str
    province: int
    district: str
    kind: str
    parent: str | None  # the parent site's code


@dataclasses.dataclass(frozen=True, slots=True)
class Rejection:
    line: int
    errors: tuple[tuple[str, str], ...]  # (field, reason): code, name, province, district, kind, parent

    def messages(self) -> list[str]:
        return [f"line {self.line}: {field}: {reason}" for field, reason in self.errors]


@dataclasses.dataclass(frozen=True, slots=True)
class SiteFile:
    rows: int  # data rows read (blank lines are not rows)
    sites: list[SiteRecord]
    rejected: list[Rejection]  # in line order
    has_parents: bool  # the file has a parent column: an empty parent then means "none"


def read_rows(lines: Iterable[str]) -> Iterator[tuple[int, int, list[str]]]:
    """(first line, last line, fields) of every CSV record, blank lines skipped."""
    reader = csv.reader(lines)
    start = 1
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as e:  # a field past csv.field_size_limit(): nothing sensible to go on with
            raise SiteFileError(f"line {start}: {e}") from e
        if fields:
            yield start, reader.line_num, fields
        start = reader.line_num + 1


def parse_sites(lines: Iterable[str], *, registered: Container[str] = frozenset()) -> SiteFile:
    """Validate a registry file; `registered` holds the codes already in the registry (possible parents)."""
    rows = read_rows(lines)
    header = _header(next(rows, None))
    sites: list[SiteRecord] = []
    rejected: dict[int, list[tuple[str, str]]] = {}
    first_line: dict[str, int] = {}
    count = 0
    for line, last, fields in rows:
        count += 1
        code, site, errors = _record(line, last, header, fields)
        if code in first_line:
            errors.insert(0, ("code", f"duplicate of line {first_line[code]}"))
        elif code:
            first_line[code] = line  # a bad row's code too: a later row with it is still a duplicate
        if errors:
            rejected[line] = errors
        else:
            sites.append(site)
    sites = _with_known_parents(sites, registered, rejected, first_line)
    return SiteFile(rows=count, sites=sites, has_parents="parent" in header,
                    rejected=[Rejection(line, tuple(errors)) for line, errors in sorted(rejected.items())])


def _header(first: tuple[int, int, list[str]] | None) -> dict[str, int]:
    if first is None:
        raise SiteFileError("the file is empty: expected a header row " + ",".join(REQUIRED_COLUMNS + OPTIONAL_COLUMNS))
    line, _, fields = first
    names = [unicodedata.normalize("NFC", f.lstrip("\ufeff")).strip().lower() for f in fields]
    problems = [f"unknown column {n!r}" for n in names if n not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
    problems += [f"column {n!r} twice" for n in sorted(set(names)) if names.count(n) > 1]
    problems += [f"missing column {n!r}" for n in REQUIRED_COLUMNS if n not in names]
    if problems:
        raise SiteFileError(f"line {line}: header: " + "; ".join(problems))
    return {name: i for i, name in enumerate(names)}


def _record(line: int, last: int, header: dict[str, int],
            fields: list[str]) -> tuple[str | None, SiteRecord | None, list[tuple[str, str]]]:
    """(the row's code if valid, the record if the whole row is, the row's errors)."""
    if last > line:  # no valid field holds a line break: this is a quote left open, which swallowed lines
        return None, None, [("row", f"a quoted field runs on to line {last} (a quote not closed?)")]
    if len(fields) != len(header):
        return None, None, [("row", f"{len(fields)} fields where the header has {len(header)}")]
    value = {name: fields[i].strip() for name, i in header.items()}
    errors: list[tuple[str, str]] = []
    code = _check(errors, "code", _code(value["code"]))
    name = _check(errors, "name", _text(value["name"], NAME_MAX))
    province = _check(errors, "province", _province(value["province"]))
    district = _check(errors, "district", _text(value["district"], DISTRICT_MAX))
    kind = _check(errors, "kind", _kind(value["kind"]))
    parent = _check(errors, "parent", _parent(value.get("parent", ""), code))
    if errors:
        return code, None, errors
    return code, SiteRecord(line, code, name, province, district, kind, parent or None), errors


def _check(errors: list[tuple[str, str]], field: str, outcome: tuple):
    value, reason = outcome
    if reason:
        errors.append((field, reason))
    return value


def _code(text: str) -> tuple[str | None, str | None]:
    if not text:
        return None, "empty"
    if len(text) > CODE_MAX:
        return None, f"{len(text)} characters, at most {CODE_MAX}"
    if not text.isprintable() or any(c.isspace() for c in text):
        return None, "printable characters without spaces only"
    return text, None


def _text(text: str, most: int) -> tuple[str | None, str | None]:
    text = unicodedata.normalize("NFC", text)  # "Hà Nội" typed as NFD compares equal on re-import
    if not text:
        return None, "empty"
    if len(text) > most:
        return None, f"{len(text)} characters, at most {most}"
    if not text.isprintable():
        return None, "printable characters only"
    return text, None


def _province(text: str) -> tuple[int | None, str | None]:
    if not text:
        return None, "empty"
    try:
        return province_code(text), None
    except ValueError:
        return None, f"{text!r} is not one of the {len(PROVINCES)} official province codes"


def _kind(text: str) -> tuple[str | None, str | None]:
    kind = text.lower() or "fixed"
    if kind not in SITE_KINDS:
        return None, f"{text!r} is not one of {', '.join(SITE_KINDS)}"
    return kind, None


def _parent(text: str, code: str | None) -> tuple[str | None, str | None]:
    if text and text == code:
        return None, "a site cannot be its own parent"
    return text, None


def _with_known_parents(sites: list[SiteRecord], registered: Container[str],
                        rejected: dict[int, list[tuple[str, str]]], first_line: dict[str, int]) -> list[SiteRecord]:
    """The sites whose parent is a good row of the file or a registered site; the others are rejected,
    and so, in turn, are the sites under them (a parent must exist once the import is stored)."""
    good = {site.code: site for site in sites}
    children: dict[str, list[SiteRecord]] = {}
    for site in sites:
        if site.parent:
            children.setdefault(site.parent, []).append(site)
    refused = [(site, _missing_parent(site.parent, first_line)) for site in sites
               if site.parent and site.parent not in good and site.parent not in registered]
    refused += [(site, f"{site.parent!r} leads back to this site: a cycle of parents") for site in _cycles(good)]
    for site, reason in refused:  # in order, growing: a site's own reason comes before its parent's fate
        if good.pop(site.code, None) is None:
            continue  # refused already
        rejected[site.line] = [("parent", reason)]
        if site.code not in registered:  # the sites under it have no parent left to be stored under
            refused += [(child, _missing_parent(site.code, first_line)) for child in children.get(site.code, ())]
    return [site for site in sites if site.code in good]


def _missing_parent(parent: str, first_line: dict[str, int]) -> str:
    if parent in first_line:
        return f"{parent!r} is not registered and its row (line {first_line[parent]}) was rejected"
    return f"{parent!r} is neither in this file nor registered"


def _cycles(good: dict[str, SiteRecord]) -> list[SiteRecord]:
    """Sites of the file whose chain of parents (within the file) comes back to them."""
    state: dict[str, int] = {}  # 1: on the current chain, 2: done
    cyclic: list[SiteRecord] = []
    for start in good:
        chain = []
        code = start
        while code in good and code not in state:
            state[code] = 1
            chain.append(code)
            code = good[code].parent
        if code in good and state.get(code) == 1:  # the chain came back to one of its own
            cyclic += [good[c] for c in chain[chain.index(code):]]
        for c in chain:
            state[c] = 2
    return cyclic
