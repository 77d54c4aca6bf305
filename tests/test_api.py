"""The HTTP contract of ingest, end to end through Redis and Postgres.

Covers: 202 bodies, receipts, person history, 400/401/404/413/415/503, another site's receipt.
"""

import msgspec
import pytest

from ingest.app import INGEST as INGEST_KEY
from monitoring import metrics
from tests.conftest import wait_until
from tests.factory import batch, dose
from tests.stack import running_stack
from vaxline.enqueue import RETRY_MAX, RETRY_MIN


async def persisted(stack, token, batch_id):
    response = await stack.client.get(f"/v1/batches/{batch_id}", headers={"Authorization": f"Bearer {token}"})
    body = await response.json()
    return body if body.get("status") == "persisted" else None


async def test_accepted_batch_is_persisted_with_receipt_and_history(settings, db):
    async with running_stack(settings) as stack:
        _, token = await stack.site()
        response = await stack.post(token, batch(0, 3))
        assert response.status == 202
        body = await response.json()
        assert body["accepted"] == 3 and body["rejected"] == []
        receipt = await wait_until(lambda: persisted(stack, token, body["batch_id"]), message="receipt")
        assert receipt == {"batch_id": body["batch_id"], "status": "persisted", "accepted": 3, "inserted": 3,
                           "duplicates": 0}
        second = await stack.post(token, {"doses": [dose(0, record_id="R-second", dose_number=2,
                                                         administered_at="2021-11-01T10:00:00+07:00")]})
        second_batch = (await second.json())["batch_id"]
        await wait_until(lambda: persisted(stack, token, second_batch), message="second dose")
        national_id = dose(0)["national_id"]
        response = await stack.client.get(f"/v1/persons/{national_id}/doses",
                                          headers={"Authorization": f"Bearer {token}"})
        history = (await response.json())["doses"]
        assert [d["record_id"] for d in history] == ["R-0000000", "R-second"]
        assert [d["dose_number"] for d in history] == [1, 2]
    assert await db.fetchval("SELECT count(*) FROM doses") == 4


async def test_a_mixed_batch_accepts_the_valid_items(settings, db):
    async with running_stack(settings) as stack:
        _, token = await stack.site()
        doses = batch(0, 4)["doses"]
        doses[1]["national_id"] = "12"
        doses[3]["administered_at"] = "2099-01-01T00:00:00+07:00"
        response = await stack.post(token, {"doses": doses})
        body = await response.json()
        assert response.status == 202 and body["accepted"] == 2
        assert [(r["index"], r["errors"][0]["field"]) for r in body["rejected"]] == [(1, "national_id"),
                                                                                      (3, "administered_at")]
        await wait_until(lambda: persisted(stack, token, body["batch_id"]), message="receipt")
    rows = await db.fetch("SELECT record_id FROM doses ORDER BY record_id")
    assert [r["record_id"] for r in rows] == ["R-0000000", "R-0000002"]


async def test_msgpack_body_is_accepted(settings):
    async with running_stack(settings, workers=0) as stack:
        _, token = await stack.site()
        response = await stack.post(token, msgspec.msgpack.encode(batch(0, 2)), content_type="application/msgpack")
        assert response.status == 202 and (await response.json())["accepted"] == 2


async def test_a_batch_of_only_rejected_items_is_not_enqueued(settings, redis):
    async with running_stack(settings, workers=0) as stack:
        _, token = await stack.site()
        response = await stack.post(token, {"doses": [dose(0, lot="")]})
        body = await response.json()
        assert response.status == 202 and body["accepted"] == 0 and body["batch_id"] is None
    assert sum([await redis.xlen(s) for s in settings.streams]) == 0


@pytest.mark.parametrize("headers, status", [
    ({}, 401),
    ({"Authorization": "Bearer vx_not-a-token"}, 401),
    ({"Authorization": "Basic abc"}, 401),
])
async def test_unknown_or_missing_token_is_401(settings, headers, status):
    async with running_stack(settings, workers=0) as stack:
        response = await stack.client.post("/v1/doses", json=batch(0, 1), headers=headers)
        assert response.status == status
        assert "token" in (await response.json())["error"]


