"""Back-entry: a site's spreadsheet rows turned into doses, and the rows that fail into an error report.

In 2021 about two million doses were never entered or were entered wrong, and hospitals collected
them in spreadsheets sent by e-mail. This module reads such rows as people type them (Vietnamese
headers, `14/08/2021`, Excel date cells, `Nữ`, `AstraZeneca`) and turns each into the fields of
POST /v1/doses, which then go through the very same validation (`msgspec.convert` into `Dose`, then
`check_dose`): a back-entered dose is held to the rules of a live one. Every wrong field of a row is
named with its reason, so the site can fix the row and import the error report again.

Pure: no I/O except what is handed in (rows as sequences of cell values; a row writer for the
report), no clock of its own (`now` bounds administration times, as for POST /v1/doses). Cell values
are what the readers give: text (CSV, XLSX strings), int/float, bool, datetime/date/time (XLSX date
cells) or None for an empty cell.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import msgspec

from vaxline import csvsafe
from vaxline.doses import Dose, FieldError, dose_from_fields, field_errors
from vaxline.valuesets import VACCINE_PRODUCTS

VIETNAM = dt.timezone(dt.timedelta(hours=7))
# A date without a time of day is taken at noon, Vietnam time: the middle of the day keeps the
# calendar day (statistics, duplicates) whatever the reader's time zone.
DEFAULT_TIME = dt.time(12, 0)
TIME_FIELD = "administered_time"  # the optional separate time-of-day column
ROW_COLUMN, ERRORS_COLUMN = "row", "errors"  # added by the error report; ignored when importing


class Column(NamedTuple):
    field: str  # a Dose field, or TIME_FIELD
    header: str  # the template's Vietnamese header
    required: bool
    rule: str  # how to fill it in (the template's instructions)
    example: str


COLUMNS: tuple[Column, ...] = (
    Column("record_id", "Mã bản ghi", True, "mã riêng của cơ sở cho mũi tiêm này (1-64 ký tự); nhập lại cùng mã"
           " không tạo bản ghi mới / the site's own id of the record; importing it again adds nothing",
           "BV-2021-000123"),
    Column("national_id", "Số CCCD/CMND", True, "12 số (CCCD), 9 số (CMND) hoặc số hộ chiếu / 12-digit CCCD,"
           " 9-digit CMND or a passport number", "001099012345"),
    Column("full_name", "Họ và tên", True, "1-200 ký tự / 1-200 characters", "Nguyễn Thị Ánh"),
    Column("birth_date", "Ngày sinh", True, "DD/MM/YYYY (hoặc YYYY-MM-DD)", "02/04/1990"),
    Column("sex", "Giới tính", False, "Nam / Nữ (hoặc M / F); có thể để trống / may be empty", "Nữ"),
    Column("phone", "Số điện thoại", False, "8-15 chữ số; có thể để trống / 8-15 digits, may be empty",
           "0912345678"),
    Column("vaccine", "Vắc xin", True, "tên hoặc mã vắc xin (xem bảng dưới) / product name or code (table below)",
           "AstraZeneca"),
    Column("lot", "Số lô", True, "1-32 ký tự / 1-32 characters", "ABV5300"),
    Column("dose_number", "Mũi số", True, "1-9", "1"),
    Column("administered_at", "Ngày tiêm", True, "DD/MM/YYYY, có thể kèm giờ (DD/MM/YYYY HH:MM); giờ Việt Nam"
           " / a date, optionally with the time; Vietnam time", "14/08/2021"),
    Column(TIME_FIELD, "Giờ tiêm", False, "HH:MM (giờ Việt Nam); trống: 12:00 / Vietnam time; empty: 12:00",
           "09:30"),
)
FIELDS: tuple[str, ...] = tuple(c.field for c in COLUMNS)
REQUIRED: tuple[str, ...] = tuple(c.field for c in COLUMNS if c.required)

# Header synonyms, compared folded (see `fold`): case, diacritics and punctuation do not matter, so
# "SỐ CCCD / CMND", "so cccd-cmnd" and "Số CCCD/CMND" are one column, as are "record_id" and "Record ID".
_SYNONYMS: dict[str, tuple[str, ...]] = {
    "record_id": ("ma ban ghi", "ma", "ma mui tiem", "ma ho so", "id", "record id", "record"),
    "national_id": ("so cccd cmnd", "cccd cmnd", "so cccd", "so cmnd", "cccd", "cmnd", "so cccd cmnd ho chieu",
                    "cccd cmnd ho chieu", "so cmnd cccd", "cmnd cccd", "so dinh danh", "so dinh danh ca nhan",
                    "ma dinh danh", "so giay to tuy than", "giay to tuy than", "national id"),
    "full_name": ("ho va ten", "ho ten", "ten", "full name", "name"),
    "birth_date": ("ngay sinh", "ngay thang nam sinh", "sinh ngay", "birth date", "date of birth", "birthdate", "dob"),
    "sex": ("gioi tinh", "gioi", "phai", "sex", "gender"),
    "phone": ("so dien thoai", "dien thoai", "sdt", "so dt", "dt", "phone", "phone number", "mobile"),
    "vaccine": ("vac xin", "vacxin", "vaccin", "ten vac xin", "loai vac xin", "vaccine", "product"),
    "lot": ("so lo", "lo", "lo vac xin", "so lo vac xin", "lot", "lot number"),
    "dose_number": ("mui so", "mui tiem thu", "mui thu", "mui", "so mui", "mui tiem so", "dose number", "dose"),
    "administered_at": ("ngay tiem", "ngay gio tiem", "thoi diem tiem", "ngay tiem chung", "administered at",
                        "administration date", "date administered"),
    TIME_FIELD: ("gio tiem", "thoi gian tiem", "gio", "administered time", "administration time", "time"),
}
# Columns read past: the error report's own (a new report replaces them), and the serial number column
# most sheets start with (kept in the report, as any column of the site's).
_REPORT_COLUMNS = frozenset({ROW_COLUMN, ERRORS_COLUMN, "dong", "loi"})
_SERIAL_COLUMNS = frozenset({"stt", "so thu tu", "tt"})

# Product names as hospitals wrote them in 2021, folded, to the EU DCC product codes of POST /v1/doses.
_VACCINE_NAMES: dict[str, str] = {
    "astrazeneca": "EU/1/21/1529", "astra zeneca": "EU/1/21/1529", "az": "EU/1/21/1529",
    "vaxzevria": "EU/1/21/1529",
    "pfizer": "EU/1/20/1528", "pfizer biontech": "EU/1/20/1528", "biontech": "EU/1/20/1528",
    "comirnaty": "EU/1/20/1528",
    "moderna": "EU/1/20/1507", "spikevax": "EU/1/20/1507",
    "janssen": "EU/1/20/1525", "jcovden": "EU/1/20/1525", "johnson johnson": "EU/1/20/1525",
    "novavax": "EU/1/21/1618", "nuvaxovid": "EU/1/21/1618",
    "vero cell": "BBIBP-CorV", "verocell": "BBIBP-CorV", "sinopharm": "BBIBP-CorV",
    "sinopharm vero cell": "BBIBP-CorV",
    "sinovac": "CoronaVac",
    "sputnik": "Sputnik-V", "sputnik v": "Sputnik-V", "gam covid vac": "Sputnik-V",
    "hayat": "Hayat-Vax",
} | {" ".join(re.findall(r"[a-z0-9]+", code.lower())): code for code in VACCINE_PRODUCTS}
# The names the template and the error messages show, each with the code it stands for.
VACCINE_TABLE: tuple[tuple[str, str], ...] = tuple(
    (name, _VACCINE_NAMES[" ".join(re.findall(r"[a-z0-9]+", name.lower()))])
    for name in ("AstraZeneca", "Pfizer", "Moderna", "Janssen", "Novavax", "Vero Cell", "Sinovac", "Sputnik V",
                 "Hayat-Vax", "Abdala", "Covaxin"))

_SEXES = {"m": "M", "nam": "M", "male": "M", "f": "F", "nu": "F", "female": "F"}


def fold(text: Any) -> str:
    """Lower case, without diacritics (đ -> d) or punctuation, words single-spaced: how headers compare."""
    text = unicodedata.normalize("NFD", str(text).replace("đ", "d").replace("Đ", "d"))
    text = "".join(c for c in text if not unicodedata.combining(c)).lower()
    return " ".join(re.findall(r"[a-z0-9]+", text))


_BY_FOLDED = {synonym: field for field, synonyms in _SYNONYMS.items() for synonym in synonyms}
_BY_FOLDED.update({fold(c.header): c.field for c in COLUMNS} | {fold(f): f for f in FIELDS})


# -- the header -------------------------------------------------------------------------

class HeaderError(ValueError):
    """A row is not a usable header: missing, unknown or repeated columns (named). `known` counts the
    columns it did recognise (the row most like a header is the one to complain about)."""

    def __init__(self, message: str, known: int = 0):
        super().__init__(message)
        self.known = known


@dataclasses.dataclass(frozen=True)
class ColumnMap:
    """Where each field sits in a row, read from the header."""

    header: tuple[str, ...]  # the header's cells, as text
    positions: dict[str, int]  # field -> column index
    report_columns: tuple[int, ...]  # an earlier error report's own columns (row, errors)

    def label(self, field: str) -> str:
        """`field (Header as written)`, how the report and messages name a column."""
        position = self.positions.get(field)
        written = self.header[position] if position is not None else ""
        return f"{field} ({written})" if written and written != field else field


def header_text(cell: Any) -> str:
    return "" if cell is None else str(cell).strip()


def map_header(cells: Sequence[Any]) -> ColumnMap:
    """The column map of a header row; HeaderError names every unknown, repeated or missing column.

    Columns without a header are read past (spreadsheets often carry empty formatted columns)."""
    header = tuple(header_text(c) for c in cells)
    positions: dict[str, int] = {}
    report_columns, unknown, repeated = [], [], []
    for index, text in enumerate(header):
        folded = fold(text)
        if not folded or folded in _SERIAL_COLUMNS:
            continue
        if folded in _REPORT_COLUMNS:
            report_columns.append(index)
        elif (field := _BY_FOLDED.get(folded)) is None:
            unknown.append(text)
        elif field in positions:
            repeated.append(f"{header[positions[field]]!r} and {text!r} are both {field}")
        else:
            positions[field] = index
    missing = [f"{field} ({_header_of(field)})" for field in REQUIRED if field not in positions]
    if not positions:
        # Not a header at all (its values may be someone's ID and name: never repeat them).
        raise HeaderError("no header row: no row names a known column (expected e.g. "
                          + ", ".join(c.header for c in COLUMNS if c.required) + ")")
    problems = []
    if unknown:
        problems.append("unknown columns: " + ", ".join(_shown(text) for text in unknown))
    if repeated:
        problems.append("repeated columns: " + "; ".join(repeated))
    if missing:
        problems.append("missing required columns: " + ", ".join(missing))
    if problems:
        raise HeaderError("; ".join(problems), known=len(positions))
    return ColumnMap(header, positions, tuple(report_columns))


def _header_of(field: str) -> str:
    return next(c.header for c in COLUMNS if c.field == field)


def _shown(text: str) -> str:
    """A header cell as a message may show it: never a long number (an ID or a phone typed as a header)."""
    text = text if len(text) <= 40 else text[:37] + "..."
    return "(a number)" if sum(ch.isdigit() for ch in text) >= 8 else repr(text)


def is_field_names_row(cells: Sequence[Any], columns: ColumnMap) -> bool:
    """Whether a row repeats the header in other words (the template's second row: the English field
    names under the Vietnamese headers): every mapped column's cell names that same field."""
    named = 0
    for field, position in columns.positions.items():
        cell = cells[position] if position < len(cells) else None
        if cell is None or cell == "":
            continue
        if not isinstance(cell, str) or _BY_FOLDED.get(fold(cell)) != field:
            return False
        named += 1
    return named >= len(REQUIRED)


