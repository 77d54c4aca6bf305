"""The dose: its wire schema, its validation, and the batch body around it.

Validation is split in two so that one bad item never costs the good ones:
the whole body is decoded at once in C (the fast path: most batches are
clean); only when that fails is each item decoded on its own and, for the
items that fail, each field checked on its own, so the site learns every
field that is wrong and the reason. The field types below are the single
source of the constraints: the per-field check reads them back.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

import msgspec

from .valuesets import VACCINE_PRODUCTS

NATIONAL_ID_PATTERN = r"^(?:[0-9]{12}|[0-9]{9}|[A-Z][0-9]{7,8})$"
PHONE_PATTERN = r"^\+?[0-9]{8,15}$"


def _whole(pattern: str) -> msgspec.Meta:
    """msgspec searches with Python's re, whose `$` also matches before a final newline ("001099012345\\n" was a
    national ID): `\\Z` is the end of the string. (ingest.openapi writes it `$`, which means that in JSON Schema.)"""
    return msgspec.Meta(pattern=pattern.removesuffix("$") + r"\Z")


RecordId = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
NationalId = Annotated[str, _whole(NATIONAL_ID_PATTERN)]
FullName = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Phone = Annotated[str, _whole(PHONE_PATTERN)]
Lot = Annotated[str, msgspec.Meta(min_length=1, max_length=32)]
DoseNumber = Annotated[int, msgspec.Meta(ge=1, le=9)]
AwareDatetime = Annotated[dt.datetime, msgspec.Meta(tz=True)]
Vaccine = Literal[VACCINE_PRODUCTS]  # type: ignore[valid-type]

EARLIEST_DOSE = dt.datetime(2021, 1, 1, tzinfo=dt.timezone.utc)
EARLIEST_BIRTH = dt.date(1900, 1, 1)
CLOCK_SKEW = dt.timedelta(minutes=5)  # a desk's clock may run a little fast

# Friendlier words than a regex for the fields whose rule is a pattern.
FIELD_RULES = {
    "national_id": "must be a 12-digit CCCD, a 9-digit CMND or a passport number (a capital letter and 7-8 digits)",
    "phone": "must be 8-15 digits, optionally starting with +",
    "vaccine": f"must be one of the product codes {', '.join(VACCINE_PRODUCTS)}",
    "administered_at": "must be an RFC 3339 date-time with a UTC offset",
}


class Dose(msgspec.Struct, forbid_unknown_fields=True):
    """One administered dose as a site reports it."""

    record_id: RecordId
    national_id: NationalId
    full_name: FullName
    birth_date: dt.date
    vaccine: Vaccine
    lot: Lot
    dose_number: DoseNumber
    administered_at: AwareDatetime
    sex: Literal["M", "F"] | None = None
    phone: Phone | None = None


class DoseBatch(msgspec.Struct, forbid_unknown_fields=True):
    doses: list[Dose]


class _LooseBatch(msgspec.Struct, forbid_unknown_fields=True):
    """The batch with its items left undecoded, to check them one by one."""

    doses: list[msgspec.Raw]


class FieldError(msgspec.Struct):
    field: str
    reason: str


class Rejection(msgspec.Struct):
    index: int
    record_id: str | None
    errors: list[FieldError]


class BatchTooLarge(ValueError):
    """More doses in one request than the contract allows."""


class MalformedBatch(ValueError):
    """The body is not a batch at all (bad JSON/msgpack, or no `doses` list)."""




class BatchValidator:
    """Decodes a request body into accepted doses and per-item rejections.

    Decoders are built once per format, as msgspec's performance notes advise.
    """

    def __init__(self, *, max_doses: int, clock=dt.datetime.now):
        self._max_doses = max_doses
        self._clock = clock
        self._formats = {
            "json": (msgspec.json.Decoder(DoseBatch), msgspec.json.Decoder(_LooseBatch),
                     msgspec.json.Decoder(Dose), msgspec.json.Decoder(dict[str, Any])),
            "msgpack": (msgspec.msgpack.Decoder(DoseBatch), msgspec.msgpack.Decoder(_LooseBatch),
                        msgspec.msgpack.Decoder(Dose), msgspec.msgpack.Decoder(dict[str, Any])),
        }

    def validate(self, body: bytes, fmt: str) -> tuple[list[Dose], list[Rejection]]:
        """Accepted doses and rejections; raises MalformedBatch or BatchTooLarge."""
        strict, loose, item, mapping = self._formats[fmt]
        try:
            candidates: list[Dose | Rejection] = list(strict.decode(body).doses)
        except msgspec.ValidationError:
            try:
                raw_items = loose.decode(body).doses
            except msgspec.DecodeError as e:
                raise MalformedBatch(str(e)) from e
            candidates = [_decode_item(i, raw, item, mapping) for i, raw in enumerate(raw_items)]
        except msgspec.DecodeError as e:
            raise MalformedBatch(str(e)) from e
        if len(candidates) > self._max_doses:
            raise BatchTooLarge(f"{len(candidates)} doses in one request; the limit is {self._max_doses}")

        now = self._clock(dt.timezone.utc)
        accepted: list[Dose] = []
        rejected: list[Rejection] = []
        for index, candidate in enumerate(candidates):
            if isinstance(candidate, Rejection):
                rejected.append(candidate)
            elif errors := check_dose(candidate, now):
                rejected.append(Rejection(index=index, record_id=candidate.record_id, errors=errors))
            else:
                accepted.append(candidate)
        return accepted, rejected


def _decode_item(index: int, raw: msgspec.Raw, item, mapping) -> Dose | Rejection:
    try:
        return item.decode(raw)
    except msgspec.ValidationError:
        pass
    try:
        fields = mapping.decode(raw)
    except msgspec.DecodeError:
        return Rejection(index=index, record_id=None, errors=[FieldError(field="(dose)", reason="must be an object")])
    record_id = fields.get("record_id")
    return Rejection(
        index=index,
        record_id=record_id if isinstance(record_id, str) else None,
        errors=field_errors(fields) or [FieldError(field="(dose)", reason="invalid")],
    )


def field_errors(fields: dict[str, Any], struct: type[msgspec.Struct] = Dose,
                 rules: dict[str, str] = FIELD_RULES) -> list[FieldError]:
    """Every wrong field of one decoded object (a dose, unless another `struct` is given), each with its
    reason: the rule in `rules` for the field, else msgspec's own words."""
    known = {field.encode_name: field for field in msgspec.structs.fields(struct)}
    errors = [FieldError(field=name, reason="unknown field") for name in fields if name not in known]
    for name, field in known.items():
        if name not in fields:
            if field.required:
                errors.append(FieldError(field=name, reason="required"))
            continue
        try:
            msgspec.convert(fields[name], field.type)
        except msgspec.ValidationError as e:
            errors.append(FieldError(field=name, reason=rules.get(name) or _plain(e)))
    return errors


