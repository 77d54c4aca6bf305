"""The operations of the HTTP API for its OpenAPI document (ingest/openapi.py builds the document from them).

One `Operation` per path and method ingest registers, with its answers, errors, parameters and request
body; and the rules, examples and security schemes they refer to.
"""


from __future__ import annotations

import dataclasses
from typing import Any

from vaxline.citizen import MAX_EVIDENCE, MAX_EVIDENCE_BYTES
from vaxline.config import Settings
from vaxline.doses import EARLIEST_BIRTH, EARLIEST_DOSE, NATIONAL_ID_PATTERN
from vaxline.review import FLAGS

from . import schemas
from .certificates import MAX_HC1

OPENAPI_VERSION = "3.1.0"
API_VERSION = "1.0.0"  # the contract's version: bump it when a client would notice a change
REF = "#/components/schemas/{name}"
MSGPACK = ("application/msgpack", "application/x-msgpack")
MAX_BATCH_DOSES = Settings.__dataclass_fields__["max_batch_doses"].default  # past it: 413

# What str.isprintable() refuses, as a pattern both Python and JSON Schema (ECMA-262) read alike: control,
# format and separator characters of the Basic Multilingual Plane (but the ASCII space), and its private-use
# area. Unassigned code points are refused too, which no portable pattern can list.
PRINTABLE_PATTERN = (r"^[^\u0000-\u001F\u007F-\u00A0\u00AD\u0600-\u0605\u061C\u06DD\u070F\u0890\u0891\u08E2\u1680"
                     r"\u180E\u2000-\u200F\u2028-\u202F\u205F-\u206F\u3000\uE000-\uF8FF\uFEFF\uFFF9-\uFFFB]*$")

# vaxline.doses.check_dose's rules, which no type states: what the document adds to the Dose schema.
DOSE_RULES: dict[str, dict[str, Any]] = {
    "record_id": {"pattern": PRINTABLE_PATTERN, "description": "the site's own id, 1-64 printable characters;"
                  " (site, record_id) is the idempotency key", "examples": ["A-000123"]},
    "national_id": {"description": "12 digits (CCCD), 9 digits (CMND) or a passport number (a capital letter and"
                    " 7-8 digits)", "examples": ["001099012345"]},
    "full_name": {"pattern": PRINTABLE_PATTERN, "description": "1-200 printable characters",
                  "examples": ["Nguyễn Thị Ánh"]},
    "birth_date": {"description": f"from {EARLIEST_BIRTH.isoformat()}, not after the administration date",
                   "examples": ["1990-04-02"]},
    "vaccine": {"description": "an EU DCC product code (vaxline/valuesets.py)"},
    "lot": {"pattern": PRINTABLE_PATTERN, "description": "1-32 printable characters", "examples": ["ABV5300"]},
    "dose_number": {"description": "as submitted: the certificates derive the sequence from the history"},
    "administered_at": {"description": f"RFC 3339 with a UTC offset; from {EARLIEST_DOSE.date().isoformat()},"
                        " not in the future (5 minutes of clock skew allowed)",
                        "examples": ["2021-08-14T09:30:00+07:00"]},
    "sex": {"description": "optional"},
    "phone": {"description": "optional: contact data, never unique (a family may share one)",
              "examples": ["0912345678"]},
}

# vaxline.citizen.claim_problems's rules, which no type states: what each kind of request needs.
_PRESENT = {"not": {"type": "null"}}
CLAIM_RULES = [
    {"if": {"properties": {"kind": {"const": "wrong_personal_details"}}},
     "else": {"required": ["dose"], "properties": {"dose": {
         "type": "object", "description": "required for the two dose kinds: at least its date, and the site's code"
         " or the place", "anyOf": [{"required": ["site"], "properties": {"site": _PRESENT}},
                                    {"required": ["place"], "properties": {"place": _PRESENT}}]}}}},
    {"if": {"properties": {"kind": {"const": "missing_dose"}}},
     "then": {"properties": {"dose": {"description": "a missing dose names its vaccine", "required": ["vaccine"],
                                      "properties": {"vaccine": _PRESENT}}}}},
]

