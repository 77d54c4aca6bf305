"""A Redis that may evict (issue 16, item 10): reported at start and by /readyz, with a real Redis.

Covers: with `maxmemory-policy allkeys-lru` (set on the test session's own Redis, then restored) ingest logs
an error at start naming the policy and the fix, and `/readyz` answers 503 with `checks.redis_eviction`
saying why; a volatile-* policy is reported alike; back on `noeviction` it is ready again.
"""

from __future__ import annotations

import contextlib
import logging

import redis.asyncio as aioredis

from tests.stack import running_stack
from vaxline.streams import eviction_risk


@contextlib.asynccontextmanager
async def eviction_policy(settings, policy: str):
    client = aioredis.Redis.from_url(settings.redis_url)
    before = (await client.config_get("maxmemory-policy"))["maxmemory-policy"]
    await client.config_set("maxmemory-policy", policy)
    try:
        yield client
    finally:
        await client.config_set("maxmemory-policy", before)
        await client.aclose()


async def test_an_evicting_redis_is_refused_by_readyz_and_logged_at_start(settings, caplog):
    async with eviction_policy(settings, "allkeys-lru") as client:
        with caplog.at_level(logging.ERROR, logger="vaxline.enqueue"):
            async with running_stack(settings, workers=0) as stack:
                ready = await stack.client.get("/readyz")
                body = await ready.json()
                assert ready.status == 503 and body["status"] == "not ready"
                assert body["checks"]["postgres"] == "ok" and body["checks"]["redis"] == "ok"
                assert "allkeys-lru" in body["checks"]["redis_eviction"]
                assert "noeviction" in body["error"]
                await client.config_set("maxmemory-policy", "noeviction")  # fixed while running: ready again
                ready = await stack.client.get("/readyz")
                assert ready.status == 200 and (await ready.json())["checks"]["redis_eviction"] == "ok"
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert any("maxmemory-policy allkeys-lru" in m and "noeviction" in m for m in errors), errors


async def test_every_policy_but_noeviction_is_a_risk(settings):
    client = aioredis.Redis.from_url(settings.redis_url)
    try:
        assert await eviction_risk(client) is None  # the embedded Redis's default
        for policy in ("volatile-lru", "allkeys-random", "volatile-ttl"):
            async with eviction_policy(settings, policy):
                assert policy in await eviction_risk(client)
        assert await eviction_risk(client) is None
    finally:
        await client.aclose()
