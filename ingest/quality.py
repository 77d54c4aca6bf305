"""Data-quality routes: corrections of a site's records, a person's registry status, statistics, the
review list and reconciliation.

Who sees what: a site token its own site, a province token its province (read-only), the operator
token everything. A query naming a site or province outside the token's reach is a 403, never a
silently narrowed answer.

    PUT    /v1/doses/{record_id}   replace a persisted record of the token's site  -> 202, via the stream
    DELETE /v1/doses/{record_id}   withdraw it                                      -> 202, via the stream
    GET    /v1/doses/{record_id}   the record and its versions
    GET    /v1/persons/{national_id}[/doses]   a person (registry status, flags) and their doses
    GET    /v1/stats?from=&to=&province=&site=&group_by=
    GET    /v1/review?site=|province=&flag=&limit=&offset=
    GET    /v1/reconciliation?from=&to=&site=        (operator)
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import io
import re
from typing import Any

import msgspec
from aiohttp import web

from storage import corrections, reconcile, review, stats
from storage import doses as dose_store
from storage.sites import Site, site_by_code
from vaxline import csvsafe
from vaxline.doses import NATIONAL_ID_PATTERN, Dose, dose_from_fields
from vaxline.entries import REPLACE, WITHDRAW
from vaxline.review import FLAGS
from vaxline.streams import read_ingest_counts

from .auth import Principal
from .http import BODY_FORMATS, INGEST, ApiError, json_response

_national_id = re.compile(NATIONAL_ID_PATTERN)
_mappings = {"json": msgspec.json.Decoder(dict[str, Any]), "msgpack": msgspec.msgpack.Decoder(dict[str, Any])}
FIRST_DAY = dt.date(2021, 1, 1)


async def authenticated(request: web.Request) -> Principal:
    principal = await request.app[INGEST].auth.principal(request.headers.get("Authorization"))
    if principal is None:
        raise ApiError(401, "missing or unknown bearer token", headers={"WWW-Authenticate": "Bearer"})
    return principal


async def site_principal(request: web.Request) -> Site:
    principal = await authenticated(request)
    if principal.site is None:
        raise ApiError(403, "this needs a site's token: province and operator tokens are read-only")
    return principal.site


# -- corrections -------------------------------------------------------------

async def put_dose(request: web.Request) -> web.Response:
    site = await site_principal(request)
    record_id = request.match_info["record_id"]
    dose = _corrected_dose(await _body_fields(request), record_id, dt.datetime.now(dt.timezone.utc))
    return await _correct(request, site, REPLACE, record_id, dose)


async def delete_dose(request: web.Request) -> web.Response:
    site = await site_principal(request)
    return await _correct(request, site, WITHDRAW, _record_id(request), None)


def _record_id(request: web.Request) -> str:
    """The path's record id; one no dose can have (1-64 printable characters) is not found without asking
    Postgres, which would refuse a NUL character."""
    record_id = request.match_info["record_id"]
    if not (0 < len(record_id) <= 64 and record_id.isprintable()):
        raise ApiError(404, f"no persisted record {record_id!r} for this site")
    return record_id


async def _correct(request: web.Request, site: Site, op: str, record_id: str, dose: Dose | None) -> web.Response:
    ingest = request.app[INGEST]
    async with ingest.pool.acquire() as conn:
        owner = await corrections.record_owner(conn, site.site_id, record_id)
    if owner is None:
        raise ApiError(404, f"no persisted record {record_id!r} for this site (a record still queued can be"
                            " corrected once its batch is persisted)")
    if owner == "other":
        raise ApiError(403, f"record {record_id!r} belongs to another site: only the site that entered a record"
                            " may correct it")
    if owner == "withdrawn" and op == WITHDRAW:
        raise ApiError(409, f"record {record_id!r} is withdrawn already")
    ingest.enqueuer.check_capacity()  # Overloaded: 503 with Retry-After, as for POST /v1/doses (app.error_bodies)
    batch_id = await ingest.enqueuer.enqueue_correction(
        site_id=site.site_id, op=op, record_id=record_id, dose=dose, changed_by=f"site:{site.code}")
    return json_response({"batch_id": batch_id, "record_id": record_id, "op": op}, status=202)


async def _body_fields(request: web.Request) -> dict[str, Any]:
    fmt = BODY_FORMATS.get(request.content_type)
    if fmt is None:
        raise ApiError(415, f"unsupported content type {request.content_type!r}; send application/json or"
                            " application/msgpack")
    try:
        return _mappings[fmt].decode(await request.read())
    except msgspec.DecodeError as e:
        raise ApiError(400, f"malformed body: {e}; expected one dose as an object")


def _corrected_dose(fields: dict[str, Any], record_id: str, now: dt.datetime) -> Dose:
    """The body's dose, validated as POST /v1/doses validates one; its record_id is the path's."""
    fields.setdefault("record_id", record_id)
    if fields["record_id"] != record_id:
        raise ApiError(422, "record_id: must equal the record id in the path")
    dose, errors = dose_from_fields(fields, now)
    if dose is None or errors:
        raise ApiError(422, "; ".join(f"{e.field}: {e.reason}" for e in errors) or "invalid dose")
    return dose


async def get_dose(request: web.Request) -> web.Response:
    ingest = request.app[INGEST]
    site = await site_principal(request)
    record_id = _record_id(request)
    async with ingest.pool.acquire() as conn:
        owner = await corrections.record_owner(conn, site.site_id, record_id)
        if owner == "other":
            raise ApiError(403, f"record {record_id!r} belongs to another site")
        current, versions = await corrections.history(conn, site.site_id, record_id)
    if owner is None:
        raise ApiError(404, f"no persisted record {record_id!r} for this site")
    return json_response({
        "record_id": record_id, "site": site.code, "status": "withdrawn" if owner == "withdrawn" else "current",
        "dose": _jsonable(current) if current else None,
        "versions": [_jsonable(v) for v in versions],
    })


def _jsonable(record) -> dict:
    return {k: v.isoformat() if isinstance(v, (dt.date, dt.datetime)) else v for k, v in dict(record).items()}


# -- persons ------------------------------------------------------------------

async def person_asked(request: web.Request) -> str:
    """The national ID a person route names, for a site (a desk needs a person's earlier doses, wherever they
    were given) or the operator; a province token reads statistics, review lists and correction queues,
    never a person's history across provinces."""
    principal = await authenticated(request)
    if principal.role == "province":
        raise ApiError(403, "a province token reads its province's statistics, review list and correction queue,"
                            " not a person's history")
    national_id = request.match_info["national_id"]
    if not _national_id.match(national_id):
        raise ApiError(400, "national_id must be a 12-digit CCCD, a 9-digit CMND or a passport number")
    return national_id


