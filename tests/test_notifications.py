"""Notifications: an SMS with a link, never the data, when a certificate is stored or a correction decided.

Covers: the message is the portal's link and a fixed sentence (no name, no dose, no decision); the notifier is
plugged as the OTP sender (`module:Class`, `dev`, none refused, a real one refused without an absolute public base
URL or an unknown class) and the development one appends to <data_dir>/notify-outbox.jsonl, 0600; `python -m
workers --notify` without one exits 2 naming the setting; the demo stack starts with the development notifier and a
notifier process, which sends what waits to the outbox, and a stack whose notifier cannot start starts none (the
rest runs); against real Postgres and Redis, with the persisting workers and a certifier: a person whose
certificate is superseded twice before a notifier runs gets one SMS, about the current certificate, to the phone on
record, and a later certificate its own ("updated"), never two for one certificate, and one stored while the SMS of
the one before is in flight gets its own, as an update; while the gateway fails, two notifier loops retry with
backoff (failures counted, the backlog gauge at 20, nothing sent, nothing lost) and, once it answers, each person
gets exactly one SMS; a claim is a heap-only update and a failed notification is due after its
backoff, not its lease; marking a round and putting one back read its rows by primary key, even with statistics
that say the outbox is empty; a person with no phone on record is skipped and counted; a certificate whose transaction
rolls back leaves no notification, and one that commits leaves one; a rejected correction request tells the phone
on record (not the one typed into the request) with the link to /corrections/{id}; the backoff doubles up to its
cap.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import pytest
from prometheus_client import REGISTRY

from deploy.stack import Stack, on_database
from monitoring.names import (
    NOTIFICATIONS_BACKLOG,
    NOTIFICATIONS_FAILED,
    NOTIFICATIONS_SENT,
    NOTIFICATIONS_SKIPPED,
)
from storage import certificates, notifications
from tests.conftest import wait_until
from tests.factory import dose
from tests.test_history_plans import explained, plan_nodes
from tests.stack import running_stack
from tests.test_citizen import auth, claim, filed_and_confirmed, on_record
from vaxline import notify
from workers.notify import backoff, run_notifier, send_due

BASE = "https://tiemchung.example.vn"
ROOT = Path(__file__).resolve().parent.parent


class Gateway:
    """An SMS gateway that records what it took, and fails every call while `down`."""

    def __init__(self, settings=None):
        self.settings = settings
        self.down = False
        self.failures = 0
        self.sent: list[dict] = []

    async def send(self, *, phone: str, text: str, link: str, notification_id: str) -> None:
        if self.down:
            self.failures += 1
            raise ConnectionError("the gateway is down")
        self.sent.append({"phone": phone, "text": text, "link": link, "id": notification_id})


def counted(name: str, kind: str = "certificate") -> float:
    return REGISTRY.get_sample_value(name, {"kind": kind}) or 0.0


@contextlib.asynccontextmanager
async def pool_of(settings):
    pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=2)
    try:
        yield pool
    finally:
        await pool.close()


@contextlib.asynccontextmanager
async def notifiers(settings, gateway: Gateway, count: int = 1):
    """`count` notifier loops sharing one gateway, stopped on exit."""
    stop = asyncio.Event()
    tasks = [asyncio.create_task(run_notifier(settings, consumer=f"n-{i}", stop=stop, notifier=gateway))
             for i in range(count)]
    try:
        yield
    finally:
        stop.set()
        _, pending = await asyncio.wait(tasks, timeout=30)
        assert not pending, "a notifier did not stop"
        for task in tasks:
            task.result()  # a notifier that failed fails the test


async def certified(db, national_id: str, doses: int) -> str:
    async def ready():
        return await db.fetchval("SELECT uvci FROM certificates WHERE national_id = $1 AND status = 'current'"
                                 " AND jsonb_array_length(doses) = $2", national_id, doses)
    return await wait_until(ready, message=f"a certificate with {doses} doses")


def later(person: dict, n: int, day: str) -> dict:
    return {**person, "record_id": f"{person['record_id']}-{n}", "dose_number": n,
            "administered_at": f"{day}T09:00:00+07:00"}


# -- the message and the plug-in ---------------------------------------------------------------------------------

def test_a_message_is_a_link_and_never_the_data():
    issued = notify.message(kind="certificate", event="issued", subject="URN:UVCI:01:VN:ABC", base_url=BASE + "/")
    assert issued.link == BASE + "/" and issued.text.endswith(BASE + "/") and "URN" not in issued.text
    decided = notify.message(kind="correction", event="rejected", subject="CR-" + "A" * 28, base_url=BASE)
    assert decided.link == f"{BASE}/corrections/CR-{'A' * 28}" and decided.link in decided.text
    approved = notify.message(kind="correction", event="approved", subject="CR-" + "A" * 28, base_url=BASE)
    assert approved.text == decided.text  # a shared phone does not learn the outcome from the SMS


def test_the_notifier_is_plugged_as_the_otp_sender(make_settings):
    with pytest.raises(notify.NoNotifier, match="VAXLINE_NOTIFIER"):
        notify.notifier(make_settings(notifier=""))
    assert isinstance(notify.notifier(make_settings(notifier="dev")), notify.DevelopmentNotifier)
    with pytest.raises(notify.NoNotifier, match="VAXLINE_PUBLIC_BASE_URL"):
        notify.notifier(make_settings(notifier=f"{__name__}:Gateway"))  # an SMS link cannot be relative
    chosen = notify.notifier(make_settings(notifier=f"{__name__}:Gateway", public_base_url=BASE))
    assert isinstance(chosen, Gateway) and chosen.settings.public_base_url == BASE
    with pytest.raises(notify.NoNotifier, match="no such class"):
        notify.notifier(make_settings(notifier=f"{__name__}:Nowhere", public_base_url=BASE))


def test_a_notifier_process_without_a_notifier_exits_2_naming_the_setting(settings):
    env = {**os.environ, **settings.to_env(), "VAXLINE_NOTIFIER": ""}
    ran = subprocess.run([sys.executable, "-m", "workers", "--notify"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=60, check=False)
    assert ran.returncode == 2 and "VAXLINE_NOTIFIER=module:Class" in ran.stderr and "Traceback" not in ran.stderr


async def test_the_development_outbox_is_owner_only(make_settings, tmp_path):
    notifier = notify.notifier(make_settings(notifier="dev", data_dir=tmp_path / "data"))
    previous = os.umask(0)
    try:
        await notifier.send(phone="0912345678", text="xem tại /", link="/", notification_id="N1-a")
    finally:
        os.umask(previous)
    outbox = tmp_path / "data" / "notify-outbox.jsonl"
    assert stat.S_IMODE(outbox.stat().st_mode) == 0o600
    os.chmod(outbox, 0o644)
    await notifier.send(phone="0912345678", text="xem tại /", link="/", notification_id="N2-b")
    assert stat.S_IMODE(outbox.stat().st_mode) == 0o600
    assert [json.loads(line)["notification_id"] for line in outbox.read_text().splitlines()] == ["N1-a", "N2-b"]


async def test_the_development_outbox_writes_a_rounds_messages_together_each_returning_once_written(
        make_settings, tmp_path):
    notifier = notify.notifier(make_settings(notifier="dev", data_dir=tmp_path / "data"))
    outbox = tmp_path / "data" / "notify-outbox.jsonl"
    appended = []
    write = notifier._append
    notifier._append = lambda text: (appended.append(text.count("\n")), write(text))

    async def send(n: int) -> set[str]:
        await notifier.send(phone="0912345678", text="xem tại /", link="/", notification_id=f"N{n}-a")
        return {json.loads(line)["notification_id"] for line in outbox.read_text().splitlines()}

    seen = await asyncio.gather(*(send(n) for n in range(50)))
    assert all(f"N{n}-a" in written for n, written in enumerate(seen))  # none returned before its line was written
    assert appended == [50]  # one append for the round
    await send(50)
    assert appended == [50, 1] and len(outbox.read_text().splitlines()) == 51


def test_the_backoff_doubles_up_to_its_cap():
    for attempts, full in [(1, 5.0), (2, 10.0), (3, 20.0), (9, 900.0), (30, 900.0)]:
        waits = [backoff(attempts, base=5.0, cap=900.0) for _ in range(50)]
        assert all(full / 2 <= w <= full for w in waits), (attempts, min(waits), max(waits))


_ONE_WAITING = """
INSERT INTO persons (national_id, full_name, birth_date, phone, first_administered_at, last_administered_at)
VALUES ('001090000002', 'Trần Thị B', '1990-01-01', '0912345678', now(), now());
INSERT INTO notifications (kind, national_id, subject, event)
VALUES ('certificate', '001090000002', 'URN:UVCI:01:VN:BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB', 'issued');
"""


def test_the_demo_stack_starts_a_development_notifier(tmp_path, settings, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", settings.database_url)  # the test's services: nothing embedded starts
    monkeypatch.setenv("REDIS_URL", settings.redis_url)
    monkeypatch.delenv("VAXLINE_NOTIFIER", raising=False)
    stack = Stack(tmp_path / "demo")
    try:
        assert stack.start().notifier == notify.DEVELOPMENT
        assert stack.settings.to_env()["VAXLINE_NOTIFIER"] == "dev"
        stack.start_workers(name="t", processes=0, certifiers=0, reviewers=0)
        assert set(stack.supervisor.pids()) == {"notifier-0"}
        asyncio.run(on_database(stack.settings, lambda conn: conn.execute(_ONE_WAITING)))
        outbox = tmp_path / "demo" / notify.OUTBOX
        deadline = time.monotonic() + 60
        while not (outbox.exists() and outbox.read_text()) and time.monotonic() < deadline:
            stack.supervisor.poll()
            time.sleep(0.1)  # polling the outbox the notifier process writes, against a deadline
        sent = [json.loads(line) for line in outbox.read_text().splitlines()]
        assert [(line["phone"], line["link"]) for line in sent] == [("0912345678", "/")]  # no base URL: relative
        assert stat.S_IMODE(outbox.stat().st_mode) == 0o600
    finally:
        stack.stop()
    monkeypatch.setenv("VAXLINE_NOTIFIER", f"{__name__}:Gateway")  # a real one, but no public base URL
    stack = Stack(tmp_path / "demo")
    try:
        stack.start()
        stack.start_workers(name="t", processes=0, certifiers=0, reviewers=0)
        assert stack.supervisor.pids() == {}  # none falling at start and restarted for ever: the log says why
    finally:
        stack.stop()


# -- against Postgres and Redis ----------------------------------------------------------------------------------

async def test_a_certificate_superseded_twice_before_sending_is_told_once_about_the_current_one(make_settings, db):
    settings = make_settings(public_base_url=BASE)
    person = dose(70, administered_at="2021-07-01T09:00:00+07:00")
    gateway = Gateway()
    async with running_stack(settings, certifiers=1) as stack, pool_of(settings) as pool:
        _, token = await stack.site()
        assert (await stack.post(token, {"doses": [person]})).status == 202
        first = await certified(db, person["national_id"], 1)
        assert (await stack.post(token, {"doses": [later(person, 2, "2021-08-01")]})).status == 202
        await certified(db, person["national_id"], 2)
        assert (await stack.post(token, {"doses": [later(person, 3, "2021-12-01")]})).status == 202
        third = await certified(db, person["national_id"], 3)
        waiting = await db.fetch("SELECT subject, event FROM notifications WHERE national_id = $1",
                                 person["national_id"])
        assert [tuple(r) for r in waiting] == [(third, "issued")] and third != first

        assert await send_due(pool, settings, gateway) == 1
        assert await send_due(pool, settings, gateway) == 0  # sent: nothing is due again
        assert [(s["phone"], s["link"]) for s in gateway.sent] == [(person["phone"], BASE + "/")]
        text = gateway.sent[0]["text"]
        assert person["full_name"] not in text and person["national_id"] not in text

        assert (await stack.post(token, {"doses": [later(person, 4, "2022-03-01")]})).status == 202
        fourth = await certified(db, person["national_id"], 4)
        assert await send_due(pool, settings, gateway) == 1
    rows = await db.fetch("SELECT subject, event, outcome FROM notifications WHERE national_id = $1 ORDER BY id",
                          person["national_id"])
    assert [tuple(r) for r in rows] == [(third, "issued", "sent"), (fourth, "updated", "sent")]
    assert len({s["id"] for s in gateway.sent}) == len(gateway.sent) == 2


async def test_a_notification_is_written_with_its_certificate_or_not_at_all(db):
    uvci = "URN:UVCI:01:VN:" + "A" * 32
    new = certificates.NewCertificate(uvci, "001090000001", None, None, b"f", b"v", "Nguyễn Văn A", dt.date(1990, 1, 1),
                                      "[]", "HC1:X", None)
    now = dt.datetime.now(dt.UTC)
    with pytest.raises(RuntimeError):
        async with db.transaction():
            await certificates.issue(db, [new], kid=b"k", issued_at=now, expires_at=now)
            raise RuntimeError("the transaction that stored it rolls back")
    assert await db.fetchval("SELECT count(*) FROM certificates") == 0
    assert await db.fetchval("SELECT count(*) FROM notifications") == 0
    written, _ = await certificates.issue(db, [new], kid=b"k", issued_at=now, expires_at=now)
    assert written == {"001090000001"}
    assert [tuple(r) for r in await db.fetch("SELECT subject, event FROM notifications")] == [(uvci, "issued")]


async def test_nothing_is_lost_while_the_gateway_is_down(make_settings, db):
    settings = make_settings(public_base_url=BASE, notify_backoff=0.05, notify_backoff_max=0.2, notify_interval=0.02,
                             notify_batch=7, trim_interval=0.2)  # housekeeping (the backlog gauge) every 0.5 s
    people = [dose(80 + i, phone=f"09000000{i:02d}") for i in range(20)]
    gateway = Gateway()
    gateway.down = True
    failed_before, sent_before = counted(NOTIFICATIONS_FAILED), counted(NOTIFICATIONS_SENT)
    async with running_stack(settings, certifiers=1) as stack:
        _, token = await stack.site()
        assert (await stack.post(token, {"doses": people})).status == 202
        await wait_until(lambda: db.fetchval("SELECT count(*) = 20 FROM notifications"), message="20 notifications")
        async with notifiers(settings, gateway, count=2):
            await wait_until(lambda: db.fetchval("SELECT min(attempts) >= 3 FROM notifications"),
                             message="every notification tried three times")
            assert gateway.sent == []
            assert await db.fetchval("SELECT count(*) FROM notifications WHERE sent_at IS NULL") == 20
            assert REGISTRY.get_sample_value(NOTIFICATIONS_BACKLOG) == 20
            gateway.down = False
            await wait_until(lambda: db.fetchval("SELECT count(*) = 0 FROM notifications WHERE sent_at IS NULL"),
                             message="every notification sent once the gateway answers")
            await wait_until(lambda: REGISTRY.get_sample_value(NOTIFICATIONS_BACKLOG) == 0, message="backlog 0")
    assert sorted(s["phone"] for s in gateway.sent) == sorted(p["phone"] for p in people)  # one each, none twice
    assert counted(NOTIFICATIONS_SENT) - sent_before == 20
    assert counted(NOTIFICATIONS_FAILED) - failed_before == gateway.failures >= 60


async def test_a_certificate_stored_while_the_sms_of_the_one_before_is_in_flight_gets_its_own(db):
    await db.execute(_ONE_WAITING)
    await db.execute("DELETE FROM notifications")
    nid, now = "001090000002", dt.datetime.now(dt.UTC)
    first, second = "URN:UVCI:01:VN:" + "C" * 32, "URN:UVCI:01:VN:" + "D" * 32
    await certificates.issue(db, [certificates.NewCertificate(first, nid, None, None, b"f1", b"v1", "Trần Thị B",
                                                              dt.date(1990, 1, 1), "[]", "HC1:X", None)],
                             kid=b"k", issued_at=now, expires_at=now)
    (in_flight,) = await notifications.claim(db, limit=10, lease=60)
    await certificates.issue(db, [certificates.NewCertificate(second, nid, first, b"v1", b"f2", b"v2", "Trần Thị B",
                                                              dt.date(1990, 1, 1), "[]", "HC1:Y", None)],
                             kid=b"k", issued_at=now, expires_at=now)
    assert await notifications.sent(db, [(in_flight, "sent")]) == 0  # the row tells of the second one now
    (again,) = await notifications.claim(db, limit=10, lease=60)  # due at once, not after the lease
    assert (again.id, again.subject, again.event, again.attempts) == (in_flight.id, second, "updated", 1)
    assert await notifications.sent(db, [(again, "sent")]) == 1
    assert await notifications.claim(db, limit=10, lease=60) == []


class SlowFor(Gateway):
    """Takes every message at once but one phone's, which it holds until the test ends (a gateway that hangs)."""

    def __init__(self, phone: str):
        super().__init__()
        self.phone, self.released, self.cancelled = phone, asyncio.Event(), 0

    async def send(self, *, phone: str, text: str, link: str, notification_id: str) -> None:
        if phone == self.phone:
            try:
                await self.released.wait()
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        await super().send(phone=phone, text=text, link=link, notification_id=notification_id)


