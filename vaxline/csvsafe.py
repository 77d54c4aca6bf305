"""CSV cells a spreadsheet shows as text (OWASP "CSV Injection", ASVS 1.2.10).

Excel, LibreOffice and Google Sheets read a cell that begins with `=`, `+`, `-` or `@` (and, after a
tab, CR or NUL they skip, the same) as a formula: a record id a site typed, or a name a citizen
typed, could run `=HYPERLINK(...)` or DDE on the machine of whoever opens the export. Every CSV
vaxline writes passes its cells through `cell`: such a text gets a leading `'`, which spreadsheets
read as "this is text" (XLSX needs none of this: its cells are typed, see backentry.report).

Only text is changed. A number vaxline writes as a number (a count, a negative difference in the
reconciliation) stays a number, so a spreadsheet can still add it up: it cannot carry a formula.

A text that begins with `'` itself gets one more, so that `restored` gives back exactly what was
written: back-entry imports its own CSV error report again (backentry.rows).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

QUOTE = "'"
FORMULA_STARTS = frozenset("=+-@\t\r\0")
_ESCAPED_STARTS = FORMULA_STARTS | {QUOTE}


def cell(value: Any) -> Any:
    """The value as a CSV cell: a text that a spreadsheet would read as a formula, quoted; else as it is."""
    if type(value) is str and value and value[0] in _ESCAPED_STARTS:
        return QUOTE + value
    return value


def row(values: Iterable[Any]) -> list[Any]:
    """A row of cells (csv.writer's writerow)."""
    return [cell(v) for v in values]


def record(values: Mapping[str, Any]) -> dict[str, Any]:
    """A row by column name (csv.DictWriter's writerow)."""
    return {name: cell(v) for name, v in values.items()}


def restored(text: str) -> str:
    """The text `cell` was given, from the cell it wrote: a leading `'` before a formula character (or
    before another `'`) is dropped. Any other text is returned as it is."""
    if len(text) > 1 and text[0] == QUOTE and text[1] in _ESCAPED_STARTS:
        return text[1:]
    return text
