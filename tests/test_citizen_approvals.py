"""An approval is all or nothing, and audited either way (issue 16, item 9).

Covers: the stream refusing the second of two changes (Overloaded; Redis unreachable under it, through
the enqueuer's real connection) leaves the request approved with the first change in the stream, the
second in the outbox (batch_id null) and an `enqueue_failed` audit entry; a re-drive while Redis is still
away changes nothing but adds another such entry; once the stream takes it, the re-drive puts the second
in, audited, and both records change. A commit that fails (a deferred trigger refusing it) leaves nothing
in the stream, the request submitted, and a `decision_failed` audit entry.
"""

from __future__ import annotations

import datetime as dt
import socket

from ingest.app import INGEST
from ingest.housekeeping import sweep
from tests.conftest import wait_until
from tests.factory import dose
from tests.stack import running_stack
from tests.test_citizen import auth, claim, filed_and_confirmed, on_record
from vaxline.enqueue import Overloaded
from vaxline.redispipe import RedisPipe
from vaxline.streams import added_key


def closed_port() -> int:
    """A local port nobody listens on: bound, then closed."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def stream_entries(redis, settings) -> int:
    """Entries ever added to the dose streams (the workers trim them, so not XLEN)."""
    return sum([int(await redis.get(added_key(settings, shard)) or 0) for shard in range(settings.shards)])


async def audit_actions(stack, token, request_id) -> list[str]:
    audit = await (await stack.client.get(f"/v1/corrections/{request_id}/audit", headers=auth(token))).json()
    return [e["action"] for e in audit["entries"]]


async def renamed_person(stack, settings, token):
    person = dose(80, full_name="Le Thi Hoa", administered_at="2021-07-01T09:00:00+07:00")
    await on_record(stack, token, person, {**person, "record_id": "R-2", "administered_at": "2021-08-01T09:00:00+07:00"})
    body = {**claim(person, kind="wrong_personal_details"), "full_name": "Lê Thị Hoa"}
    return person, await filed_and_confirmed(stack, settings, body)


async def test_a_change_the_stream_refuses_is_kept_audited_and_re_driven(settings, db, monkeypatch):
    async with running_stack(settings) as stack:
        _, token = await stack.site("TYT-80")
        _, request_id = await renamed_person(stack, settings, token)
        ingest = stack.client.server.app[INGEST]
        real, calls = ingest.enqueuer.enqueue_correction, []

        async def second_refused(**change):
            calls.append(change["record_id"])
            if len(calls) == 2:
                raise Overloaded("the stream cannot take the correction now", retry_after=5)
            return await real(**change)

        monkeypatch.setattr(ingest.enqueuer, "enqueue_correction", second_refused)
        decided = await stack.client.post(f"/v1/corrections/{request_id}/decision", headers=auth(token),
                                          json={"decision": "approve", "message": "Đã sửa họ tên."})
        answer = await decided.json()
        after_failure = await audit_actions(stack, token, request_id)
        monkeypatch.setattr(ingest.enqueuer, "enqueue_correction", real)
        swept = await sweep(ingest, dt.datetime.now(dt.UTC))
        await wait_until(lambda: db.fetchval("SELECT count(*) = 2 FROM doses WHERE full_name = 'Lê Thị Hoa'"),
                         message="both records renamed")
        after_redrive = await audit_actions(stack, token, request_id)
        applied = (await (await stack.client.get(f"/v1/corrections/{request_id}", headers=auth(token))).json())["applied"]
    assert decided.status == 200 and answer["status"] == "approved"
    assert [c["batch_id"] is not None for c in answer["applied"]] == [True, False]
    assert after_failure[-3:] == ["decision:approved", "applied:replace", "enqueue_failed"]
    assert (swept.delivered, swept.pending) == (1, 0)
    assert after_redrive[-2:] == ["enqueue_failed", "applied:replace"]
    assert all(c["batch_id"] for c in applied)


async def test_a_decision_whose_commit_fails_applies_nothing_and_is_audited(settings, db, redis):
    async with running_stack(settings) as stack:
        _, token = await stack.site("TYT-81")
        _, request_id = await renamed_person(stack, settings, token)
        await db.execute("""
            CREATE FUNCTION test_refuse_commit() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN RAISE EXCEPTION 'commit refused' USING ERRCODE = 'serialization_failure'; END $$;
            CREATE CONSTRAINT TRIGGER refuse_approval AFTER UPDATE ON correction_requests
                DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (NEW.status = 'approved')
                EXECUTE FUNCTION test_refuse_commit();""")
        before = await stream_entries(redis, settings)
        decided = await stack.client.post(f"/v1/corrections/{request_id}/decision", headers=auth(token),
                                          json={"decision": "approve", "message": "Đã sửa họ tên."})
        error = (await decided.json())["error"]
        after = await stream_entries(redis, settings)
        actions = await audit_actions(stack, token, request_id)
    assert after == before  # nothing entered the stream
    assert actions[-1] == "decision_failed"
    assert await db.fetchval("SELECT status FROM correction_requests WHERE request_id = $1", request_id) == "submitted"
    assert await db.fetchval("SELECT count(*) FROM correction_changes") == 0
    assert decided.status == 503 and "nothing was applied" in error


async def test_a_stream_unreachable_at_approval_keeps_the_change_audited_and_re_drives_it(settings, db):
    """Redis failing under the approval: the first change goes in, then Redis stops answering (the
    enqueuer's connection to a port nobody listens on); the request is approved, the rest stays in the
    outbox, audited; a sweep while Redis is still away changes nothing; once it is back, the re-drive."""
    async with running_stack(settings) as stack:
        _, token = await stack.site("TYT-82")
        _, request_id = await renamed_person(stack, settings, token)
        enqueuer = stack.client.server.app[INGEST].enqueuer
        assert enqueuer._pipe is not None
        reachable, unreachable = enqueuer._pipe, RedisPipe(f"redis://127.0.0.1:{closed_port()}")
        real, calls = enqueuer.enqueue_correction, []

        async def redis_goes_away(**change):
            calls.append(change["record_id"])
            if len(calls) == 2:
                enqueuer._pipe = unreachable
            return await real(**change)

        enqueuer.enqueue_correction = redis_goes_away
        try:
            decided = await stack.client.post(f"/v1/corrections/{request_id}/decision", headers=auth(token),
                                              json={"decision": "approve", "message": "Đã sửa họ tên."})
            answer = await decided.json()
            still_away = await sweep(stack.client.server.app[INGEST], dt.datetime.now(dt.UTC))
            after_failure = await audit_actions(stack, token, request_id)
        finally:
            enqueuer._pipe = reachable
            enqueuer.enqueue_correction = real
            await unreachable.close()
        back = await sweep(stack.client.server.app[INGEST], dt.datetime.now(dt.UTC))
        await wait_until(lambda: db.fetchval("SELECT count(*) = 2 FROM doses WHERE full_name = 'Lê Thị Hoa'"),
                         message="both records renamed")
        after_redrive = await audit_actions(stack, token, request_id)
    failed = await db.fetch("SELECT after FROM audit_log WHERE request_id = $1 AND action = 'enqueue_failed'",
                            request_id)
    assert decided.status == 200 and answer["status"] == "approved"
    assert [c["batch_id"] is not None for c in answer["applied"]] == [True, False]
    assert (still_away.delivered, still_away.pending) == (0, 1)
    assert after_failure[-4:] == ["decision:approved", "applied:replace", "enqueue_failed", "enqueue_failed"]
    assert len(failed) == 2 and all("will_retry" in row["after"] for row in failed)
    assert (back.delivered, back.pending) == (1, 0) and after_redrive[-1] == "applied:replace"
    assert await db.fetchval("SELECT count(*) FROM correction_changes WHERE batch_id IS NULL") == 0