async def test_a_gateway_call_past_half_the_lease_is_cancelled_and_retried_and_the_rest_of_its_round_is_sent(
        make_settings, db):
    settings = make_settings(public_base_url=BASE, notify_lease=1.0, notify_backoff=30, notify_backoff_max=30)
    await db.execute(
        "INSERT INTO persons (national_id, full_name, birth_date, phone, first_administered_at, last_administered_at)"
        " SELECT '00109000001' || i, 'Trần Thị B', '1990-01-01', '091234567' || i, now(), now()"
        " FROM generate_series(0, 2) i;"
        " INSERT INTO notifications (kind, national_id, subject, event)"
        " SELECT 'certificate', '00109000001' || i, 'URN:UVCI:01:VN:' || repeat(chr(65 + i), 32), 'issued'"
        " FROM generate_series(0, 2) i")
    gateway = SlowFor("0912345671")
    failed_before, sent_before = counted(NOTIFICATIONS_FAILED), counted(NOTIFICATIONS_SENT)
    async with pool_of(settings) as pool:
        started = time.monotonic()
        assert await send_due(pool, settings, gateway) == 3
        took = time.monotonic() - started
    assert 0.5 <= took < 5, f"the round took {took:.2f} s; its calls have half the 1 s lease"
    assert gateway.cancelled == 1 and sorted(s["phone"] for s in gateway.sent) == ["0912345670", "0912345672"]
    assert counted(NOTIFICATIONS_FAILED) - failed_before == 1 and counted(NOTIFICATIONS_SENT) - sent_before == 2
    rows = {r["national_id"]: r for r in await db.fetch(
        "SELECT national_id, sent_at IS NOT NULL AS sent, due_at > now() + interval '10 seconds' AS backing_off,"
        " leased_until = '-infinity' AS released FROM notifications")}
    assert [tuple(rows[f"00109000001{i}"][1:3]) for i in range(3)] == [(True, False), (False, True), (True, False)]
    assert rows["001090000011"]["released"]  # due after its backoff, not after the lease


