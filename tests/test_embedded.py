"""The embedded Redis: durable by default, and never two servers on one AOF.

Covers: the embedded Redis runs `appendfsync always`; one left by a killed run is stopped and its data kept.
"""

import redis

from deploy.embedded import EmbeddedRedis


def test_embedded_redis_appends_and_fsyncs_every_write(tmp_path):
    server = EmbeddedRedis(tmp_path / "redis").start()
    try:
        client = redis.Redis.from_url(server.url)
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("appendfsync") == {"appendfsync": "always"}
        client.close()
    finally:
        server.stop()


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
