"""`vaxline deadletters list | replay`: dead letters and failed certify handoffs re-driven once their cause is
fixed. Real Postgres and Redis, the in-process stack, the command run in-process.

Covers: a batch that Postgres refuses (a constraint the test adds: "a bug") dead-lettered after its delivery
bound, beside a good batch, with reconciliation explaining it; the cause fixed; a replay interrupted after its
append (the append made, Postgres not told) and the command run then: one append, not two, pending in the
stream with reconciliation at 0 unexplained; persisted by the workers exactly once (the record it shared with
the good batch a duplicate, not a second row); replayed again, by id and with --all: nothing appended, nothing
doubled, accepted counted once, reconciliation 0; the replay audited; an undecodable dead letter not
replayable (exit 1); usage errors (exit 2). A certify chunk that fails on the data kept in failed_handoffs,
handed to the certifiers again with --certify once fixed: every person certified, reconciliation 0.
"""

from __future__ import annotations

import json

from tests.conftest import wait_until
from tests.factory import dose
from tests.stack import running_stack
from tests.test_import import vaxline  # noqa: F401 (a fixture: the command in-process)
from vaxline.enqueue import Enqueuer
from vaxline.entries import ENTRY_FIELD
from vaxline.streams import added_key


async def reconciled(vaxline) -> dict:  # noqa: F811
    code, out, _ = await vaxline("reconcile", "--json")
    report = json.loads(out)
    assert (code, report["unexplained"]) == (0, 0), [r["explanation"] for r in report["rows"] if r["unexplained"]]
    return report["totals"]


async def listed(vaxline, *args) -> dict:  # noqa: F811
    code, out, err = await vaxline("deadletters", "list", "--json", *args)
    assert code == 0, err
    return json.loads(out)


async def test_a_dead_letter_replayed_once_its_cause_is_fixed_persists_once(make_settings, db, redis,
                                                                               vaxline):  # noqa: F811
    settings = make_settings(max_deliveries=2, claim_idle_ms=200)
    await db.execute("ALTER TABLE doses ADD CONSTRAINT a_bug CHECK (lot <> 'LOT-X')")
    good = [dose(n, record_prefix="DL") for n in range(10)]
    poison = [good[0]] + [dose(n, record_prefix="DL", lot="LOT-X") for n in range(10, 14)]  # one resubmitted
    async with running_stack(settings, workers=1) as stack:
        site_id, token = await stack.site("DL-1")
        good_id = (await (await stack.post(token, {"doses": good})).json())["batch_id"]
        dead_id = (await (await stack.post(token, {"doses": poison})).json())["batch_id"]
        await wait_until(lambda: db.fetchval("SELECT count(*) = 1 FROM dead_letters WHERE batch_id = $1", dead_id),
                         message="the poison batch dead-lettered")
        await wait_until(lambda: db.fetchval("SELECT count(*) = 1 FROM batches WHERE batch_id = $1", good_id),
                         message="the good batch")
    totals = await reconciled(vaxline)
    assert (totals["accepted"], totals["received"], totals["dead_lettered"]) == (15, 10, 5)
    [letter] = (await listed(vaxline))["dead_letters"]
    assert (letter["batch_id"], letter["site"], letter["doses"], letter["state"]) == (dead_id, "DL-1", 5, "waiting")

    await db.execute("ALTER TABLE doses DROP CONSTRAINT a_bug")  # the cause fixed
    shard = settings.shard_of(site_id)
    enqueuer = Enqueuer(redis, settings)
    await enqueuer.start()
    try:  # a replay that appended, then died before telling Postgres
        interrupted = await enqueuer.replay(shard=shard, payload=await db.fetchval(
            "SELECT payload FROM dead_letters WHERE batch_id = $1", dead_id), dead_batch_id=dead_id)
    finally:
        await enqueuer.stop()
    appended = await redis.get(added_key(settings, shard))  # entries ever added to the shard
    code, out, err = await vaxline("deadletters", "replay", "--all")
    assert (code, out.strip()) == (0, f"{dead_id}: replayed as {interrupted} (5 doses)"), err
    assert await redis.get(added_key(settings, shard)) == appended  # the interrupted replay's entry, no second one
    totals = await reconciled(vaxline)  # in the stream, no worker running: pending, no longer dead-lettered
    assert (totals["accepted"], totals["received"], totals["pending"], totals["dead_lettered"]) == (15, 10, 5, 0)

    async with running_stack(settings, workers=1):
        await wait_until(lambda: db.fetchval("SELECT count(*) = 1 FROM batches WHERE batch_id = $1", interrupted),
                         message="the replay persisted")
    receipt = await db.fetchrow("SELECT inserted, duplicates FROM batches WHERE batch_id = $1", interrupted)
    assert (receipt["inserted"], receipt["duplicates"]) == (4, 1)
    totals = await reconciled(vaxline)
    assert (totals["accepted"], totals["received"], totals["dead_lettered"], totals["present"]) == (15, 15, 0, 14)

    for again in (["--all"], [dead_id]):
        code, out, err = await vaxline("deadletters", "replay", *again)
        assert code == 0, err
        assert await redis.get(added_key(settings, shard)) == appended
    assert "replayed already" in out
    assert await db.fetchval("SELECT count(*) FROM doses") == 14
    assert await db.fetchval("SELECT count(DISTINCT (site_id, record_id)) FROM doses") == 14
    assert await db.fetchval("SELECT count(*) FROM batches") == 2
    await reconciled(vaxline)
    assert (await listed(vaxline))["dead_letters"] == []
    [letter] = (await listed(vaxline, "--all"))["dead_letters"]
    assert (letter["state"], letter["replayed_as"]) == ("replayed", interrupted)
    audited = await db.fetch("SELECT actor, before, after FROM audit_log WHERE action = 'dead_letter_replayed'")
    assert len(audited) == 1 and dead_id in audited[0]["before"] and interrupted in audited[0]["after"]


