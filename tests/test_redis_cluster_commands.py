"""The commands on the Redis Cluster: `vaxline import` (back-entry straight into the stream) and `vaxline
deadletters replay` with `vaxline reconcile`, run in-process as their own tests run them, every fixture's
settings pointed at the cluster of tests/redis_cluster.py (this module overrides `make_settings` and `redis`).

Covers: a CSV imported (good rows persisted, bad ones reported, the same file again all duplicates, the
accepted counts as ingest keeps them); a dead letter replayed once its cause is fixed, persisted once, with
reconciliation at 0 unexplained; both reused from tests/test_import.py and tests/test_deadletters.py.
"""

from __future__ import annotations

import functools

import pytest

from tests.redis_cluster import redis_cluster  # noqa: F401 (a fixture)
from tests.test_deadletters import test_a_dead_letter_replayed_once_its_cause_is_fixed_persists_once  # noqa: F401
from tests.test_import import vaxline  # noqa: F401 (a fixture: the command in-process)
from tests.test_import import (  # noqa: F401
    test_csv_with_vietnamese_headers_imports_good_rows_reports_bad_ones_and_reimports_idempotently,
)
from vaxline.streams import connect_redis


@pytest.fixture
def make_settings(make_settings, redis_cluster):  # noqa: F811 (conftest's, on the cluster)
    return functools.partial(make_settings, redis_url=redis_cluster.url)


@pytest.fixture
async def redis(settings):
    client = connect_redis(settings)
    assert type(client).__name__ == "RedisCluster"
    yield client
    for key in [k async for k in client.scan_iter(match=f"{settings.stream_prefix}:*")]:
        await client.delete(key)
    await client.aclose()