async def test_sent_notifications_are_forgotten_after_their_retention(db):
    await db.execute(_ONE_WAITING)
    await db.execute("INSERT INTO notifications (kind, national_id, subject, event, sent_at, outcome) VALUES"
                     " ('certificate', '001090000002', 'old', 'issued', now() - interval '31 days', 'sent'),"
                     " ('certificate', '001090000002', 'recent', 'updated', now() - interval '29 days', 'sent')")
    assert await notifications.purge(db, older_than=30 * 86400.0) == 1
    left = await db.fetch("SELECT subject, sent_at IS NULL AS waiting FROM notifications ORDER BY id")
    assert [tuple(r) for r in left] == [("URN:UVCI:01:VN:" + "B" * 32, True), ("recent", False)]
    assert await notifications.backlog(db) == 1


async def test_a_person_with_no_phone_on_record_is_skipped(make_settings, db):
    settings = make_settings(public_base_url=BASE)
    person = dose(90, phone=None)
    gateway = Gateway()
    skipped_before = counted(NOTIFICATIONS_SKIPPED)
    async with running_stack(settings, certifiers=1) as stack, pool_of(settings) as pool:
        _, token = await stack.site()
        assert (await stack.post(token, {"doses": [person]})).status == 202
        await certified(db, person["national_id"], 1)
        assert await send_due(pool, settings, gateway) == 1
    assert gateway.sent == [] and counted(NOTIFICATIONS_SKIPPED) - skipped_before == 1
    assert await db.fetchval("SELECT outcome FROM notifications WHERE national_id = $1", person["national_id"]) \
        == "no_phone"


