"""The commands and the Redis-backed limits on the Redis Cluster: `vaxline import` (back-entry straight into
the stream), `vaxline deadletters replay` with `vaxline reconcile`, the lookup limits and codes, a citizen's
correction request, each run as its own test runs it, every fixture's settings pointed at the cluster of
tests/redis_cluster.py (this module overrides `make_settings` and `redis`).

Covers: a CSV imported (good rows persisted, bad ones reported, the same file again all duplicates, the
accepted counts as ingest keeps them); a dead letter replayed once its cause is fixed, persisted once, with
reconciliation at 0 unexplained; lookups past the per-address limit (429, a MULTI per key); past ten wrong
birth dates only the code sent to the phone on record lets in (the guard's counter and its code scripts, one
hash tag per national ID); a missing dose from request to reissued certificate (one-time codes, the filing
limits, the approved change through the stream). Reused from tests/test_import.py, tests/test_deadletters.py,
tests/test_certificate_api.py, tests/test_lookup_security.py and tests/test_citizen.py.
"""

from __future__ import annotations

import functools

import pytest

from tests.test_certificate_api import test_lookups_past_the_limit_are_429_with_retry_after  # noqa: F401
from tests.test_citizen import test_a_missing_dose_goes_from_request_to_a_reissued_certificate  # noqa: F401
from tests.test_deadletters import test_a_dead_letter_replayed_once_its_cause_is_fixed_persists_once  # noqa: F401
from tests.test_import import (  # noqa: F401
    test_csv_with_vietnamese_headers_imports_good_rows_reports_bad_ones_and_reimports_idempotently,
    vaxline,
)
from tests.test_lookup_security import (  # noqa: F401
    signing_key,
    test_past_ten_wrong_birth_dates_from_any_addresses_only_the_code_sent_to_the_phone_on_record_lets_in,
)
from vaxline.streams import connect_redis


@pytest.fixture
def make_settings(make_settings, redis_cluster):
    """conftest's make_settings, on the cluster: `settings`, `db`, `vaxline` and the rest follow."""
    return functools.partial(make_settings, redis_url=redis_cluster.url)


@pytest.fixture
async def redis(settings):
    client = connect_redis(settings)
    assert type(client).__name__ == "RedisCluster"
    yield client
    for key in [k async for k in client.scan_iter(match=f"{settings.stream_prefix}:*")]:
        await client.delete(key)
    await client.aclose()
