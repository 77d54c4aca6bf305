"""The benchmarks' synthetic people (benchmarks.e2e.dose_fields): pure, no stack.

Benchmarks take their records from separate ranges of n (unit_costs: 1,000,000, 2,000,000, 4,000,000;
portal_costs: 7,000,000) so that each figure counts persons of its own; a national ID given to two ranges
would make a benchmark's persons arrive with a dose already persisted, and sign them twice."""

from __future__ import annotations

import datetime as dt

from benchmarks.e2e import ID_PERIOD, batch_body, dose_fields
from vaxline.doses import BatchValidator

RANGES = (0, 1_000_000, 2_000_000, 3_000_000, 4_000_000, 7_000_000)  # where the benchmarks' records start
LAST_PERIOD = 95 * ID_PERIOD  # the last period before IDs repeat (its doses lie in the future: not validated)


def test_no_national_id_is_given_twice_across_the_benchmarks_ranges():
    ids = [dose_fields(n)[1] for start in (*RANGES, LAST_PERIOD) for n in range(start, start + 5_000)]
    assert len(set(ids)) == len(ids)
    # the period the fields alone have: n and n + 3,000,000 once made the same person
    assert dose_fields(1_000_123)[1] != dose_fields(4_000_123)[1]


def test_the_benchmarks_people_pass_validation_in_every_range():
    validator = BatchValidator(max_doses=1000, clock=lambda tz: dt.datetime(2026, 12, 1, tzinfo=tz))
    for start in RANGES:
        accepted, rejected = validator.validate(batch_body(start, 1000), "json")
        assert rejected == [] and len(accepted) == 1000