async def get_person_doses(request: web.Request) -> web.Response:
    ingest = request.app[INGEST]
    national_id = await person_asked(request)
    async with ingest.read_pool.acquire() as conn:
        rows = await dose_store.person_doses(conn, national_id)
    if not rows:
        raise ApiError(404, "no persisted doses for this person")
    return json_response({"national_id": national_id, "doses": [dict(r) for r in rows]})


async def get_person(request: web.Request) -> web.Response:
    ingest = request.app[INGEST]
    national_id = await person_asked(request)
    async with ingest.read_pool.acquire() as conn:
        person, flagged = await review.person(conn, national_id)
    if person is None or not person["records"]:  # a person whose every record was withdrawn or moved away
        raise ApiError(404, "no persisted doses for this person")
    body = _jsonable(person)
    body["registry_status"] = person["registry_status"] or "unchecked"
    body["flags"] = [_jsonable(f) for f in flagged]
    return json_response(body)


# -- scope, statistics, review ------------------------------------------------

@dataclasses.dataclass(frozen=True, slots=True)
class Scope:
    site_id: int | None
    province: int | None


async def scope_of(request: web.Request, principal: Principal) -> Scope:
    """The site and province a query may cover, from its `site` and `province` parameters and the token."""
    query = request.query
    province = _int_param(query, "province", 999)  # official codes have at most three digits
    code = query.get("site")
    site = None
    if code is not None:
        if code.isprintable():  # no site has another code (and Postgres refuses a NUL)
            async with request.app[INGEST].read_pool.acquire() as conn:
                site = await site_by_code(conn, code)
        if site is None and principal.is_operator:
            raise ApiError(404, f"no site {code!r}")
    if principal.site is not None:
        if (code is not None and code != principal.site.code) or (province not in (None, principal.site.province)):
            raise ApiError(403, "a site's token covers its own site only")
        return Scope(principal.site.site_id, None)
    if not principal.is_operator:  # a province token
        if province not in (None, principal.province) or (code is not None and (
                site is None or site["province"] != principal.province)):
            raise ApiError(403, f"a province token covers province {principal.province} only")
        return Scope(site["site_id"] if site else None, principal.province)
    return Scope(site["site_id"] if site else None, province)