# -- dates and times as people type them ----------------------------------------------------

_dmy = re.compile(r"([0-9]{1,2})[/.-]([0-9]{1,2})[/.-]([0-9]{4})").fullmatch
_ymd = re.compile(r"([0-9]{4})[-/.]([0-9]{1,2})[-/.]([0-9]{1,2})").fullmatch
_serial = re.compile(r"[0-9]{5}(?:\.[0-9]+)?").fullmatch
_clock = re.compile(r"([0-9]{1,2})\s*(?:[:h]\s*([0-9]{1,2})?)?(?::([0-9]{1,2})(?:\.[0-9]+)?)?"
                    r"\s*(am|pm|sa|ch)?").fullmatch
_EXCEL_EPOCH = dt.datetime(1899, 12, 30)
DATE_RULE = "must be a date: DD/MM/YYYY, YYYY-MM-DD or DD-MM-YYYY"
TIME_RULE = "must be a time of day: HH:MM (or HH:MM:SS, 9h30)"


class Unreadable(ValueError):
    """A cell that cannot be read as its field; the message is the reason."""


def excel_serial(value: float) -> dt.datetime:
    """An Excel serial date (days since 1899-12-30, with Excel's fictitious 1900-02-29 as serial 60)."""
    if not 1 <= value < 2958466:
        raise Unreadable(DATE_RULE)
    if value < 61:
        if int(value) == 60:
            raise Unreadable("is 29/02/1900, a date that does not exist")
        value += 1  # before Excel's 1900-02-29 the serials are one day off
    return _EXCEL_EPOCH + dt.timedelta(days=value)


