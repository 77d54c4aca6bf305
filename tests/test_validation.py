"""Validation of dose batches (pure units: no server needed).

Covers: every field's bad values, named; mixed batches; malformed and oversized bodies.
"""

import datetime as dt

import msgspec
import pytest

from tests.factory import batch, dose
from vaxline.doses import BatchTooLarge, BatchValidator, MalformedBatch

NOW = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.timezone.utc)
validator = BatchValidator(max_doses=1000, clock=lambda tz: NOW)


def check(*doses, fmt="json"):
    body = {"doses": list(doses)}
    encoded = msgspec.json.encode(body) if fmt == "json" else msgspec.msgpack.encode(body)
    return validator.validate(encoded, fmt)


def reasons(doses_in, field):
    accepted, rejected = check(*doses_in)
    assert not accepted
    return [e.reason for r in rejected for e in r.errors if e.field == field]


def test_a_valid_batch_is_accepted_whole():
    accepted, rejected = validator.validate(msgspec.json.encode(batch(0, 50)), "json")
    assert len(accepted) == 50 and rejected == []


def test_msgpack_bodies_validate_like_json():
    accepted, rejected = check(dose(1), dose(2, national_id="123"), fmt="msgpack")
    assert [d.record_id for d in accepted] == ["R-0000001"]
    assert rejected[0].errors[0].field == "national_id"


@pytest.mark.parametrize("field, value", [
    ("record_id", ""),
    ("record_id", "x" * 65),
    ("record_id", 12),
    ("national_id", "12345"),
    ("national_id", "0010990123456"),
    ("national_id", "b1234567"),
    ("full_name", ""),
    ("birth_date", "1990-02-30"),
    ("birth_date", "02/04/1990"),
    ("sex", "X"),
    ("phone", "09-123"),
    ("vaccine", "Pfizer"),
    ("lot", ""),
    ("dose_number", 0),
    ("dose_number", 10),
    ("dose_number", "1"),
    ("administered_at", "2021-08-14T09:30:00"),
    ("administered_at", "yesterday"),
])
def test_each_bad_field_is_named(field, value):
    assert reasons([dose(1, **{field: value})], field)


@pytest.mark.parametrize("national_id", ["001099012345", "123456789", "B1234567", "C12345678"])
def test_identity_documents_accepted(national_id):
    accepted, _ = check(dose(1, national_id=national_id))
    assert len(accepted) == 1


def test_dates_out_of_range_are_rejected_with_reasons():
    assert reasons([dose(1, administered_at="2020-12-31T23:00:00+00:00")], "administered_at") == ["is before 2021-01-01"]
    future = (NOW + dt.timedelta(hours=1)).isoformat()
    assert reasons([dose(1, administered_at=future)], "administered_at") == ["is in the future"]
    assert reasons([dose(1, birth_date="2022-01-01")], "birth_date") == ["is after the administration date"]


def test_missing_and_unknown_fields_are_reported_together():
    item = dose(1)
    del item["lot"]
    item["nationalid"] = "x"
    accepted, rejected = check(item)
    errors = {(e.field, e.reason) for e in rejected[0].errors}
    assert ("lot", "required") in errors and ("nationalid", "unknown field") in errors


def test_control_characters_never_reach_the_stream():
    assert reasons([dose(1, full_name="Lan\x00")], "full_name") == ["contains control characters"]


def test_mixed_batch_keeps_the_valid_items_and_indexes_the_rest():
    accepted, rejected = check(dose(1), dose(2, dose_number=12), dose(3), "not an object", dose(5, lot=""))
    assert [d.record_id for d in accepted] == ["R-0000001", "R-0000003"]
    assert [(r.index, r.record_id) for r in rejected] == [(1, "R-0000002"), (3, None), (4, "R-0000005")]


def test_optional_fields_may_be_absent_or_null():
    item = dose(1, phone=None)
    item["sex"] = None
    accepted, _ = check(item)
    assert accepted[0].phone is None and accepted[0].sex is None


def test_malformed_bodies_raise_with_the_decoders_message():
    with pytest.raises(MalformedBatch, match="malformed|truncated|invalid"):
        validator.validate(b'{"doses": [', "json")
    with pytest.raises(MalformedBatch, match="items"):
        validator.validate(b'{"items": []}', "json")
    with pytest.raises(MalformedBatch):
        validator.validate(b'[1, 2]', "json")


def test_too_many_doses_is_refused_whole():
    with pytest.raises(BatchTooLarge):
        validator.validate(msgspec.json.encode(batch(0, 1001)), "json")