def check_dose(dose: Dose, now: dt.datetime) -> list[FieldError]:
    """Rules a type cannot express: dates in range, no control characters."""
    errors = []
    if dose.administered_at < EARLIEST_DOSE:
        errors.append(FieldError(field="administered_at", reason="is before 2021-01-01"))
    elif dose.administered_at > now + CLOCK_SKEW:
        errors.append(FieldError(field="administered_at", reason="is in the future"))
    if dose.birth_date < EARLIEST_BIRTH:
        errors.append(FieldError(field="birth_date", reason="is before 1900-01-01"))
    elif dose.birth_date > dose.administered_at.date():
        errors.append(FieldError(field="birth_date", reason="is after the administration date"))
    for name in ("record_id", "full_name", "lot"):
        if not getattr(dose, name).isprintable():
            errors.append(FieldError(field=name, reason="contains control characters"))
    return errors


def dose_from_fields(fields: dict[str, Any], now: dt.datetime) -> tuple[Dose | None, list[FieldError]]:
    """One dose from a decoded object, held to every rule of POST /v1/doses.

    (the dose, []) when it is valid; (the dose, what check_dose finds) when only those rules fail;
    (None, every wrong field with its reason) when it is not a dose at all."""
    try:
        dose = msgspec.convert(fields, Dose)
    except msgspec.ValidationError:
        return None, field_errors(fields)
    return dose, check_dose(dose, now)


def _plain(error: msgspec.ValidationError) -> str:
    """msgspec's message without its `- at $...` path suffix, lower-cased."""
    message = str(error).split(" - at ", 1)[0]
    return message[:1].lower() + message[1:]
