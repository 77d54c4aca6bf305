"""An XLSX worksheet's rows, parsed with expat as the sheet is read, and its shared strings held compactly."""

from __future__ import annotations

import array
from collections.abc import Iterator, Sequence
from typing import Any

from openpyxl.reader.excel import ExcelReader
from openpyxl.xml.constants import SHARED_STRINGS

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
    sheet = _SheetParser(_CellValues(book, worksheet))
    counter = 1
    with book._archive.open(worksheet._worksheet_path) as source:
        while True:
            chunk = source.read(1 << 16)
            sheet.parser.Parse(chunk, not chunk)
            for number, row in sheet.done:
                while counter < number:  # rows missing from the XML
                    counter += 1
                    yield []
                if counter <= number:  # a row out of order (or repeated) is read past, as openpyxl does
                    counter += 1
                    yield _row_values(row)
            sheet.done.clear()
            if not chunk:
                break


class _CellValues:
    """A cell's value from its type, text and style, as openpyxl reads it; and columns from references."""

    def __init__(self, book, worksheet) -> None:
        from openpyxl.utils.datetime import from_excel, from_ISO8601

        self.strings = worksheet._shared_strings
        self._epoch = book.epoch
        self._from_excel, self._from_iso = from_excel, from_ISO8601
        self._date_formats, self._timedelta_formats = book._date_formats, book._timedelta_formats
        self._styles: dict[str, tuple[bool, bool]] = {}  # the s attribute -> (a date format, a timedelta one)
        self._dates: dict[tuple[str, bool], Any] = {}
        self._columns: dict[str, int] = {}

    def column_of(self, reference: str) -> int:
        letters = reference.rstrip("0123456789")
        number = self._columns.get(letters)
        if number is None:
            from openpyxl.utils.cell import coordinate_to_tuple
            number = coordinate_to_tuple(reference)[1]  # a bad reference raises as openpyxl does
            if len(self._columns) < 20_000:
                self._columns[letters] = number
        return number

    def value(self, kind: str, value: str | None, style: str | None) -> Any:
        """The value of a cell of type `kind` (not inlineStr) whose <v> text is `value`."""
        if not value:
            return None
        if kind == "n":
            number = float(value) if "." in value or "E" in value or "e" in value else int(value)
            return self._moment(value, number, style) if style else number
        if kind == "s":
            return self.strings[int(value)]
        if kind == "b":
            return bool(int(value))
        if kind == "d":
            return self._from_iso(value)
        return value  # "str" (a formula's text), "e" (an error) and others: the text

    def _moment(self, value: str, number: float, style: str) -> Any:
        formats = self._styles.get(style)
        if formats is None:
            formats = self._styles[style] = (int(style) in self._date_formats, int(style) in self._timedelta_formats)
        if not formats[0]:
            return number
        key = (value, formats[1])
        moment = self._dates.get(key)
        if moment is None:
            try:
                moment = self._from_excel(number, self._epoch, timedelta=formats[1])
            except (OverflowError, ValueError):
                moment = "#VALUE!"  # as openpyxl reads a date cell out of the range of dates
            if len(self._dates) < _DATES_REMEMBERED:
                self._dates[key] = moment
        return moment


def _row_number(text: str | None, previous: int) -> int:
    """A <row>'s r attribute (the next row when it has none), as openpyxl reads it."""
    if text is None:
        return previous + 1
    try:
        return int(text)
    except ValueError:
        as_float = float(text)
        if not as_float.is_integer():
            raise ValueError(f"{text} is not a valid row number") from None
        return int(as_float)


