"""Back-entry import: a site's CSV or XLSX file, streamed, into the same stream as POST /v1/doses.

    FILE --read one row at a time (csv; the sheet's XML streamed through expat)--> rows
      --backentry.rows (pure)--> doses; rejected rows --> the error report beside FILE
      --batches of up to 1,000--> the stream: Enqueuer.enqueue, as ingest does (XADD and the accepted
                                  count in one MULTI; Overloaded: wait Retry-After, retry),
                                  or POST /v1/doses with the site's token (503: the same)
      --after each acknowledged batch--> FILE.import-state.json (what --resume goes on after)
      --receipts (the batches table, or GET /v1/batches/{id})--> new, duplicates, pending

Promises: a row counts as sent only once its batch's XADD returned (or its 202 came back), and the
state file never names a later row, so a resumed import never skips a row the stream does not have;
a batch acknowledged but not yet recorded when the import was killed is sent again, and its receipt
counts those doses as duplicates (records are keyed by site and record id: a re-import changes
nothing). Memory stays flat whatever the file's size: a few batches in hand, rows read one at a time.
An XLSX file needs more: its shared-strings table, which the format makes every reader hold whole
(held compactly here). No national ID,
name or phone number reaches a log line or the progress bar: they carry counts, row numbers and
field names; the error report file carries the site's own rejected rows.
"""

from __future__ import annotations

import array
import asyncio
import codecs
import collections
import contextlib
import csv
import dataclasses
import datetime as dt
import hashlib
import io
import itertools
import os
import sys
import time
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from xml.etree.ElementTree import ParseError
from xml.parsers.expat import ExpatError

import msgspec
from openpyxl import Workbook
from openpyxl.cell import WriteOnlyCell
from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE
from openpyxl.reader.excel import ExcelReader
from openpyxl.styles import Alignment, Font, PatternFill
from openpyxl.utils import get_column_letter
from openpyxl.utils.exceptions import InvalidFileException
from openpyxl.worksheet.datavalidation import DataValidation
from openpyxl.xml.constants import SHARED_STRINGS

from backentry.rows import (
    COLUMNS,
    ERRORS_COLUMN,
    ROW_COLUMN,
    VACCINE_TABLE,
    ColumnMap,
    DoseRows,
    ErrorReport,
    HeaderError,
    ImportState,
    is_field_names_row,
    map_header,
)
from vaxline.config import Settings
from vaxline.doses import Dose, FieldError

BATCH_DOSES = 1000  # POST /v1/doses's limit; one stream entry per batch, as for an HTTP batch
IN_FLIGHT = 4  # batches sent and not yet acknowledged
SHOWN_ERRORS = 20  # rejected rows printed on stderr (all of them are in the report)
_json = msgspec.json.Encoder()


class UsageError(Exception):
    """The import cannot start: unknown site, unreadable file, a header without the needed columns (exit 2)."""


# -- reading: CSV and XLSX, one row at a time ------------------------------------------------------

@dataclasses.dataclass
class Sheet:
    """An open file's rows: (row number as the user sees it, header = 1; the cells)."""

    kind: str  # "csv" or "xlsx"
    rows: Iterator[tuple[int, Sequence[Any]]]
    read_fraction: Callable[[], float | None]  # how far reading is, 0-1 (None: unknown)
    close: Callable[[], None]
    failure: tuple[type[Exception], ...]  # what reading raises on a file that is not what it claims
    title: str = "doses"  # the XLSX sheet's name, kept for the error report
    delimiter: str = ","


def file_kind(path: Path) -> str:
    """"csv" or "xlsx", by content first (a ZIP is a workbook), then by extension."""
    with path.open("rb") as f:
        magic = f.read(8)
    if magic.startswith(b"PK\x03\x04"):
        return "xlsx"
    if magic.startswith(b"\xd0\xcf\x11\xe0"):
        raise UsageError("an old Excel 97-2003 (.xls) workbook: save it as .xlsx (Excel Workbook) or CSV UTF-8")
    if path.suffix.lower() in (".xlsx", ".xlsm"):
        raise UsageError("not an XLSX workbook (the file is not a ZIP archive)")
    return "csv"


def open_sheet(path: Path) -> tuple[Sheet, ColumnMap]:
    """The file's sheet, positioned after its header (and after the template's second header row of
    English field names, if there is one), and the header's column map."""
    try:
        kind = file_kind(path)
    except OSError as e:
        raise UsageError(e.strerror or str(e)) from None
    return open_csv(path) if kind == "csv" else open_xlsx(path)


def _header(rows: Iterator[tuple[int, Sequence[Any]]], *, look: int = 20) -> ColumnMap:
    """Reads up to the header: the first of the first `look` rows that is a dose header (a sheet may
    have a title above it). None is: the error of the row most like one."""
    closest: HeaderError | None = None
    for number, cells in rows:
        if not blank(cells):
            try:
                return map_header(cells)
            except HeaderError as e:
                closest = e if closest is None or e.known > closest.known else closest
        if number >= look:
            break
    raise closest or HeaderError("no header row (the file or sheet is empty)")


def _after_field_names(rows: Iterator[tuple[int, Sequence[Any]]], columns: ColumnMap):
    """The rows after the header, past the template's row of English field names if it is there."""
    for number, cells in rows:
        return rows if is_field_names_row(cells, columns) else itertools.chain([(number, cells)], rows)
    return rows


