"""Reading an extract of the national population registry: streamed, each row validated on its own.

An extract is a CSV file with the header `national_id,full_name,birth_date,sex` (in any order; other
columns are ignored). `read_extract` yields every data line as `(line_number, row)` or
`(line_number, [FieldError, ...])`, so one bad row never costs the good ones, and holds one line in
memory at a time. Each physical line is one row: a stray quote cannot swallow the lines after it.
Errors name the line and the field, never a value: national IDs and names are personal data.

Pure: no database, no clock of its own (`today` bounds birth dates). `chunks` groups the rows for
COPY, each chunk saying where reading stood (the file's byte offset, for a progress bar).
"""

from __future__ import annotations

import csv
import datetime as dt
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from operator import itemgetter
from typing import NamedTuple

from .doses import EARLIEST_BIRTH, FIELD_RULES, NATIONAL_ID_PATTERN, FieldError

COLUMNS = ("national_id", "full_name", "birth_date", "sex")
# A valid row is a plain tuple, the COPY record (a NamedTuple costs 4x as much to build, a million
# times): (line, national_id, full_name, birth_date, sex). The line orders a repeated national ID.
ROW_FIELDS = ("line", "national_id", "full_name", "birth_date", "sex")
RegistryRow = tuple  # (int, str, str, datetime.date, str | None), in ROW_FIELDS order
MAX_NAME = 200  # as a dose's full_name
SEXES = {"M": "M", "F": "F", "": None}

_national_id = re.compile(NATIONAL_ID_PATTERN).match
_day_month_year = re.compile(r"([0-9]{1,2})/([0-9]{1,2})/([0-9]{4})").fullmatch


class ExtractError(ValueError):
    """The file is not a registry extract at all (no header, a missing column)."""


def read_extract(lines: Iterable[bytes], *, today: dt.date) -> Iterator[tuple[int, RegistryRow | list[FieldError]]]:
    """The extract's data rows, validated; raises ExtractError at once when the header is wrong.

    `lines` is a file opened in binary mode, or any iterable of byte lines. Bytes that are not UTF-8
    reject their own row only. Names are stored NFC-normalized, surrounding spaces dropped. A
    national ID repeated in one extract is not an error: the later row wins (the importer applies
    rows in line order).
    """
    lines = iter(lines)
    first = next(lines, b"").decode("utf-8", "replace").removeprefix("\ufeff")
    try:
        header = [name.strip() for name in _split(first)]
    except csv.Error:
        header = []
    missing = [name for name in COLUMNS if name not in header]
    if missing:
        raise ExtractError(f"the first line must be the header {','.join(COLUMNS)} (missing: {', '.join(missing)})")
    return _rows(lines, itemgetter(*(header.index(name) for name in COLUMNS)), len(header), today)


def _rows(lines: Iterator[bytes], columns: itemgetter, width: int,
          today: dt.date) -> Iterator[tuple[int, RegistryRow | list[FieldError]]]:
    dates: dict[str, dt.date] = {}  # a few tens of thousands of distinct birth dates: parse each once
    for number, line in enumerate(lines, start=2):
        try:
            fields = _split(line.decode("utf-8", "surrogateescape"))
        except csv.Error:
            yield number, [FieldError(field="(row)", reason="malformed quoting")]
            continue
        if len(fields) != width:
            if len(fields) == 1 and not fields[0].strip():
                continue  # a blank line
            yield number, [FieldError(field="(row)", reason=f"has {len(fields)} fields, the header {width}")]
            continue
        national_id, full_name, birth_date, sex = columns(fields)
        national_id, full_name, sex = national_id.strip(), full_name.strip(), sex.strip()
        birth = dates.get(birth_date) or _date(birth_date.strip())
        if (_national_id(national_id) and 0 < len(full_name) <= MAX_NAME and full_name.isprintable()
                and sex in SEXES and type(birth) is dt.date and EARLIEST_BIRTH <= birth <= today):
            dates[birth_date] = birth
            yield number, (number, national_id, unicodedata.normalize("NFC", full_name), birth, SEXES[sex])
        else:
            yield number, _errors(national_id, full_name, birth, sex, today)


def _split(line: str) -> list[str]:
    """One line's fields: a plain split unless the line quotes (then the csv module, one line only)."""
    line = line.rstrip("\r\n")
    if '"' not in line:
        return line.split(",")
    return next(csv.reader([line], strict=True), [""])


def _date(text: str) -> dt.date | str:
    """YYYY-MM-DD, or DD/MM/YYYY as people type it (D/M too); else the reason it is neither."""
    try:
        if len(text) == 10 and text[4] == "-" and text[7] == "-" and text.isascii():
            return dt.date.fromisoformat(text)  # the length and dashes rule out 3.11's other ISO forms
        if match := _day_month_year(text):
            day, month, year = match.groups()
            return dt.date(int(year), int(month), int(day))
    except ValueError:
        return "is not a calendar date"
    return "must be YYYY-MM-DD or DD/MM/YYYY"


def _errors(national_id: str, full_name: str, birth: dt.date | str, sex: str, today: dt.date) -> list[FieldError]:
    """Every wrong field of a row that failed the fast check, with its reason (the slow path)."""
    errors = []
    if not _national_id(national_id):
        errors.append(FieldError(field="national_id", reason=FIELD_RULES["national_id"]))
    if not full_name:
        errors.append(FieldError(field="full_name", reason="is empty"))
    elif len(full_name) > MAX_NAME:
        errors.append(FieldError(field="full_name", reason=f"is longer than {MAX_NAME} characters"))
    elif not full_name.isprintable():
        reason = "is not valid UTF-8" if _undecodable(full_name) else "contains control characters"
        errors.append(FieldError(field="full_name", reason=reason))
    if isinstance(birth, str):
        errors.append(FieldError(field="birth_date", reason=birth))
    elif birth < EARLIEST_BIRTH:
        errors.append(FieldError(field="birth_date", reason="is before 1900-01-01"))
    elif birth > today:
        errors.append(FieldError(field="birth_date", reason="is in the future"))
    if sex not in SEXES:
        errors.append(FieldError(field="sex", reason="must be M, F or empty"))
    return errors


def _undecodable(text: str) -> bool:
    return any("\udc80" <= c <= "\udcff" for c in text)  # surrogateescape's stand-ins for bad bytes


class Chunk(NamedTuple):
    """Consecutive lines of an extract: their valid rows, their rejections, and where reading stood
    after them (`position()` of `chunks`, e.g. the file's byte offset)."""

    rows: list[RegistryRow]
    rejected: list[tuple[int, list[FieldError]]]
    position: int


def chunks(entries: Iterable[tuple[int, RegistryRow | list[FieldError]]], size: int, *,
           position: Callable[[], int] = lambda: 0) -> Iterator[Chunk]:
    """`read_extract`'s output in chunks of at most `size` valid rows."""
    rows: list[RegistryRow] = []
    rejected: list[tuple[int, list[FieldError]]] = []
    for number, entry in entries:
        if type(entry) is tuple:
            rows.append(entry)
            if len(rows) == size:
                yield Chunk(rows, rejected, position())
                rows, rejected = [], []
        else:
            rejected.append((number, entry))
    if rows or rejected:
        yield Chunk(rows, rejected, position())
