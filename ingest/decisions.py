"""Deciding citizen correction requests: approve, defer or reject, all of an approval or none of it.

    POST /v1/corrections/{id}/decision        the routed site's token, or the operator's

A site decides only the requests routed to it, and its approval changes only its own records: a change
of personal details that touches another site's records needs the operator. An approval writes its
changes to the outbox (storage.approvals) in the transaction that records the decision and its audit
entry, and puts them into the stream only after that commit: a commit that fails leaves nothing applied
(and is audited as `decision_failed`), and a change the stream refuses stays in the outbox, audited, until
the re-drive (ingest.housekeeping) puts it in.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging

import msgspec
from aiohttp import web

from monitoring import metrics
from storage import approvals
from storage import citizen as store
from storage.sites import site_by_code
from vaxline.citizen import FINAL, Decision, administered_at
from vaxline.doses import Dose, dose_from_fields
from vaxline.enqueue import Overloaded
from vaxline.entries import REPLACE
from vaxline.sequence import VIETNAM

from .auth import Principal
from .citizen import _decoded, _jsonable, _request_id, _request_view
from .http import INGEST, UNAVAILABLE, ApiError, Ingest, json_response
from .quality import authenticated

log = logging.getLogger(__name__)


async def post_decision(request: web.Request) -> web.Response:
    ingest = request.app[INGEST]
    principal = await authenticated(request)
    if principal.site is None and not principal.is_operator:
        raise ApiError(403, "a province token is read-only: the site the request is routed to decides it")
    request_id = _request_id(request)
    decision = _decoded(await request.read(), Decision)
    actor = f"site:{principal.site.code}" if principal.site else "operator"
    status = {"approve": "approved", "defer": "deferred", "reject": "rejected"}[decision.decision]
    if status == "approved":
        ingest.enqueuer.check_capacity()  # Overloaded: 503 before anything is decided
    try:
        applied = await _decide(ingest, request_id, principal, decision, actor, status)
    except UNAVAILABLE as e:  # the decision did not commit: nothing entered the stream
        await _audit_failure(ingest, request_id, actor, status, e)
        raise ApiError(503, "the decision could not be recorded, and nothing was applied; retry",
                       headers={"Retry-After": "5"}) from e
    metrics.correction_requests.labels(event=status).inc()
    log.info("correction request decided", extra={"request_id": request_id, "decision": status})
    if applied:
        await deliver(ingest, request_id=request_id)
    async with ingest.pool.acquire() as conn:
        row = await store.get(conn, request_id)
    return json_response(_request_view(row))


async def _decide(ingest: Ingest, request_id: str, principal: Principal, decision: Decision, actor: str,
                  status: str) -> list[dict] | None:
    """Record the decision, and an approval's changes in the outbox, in one transaction; the changes."""
    async with ingest.pool.acquire() as conn, conn.transaction():
        row = await store.get(conn, request_id, lock=True)
        if row is None:
            raise ApiError(404, "no such correction request")
        if principal.site is not None and row["site_id"] != principal.site.site_id:
            raise ApiError(403, "this request is routed to another site: only that site decides it")
        if row["status"] == "pending_otp":
            raise ApiError(409, "this request is not confirmed yet")
        if row["status"] in FINAL:
            raise ApiError(409, f"this request is {row['status']} already")
        applied = None
        if status == "approved":
            changes = await _changes(conn, row, decision, principal)
            applied = [change for change, _ in changes]
            await approvals.plan(conn, [
                approvals.Change(request_id=request_id, n=n, site_id=change["site_id"], op=change["op"],
                                 record_id=change["record_id"], dose=msgspec.to_builtins(dose), actor=actor)
                for n, (change, dose) in enumerate(changes, start=1)])
        await store.decide(conn, request_id, status=status, message=decision.message, actor=actor,
                           applied=applied, before_status=row["status"])
    return applied


async def _audit_failure(ingest: Ingest, request_id: str, actor: str, status: str, error: Exception) -> None:
    """Audit a decision that did not commit, if Postgres takes it now (it may be what failed)."""
    with contextlib.suppress(*UNAVAILABLE):
        async with ingest.pool.acquire() as conn:
            await store.audit(conn, actor, "decision_failed", request_id=request_id,
                              after={"decision": status, "error": type(error).__name__, "applied": False})


async def deliver(ingest: Ingest, *, request_id: str | None = None) -> tuple[int, int]:
    """Put approved changes from the outbox into the stream: (delivered, failed)."""
    async def put(change: approvals.Change) -> str:
        dose = msgspec.convert(change.dose, Dose)
        if change.op == "insert":
            return await ingest.enqueuer.enqueue(site_id=change.site_id, doses=[dose])
        return await ingest.enqueuer.enqueue_correction(
            site_id=change.site_id, op=REPLACE, record_id=change.record_id, dose=dose,
            changed_by=f"{change.actor} (correction request {change.request_id})")

    async with ingest.pool.acquire() as conn:
        delivered, failed = await approvals.deliver(conn, put, failures=(Overloaded,), request_id=request_id)
    if failed:
        log.warning("an approved change could not enter the stream; it will be re-driven",
                    extra={"request_id": request_id})
    return delivered, failed


