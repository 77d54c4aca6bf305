"""Citizen correction requests over HTTP: filed without a token, confirmed by a one-time code sent to a phone
on record for the person (or checked in person at the province when there is none), decided by the site
they are routed to (ingest.decisions), applied through the pipeline.

Filing is limited before its body is read (per client address), then, once the small JSON part is read
and before any image is, per national ID, per phone on record, and by the room left for unconfirmed
requests of its identity: a code's, each province's for checks in person, and one for requests about
records of a national ID that has none (answered alike and not stored once full). So hostile filing for
made-up people fills at most one province's in-person room, never the room of a person with a phone.

The filing answer is one text whatever the identity (FILED_NEXT: a code if a phone is on record, else a
check in person), and confirming, asking for a code and the citizen's view answer alike too until the
identity is established: nobody learns from them whether a national ID is on record, or with a phone.

    POST /v1/corrections                      JSON, or multipart (a `request` JSON part first, then up to 3
                                              `evidence` images)
    POST /v1/corrections/{id}/confirm         {"code"}: the request becomes `submitted`
    POST /v1/corrections/{id}/code            a new code (the old one stops working)
    GET  /v1/corrections/{id}?birth_date=     the citizen's view: status and message
    GET  /v1/corrections?status=&site=|province=          a queue (site, province or operator token)
    GET  /v1/corrections/{id}                 with a token: the whole request; /evidence/{n}, /audit
    POST /v1/corrections/{id}/decision        approve, defer or reject, with a message (the routed site's
                                              token, or the operator's)
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import re
import time
from typing import Any

import msgspec
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from redis.exceptions import RedisError

from monitoring import metrics
from storage import citizen as store
from vaxline import otp
from vaxline.citizen import (
    MAX_EVIDENCE,
    MAX_EVIDENCE_BYTES,
    RULES,
    Confirmation,
    RequestBody,
    claim_problems,
    code_hash,
    image_type,
    new_code,
    new_request_id,
)
from vaxline.doses import field_errors
from vaxline.links import keyed_digest, server_secret
from vaxline.provinces import PROVINCES

from .auth import Principal
from .certificates import LookupLimiter, RateLimited
from .clients import client_address
from .http import INGEST, ApiError, json_response
from .quality import authenticated, scope_of
from .schemas import REQUEST_ID_PATTERN

log = logging.getLogger(__name__)

CITIZEN = web.AppKey("citizen", dict)
CITIZEN_UNKNOWN = "no correction request with this id and birth date"
_REQUEST_ID = re.compile(REQUEST_ID_PATTERN)
_object = msgspec.json.Decoder(dict[str, Any])


def _jsonable(value):
    if isinstance(value, (dt.date, dt.datetime, dt.time)):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def _decoded(raw: bytes, struct: type[msgspec.Struct]):
    """`raw` JSON as `struct`; 400 if it is not a JSON object, 422 naming every wrong field."""
    try:
        body = msgspec.json.decode(raw, type=struct)
    except msgspec.ValidationError as e:
        try:
            fields = _object.decode(raw)
        except msgspec.DecodeError:
            raise ApiError(400, "malformed body: expected a JSON object") from None
        errors = field_errors(fields, struct, RULES)
        raise ApiError(422, "; ".join(f"{f.field}: {f.reason}" for f in errors) or _plain(e)) from None
    except msgspec.DecodeError as e:
        raise ApiError(400, f"malformed body: {e}") from None
    if fields := _with_nul(body):
        raise ApiError(422, "; ".join(f"{field}: must not contain NUL characters" for field in fields))
    return body


def _request_id(request: web.Request, not_found: str | None = None) -> str:
    """The path's request id; 404 at once for one that cannot be (new_request_id's shape), which also keeps
    what Postgres refuses (a NUL character) from reaching it."""
    request_id = request.match_info["request_id"]
    if not _REQUEST_ID.fullmatch(request_id):
        raise ApiError(404, not_found or "no such correction request")
    return request_id


def _with_nul(value, name: str = "") -> list[str]:
    """The fields of a decoded body whose text holds a NUL character, which Postgres cannot store."""
    if isinstance(value, str):
        return [name] if "\x00" in value else []
    if isinstance(value, msgspec.Struct):
        return [found for field in value.__struct_fields__
                for found in _with_nul(getattr(value, field), f"{name}.{field}" if name else field)]
    return []


def _plain(error: Exception) -> str:
    return str(error).replace("$.", "")


# -- filing and confirming -------------------------------------------------------

FILED_NEXT = ("If a phone is on record for this person, a one-time code was sent to it: confirm the request"
              " with it before code_expires_at (POST /v1/corrections/{request_id}/confirm). Otherwise, bring"
              " your national ID card to a vaccination site of your province for a check in person.")


@dataclasses.dataclass(frozen=True, slots=True)
class Filing:
    body: RequestBody
    route: store.Route
    kept: bool  # False: a no_record request past its room, answered alike and not stored


async def post_request(request: web.Request) -> web.Response:
    return json_response(await file_request(request, _request_parts), status=202)


async def file_request(request: web.Request, parts) -> dict:
    """File the correction request that `parts(request, checked)` reads (the API's JSON or multipart body, or
    the portal's form): the same limits, checks, routing and code; the 202's body."""
    ingest = request.app[INGEST]
    state = request.app[CITIZEN]
    await _admit(state["by_address"], client_address(request), "from this address")  # before the body
    _could_fit(ingest.settings, _declared_size(request))
    try:
        filing, images = await parts(request, lambda raw: _filed(request, raw))
    except (ValueError, HttpProcessingError) as e:  # aiohttp's multipart parser, on a body that is not multipart
        raise ApiError(400, f"malformed multipart body: {getattr(e, 'message', None) or e}") from None
    settings, route = ingest.settings, filing.route
    now = dt.datetime.fromtimestamp(state["clock"](), dt.UTC)
    request_id = new_request_id()
    code = new_code() if route.phone is not None else None
    confirm_by = now + dt.timedelta(seconds=settings.correction_unconfirmed_ttl)
    ttl = settings.correction_in_person_ttl if route.identity == "in_person" else settings.correction_unconfirmed_ttl
    code_expires_at = min(now + dt.timedelta(seconds=settings.otp_ttl), confirm_by)  # alike, sent or not
    if filing.kept:
        async with ingest.pool.acquire() as conn:
            await store.create(conn, request_id=request_id, body=filing.body, route=route,
                               code_hash=code and code_hash(request_id, code), code_expires_at=code_expires_at,
                               expires_at=now + dt.timedelta(seconds=ttl), confirm_by=confirm_by,
                               evidence=images if route.identity != "no_record" else [])
    if code is not None:
        await state["sender"].send(phone=route.phone, code=code, request_id=request_id)
    event = {"code": "created", "in_person": "created_in_person"}.get(route.identity, "created_no_record")
    metrics.correction_requests.labels(event=event if filing.kept else "dropped_no_record").inc()
    log.info("correction request created", extra={"request_id": request_id, "site_id": route.site_id,
                                                   "identity": route.identity})
    return {"request_id": request_id, "status": "received", "code_expires_at": code_expires_at.isoformat(),
            "evidence": len(images), "next": FILED_NEXT}


async def _admit(limiter: LookupLimiter, key: str, what: str) -> None:
    try:
        await limiter.admit(key)
    except RateLimited as e:
        raise ApiError(429, f"too many correction requests {what}; retry after {e.retry_after} s",
                       headers={"Retry-After": str(e.retry_after)}) from None
    except RedisError:
        raise ApiError(503, "the rate limiter is unavailable; retry later", headers={"Retry-After": "5"}) from None


def _declared_size(request: web.Request) -> int:
    """What the body may weigh: its declared length, else the most a body of its type may."""
    if request.content_length is not None:
        return request.content_length
    return _multipart_limit() if request.content_type == "multipart/form-data" else _JSON_LIMIT


def _could_fit(settings, size: int) -> None:
    """503 from the headers alone for a body no room for unconfirmed requests could ever take."""
    if size > max(settings.correction_unconfirmed_bytes, settings.correction_in_person_bytes):
        metrics.correction_requests.labels(event="refused_full").inc()
        raise ApiError(503, "too many unconfirmed correction requests are waiting; retry later",
                       headers={"Retry-After": "60"})


async def _room_left(conn, settings, route: store.Route, size: int) -> bool:
    """Whether `route`'s room takes one more request of `size` bytes: hostile filing from many addresses
    cannot grow the database past correction_unconfirmed_max requests and correction_unconfirmed_bytes for
    codes, correction_in_person_max and correction_in_person_bytes per province for checks in person, and
    correction_no_record_max evidence-less requests about records that do not exist (plus what is in
    flight); the retention job frees the rooms as requests expire."""
    count, stored = await store.room_load(conn, route)
    match route.identity:
        case "code":
            return count < settings.correction_unconfirmed_max and stored + size <= settings.correction_unconfirmed_bytes
        case "in_person":
            return count < settings.correction_in_person_max and stored + size <= settings.correction_in_person_bytes
    return count < settings.correction_no_record_max


def _keyed(secret: bytes, kind: str, value: str) -> str:
    """A limiter key for a national ID or a phone: HMAC under the server secret, so whoever reads Redis
    cannot recover a 12-digit ID or a phone number by hashing every candidate."""
    return kind + ":" + keyed_digest(secret, f"corrections-{kind}", value)[:32]


async def _filed(request: web.Request, raw: bytes) -> Filing:
    """The request's JSON, checked, counted per national ID and per phone on record, routed, and given room
    (before any image is read). The two limits answer in one wording: which one refused says nothing of
    whether the person has a phone on record."""
    ingest, state = request.app[INGEST], request.app[CITIZEN]
    body = _decoded(raw, RequestBody)
    if problems := claim_problems(body):
        raise ApiError(422, "; ".join(f"{field}: {reason}" for field, reason in problems))
    await _admit(state["by_person"], _keyed(state["secret"], "person", body.national_id), "for this person")
    async with ingest.pool.acquire() as conn:
        route = await store.route(conn, body, set(PROVINCES))
        if route is None:
            raise ApiError(422, "dose.province: the place is not a registered site; name its province")
        if route.phone is not None:  # counted where the code goes, not where the request says
            await _admit(state["by_phone"], _keyed(state["secret"], "phone", route.phone), "for this person")
        room = await _room_left(conn, ingest.settings, route, _declared_size(request))
    if not room and route.identity != "no_record":
        metrics.correction_requests.labels(event="refused_full").inc()
        raise ApiError(503, "too many unconfirmed correction requests are waiting; retry later",
                       headers={"Retry-After": "60"})
    return Filing(body, route, kept=room)


_JSON_LIMIT = 64 * 1024


def _multipart_limit() -> int:
    return MAX_EVIDENCE * MAX_EVIDENCE_BYTES + 128 * 1024


async def _request_parts(request: web.Request, checked) -> tuple[Filing, list[tuple[str, bytes, bytes]]]:
    """The request, checked by `checked(raw JSON)` before any image is read, and its evidence images (type,
    sha256, bytes), each checked by its content."""
    if request.content_type == "application/json":
        if request.content_length and request.content_length > _JSON_LIMIT:
            raise ApiError(413, "the request is over 64 KiB; evidence images go in a multipart body")
        return await checked(await request.read()), []
    if request.content_type != "multipart/form-data":
        raise ApiError(415, f"unsupported content type {request.content_type!r}; send application/json, or"
                            " multipart/form-data with a `request` part and up to 3 `evidence` images")
    limit = _multipart_limit()
    if request.content_length and request.content_length > limit:
        raise ApiError(413, f"body of {request.content_length} bytes; at most {MAX_EVIDENCE} images of"
                            f" {MAX_EVIDENCE_BYTES // 1024 // 1024} MiB each")
    reader = await request.multipart()
    raw, body, images = None, None, []
    while (part := await reader.next()) is not None:
        if raw is not None and body is None:  # checked once the next part's headers parse: before its bytes
            body = await checked(raw)
        if part.name == "request" and raw is None:
            raw = await read_part(part, _JSON_LIMIT, "request")
        elif part.name == "evidence":
            if raw is None:
                raise ApiError(422, "request: the JSON part comes first, before any `evidence` image")
            await evidence_image(part, images)
        else:
            raise ApiError(422, f"{part.name}: unknown part; send one `request`, then `evidence`")
    if raw is None:
        raise ApiError(422, "request: required (the JSON part)")
    return body or await checked(raw), images


async def evidence_image(part, images: list[tuple[str, bytes, bytes]]) -> None:
    """Read one `evidence` part into `images` (type, sha256, bytes), judged by its content; 422 past the
    count or for what is not a JPEG or PNG, 413 past the size."""
    if len(images) == MAX_EVIDENCE:
        raise ApiError(422, f"evidence: at most {MAX_EVIDENCE} images")
    content = await read_part(part, MAX_EVIDENCE_BYTES, f"evidence {len(images) + 1}")
    kind = image_type(content)
    if kind is None:
        raise ApiError(422, f"evidence {len(images) + 1}: must be a JPEG or PNG image (checked by its"
                            " content, whatever its name or declared type)")
    images.append((kind, hashlib.sha256(content).digest(), content))


async def read_part(part, limit: int, what: str) -> bytes:
    """A part's bytes, refused as soon as it passes `limit` (never read whole first)."""
    chunks, size = [], 0
    while chunk := await part.read_chunk(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"{what}: over {limit // 1024} KiB")
        chunks.append(chunk)
    return b"".join(chunks)


async def post_confirm(request: web.Request) -> web.Response:
    return json_response(await confirm_request(request, await request.read()))


async def confirm_request(request: web.Request, raw: bytes) -> dict:
    """Confirm the path's request with the code in `raw` JSON (`{"code"}`): the answer's body, or ApiError
    (404, 422 wrong code, 429 locked, 410 expired, 409 confirmed already)."""
    ingest = request.app[INGEST]
    request_id = _request_id(request)
    confirmation = _decoded(raw, Confirmation)
    now = dt.datetime.fromtimestamp(request.app[CITIZEN]["clock"](), dt.UTC)
    async with ingest.pool.acquire() as conn:
        outcome = await store.confirm(conn, request_id, confirmation.code,
                                      max_attempts=ingest.settings.otp_max_attempts, now=now)
    metrics.correction_requests.labels(event=f"confirm_{outcome or 'unknown'}").inc()
    match outcome:
        case None:
            raise ApiError(404, "no such correction request")
        case "submitted":
            log.info("correction request submitted", extra={"request_id": request_id})
            return {"request_id": request_id, "status": "submitted"}
        case "wrong":
            raise ApiError(422, "code: wrong code")
        case "locked":
            raise ApiError(429, "too many wrong codes: ask for a new code (POST .../code)")
        case "expired":
            raise ApiError(410, "the code expired: ask for a new one (POST .../code)")
        case _:
            raise ApiError(409, "this request is confirmed already; a code works once")


async def post_code(request: web.Request) -> web.Response:
    return json_response(await new_request_code(request), status=202)


async def new_request_code(request: web.Request) -> dict:
    """A new code for the path's request, sent to the phone on record (none: nothing is sent, the same
    answer); the 202's body, or ApiError 404, 409 or 429."""
    ingest = request.app[INGEST]
    request_id = _request_id(request)
    code = new_code()
    now = dt.datetime.fromtimestamp(request.app[CITIZEN]["clock"](), dt.UTC)
    expires_at = now + dt.timedelta(seconds=ingest.settings.otp_ttl)
    async with ingest.pool.acquire() as conn:
        outcome, phone, expires_at = await store.resend(conn, request_id, code_hash(request_id, code), expires_at,
                                                        max_sends=ingest.settings.otp_max_sends, now=now)
    match outcome:
        case None:
            raise ApiError(404, "no such correction request")
        case "used":
            raise ApiError(409, "this request is confirmed already")
        case "exhausted":
            raise ApiError(429, f"at most {ingest.settings.otp_max_sends} codes per request: file it again")
    if phone is not None:  # none on record: nothing is sent, and the answer is the same
        await request.app[CITIZEN]["sender"].send(phone=phone, code=code, request_id=request_id)
    return {"request_id": request_id, "status": "pending_otp", "code_expires_at": expires_at.isoformat()}


# -- reading -------------------------------------------------------------------

async def get_request(request: web.Request) -> web.Response:
    """With a token in scope: the whole request. Without one: the citizen's view, given the birth date
    (an unknown id, a wrong birth date and a request whose identity is not established yet, by its code or
    a decision after the check in person, answer alike: the filer typed that birth date)."""
    ingest = request.app[INGEST]
    request_id = _request_id(request, CITIZEN_UNKNOWN if "Authorization" not in request.headers else None)
    if "Authorization" not in request.headers:
        return json_response(await citizen_view(request, request_id, request.query.get("birth_date", "")))
    principal = await authenticated(request)
    async with ingest.pool.acquire() as conn:
        row = await _in_scope(conn, request_id, principal)
        images = await store.evidence(conn, request_id)
    body = _request_view(row)
    body["evidence"] = [{"n": e["n"], "content_type": e["content_type"], "sha256": e["sha256"].hex(),
                         "bytes": e["size"], "url": f"/v1/corrections/{request_id}/evidence/{e['n']}"} for e in images]
    return json_response(body)


async def citizen_view(request: web.Request, request_id: str, birth_date: str) -> dict:
    """The citizen's view of a request (status and the site's message), given its birth date (YYYY-MM-DD);
    ApiError 400 without one, and one 404 for an unknown id, a wrong birth date and an identity not yet
    established."""
    try:
        born = dt.date.fromisoformat(birth_date)
    except ValueError:
        raise ApiError(400, "birth_date: give the birth date, YYYY-MM-DD, to see a request") from None
    async with request.app[INGEST].pool.acquire() as conn:
        row = await store.get(conn, request_id)
    if row is None or row["birth_date"] != born or _awaiting_identity(row):
        raise ApiError(404, CITIZEN_UNKNOWN)
    return _jsonable({k: row[k] for k in ("request_id", "status", "kind", "message", "created_at", "submitted_at",
                                          "decided_at")})


def _awaiting_identity(row) -> bool:
    return row["status"] == "pending_otp" or (row["identity"] == "in_person" and row["decided_at"] is None)


def _request_view(row) -> dict:
    body = _jsonable(dict(row))
    body["claimed"] = json.loads(row["claimed"])
    body["applied"] = json.loads(row["applied"]) if row["applied"] else None
    return body


async def _in_scope(conn, request_id: str, principal: Principal):
    row = await store.get(conn, request_id)
    if row is None:
        raise ApiError(404, "no such correction request")
    if principal.site is not None and row["site_id"] != principal.site.site_id:
        raise ApiError(403, "this request is routed to another site")
    if principal.role == "province" and row["province"] != principal.province:
        raise ApiError(403, f"this request is outside province {principal.province}")
    return row


async def get_evidence(request: web.Request) -> web.Response:
    ingest = request.app[INGEST]
    principal = await authenticated(request)
    request_id = _request_id(request)
    try:
        n = int(request.match_info["n"])
    except ValueError:
        n = None
    if n not in range(1, MAX_EVIDENCE + 1):  # also what int4 could not take
        raise ApiError(400, "n: must be 1, 2 or 3")
    async with ingest.pool.acquire() as conn:
        await _in_scope(conn, request_id, principal)
        images = await store.evidence(conn, request_id, n)
    if not images:
        raise ApiError(404, f"no evidence image {n} on this request")
    return web.Response(body=images[0]["content"], content_type=images[0]["content_type"],
                        headers={"Cache-Control": "no-store", "Content-Disposition": "inline"})


async def get_audit(request: web.Request) -> web.Response:
    ingest = request.app[INGEST]
    principal = await authenticated(request)
    request_id = _request_id(request)
    async with ingest.pool.acquire() as conn:
        await _in_scope(conn, request_id, principal)
        entries = await store.audit_of(conn, request_id)
    return json_response({"request_id": request_id, "entries": _jsonable(entries)})


async def get_queue(request: web.Request) -> web.Response:
    ingest = request.app[INGEST]
    principal = await authenticated(request)
    status = request.query.get("status")
    if status is not None and status not in ("pending_otp", "submitted", "approved", "deferred", "rejected"):
        raise ApiError(400, "status: must be pending_otp, submitted, approved, deferred or rejected")
    scope = await scope_of(request, principal)
    limit = min(_page_param(request.query, "limit", 1000), 10_000)
    offset = _page_param(request.query, "offset", 0)
    async with ingest.pool.acquire() as conn:
        rows, total = await store.listing(conn, site_id=scope.site_id, province=scope.province, status=status,
                                          limit=limit, offset=offset)
    return json_response({"requests": [{**_jsonable(dict(r)), "claimed": json.loads(r["claimed"])} for r in rows],
                          "total": total, "limit": limit, "offset": offset})


def _page_param(query, name: str, default: int) -> int:
    """limit or offset: the default when absent or not a whole number (ASCII digits: int() refuses "²"); 400
    past what Postgres takes."""
    value = query.get(name, "")
    if not (value.isascii() and value.isdigit()):
        return default
    if len(value.lstrip("0")) > 10 or int(value) > 2**31 - 1:
        raise ApiError(400, f"{name}: at most {2**31 - 1}")
    return int(value)


def register(app: web.Application) -> None:
    ingest = app[INGEST]
    settings = ingest.settings
    state = {"clock": time.time, "sender": otp.sender(settings), "secret": server_secret(settings)}

    def clock() -> float:  # the state's clock when asked: a test may turn it
        return state["clock"]()

    state.update({
        "by_address": LookupLimiter(ingest.redis, settings, name="corrections", clock=clock,
                                    limit=settings.correction_rate_limit, window=3600.0),
        "by_person": LookupLimiter(ingest.redis, settings, name="corrections-person", clock=clock,
                                   limit=settings.correction_person_limit, window=86400.0),
        "by_phone": LookupLimiter(ingest.redis, settings, name="corrections-phone", clock=clock,
                                  limit=settings.correction_phone_limit, window=86400.0),
    })
    app[CITIZEN] = state
    app.router.add_post("/v1/corrections", post_request)
    app.router.add_get("/v1/corrections", get_queue)
    app.router.add_post("/v1/corrections/{request_id}/confirm", post_confirm)
    app.router.add_post("/v1/corrections/{request_id}/code", post_code)
    app.router.add_get("/v1/corrections/{request_id}", get_request)
    app.router.add_get("/v1/corrections/{request_id}/evidence/{n}", get_evidence)
    app.router.add_get("/v1/corrections/{request_id}/audit", get_audit)