def parse_date_text(text: str) -> dt.date:
    """DD/MM/YYYY (also with - or .), YYYY-MM-DD, or an Excel serial (44422) as a CSV export shows it."""
    try:
        if match := _dmy(text):
            day, month, year = match.groups()
            return dt.date(int(year), int(month), int(day))
        if match := _ymd(text):
            year, month, day = match.groups()
            return dt.date(int(year), int(month), int(day))
    except ValueError:
        raise Unreadable("is not a calendar date") from None
    if _serial(text):
        return excel_serial(float(text)).date()
    raise Unreadable(DATE_RULE)


def parse_clock(text: str) -> dt.time:
    """HH:MM, HH:MM:SS, 9h30, 9h, with AM/PM (or SA/CH, sáng/chiều, as Vietnamese Excel shows them)."""
    match = _clock(text.strip().lower())
    if not match:
        raise Unreadable(TIME_RULE)
    hour, minute, second = int(match[1]), int(match[2] or 0), int(match[3] or 0)
    if match[4] in ("pm", "ch") and hour < 12:
        hour += 12
    elif match[4] in ("am", "sa") and hour == 12:
        hour = 0
    try:
        return dt.time(hour, minute, second)
    except ValueError:
        raise Unreadable("is not a time of day") from None


def read_date(cell: Any) -> dt.date:
    """A birth date cell: text, an Excel date cell, or an Excel serial number."""
    if isinstance(cell, dt.datetime):
        return cell.date()
    if isinstance(cell, dt.date):
        return cell
    if isinstance(cell, (int, float)) and not isinstance(cell, bool):
        return excel_serial(cell).date()
    if isinstance(cell, str):
        return parse_date_text(cell.strip())
    raise Unreadable(DATE_RULE)