async def test_whole_request_errors_carry_json_error_bodies(settings):
    async with running_stack(settings, workers=0) as stack:
        _, token = await stack.site()
        auth = {"Authorization": f"Bearer {token}"}
        cases = [
            (await stack.client.post("/v1/doses", data=b'{"doses": [', headers={**auth, "Content-Type": "application/json"}), 400),
            (await stack.client.post("/v1/doses", data=b"a,b", headers={**auth, "Content-Type": "text/csv"}), 415),
            (await stack.post(token, batch(0, 1001)), 413),
            (await stack.client.post("/v1/doses", data=b"x" * (1024 * 1024 + 1),
                                     headers={**auth, "Content-Type": "application/json"}), 413),
            (await stack.client.get("/v1/nothing-here"), 404),
            (await stack.client.get("/v1/batches/0-1-0", headers=auth), 404),
            (await stack.client.get("/v1/persons/12/doses", headers=auth), 400),
        ]
        for response, status in cases:
            assert response.status == status, await response.text()
            assert isinstance((await response.json())["error"], str)
        malformed = await cases[0][0].json()
        assert "malformed" in malformed["error"]


async def test_chunked_body_over_the_limit_is_413(settings):
    async def chunks():
        for _ in range(40):
            yield b"x" * 32768

    async with running_stack(settings, workers=0) as stack:
        _, token = await stack.site()
        response = await stack.client.post("/v1/doses", data=chunks(), headers={
            "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        assert response.status == 413


async def test_a_site_cannot_read_another_sites_receipt(settings):
    async with running_stack(settings, workers=0) as stack:
        _, token_a = await stack.site("A")
        _, token_b = await stack.site("B")
        batch_id = (await (await stack.post(token_a, batch(0, 1))).json())["batch_id"]
        mine = await stack.client.get(f"/v1/batches/{batch_id}", headers={"Authorization": f"Bearer {token_a}"})
        assert (await mine.json())["status"] == "queued"
        theirs = await stack.client.get(f"/v1/batches/{batch_id}", headers={"Authorization": f"Bearer {token_b}"})
        assert theirs.status == 404


async def test_backlog_past_its_bound_answers_503_with_retry_after(make_settings, redis):
    """Retry-After is whole seconds within [1, 30]. With no worker nothing drains: once ingest has measured
    that, it sends clients away for the longest, jittered (10-30 s); a worker started, batches are taken again."""
    settings = make_settings(max_backlog_entries=2)
    async with running_stack(settings, workers=0) as stack:
        _, token = await stack.site()

        async def retry_after() -> int | None:
            response = await stack.post(token, batch(0, 1))
            if response.status != 503:
                return None
            assert "backlog" in (await response.json())["error"]
            header = response.headers["Retry-After"]
            assert header.isdigit() and RETRY_MIN <= int(header) <= RETRY_MAX, header
            return int(header)

        await wait_until(retry_after, message="503 over the backlog bound")
        await wait_until(lambda: _at_least(retry_after, 10), message="the longest Retry-After: nothing drains")
        stack.start_worker()
        await wait_until(lambda: _accepted(stack, token), message="a 202 once the worker drained the backlog")


async def _at_least(retry_after, seconds: int) -> bool:
    answer = await retry_after()
    assert answer is not None, "a 202 with no worker draining the backlog"
    return answer >= seconds


async def _accepted(stack, token) -> bool:
    response = await stack.post(token, batch(0, 1))
    return response.status == 202


async def test_health_and_readiness(settings):
    async with running_stack(settings, workers=0) as stack:
        assert (await stack.client.get("/healthz")).status == 200
        ready = await stack.client.get("/readyz")
        assert ready.status == 200 and (await ready.json())["checks"] == {"postgres": "ok", "redis": "ok",
                                                                          "redis_eviction": "ok"}
        exposition = await (await stack.client.get("/metrics")).text()
        assert metrics.DOSES_ACCEPTED in exposition


async def test_unknown_top_level_fields_and_impossible_batch_ids_are_client_errors(settings):
    async with running_stack(settings, workers=0) as stack:
        _, token = await stack.site()
        auth = {"Authorization": f"Bearer {token}"}
        response = await stack.post(token, {**batch(0, 1), "dosez": []})
        assert response.status == 400 and "dosez" in (await response.json())["error"]
        response = await stack.client.get("/v1/batches/0-99999999999999999999-0", headers=auth)
        assert response.status == 404


async def test_postgres_unreachable_is_503_not_500(make_settings):
    settings = make_settings()
    async with running_stack(settings, workers=0) as stack:
        _, token = await stack.site()
        stack.client.server.app[INGEST_KEY].auth._cache.clear()
        await stack.client.server.app[INGEST_KEY].pool.close()
        response = await stack.post(token, batch(0, 1))
        assert response.status == 503 and response.headers["Retry-After"]
        assert "error" in await response.json()