def _filled(cell: Any) -> bool:
    return cell is not None and (not isinstance(cell, str) or bool(cell.strip()))


def blank(cells: Sequence[Any]) -> bool:
    if not any(cells):
        return True
    try:
        return "".join(cells).isspace()  # a CSV row: text only
    except TypeError:
        return not any(map(_filled, cells))


def _csv_encoding(sample: bytes) -> str:
    """UTF-8 (with or without a BOM); UTF-16 with a BOM (Excel's "Unicode text"); else Windows-1258,
    what Excel on a Vietnamese Windows writes for plain "CSV"."""
    if sample.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if sample.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    try:
        codecs.getincrementaldecoder("utf-8")().decode(sample, final=False)
        return "utf-8"
    except UnicodeDecodeError:
        return "cp1258"


def open_csv(path: Path) -> tuple[Sheet, ColumnMap]:
    """Streamed with the csv module, one record at a time (a record is a row, as a spreadsheet shows
    it, even when a quoted cell spans lines). Comma, semicolon or tab: whichever the header line uses
    most. Bytes that are not text in the file's encoding reject their own row."""
    try:
        raw = path.open("rb")
    except OSError as e:
        raise UsageError(e.strerror or str(e)) from None
    sample = raw.read(1 << 16)
    raw.seek(0)
    encoding = _csv_encoding(sample)
    first_line = sample.decode(encoding, "replace").split("\n", 1)[0]
    delimiter = max((",", ";", "\t"), key=first_line.count)
    text = io.TextIOWrapper(raw, encoding=encoding, errors="surrogateescape", newline="")
    size = max(1, os.fstat(raw.fileno()).st_size)
    rows = enumerate(csv.reader(text, delimiter=delimiter), start=1)
    try:
        columns = _header(rows)
        data = _after_field_names(rows, columns)
    except (HeaderError, csv.Error) as e:
        text.close()
        raise UsageError(str(e) if isinstance(e, HeaderError) else f"not a CSV file ({e})") from None
    # csv.Error: a field past the csv module's size limit, a NUL byte.
    sheet = Sheet("csv", data, lambda: min(1.0, raw.tell() / size), text.close, (csv.Error, UnicodeError),
                  delimiter=delimiter)
    return sheet, columns


def open_xlsx(path: Path) -> tuple[Sheet, ColumnMap]:
    """The workbook's parts (sheets, styles, epoch) read by openpyxl in read-only mode, the sheet's XML
    parsed as it is read, one row at a time (sheet_rows). The first worksheet whose first non-empty row is a dose header is read (a workbook may keep notes or
    the template's instructions on other sheets)."""
    warnings.filterwarnings("ignore", module="openpyxl")  # "no default style", "extension not supported"
    try:
        reader = _CompactReader(path, read_only=True, data_only=True)
        reader.read()
        book = reader.wb
    except (zipfile.BadZipFile, InvalidFileException, KeyError, ValueError, OSError, ParseError,
            ExpatError) as e:
        raise UsageError(f"not a readable XLSX workbook ({type(e).__name__})") from None
    first_problem = None
    for worksheet in book.worksheets:
        declared = worksheet.max_row if (worksheet.max_row or 0) > 1 else None
        cells = sheet_rows(book, worksheet)
        rows = enumerate(cells, start=1)
        try:
            columns = _header(rows)
        except HeaderError as e:
            first_problem = first_problem or f"sheet {worksheet.title!r}: {e}"
            cells.close()
            continue
        reached = [0]

        def data(rows=_after_field_names(rows, columns)):
            for number, values in rows:
                reached[0] = number
                yield number, values

        fraction = (lambda: min(1.0, reached[0] / declared)) if declared else (lambda: None)
        failure = (ParseError, ExpatError, zipfile.BadZipFile, zlib.error, EOFError, IndexError)
        return Sheet("xlsx", data(), fraction, book.close, failure, title=worksheet.title), columns
    book.close()
    raise UsageError(first_problem or "the workbook has no worksheet")


_MAIN = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
_DATES_REMEMBERED = 20_000  # serial -> date cells kept (few distinct dates in a file; memory stays flat)


