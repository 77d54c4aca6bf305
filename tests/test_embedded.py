"""The embedded Redis: durable by default, and never two servers on one AOF.

Covers: the embedded Redis runs `appendfsync always`; the embedded Postgres runs without JIT, with checkpoints
far apart (deploy.embedded.POSTGRES_SETTINGS) and with a quarter of the machine's memory as shared buffers,
within bounds, a new data folder included (it starts twice: shared_buffers is read only at a start); one left
by a killed run is stopped and its data kept; a stack stops the embedded Postgres it started, also when its
folder is removed next (as benchmarks do).
"""

import shutil

import asyncpg
import pytest
import redis

from deploy.embedded import POSTGRES_SETTINGS, EmbeddedRedis, _alive, shared_buffer_pages
from deploy.stack import Stack


def test_embedded_redis_appends_and_fsyncs_every_write(tmp_path):
    server = EmbeddedRedis(tmp_path / "redis").start()
    try:
        client = redis.Redis.from_url(server.url)
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("appendfsync") == {"appendfsync": "always"}
        client.close()
    finally:
        server.stop()


async def test_the_embedded_postgres_runs_with_the_settings_for_short_writes(services):
    if services[3] is None:
        pytest.skip("TEST_DATABASE_URL names a Postgres of its own")
    conn = await asyncpg.connect(services[0])
    try:
        found = {name: await conn.fetchval(f"SHOW {name}") for name in POSTGRES_SETTINGS}
        buffers = await conn.fetchval("SELECT setting::int FROM pg_settings WHERE name = 'shared_buffers'")
    finally:
        await conn.close()
    assert found == {"jit": "off", "max_wal_size": "8GB", "checkpoint_timeout": "15min"}
    # The session's Postgres was made from a new data folder, at initdb's 128 MB: it was started again.
    assert buffers == shared_buffer_pages() > 128 * 1024 // 8


def test_shared_buffers_are_a_quarter_of_memory_from_128_mb_to_8_gb():
    gib = 1 << 30
    assert shared_buffer_pages(24 * gib) == 6 * gib // 8192
    assert shared_buffer_pages(256 * 1024 * 1024) == 128 * 1024 * 1024 // 8192  # initdb's default, no less
    assert shared_buffer_pages(256 * gib) == 8 * gib // 8192


def test_a_redis_left_by_a_killed_run_is_stopped_and_its_data_kept(tmp_path):
    orphan = EmbeddedRedis(tmp_path / "redis").start()  # its parent "dies" without stopping it
    client = redis.Redis.from_url(orphan.url)
    entry = client.xadd("s", {"b": b"kept"})
    client.close()
    successor = EmbeddedRedis(tmp_path / "redis").start()
    try:
        assert orphan.process.wait(timeout=10) == 0  # stopped cleanly, not left beside the new one
        client = redis.Redis.from_url(successor.url)
        assert client.xrange("s") == [(entry, {b"b": b"kept"})]
        client.close()
    finally:
        successor.stop()
        orphan.stop()


def test_a_stack_stops_the_embedded_postgres_it_started(tmp_path, monkeypatch):
    """pgserver stops its server at the interpreter's exit, which failed once the folder was gone: every
    benchmark run left a postmaster behind."""
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("REDIS_URL", raising=False)
    stack = Stack(tmp_path / "demo", database="vaxline_stop_test")
    try:
        stack.start()
        postmaster = stack.service_pids["postgres (postmaster)"]
        assert _alive(postmaster)
    finally:
        stack.stop()
    shutil.rmtree(tmp_path / "demo")
    assert not _alive(postmaster)

