"""Citizen correction requests: filed with evidence, confirmed by a one-time code, routed, decided by the
site, applied through the pipeline to a reissued certificate, every step in the audit log.

Covers: a missing dose from request (JSON and images) to confirmation, the site's queue, approval, and a
reissued certificate (new UVCI, the old one revoked by it), with the citizen's view (and its 404 for a wrong
birth date) and the audit log in order; wrong personal details fixed on every record and the certificate
renamed; an expired code (410); wrong guesses locking the code (422, 422, 429, then 429 for the right code),
a new code starting afresh and the old one dead; a code working once; disguised, truncated, oversized and
too many images refused, an image judged by its bytes, not its name; another site and a province token
cannot decide (403), a province reads its queue, a decided request stays decided (409); an unknown place
routed to the province's queue, approved by the operator naming the site; the audit log refusing UPDATE,
DELETE and TRUNCATE.
"""

from __future__ import annotations

import datetime as dt
import io
import json

import aiohttp
import asyncpg
import pytest
from PIL import Image

from storage import tokens
from tests.conftest import wait_until
from tests.factory import dose
from tests.stack import running_stack
from vaxline.citizen import image_type

VN = dt.timezone(dt.timedelta(hours=7))


def auth(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def picture(fmt: str, size: int = 64) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (size, size), (200, 30, 30)).save(out, format=fmt)
    return out.getvalue()