async def test_a_decided_correction_tells_the_phone_on_record_with_its_link(make_settings, db):
    settings = make_settings(public_base_url=BASE)
    person = dose(95, administered_at="2021-07-01T09:00:00+07:00")
    gateway = Gateway()
    async with running_stack(settings) as stack, pool_of(settings) as pool:
        _, token = await stack.site("TYT-95")
        await on_record(stack, token, person)
        body = claim(person, site="TYT-95", date="2021-08-05", vaccine="EU/1/21/1529", lot="ABV5300", dose_number=2)
        request_id = await filed_and_confirmed(stack, settings, body)
        assert await db.fetchval("SELECT count(*) FROM notifications WHERE kind = 'correction'") == 0  # not decided
        decided = await stack.client.post(f"/v1/corrections/{request_id}/decision", headers=auth(token),
                                          json={"decision": "reject", "message": "Không có hồ sơ."})
        assert decided.status == 200, await decided.text()
        assert await send_due(pool, settings, gateway) == 1
    assert body["phone"] != person["phone"]
    assert [(s["phone"], s["link"]) for s in gateway.sent] == [(person["phone"], f"{BASE}/corrections/{request_id}")]
    assert "Không có hồ sơ" not in gateway.sent[0]["text"]


async def test_a_claim_is_a_heap_only_update_and_a_failed_one_is_due_after_its_backoff_not_its_lease(db):
    """The lease has a column no index holds (migration 0010): claiming writes no index entry. A failure ends the
    lease, so the retry waits for the backoff only."""
    await db.execute(_ONE_WAITING)
    async with db.transaction():
        (claimed,) = await notifications.claim(db, limit=10, lease=60)
        assert await db.fetchval("SELECT pg_stat_get_xact_tuples_hot_updated('notifications'::regclass)") == 1
    assert await notifications.claim(db, limit=10, lease=60) == []  # leased: nobody else takes it
    await notifications.failed(db, [(claimed, 0.0)])
    (again,) = await notifications.claim(db, limit=10, lease=60)
    assert (again.id, again.attempts) == (claimed.id, 2)


