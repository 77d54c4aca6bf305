"""A person's dose sequence, derived from their persisted history.

The history is the truth, not the `dose_number` a site submitted: doses are
numbered by administration time, doses on the same calendar day (Vietnam's
time) count once, and a submitted number that disagrees is kept and flagged.
`sd` (doses in the series) follows the DCC rule: the product's primary
series, or the dose number itself once past it (a booster is 3/3).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from .valuesets import SERIES_DOSES

VIETNAM = dt.timezone(dt.timedelta(hours=7))

SAME_DAY = "same_day"  # a second record on a day already counted: not counted again
DOSE_NUMBER_MISMATCH = "dose_number_mismatch"  # the site's dose_number disagrees with the history


@dataclass(frozen=True, slots=True)
class HistoryDose:
    site: str
    record_id: str
    vaccine: str
    lot: str
    dose_number: int
    administered_at: dt.datetime


@dataclass(frozen=True, slots=True)
class SequencedDose:
    dose: HistoryDose
    dn: int
    sd: int
    counted: bool
    flags: tuple[str, ...]

    @property
    def date(self) -> dt.date:
        return self.dose.administered_at.astimezone(VIETNAM).date()


def sequence(history: list[HistoryDose]) -> list[SequencedDose]:
    out: list[SequencedDose] = []
    counted_days: set[dt.date] = set()
    for dose in sorted(history, key=lambda d: (d.administered_at, d.site, d.record_id)):
        day = dose.administered_at.astimezone(VIETNAM).date()
        counted = day not in counted_days
        counted_days.add(day)
        dn = len(counted_days)
        flags = []
        if not counted:
            flags.append(SAME_DAY)
        if dose.dose_number != dn:
            flags.append(DOSE_NUMBER_MISMATCH)
        out.append(SequencedDose(dose, dn, max(dn, SERIES_DOSES.get(dose.vaccine, 2)), counted, tuple(flags)))
    return out


def latest(doses: list[SequencedDose]) -> SequencedDose:
    """The dose a certificate attests: the last counted one."""
    return next(d for d in reversed(doses) if d.counted)