DOSE_EXAMPLE = {"record_id": "A-000123", "national_id": "001099012345", "full_name": "Nguyễn Thị Ánh",
                "birth_date": "1990-04-02", "sex": "F", "phone": "0912345678", "vaccine": "EU/1/21/1529",
                "lot": "ABV5300", "dose_number": 1, "administered_at": "2021-08-14T09:30:00+07:00"}
CORRECTION_EXAMPLE = {"national_id": "001099012345", "full_name": "Nguyễn Thị Ánh", "birth_date": "1990-04-02",
                      "phone": "0987654321", "kind": "missing_dose", "note": "mũi 2 tiêm ở trạm, chưa thấy trên sổ",
                      "dose": {"date": "2021-08-05", "site": "79-TYT-000001", "vaccine": "EU/1/21/1529",
                               "lot": "ABV5300", "dose_number": 2}}

SECURITY_SCHEMES = {
    "siteToken": {"type": "http", "scheme": "bearer", "description": "A vaccination site's token (`vaxline sites"
                  " add`, `vaxline sites token CODE`): posts and corrects the site's own doses, reads its own data."},
    "provinceToken": {"type": "http", "scheme": "bearer", "description": "A province's read-only token (`vaxline"
                      " provinces token N`): its province's statistics, review list and correction queue."},
    "operatorToken": {"type": "http", "scheme": "bearer", "description": "The national operator's token"
                      " (`vaxline tokens operator`): the national view; decides requests in a province's queue."},
}
SITE, PROVINCE, OPERATOR = "siteToken", "provinceToken", "operatorToken"
ANY_TOKEN = (SITE, PROVINCE, OPERATOR)

HEADERS = {
    "Retry-After": {"description": "seconds to wait before retrying", "required": True,
                    "schema": {"type": "string", "pattern": "^[0-9]+$"}},
    "WWW-Authenticate": {"description": "`Bearer`", "required": True, "schema": {"type": "string"}},
    "ETag": {"description": "the body's digest, for `If-None-Match`", "required": True, "schema": {"type": "string"}},
    "Cache-Control": {"description": "how long a cache may keep it", "required": True, "schema": {"type": "string"}},
}
_RETRY_AFTER = (429, 503)


# -- operations ---------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Answer:
    """One response: a Struct (JSON) or raw media types, with its description."""

    description: str
    body: type | tuple[type, ...] | None = None  # a Struct, or several (oneOf)
    media: tuple[tuple[str, dict], ...] = ()  # (media type, schema) beside or instead of the JSON body
    example: Any = None
    links: tuple[tuple[str, str, dict], ...] = ()  # (name, operationId, parameters)
    headers: tuple[str, ...] = ()  # names in HEADERS that this answer always has


@dataclasses.dataclass(frozen=True)
class Operation:
    method: str
    path: str
    operation_id: str
    summary: str
    description: str
    tag: str
    auth: tuple[str, ...]  # security schemes, any one of which will do; "" for none (optional auth)
    answers: dict[int, Answer]
    errors: dict[int, str]  # status -> when; each answers the Error body
    parameters: tuple[dict, ...] = ()
    body: dict | None = None  # the requestBody object


def _param(name: str, where: str, schema: dict, description: str, *, required: bool | None = None,
           example: Any = None) -> dict:
    param = {"name": name, "in": where, "required": where == "path" if required is None else required,
             "description": description, "schema": schema}
    if example is not None:
        param["example"] = example
    return param


def _ref(name: str) -> dict:
    return {"$ref": REF.format(name=name)}


def _json_body(schema: dict, description: str, example: Any, *, media: tuple[str, ...] = ("application/json",),
               extra: dict | None = None) -> dict:
    content = {m: {"schema": schema, "example": example} for m in media}
    content.update(extra or {})
    return {"required": True, "description": description, "content": content}