async def test_a_rounds_mark_and_retry_read_its_rows_by_primary_key_whatever_the_statistics_say(db):
    """Statistics taken while every notification was sent, then a burst: the planner, told the outbox is empty,
    read a round's ids through the due index (its predicate is `sent_at IS NULL`), scanning the whole backlog
    for every row of the round. Marking a round and putting one back read only its rows, by primary key."""
    backlog, size = 20_000, 100
    await db.execute("INSERT INTO notifications (kind, national_id, subject, event)"
                     " SELECT 'certificate', 'P' || g, 'URN:UVCI:01:VN:' || md5(g::text), 'issued'"
                     " FROM generate_series(1, $1) g", backlog)
    await db.execute("UPDATE notifications SET sent_at = now(), outcome = 'sent'")
    await db.execute("ANALYZE notifications")
    await db.execute("UPDATE notifications SET sent_at = NULL, outcome = NULL")  # the burst the statistics missed
    rows = await db.fetch("SELECT id, kind, subject, event FROM notifications ORDER BY id LIMIT $1", 2 * size)
    told = [notifications.Notification(r["id"], r["kind"], r["subject"], r["event"], 1, None) for r in rows]
    mark, retry = told[:size], told[size:]

    for executed in (await explained(db, notifications._SENT, [n.id for n in mark], [n.subject for n in mark],
                                     ["sent"] * size),
                     await explained(db, notifications._FAILED, [n.id for n in retry], [30.0] * size)):
        assert {node.get("Index Name") for node in plan_nodes(executed)} - {None} == {"notifications_pkey"}
        assert max(node["Shared Hit Blocks"] + node["Shared Read Blocks"] for node in plan_nodes(executed)) < 50 * size
    assert await db.fetchval("SELECT count(*) FROM notifications WHERE sent_at IS NOT NULL") == size
    assert await db.fetchval("SELECT count(*) FROM notifications WHERE due_at > now()") == size


def test_a_backlog_gauge_is_counted_less_often_when_counting_it_is_slow():
    """workers.loop.count_pause: a count(*) grows with the backlog it counts; spaced by its own duration, it
    never takes more than GAUGE_SHARE of a Postgres backend, and a quick one keeps the usual pace."""
    from workers.loop import GAUGE_SHARE, count_pause

    assert count_pause(0.004, 5.0) == 5.0
    assert count_pause(0.0, 0.5) == 0.5
    assert count_pause(0.3, 5.0) == pytest.approx(0.3 / GAUGE_SHARE)
    assert 0.3 / count_pause(0.3, 5.0) <= GAUGE_SHARE