def read_moment(cell: Any) -> tuple[dt.date, dt.time | None, dt.tzinfo | None]:
    """An administration cell: (date, time of day or None when the cell has none, its offset if it says one).

    An Excel date-time cell at exactly midnight is a date cell (Excel stores dates as midnight)."""
    if isinstance(cell, dt.datetime):
        if cell.tzinfo is None and cell.time() == dt.time(0):
            return cell.date(), None, None
        return cell.date(), cell.timetz().replace(tzinfo=None), cell.tzinfo
    if isinstance(cell, dt.date):
        return cell, None, None
    if isinstance(cell, (int, float)) and not isinstance(cell, bool):
        moment = excel_serial(cell)
        return moment.date(), (moment.time() if moment.time() != dt.time(0) else None), None
    if not isinstance(cell, str):
        raise Unreadable(DATE_RULE)
    text = cell.strip()
    if "T" in text or text.endswith("Z") or "+" in text:  # RFC 3339, as POST /v1/doses takes it
        try:
            moment = dt.datetime.fromisoformat(text)
        except ValueError:
            raise Unreadable("must be a date (DD/MM/YYYY) or an RFC 3339 date-time") from None
        return moment.date(), moment.timetz().replace(tzinfo=None), moment.tzinfo
    date_text, _, clock_text = text.partition(" ")
    date = parse_date_text(date_text)
    if _serial(date_text) and "." in date_text:
        moment = excel_serial(float(date_text))
        return date, moment.time().replace(microsecond=0), None
    return date, parse_clock(clock_text) if clock_text.strip() else None, None