def last_code(settings, request_id: str) -> str:
    lines = (settings.data_dir / "otp-outbox.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if json.loads(line)["request_id"] == request_id][-1]["code"]


def claim(person: dict, kind: str = "missing_dose", **dose_fields) -> dict:
    body = {"national_id": person["national_id"], "full_name": person["full_name"], "birth_date": person["birth_date"],
            "phone": "0987654321", "kind": kind, "note": "mũi 2 tiêm ở trạm, chưa thấy trên sổ sức khỏe"}
    if dose_fields:
        body["dose"] = dose_fields
    return body


async def file(stack, body: dict, images: list[tuple[str, bytes, str]] = ()):
    """POST /v1/corrections: JSON, or multipart when there are images (name, bytes, declared type)."""
    if not images:
        return await stack.client.post("/v1/corrections", json=body)
    form = aiohttp.FormData()
    form.add_field("request", json.dumps(body), content_type="application/json")
    for name, content, declared in images:
        form.add_field("evidence", content, filename=name, content_type=declared)
    return await stack.client.post("/v1/corrections", data=form)


async def on_record(stack, token: str, *people: dict) -> None:
    """The people recorded by the token's site and persisted: their phones are on record."""
    assert (await stack.post(token, {"doses": list(people)})).status == 202
    conn = await asyncpg.connect(stack.settings.database_url)
    try:
        ids = [p["record_id"] for p in people]
        await wait_until(lambda: conn.fetchval("SELECT count(*) = $2 FROM doses WHERE record_id = ANY($1)",
                                               ids, len(ids)), message="the records persisted")
    finally:
        await conn.close()


async def filed_and_confirmed(stack, settings, body, images=()) -> str:
    response = await file(stack, body, images)
    assert response.status == 202, await response.text()
    request_id = (await response.json())["request_id"]
    confirmed = await stack.client.post(f"/v1/corrections/{request_id}/confirm",
                                        json={"code": last_code(settings, request_id)})
    assert confirmed.status == 200, await confirmed.text()
    return request_id


async def current_certificate(db, national_id: str, doses: int):
    async def ready():
        row = await db.fetchrow("SELECT * FROM certificates WHERE national_id = $1 AND status = 'current'", national_id)
        return row if row and len(json.loads(row["doses"])) == doses else None
    return await wait_until(ready, message=f"a certificate with {doses} doses")


async def test_a_missing_dose_goes_from_request_to_a_reissued_certificate(settings, db):
    person = dose(60, administered_at="2021-07-01T09:00:00+07:00")
    async with running_stack(settings, certifiers=1, reviewers=1) as stack:
        _, token = await stack.site("TYT-01")
        assert (await stack.post(token, {"doses": [person]})).status == 202
        first = await current_certificate(db, person["national_id"], 1)

        body = claim(person, site="TYT-01", date="2021-08-05", vaccine="EU/1/21/1529", lot="ABV5300", dose_number=2)
        request_id = await filed_and_confirmed(stack, settings, body, [("giay-xac-nhan.jpg", picture("JPEG"), "image/jpeg"),
                                                                       ("anh.png", picture("PNG"), "image/png")])
        queue = await (await stack.client.get("/v1/corrections", headers=auth(token))).json()
        assert [r["request_id"] for r in queue["requests"]] == [request_id]
        seen = await (await stack.client.get(f"/v1/corrections/{request_id}", headers=auth(token))).json()
        image = await stack.client.get(seen["evidence"][1]["url"], headers=auth(token))
        assert image.content_type == "image/png" and image_type(await image.read()) == "image/png"

        decided = await stack.client.post(f"/v1/corrections/{request_id}/decision", headers=auth(token),
                                          json={"decision": "approve", "message": "Đã bổ sung mũi 2."})
        assert decided.status == 200, await decided.text()
        applied = (await decided.json())["applied"]
        second = await current_certificate(db, person["national_id"], 2)
        citizen = await (await stack.client.get(f"/v1/corrections/{request_id}",
                                                params={"birth_date": person["birth_date"]})).json()
        wrong_birth = await stack.client.get(f"/v1/corrections/{request_id}", params={"birth_date": "1900-01-01"})
        audit = await (await stack.client.get(f"/v1/corrections/{request_id}/audit", headers=auth(token))).json()
    assert [(c["op"], c["record_id"]) for c in applied] == [("insert", request_id)]
    assert second["uvci"] != first["uvci"]
    revoked = await db.fetchrow("SELECT status, superseded_by FROM certificates WHERE uvci = $1", first["uvci"])
    assert (revoked["status"], revoked["superseded_by"]) == ("revoked", second["uvci"])
    assert (citizen["status"], citizen["message"]) == ("approved", "Đã bổ sung mũi 2.") and wrong_birth.status == 404
    assert [e["action"] for e in audit["entries"]] == ["created", "confirmed", "decision:approved", "applied:insert"]
    assert audit["entries"][2]["actor"] == "site:TYT-01" and audit["entries"][3]["after"]["lot"] == "ABV5300"
    assert audit["entries"][3]["after"]["batch_id"] == applied[0]["batch_id"] is not None
    assert len(seen["evidence"]) == 2 and seen["status"] == "submitted"


async def test_wrong_personal_details_are_fixed_on_every_record_and_the_certificate_renamed(settings, db):
    person = dose(61, full_name="Nguyen Thi Anh", administered_at="2021-07-01T09:00:00+07:00")
    async with running_stack(settings, certifiers=1, reviewers=1) as stack:
        _, token = await stack.site("TYT-02")
        await stack.post(token, {"doses": [person, {**person, "record_id": "R-2",
                                                    "administered_at": "2021-08-01T09:00:00+07:00"}]})
        old = await current_certificate(db, person["national_id"], 2)
        body = {**claim(person, kind="wrong_personal_details"), "full_name": "Nguyễn Thị Ánh"}
        request_id = await filed_and_confirmed(stack, settings, body)
        decided = await stack.client.post(f"/v1/corrections/{request_id}/decision", headers=auth(token),
                                          json={"decision": "approve", "message": "Đã sửa họ tên."})
        assert decided.status == 200, await decided.text()

        async def renamed():
            row = await db.fetchrow("SELECT * FROM certificates WHERE national_id = $1 AND status = 'current'",
                                    person["national_id"])
            return row if row and row["full_name"] == "Nguyễn Thị Ánh" else None
        new = await wait_until(renamed, message="the renamed certificate")
        audit = await (await stack.client.get(f"/v1/corrections/{request_id}/audit", headers=auth(token))).json()
    assert new["uvci"] != old["uvci"]
    assert [e["action"] for e in audit["entries"]][-2:] == ["applied:replace", "applied:replace"]
    assert {e["before"]["full_name"] for e in audit["entries"][-2:]} == {"Nguyen Thi Anh"}
    assert await db.fetchval("SELECT count(*) FROM doses WHERE full_name = 'Nguyễn Thị Ánh'") == 2


async def confirm(stack, request_id, code) -> int:
    return (await stack.client.post(f"/v1/corrections/{request_id}/confirm", json={"code": code})).status


async def new_request(stack, person, site, token=None) -> str:
    if token is not None:
        await on_record(stack, token, person)
    response = await file(stack, claim(person, site=site, date="2021-08-05", vaccine="EU/1/20/1528"))
    assert response.status == 202, await response.text()
    return (await response.json())["request_id"]


async def test_an_expired_code_is_refused(make_settings):
    settings = make_settings(otp_ttl=0.0)  # expired the moment it is sent
    async with running_stack(settings) as stack:
        _, token = await stack.site("TYT-03")
        request_id = await new_request(stack, dose(62), "TYT-03", token)
        assert await confirm(stack, request_id, last_code(settings, request_id)) == 410


async def test_guessing_locks_the_code_and_a_new_code_starts_afresh(make_settings, db):
    settings = make_settings(otp_max_attempts=3, otp_max_sends=2)
    async with running_stack(settings) as stack:
        _, token = await stack.site("TYT-03")
        request_id = await new_request(stack, dose(62), "TYT-03", token)
        right = last_code(settings, request_id)
        wrong = f"{(int(right) + 1) % 1_000_000:06d}"
        guesses = [await confirm(stack, request_id, wrong) for _ in range(3)]
        after_lock = await confirm(stack, request_id, right)
        resent = (await stack.client.post(f"/v1/corrections/{request_id}/code")).status
        stale = await confirm(stack, request_id, right)  # the old code stopped working
        fresh = await confirm(stack, request_id, last_code(settings, request_id))
        exhausted = (await stack.client.post(f"/v1/corrections/{await new_request(stack, dose(63), 'TYT-03', token)}/code")
                     ).status
    assert guesses == [422, 422, 429] and after_lock == 429
    assert (resent, fresh) == (202, 200) and (stale == 422 or right == last_code(settings, request_id))
    assert exhausted == 202  # one resend of two allowed sends
    hashes = await db.fetch("SELECT otp_hash FROM correction_requests WHERE otp_hash IS NOT NULL")
    assert all(len(h["otp_hash"]) == 32 for h in hashes)


async def test_a_code_confirms_once(settings, db):
    person = dose(63)
    async with running_stack(settings) as stack:
        _, token = await stack.site("TYT-04")
        await on_record(stack, token, person)
        response = await file(stack, claim(person, site="TYT-04", date="2021-08-05", vaccine="EU/1/20/1528"))
        request_id = (await response.json())["request_id"]
        code = last_code(settings, request_id)
        first = await stack.client.post(f"/v1/corrections/{request_id}/confirm", json={"code": code})
        again = await stack.client.post(f"/v1/corrections/{request_id}/confirm", json={"code": code})
        resend = await stack.client.post(f"/v1/corrections/{request_id}/code")
    assert (first.status, again.status, resend.status) == (200, 409, 409)
    assert await db.fetchval("SELECT otp_hash FROM correction_requests") is None


async def test_oversized_disguised_and_too_many_uploads_are_refused(settings, db):
    person = dose(64)
    body = claim(person, site="TYT-05", date="2021-08-05", vaccine="EU/1/20/1528")
    jpeg = picture("JPEG")
    async with running_stack(settings) as stack:
        await stack.site("TYT-05")
        answers = {
            "disguised": await file(stack, body, [("photo.jpg", b"%PDF-1.4 not an image at all", "image/jpeg")]),
            "truncated": await file(stack, body, [("photo.jpg", jpeg[: len(jpeg) // 2], "image/jpeg")]),
            "oversized": await file(stack, body, [("big.png", b"\x89PNG\r\n\x1a\n" + b"\0" * (5 * 1024 * 1024), "image/png")]),
            "four": await file(stack, body, [(f"{i}.jpg", jpeg, "image/jpeg") for i in range(4)]),
            "named png, is jpeg": await file(stack, body, [("photo.png", jpeg, "image/png")]),
            "no dose": await file(stack, claim(person)),
            "bad kind": await file(stack, {**body, "kind": "other"}),
        }
        statuses = {name: response.status for name, response in answers.items()}
        reasons = {name: (await response.json()).get("error", "") for name, response in answers.items()}
    assert statuses == {"disguised": 422, "truncated": 422, "oversized": 413, "four": 422,
                        "named png, is jpeg": 202, "no dose": 422, "bad kind": 422}
    assert "JPEG or PNG" in reasons["disguised"] and "kind" in reasons["bad kind"] and "dose" in reasons["no dose"]
    kept = await db.fetchval("SELECT content_type FROM correction_evidence")
    assert kept == "image/jpeg"  # judged by its bytes, not by its name or declared type


async def test_sites_decide_only_their_own_requests_and_provinces_only_read(settings, db):
    person = dose(65)
    async with running_stack(settings) as stack:
        _, mine = await stack.site("HN-TYT", province=1)
        _, other = await stack.site("HN-OTHER", province=1)
        province = await tokens.issue(db, tokens.PROVINCE, 1)
        other_province = await tokens.issue(db, tokens.PROVINCE, 79)
        await on_record(stack, mine, person)
        request_id = await filed_and_confirmed(stack, settings, claim(person, site="HN-TYT", date="2021-08-05",
                                                                    vaccine="EU/1/20/1528"))
        decide = {"decision": "reject", "message": "Không có hồ sơ."}
        statuses = {
            "other site decides": (await stack.client.post(f"/v1/corrections/{request_id}/decision",
                                                           headers=auth(other), json=decide)).status,
            "province decides": (await stack.client.post(f"/v1/corrections/{request_id}/decision",
                                                         headers=auth(province), json=decide)).status,
            "other site reads": (await stack.client.get(f"/v1/corrections/{request_id}", headers=auth(other))).status,
            "other province reads": (await stack.client.get(f"/v1/corrections/{request_id}",
                                                            headers=auth(other_province))).status,
            "province reads": (await stack.client.get(f"/v1/corrections/{request_id}", headers=auth(province))).status,
        }
        other_queue = await (await stack.client.get("/v1/corrections", headers=auth(other))).json()
        province_queue = await (await stack.client.get("/v1/corrections", headers=auth(province))).json()
        rejected = await stack.client.post(f"/v1/corrections/{request_id}/decision", headers=auth(mine), json=decide)
        rejected_body = await rejected.json()
        again = await stack.client.post(f"/v1/corrections/{request_id}/decision", headers=auth(mine), json=decide)
    assert statuses == {"other site decides": 403, "province decides": 403, "other site reads": 403,
                        "other province reads": 403, "province reads": 200}
    assert other_queue["total"] == 0 and province_queue["total"] == 1
    assert rejected.status == 200 and rejected_body["status"] == "rejected" and again.status == 409


async def test_an_unknown_place_goes_to_the_province_queue_and_the_operator_names_the_site(settings, db):
    person = dose(66)
    async with running_stack(settings, reviewers=1) as stack:
        site_id, site_token = await stack.site("SG-TYT", province=79)
        await on_record(stack, site_token, person)
        operator = await tokens.issue(db, tokens.OPERATOR, 0)
        province = await tokens.issue(db, tokens.PROVINCE, 79)
        body = claim(person, place="Đội tiêm lưu động Quận 1", province=79, date="2021-08-05",
                     vaccine="EU/1/20/1528", lot="FF0843", dose_number=1)
        request_id = await filed_and_confirmed(stack, settings, body)
        queued = await (await stack.client.get("/v1/corrections", headers=auth(province))).json()
        without_site = await stack.client.post(f"/v1/corrections/{request_id}/decision", headers=auth(operator),
                                               json={"decision": "approve", "message": "ok"})
        without_site_error = (await without_site.json())["error"]
        approved = await stack.client.post(f"/v1/corrections/{request_id}/decision", headers=auth(operator),
                                           json={"decision": "approve", "message": "Đã ghi nhận.", "site": "SG-TYT"})
        assert approved.status == 200, await approved.text()
        await wait_until(lambda: db.fetchval("SELECT count(*) FROM doses WHERE record_id = $1", request_id),
                         message="the dose persisted")
    assert [(r["request_id"], r["site"], r["province"]) for r in queued["requests"]] == [(request_id, None, 79)]
    assert without_site.status == 422 and "site" in without_site_error
    assert await db.fetchval("SELECT site_id FROM doses WHERE record_id = $1", request_id) == site_id


async def test_the_audit_log_refuses_changes(db):
    await db.execute("INSERT INTO audit_log (actor, action) VALUES ('test', 'written')")
    for statement in ("UPDATE audit_log SET actor = 'someone else'", "DELETE FROM audit_log",
                      "TRUNCATE audit_log"):
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await db.execute(statement)
    assert await db.fetchval("SELECT actor FROM audit_log") == "test"


def test_images_are_judged_by_their_bytes():
    assert image_type(picture("JPEG")) == "image/jpeg" and image_type(picture("PNG")) == "image/png"
    assert image_type(b"GIF89a....") is None and image_type(b"") is None
    assert image_type(picture("PNG")[:-20]) is None  # cut short
