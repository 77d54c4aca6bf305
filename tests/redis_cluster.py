"""The Redis Cluster the cluster tests share: 3 masters and 3 replicas of Debian's redis-server on loopback
(deploy/rediscluster.py, the same the e2e benchmark starts), append-only with fsync always, started once per
session under the session's temporary folder and stopped at its end. Without redis-server the tests that use
it are skipped, or fail with CI=1 (scripts/setup.sh installs it as root).

tests/conftest.py imports the fixtures, so every module shares the one cluster.
"""

from __future__ import annotations

import functools
import os

import pytest

from deploy.rediscluster import LocalCluster, available
from vaxline.streams import connect_redis


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory):
    if why := available():
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    cluster = LocalCluster(tmp_path_factory.mktemp("redis-cluster"), masters=3, replicas=1, node_timeout_ms=2000)
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture
def cluster_make_settings(make_settings, redis_cluster):
    """make_settings, on the cluster (each test its own stream prefix, as on the embedded Redis)."""
    return functools.partial(make_settings, redis_url=redis_cluster.url)


@pytest.fixture
def cluster_settings(cluster_make_settings):
    return cluster_make_settings()


@pytest.fixture
async def cluster_redis(cluster_settings):
    """A cluster client (connect_redis detects the cluster); the test's keys deleted after it."""
    client = connect_redis(cluster_settings)
    yield client
    keys = [k async for k in client.scan_iter(match=f"{cluster_settings.stream_prefix}:*")]
    for key in keys:
        await client.delete(key)
    await client.aclose()
