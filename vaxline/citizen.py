"""Citizen correction requests: their schema, one-time codes, evidence images, and the dose an approval
puts through the pipeline. Pure: no I/O (storage.citizen keeps them, ingest.citizen serves them).

In 2021 citizens filed corrections (a missing dose, wrong dose details, wrong personal details) with a
photo of their paper certificate and a one-time code, and waited without an answer. Here a request is
confirmed by a code sent to a phone on record for the person (a phone a site recorded for them, never the
one the request names: else anyone could file about anyone), or checked in person at the province when
there is none; routed to a site that holds a record of the person (or, for a missing dose, the site it
names), else to its province's queue; decided there; and, when approved, applied through the same stream
and workers as any dose: the certificate follows from the history. A site's approval changes only its
own records.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
import string
from typing import Annotated, Literal

import msgspec

from .doses import DoseNumber, FullName, Lot, NationalId, Phone, RecordId, Vaccine
from .sequence import VIETNAM

KINDS = ("missing_dose", "wrong_dose_details", "wrong_personal_details")
DECISIONS = ("approve", "defer", "reject")
FINAL = ("approved", "rejected")

MAX_EVIDENCE = 3
MAX_EVIDENCE_BYTES = 5 * 1024 * 1024
OTP_DIGITS = 6

SiteCode = Annotated[str, msgspec.Meta(min_length=1, max_length=32)]
Place = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Note = Annotated[str, msgspec.Meta(max_length=2000)]
Message = Annotated[str, msgspec.Meta(min_length=1, max_length=2000)]
Province = Annotated[int, msgspec.Meta(ge=1, le=99)]


class ClaimedDose(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """A dose as the citizen states it (from the paper certificate): where, when, what."""

    date: dt.date
    site: SiteCode | None = None  # a registered site's code
    place: Place | None = None  # free text: a mobile team, a place the registry does not know
    province: Province | None = None  # where, when the place is not a registered site
    vaccine: Vaccine | None = None
    lot: Lot | None = None
    dose_number: DoseNumber | None = None
    record_id: RecordId | None = None  # the record to fix, when the citizen knows it (certificate view)


class RequestBody(msgspec.Struct, forbid_unknown_fields=True):
    national_id: NationalId
    full_name: FullName  # as it should read
    birth_date: dt.date  # as it should read
    phone: Phone  # a contact number; the one-time code goes to a phone on record, not here
    kind: Literal[KINDS]  # type: ignore[valid-type]
    dose: ClaimedDose | None = None
    note: Note = ""


class Confirmation(msgspec.Struct, forbid_unknown_fields=True):
    code: Annotated[str, msgspec.Meta(pattern=r"^[0-9]{6}$")]


class DoseOverride(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """What the deciding site corrects in the citizen's claim before applying it."""

    date: dt.date | None = None
    time: dt.time | None = None
    vaccine: Vaccine | None = None
    lot: Lot | None = None
    dose_number: DoseNumber | None = None


class Decision(msgspec.Struct, forbid_unknown_fields=True):
    decision: Literal[DECISIONS]  # type: ignore[valid-type]
    message: Message
    record_id: RecordId | None = None  # wrong_dose_details: the site's record to fix (default: the claim's)
    site: SiteCode | None = None  # the operator approving from a province queue: the site the dose goes to
    dose: DoseOverride | None = None


RULES = {
    "kind": f"must be one of {', '.join(KINDS)}",
    "decision": f"must be one of {', '.join(DECISIONS)}",
    "code": "must be the 6-digit code sent to the phone",
    "birth_date": "must be a date YYYY-MM-DD",
}


def claim_problems(body: RequestBody) -> list[tuple[str, str]]:
    """Rules a type cannot state: what each kind needs; (field, reason) pairs."""
    problems = []
    dose = body.dose
    if body.kind != "wrong_personal_details" and dose is None:
        problems.append(("dose", f"is required for {body.kind}: at least its date and site or place"))
    if dose is not None:
        if body.kind != "wrong_personal_details" and dose.site is None and dose.place is None:
            problems.append(("dose.site", "give the site's code, or the place as free text (dose.place)"))
        if body.kind == "missing_dose" and dose.vaccine is None:
            problems.append(("dose.vaccine", "is required for a missing dose"))
        if dose.date > dt.datetime.now(VIETNAM).date():
            problems.append(("dose.date", "is in the future"))
    return problems


def new_request_id() -> str:
    """28 capital letters (131 random bits) after `CR-`: no digits, so it never reads as an ID or a phone."""
    return "CR-" + "".join(secrets.choice(string.ascii_uppercase) for _ in range(28))


def new_code() -> str:
    return f"{secrets.randbelow(10 ** OTP_DIGITS):0{OTP_DIGITS}d}"


def code_hash(request_id: str, code: str) -> bytes:
    """Stored instead of the code; the request id salts it (a table of all 10^6 codes fits one request only)."""
    return hashlib.sha256(f"{request_id}:{code}".encode()).digest()


def code_matches(request_id: str, code: str, stored: bytes | None) -> bool:
    return stored is not None and hmac.compare_digest(code_hash(request_id, code), stored)


def image_type(content: bytes) -> str | None:
    """image/jpeg or image/png from the bytes themselves (never the file name or the declared type), or None."""
    if content.startswith(b"\xff\xd8\xff") and content.rstrip(b"\x00").endswith(b"\xff\xd9"):
        return "image/jpeg"
    if content.startswith(b"\x89PNG\r\n\x1a\n") and content[12:16] == b"IHDR" and b"IEND" in content[-12:]:
        return "image/png"
    return None


def administered_at(date: dt.date, time: dt.time | None = None) -> dt.datetime:
    """A claimed date as an administration time: the time when given, else noon, Vietnam's time."""
    time = time or dt.time(12, 0)
    return dt.datetime.combine(date, time.replace(tzinfo=None), tzinfo=VIETNAM)