class _SheetParser:
    """The sheet's XML through expat: completed rows land in `done` as (number, [(column, value)]).

    Element names are matched as the sheet writes them: with the prefix its root binds to the main
    namespace (expat's namespace processing costs a quarter of the parse); none bound there: no element
    is read, as openpyxl."""

    def __init__(self, values: _CellValues) -> None:
        from xml.parsers import expat

        self.values = values
        self.done: list[tuple[int, list[tuple[int, Any]]]] = []
        self.row_number = self.column = self.depth = 0
        self.cells: list[tuple[int, Any]] = []
        self.in_row = False
        self.attributes: Any = None  # the open cell's (None: no cell open)
        self.value: str | None = None  # its <v> text
        self.collecting = False  # in the open cell's first <v>, or in the text of its <is>
        self.inline: list[str] | None = None  # the open cell's <is> texts: runs (<r><t>)
        self.plain: str | None = None  # its <is><t>
        self.inline_depth = self.run_depth = 0  # the depths of the open <is> and <r> (0: none)
        self.ROW = self.CELL = self.VALUE = self.INLINE = self.TEXT = self.RUN = None
        self.parser = expat.ParserCreate()
        self.parser.buffer_text = True
        self.parser.StartElementHandler, self.parser.EndElementHandler = self.root, self.end
        self.parser.CharacterDataHandler = self.data

    def root(self, name: str, attrs: dict) -> None:
        prefix = next((key[6:] + ":" for key, uri in attrs.items()
                       if uri == _MAIN and (key == "xmlns" or key.startswith("xmlns:"))), None)
        if prefix is not None:
            self.ROW, self.CELL, self.VALUE, self.INLINE, self.TEXT, self.RUN = (
                prefix.lstrip(":") + tag for tag in ("row", "c", "v", "is", "t", "r"))
        self.parser.StartElementHandler = self.start
        self.start(name, attrs)

    def start(self, name: str, attrs: dict) -> None:
        if self.inline_depth:
            self.depth += 1
            if name == self.TEXT and (self.depth == self.inline_depth + 1
                                      or (self.run_depth and self.depth == self.run_depth + 1)):
                self.value, self.collecting = "", True
            elif name == self.RUN and self.depth == self.inline_depth + 1:
                self.run_depth = self.depth
        elif name == self.CELL:
            if self.in_row and self.attributes is None:
                self.attributes, self.value = attrs, None
        elif name == self.VALUE:
            if self.attributes is not None and self.value is None:
                self.value, self.collecting = "", True
        elif name == self.ROW:
            self.row_number = _row_number(attrs.get("r"), self.row_number)
            self.in_row, self.column = True, 0
            self.cells.clear()
        elif name == self.INLINE and self.attributes is not None and self.inline is None:
            self.depth = self.inline_depth = 1  # depths count from the <is> (only kept inside it)
            self.inline, self.plain = [], None

    def end(self, name: str) -> None:
        if self.inline_depth:
            self._end_inline(name)
        elif name == self.CELL:
            attributes = self.attributes
            if attributes is None:
                return
            reference = attributes.get("r")
            self.column = self.values.column_of(reference) if reference else self.column + 1
            kind = attributes.get("t", "n")
            if kind == "inlineStr":
                inline = self.inline
                self.cells.append((self.column, None if inline is None
                                   else "".join(inline if self.plain is None else [self.plain, *inline])))
            else:
                self.cells.append((self.column, self.values.value(kind, self.value, attributes.get("s"))))
            self.attributes = self.inline = None
            self.collecting = False
        elif name == self.VALUE:
            self.collecting = False
        elif name == self.ROW:
            if self.in_row:
                self.done.append((self.row_number, self.cells.copy()))
                self.in_row = False

    def _end_inline(self, name: str) -> None:
        self.depth -= 1
        if self.depth + 1 == self.inline_depth:  # </is>
            self.inline_depth = 0
        elif name == self.TEXT and self.collecting:
            self.collecting = False
            if self.depth + 1 == self.inline_depth + 1:
                self.plain = self.value  # the plain text (the last <t>, as openpyxl keeps it)
            else:
                self.inline.append(self.value)
            self.value = None
        elif self.depth + 1 == self.run_depth:
            self.run_depth = 0

    def data(self, chunk: str) -> None:
        if self.collecting:
            self.value += chunk


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
