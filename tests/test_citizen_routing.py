"""Correction requests reach only the person and the sites that hold their records (issue 16, item 3).

Covers: the code goes to the phone a site recorded for the person, never to the phone the request names;
a person with no phone on record gets no code and goes to the province's queue for an identity check in
person; wrong dose details naming a site that holds no record of the person go to the province's queue;
a site's approval of personal details is refused while another site holds records of the person, and the
operator's changes them all; the proper path (own phone, the site that holds the record) in test_citizen.
"""

from __future__ import annotations

import json

from storage import tokens
from tests.factory import dose
from tests.stack import running_stack
from tests.test_citizen import auth, claim, file, filed_and_confirmed, on_record


def outbox(settings) -> list[dict]:
    path = settings.data_dir / "otp-outbox.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def test_the_code_goes_to_the_phone_on_record_not_the_one_named(settings, db):
    person = dose(70, phone="0911111111", administered_at="2021-07-01T09:00:00+07:00")
    async with running_stack(settings) as stack:
        _, token = await stack.site("TYT-70")
        await on_record(stack, token, person)
        body = {**claim(person, site="TYT-70", date="2021-08-05", vaccine="EU/1/20/1528"), "phone": "0999999999"}
        response = await file(stack, body)
        filed = await response.json()
    identity = await db.fetchval("SELECT identity FROM correction_requests WHERE request_id = $1", filed["request_id"])
    assert response.status == 202 and identity == "code"
    sent = [line for line in outbox(settings) if line["request_id"] == filed["request_id"]]
    assert [line["phone"] for line in sent] == ["0911111111"]


async def test_no_phone_on_record_goes_to_the_province_for_a_check_in_person(settings, db):
    recorded = dose(71, phone=None)
    never_recorded = dose(72)
    async with running_stack(settings) as stack:
        _, token = await stack.site("TYT-71", province=1)
        province = await tokens.issue(db, tokens.PROVINCE, 1)
        await on_record(stack, token, recorded)
        answers = [await (await file(stack, claim(person, site="TYT-71", date="2021-08-05",
                                                  vaccine="EU/1/20/1528"))).json()
                   for person in (recorded, never_recorded)]
        queue = await (await stack.client.get("/v1/corrections", headers=auth(province))).json()
        site_queue = await (await stack.client.get("/v1/corrections", headers=auth(token))).json()
    routed = await db.fetch("SELECT status, identity FROM correction_requests ORDER BY created_at")
    assert [(r["status"], r["identity"]) for r in routed] == [("submitted", "in_person")] * 2
    assert outbox(settings) == []  # no code went anywhere
    assert sorted((r["request_id"], r["site"], r["identity"]) for r in queue["requests"]) == sorted(
        (a["request_id"], None, "in_person") for a in answers)
    assert site_queue["total"] == 0


async def test_wrong_dose_details_at_a_site_without_the_persons_record_go_to_the_province(settings, db):
    person = dose(73, administered_at="2021-07-01T09:00:00+07:00")
    async with running_stack(settings) as stack:
        _, holder = await stack.site("TYT-73", province=1)
        _, stranger = await stack.site("TYT-74", province=1)
        await on_record(stack, holder, person)
        at_stranger = await filed_and_confirmed(stack, settings, claim(
            person, kind="wrong_dose_details", site="TYT-74", date="2021-07-01", lot="X1", record_id="R-0000073"))
        at_holder = await filed_and_confirmed(stack, settings, claim(
            person, kind="wrong_dose_details", site="TYT-73", date="2021-07-01", lot="X1",
            record_id=person["record_id"]))
        stranger_reads = await stack.client.get(f"/v1/corrections/{at_stranger}", headers=auth(stranger))
        stranger_decides = await stack.client.post(f"/v1/corrections/{at_stranger}/decision", headers=auth(stranger),
                                                   json={"decision": "approve", "message": "ok"})
    routed = {r["request_id"]: r["site_id"] for r in await db.fetch("SELECT request_id, site_id FROM correction_requests")}
    holder_id = await db.fetchval("SELECT site_id FROM sites WHERE code = 'TYT-73'")
    assert routed == {at_stranger: None, at_holder: holder_id}
    assert (stranger_reads.status, stranger_decides.status) == (403, 403)
    assert await db.fetchval("SELECT lot FROM doses WHERE record_id = $1", person["record_id"]) == "ABV5300"


async def test_personal_details_across_sites_need_the_operator(settings, db):
    person = dose(75, full_name="Tran Van Nam", administered_at="2021-07-01T09:00:00+07:00")
    elsewhere = {**person, "record_id": "B-0000075", "administered_at": "2021-09-01T09:00:00+07:00"}
    async with running_stack(settings) as stack:
        _, site_a = await stack.site("TYT-75", province=1)
        _, site_b = await stack.site("TYT-76", province=1)
        operator = await tokens.issue(db, tokens.OPERATOR, 0)
        await on_record(stack, site_a, person)
        body = {**claim(person, kind="wrong_personal_details"), "full_name": "Trần Văn Nam", "birth_date": "1960-01-01"}
        request_id = await filed_and_confirmed(stack, settings, body)  # routed to A, the only holder then
        await on_record(stack, site_b, elsewhere)  # B records the person before A decides
        by_site = await stack.client.post(f"/v1/corrections/{request_id}/decision", headers=auth(site_a),
                                          json={"decision": "approve", "message": "Đã sửa."})
        refusal = (await by_site.json())["error"]
        unchanged = await db.fetchval("SELECT count(*) FROM doses WHERE full_name = 'Tran Van Nam'")
        status_after_refusal = await db.fetchval("SELECT status FROM correction_requests")
        by_operator = await stack.client.post(f"/v1/corrections/{request_id}/decision", headers=auth(operator),
                                              json={"decision": "approve", "message": "Đã sửa."})
        applied = (await by_operator.json())["applied"]
        second = await filed_and_confirmed(stack, settings, {**body, "full_name": "Trần Văn Năm"})
    assert by_site.status == 403 and "operator" in refusal
    assert (unchanged, status_after_refusal) == (2, "submitted")
    assert by_operator.status == 200 and sorted(c["site"] for c in applied) == ["TYT-75", "TYT-76"]
    # filed now that two sites hold records: the province's queue, where the operator decides
    assert await db.fetchval("SELECT site_id FROM correction_requests WHERE request_id = $1", second) is None