def _int_param(query, name: str, maximum: int = 2**31 - 1) -> int | None:
    value = query.get(name)
    if value is None:
        return None
    # ASCII digits only (str.isdigit() also takes "²", which int() refuses), and within what Postgres takes.
    if not (value.isascii() and value.isdigit()):
        raise ApiError(400, f"{name}: must be a whole number")
    if len(value.lstrip("0")) > len(str(maximum)) or int(value) > maximum:
        raise ApiError(400, f"{name}: at most {maximum}")
    return int(value)


def _date_param(query, name: str, default: dt.date) -> dt.date:
    value = query.get(name)
    if value is None:
        return default
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise ApiError(400, f"{name}: must be a date, YYYY-MM-DD") from None


def _wants_csv(request: web.Request) -> bool:
    fmt = request.query.get("format")
    if fmt is not None:
        if fmt not in ("json", "csv"):
            raise ApiError(400, "format: must be json or csv")
        return fmt == "csv"
    return "text/csv" in request.headers.get("Accept", "")


def csv_response(columns: list[str], rows: list[dict], filename: str) -> web.Response:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(map(csvsafe.record, rows))  # record ids come from sites: text, never a formula
    return web.Response(text=out.getvalue(), content_type="text/csv",
                        headers={"Content-Disposition": f'attachment; filename="{filename}"'})


async def get_stats(request: web.Request) -> web.Response:
    principal = await authenticated(request)
    query = request.query
    group_by = tuple(g for g in query.get("group_by", "day").split(",") if g)
    if not group_by or any(g not in stats.GROUPS for g in group_by) or len(set(group_by)) != len(group_by):
        raise ApiError(400, f"group_by: must be one or more of {', '.join(stats.GROUPS)}, comma-separated")
    today = dt.date.today() + dt.timedelta(days=1)
    first, last = _date_param(query, "from", FIRST_DAY), _date_param(query, "to", today)
    if first > last:
        raise ApiError(400, "from: must not be after to")
    scope = await scope_of(request, principal)
    async with request.app[INGEST].read_pool.acquire() as conn:
        rows = await stats.counted_doses(conn, stats.StatsQuery(first, last, group_by, scope.province, scope.site_id))
    rows = [_jsonable(r) for r in rows]
    if _wants_csv(request):
        return csv_response([*group_by, "doses"], rows, "stats.csv")
    return json_response({"rows": rows, "total": sum(r["doses"] for r in rows)})


async def get_review(request: web.Request) -> web.Response:
    principal = await authenticated(request)
    query = request.query
    flag = query.get("flag")
    if flag is not None and flag not in FLAGS:
        raise ApiError(400, f"flag: must be one of {', '.join(FLAGS)}")
    limit = _int_param(query, "limit") or 1000
    if limit > 10_000:
        raise ApiError(400, "limit: at most 10000")
    offset = _int_param(query, "offset") or 0
    scope = await scope_of(request, principal)
    async with request.app[INGEST].read_pool.acquire() as conn:
        rows, total = await review.review_list(conn, review.ReviewQuery(scope.site_id, scope.province, flag, limit,
                                                                        offset))
    items = [_jsonable(r) for r in rows]
    if _wants_csv(request):
        return csv_response(list(review.REVIEW_COLUMNS), items, "review.csv")
    return json_response({"items": items, "total": total, "limit": limit, "offset": offset})


async def get_reconciliation(request: web.Request) -> web.Response:
    principal = await authenticated(request)
    if not principal.is_operator:
        raise ApiError(403, "reconciliation needs the operator token (`vaxline tokens operator`)")
    ingest = request.app[INGEST]
    query = request.query
    first = _date_param(query, "from", FIRST_DAY)
    last = _date_param(query, "to", dt.date.today() + dt.timedelta(days=1))
    scope = await scope_of(request, principal)
    counts = await read_ingest_counts(ingest.redis, ingest.settings)  # Redis first: see storage.reconcile
    async with ingest.pool.acquire() as conn:
        report = await reconcile.reconcile(conn, counts, first=first, last=last, site_id=scope.site_id)
    if _wants_csv(request):
        return csv_response(list(reconcile.COLUMNS), report["rows"], "reconciliation.csv")
    return json_response(report)


def register(app: web.Application) -> None:
    app.router.add_put("/v1/doses/{record_id}", put_dose)
    app.router.add_delete("/v1/doses/{record_id}", delete_dose)
    app.router.add_get("/v1/doses/{record_id}", get_dose)
    app.router.add_get("/v1/persons/{national_id}/doses", get_person_doses)
    app.router.add_get("/v1/persons/{national_id}", get_person)
    app.router.add_get("/v1/stats", get_stats)
    app.router.add_get("/v1/review", get_review)
    app.router.add_get("/v1/reconciliation", get_reconciliation)