_DATE = {"type": "string", "format": "date"}
_COUNT = {"type": "integer", "minimum": 0, "maximum": 2**31 - 1}
_CSV = ("text/csv", {"type": "string"})
_FORMAT = _param("format", "query", {"enum": ["json", "csv"]}, "csv: CSV with a header row (as `Accept: text/csv`)")
_SITE_CODE = {"type": "string", "minLength": 1, "maxLength": 32}
_SCOPE = (
    _param("site", "query", _SITE_CODE, "a site's code, within the token's reach (403 otherwise; 404 unknown,"
           " for the operator)"),
    _param("province", "query", {"type": "integer", "minimum": 0, "maximum": 999},
           "a province's official code, within the token's reach"),
)
_DAYS = (
    _param("from", "query", _DATE, "first administration day (Vietnam's time), inclusive; default: all"),
    _param("to", "query", _DATE, "last administration day, inclusive; default: all"),
)
_NATIONAL_ID = _param("national_id", "path", {"type": "string", "pattern": NATIONAL_ID_PATTERN},
                      "12 digits (CCCD), 9 digits (CMND) or a passport number", example="001099012345")
_RECORD_ID = _param("record_id", "path", {"type": "string", "minLength": 1, "maxLength": 64},
                    "the site's record id (a `/` in it percent-encoded)", example="A-000123")
_REQUEST_ID = _param("request_id", "path", {"type": "string", "pattern": schemas.REQUEST_ID_PATTERN},
                     "`CR-` and 28 capital letters: the citizen's handle", example="CR-" + "A" * 28)
_ANY_TOKEN_ERRORS = {401: "missing or unknown bearer token"}

OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "post", "/v1/doses", "postDoses", "Post a batch of administered doses",
        "The site is the token's: a body cannot name another. Valid items are accepted even when others are"
        " rejected, each wrong field named with its reason; the 202 is sent only after the batch is durable in"
        " the stream. Unknown fields are refused: in a dose (that item is rejected) and beside `doses` (400).",
        "doses", (SITE,),
        {202: Answer("accepted: the batch id (null when no item was valid) and every rejected item",
                     schemas.BatchAccepted,
                     example={"batch_id": "1-1795329669214-0", "accepted": 1, "rejected": [
                         {"index": 1, "record_id": "A-000124",
                          "errors": [{"field": "national_id", "reason": "must be a 12-digit CCCD, a 9-digit CMND or"
                                      " a passport number (a capital letter and 7-8 digits)"}]}]},
                     links=(("batch", "getBatch", {"batch_id": "$response.body#/batch_id"}),
                            ("person", "getPersonDoses", {"national_id": "$request.body#/doses/0/national_id"})))},
        {400: "malformed body (the decoder's message), or no `doses` list", 401: "missing or unknown bearer token",
         403: "a province or operator token: they are read-only",
         413: "more than 1,000 doses, or more than 1 MiB", 415: "neither JSON nor msgpack",
         503: "the stream's backlog or Redis's memory is past its bound, or a backing service failed"},
        body=_json_body(_ref("DoseBatch"), "at most 1,000 doses, at most 1 MiB", {"doses": [DOSE_EXAMPLE]},
                        media=("application/json", *MSGPACK)),
    ),
    Operation(
        "get", "/v1/batches/{batch_id}", "getBatch", "A batch's receipt",
        "`queued` while the batch is in the stream, `persisted` once in Postgres (`inserted + duplicates =="
        " accepted`; duplicates are records this site had sent already), `failed` when it was dead-lettered.",
        "doses", (SITE,),
        {200: Answer("the receipt", (schemas.BatchReceipt, schemas.BatchFailed),
                     example={"batch_id": "1-1795329669214-0", "status": "persisted", "accepted": 1, "inserted": 1,
                              "duplicates": 0})},
        {401: "missing or unknown bearer token", 403: "a province or operator token",
         404: "no such batch for this site (another site's batch too)", 503: "a backing service failed"},
        parameters=(_param("batch_id", "path", {"type": "string", "pattern": schemas.BATCH_ID_PATTERN},
                           "`<shard>-<stream entry id>`, from the 202", example="1-1795329669214-0"),),
    ),
    Operation(
        "get", "/v1/persons/{national_id}/doses", "getPersonDoses", "A person's persisted doses",
        "In administration order; `counted` is false for a probable duplicate.", "persons", (SITE, OPERATOR),
        {200: Answer("the doses", schemas.PersonDoses)},
        {400: "a malformed national ID", **_ANY_TOKEN_ERRORS,
         403: "a province token (it reads its province's statistics, review list and correction queue only)", 404: "no persisted dose for this person",
         503: "a backing service failed"},
        parameters=(_NATIONAL_ID,),
    ),
    Operation(
        "put", "/v1/doses/{record_id}", "putDose", "Replace one of the site's persisted records",
        "The body is one dose, validated as in POST /v1/doses; its `record_id` may be left out and, if present,"
        " must equal the path's. The correction goes through the stream and applies only over an older version.",
        "corrections", (SITE,),
        {202: Answer("the correction is in the stream", schemas.CorrectionAccepted,
                     example={"batch_id": "2-1795329669215-0", "record_id": "A-000123", "op": "replace"},
                     links=(("batch", "getBatch", {"batch_id": "$response.body#/batch_id"}),
                            ("record", "getDose", {"record_id": "$response.body#/record_id"})))},
        {400: "malformed body", 401: "missing or unknown bearer token",
         403: "another site's record, or a province or operator token",
         404: "this site has no persisted record with this id (a queued one can be corrected once persisted)",
         415: "neither JSON nor msgpack", 422: "each wrong field, named", 503: "backpressure, or a backing service"
         " failed"},
        parameters=(_RECORD_ID,),
        body=_json_body(_ref("DoseCorrection"), "the record's new fields",
                        {k: v for k, v in DOSE_EXAMPLE.items() if k != "record_id"} | {"lot": "ABV5301"},
                        media=("application/json", *MSGPACK)),
    ),
    Operation(
        "delete", "/v1/doses/{record_id}", "deleteDose", "Withdraw a record entered by mistake",
        "Through the stream, like a replacement; the record id stays spent.", "corrections", (SITE,),
        {202: Answer("the withdrawal is in the stream", schemas.CorrectionAccepted,
                     example={"batch_id": "2-1795329669216-0", "record_id": "A-000123", "op": "withdraw"},
                     links=(("record", "getDose", {"record_id": "$response.body#/record_id"}),))},
        {401: "missing or unknown bearer token", 403: "another site's record, or a province or operator token",
         404: "this site has no persisted record with this id", 409: "the record is withdrawn already",
         503: "backpressure, or a backing service failed"},
        parameters=(_RECORD_ID,),
    ),
    Operation(
        "get", "/v1/doses/{record_id}", "getDose", "A record of the site, with its versions",
        "Every earlier version with who changed it and when.", "corrections", (SITE,),
        {200: Answer("the record", schemas.DoseHistory)},
        {401: "missing or unknown bearer token", 403: "another site's record, or a province or operator token",
         404: "this site has no persisted record with this id", 503: "a backing service failed"},
        parameters=(_RECORD_ID,),
    ),
    Operation(
        "get", "/v1/persons/{national_id}", "getPerson", "A person: registry status, records, review flags",
        "`registry_status` is `unchecked` while no registry extract is loaded; `records` counts every persisted"
        " record, `counted_doses` the days counted.", "persons", (SITE, OPERATOR),
        {200: Answer("the person", schemas.Person)},
        {400: "a malformed national ID", **_ANY_TOKEN_ERRORS,
         403: "a province token (it reads its province's statistics, review list and correction queue only)",
         404: "no persisted record (or every one withdrawn or moved away)", 503: "a backing service failed"},
        parameters=(_NATIONAL_ID,),
    ),
    Operation(
        "get", "/v1/stats", "getStats", "Counted doses, grouped",
        "From `dose_stats`, written in the same transaction as the doses (probable duplicates and withdrawn"
        " records excluded). A site token sees its site, a province token its province, the operator everything;"
        " naming a site or province beyond the token's reach is a 403, never a narrowed answer.", "statistics",
        ANY_TOKEN,
        {200: Answer("one row per group; CSV with `Accept: text/csv` or `format=csv`", schemas.Stats, media=(_CSV,),
                     example={"rows": [{"day": "2021-08-14", "doses": 1204}], "total": 1204})},
        {400: "a bad parameter, named", **_ANY_TOKEN_ERRORS, 403: "a site or province beyond the token's reach",
         404: "an unknown site (operator)", 503: "a backing service failed"},
        parameters=(*_DAYS, *_SCOPE,
                    _param("group_by", "query", {"type": "string", "pattern": "^(day|province|site|product|dose)"
                                                 "(,(day|province|site|product|dose))*$"},
                           "one or more of day, province, site, product, dose, comma-separated, none twice;"
                           " default day", example="site,day"),
                    _FORMAT),
    ),
    Operation(
        "get", "/v1/review", "getReview", "The review list",
        "Flagged records, by site and administration time, scoped like statistics.", "statistics", ANY_TOKEN,
        {200: Answer("a page of the list; CSV as for statistics", schemas.ReviewList, media=(_CSV,))},
        {400: "a bad parameter, named", **_ANY_TOKEN_ERRORS, 403: "a site or province beyond the token's reach",
         404: "an unknown site (operator)", 503: "a backing service failed"},
        parameters=(*_SCOPE,
                    _param("flag", "query", {"enum": list(FLAGS)}, "only this flag"),
                    _param("limit", "query", {"type": "integer", "minimum": 0, "maximum": 10_000},
                           "page size, default 1000 (0: the default)"),
                    _param("offset", "query", {"type": "integer", "minimum": 0, "maximum": 2**31 - 1}, "default 0"),
                    _FORMAT),
    ),
    Operation(
        "get", "/v1/reconciliation", "getReconciliation", "Every acknowledged dose accounted for",
        "Per site and administration day (what `vaxline reconcile --json` prints).", "statistics", (OPERATOR,),
        {200: Answer("the report; CSV of its rows as for statistics", schemas.Reconciliation, media=(_CSV,))},
        {400: "a bad parameter, named", 401: "missing or unknown bearer token",
         403: "a site or province token: reconciliation is the operator's", 404: "an unknown site",
         503: "a backing service failed"},
        parameters=(*_DAYS, _SCOPE[0], _FORMAT),
    ),
    Operation(
        "post", "/v1/certificates/lookup", "lookupCertificate", "A person's current certificate",
        "An unknown national ID and a wrong birth date get the same answer, held to `VAXLINE_LOOKUP_FLOOR`. Limited"
        " per client address (an IPv6 /64), failing closed, and past 10 wrong birth dates per national ID a day to"
        " lookups with `code`, sent to the phone a site recorded (docs/api.md). `link`: the certificate and its QR"
        " image (`&format=png`) for a few minutes.", "certificates", (),
        {200: Answer("the current certificate, and a signed link to it", schemas.LookupAnswer)},
        {400: "not a JSON object", 403: "`code:` the code sent to the phone on record is needed (or was wrong)",
         404: "no current certificate for this national ID and birth date", 415: "not JSON",
         422: "each wrong field, named", 429: "past the rate limit", 503: "Redis or Postgres is unavailable"},
        body=_json_body(_ref("LookupRequest"), "who", {"national_id": "001099012345", "birth_date": "1990-04-02"}),
    ),
    Operation(
        "post", "/v1/certificates/verify", "verifyCertificate", "Verify an HC1 string",
        "The verdict against this deployment's trust list and revocations, as `vaxline verify --json`; 200 whether"
        " valid or not (`stage` is the first check that failed).", "certificates", (),
        {200: Answer("the verdict", schemas.Verdict)},
        {400: "not a JSON object", 415: "not JSON", 422: f"`hc1` missing, or not a string of 1-{MAX_HC1} characters",
         503: "a backing service failed"},
        body=_json_body(_ref("VerifyRequest"), "the HC1 text", {"hc1": "HC1:NCFOXN%TS3DH3ZSUZK+.V0ETD%65NL-AH-R6IO"}),
    ),
    Operation(
        "get", "/v1/certificates/{uvci}", "getCertificate", "A certificate, or its QR code",
        "No token: what the QR states (CertificateSummary). With a lookup's `link` (`expires`, `token`): the whole"
        " certificate, or its QR code as SVG or PNG (`Accept`, or `format`, which wins).", "certificates", (),
        {200: Answer("what the QR states, or with the link it all (`Cache-Control: no-store`)",
                     (schemas.CertificateSummary, schemas.Certificate),
                     media=(("image/svg+xml", {"type": "string"}),
                            ("image/png", {"type": "string", "contentMediaType": "image/png"})))},
        {400: "an unknown format", 403: "a QR image without the link, or an expired or false link",
         404: "no certificate with this UVCI", 503: "a backing service failed"},
        parameters=(_param("uvci", "path", {"type": "string", "pattern": schemas.UVCI_PATTERN},
                           "`URN:UVCI:01:VN:` and 32 base32 characters", example="URN:UVCI:01:VN:" + "A" * 32),
                    _param("format", "query", {"enum": ["json", "svg", "png"]}, "wins over `Accept`"),
                    _param("expires", "query", {"type": "string"}, "from the lookup's `link`"),
                    _param("token", "query", {"type": "string"}, "from the lookup's `link`")),
    ),
    Operation(
        "get", "/v1/trust-list", "getTrustList", "The signer certificates (DSCs) this deployment trusts",
        "Every unexpired DSC, as the EU gateway distributes them.", "certificates", (),
        {200: Answer("the trust list", schemas.TrustListBody)}, {},
    ),
    Operation(
        "get", "/v1/revocations", "getRevocations", "Hashes of revoked UVCIs",
        "As the EU gateway distributes them (hash type UCI), by number (`seq`, drawn at the revoking commit, in"
        " commit order), at most 10,000 an answer. Follow `next` (at once while `complete` is false): it never"
        " misses one."
        " A full page never changes (cacheable a day), the last one 60 s; `If-None-Match` answers 304.",
        "certificates", (),
        {200: Answer("the revocations", schemas.Revocations, headers=("ETag", "Cache-Control")),
         304: Answer("not modified", headers=("ETag", "Cache-Control"))},
        {400: "a malformed `after` or `since`, or both", 503: "a backing service failed"},
        parameters=(_param("after", "query", {"type": "integer", "minimum": 0, "maximum": 2**63 - 1},
                           "revocations numbered after this (as `next` gives it)", example=0),
                    _param("since", "query", {"type": "string", "format": "date-time"},
                           "older clients: from a second before this time", example="2021-10-01T00:00:00Z")),
    ),
    Operation(
        "post", "/v1/corrections", "fileCorrection", "File a citizen's correction request",
        "No token. JSON, or multipart with a `request` part (the same JSON) first, then up to 3 `evidence` images "
        "(JPEG or PNG, 5 MiB each, judged by their bytes). A 6-digit code goes to a phone on record for the person (a"
        " site recorded it), never to `phone` (a contact number); with none on record, no code: the province's "
        "queue, for an identity check in person. The answer is the same in both cases (`status: received`, `next`"
        " says both), so it never tells whether a phone is on record. `dose` is required for the two "
        "dose kinds (with `site` or `place`; `vaccine` for a missing dose). Routed to the named site for a missing "
        "dose; for wrong dose details only if it holds a record of the person; for personal details the site holding "
        "all their records; else the province's queue (the named site's, `dose.province`, the latest record's, the "
        "CCCD's; 422 when none is known). Before the body is read: `VAXLINE_CORRECTION_RATE_LIMIT` per address an "
        "hour; before any image: `VAXLINE_CORRECTION_PERSON_LIMIT` per national ID and "
        "`VAXLINE_CORRECTION_PHONE_LIMIT` per phone on record a day, and 503 while the request's room (codes; "
        "checks in person, per province) is full. "
        "Unconfirmed requests are deleted with their evidence after `VAXLINE_CORRECTION_UNCONFIRMED_TTL` "
        "(`VAXLINE_CORRECTION_IN_PERSON_TTL` for a check in person).", "citizens", (),
        {202: Answer("received: awaiting its code, or an identity check in person (one answer for both)",
                     schemas.CorrectionFiled,
                     links=(("confirm", "confirmCorrection", {"request_id": "$response.body#/request_id"}),
                            ("code", "resendCode", {"request_id": "$response.body#/request_id"}),
                            ("view", "getCorrection", {"request_id": "$response.body#/request_id",
                                                       "query.birth_date": "$request.body#/birth_date"})))},
        {400: "not a JSON object, or a malformed multipart body", 413: "the JSON over 64 KiB, or an image over 5 MiB",
         415: "neither JSON nor multipart",
         422: "each wrong field, named; an image not a JPEG or PNG, or before `request`; more than 3 images",
         429: "past a rate limit (address, national ID or phone)",
         503: "no room for unconfirmed requests now, or the rate limiter or a backing service is unavailable"},
        body=_json_body(_ref("RequestBody"), "the request", CORRECTION_EXAMPLE, extra={"multipart/form-data": {
            "schema": {"type": "object", "required": ["request"], "additionalProperties": False, "properties": {
                "request": _ref("RequestBody"),
                "evidence": {"type": "array", "maxItems": MAX_EVIDENCE, "items": {
                    "type": "string", "contentMediaType": "application/octet-stream",
                    "description": f"a JPEG or PNG, at most {MAX_EVIDENCE_BYTES // 1024 // 1024} MiB"}}}},
            "encoding": {"request": {"contentType": "application/json"},
                         "evidence": {"contentType": "image/jpeg, image/png"}}}}),
    ),
    Operation(
        "get", "/v1/corrections", "getCorrectionQueue", "A queue of correction requests",
        "Oldest first; every confirmed request unless `status` says otherwise. A site token sees the requests"
        " routed to it, a province token its province's, the operator all.", "citizens", ANY_TOKEN,
        {200: Answer("a page of the queue", schemas.CorrectionQueue)},
        {400: "a bad parameter, named", **_ANY_TOKEN_ERRORS, 403: "a site or province beyond the token's reach",
         404: "an unknown site (operator)", 503: "a backing service failed"},
        parameters=(_param("status", "query", {"enum": ["pending_otp", "submitted", "approved", "deferred",
                                                        "rejected"]}, "only this status"),
                    *_SCOPE,
                    _param("limit", "query", {"type": "integer", "minimum": 0, "maximum": 10_000}, "default 1000"),
                    _param("offset", "query", {"type": "integer", "minimum": 0, "maximum": 2**31 - 1},
                           "default 0")),
    ),
    Operation(
        "post", "/v1/corrections/{request_id}/confirm", "confirmCorrection", "Confirm a request with its code",
        "The request enters its queue. A code expires after `VAXLINE_OTP_TTL`, works once, and allows"
        " `VAXLINE_OTP_MAX_ATTEMPTS` wrong guesses.", "citizens", (),
        {200: Answer("submitted", schemas.CorrectionConfirmed)},
        {400: "not a JSON object", 404: "no such request", 409: "confirmed already: a code works once",
         410: "the code expired: ask for a new one", 422: "a wrong code, or not 6 digits",
         429: "too many wrong codes: ask for a new one", 503: "a backing service failed"},
        parameters=(_REQUEST_ID,),
        body=_json_body(_ref("Confirmation"), "the code sent to the phone", {"code": "123456"}),
    ),
    Operation(
        "post", "/v1/corrections/{request_id}/code", "resendCode", "Send a new code",
        "The old code stops working and guesses start again; at most `VAXLINE_OTP_MAX_SENDS` codes a request.",
        "citizens", (),
        {202: Answer("sent", schemas.CodeSent)},
        {404: "no such request", 409: "confirmed already", 429: "no more codes for this request: file it again",
         503: "a backing service failed"},
        parameters=(_REQUEST_ID,),
    ),
    Operation(
        "post", "/v1/corrections/{request_id}/decision", "decideCorrection", "Approve, defer or reject a request",
        "The routed site's token, or the operator's (who names `site` to approve from a province's queue). A site's "
        "approval changes only its own records (personal details with records at other sites: the operator). "
        "`approve` is all or nothing: the changes are recorded with the decision, enter the stream after its commit, "
        "and one the stream cannot take yet (`batch_id` null in `applied`) is re-driven. `approve` and `reject` are "
        "final.",
        "citizens", (SITE, OPERATOR),
        {200: Answer("the decided request, with what an approval enqueued in `applied`", schemas.CorrectionRequest)},
        {400: "not a JSON object", 401: "missing or unknown bearer token",
         403: "another site's request, a province token, or personal details across sites", 404: "no such request",
         409: "not confirmed yet, or decided already", 422: "each wrong field, named; a dose the claim cannot make",
         503: "backpressure, or a backing service failed"},
        parameters=(_REQUEST_ID,),
        body=_json_body(_ref("Decision"), "the decision", {"decision": "approve", "message": "Đã bổ sung mũi 2."}),
    ),
    Operation(
        "get", "/v1/corrections/{request_id}", "getCorrection", "A correction request",
        "Without a token, the citizen's view, given the birth date (an unknown id and a wrong birth date answer the"
        " same 404). With a token in scope, the whole request with its evidence list.", "citizens",
        ("", *ANY_TOKEN),
        {200: Answer("the citizen's view (no token) or the whole request (a token)",
                     (schemas.CitizenView, schemas.CorrectionRequest))},
        {400: "no token and no `birth_date`", 401: "an unknown bearer token",
         403: "a token beyond the request's site or province", 404: "no such request (for this birth date)",
         503: "a backing service failed"},
        parameters=(_REQUEST_ID, _param("birth_date", "query", _DATE, "the citizen's view: required without a token",
                                        required=False)),
    ),
    Operation(
        "get", "/v1/corrections/{request_id}/evidence/{n}", "getEvidence", "An evidence image",
        "", "citizens", ANY_TOKEN,
        {200: Answer("the image", media=(("image/jpeg", {"type": "string", "contentMediaType": "image/jpeg"}),
                                         ("image/png", {"type": "string", "contentMediaType": "image/png"})))},
        {400: "`n` is not 1, 2 or 3", **_ANY_TOKEN_ERRORS, 403: "a token beyond the request's site or province",
         404: "no such request, or no such image", 503: "a backing service failed"},
        parameters=(_REQUEST_ID, _param("n", "path", {"type": "integer", "minimum": 1, "maximum": MAX_EVIDENCE},
                                        "the image's number", example=1)),
    ),
    Operation(
        "get", "/v1/corrections/{request_id}/audit", "getAudit", "A request's audit log",
        "Append-only: created, wrong codes, resends, confirmed, the decision (`decision_failed`: nothing applied), each"
        " change entering the stream (`applied:<op>`; `enqueue_failed`: re-driven), `expired`.", "citizens",
        ANY_TOKEN,
        {200: Answer("the entries, oldest first", schemas.AuditLog)},
        {**_ANY_TOKEN_ERRORS, 403: "a token beyond the request's site or province", 404: "no such request",
         503: "a backing service failed"},
        parameters=(_REQUEST_ID,),
    ),
    Operation(
        "get", "/healthz", "healthz", "The process answers", "", "operations", (),
        {200: Answer("alive", schemas.Health, example={"status": "ok"})}, {},
    ),
    Operation(
        "get", "/readyz", "readyz", "Postgres and Redis are reachable, and Redis will not evict",
        "503 also while Redis's `maxmemory-policy` is not `noeviction` (`checks.redis_eviction`).", "operations", (),
        {200: Answer("ready", schemas.Readiness),
         503: Answer("not ready: the failing check, and the `error`", schemas.Readiness)}, {},
    ),
    Operation(
        "get", "/metrics", "metrics", "Prometheus metrics",
        "Aggregated over all processes of the deployment (multiprocess mode).", "operations", (),
        {200: Answer("the Prometheus text format", media=(("text/plain", {"type": "string"}),))}, {},
    ),
    Operation(
        "get", "/openapi.json", "openapi", "This document", "", "operations", (),
        {200: Answer("the OpenAPI document", media=(("application/json", {"type": "object"}),))}, {},
    ),
    Operation(
        "get", "/docs", "docs", "This document, to read in a browser",
        "Redoc renders `/openapi.json`; the page and its script come from this server only (a Content-Security-Policy"
        " allows no other origin).", "operations", (),
        {200: Answer("the page", media=(("text/html", {"type": "string"}),))}, {},
    ),
    Operation(
        "get", "/docs/assets/{asset}", "docsAsset", "A file of the `/docs` page",
        "Served from the installed `openapi-ui-bundles` package.", "operations", (),
        {200: Answer("the file", media=(("text/javascript", {"type": "string"}),
                                        ("image/svg+xml", {"type": "string"})), headers=("ETag", "Cache-Control")),
         304: Answer("not modified (`If-None-Match`)", headers=("ETag", "Cache-Control"))},
        {404: "no such file"},
        parameters=(_param("asset", "path", {"type": "string", "minLength": 1, "maxLength": 64},
                           "the file's name: `redoc.standalone.js` or `logo-mini.svg`",
                           example="redoc.standalone.js"),),
    ),
)