def read_time(cell: Any) -> dt.time:
    """A time-of-day cell: text, an Excel time cell, or a fraction of a day."""
    if isinstance(cell, dt.time):
        return cell.replace(tzinfo=None, microsecond=0)
    if isinstance(cell, dt.datetime):  # a time typed into a date-time cell
        return cell.time().replace(microsecond=0)
    if isinstance(cell, (int, float)) and not isinstance(cell, bool):
        if not 0 <= cell < 1:
            raise Unreadable(TIME_RULE)
        seconds = round(cell * 86400)
        return dt.time(min(23, seconds // 3600), seconds // 60 % 60, seconds % 60)
    if isinstance(cell, str):
        return parse_clock(cell)
    raise Unreadable(TIME_RULE)


# -- one row -> one dose ---------------------------------------------------------------------------

def _text(cell: Any) -> str:
    """A cell as text: numbers without a spurious `.0` (an ID typed into a number cell). U+FFFD is what
    a wrong encoding, or an error report that could not hold a control character, leaves: refused. The
    `'` a CSV error report put before `+84...` or `=...` (vaxline.csvsafe) is taken off again."""
    if isinstance(cell, str):
        if "\ufffd" in cell:
            raise Unreadable("contains an unreadable character (\ufffd): retype it")
        return csvsafe.restored(cell).strip()
    if isinstance(cell, float) and cell.is_integer():
        return str(int(cell))
    return str(cell).strip()


def national_id_of(cell: Any) -> str:
    """Spaces dropped, a passport's letter in capitals, and the leading zeros a spreadsheet drops from
    a number restored: 10-11 digits can only be a 12-digit CCCD (province codes start 001-096), 8 a
    9-digit CMND."""
    text = _text(cell).replace(" ", "").upper()
    if text.isdigit() and text.isascii():
        if len(text) in (10, 11):
            return text.zfill(12)
        if len(text) == 8:
            return text.zfill(9)
    return text


def phone_of(cell: Any) -> str:
    """Spaces, dots and dashes dropped; a 9-digit mobile number that lost its leading 0 to a number cell
    gets it back (Vietnamese mobile numbers are 0 and 9 digits starting 3, 5, 7, 8 or 9)."""
    text = re.sub(r"[\s.\-()]", "", _text(cell))
    if len(text) == 9 and text.isdigit() and text[0] in "35789":
        return "0" + text
    return text


def vaccine_of(cell: Any) -> str:
    text = _text(cell)
    if text in VACCINE_PRODUCTS:
        return text
    return _VACCINE_NAMES.get(fold(text), text)


def sex_of(cell: Any) -> str:
    sex = _SEXES.get(fold(cell))
    if sex is None:
        raise Unreadable("must be Nam or Nữ (M or F), or empty")
    return sex


def dose_number_of(cell: Any) -> int:
    if isinstance(cell, bool):
        raise Unreadable("must be a whole number 1-9")
    if isinstance(cell, int):
        return cell
    if isinstance(cell, float) and cell.is_integer():
        return int(cell)
    text = fold(cell).removeprefix("mui ").removeprefix("dose ")
    if text.isdigit():
        return int(text)
    raise Unreadable("must be a whole number 1-9")


_PLAIN = {"record_id": _text, "lot": _text, "full_name": lambda cell: unicodedata.normalize("NFC", _text(cell)),
          "national_id": national_id_of, "phone": phone_of, "vaccine": vaccine_of, "sex": sex_of,
          "dose_number": dose_number_of, "birth_date": read_date}
# Columns with few distinct texts (products, sexes, dates, times) are read once per distinct text: the
# hot path of a million rows. At most this many texts are kept per column, so memory stays flat.
_REMEMBERED = frozenset({"lot", "vaccine", "sex", "dose_number", "birth_date", "administered_at", TIME_FIELD})
_MEMO_LIMIT = 20_000
_MISS = object()


def _empty(cell: Any) -> bool:
    return cell is None or (isinstance(cell, str) and not cell.strip())


VACCINE_RULE = ("must be a product name (" + ", ".join(name for name, _ in VACCINE_TABLE) + ") or code ("
                + ", ".join(VACCINE_PRODUCTS) + ")")


class DoseRows:
    """Converts rows of one file into doses: `convert(cells, now)` is a Dose or the row's field errors.

    With `ragged=True` (CSV), a row with values past the header's last column is rejected: it is
    usually a name or an address with an unquoted comma, which shifts every column after it."""

    def __init__(self, columns: ColumnMap, *, ragged: bool = False):
        self.columns = columns
        self._ragged = ragged
        self._header_width = len(columns.header)
        positions = columns.positions
        self._plain = [(field, positions[field], _PLAIN[field], {} if field in _REMEMBERED else None)
                       for field in _PLAIN if field in positions]
        self._moment = positions["administered_at"], read_moment, {}
        self._time = (positions[TIME_FIELD], read_time, {}) if TIME_FIELD in positions else None
        self._width = max(positions.values()) + 1

    def convert(self, cells: Sequence[Any], now: dt.datetime) -> Dose | list[FieldError]:
        if len(cells) != self._header_width:
            if self._ragged and len(cells) > self._header_width and not all(map(_empty, cells[self._header_width:])):
                return [FieldError(field="(row)", reason=f"has {len(cells)} cells, the header {self._header_width}"
                                   " (a value with an unquoted comma or semicolon?)")]
            if len(cells) < self._width:
                cells = (*cells, *(None,) * (self._width - len(cells)))
        fields: dict[str, Any] = {}
        errors: list[FieldError] = []
        for field, position, read, memo in self._plain:
            cell = cells[position]
            if memo is not None and (value := memo.get(cell, _MISS)) is not _MISS:  # only texts are remembered
                fields[field] = value
                continue
            value = _read(cell, read, memo)
            if value is _MISS:
                continue
            if type(value) is Unreadable:
                errors.append(FieldError(field=field, reason=str(value)))
            else:
                fields[field] = value
        self._administered_at(cells, fields, errors)
        if not errors:
            dose, problems = dose_from_fields(fields, now)
            if dose is not None:
                return problems or dose
        else:
            failed = {e.field for e in errors}
            problems = [e for e in field_errors(fields) if e.field not in failed
                        and not (e.field == "administered_at" and TIME_FIELD in failed)]
        errors += [FieldError(field=e.field, reason=VACCINE_RULE) if e.field == "vaccine" else e for e in problems]
        return sorted(errors, key=self._in_column_order)

    def _in_column_order(self, error: FieldError) -> int:
        return self.columns.positions.get(error.field, -1)

    def _administered_at(self, cells: Sequence[Any], fields: dict, errors: list[FieldError]) -> None:
        """The administration time from its date (or date-time) cell and the separate time cell, if any."""
        position, read, memo = self._moment
        moment = _read(cells[position], read, memo)
        if moment is _MISS:
            return
        if type(moment) is Unreadable:
            errors.append(FieldError(field="administered_at", reason=str(moment)))
            return
        date, clock, offset = moment
        if self._time is not None:
            position, read, memo = self._time
            separate = _read(cells[position], read, memo)
            if type(separate) is Unreadable:
                errors.append(FieldError(field=TIME_FIELD, reason=str(separate)))
                return
            if separate is not _MISS:
                if clock is not None and clock != separate:
                    errors.append(FieldError(field=TIME_FIELD, reason="disagrees with the time in administered_at"))
                    return
                clock = separate
        fields["administered_at"] = dt.datetime.combine(date, clock or DEFAULT_TIME, offset or VIETNAM)


def _read(cell: Any, read: Callable[[Any], Any], memo: dict | None) -> Any:
    """The cell's value; _MISS for an empty cell; the Unreadable error (returned, not raised) for a bad one."""
    if cell is None:
        return _MISS
    text = type(cell) is str
    if text:
        if memo is not None and (value := memo.get(cell, _MISS)) is not _MISS:
            return value
        if not cell or cell.isspace():
            return _MISS
    try:
        value = read(cell)
    except Unreadable as e:
        return e
    if text and memo is not None and len(memo) < _MEMO_LIMIT:
        memo[cell] = value
    return value


# -- the error report ---------------------------------------------------------------------------------

def describe(errors: Iterable[FieldError], columns: ColumnMap) -> str:
    """A row's errors as one cell: `field (Header): reason; ...`."""
    return "; ".join(f"{columns.label(e.field)}: {e.reason}" for e in errors)


class ErrorReport:
    """The rejected rows as the site wrote them, each with its row number and reasons in two added
    columns (`row`, `errors`): the same columns as the input, so the fixed report imports again (the
    importer reads past `row` and `errors`). `write_row` is handed in: a CSV writer's or a sheet's."""

    def __init__(self, columns: ColumnMap, write_row: Callable[[list[Any]], Any]):
        self._columns = columns
        self._write = write_row
        self._kept = [i for i in range(len(columns.header)) if i not in columns.report_columns]
        self.rows = 0
        write_row([columns.header[i] for i in self._kept] + [ROW_COLUMN, ERRORS_COLUMN])

    def add(self, number: int, cells: Sequence[Any], errors: Sequence[FieldError]) -> None:
        cells = list(cells) + [None] * (len(self._columns.header) - len(cells))
        self._write([cells[i] for i in self._kept] + [number, describe(errors, self._columns)])
        self.rows += 1


# -- the resume state -----------------------------------------------------------------------------------

class ImportState(msgspec.Struct, forbid_unknown_fields=False):
    """What an import has sent so far, kept beside the file after each acknowledged batch, so that an
    interrupted import resumes after the last row the stream acknowledged."""

    file: str  # the file's name, for people reading the state
    size: int
    mtime_ns: int
    site: str  # the site code (or the ingest URL's site, for --url)
    last_row: int = 0  # the last row whose batch the stream acknowledged (XADD returned, or a 202)
    batches: list[tuple[str, int]] = []  # (batch id, doses) of every batch sent, in order
    complete: bool = False  # every row was read and sent

    def matches(self, *, size: int, mtime_ns: int, site: str) -> bool:
        return (self.size, self.mtime_ns, self.site) == (size, mtime_ns, site)