def sheet_rows(book, worksheet) -> Iterator[Sequence[Any]]:
    """A read-only worksheet's rows as openpyxl's `iter_rows(values_only=True)` gives them (with its
    dimensions reset): a tuple of values per row (None for a missing cell, up to the row's last cell),
    `[]` for each row missing between two present ones, `()` for a row element without cells; the same
    values (shared and inline strings, numbers, booleans, date cells as datetime/date/time/timedelta,
    by the workbook's styles and epoch). The workbook's parts (sheets, styles, epoch, shared strings)
    are openpyxl's reading; only the sheet's XML is parsed here: with expat, streamed, one chunk at a
    time, completed rows handed on as they are parsed (openpyxl's parser costs ~75 us a row)."""
    from openpyxl.utils.datetime import from_excel, from_ISO8601
    from xml.parsers import expat

    strings = worksheet._shared_strings
    epoch = book.epoch
    date_formats, timedelta_formats = book._date_formats, book._timedelta_formats
    styles: dict[str, tuple[bool, bool]] = {}  # the s attribute's text -> (a date format, a timedelta one)
    dates: dict[tuple[str, bool], Any] = {}
    letters_to_column: dict[str, int] = {}
    done: list[tuple[int, list[tuple[int, Any]]]] = []  # completed rows: (number, [(column, value)])
    # The parse state (plain locals of the handlers' closure: the handlers run ~60 times a row).
    row_number = column = depth = 0
    cells: list[tuple[int, Any]] = []
    in_row = False
    attributes: Any = None  # the open cell's (None: no cell open)
    value: str | None = None  # its <v> text
    collecting = False  # in the open cell's first <v>, or in the text of its <is>
    inline: list[str] | None = None  # the open cell's <is> texts: runs (<r><t>)
    plain: str | None = None  # its <is><t>
    inline_depth = run_depth = 0  # the depths of the open <is> and <r> (0: none)

    def column_of(reference: str) -> int:
        letters = reference.rstrip("0123456789")
        number = letters_to_column.get(letters)
        if number is None:
            from openpyxl.utils.cell import coordinate_to_tuple
            number = coordinate_to_tuple(reference)[1]  # a bad reference raises as openpyxl does
            if len(letters_to_column) < 20_000:
                letters_to_column[letters] = number
        return number

    # Element names as the sheet writes them: the prefix its root binds to the main namespace (expat's
    # namespace processing costs a quarter of the parse); none bound there: no element is read, as openpyxl.
    _CELL = _VALUE = _ROW = _INLINE = _TEXT = _RUN = None

    def root(name: str, attrs: dict) -> None:
        nonlocal _CELL, _VALUE, _ROW, _INLINE, _TEXT, _RUN
        prefix = next((key[6:] + ":" for key, uri in attrs.items()
                       if uri == _MAIN and (key == "xmlns" or key.startswith("xmlns:"))), None)
        if prefix is not None:
            _ROW, _CELL, _VALUE, _INLINE, _TEXT, _RUN = (prefix.lstrip(":") + tag
                                                         for tag in ("row", "c", "v", "is", "t", "r"))
        parser.StartElementHandler = start
        start(name, attrs)

    def start(name: str, attrs: dict) -> None:
        nonlocal depth, attributes, value, collecting, inline, plain, inline_depth, run_depth
        nonlocal row_number, column, in_row
        if inline_depth:
            depth += 1
            if name == _TEXT and (depth == inline_depth + 1 or (run_depth and depth == run_depth + 1)):
                value, collecting = "", True
            elif name == _RUN and depth == inline_depth + 1:
                run_depth = depth
        elif name == _CELL:
            if in_row and attributes is None:
                attributes, value = attrs, None
        elif name == _VALUE:
            if attributes is not None and value is None:
                value, collecting = "", True
        elif name == _ROW:
            number = attrs.get("r")
            if number is None:
                row_number += 1
            else:
                try:
                    row_number = int(number)
                except ValueError:
                    as_float = float(number)
                    if not as_float.is_integer():
                        raise ValueError(f"{number} is not a valid row number") from None
                    row_number = int(as_float)
            in_row, column = True, 0
            cells.clear()
        elif name == _INLINE and attributes is not None and inline is None:
            depth = inline_depth = 1  # depths count from the <is> (only kept inside it)
            inline, plain = [], None

    def end(name: str) -> None:
        nonlocal depth, attributes, value, collecting, inline, plain, inline_depth, run_depth, column, in_row
        if inline_depth:
            depth -= 1
            if depth + 1 == inline_depth:  # </is>
                inline_depth = 0
            elif name == _TEXT and collecting:
                collecting = False
                if depth + 1 == inline_depth + 1:
                    plain = value  # the plain text (the last <t>, as openpyxl keeps it)
                else:
                    inline.append(value)
                value = None
            elif depth + 1 == run_depth:
                run_depth = 0
        elif name == _CELL:
            if attributes is None:
                return
            reference = attributes.get("r")
            if reference:
                column = column_of(reference)
            else:
                column += 1
            kind = attributes.get("t", "n")
            if kind == "inlineStr":
                if inline is None:
                    cells.append((column, None))
                else:
                    cells.append((column, "".join(inline if plain is None else [plain, *inline])))
            elif not value:
                cells.append((column, None))
            elif kind == "n":
                number = float(value) if "." in value or "E" in value or "e" in value else int(value)
                style = attributes.get("s")
                if style:
                    formats = styles.get(style)
                    if formats is None:
                        formats = styles[style] = (int(style) in date_formats, int(style) in timedelta_formats)
                    if formats[0]:
                        key = (value, formats[1])
                        moment = dates.get(key)
                        if moment is None:
                            try:
                                moment = from_excel(number, epoch, timedelta=formats[1])
                            except (OverflowError, ValueError):
                                moment = "#VALUE!"  # as openpyxl reads a date cell out of the range of dates
                            if len(dates) < _DATES_REMEMBERED:
                                dates[key] = moment
                        number = moment
                cells.append((column, number))
            elif kind == "s":
                cells.append((column, strings[int(value)]))
            elif kind == "b":
                cells.append((column, bool(int(value))))
            elif kind == "d":
                cells.append((column, from_ISO8601(value)))
            else:  # "str" (a formula's text), "e" (an error) and others: the text
                cells.append((column, value))
            attributes = inline = None
            collecting = False
        elif name == _VALUE:
            collecting = False
        elif name == _ROW:
            if in_row:
                done.append((row_number, cells.copy()))
                in_row = False

    def data(chunk: str) -> None:
        nonlocal value
        if collecting:
            value += chunk

    parser = expat.ParserCreate()
    parser.buffer_text = True
    parser.StartElementHandler, parser.EndElementHandler, parser.CharacterDataHandler = root, end, data
    counter = 1
    with book._archive.open(worksheet._worksheet_path) as source:
        while True:
            chunk = source.read(1 << 16)
            parser.Parse(chunk, not chunk)
            for number, row in done:
                while counter < number:  # rows missing from the XML
                    counter += 1
                    yield []
                if counter <= number:  # a row out of order (or repeated) is read past, as openpyxl does
                    counter += 1
                    yield _row_values(row)
            done.clear()
            if not chunk:
                break


