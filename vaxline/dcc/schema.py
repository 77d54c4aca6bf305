"""Is a DCC payload well-formed: the EU DCC JSON schema (1.3) and value sets.

Written from the EU schema (ehn-dcc-development/eu-dcc-schema, 1.3.0) as
plain checks, so each error can say where and why in words a support desk
can read ("v[0].co: 'XY' is not in value set country-2-codes"). What it
checks:

- shape: `ver`, `nam` (`fnt` required; `fn`, `fnt`, `gn`, `gnt` at most 80
  characters, `fnt`/`gnt` ICAO 9303 `^[A-Z<]*$`), `dob`, and exactly one of
  `v`/`t`/`r` holding exactly one entry, each entry with its required fields,
  their types, lengths, date and date-time formats;
- coded fields against the EU value sets (`valuesets.json`, keyed by the
  EU valueSetId; a snapshot of eu-dcc-valuesets, test devices as of
  2021-07-15): `tg`, `vp`, the vaccine `ma`, `tt`, `tr`, `co`, and the
  device `ma` of a rapid antigen test. The EU schema only points at these
  sets, but its test data expects a wrong country, vaccine manufacturer or
  test device to fail validation (PL 7, 8, 9). `mp` is not checked: valid
  EU test data carries a product outside the set (HU 1).

Payloads of schema 1.0-1.2 are held to the same rules; those versions were
stricter on lengths (50) and allowed nothing 1.3 forbids.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Container, Mapping
from datetime import date
from importlib.resources import files

VALUESETS: Mapping[str, frozenset[str]] = {
    name: frozenset(codes)
    for name, codes in json.loads(files(__package__).joinpath("valuesets.json").read_text()).items()
}

RAPID_ANTIGEN_TEST = "LP217198-3"
GROUPS = ("v", "t", "r")

# A check is a function returning why a value is wrong (None when fine), or
# the name of the value set the value must belong to.
Check = Callable[[object], str | None] | str


def _text(max_length: int = 80, pattern: str | None = None) -> Callable[[object], str | None]:
    regex = re.compile(pattern) if pattern else None

    def check(value: object) -> str | None:
        if not isinstance(value, str):
            return "must be a string"
        if len(value) > max_length:
            return f"longer than {max_length} characters"
        if regex and not regex.fullmatch(value):
            return f"{value!r} does not match {pattern}"
        return None

    return check


_FULL_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_DATE_TIME = re.compile(r"(\d{4}-\d{2}-\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")


def _is_calendar_date(text: str) -> bool:
    try:
        date.fromisoformat(text)
    except ValueError:
        return False
    return True


def _date(value: object) -> str | None:
    """A full date; a date-time is tolerated, as issuers wrote them (PL 11-13)."""
    if isinstance(value, str) and _FULL_DATE.fullmatch(value) and _is_calendar_date(value):
        return None
    if _date_time(value) is None:
        return None
    return f"{value!r} is not a date (YYYY-MM-DD)"


def _date_time(value: object) -> str | None:
    match = _DATE_TIME.fullmatch(value) if isinstance(value, str) else None
    if match and _is_calendar_date(match[1]) and int(match[2]) < 24 and int(match[3]) < 60 and int(match[4]) < 61:
        return None
    return f"{value!r} is not an RFC 3339 date-time"


def _dose(value: object) -> str | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return None
    return f"{value!r} is not a positive integer"


_TEXT = _text()

# field -> (required, checks)
_NAME: dict[str, tuple[bool, tuple[Check, ...]]] = {
    "fn": (False, (_TEXT,)),
    "fnt": (True, (_text(pattern=r"[A-Z<]*"),)),
    "gn": (False, (_TEXT,)),
    "gnt": (False, (_text(pattern=r"[A-Z<]*"),)),
}
_VACCINATION: dict[str, tuple[bool, tuple[Check, ...]]] = {
    "tg": (True, (_TEXT, "disease-agent-targeted")),
    "vp": (True, (_TEXT, "sct-vaccines-covid-19")),
    "mp": (True, (_TEXT,)),
    "ma": (True, (_TEXT, "vaccines-covid-19-auth-holders")),
    "dn": (True, (_dose,)),
    "sd": (True, (_dose,)),
    "dt": (True, (_date,)),
    "co": (True, (_TEXT, "country-2-codes")),
    "is": (True, (_TEXT,)),
    "ci": (True, (_TEXT,)),
}
_TEST: dict[str, tuple[bool, tuple[Check, ...]]] = {
    "tg": (True, (_TEXT, "disease-agent-targeted")),
    "tt": (True, (_TEXT, "covid-19-lab-test-type")),
    "nm": (False, (_TEXT,)),
    "ma": (False, (_TEXT,)),
    "sc": (True, (_date_time,)),
    "tr": (True, (_TEXT, "covid-19-lab-result")),
    "tc": (True, (_TEXT,)),
    "co": (True, (_TEXT, "country-2-codes")),
    "is": (True, (_TEXT,)),
    "ci": (True, (_TEXT,)),
}
# Only a rapid antigen test names a device; a NAA test's `ma` means nothing
# (HU 2 and CH 2 send "").
_RAPID_TEST = _TEST | {"ma": (False, (_TEXT, "covid-19-lab-test-manufacturer-and-name"))}
_RECOVERY: dict[str, tuple[bool, tuple[Check, ...]]] = {
    "tg": (True, (_TEXT, "disease-agent-targeted")),
    "fr": (True, (_date,)),
    "co": (True, (_TEXT, "country-2-codes")),
    "is": (True, (_TEXT,)),
    "df": (True, (_date,)),
    "du": (True, (_date,)),
    "ci": (True, (_TEXT,)),
}
_TOP: dict[str, tuple[bool, tuple[Check, ...]]] = {
    "ver": (True, (_text(pattern=r"\d+\.\d+\.\d+"),)),
    "dob": (True, (_text(pattern=r"((19|20)\d\d(-\d\d){0,2})?"),)),
}


def schema_errors(dcc: Mapping, *, valuesets: Mapping[str, Container[str]] = VALUESETS) -> list[str]:
    """Why `dcc` (the -260/1 claim as JSON) breaks the DCC schema; empty if it does not.

    `valuesets` replaces the packaged snapshot, e.g. with the sets a
    deployment downloads from the gateway.
    """
    if not isinstance(dcc, Mapping):
        return ["(root): must be an object"]
    errors = _fields(dcc, _TOP, "", valuesets)
    if "nam" not in dcc:
        errors.append("nam: missing")
    elif isinstance(dcc["nam"], Mapping):
        errors += _fields(dcc["nam"], _NAME, "nam.", valuesets)
    else:
        errors.append("nam: must be an object")
    return errors + _group_errors(dcc, valuesets)


def _group_errors(dcc: Mapping, valuesets: Mapping[str, Container[str]]) -> list[str]:
    present = [group for group in GROUPS if group in dcc]
    if len(present) != 1:
        return [f"(root): needs exactly one of v, t, r; found {', '.join(present) or 'none'}"]
    group = present[0]
    entries = dcc[group]
    if not isinstance(entries, list) or len(entries) != 1:
        return [f"{group}: must be a list of exactly one entry"]
    entry = entries[0]
    if not isinstance(entry, Mapping):
        return [f"{group}[0]: must be an object"]
    return _fields(entry, _entry_spec(group, entry), f"{group}[0].", valuesets)


def _entry_spec(group: str, entry: Mapping) -> dict[str, tuple[bool, tuple[Check, ...]]]:
    if group == "v":
        return _VACCINATION
    if group == "r":
        return _RECOVERY
    return _RAPID_TEST if entry.get("tt") == RAPID_ANTIGEN_TEST else _TEST


def _fields(
    obj: Mapping,
    spec: Mapping[str, tuple[bool, tuple[Check, ...]]],
    path: str,
    valuesets: Mapping[str, Container[str]],
) -> list[str]:
    errors = []
    for name, (required, checks) in spec.items():
        if name not in obj:
            if required:
                errors.append(f"{path}{name}: missing")
            continue
        reason = next(filter(None, (_apply(check, obj[name], valuesets) for check in checks)), None)
        if reason:
            errors.append(f"{path}{name}: {reason}")
    return errors


def _apply(check: Check, value: object, valuesets: Mapping[str, Container[str]]) -> str | None:
    if callable(check):
        return check(value)
    return None if value in valuesets[check] else f"{value!r} is not in value set {check}"
