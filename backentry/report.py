"""Beside the input: the error report (rejected rows and their reasons) and the resume state file."""


from __future__ import annotations

import contextlib
import csv
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec
from openpyxl import Workbook
from openpyxl.cell import WriteOnlyCell
from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE

from vaxline import csvsafe
from vaxline.doses import FieldError

from .readers import Sheet
from .rows import (
    ColumnMap,
    ErrorReport,
    ImportState,
)

_json = msgspec.json.Encoder()


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
            write = csv.writer(out, delimiter=self._sheet.delimiter).writerow
            # A site's text opened in a spreadsheet stays text (backentry.rows reads it back as it was); a
            # cell of an earlier report is neutralised once, not once more per round.
            return lambda values: write([csvsafe.cell(csvsafe.restored(v) if type(v) is str else v)
                                         for v in values])
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