def _row_values(cells: list[tuple[int, Any]]) -> tuple[Any, ...]:
    """A row's values by column, as openpyxl's `_get_row`: as wide as its last cell's column."""
    if not cells:
        return ()
    width = cells[-1][0]
    if width == len(cells) and all(column == index for index, (column, _) in enumerate(cells, start=1)):
        return tuple(value for _, value in cells)
    values = [None] * width
    for column, value in cells:
        if 1 <= column <= width:
            values[column - 1] = value
    return tuple(values)


class _CompactReader(ExcelReader):
    """openpyxl's workbook reader, holding the shared-strings table compactly (see SharedStrings)."""

    def read_strings(self):
        part = self.package.find(SHARED_STRINGS)
        if part is not None:
            with self.archive.open(part.PartName[1:]) as source:
                self.shared_strings = SharedStrings(source)


class SharedStrings:
    """An XLSX workbook's shared-strings table, held compactly: UTF-8 in one buffer, offsets in an array.

    Excel writes every distinct text of every cell once, in this table, and the cells refer to it by
    index, so any reader must hold it whole; a million back-entered rows carry about three million
    distinct texts (record ids, national ids, phones), which openpyxl's own list of str held in 437 MiB
    (read in 21 s) and this holds in 55 (4.4 s). Parsed with expat, streamed: a text is its <si>'s <t>
    runs, without the phonetic (<rPh>) ones, as openpyxl reads it."""

    def __init__(self, source):
        from xml.parsers import expat

        self._blob = bytearray()
        self._offsets = array.array("Q", [0])
        self._parts: list[str] = []
        self._text = self._phonetic = False
        parser = expat.ParserCreate()
        parser.buffer_text = True
        parser.StartElementHandler, parser.EndElementHandler = self._start, self._end
        parser.CharacterDataHandler = self._data
        while chunk := source.read(1 << 20):
            parser.Parse(chunk, False)
        parser.Parse(b"", True)
        del self._parts

    def _start(self, name: str, attributes) -> None:
        name = name.rpartition(":")[2]
        if name == "t":
            self._text = not self._phonetic
        elif name == "rPh":
            self._phonetic = True
        elif name == "si":
            self._parts.clear()

    def _end(self, name: str) -> None:
        name = name.rpartition(":")[2]
        if name == "t":
            self._text = False
        elif name == "rPh":
            self._phonetic = False
        elif name == "si":
            self._blob += "".join(self._parts).replace("x005F_", "").encode("utf-8", "surrogatepass")
            self._offsets.append(len(self._blob))

    def _data(self, text: str) -> None:
        if self._text:
            self._parts.append(text)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, index: int) -> str:
        if not 0 <= index < len(self._offsets) - 1:
            raise IndexError(index)
        return self._blob[self._offsets[index]:self._offsets[index + 1]].decode("utf-8", "surrogatepass")


# -- the error report and the state file, beside the input ----------------------------------------------

def report_path(path: Path, kind: str) -> Path:
    """`doses.csv` -> `doses.errors.csv`; `doses.xlsx` -> `doses.errors.xlsx`."""
    return path.with_name(f"{path.stem}.errors.{kind}")


def state_path(path: Path) -> Path:
    return path.with_name(f"{path.name}.import-state.json")


class ReportFile:
    """The error report, written as rows are rejected (never held whole), in the input's format: a CSV
    for a CSV (same delimiter, UTF-8 with a BOM so that Excel shows Vietnamese), an XLSX for an XLSX
    (text stays text: IDs keep their leading zeros). Written to a temporary name and renamed at the end,
    so an interrupted import leaves the previous report as it was."""

    def __init__(self, path: Path, sheet: Sheet, columns: ColumnMap):
        self.path = path
        self._sheet = sheet
        self._columns = columns
        self._partial = path.with_name(path.name + ".partial")
        self._report: ErrorReport | None = None
        self._close: Callable[[], None] = lambda: None

    def add(self, number: int, cells: Sequence[Any], errors: Sequence[FieldError]) -> None:
        if self._report is None:
            self._report = ErrorReport(self._columns, self._open())
        self._report.add(number, cells, errors)

    def _open(self) -> Callable[[list[Any]], Any]:
        if self._sheet.kind == "csv":
            out = self._partial.open("w", newline="", encoding="utf-8-sig", errors="surrogateescape")
            self._close = out.close
            return csv.writer(out, delimiter=self._sheet.delimiter).writerow
        book = Workbook(write_only=True)
        sheet = book.create_sheet(self._sheet.title)
        self._close = lambda: book.save(self._partial)

        def text_cell(value):  # a cell that starts with "=" is the site's text, not a formula
            if not isinstance(value, str):
                return value
            cell = WriteOnlyCell(sheet, value=_xlsx_safe(value))
            cell.data_type = "s"
            return cell

        return lambda values: sheet.append([text_cell(v) for v in values])

    def finish(self) -> Path | None:
        """Put the report in place; with no rejected row, remove an earlier run's report. Its path, or None."""
        if self._report is None:
            self.path.unlink(missing_ok=True)
            return None
        self._close()
        os.replace(self._partial, self.path)
        return self.path

    def discard(self) -> None:
        with contextlib.suppress(Exception):
            self._close()
        self._partial.unlink(missing_ok=True)


