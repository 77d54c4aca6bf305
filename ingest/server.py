"""One ingest process: aiohttp on uvloop, sharing its port with its siblings.

Several processes bind the same port with SO_REUSEPORT and the kernel
spreads connections over them. SIGTERM or SIGINT stops accepting, lets
requests in flight finish (their XADD included), then exits.

What the settings name is checked before any connection (`startup_checks`): a malformed
VAXLINE_TRUSTED_PROXIES, a bad server secret, or a key folder, key or server secret open to other users
stops the start with an error that names it (`vaxline serve` and `run` run the same checks first).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math

import asyncpg
import uvloop
from aiohttp import web

from monitoring import metrics, processes
from storage import session_settings
from storage.replica import replica_lag
from vaxline.config import Settings
from vaxline.dcc.keys import KeyStore
from vaxline.doses import BatchValidator
from vaxline.enqueue import Enqueuer
from vaxline.lifecycle import stop_on_signals
from vaxline.links import server_secret
from vaxline.streams import connect_redis

from .app import build_app
from .auth import SiteAuth
from .clients import TRUSTED_PROXIES, trusted_networks
from .deadlines import CLIENT_DEADLINES, ClientSite
from .http import INGEST, Ingest

log = logging.getLogger(__name__)


def _export_backlog(shard: int, entries: int) -> None:
    metrics.stream_backlog.labels(shard=str(shard)).set(entries)


def startup_checks(settings: Settings) -> tuple:
    """The trusted proxies, parsed; raises ValueError (a malformed VAXLINE_TRUSTED_PROXIES entry or server
    secret) or vaxline.filemodes.LooseMode (the key folder, a key or the server secret open to other users),
    each naming what to fix."""
    proxies = trusted_networks(settings.trusted_proxies)
    KeyStore(settings.signing_keys_dir).check_modes()
    server_secret(settings)  # made here when it is missing, as the first process that needs it does
    return proxies


@contextlib.asynccontextmanager
async def ingest_app(settings: Settings):
    """The app with its pools and background tasks, closed on exit."""
    proxies = startup_checks(settings)  # before any connection: a bad setting stops the start, named
    pool = await asyncpg.create_pool(settings.database_url, min_size=0, max_size=4, command_timeout=10,
                                     server_settings=session_settings(settings.database_url, "ingest"))
    # The standby's pool, when there is one: min_size=0, so a standby down at start fails its reads (503), not
    # the start or the writes.
    read_pool = (await asyncpg.create_pool(settings.database_read_url, min_size=0, max_size=4, command_timeout=10,
                                           server_settings=session_settings(settings.database_read_url, "ingest"))
                 if settings.database_read_url else pool)
    redis = connect_redis(settings)
    enqueuer = Enqueuer(redis, settings, on_backlog=_export_backlog)
    await enqueuer.start()
    ingest = Ingest(
        settings=settings, pool=pool, redis=redis, auth=SiteAuth(pool), enqueuer=enqueuer,
        validator=BatchValidator(max_doses=settings.max_batch_doses), read_pool=read_pool,
    )
    try:
        app = build_app(ingest)
        app[TRUSTED_PROXIES] = proxies
        yield app
    finally:
        await enqueuer.stop()
        await redis.aclose()
        if read_pool is not pool:
            await read_pool.close()
        await pool.close()


async def serve(settings: Settings, *, host: str, port: int, stop: asyncio.Event) -> None:
    async with ingest_app(settings) as app:
        runner = web.AppRunner(app, keepalive_timeout=settings.keepalive_timeout, access_log=None,
                               shutdown_timeout=10)
        await runner.setup()
        # Several addresses (a comma-separated host) give clients several destinations, each with its own
        # range of ephemeral ports: one loopback (address, port) runs out at 28,232 connections.
        for address in (a.strip() for a in host.split(",")):
            site = ClientSite(runner, address, port, deadlines=app[CLIENT_DEADLINES], backlog=4096)  # SO_REUSEPORT
            await site.start()
        log.info("ingest listening on %s:%d", host, port)
        counter = asyncio.create_task(_count_connections(runner, app[INGEST].pool))
        renewal = asyncio.create_task(app[INGEST].auth.keep_renewed())  # ingest.auth: no post waits for its token
        lag = asyncio.create_task(export_replica_lag(app[INGEST].read_pool)) if settings.database_read_url else None
        try:
            await stop.wait()
        finally:
            counter.cancel()
            renewal.cancel()
            if lag:
                lag.cancel()
            await runner.cleanup()


async def _count_connections(runner: web.AppRunner, pool: asyncpg.Pool) -> None:
    while True:
        metrics.open_connections.set(len(runner.server.connections) if runner.server else 0)
        metrics.pg_pool_in_use.labels(role="ingest").set(pool.get_size() - pool.get_idle_size())
        await asyncio.sleep(1)


async def export_replica_lag(read_pool: asyncpg.Pool, every: float = 5.0) -> None:
    """The standby's replay lag, every `every` seconds; a standby that does not answer reads as +Inf (its reads
    answer 503 meanwhile), so the lag alert fires for it too."""
    while True:
        try:
            async with read_pool.acquire(timeout=2) as conn:
                lag = await replica_lag(conn)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
            lag = math.inf  # unreachable: as far behind as it gets (its reads answer 503)
        # None: DATABASE_READ_URL names a primary, which trails nothing.
        metrics.replica_lag.labels(role="ingest").set(0.0 if lag is None else lag)
        await asyncio.sleep(every)


def run_process(settings: Settings, host: str, port: int) -> None:
    """Entry point of one ingest process."""
    processes.start("ingest")
    uvloop.run(_main(settings, host, port))


async def _main(settings: Settings, host: str, port: int) -> None:
    await serve(settings, host=host, port=port, stop=stop_on_signals())
