"""The HTTP API of ingest: routes, and the error contract.

Every error answers JSON with a human-readable `error`. The hot route,
`POST /v1/doses`, authenticates and checks capacity before it reads the
body, decodes and validates in one pass, and answers 202 only after XADD.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Any

import asyncpg
import msgspec
import redis.asyncio as aioredis
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from redis.exceptions import RedisError

from monitoring import exposition, metrics
from storage import doses as dose_store
from vaxline.config import Settings
from vaxline.doses import (
    BatchTooLarge,
    BatchValidator,
    MalformedBatch,
)
from vaxline.entries import ENTRY_FIELD, decode_entry, parse_batch_id

from . import deadlines
from .auth import SiteAuth
from .enqueue import Enqueuer, Overloaded

log = logging.getLogger(__name__)

UNAVAILABLE = (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, RedisError)
BODY_FORMATS = {"application/json": "json", "application/msgpack": "msgpack", "application/x-msgpack": "msgpack"}
_json = msgspec.json.Encoder()


@dataclasses.dataclass(frozen=True)
class Ingest:
    settings: Settings
    pool: asyncpg.Pool
    redis: aioredis.Redis
    auth: SiteAuth
    enqueuer: Enqueuer
    validator: BatchValidator
    registry: CollectorRegistry = dataclasses.field(default_factory=exposition.registry)


class Accepted(msgspec.Struct):
    batch_id: str
    accepted: int
    rejected: list


def json_response(body: Any, status: int = 200, headers: dict | None = None) -> web.Response:
    return web.Response(body=_json.encode(body), status=status, content_type="application/json", headers=headers)


class ApiError(Exception):
    """An answer with a status >= 400 and the JSON `error` body."""

    def __init__(self, status: int, message: str, *, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.headers = headers


async def authenticated_site(request: web.Request):
    principal = await request.app[INGEST].auth.principal(request.headers.get("Authorization"))
    if principal is None:
        raise ApiError(401, "missing or unknown bearer token", headers={"WWW-Authenticate": "Bearer"})
    if principal.site is None:
        raise ApiError(403, "this needs a site's token: province and operator tokens are read-only")
    return principal.site


INGEST = web.AppKey("ingest", Ingest)


@web.middleware
async def error_bodies(request: web.Request, handler):
    """Turn aiohttp's own errors (404, 405, 413 ...) into the JSON error contract; count and time requests."""
    started = time.perf_counter()
    route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
    try:
        response = await handler(request)
    except ApiError as e:
        response = json_response({"error": str(e)}, e.status, e.headers)
    except Overloaded as e:  # past the backlog bound, or Redis cannot take an entry: any route that enqueues
        metrics.backpressure_rejections.inc()
        response = json_response({"error": str(e)}, 503, {"Retry-After": str(e.retry_after)})
    except web.HTTPException as e:
        if e.status < 400:
            raise
        headers = {k: v for k, v in e.headers.items() if k.lower() in ("retry-after", "allow")}
        response = json_response({"error": _reason(e)}, e.status, headers)
    except asyncpg.DataError as e:  # a value Postgres refuses (class 22, e.g. a NUL character): the client's error
        log.warning("%s %s: a value was refused: %s", request.method, route, type(e).__name__)
        response = json_response({"error": "a value in the request cannot be stored or looked up"}, 400)
    except UNAVAILABLE as e:  # Postgres or Redis unreachable or refusing: the client should retry
        log.warning("%s %s: backing service failed: %s", request.method, route, type(e).__name__)
        response = json_response({"error": "a backing service is unavailable; retry later"}, 503,
                                 {"Retry-After": "5"})
    except Exception:
        log.exception("%s %s failed", request.method, route)
        response = json_response({"error": "internal error"}, 500)
    metrics.http_requests.labels(route=route, status=str(response.status)).inc()
    metrics.http_latency.labels(route=route).observe(time.perf_counter() - started)
    return response


def _reason(e: web.HTTPException) -> str:
    """aiohttp's own explanation when it wrote one (e.g. for 413), else the status's reason phrase."""
    text = (e.text or "").strip()
    return text if text and not text.startswith(str(e.status)) else e.reason


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
    if not entries:
        return None
    try:
        return decode_entry(entries[0][1][ENTRY_FIELD])
    except (msgspec.DecodeError, KeyError):
        return None


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
    ready = all(v == "ok" for v in checks.values())
    body = {"status": "ready" if ready else "not ready", "checks": checks}
    if not ready:
        body["error"] = "a backing service is unreachable"
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
    from . import certificates, citizen, openapi, quality  # here: their routes build on this module's error contract

    app.router.add_get("/openapi.json", openapi.get_openapi)

    certificates.register(app, ingest.settings, ingest.redis)
    quality.register(app)
    citizen.register(app)
    return app