def _xlsx_safe(text: str) -> str:
    """XLSX cannot hold control characters: a rejected row may have some (that is its error). U+FFFD in
    their place is refused on the next import (backentry.rows), so the site retypes the cell."""
    return ILLEGAL_CHARACTERS_RE.sub("\ufffd", text)


def file_identity(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


def load_state(path: Path) -> ImportState | None:
    try:
        return msgspec.json.decode(state_path(path).read_bytes(), type=ImportState)
    except (OSError, msgspec.DecodeError):
        return None


def save_state(path: Path, state: ImportState) -> None:
    """Written whole to a temporary file, then renamed over the old one: a kill leaves one or the other.
    Not fsynced: after a power cut the state may be older or unreadable, and the import resumes from an
    earlier row or the first one, which is only slower (records already sent count as duplicates)."""
    target = state_path(path)
    partial = target.with_name(target.name + ".partial")
    partial.write_bytes(_json.encode(state))
    os.replace(partial, target)


# -- where the batches go: the stream directly, or POST /v1/doses ----------------------------------------

@dataclasses.dataclass
class Receipt:
    inserted: int = 0
    duplicates: int = 0
    failed: bool = False


class StreamSender:
    """Enqueues each batch exactly as ingest does for an HTTP batch (vaxline.enqueue.Enqueuer: XADD and
    the accepted count in one MULTI, the backlog bound honoured) and reads receipts from Postgres."""

    def __init__(self, settings: Settings, site_code: str, *, on_wait: Callable[[str, float], None] = lambda *_: None):
        self._settings = settings
        self.site = site_code
        self._on_wait = on_wait
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> "StreamSender":
        import asyncpg

        from vaxline.streams import ShardCountMismatch, connect_redis

        from vaxline.enqueue import Enqueuer

        try:
            self._db = await self._stack.enter_async_context(_closing(await asyncpg.connect(self._settings.database_url)))
        except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
            raise UsageError(f"cannot reach Postgres ({type(e).__name__})") from None
        site = await self._db.fetchrow("SELECT site_id, active FROM sites WHERE code = $1", self.site)
        if site is None:
            await self._stack.aclose()
            raise UsageError(f"no site with code {self.site!r} (`vaxline sites add` or `sites import` registers it)")
        if not site["active"]:
            await self._stack.aclose()
            raise UsageError(f"site {self.site} is deactivated (`vaxline sites activate {self.site}`)")
        self._site_id = site["site_id"]
        redis = connect_redis(self._settings)
        self._stack.push_async_callback(redis.aclose)
        self._enqueuer = Enqueuer(redis, self._settings)
        try:
            await self._enqueuer.start()
        except ShardCountMismatch as e:
            await self._stack.aclose()
            raise UsageError(str(e)) from None
        self._stack.push_async_callback(self._enqueuer.stop)
        return self

    async def __aexit__(self, *exc) -> None:
        await self._stack.aclose()

    async def send(self, doses: list[Dose], rejected: int) -> tuple[str, list[tuple[int, list[FieldError]]]]:
        """(batch id, the doses refused: none here, the rules are the ones just applied)."""
        from vaxline.enqueue import Overloaded

        while True:
            try:
                self._enqueuer.check_capacity()
                return await self._enqueuer.enqueue(site_id=self._site_id, doses=doses, rejected=rejected), []
            except Overloaded as e:
                self._on_wait(str(e), e.retry_after)
                await asyncio.sleep(e.retry_after)

    async def count_rejected(self, rejected: int) -> None:
        """Rejected rows after the last batch: counted as ingest counts a batch with nothing valid."""
        await self._enqueuer.count_rejected(site_id=self._site_id, rejected=rejected)

    async def receipts(self, batch_ids: list[str]) -> dict[str, Receipt]:
        found = {r["batch_id"]: Receipt(r["inserted"], r["duplicates"]) for r in await self._db.fetch(
            "SELECT batch_id, inserted, duplicates FROM batches WHERE batch_id = ANY($1::text[])", batch_ids)}
        for r in await self._db.fetch("SELECT batch_id FROM dead_letters WHERE batch_id = ANY($1::text[])",
                                      [b for b in batch_ids if b not in found]):
            found[r["batch_id"]] = Receipt(failed=True)
        return found


@contextlib.asynccontextmanager
async def _closing(conn):
    try:
        yield conn
    finally:
        await conn.close()


class HttpSender:
    """POST /v1/doses with the site's token, as a desk would; 503 and lost connections are retried
    after Retry-After (a retried batch that had gone through is counted a duplicate by its receipt)."""

    def __init__(self, url: str, token: str, *, on_wait: Callable[[str, float], None] = lambda *_: None):
        self._url = url.rstrip("/").removesuffix("/v1/doses")
        self._token = token
        self._on_wait = on_wait
        # The state file names the deployment and the token's site without storing the token.
        self.site = f"{self._url} token:{hashlib.sha256(token.encode()).hexdigest()[:12]}"

    async def __aenter__(self) -> "HttpSender":
        import aiohttp

        self._session = aiohttp.ClientSession(headers={"Authorization": f"Bearer {self._token}"},
                                              timeout=aiohttp.ClientTimeout(total=120))
        return self

    async def __aexit__(self, *exc) -> None:
        await self._session.close()

    async def send(self, doses: list[Dose], rejected: int) -> tuple[str | None, list[tuple[int, list[FieldError]]]]:
        """(batch id, or None when ingest refused every dose; the doses it refused, by index, with why)."""
        import aiohttp

        body = _json.encode({"doses": doses})
        failures = 0
        while True:
            try:
                async with self._session.post(f"{self._url}/v1/doses", data=body,
                                              headers={"Content-Type": "application/json"}) as response:
                    if response.status == 202:
                        answer = await response.json()
                        return answer["batch_id"], [
                            (item["index"], [FieldError(field=e["field"], reason=e["reason"]) for e in item["errors"]])
                            for item in answer["rejected"]]
                    await self._refused(response)
                    wait = float(response.headers.get("Retry-After", "5"))
                    self._on_wait(f"ingest answered {response.status}", wait)
            except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as e:
                failures += 1
                if failures > 10:
                    raise UsageError(f"ingest at {self._url} cannot be reached ({type(e).__name__})") from None
                wait = min(30.0, 2.0 ** failures)
                self._on_wait(f"ingest cannot be reached ({type(e).__name__})", wait)
            await asyncio.sleep(wait)

    async def count_rejected(self, rejected: int) -> None:
        """Nothing to do: ingest counts only what it is sent."""

    async def _refused(self, response) -> None:
        if response.status == 503:
            return
        try:
            error = (await response.json()).get("error", "")
        except Exception:
            error = (await response.text())[:200]
        raise UsageError(f"ingest refused the batch: {response.status} {error}")

    async def receipts(self, batch_ids: list[str]) -> dict[str, Receipt]:
        import aiohttp

        found: dict[str, Receipt] = {}
        limit = asyncio.Semaphore(8)

        async def one(batch_id: str) -> None:
            async with limit:
                with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                    async with self._session.get(f"{self._url}/v1/batches/{batch_id}") as response:
                        if response.status == 200:
                            body = await response.json()
                            if body["status"] == "persisted":
                                found[batch_id] = Receipt(body["inserted"], body["duplicates"])
                            elif body["status"] == "failed":
                                found[batch_id] = Receipt(failed=True)

        await asyncio.gather(*(one(b) for b in batch_ids))
        return found


# -- the import ------------------------------------------------------------------------------------

@dataclasses.dataclass
class Summary:
    rows: int = 0  # data rows read (blank rows aside)
    accepted: int = 0  # doses in batches the stream acknowledged (those of an interrupted run included)
    rejected: int = 0  # rows in the error report
    skipped: int = 0  # rows an interrupted import had sent already (--resume)
    inserted: int = 0  # from the receipts: new records
    duplicates: int = 0  # from the receipts: records this site had already sent (same record id)
    pending: int = 0  # accepted, no receipt yet (workers not running, or not waited for)
    failed: int = 0  # in dead-lettered batches
    waited: bool = True
    report: Path | None = None

    def lines(self) -> list[str]:
        lines = []
        if self.skipped:
            lines.append(f"resumed: {self.skipped} rows sent by the interrupted import were skipped")
        if self.report:
            lines.append(f"rejected rows and their reasons: {self.report} (fix them there and import that file)")
        if self.failed:
            lines.append(f"{self.failed} doses are in dead-lettered batches (vaxline reconcile shows them)")
        persisted = (f"{self.inserted} new, {self.duplicates} duplicates, {self.pending} pending" if self.waited
                     else f"{self.pending} pending, receipts not waited for")
        lines.append(f"{self.rows} rows: {self.accepted} accepted ({persisted}), {self.rejected} rejected"
                     + (f", {self.failed} failed" if self.failed else ""))
        return lines


@dataclasses.dataclass
class _Batch:
    doses: list[Dose] = dataclasses.field(default_factory=list)
    rows: list[tuple[int, Sequence[Any]]] = dataclasses.field(default_factory=list)  # what ingest may refuse
    rejected: int = 0  # rows rejected since the previous batch (counted beside it, as ingest does)


class _Progress:
    """A tqdm bar on stderr: rows, rows/s and the ETA (the total is estimated from how far reading is).
    It shows counts only: never a value of a row."""

    def __init__(self, sheet: Sheet, enabled: bool | None):
        from tqdm import tqdm

        self._tqdm = tqdm
        self._sheet = sheet
        self._bar = tqdm(unit=" rows", desc="import", file=sys.stderr, disable=None if enabled is None else not enabled,
                         smoothing=0.1, dynamic_ncols=True)

    def update(self, rows: int) -> None:
        fraction = self._sheet.read_fraction()
        if fraction:
            self._bar.total = max(rows, int(rows / fraction))
        self._bar.update(rows - self._bar.n)

    def note(self, text: str) -> None:
        self._tqdm.write(text, file=sys.stderr)

    def close(self) -> None:
        self._bar.close()


class _Import:
    def __init__(self, path: Path, sheet: Sheet, columns: ColumnMap, sender, *, resume: bool, batch_doses: int,
                 clock, progress: bool | None):
        self.path, self.sheet, self.sender = path, sheet, sender
        self.columns = columns
        self.converter = DoseRows(columns, ragged=sheet.kind == "csv")
        self.report = ReportFile(report_path(path, sheet.kind), sheet, columns)
        self.batch_doses = min(batch_doses, BATCH_DOSES)
        self.clock = clock
        self.summary = Summary()
        self.progress = _Progress(sheet, progress)
        self.in_flight: collections.deque[asyncio.Future] = collections.deque()
        self.state = self._state(resume)

    def _state(self, resume: bool) -> ImportState:
        size, mtime_ns = file_identity(self.path)
        previous = load_state(self.path) if resume else None
        if previous is not None and previous.matches(size=size, mtime_ns=mtime_ns, site=self.sender.site):
            return previous
        if resume:
            self.progress.note("no interrupted import of this file (same size and time) for this site:"
                               " importing from the first row")
        elif (earlier := load_state(self.path)) and not earlier.complete and earlier.matches(
                size=size, mtime_ns=mtime_ns, site=self.sender.site):
            self.progress.note(f"an interrupted import of this file had sent rows up to {earlier.last_row}:"
                               " --resume would skip them; importing from the first row (records already"
                               " sent count as duplicates)")
        state = ImportState(file=self.path.name, size=size, mtime_ns=mtime_ns, site=self.sender.site)
        try:
            save_state(self.path, state)
        except OSError as e:
            raise UsageError(f"cannot write the state file beside the file: {e.strerror or e}") from None
        return state

    async def run(self, *, wait: bool, wait_timeout: float) -> Summary:
        try:
            await self._send_rows()
            self.summary.report = self.report.finish()
        except BaseException:
            self.report.discard()
            raise
        finally:
            self.progress.close()
        self.summary.accepted = sum(doses for _, doses in self.state.batches)
        await self._receipts(wait, wait_timeout)
        return self.summary

    async def _send_rows(self) -> None:
        try:
            await self._read_and_send()
        except self.sheet.failure as e:  # the file is damaged past its header
            raise UsageError(f"cannot read the file after {self.summary.rows} rows: {type(e).__name__}: {e}") from None
        finally:
            for task in self.in_flight:
                task.cancel()
            await asyncio.gather(*self.in_flight, return_exceptions=True)

    async def _read_and_send(self) -> None:
        summary, skip_to = self.summary, self.state.last_row
        batch, last_row = _Batch(), 0
        now = self.clock(dt.timezone.utc)
        for number, cells in self.sheet.rows:
            last_row = number
            if blank(cells):
                continue
            summary.rows += 1
            dose = self.converter.convert(cells, now)
            if type(dose) is list:
                self._reject(number, cells, dose)
                batch.rejected += number > skip_to
            elif number <= skip_to:
                summary.skipped += 1
            else:
                batch.doses.append(dose)
                batch.rows.append((number, cells))
                if len(batch.doses) >= self.batch_doses:
                    await self._dispatch(batch)
                    batch, now = _Batch(), self.clock(dt.timezone.utc)
            if summary.rows % 1000 == 0:
                self.progress.update(summary.rows)
        if batch.doses:
            await self._dispatch(batch)
        while self.in_flight:
            self._acknowledged(*await self.in_flight.popleft())
        if batch.rejected and not batch.doses:
            await self.sender.count_rejected(batch.rejected)
        self.progress.update(summary.rows)
        self.state.complete, self.state.last_row = True, max(self.state.last_row, last_row)
        save_state(self.path, self.state)

    async def _dispatch(self, batch: _Batch) -> None:
        """Send `batch` while the next ones are read: up to IN_FLIGHT batches at once (Redis then fsyncs
        several in one write), acknowledged in file order, so the state file only ever names a row all
        of whose batches the stream has."""
        if len(self.in_flight) >= IN_FLIGHT:
            self._acknowledged(*await self.in_flight.popleft())
        self.in_flight.append(asyncio.ensure_future(self._send(batch)))
        await asyncio.sleep(0)  # let it write its request before this loop goes back to reading

    async def _send(self, batch: _Batch):
        batch_id, refused = await self.sender.send(batch.doses, batch.rejected)
        return batch, batch_id, refused

    def _acknowledged(self, batch: _Batch, batch_id: str | None, refused) -> None:
        """The stream has the batch (and every batch before it): record it in the state file."""
        for index, errors in refused:
            self._reject(*batch.rows[index], errors)
        if batch_id is not None:
            self.state.batches.append((batch_id, len(batch.doses) - len(refused)))
        self.state.last_row = batch.rows[-1][0]
        save_state(self.path, self.state)

    def _reject(self, number: int, cells: Sequence[Any], errors: list[FieldError]) -> None:
        self.summary.rejected += 1
        self.report.add(number, cells, errors)
        if self.summary.rejected <= SHOWN_ERRORS:  # row numbers and field names: never a value
            for error in errors:
                self.progress.note(f"row {number}: {self.columns.label(error.field)}: {error.reason}")
        elif self.summary.rejected == SHOWN_ERRORS + 1:
            self.progress.note("... more rejected rows: every one is in the error report")

    async def _receipts(self, wait: bool, timeout: float) -> None:
        """Wait for the receipts of every batch (persisted by the workers) until none came for `timeout` s."""
        summary, batches = self.summary, dict(self.state.batches)
        summary.waited = wait
        receipts: dict[str, Receipt] = {}
        waiting = list(batches)
        last_news = time.monotonic()
        while wait and waiting:
            found = await self.sender.receipts(waiting)
            if found:
                receipts.update(found)
                waiting = [b for b in waiting if b not in found]
                last_news = time.monotonic()
            elif time.monotonic() - last_news > timeout:
                break
            if waiting:
                await asyncio.sleep(0.2)
        for batch_id, doses in batches.items():
            receipt = receipts.get(batch_id)
            if receipt is None:
                summary.pending += doses
            elif receipt.failed:
                summary.failed += doses
            else:
                summary.inserted += receipt.inserted
                summary.duplicates += receipt.duplicates


async def import_file(path: Path, sender, *, resume: bool = False, wait: bool = True, wait_timeout: float = 30.0,
                      batch_doses: int = BATCH_DOSES, clock=dt.datetime.now, progress: bool | None = None) -> Summary:
    """Import one file through `sender` (a StreamSender or an HttpSender, entered); UsageError when it
    cannot start. `progress`: None shows the bar on a terminal only."""
    sheet, columns = open_sheet(path)
    try:
        job = _Import(path, sheet, columns, sender, resume=resume, batch_doses=batch_doses, clock=clock,
                      progress=progress)
        return await job.run(wait=wait, wait_timeout=wait_timeout)
    finally:
        sheet.close()


# -- the template ----------------------------------------------------------------------------------------

def write_template(path: Path) -> None:
    """The back-entry template: `.xlsx` (a sheet to fill in: the Vietnamese headers, the English field
    names under them, text columns kept as text so IDs keep their leading zeros; and a sheet of
    instructions with an example), or `.csv` (the two header rows)."""
    if path.suffix.lower() == ".csv":
        with path.open("w", newline="", encoding="utf-8-sig") as out:
            writer = csv.writer(out)
            writer.writerow([c.header for c in COLUMNS])
            writer.writerow([c.field for c in COLUMNS])
        return
    book = Workbook()
    sheet = book.active
    sheet.title = "Mũi tiêm"
    sheet.append([c.header for c in COLUMNS])
    sheet.append([c.field for c in COLUMNS])
    formats = {"birth_date": "DD/MM/YYYY", "administered_at": "DD/MM/YYYY", "administered_time": "HH:MM",
               "dose_number": "0"}
    for index, column in enumerate(COLUMNS, start=1):
        letter = get_column_letter(index)
        header, names = sheet.cell(1, index), sheet.cell(2, index)
        header.font = Font(bold=True)
        header.fill = PatternFill("solid", fgColor="DDEBF7" if column.required else "F2F2F2")
        names.font = Font(italic=True, color="808080")
        sheet.column_dimensions[letter].width = max(14, len(column.header) + 4)
        sheet.column_dimensions[letter].number_format = formats.get(column.field, "@")  # "@": text
    sheet.freeze_panes = "A3"
    sexes = DataValidation(type="list", formula1='"Nam,Nữ,M,F"', allow_blank=True)
    sexes.add(f"{get_column_letter([c.field for c in COLUMNS].index('sex') + 1)}3:"
              f"{get_column_letter([c.field for c in COLUMNS].index('sex') + 1)}1048576")
    sheet.add_data_validation(sexes)

    notes = book.create_sheet("Hướng dẫn")
    notes.append(["Cột / Column", "Tên trường / Field", "Bắt buộc / Required", "Cách ghi / How to fill in",
                  "Ví dụ / Example"])
    for column in COLUMNS:
        notes.append([column.header, column.field, "có / yes" if column.required else "không / no", column.rule,
                      column.example])
    notes.append([])
    notes.append(["Vắc xin / Vaccine", "Mã / Code"])
    for name, code in VACCINE_TABLE:
        notes.append([name, code])
    notes.append([])
    for line in (
        "Điền từ dòng 3 của trang 'Mũi tiêm'; dòng 2 (tên trường tiếng Anh) có thể giữ hoặc xoá."
        " / Fill in from row 3 of the 'Mũi tiêm' sheet; row 2 (the English field names) may stay or go.",
        "Ngày: DD/MM/YYYY, YYYY-MM-DD hoặc ô ngày của Excel; giờ là giờ Việt Nam (UTC+7); không có giờ tiêm: 12:00."
        " / Dates: DD/MM/YYYY, YYYY-MM-DD or Excel date cells; times are Vietnam time; no time: 12:00.",
        "Nhập lại cùng tệp không tạo bản ghi trùng (theo Mã bản ghi)."
        " / Importing the same file again adds nothing (records are keyed by their record id).",
        "Dòng bị từ chối được ghi vào tệp <tên tệp>.errors.xlsx kèm lý do; sửa ở đó rồi nhập lại tệp đó."
        f" / Rejected rows go to <file>.errors.xlsx with the reasons (columns {ROW_COLUMN}, {ERRORS_COLUMN});"
        " fix them there and import that file.",
    ):
        notes.append([line])
    for letter, width in zip("ABCDE", (22, 20, 18, 70, 20)):
        notes.column_dimensions[letter].width = width
    for cell in notes[1]:
        cell.font = Font(bold=True)
    for row in notes.iter_rows(min_row=2, max_col=4):
        row[-1].alignment = Alignment(wrap_text=True, vertical="top")
    book.save(path)

