"""Is a DCC payload well-formed: the EU DCC JSON schema of the version it states, then its value sets.

Two checks, kept apart because the EU keeps them apart:

- `schema_errors`: the JSON schema of the release the payload names in
  `ver` (ehn-dcc-development/ehn-dcc-schema, releases 1.0.0 to 1.3.2),
  written as plain checks so each error can say where and why in words a
  support desk can read ("v[0].dn: 0 is not a positive integer"). An unknown
  later minor or patch release of a known major (1.4.0, 1.3.7) is judged by
  the newest known release at or below it; a major we know nothing of is an
  error. The EU harness (dgc-testdata) adds one rule to the schema: exactly
  one of `v`/`t`/`r` (DGC2), which 1.3 also states as a `oneOf`.
- `valueset_misses`: whether the coded fields hold codes of the EU value sets
  (`valuesets.json`, keyed by the EU valueSetId; a snapshot of
  eu-dcc-valuesets, test devices as of 2021-07-15): `tg`, `vp`, the vaccine
  `ma`, `tt`, `tr`, `co`, and the device `ma` of a rapid antigen test. The
  schema only points at these sets (`valueset-uri`); membership is a
  business rule (the EU template rules VR-/TR-/RR-EU-0000..), so it is its
  own stage in the verdict, not a schema failure. `mp` is not checked: valid
  EU test data carries a product outside the set (HU 1).

What changed between releases, as the schema files state it:

| release        | entries per group | dose max | text max | `dob`                                  | name |
| -------------- | ----------------- | -------- | -------- | -------------------------------------- | ---- |
| 1.0.0          | 1 or more         | 9        | 50       | as 1.1, or with a time `T00:00:00`     | `fnt` required |
| 1.0.1          | 1 or more         | 9        | 50       | contains `(19|20)\\d{2}-\\d{2}-\\d{2}` | `fnt` required |
| 1.1.0 - 1.2.1  | 1 or more         | 9        | 50       | `YYYY`, `YYYY-MM` or `YYYY-MM-DD`      | `fnt` required |
| 1.3.0, 1.3.1   | exactly 1         | none     | 80       | as 1.2, or empty                       | `fnt` required |
| 1.3.2          | exactly 1         | none     | 80       | as 1.3.0                               | `fnt` or `gnt` |

The 1.0.0 `dob` is the pattern of the 1.0.0 schema the EU's reference
verifier apps carry (CertLogic); 1.0.1 and later are the repository's files.
"text max" bounds `fn`, `fnt`, `gn`, `gnt`, `is`, `ci`, `tc` (and `nm` from
1.3 on). 1.0.x also names `dr` (date-time of the test result). Patterns are
JSON Schema patterns, i.e. searched, not anchored, unless they say `^...$`.
`format` (date, date-time) is checked too, with a date-time tolerated where
a date is due, as issuers wrote them (PL 11-13).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Container, Mapping
from dataclasses import dataclass
from datetime import date
from importlib.resources import files

VALUESETS: Mapping[str, frozenset[str]] = {
    name: frozenset(codes)
    for name, codes in json.loads(files(__package__).joinpath("valuesets.json").read_text()).items()
}

RAPID_ANTIGEN_TEST = "LP217198-3"
GROUPS = ("v", "t", "r")


@dataclass(frozen=True)
class Release:
    """The rules of one schema release that differ from the others."""

    version: tuple[int, int, int]
    max_entries: int | None  # per group; None: no bound
    max_dose: int | None
    max_text: int  # fn, fnt, gn, gnt, is, ci, tc
    max_test_name: int | None  # nm
    dob: re.Pattern  # searched: JSON Schema patterns are unanchored
    fnt_required: bool  # else at least one of fnt, gnt
    test_result_time: bool  # `dr`

    @property
    def name(self) -> str:
        return ".".join(map(str, self.version))


_DOB_1_0_0 = re.compile(r"^(19|20)\d\d(-\d\d){0,2}(T\d{2}:\d{2}:\d{2})?\Z")
_DOB_1_0_1 = re.compile(r"(19|20)\d{2}-\d{2}-\d{2}")
_DOB_1_1 = re.compile(r"^(19|20)\d\d(-\d\d){0,2}\Z")
_DOB_1_3 = re.compile(r"^((19|20)\d\d(-\d\d){0,2}){0,1}\Z")


def _release(version: str, **rules) -> Release:
    return Release(version=tuple(map(int, version.split("."))), **rules)  # type: ignore[arg-type]


_UP_TO_1_2 = {"max_entries": None, "max_dose": 9, "max_text": 50, "max_test_name": None, "fnt_required": True}
_FROM_1_3 = {"max_entries": 1, "max_dose": None, "max_text": 80, "max_test_name": 80, "dob": _DOB_1_3,
             "test_result_time": False}
RELEASES: tuple[Release, ...] = (
    _release("1.0.0", **_UP_TO_1_2, dob=_DOB_1_0_0, test_result_time=True),
    _release("1.0.1", **_UP_TO_1_2, dob=_DOB_1_0_1, test_result_time=True),
    _release("1.1.0", **_UP_TO_1_2, dob=_DOB_1_1, test_result_time=False),
    _release("1.2.0", **_UP_TO_1_2, dob=_DOB_1_1, test_result_time=False),
    _release("1.2.1", **_UP_TO_1_2, dob=_DOB_1_1, test_result_time=False),
    _release("1.3.0", **_FROM_1_3, fnt_required=True),
    _release("1.3.1", **_FROM_1_3, fnt_required=True),
    _release("1.3.2", **_FROM_1_3, fnt_required=False),
)
NEWEST = RELEASES[-1]
_VERSION = re.compile(r"(\d+)\.(\d+)\.(\d+)")


def release_for(ver: object) -> Release | None:
    """The release a payload stating `ver` is judged by; None if `ver` is malformed or of an unknown major."""
    match = _VERSION.fullmatch(ver) if isinstance(ver, str) else None
    if not match:
        return None
    stated = tuple(int(part) for part in match.groups())
    same_major = [release for release in RELEASES if release.version[0] == stated[0]]
    at_or_below = [release for release in same_major if release.version <= stated]
    return (at_or_below or same_major or [None])[-1]


# --- field checks: each returns why a value is wrong, None when fine ---

Check = Callable[[object], str | None]


def _text(max_length: int | None = None, pattern: str | None = None, *, anchored: bool = True) -> Check:
    regex = re.compile(pattern) if pattern else None

    def check(value: object) -> str | None:
        if not isinstance(value, str):
            return "must be a string"
        if max_length is not None and len(value) > max_length:
            return f"longer than {max_length} characters"
        if regex and not (regex.fullmatch(value) if anchored else regex.search(value)):
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


def _dose(maximum: int | None) -> Check:
    def check(value: object) -> str | None:
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            return f"{value!r} is more than {maximum}" if maximum is not None and value > maximum else None
        return f"{value!r} is not a positive integer"

    return check


def _pattern(regex: re.Pattern) -> Check:
    def check(value: object) -> str | None:
        if not isinstance(value, str):
            return "must be a string"
        return None if regex.search(value) else f"{value!r} does not match {regex.pattern}"

    return check


# field -> (required, check)
Spec = dict[str, tuple[bool, Check]]
_CODE = _text()  # a coded field: the schema asks only for a string
_COUNTRY = _text(pattern="[A-Z]{1,10}", anchored=False)
_ICAO = "[A-Z<]*"


@dataclass(frozen=True)
class _Specs:
    top: Spec
    name: Spec
    entries: Mapping[str, Spec]


def _specs(release: Release) -> _Specs:
    text = _text(release.max_text)
    dose = _dose(release.max_dose)
    common = {"co": (True, _COUNTRY), "is": (True, text), "ci": (True, text)}
    vaccination = {
        "tg": (True, _CODE), "vp": (True, _CODE), "mp": (True, _CODE), "ma": (True, _CODE),
        "dn": (True, dose), "sd": (True, dose), "dt": (True, _date), **common,
    }
    test = {
        "tg": (True, _CODE), "tt": (True, _CODE), "nm": (False, _text(release.max_test_name)),
        "ma": (False, _CODE), "sc": (True, _date_time), "tr": (True, _CODE), "tc": (True, text), **common,
    }
    if release.test_result_time:
        test["dr"] = (False, _date_time)
    recovery = {"tg": (True, _CODE), "fr": (True, _date), "df": (True, _date), "du": (True, _date), **common}
    return _Specs(
        top={"ver": (True, _text(pattern=r"\d+\.\d+\.\d+")), "dob": (True, _pattern(release.dob))},
        name={
            "fn": (False, text),
            "fnt": (release.fnt_required, _text(release.max_text, _ICAO)),
            "gn": (False, text),
            "gnt": (False, _text(release.max_text, _ICAO)),
        },
        entries={"v": vaccination, "t": test, "r": recovery},
    )


_SPECS = {release: _specs(release) for release in RELEASES}


def schema_errors(dcc: Mapping) -> list[str]:
    """Why `dcc` (the -260/1 claim as JSON) breaks the schema of the release it states; empty if it does not."""
    if not isinstance(dcc, Mapping):
        return ["(root): must be an object"]
    ver, release = dcc.get("ver"), release_for(dcc.get("ver"))
    errors = []
    if release is None and isinstance(ver, str) and _VERSION.fullmatch(ver):
        errors.append(f"ver: no known schema of major version {ver.split('.')[0]}"
                      f" (known: {RELEASES[0].name} to {NEWEST.name})")
    release = release or NEWEST  # a malformed `ver` is reported below; the rest is judged by the newest
    specs = _SPECS[release]
    errors += _fields(dcc, specs.top, "")
    if "nam" not in dcc:
        errors.append("nam: missing")
    elif isinstance(dcc["nam"], Mapping):
        errors += _fields(dcc["nam"], specs.name, "nam.")
        if not release.fnt_required and "fnt" not in dcc["nam"] and "gnt" not in dcc["nam"]:
            errors.append("nam: needs fnt or gnt")
    else:
        errors.append("nam: must be an object")
    return errors + _group_errors(dcc, release, specs)


def _group_errors(dcc: Mapping, release: Release, specs: _Specs) -> list[str]:
    present = [group for group in GROUPS if group in dcc]
    if len(present) != 1:
        return [f"(root): needs exactly one of v, t, r; found {', '.join(present) or 'none'}"]
    group = present[0]
    entries = dcc[group]
    if not isinstance(entries, list) or not entries:
        return [f"{group}: must be a list of at least one entry"]
    if release.max_entries is not None and len(entries) > release.max_entries:
        return [f"{group}: schema {release.name} allows {release.max_entries} entry, found {len(entries)}"]
    errors = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, Mapping):
            errors.append(f"{group}[{index}]: must be an object")
        else:
            errors += _fields(entry, specs.entries[group], f"{group}[{index}].")
    return errors


def _fields(obj: Mapping, spec: Spec, path: str) -> list[str]:
    errors = []
    for name, (required, check) in spec.items():
        if name not in obj:
            if required:
                errors.append(f"{path}{name}: missing")
            continue
        reason = check(obj[name])
        if reason:
            errors.append(f"{path}{name}: {reason}")
    return errors


# --- value sets: a business rule, judged apart from the schema ---

# group -> field -> value set
_CODED: Mapping[str, Mapping[str, str]] = {
    "v": {"tg": "disease-agent-targeted", "vp": "sct-vaccines-covid-19", "ma": "vaccines-covid-19-auth-holders",
          "co": "country-2-codes"},
    "t": {"tg": "disease-agent-targeted", "tt": "covid-19-lab-test-type", "tr": "covid-19-lab-result",
          "co": "country-2-codes"},
    "r": {"tg": "disease-agent-targeted", "co": "country-2-codes"},
}
# Only a rapid antigen test names a device; a NAA test's `ma` means nothing
# (HU 2 and CH 2 send "").
_RAPID_TEST_CODED = {**_CODED["t"], "ma": "covid-19-lab-test-manufacturer-and-name"}


def valueset_misses(dcc: Mapping, *, valuesets: Mapping[str, Container[str]] = VALUESETS) -> list[str]:
    """The coded fields of every entry whose code is outside its EU value set, e.g.
    "t[0].tt: 'LP000-0' is not in value set covid-19-lab-test-type". Shapes the schema
    refuses are left to `schema_errors`.

    `valuesets` replaces the packaged snapshot, e.g. with the sets a
    deployment downloads from the gateway.
    """
    misses = []
    for group in GROUPS:
        entries = dcc.get(group) if isinstance(dcc, Mapping) else None
        for index, entry in enumerate(entries if isinstance(entries, list) else ()):
            if not isinstance(entry, Mapping):
                continue
            coded = _RAPID_TEST_CODED if group == "t" and entry.get("tt") == RAPID_ANTIGEN_TEST else _CODED[group]
            misses += [
                f"{group}[{index}].{field}: {entry[field]!r} is not in value set {valueset}"
                for field, valueset in coded.items()
                if isinstance(entry.get(field), str) and entry[field] not in valuesets[valueset]
            ]
    return misses