async def test_what_cannot_be_replayed_exits_1_and_usage_errors_exit_2(make_settings, db, redis,
                                                                      vaxline):  # noqa: F811
    settings = make_settings(max_deliveries=1, claim_idle_ms=200)
    async with running_stack(settings, workers=1) as stack:
        site_id, _ = await stack.site("DL-2")
        garbage = await redis.xadd(settings.stream(settings.shard_of(site_id)), {ENTRY_FIELD: b"\xc1 not msgpack"})
        await wait_until(lambda: db.fetchval("SELECT count(*) = 1 FROM dead_letters"), message="dead-lettered")
    dead_id = f"{settings.shard_of(site_id)}-{garbage.decode()}"
    code, out, _ = await vaxline("deadletters", "replay", dead_id)
    assert code == 1 and "cannot be decoded" in out
    assert await db.fetchval("SELECT replayed_at FROM dead_letters") is None
    for args in ([], ["--all", dead_id], ["not-a-batch"], ["0-1-1"]):
        code, _, err = await vaxline("deadletters", "replay", *args)
        assert code == 2 and err.startswith("vaxline: "), args


async def test_a_failed_certify_handoff_is_kept_and_handed_on_again(make_settings, db, redis,
                                                                    vaxline):  # noqa: F811
    settings = make_settings()
    people = [dose(n, record_prefix="CH") for n in range(3)]
    nid = people[1]["national_id"]  # digits only: safe in the statement
    await db.execute(f"ALTER TABLE certificates ADD CONSTRAINT a_bug CHECK (national_id <> '{nid}')")
    async with running_stack(settings, workers=1, certifiers=1) as stack:
        _, token = await stack.site("DL-3")
        assert (await stack.post(token, {"doses": people})).status == 202
        await wait_until(lambda: db.fetchval("SELECT count(*) > 0 FROM failed_handoffs"), message="a failed handoff")
        assert await db.fetchval("SELECT count(*) FROM certificates WHERE national_id = $1",
                                 people[1]["national_id"]) == 0
        [handoff] = (await listed(vaxline))["failed_handoffs"]
        assert handoff["persons"] >= 1 and "a_bug" in handoff["error"]
        await reconciled(vaxline)  # awaiting certification: explained

        await db.execute("ALTER TABLE certificates DROP CONSTRAINT a_bug")
        code, out, err = await vaxline("deadletters", "replay", "--certify")
        assert code == 0 and "to the certifiers again" in out, err
        await wait_until(lambda: db.fetchval("SELECT count(DISTINCT national_id) = 3 FROM certificates"
                                             " WHERE status = 'current'"), message="every person certified")
    totals = await reconciled(vaxline)
    assert totals["certified"] == 3 and totals["pending_certification"] == 0
    assert (await listed(vaxline))["failed_handoffs"] == []
    code, out, _ = await vaxline("deadletters", "replay", "--certify")
    assert code == 0 and out == ""  # nothing left to hand on
    assert await db.fetchval("SELECT count(*) FROM audit_log WHERE action = 'failed_handoff_replayed'") == 1
