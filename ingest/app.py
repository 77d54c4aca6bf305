"""The HTTP API of ingest: the batch routes, health, metrics, and the app that mounts every route module.

The hot route, `POST /v1/doses`, authenticates and checks capacity before it reads the body, decodes and
validates in one pass, and answers 202 only after XADD. The error contract lives in `http.py`.
"""

from __future__ import annotations

import asyncio

import msgspec
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError

from monitoring import metrics
from storage import doses as dose_store
from vaxline.doses import BatchTooLarge, MalformedBatch
from vaxline.entries import entry_of, parse_batch_id
from vaxline.streams import eviction_risk

from . import apidocs, certificates, citizen, deadlines, decisions, housekeeping, openapi, portal, quality, revocations
from .http import (  # noqa: F401 (Ingest and INGEST: the app's context, imported from here by the server and tests)
    BODY_FORMATS,
    INGEST,
    ApiError,
    Ingest,
    authenticated_site,
    error_bodies,
    json_response,
    log,
)


class Accepted(msgspec.Struct):
    batch_id: str
    accepted: int
    rejected: list


async def post_doses(request: web.Request) -> web.Response:
    ingest = request.app[INGEST]
    site = await authenticated_site(request)
    fmt = BODY_FORMATS.get(request.content_type)
    if fmt is None:
        raise ApiError(415, f"unsupported content type {request.content_type!r}; send application/json or application/msgpack")
    if request.content_length is not None and request.content_length > ingest.settings.max_body_bytes:
        raise ApiError(413, f"body of {request.content_length} bytes; the limit is {ingest.settings.max_body_bytes}")
    ingest.enqueuer.check_capacity()  # Overloaded: 503 with Retry-After (error_bodies), before the body is read

    body = await request.read()  # bounded by client_max_size: aiohttp answers 413 past it
    try:
        accepted, rejected = ingest.validator.validate(body, fmt)
    except MalformedBatch as e:
        raise ApiError(400, f"malformed body: {e}")
    except BatchTooLarge as e:
        raise ApiError(413, str(e))
    for rejection in rejected:
        for field_error in rejection.errors:
            metrics.doses_rejected.labels(reason=field_error.field).inc()

    batch_id = None
    if accepted:
        batch_id = await ingest.enqueuer.enqueue(site_id=site.site_id, doses=accepted, rejected=len(rejected))
        metrics.doses_accepted.inc(len(accepted))
        metrics.batches_accepted.inc()
        log.info("batch accepted", extra={"batch_id": batch_id, "site_id": site.site_id, "accepted": len(accepted),
                                          "rejected": len(rejected)})
    elif rejected:
        await ingest.enqueuer.count_rejected(site_id=site.site_id, rejected=len(rejected))
    return json_response(Accepted(batch_id=batch_id, accepted=len(accepted), rejected=rejected), status=202)


async def get_batch(request: web.Request) -> web.Response:
    ingest = request.app[INGEST]
    site = await authenticated_site(request)
    batch_id = request.match_info["batch_id"]
    not_found = ApiError(404, f"no batch {batch_id!r} for this site")
    if parse_batch_id(batch_id) is None:  # not an id a batch can have: not found, without asking Postgres
        raise not_found
    receipt, dead = await _settled(ingest, batch_id)
    queued = None
    if receipt is None and dead is None:
        queued = await _queued_entry(ingest, batch_id)
        if queued is None:
            # Gone from the stream since Postgres was asked: a worker committed it meanwhile (the stream is
            # trimmed only below acknowledged entries, and those are acknowledged after their COMMIT).
            receipt, dead = await _settled(ingest, batch_id)
    if receipt is not None:
        if receipt["site_id"] != site.site_id:
            raise not_found
        return json_response({
            "batch_id": batch_id, "status": "persisted", "accepted": receipt["accepted"],
            "inserted": receipt["inserted"], "duplicates": receipt["duplicates"],
        })
    if dead is not None:
        if dead["site_id"] != site.site_id:
            raise not_found
        return json_response({"batch_id": batch_id, "status": "failed", "error": dead["error"]})
    if queued is None or queued.site_id != site.site_id:
        raise not_found
    return json_response({
        "batch_id": batch_id, "status": "queued", "accepted": len(queued.doses), "inserted": 0, "duplicates": 0,
    })


async def _settled(ingest: Ingest, batch_id: str):
    """The batch's receipt or dead letter in Postgres, (None, None) while it is still in the stream."""
    async with ingest.pool.acquire() as conn:
        receipt = await dose_store.receipt(conn, batch_id)
        return receipt, (await dose_store.dead_letter_of(conn, batch_id) if receipt is None else None)


async def _queued_entry(ingest: Ingest, batch_id: str):
    where = parse_batch_id(batch_id)
    if where is None or where[0] >= ingest.settings.shards:
        return None
    shard, entry_id = where
    entries = await ingest.redis.xrange(ingest.settings.stream(shard), min=entry_id, max=entry_id, count=1)
    return entry_of(entries[0][1]) if entries else None


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    ingest = request.app[INGEST]
    checks = {}
    try:
        async with ingest.pool.acquire(timeout=2) as conn:
            await conn.fetchval("SELECT 1", timeout=2)
        checks["postgres"] = "ok"
    except Exception as e:  # any failure means not ready; the reason is reported
        checks["postgres"] = f"unreachable: {type(e).__name__}"
    try:
        await asyncio.wait_for(ingest.redis.ping(), 2)  # a partitioned Redis would hold it for the socket timeout
        checks["redis"] = "ok"
    except Exception as e:
        checks["redis"] = f"unreachable: {type(e).__name__}"
    else:  # not ready while Redis may evict: a 202 would promise a dose that Redis can drop
        try:
            checks["redis_eviction"] = await asyncio.wait_for(eviction_risk(ingest.redis), 2) or "ok"
        except (TimeoutError, OSError, RedisError) as e:
            checks["redis_eviction"] = f"unknown: {type(e).__name__}"
    ready = all(v == "ok" for v in checks.values())
    body = {"status": "ready" if ready else "not ready", "checks": checks}
    if not ready:
        unreachable = any(v.startswith("unreachable") for v in checks.values())
        body["error"] = "a backing service is unreachable" if unreachable else checks["redis_eviction"]
    return json_response(body, status=200 if ready else 503)


async def prometheus(request: web.Request) -> web.Response:
    body = generate_latest(request.app[INGEST].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def build_app(ingest: Ingest) -> web.Application:
    app = web.Application(middlewares=[error_bodies], client_max_size=ingest.settings.max_body_bytes)
    app[INGEST] = ingest
    deadlines.install(app, timeout=ingest.settings.client_timeout, min_rate=ingest.settings.client_min_rate)
    app.router.add_post("/v1/doses", post_doses)
    app.router.add_get("/v1/batches/{batch_id}", get_batch)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", prometheus)
    app.router.add_get("/openapi.json", openapi.get_openapi)
    apidocs.register(app)

    certificates.register(app, ingest.settings, ingest.redis)
    revocations.register(app)
    quality.register(app)
    citizen.register(app)
    decisions.register(app)
    housekeeping.register(app)
    portal.register(app)  # the citizen pages, after the routes whose code they answer through
    return app
