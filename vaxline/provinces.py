"""Vietnam's 63 provinces and centrally-run cities, by their official GSO code.

The codes are the ones that begin a CCCD number (079... is Hồ Chí Minh City).
They are data, kept in `provinces.csv` beside this module and loaded once at
import; a site's province must be one of them.
"""

from __future__ import annotations

import csv
import io
import re
from importlib.resources import files


def _load() -> dict[int, str]:
    text = files(__package__).joinpath("provinces.csv").read_text(encoding="utf-8")
    return {int(row["code"]): row["name"] for row in csv.DictReader(io.StringIO(text))}


PROVINCES: dict[int, str] = _load()


def province_code(value: int | str) -> int:
    """The province code that `value` names (79, "79" or "079"); ValueError saying why when none."""
    if isinstance(value, str):
        if not re.fullmatch(r"[0-9]{1,3}", value.strip()):
            raise ValueError(f"{value!r} is not a province code (a number such as 1 for Hà Nội)")
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value not in PROVINCES:
        raise ValueError(f"{value!r} is not one of the {len(PROVINCES)} official province codes")
    return value


def province_name(code: int | str) -> str:
    """The province's name: province_name(79) == "Hồ Chí Minh"; ValueError for an unknown code."""
    return PROVINCES[province_code(code)]
