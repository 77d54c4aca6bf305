"""Reading a back-entry file, CSV or XLSX, one row at a time, positioned after its header."""


from __future__ import annotations

import codecs
import csv
import dataclasses
import io
import itertools
import os
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from xml.etree.ElementTree import ParseError
from xml.parsers.expat import ExpatError

from openpyxl.utils.exceptions import InvalidFileException

from .rows import (
    ColumnMap,
    HeaderError,
    is_field_names_row,
    map_header,
)
from .xlsx import _CompactReader, sheet_rows


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
