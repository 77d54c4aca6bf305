"""The review list: what a site should look at in the records it entered, derived from a person's
persisted history. Pure: no I/O (storage.review reads the history and writes the flags).

A flag is never a rejection: the record stays persisted and counted as it is; the flag tells the site
which record to correct and why.

- `probable_duplicate`: a second record of the same person on the same day (two sites, or the hospital
  and the district); it is not counted in statistics and certificates.
- `missing_earlier_dose`: submitted as dose n while the history holds fewer than n - 1 earlier days
  (dose 2 without dose 1).
- `dose_number_mismatch`: submitted as a lower number than the history makes it.
- `interval_too_short`: a second dose sooner after the first than the first product's minimum interval.
- `name_mismatch`, `birth_date_mismatch`, `not_found`: the record against the population registry
  (only once a registry extract is loaded).
- `national_id_mismatch`: a 12-digit CCCD whose century, sex and birth-year digits disagree with the
  record's birth date or sex (almost always a typing error at the desk).
"""

from __future__ import annotations

import dataclasses
import datetime as dt

from .sequence import VIETNAM
from .valuesets import MIN_INTERVAL_DAYS

PROBABLE_DUPLICATE = "probable_duplicate"
MISSING_EARLIER_DOSE = "missing_earlier_dose"
DOSE_NUMBER_MISMATCH = "dose_number_mismatch"
INTERVAL_TOO_SHORT = "interval_too_short"
NATIONAL_ID_MISMATCH = "national_id_mismatch"
REGISTRY_FLAGS = {
    "name_mismatch": "the name differs from the population registry's (case and diacritics aside)",
    "birth_date_mismatch": "the birth date differs from the population registry's",
    "not_found": "the national ID is not in the population registry",
}
FLAGS = (PROBABLE_DUPLICATE, MISSING_EARLIER_DOSE, DOSE_NUMBER_MISMATCH, INTERVAL_TOO_SHORT,
         NATIONAL_ID_MISMATCH, *REGISTRY_FLAGS)


@dataclasses.dataclass(frozen=True, slots=True)
class RecordedDose:
    """One persisted record of a person, as the reviewer reads it."""

    site_id: int
    site: str  # code
    record_id: str
    vaccine: str
    dose_number: int
    administered_at: dt.datetime
    counted: bool
    birth_date: dt.date
    sex: str | None
    registry_status: str | None  # this record's name and birth date against the registry; None: no registry


@dataclasses.dataclass(frozen=True, slots=True)
class Flag:
    site_id: int
    record_id: str
    flag: str
    detail: str
    administered_at: dt.datetime


def flags(national_id: str, doses: list[RecordedDose]) -> list[Flag]:
    """Every flag of every record of one person."""
    out: list[Flag] = []
    ordered = sorted(doses, key=lambda d: (d.administered_at, d.site, d.record_id))
    counted = [d for d in ordered if d.counted]
    holder = {_day(d): d for d in counted}  # the record each day is counted by

    def flag(dose: RecordedDose, name: str, detail: str) -> None:
        out.append(Flag(dose.site_id, dose.record_id, name, detail, dose.administered_at))

    for dose in ordered:
        if not dose.counted:
            first = holder.get(_day(dose))
            flag(dose, PROBABLE_DUPLICATE, "the same person on the same day as record "
                 + (f"{first.record_id} of site {first.site}" if first else "counted for that day"))
        if dose.registry_status in REGISTRY_FLAGS:
            flag(dose, dose.registry_status, REGISTRY_FLAGS[dose.registry_status])
        if problem := national_id_problem(national_id, dose.birth_date, dose.sex):
            flag(dose, NATIONAL_ID_MISMATCH, problem)
    for dn, dose in enumerate(counted, start=1):
        if dose.dose_number > dn:
            flag(dose, MISSING_EARLIER_DOSE, f"submitted as dose {dose.dose_number}; the person's history holds"
                 f" {dn - 1} earlier dose(s)")
        elif dose.dose_number < dn:
            flag(dose, DOSE_NUMBER_MISMATCH, f"submitted as dose {dose.dose_number}; the person's history makes it"
                 f" dose {dn}")
        if dn == 2:
            first = counted[0]
            minimum = MIN_INTERVAL_DAYS.get(first.vaccine)
            interval = (_day(dose) - _day(first)).days
            if minimum and interval < minimum:
                flag(dose, INTERVAL_TOO_SHORT, f"{interval} days after dose 1 ({first.vaccine});"
                     f" the minimum interval is {minimum} days")
    return out


def national_id_problem(national_id: str, birth_date: dt.date, sex: str | None) -> str | None:
    """Why a 12-digit CCCD disagrees with the birth date or sex, or None. Its 4th digit is the century
    and sex (1900s: male 0, female 1; 2000s: 2, 3; 2100s: 4, 5; 2200s: 6, 7; 1800s: 8, 9) and its 5th
    and 6th the birth year's last two digits."""
    if len(national_id) != 12 or not national_id.isdigit():
        return None
    code = int(national_id[3])
    century = {0: 1900, 1: 1900, 2: 2000, 3: 2000, 4: 2100, 5: 2100, 6: 2200, 7: 2200, 8: 1800, 9: 1800}[code]
    year = century + int(national_id[4:6])
    problems = []
    if year != birth_date.year:
        problems.append(f"the CCCD gives birth year {year}, the record {birth_date.year}")
    if sex is not None and ("F" if code % 2 else "M") != sex:
        problems.append(f"the CCCD gives sex {'F' if code % 2 else 'M'}, the record {sex}")
    return "; ".join(problems) or None


def _day(dose: RecordedDose) -> dt.date:
    return dose.administered_at.astimezone(VIETNAM).date()
