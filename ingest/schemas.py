"""What the HTTP API answers, as msgspec Structs: the response half of the contract.

The request bodies have their homes beside the code that decodes them (vaxline.doses, vaxline.citizen,
ingest.certificates); the handlers build their answers as plain dicts from database rows, so these
Structs describe those answers for ingest.openapi, which turns both halves into the OpenAPI document.
Every Struct forbids unknown fields, so its schema says `additionalProperties: false`: a handler that
starts answering a field the document does not name fails the contract tests (tests/test_openapi.py,
tests/test_fuzz.py) instead of drifting silently.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

import msgspec

from storage import reconcile
from vaxline.citizen import KINDS, MAX_EVIDENCE
from vaxline.dcc.verify import STAGES
from vaxline.doses import (
    DoseNumber,
    FullName,
    Lot,
    NationalId,
    Phone,
    RecordId,
    Rejection,
    Vaccine,
)
from vaxline.review import FLAGS, REGISTRY_FLAGS
from vaxline.sequence import DOSE_NUMBER_MISMATCH, SAME_DAY

BATCH_ID_PATTERN = r"^[0-9]{1,4}-[0-9]{1,19}-[0-9]{1,19}$"  # <shard>-<stream entry id>, vaxline.entries
UVCI_PATTERN = r"^URN:UVCI:01:VN:[A-Z2-7]{32}$"  # vaxline.dcc.issue.new_uvci
REQUEST_ID_PATTERN = r"^CR-[A-Z]{28}$"  # vaxline.citizen.new_request_id
LINK_PATTERN = r"^/v1/certificates/URN:UVCI:01:VN:[A-Z2-7]{32}\?expires=[0-9]+&token=[A-Za-z0-9_-]+$"  # vaxline.links

BatchId = Annotated[str, msgspec.Meta(pattern=BATCH_ID_PATTERN, examples=["1-1795329669214-0"])]
Uvci = Annotated[str, msgspec.Meta(pattern=UVCI_PATTERN)]
RequestId = Annotated[str, msgspec.Meta(pattern=REQUEST_ID_PATTERN)]
Count = Annotated[int, msgspec.Meta(ge=0)]
Flag = Literal[FLAGS]  # type: ignore[valid-type]
RequestStatus = Literal["pending_otp", "submitted", "approved", "deferred", "rejected"]
Sex = Literal["M", "F"]
_Struct = dict(forbid_unknown_fields=True)


class Problem(msgspec.Struct):
    """Every answer with a status of 400 or more (but /readyz's 503) is this, as `application/problem+json`:
    RFC 9457 problem details, with `error` kept for the clients of the first releases. Open to extension
    members, as RFC 9457 allows."""

    type: Annotated[str, msgspec.Meta(
        min_length=1, extra_json_schema={"format": "uri"},
        description="`about:blank` when the status says it all, else a problem type listed in"
                    " docs/api.md#errors-and-limits (https://vaxline.example/problems/...): an identifier, not a page"
                    " to fetch")]
    title: Annotated[str, msgspec.Meta(min_length=1, description="the problem type's short summary (for about:blank,"
                                                                 " the status's reason phrase)")]
    status: Annotated[int, msgspec.Meta(ge=400, le=599, description="the HTTP status of this answer")]
    detail: Annotated[str, msgspec.Meta(min_length=1, description="what went wrong this time, in words")]
    error: Annotated[str, msgspec.Meta(min_length=1, description="the same as `detail` (the error body of the"
                                                                 " first releases)")]


# POST /v1/doses, GET /v1/batches/{batch_id}

class BatchAccepted(msgspec.Struct, **_Struct):
    batch_id: BatchId | None  # null when no item was valid: nothing was enqueued
    accepted: Count
    rejected: list[Rejection]


class BatchReceipt(msgspec.Struct, **_Struct):
    batch_id: BatchId
    status: Literal["queued", "persisted"]
    accepted: Count
    inserted: Count
    duplicates: Count


class BatchFailed(msgspec.Struct, **_Struct):
    """A batch that was dead-lettered."""

    batch_id: BatchId
    status: Literal["failed"]
    error: str


# GET /v1/persons/{national_id}/doses

class PersistedDose(msgspec.Struct, **_Struct):
    record_id: RecordId
    site: str
    vaccine: Vaccine
    lot: Lot
    dose_number: DoseNumber
    administered_at: dt.datetime
    full_name: FullName
    birth_date: dt.date
    batch_id: BatchId
    counted: bool  # false for a probable duplicate


class PersonDoses(msgspec.Struct, **_Struct):
    national_id: NationalId
    doses: list[PersistedDose]


# PUT, DELETE, GET /v1/doses/{record_id}

class CorrectionAccepted(msgspec.Struct, **_Struct):
    batch_id: BatchId
    record_id: RecordId
    op: Literal["replace", "withdraw"]


class StoredDose(msgspec.Struct, **_Struct):
    record_id: RecordId
    national_id: NationalId
    full_name: FullName
    birth_date: dt.date
    vaccine: Vaccine
    lot: Lot
    dose_number: DoseNumber
    administered_at: dt.datetime
    sex: Sex | None
    phone: Phone | None
    counted: bool
    batch_id: BatchId
    received_at: dt.datetime


class DoseVersion(msgspec.Struct, **_Struct):
    """One earlier version of a corrected record; a withdrawal's dose fields are null."""

    version: str
    op: Literal["insert", "replace", "withdraw"]
    national_id: NationalId | None
    full_name: FullName | None
    birth_date: dt.date | None
    vaccine: Vaccine | None
    lot: Lot | None
    dose_number: DoseNumber | None
    administered_at: dt.datetime | None
    sex: Sex | None
    phone: Phone | None
    batch_id: BatchId
    changed_by: str
    received_at: dt.datetime
    applied: bool  # false: it arrived after a newer version, kept but not applied


class DoseHistory(msgspec.Struct, **_Struct):
    record_id: RecordId
    site: str
    status: Literal["current", "withdrawn"]
    dose: StoredDose | None  # null once withdrawn
    versions: list[DoseVersion]


# GET /v1/persons/{national_id}

class PersonFlag(msgspec.Struct, **_Struct):
    site: str
    record_id: RecordId
    flag: Flag
    detail: str
    administered_at: dt.datetime


class Person(msgspec.Struct, **_Struct):
    national_id: NationalId
    full_name: FullName
    birth_date: dt.date
    sex: Sex | None
    registry_status: Literal[("verified", *REGISTRY_FLAGS, "unchecked")]  # type: ignore[valid-type]
    review_due: bool
    records: Count
    counted_doses: Count
    flags: list[PersonFlag]


# GET /v1/stats, /v1/review, /v1/reconciliation

class StatsRow(msgspec.Struct, **_Struct):
    """The keys named in `group_by`, and the counted doses of that group."""

    doses: Count
    day: dt.date | msgspec.UnsetType = msgspec.UNSET
    province: int | msgspec.UnsetType = msgspec.UNSET
    site: str | msgspec.UnsetType = msgspec.UNSET
    product: Vaccine | msgspec.UnsetType = msgspec.UNSET
    dose: DoseNumber | msgspec.UnsetType = msgspec.UNSET


class Stats(msgspec.Struct, **_Struct):
    rows: list[StatsRow]
    total: Count


class ReviewItem(msgspec.Struct, **_Struct):
    site: str
    province: int
    record_id: RecordId
    national_id: NationalId
    administered_at: dt.datetime
    flag: Flag
    detail: str
    flagged_at: dt.datetime


class ReviewList(msgspec.Struct, **_Struct):
    items: list[ReviewItem]
    total: Count
    limit: Count
    offset: Count


_FIGURES = reconcile.COLUMNS[2:-1]  # every count, `unexplained` last
ReconciliationRow = msgspec.defstruct(
    "ReconciliationRow", [("site", str), ("day", dt.date), *((name, int) for name in _FIGURES), ("explanation", str)],
    module=__name__, **_Struct)
ReconciliationTotals = msgspec.defstruct(
    "ReconciliationTotals", [(name, int) for name in _FIGURES], module=__name__, **_Struct)


class Reconciliation(msgspec.Struct, **_Struct):
    rows: list[ReconciliationRow]  # type: ignore[valid-type]
    totals: ReconciliationTotals  # type: ignore[valid-type]
    unexplained: Count


# Certificates

class CertificateDose(msgspec.Struct, **_Struct):
    dn: Annotated[int, msgspec.Meta(ge=1)]  # the EU's dose number, from the history
    sd: Annotated[int, msgspec.Meta(ge=1)]  # the EU's series doses
    date: dt.date
    vaccine: Vaccine
    manufacturer: str
    lot: Lot
    site: str
    record_id: RecordId
    dose_number: DoseNumber  # as submitted
    counted: bool
    flags: list[Literal[SAME_DAY, DOSE_NUMBER_MISMATCH]]  # type: ignore[valid-type]


class Certificate(msgspec.Struct, **_Struct):
    uvci: Uvci
    full_name: FullName
    birth_date: dt.date
    doses: list[CertificateDose]
    status: Literal["current", "revoked"]
    issued_at: dt.datetime
    expires_at: dt.datetime
    revoked_at: dt.datetime | None
    superseded_by: Uvci | None
    hc1: Annotated[str, msgspec.Meta(pattern=r"^HC1:")]


class LookupAnswer(Certificate, **_Struct):
    """A lookup's certificate, and a signed link to it, valid a few minutes (its QR image: `&format=png`)."""

    link: Annotated[str, msgspec.Meta(pattern=LINK_PATTERN)]
    link_expires_at: dt.datetime


class CertificateSummary(msgspec.Struct, **_Struct):
    """What a UVCI alone answers: no more than the certificate's QR states."""

    uvci: Uvci
    status: Literal["current", "superseded", "revoked"]
    full_name: FullName
    birth_date: dt.date
    vaccination: dict[str, Any] | None  # the DCC's `v` entry, as signed (tg, vp, mp, ma, dn, sd, dt, co, is, ci)


class Verdict(msgspec.Struct, **_Struct):
    """What `vaxline verify --json` prints (vaxline.dcc.verify.Verdict.to_json)."""

    valid: bool
    stage: Literal[STAGES] | None  # type: ignore[valid-type]  # the first stage that failed
    reason: str
    kid: str | None  # hex
    payload: dict[str, Any] | None  # the DCC as JSON
    issuer: str | None
    issued_at: int | None
    expires_at: int | None
    rules: list[str]  # business rules broken (codes outside the EU value sets); stage "rules" when any


class TrustedCertificate(msgspec.Struct, **_Struct):
    kid: str  # base64 of the 8-byte kid, as the EU gateway writes it
    kid_hex: Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{16}$")]
    certificate: str  # base64 DER of the DSC
    not_after: dt.datetime


class TrustListBody(msgspec.Struct, **_Struct):
    certificates: list[TrustedCertificate]


class Revocation(msgspec.Struct, **_Struct):
    hash: Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{32}$")]  # first 16 bytes of SHA-256 of the UVCI
    revoked_at: dt.datetime
    seq: Annotated[int, msgspec.Meta(ge=1)]  # the revocation's number: the feed's order and cursor


class Revocations(msgspec.Struct, **_Struct):
    hashes: list[Revocation]
    algorithm: Literal["SHA-256, first 16 bytes of the UVCI"]
    complete: bool  # false: a full page, follow `next` at once
    # the feed after the last revocation listed: /v1/revocations?after=<number>
    next: Annotated[str, msgspec.Meta(pattern=r"^/v1/revocations\?after=[0-9]+$")]


# Citizen correction requests

# a code to a phone on record, a check in person at the province, or a request about records that do not exist
Identity = Literal["code", "in_person", "no_record"]


class CorrectionFiled(msgspec.Struct, **_Struct):
    """One answer whatever the person's identity route: it never says whether a phone is on record."""
    request_id: RequestId
    status: Literal["received"]
    code_expires_at: dt.datetime  # until when a code, if one was sent, works
    evidence: Annotated[int, msgspec.Meta(ge=0, le=MAX_EVIDENCE)]
    next: str  # what to do next: confirm with the code if one came, else a check in person


class CodeSent(msgspec.Struct, **_Struct):
    request_id: RequestId
    status: Literal["pending_otp"]
    code_expires_at: dt.datetime


class CorrectionConfirmed(msgspec.Struct, **_Struct):
    request_id: RequestId
    status: Literal["submitted"]


class CitizenView(msgspec.Struct, **_Struct):
    """What the citizen sees of their request, given its id and their birth date."""

    request_id: RequestId
    status: RequestStatus
    kind: Literal[KINDS]  # type: ignore[valid-type]
    message: str | None
    created_at: dt.datetime
    submitted_at: dt.datetime | None
    decided_at: dt.datetime | None


class Evidence(msgspec.Struct, **_Struct):
    n: Annotated[int, msgspec.Meta(ge=1, le=MAX_EVIDENCE)]
    content_type: Literal["image/jpeg", "image/png"]
    sha256: Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")]
    bytes: Count
    url: str


class AppliedChange(msgspec.Struct, **_Struct):
    """What an approval put through the pipeline."""

    op: Literal["insert", "replace"]
    site_id: int
    site: str
    record_id: RecordId
    batch_id: BatchId | None  # null: approved, not yet in the stream (re-driven)
    before: dict[str, Any] | None
    after: dict[str, Any]


class CorrectionRequest(msgspec.Struct, **_Struct):
    """The whole request, as a token in scope sees it."""

    request_id: RequestId
    status: RequestStatus
    kind: Literal[KINDS]  # type: ignore[valid-type]
    national_id: NationalId
    full_name: FullName
    birth_date: dt.date
    phone: Phone
    claimed: dict[str, Any]  # the dose as the citizen stated it (`dose` of the request), or {}
    note: str
    site_id: int | None  # the site it is routed to; null: its province's queue
    province: int
    identity: Identity
    message: str | None
    decided_by: str | None
    decided_at: dt.datetime | None
    applied: list[AppliedChange] | None
    created_at: dt.datetime
    submitted_at: dt.datetime | None
    updated_at: dt.datetime
    evidence: list[Evidence] | msgspec.UnsetType = msgspec.UNSET  # GET only, not in a decision's answer


class QueuedRequest(msgspec.Struct, **_Struct):
    request_id: RequestId
    status: RequestStatus
    kind: Literal[KINDS]  # type: ignore[valid-type]
    national_id: NationalId
    full_name: FullName
    birth_date: dt.date
    claimed: dict[str, Any]
    note: str
    site: str | None  # null: the province's queue
    province: int
    identity: Identity
    message: str | None
    decided_by: str | None
    decided_at: dt.datetime | None
    submitted_at: dt.datetime | None


class CorrectionQueue(msgspec.Struct, **_Struct):
    requests: list[QueuedRequest]
    total: Count
    limit: Count
    offset: Count


class AuditEntry(msgspec.Struct, **_Struct):
    entry_id: int
    at: dt.datetime
    actor: str  # "citizen", "site:<code>", "operator", "system" (the re-drive), "retention"
    action: str  # created, wrong_code, code_resent, confirmed, decision:<status>, decision_failed,
    # applied:<op> (the change entered the stream), enqueue_failed (it will be re-driven), expired
    site_id: int | None
    record_id: str | None
    before: dict[str, Any] | None
    after: dict[str, Any] | None


class AuditLog(msgspec.Struct, **_Struct):
    request_id: RequestId
    entries: list[AuditEntry]


# Operations

class Health(msgspec.Struct, **_Struct):
    status: Literal["ok"]


class ReadinessChecks(msgspec.Struct, **_Struct):
    postgres: str  # "ok", or "unreachable: <error class>"
    redis: str
    # "ok", or why Redis may evict acknowledged doses (a maxmemory-policy other than noeviction); only
    # when Redis answers
    redis_eviction: str | msgspec.UnsetType = msgspec.UNSET


class Readiness(msgspec.Struct, **_Struct):
    status: Literal["ready", "not ready"]
    checks: ReadinessChecks
    error: str | msgspec.UnsetType = msgspec.UNSET  # when not ready


RESPONSES = (Problem, BatchAccepted, BatchReceipt, BatchFailed, PersonDoses, CorrectionAccepted, DoseHistory, Person,
             Stats, ReviewList, Reconciliation, Certificate, LookupAnswer, CertificateSummary, Verdict, TrustListBody,
             Revocations, CorrectionFiled, CodeSent, CorrectionConfirmed, CitizenView, CorrectionRequest,
             CorrectionQueue, AuditLog, Health, Readiness)
