"""What every route of ingest shares: the app's context, the error contract, responses and principals.

Every error answers JSON with a human-readable `error`. Route modules import this module; `app.py`
imports the route modules and builds the app, so nothing imports back up.
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
from prometheus_client import CollectorRegistry
from redis.exceptions import RedisError

from monitoring import exposition, metrics
from vaxline.config import Settings
from vaxline.doses import BatchValidator
from vaxline.enqueue import Enqueuer, Overloaded
from vaxline.filemodes import LooseMode, Reminder

from .auth import SiteAuth

log = logging.getLogger("ingest.app")

UNAVAILABLE = (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, RedisError)
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
    except LooseMode as e:  # not an OSError: no "retry later" for what only a chmod fixes
        _refusals(e, f"{request.method} {route}: refused")
        response = json_response({"error": MISCONFIGURED}, 500)
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


