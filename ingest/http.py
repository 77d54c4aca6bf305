"""What every route of ingest shares: the app's context, the error contract, responses and principals.

Every error answers RFC 9457 problem details (`application/problem+json`): `type`, `title`, `status`,
`detail`, and `error`, the same words as `detail`, which clients of the first releases read (`problem`).
`type` is `about:blank` when the status says all there is to say (RFC 9457 4.2.1: then `title` is the
status's reason phrase), and a URI under PROBLEM_TYPES when the problem means more than its status: a
client can tell a full backlog (come back after Retry-After) from a backing service down, or a server its
operator must fix, from a bug (docs/api.md#errors-and-limits lists them). Route modules import this module;
`app.py` imports the route modules and builds the app, so nothing imports back up.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from http import HTTPStatus
from typing import Any

import asyncpg
import msgspec
import redis.asyncio as aioredis
from aiohttp import web
from prometheus_client import CollectorRegistry
from redis.exceptions import RedisClusterException, RedisError

from monitoring import exposition, metrics
from vaxline.config import Settings
from vaxline.doses import BatchValidator
from vaxline.enqueue import Enqueuer, Overloaded
from vaxline.filemodes import LooseMode, Reminder

from .auth import SiteAuth

log = logging.getLogger("ingest.app")

# RedisClusterException: a Redis Cluster none of whose nodes answers, or a slot no master serves (redis-py's
# cluster errors that are no RedisError).
UNAVAILABLE = (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, RedisError,
               RedisClusterException)
BODY_FORMATS = {"application/json": "json", "application/msgpack": "msgpack", "application/x-msgpack": "msgpack"}
# A key folder or key open to other users: the operator's to fix (the log names the path, the mode and the
# chmod, every minute while it lasts); the public answer names no path.
MISCONFIGURED = ("the server is misconfigured: its operator must fix it (the server's log says what);"
                 " retrying will not help")
_json = msgspec.json.Encoder()
_refusals = Reminder(log)


@dataclasses.dataclass(frozen=True)
class Ingest:
    settings: Settings
    pool: asyncpg.Pool
    redis: aioredis.Redis
    auth: SiteAuth
    enqueuer: Enqueuer
    validator: BatchValidator
    registry: CollectorRegistry = dataclasses.field(default_factory=exposition.registry)
    # A hot standby's pool (DATABASE_READ_URL) for the read-only routes: certificate lookups, person reads,
    # statistics, review lists, the revocation feed. Writes, and reads that must see the request's own or a
    # just-acknowledged write (receipts, reconciliation, a record before its correction, tokens), use `pool`.
    # None: the primary's pool serves the reads too.
    read_pool: asyncpg.Pool | None = None

    def __post_init__(self) -> None:
        if self.read_pool is None:
            object.__setattr__(self, "read_pool", self.pool)


def json_response(body: Any, status: int = 200, headers: dict | None = None) -> web.Response:
    return web.Response(body=_json.encode(body), status=status, content_type="application/json", headers=headers)


PROBLEM_JSON = "application/problem+json"
# Problem types with a meaning beyond their status. Identifiers, not locators: `.example` is reserved (RFC
# 2606), so no client can be sent to a host nobody controls, and a deployment's own address would make the
# type differ between deployments. Each is documented in docs/api.md#errors-and-limits.
PROBLEM_TYPES = "https://vaxline.example/problems/"
OVERLOADED = PROBLEM_TYPES + "overloaded"  # the stream's backlog is full: retry after Retry-After
UNAVAILABLE_SERVICE = PROBLEM_TYPES + "unavailable"  # Postgres or Redis failed under the request: retry
MISCONFIGURED_SERVER = PROBLEM_TYPES + "misconfigured"  # only the operator can fix it: retrying will not help


def problem(status: int, detail: str, *, type: str = "about:blank", title: str | None = None) -> dict:
    """An RFC 9457 problem details object; `error` repeats `detail` for the clients that read it."""
    return {"type": type, "title": title or _phrase(status), "status": status, "detail": detail, "error": detail}


def problem_response(status: int, detail: str, headers: dict | None = None, *, type: str = "about:blank",
                     title: str | None = None) -> web.Response:
    return web.Response(body=_json.encode(problem(status, detail, type=type, title=title)), status=status,
                        content_type=PROBLEM_JSON, headers=headers)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Client Error" if status < 500 else "Server Error"


class ApiError(Exception):
    """An answer with a status >= 400 and the problem details body (`detail` and `error`: the message)."""

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
    """Turn every error, aiohttp's own (404, 405, 413 ...) too, into problem details; count and time requests."""
    started = time.perf_counter()
    route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
    try:
        response = await handler(request)
    except ApiError as e:
        response = problem_response(e.status, str(e), e.headers)
    except Overloaded as e:  # past the backlog bound, or Redis cannot take an entry: any route that enqueues
        metrics.backpressure_rejections.inc()
        response = problem_response(503, str(e), {"Retry-After": str(e.retry_after)}, type=OVERLOADED,
                                    title="The backlog is full")
    except web.HTTPException as e:
        if e.status < 400:
            raise
        headers = {k: v for k, v in e.headers.items() if k.lower() in ("retry-after", "allow")}
        response = problem_response(e.status, _reason(e), headers)
    except LooseMode as e:  # not an OSError: no "retry later" for what only a chmod fixes
        _refusals(e, f"{request.method} {route}: refused")
        response = problem_response(500, MISCONFIGURED, type=MISCONFIGURED_SERVER, title="The server is misconfigured")
    except asyncpg.DataError as e:  # a value Postgres refuses (class 22, e.g. a NUL character): the client's error
        log.warning("%s %s: a value was refused: %s", request.method, route, type(e).__name__)
        response = problem_response(400, "a value in the request cannot be stored or looked up")
    except UNAVAILABLE as e:  # Postgres or Redis unreachable or refusing: the client should retry
        log.warning("%s %s: backing service failed: %s", request.method, route, type(e).__name__)
        response = problem_response(503, "a backing service is unavailable; retry later", {"Retry-After": "5"},
                                    type=UNAVAILABLE_SERVICE, title="A backing service is unavailable")
    except Exception:
        log.exception("%s %s failed", request.method, route)
        response = problem_response(500, "internal error")
    metrics.http_requests.labels(route=route, status=str(response.status)).inc()
    metrics.http_latency.labels(route=route).observe(time.perf_counter() - started)
    return response


def _reason(e: web.HTTPException) -> str:
    """aiohttp's own explanation when it wrote one (e.g. for 413), else the status's reason phrase."""
    text = (e.text or "").strip()
    return text if text and not text.startswith(str(e.status)) else e.reason