async def _changes(conn, row, decision: Decision, principal: Principal) -> list[tuple[dict, Dose]]:
    """What the approval changes: (the change as `applied` lists it, with each record before and after;
    the dose that goes into the stream)."""
    claimed = json.loads(row["claimed"])
    override = decision.dose
    if row["kind"] == "wrong_personal_details":
        return await _personal_details(conn, row, principal)
    site_id, site_code = await _deciding_site(conn, row, decision)
    date = (override and override.date) or dt.date.fromisoformat(claimed["date"])
    if row["kind"] == "missing_dose":
        phone = await store.phone_on_record(conn, row["national_id"]) or row["phone"]
        fields = {"record_id": row["request_id"], "national_id": row["national_id"], "full_name": row["full_name"],
                  "birth_date": row["birth_date"], "phone": phone,
                  "vaccine": (override and override.vaccine) or claimed.get("vaccine"),
                  "lot": (override and override.lot) or claimed.get("lot"),
                  "dose_number": (override and override.dose_number) or claimed.get("dose_number"),
                  "administered_at": administered_at(date, override and override.time)}
        dose = _valid_dose(fields)
        return [({"op": "insert", "site_id": site_id, "site": site_code, "record_id": dose.record_id,
                  "batch_id": None, "before": None, "after": _jsonable(fields)}, dose)]
    record_id = decision.record_id or claimed.get("record_id")
    if record_id is None:
        raise ApiError(422, "record_id: name the site's record to fix")
    record = await store.record(conn, site_id, record_id)
    if record is None or record["national_id"] != row["national_id"]:
        raise ApiError(422, f"record_id: {record_id!r} is not a current record of this person at site {site_code}")
    fields = _dose_fields(record)
    when = record["administered_at"].astimezone(VIETNAM)
    fields.update({key: value for key, value in (
        ("vaccine", (override and override.vaccine) or claimed.get("vaccine")),
        ("lot", (override and override.lot) or claimed.get("lot")),
        ("dose_number", (override and override.dose_number) or claimed.get("dose_number")),
        ("administered_at", administered_at(date, (override and override.time) or when.time())),
    ) if value is not None})
    return [_replacement(record, fields)]


async def _personal_details(conn, row, principal: Principal) -> list[tuple[dict, Dose]]:
    """Every record of the person renamed: a site approves only when all of them are its own."""
    records = await store.person_records(conn, row["national_id"])
    if principal.site is not None and any(r["site_id"] != principal.site.site_id for r in records):
        raise ApiError(403, "other sites hold records of this person: a change of personal details across"
                            " sites needs the operator")
    changes = []
    for record in records:
        fields = _dose_fields(record) | {"full_name": row["full_name"], "birth_date": row["birth_date"]}
        if fields != _dose_fields(record):
            changes.append(_replacement(record, fields))
    if not changes:
        raise ApiError(422, "the person has no persisted record that differs from the requested details")
    return changes


async def _deciding_site(conn, row, decision: Decision) -> tuple[int, str]:
    """The routed site; for a request in a province's queue, the site the operator names (in that province)."""
    if row["site_id"] is not None:
        return row["site_id"], await conn.fetchval("SELECT code FROM sites WHERE site_id = $1", row["site_id"])
    if decision.site is None:
        raise ApiError(422, "site: this request is in its province's queue; name the site the dose belongs to")
    site = await site_by_code(conn, decision.site)
    if site is None or site["province"] != row["province"]:
        raise ApiError(422, f"site: {decision.site!r} is not a registered site of province {row['province']}")
    return site["site_id"], decision.site


def _dose_fields(record) -> dict:
    return {name: record[name] for name in ("record_id", "national_id", "full_name", "birth_date", "sex", "phone",
                                            "vaccine", "lot", "dose_number", "administered_at")}


def _valid_dose(fields: dict) -> Dose:
    dose, errors = dose_from_fields(fields, dt.datetime.now(dt.UTC))
    if dose is None or errors:
        raise ApiError(422, "; ".join(f"dose.{e.field}: {e.reason}" for e in errors) or "invalid dose")
    return dose


def _replacement(record, fields: dict) -> tuple[dict, Dose]:
    dose = _valid_dose(fields)
    return ({"op": "replace", "site_id": record["site_id"], "site": record["site"], "record_id": record["record_id"],
             "batch_id": None, "before": _jsonable(_dose_fields(record)), "after": _jsonable(fields)}, dose)


def register(app: web.Application) -> None:
    app.router.add_post("/v1/corrections/{request_id}/decision", post_decision)
