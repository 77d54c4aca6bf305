"""Filing a correction request tells nobody whether a national ID is on record, and cannot block others.

Covers: in-person requests fill only their own province's room, requests about records of a made-up ID
their own (answered alike and not stored once it is full), and neither ever refuses a person with a
phone on record; the filing answer, a wrong code, a new code and the citizen's view are byte-identical
(apart from the request id) for a person with a phone on record, one without, and a made-up ID; the
limiter keys are HMACs under the server secret, and the phone counted is the one on record; migration
0005 voids the codes of requests awaiting one (sent to the phone typed) and keeps no typed phone as
where codes go; an expired request can be neither confirmed nor sent a new code.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import secrets
import time

import asyncpg

from ingest.citizen import CITIZEN
from storage import citizen as store
from storage.migrate import migration_files
from tests.conftest import _with_database
from tests.factory import dose, national_id
from tests.stack import running_stack
from tests.test_citizen import claim, file, on_record, picture
from vaxline.citizen import code_hash
from vaxline.links import keyed_digest, server_secret

CLAIM = {"site": "TYT-50", "date": "2021-08-05", "vaccine": "EU/1/20/1528"}
FIXED = float(int(time.time()))  # a clock the tests hold still


def made_up(n: int, province: int = 1) -> dict:
    """A person nobody recorded, whose CCCD names `province`."""
    return {**dose(n), "national_id": f"{province:03d}" + national_id(n)[3:]}


async def test_in_person_floods_fill_only_their_province_and_never_refuse_a_phone_on_record(make_settings, db):
    settings = make_settings(correction_rate_limit=10_000, correction_unconfirmed_max=3,
                             correction_in_person_max=3, correction_no_record_max=3)
    people = [dose(n, phone=f"09130000{n:02d}") for n in range(40, 44)]
    async with running_stack(settings) as stack:
        _, token = await stack.site("TYT-50", province=1)
        await stack.site("TYT-51", province=2)
        await on_record(stack, token, *people[:2])
        flood = [(await file(stack, claim(made_up(500 + n), **CLAIM))).status for n in range(6)]
        no_record = [(await file(stack, claim(made_up(600 + n), kind="wrong_personal_details"))).status
                     for n in range(6)]
        real = [(await file(stack, claim(person, **CLAIM))).status for person in people[:2]]
        other_province = (await file(stack, claim(made_up(700, province=2), site="TYT-51", date="2021-08-05",
                                                  vaccine="EU/1/20/1528"))).status
    rooms = {(r["identity"], r["province"]): r["n"] for r in await db.fetch(
        "SELECT identity, province, count(*) AS n FROM correction_requests GROUP BY 1, 2")}
    assert flood == [202, 202, 202, 503, 503, 503]  # province 1's room for checks in person, and no more
    assert no_record == [202] * 6  # answered alike; past their room, not stored
    assert real == [202, 202] and other_province == 202
    assert rooms == {("in_person", 1): 3, ("no_record", 1): 3, ("code", 1): 2, ("in_person", 2): 1}


async def test_a_flood_of_made_up_people_leaves_the_room_for_codes_alone(make_settings):
    settings = make_settings(correction_rate_limit=10_000, correction_unconfirmed_max=3)
    people = [dose(n, phone=f"09130000{n:02d}") for n in range(30, 33)]
    async with running_stack(settings) as stack:
        _, token = await stack.site("TYT-50", province=1)
        await on_record(stack, token, *people)
        flood = [(await file(stack, claim(made_up(900 + n), **CLAIM))).status for n in range(4)]
        flood += [(await file(stack, claim(made_up(950 + n), kind="wrong_personal_details"))).status
                  for n in range(4)]
        real = [(await file(stack, claim(person, **CLAIM))).status for person in people]
    assert flood == [202] * 8 and real == [202] * 3


async def answers_for(stack, bodies: list[dict]) -> list[list[bytes]]:
    """For each body: the filing answer, a wrong code's, a new code's and the citizen's view, with the
    request id blanked."""
    seen = []
    for body in bodies:
        filed = await file(stack, body, [("a.png", picture("PNG"), "image/png")])
        raw = await filed.read()
        request_id = (await filed.json())["request_id"]
        wrong = await stack.client.post(f"/v1/corrections/{request_id}/confirm", json={"code": "000000"})
        resent = await stack.client.post(f"/v1/corrections/{request_id}/code")
        view = await stack.client.get(f"/v1/corrections/{request_id}", params={"birth_date": body["birth_date"]})
        seen.append([f"{r.status} ".encode() + (raw if r is filed else await r.read()).replace(
            request_id.encode(), b"CR-X") for r in (filed, wrong, resent, view)])
    return seen


async def test_the_answers_do_not_tell_whether_a_phone_is_on_record(settings, db):
    with_phone, without_phone = dose(45, phone="0913000045"), dose(46, phone=None)
    async with running_stack(settings) as stack:
        _, token = await stack.site("TYT-50", province=1)
        await on_record(stack, token, with_phone, without_phone)
        stack.client.server.app[CITIZEN]["clock"] = lambda: FIXED
        bodies = [claim(person, **CLAIM) for person in (with_phone, without_phone, made_up(800))]
        bodies.append(claim(made_up(801), kind="wrong_personal_details"))
        seen = await answers_for(stack, bodies)
    identities = [r["identity"] for r in await db.fetch("SELECT identity FROM correction_requests ORDER BY created_at")]
    assert identities == ["code", "in_person", "in_person", "no_record"]
    assert seen[0][0].startswith(b"202 ") and b"identity" not in seen[0][0]
    assert all(answers == seen[0] for answers in seen[1:]), seen


async def test_limiter_keys_are_keyed_and_count_the_phone_on_record(make_settings, redis):
    settings = make_settings(correction_phone_limit=1)
    person, sibling = dose(47, phone="0913000047"), dose(48, phone="0913000047")
    async with running_stack(settings) as stack:
        _, token = await stack.site("TYT-50", province=1)
        await on_record(stack, token, person, sibling)
        first = await file(stack, {**claim(person, **CLAIM), "phone": "0999000001"})
        second = await file(stack, {**claim(sibling, **CLAIM), "phone": "0999000002"})  # the same phone on record
    keys = b" ".join([k async for k in redis.scan_iter(match=f"{settings.stream_prefix}:corrections-*")])
    secret = server_secret(settings)
    assert (first.status, second.status) == (202, 429)
    assert keyed_digest(secret, "corrections-person", person["national_id"])[:32].encode() in keys
    assert keyed_digest(secret, "corrections-phone", "0913000047")[:32].encode() in keys
    for clear in (person["national_id"], "0913000047", "0999000001"):
        assert clear.encode() not in keys
        assert hashlib.sha256(f"vaxline:person:{clear}".encode()).hexdigest()[:32].encode() not in keys
        assert hashlib.sha256(f"vaxline:phone:{clear}".encode()).hexdigest()[:32].encode() not in keys


async def test_migration_0005_voids_codes_sent_to_the_phone_typed(services):
    admin = await asyncpg.connect(services[0])
    name = f"vx_m5_{secrets.token_hex(3)}"
    await admin.execute(f"CREATE DATABASE {name}")
    conn = await asyncpg.connect(_with_database(services[0], name))
    try:
        for version, sql in migration_files():
            if version.startswith("0005"):
                break
            await conn.execute(sql)
        await conn.execute(
            "INSERT INTO correction_requests (request_id, status, kind, national_id, full_name, birth_date, phone,"
            " claimed, province, otp_hash, otp_expires_at, created_at)"
            " VALUES ('CR-OLD', 'pending_otp', 'missing_dose', '001090000001', 'A', '1990-01-01', '0999999999',"
            " '{}', 1, $1, now() + interval '10 minutes', now())", code_hash("CR-OLD", "123456"))
        await conn.execute(sql)  # 0005
        row = await conn.fetchrow("SELECT otp_phone, otp_hash, expires_at, confirm_by FROM correction_requests")
        now = dt.datetime.now(dt.UTC)
        confirmed = await store.confirm(conn, "CR-OLD", "123456", max_attempts=5, now=now)
        resent = await store.resend(conn, "CR-OLD", code_hash("CR-OLD", "654321"), now, max_sends=3, now=now)
    finally:
        await conn.close()
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()
    assert (row["otp_phone"], row["otp_hash"]) == (None, None)  # never the phone typed
    assert row["expires_at"] is not None and row["confirm_by"] is not None
    assert confirmed == "expired"  # the code sent to the phone typed no longer works
    assert resent[:2] == ("sent", None)  # nothing is sent anywhere


async def test_an_expired_request_can_be_neither_confirmed_nor_resent(make_settings, db):
    settings = make_settings(correction_unconfirmed_ttl=600.0, otp_ttl=3600.0)
    person = dose(49, phone="0913000049")
    async with running_stack(settings) as stack:
        _, token = await stack.site("TYT-50", province=1)
        await on_record(stack, token, person)
        state = stack.client.server.app[CITIZEN]
        state["clock"] = lambda: FIXED
        request_id = (await (await file(stack, claim(person, **CLAIM))).json())["request_id"]
        state["clock"] = lambda: FIXED + 601  # past the request's expiry, before the retention job runs
        code = json.loads((settings.data_dir / "otp-outbox.jsonl").read_text().splitlines()[-1])["code"]
        resent = await stack.client.post(f"/v1/corrections/{request_id}/code")
        confirmed = await stack.client.post(f"/v1/corrections/{request_id}/confirm",
                                            json={"code": code})
    assert (resent.status, confirmed.status) == (404, 404)
    assert await db.fetchval("SELECT status FROM correction_requests WHERE request_id = $1", request_id) == "pending_otp"
