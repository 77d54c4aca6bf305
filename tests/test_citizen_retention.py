"""Uploads before confirmation are bounded (issue 16, item 5).

Covers: past the per-address limit, or with a body no room for unconfirmed requests could take, a filing
is refused from its headers alone, its 15 MiB body never sent; limits per national ID and per phone on
record (not the phone typed); an unconfirmed request and its evidence deleted at expiry by the retention
job (audited, counted in vaxline_correction_requests_expired_total), a confirmed one kept; an hour of
hostile filing on a turned clock, measured before each minute's sweep (the peak), never holds more than
the rooms' bound of rows and bytes, and never refuses a real person with a phone on record.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time

from prometheus_client import REGISTRY

from ingest.app import INGEST
from ingest.citizen import CITIZEN
from ingest.housekeeping import sweep
from tests.factory import dose, national_id
from tests.stack import running_stack
from tests.test_citizen import claim, file, filed_and_confirmed, on_record, picture

CLAIM = {"site": "TYT-90", "date": "2021-08-05", "vaccine": "EU/1/20/1528"}


async def refused_from_headers(stack, size: int = 15 * 1024 * 1024) -> bytes:
    """Send only the headers of a multipart filing of `size` bytes; the answer the server gives before the body."""
    host, port = stack.client.server.host, stack.client.server.port
    reader, writer = await asyncio.open_connection(host, port)
    writer.write((f"POST /v1/corrections HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/form-data; boundary=x\r\n"
                  f"Content-Length: {size}\r\n\r\n").encode())
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    finally:
        writer.close()


async def test_limits_are_checked_before_the_body_is_read(make_settings):
    settings = make_settings(correction_rate_limit=1)
    async with running_stack(settings) as stack:
        _, token = await stack.site("TYT-90")
        await on_record(stack, token, dose(90))
        first = await file(stack, claim(dose(90), **CLAIM))
        over_the_limit = await refused_from_headers(stack)
    assert first.status == 202
    assert over_the_limit.startswith(b"HTTP/1.1 429") and b"Retry-After" in over_the_limit


async def test_no_room_for_unconfirmed_requests_is_refused_before_the_body(make_settings):
    settings = make_settings(correction_unconfirmed_bytes=100_000, correction_in_person_bytes=100_000)
    async with running_stack(settings) as stack:
        refused = await refused_from_headers(stack, size=200_000)
    assert refused.startswith(b"HTTP/1.1 503")


async def test_limits_per_national_id_and_per_phone_on_record(make_settings):
    settings = make_settings(correction_rate_limit=100, correction_person_limit=2, correction_phone_limit=3)
    family = [dose(n, phone="0900000001") for n in range(92, 96)]  # one phone on record for four people
    async with running_stack(settings) as stack:
        _, token = await stack.site("TYT-90")
        await on_record(stack, token, *family, dose(96, phone="0900000002"), dose(97, phone="0900000003"))
        same_person = [(await file(stack, claim(dose(91), **CLAIM))).status for _ in range(3)]
        same_phone = [(await file(stack, claim(person, **CLAIM))).status for person in family]
        typed = [(await file(stack, {**claim(person, **CLAIM), "phone": "0900000001"})).status
                 for person in (dose(96), dose(97))]  # the phone typed is not where a code goes: not counted
    assert same_person == [202, 202, 429]
    assert same_phone == [202, 202, 202, 429]
    assert typed == [202, 202]


def expired_count(identity: str) -> float:
    return REGISTRY.get_sample_value("vaxline_correction_requests_expired_total", {"identity": identity}) or 0.0


async def test_unconfirmed_requests_and_their_evidence_expire(make_settings, db):
    settings = make_settings(correction_unconfirmed_ttl=600.0, correction_in_person_ttl=3600.0)
    recorded, unknown = dose(97), dose(98)
    async with running_stack(settings) as stack:
        _, token = await stack.site("TYT-90")
        await on_record(stack, token, recorded)
        image = [("a.png", picture("PNG"), "image/png")]
        unconfirmed = (await (await file(stack, claim(recorded, **CLAIM), image)).json())["request_id"]
        confirmed = await filed_and_confirmed(stack, settings, claim(recorded, **CLAIM), image)
        in_person = (await (await file(stack, claim(unknown, **CLAIM), image)).json())["request_id"]
        ingest, now = stack.client.server.app[INGEST], dt.datetime.now(dt.UTC)
        counted = expired_count("code")
        early = await sweep(ingest, now + dt.timedelta(seconds=590))
        due = await sweep(ingest, now + dt.timedelta(seconds=610))
        kept = {r["request_id"] for r in await db.fetch("SELECT request_id FROM correction_requests")}
        evidence = {r["request_id"] for r in await db.fetch("SELECT request_id FROM correction_evidence")}
        later = await sweep(ingest, now + dt.timedelta(seconds=3610))
        audit = await db.fetch("SELECT action, after FROM audit_log WHERE request_id = $1 ORDER BY entry_id",
                               unconfirmed)
    assert (early.expired, due.expired, later.expired) == (0, 1, 1)
    assert due.expired_bytes == len(picture("PNG"))
    assert kept == evidence == {confirmed, in_person}
    assert await db.fetchval("SELECT array_agg(request_id) FROM correction_requests") == [confirmed]
    assert [a["action"] for a in audit] == ["created", "expired"] and json.loads(audit[1]["after"])["deleted"]
    assert expired_count("code") == counted + 1


async def test_an_hour_of_hostile_filing_stays_bounded(make_settings, db):
    """A filer from many addresses (the address limit out of the way), for one hour of a turned clock: six
    requests a minute, each with an image, for made-up people (a missing dose: checks in person in one
    province; wrong details: records that do not exist), while a real person with a phone on record files
    each minute. Rows and bytes are read before each sweep: the peak."""
    room, room_bytes, ttl = 30, 400_000, 600.0
    settings = make_settings(correction_rate_limit=10_000, correction_unconfirmed_max=room,
                             correction_unconfirmed_bytes=room_bytes, correction_in_person_max=room,
                             correction_in_person_bytes=room_bytes, correction_no_record_max=room,
                             correction_unconfirmed_ttl=ttl, correction_in_person_ttl=ttl,
                             correction_housekeeping_interval=3600.0)
    image = [("x.png", picture("PNG", size=160), "image/png")]
    people = [dose(200 + n, phone=f"0913{n:06d}") for n in range(60)]
    start = time.time()
    answers: dict[int, int] = {}
    legit: list[int] = []
    peak_rows = peak_bytes = 0
    async with running_stack(settings) as stack:
        _, token = await stack.site("TYT-90")
        await on_record(stack, token, *people)
        app = stack.client.server.app
        for minute in range(60):
            now = start + 60 * minute
            app[CITIZEN]["clock"] = lambda now=now: now
            for i in range(6):
                made_up = {**dose(100 + minute * 6 + i), "national_id": national_id(10_000 + minute * 6 + i)}
                kind = "missing_dose" if i % 2 else "wrong_dose_details"
                body = {**claim(made_up, kind=kind, **CLAIM, record_id="R-1"), "phone": f"09{minute * 6 + i:08d}"}
                response = await file(stack, body, image)
                answers[response.status] = answers.get(response.status, 0) + 1
            legit.append((await file(stack, claim(people[minute], **CLAIM), image)).status)
            rows = await db.fetchval("SELECT count(*) FROM correction_requests")
            size = await db.fetchval("SELECT coalesce(sum(length(content)), 0) FROM correction_evidence")
            peak_rows, peak_bytes = max(peak_rows, rows), max(peak_bytes, size)
            await sweep(app[INGEST], dt.datetime.fromtimestamp(now, dt.UTC))
        audit_rows = await db.fetchval("SELECT count(*) FROM audit_log")
        admitted = await db.fetchval("SELECT count(*) FROM audit_log WHERE action = 'created'")
    # three rooms (codes, province 1's checks in person, no_record: no evidence), each bounded
    assert peak_rows <= 3 * room and peak_bytes <= 2 * room_bytes, (peak_rows, peak_bytes)
    assert legit == [202] * 60  # hostile filing never refuses a person with a phone on record
    assert answers.get(503, 0) > 0  # the in-person room of the one province filled
    # each admitted request is gone within ttl + a minute: at most 3 rooms of requests per (ttl + 60 s),
    # each leaving two small audit entries (created, expired)
    assert admitted <= 3 * room * (3600 / (ttl + 60) + 1) and audit_rows <= 2 * admitted
