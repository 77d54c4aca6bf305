"""The certificate routes of ingest, end to end: doses posted, persisted and certified by the stack,
then read as JSON and QR, looked up, verified, and listed for verifiers (trust list, revocations).

Covers: the certificate JSON, SVG and PNG (the PNG decoded back to the same `HC1:` with zxing-cpp), content
negotiation; lookup found / wrong birth date / unknown ID (byte-identical 404s, both held to the floor), the
rate limit (429 with `Retry-After`) and its failing closed (503); verify valid, superseded (`revocation`)
and garbage; trust list and revocations; no UVCI or national ID in metrics.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import time
from io import BytesIO

import PIL.Image
import pytest
import redis.asyncio as aioredis
import zxingcpp

from ingest.app import INGEST
from ingest.certificates import CERTIFICATES, negotiated_format
from monitoring import metrics
from tests.conftest import wait_until
from tests.factory import dose
from tests.stack import running_stack
from vaxline.dcc.keys import KeyStore
from vaxline.dcc.trust import uvci_hash

VN = dt.timezone(dt.timedelta(hours=7))


@pytest.fixture
def signing_key(settings):
    """The deployment's signing key, made before the stack starts."""
    return KeyStore(settings.signing_keys_dir).create()


def at(day: str) -> str:
    return dt.datetime.fromisoformat(day).replace(hour=9, tzinfo=VN).isoformat()


async def current_uvci(db, national_id: str, *, doses: int) -> str:
    """The person's current certificate, once it states `doses` doses."""
    async def ready():
        row = await db.fetchrow("SELECT uvci, doses FROM certificates WHERE national_id = $1 AND status = 'current'",
                                national_id)
        return row["uvci"] if row and len(json.loads(row["doses"])) == doses else None
    return await wait_until(ready, message=f"a certificate of {doses} doses")


async def certified(stack, db, n: int = 1) -> tuple[dict, str]:
    """Person n's first dose and the UVCI of the certificate stating it and a second one, a day later."""
    _, token = await stack.site()
    first = dose(n, administered_at=at("2021-08-14"))
    second = dose(n, record_id=f"R-second-{n}", dose_number=2, administered_at=at("2021-11-01"))
    assert (await stack.post(token, {"doses": [first, second]})).status == 202
    return first, await current_uvci(db, first["national_id"], doses=2)


async def get(stack, path: str, **kwargs):
    response = await stack.client.get(path, **kwargs)
    return response, await response.read()


def lookups(stack) -> dict[str, float]:
    registry = stack.client.app[INGEST].registry
    return {result: registry.get_sample_value(metrics.CERTIFICATE_LOOKUPS, {"result": result}) or 0.0
            for result in ("found", "not_found", "rate_limited")}


async def timed_lookup(stack, national_id: str, birth_date: str):
    started = time.monotonic()
    response = await stack.client.post("/v1/certificates/lookup",
                                       json={"national_id": national_id, "birth_date": birth_date})
    body = await response.read()
    return response, body, time.monotonic() - started


async def test_a_certificate_reads_as_json_and_as_a_qr_code_of_its_hc1(settings, db, signing_key):
    async with running_stack(settings, certifiers=1) as stack:
        person, uvci = await certified(stack, db)
        response, body = await get(stack, f"/v1/certificates/{uvci}")
        assert response.status == 200 and response.content_type == "application/json"
        assert response.headers["Cache-Control"] == "no-store"
        certificate = json.loads(body)
        assert set(certificate) == {"uvci", "full_name", "birth_date", "doses", "status", "issued_at", "expires_at",
                                    "revoked_at", "superseded_by", "hc1"}
        assert certificate["uvci"] == uvci and certificate["status"] == "current"
        assert certificate["full_name"] == person["full_name"] and certificate["birth_date"] == person["birth_date"]
        assert [d["dn"] for d in certificate["doses"]] == [1, 2]
        assert certificate["revoked_at"] is None and certificate["superseded_by"] is None
        hc1 = certificate["hc1"]
        assert hc1.startswith("HC1:")

        response, png = await get(stack, f"/v1/certificates/{uvci}", headers={"Accept": "image/png"})
        assert response.status == 200 and response.content_type == "image/png"
        assert response.headers["Cache-Control"] == "no-store"
        assert zxingcpp.read_barcode(PIL.Image.open(BytesIO(png))).text == hc1

        response, svg = await get(stack, f"/v1/certificates/{uvci}",
                                  headers={"Accept": "text/html;q=0.9, image/svg+xml, */*;q=0.1"})
        assert response.status == 200 and response.content_type == "image/svg+xml"
        assert b"<svg" in svg

        response, queried = await get(stack, f"/v1/certificates/{uvci}?format=png",
                                      headers={"Accept": "application/json"})  # the query wins
        assert response.content_type == "image/png" and queried == png

        response, body = await get(stack, f"/v1/certificates/{uvci}?format=gif")
        assert response.status == 400 and "format" in json.loads(body)["error"]
        response, body = await get(stack, "/v1/certificates/URN:UVCI:01:VN:NOSUCHCERTIFICATE")
        assert response.status == 404 and "error" in json.loads(body)


async def test_lookup_answers_a_wrong_birth_date_exactly_as_an_unknown_person(settings, db, signing_key):
    async with running_stack(settings, certifiers=1) as stack:
        person, uvci = await certified(stack, db)
        before = lookups(stack)
        response, body, elapsed = await timed_lookup(stack, person["national_id"], person["birth_date"])
        assert response.status == 200 and json.loads(body)["uvci"] == uvci
        assert elapsed >= settings.lookup_floor

        wrong_birth = await timed_lookup(stack, person["national_id"], "1901-01-01")
        unknown = await timed_lookup(stack, "079090999999", person["birth_date"])
        for response, _, elapsed in (wrong_birth, unknown):
            assert response.status == 404 and elapsed >= settings.lookup_floor
        assert wrong_birth[1] == unknown[1]  # byte for byte
        assert wrong_birth[0].headers.keys() - {"Date"} == unknown[0].headers.keys() - {"Date"}
        after = lookups(stack)
        assert {k: after[k] - before[k] for k in after} == {"found": 1, "not_found": 2, "rate_limited": 0}
        exposition = await (await stack.client.get("/metrics")).text()
        assert "/v1/certificates/lookup" in exposition
        assert uvci not in exposition and person["national_id"] not in exposition


@pytest.mark.parametrize("body, status, field", [
    ({"national_id": "12", "birth_date": "1990-01-10"}, 422, "national_id"),
    ({"national_id": "079090000001", "birth_date": "10/01/1990"}, 422, "birth_date"),
    ({"national_id": "079090000001"}, 422, "birth_date"),
    ({"national_id": "079090000001", "birth_date": "1990-01-10", "phone": "0912345678"}, 422, "phone"),
    (b"{not json", 400, None),
    (b"[]", 400, None),
])
async def test_a_bad_lookup_body_is_refused_naming_the_field(settings, body, status, field):
    async with running_stack(settings, workers=0) as stack:
        kwargs = {"data": body, "headers": {"Content-Type": "application/json"}} if isinstance(body, bytes) \
            else {"json": body}
        response = await stack.client.post("/v1/certificates/lookup", **kwargs)
        error = (await response.json())["error"]
        assert response.status == status
        assert field is None or error.startswith(f"{field}:")


async def test_lookups_past_the_limit_are_429_with_retry_after(make_settings):
    settings = make_settings(lookup_rate_limit=3, lookup_rate_window=3600)  # no window ends mid-test
    async with running_stack(settings, workers=0) as stack:
        before = lookups(stack)
        for _ in range(3):
            response, _, _ = await timed_lookup(stack, "079090999999", "1990-01-10")
            assert response.status == 404
        response, body, _ = await timed_lookup(stack, "079090999999", "1990-01-10")
        assert response.status == 429 and "error" in json.loads(body)
        assert 0 < int(response.headers["Retry-After"]) <= 3600
        assert lookups(stack)["rate_limited"] - before["rate_limited"] == 1


async def test_lookup_fails_closed_when_redis_is_unreachable(settings, monkeypatch):
    async with running_stack(settings, workers=0) as stack:
        unreachable = aioredis.Redis.from_url("redis://127.0.0.1:1", socket_connect_timeout=1)
        monkeypatch.setattr(stack.client.app[CERTIFICATES].limiter, "_redis", unreachable)
        response, body, _ = await timed_lookup(stack, "079090999999", "1990-01-10")
        assert response.status == 503 and "Retry-After" in response.headers and "error" in json.loads(body)
        await unreachable.aclose()


async def test_verify_judges_against_the_trust_list_and_revocations(make_settings, db, signing_key):
    settings = make_settings(revocations_settled=0.0)  # list revocations at once (the default waits a minute)
    async with running_stack(settings, certifiers=1) as stack:
        person, uvci = await certified(stack, db)
        _, body = await get(stack, f"/v1/certificates/{uvci}")
        old_hc1 = json.loads(body)["hc1"]
        verdict = await (await stack.client.post("/v1/certificates/verify", json={"hc1": old_hc1})).json()
        assert verdict["valid"] is True and verdict["stage"] is None
        assert verdict["payload"]["v"][0]["ci"] == uvci

        trust_list = await (await stack.client.get("/v1/trust-list")).json()
        [signer] = [c for c in trust_list["certificates"] if c["kid_hex"] == verdict["kid"]]
        assert base64.b64decode(signer["kid"]) == bytes.fromhex(verdict["kid"])
        assert dt.datetime.fromisoformat(signer["not_after"]) > dt.datetime.now(dt.UTC)
        assert base64.b64decode(signer["certificate"])

        _, token = await stack.site("S-002")
        third = dose(1, record_id="R-third", dose_number=3, administered_at=at("2022-03-01"))
        assert (await stack.post(token, {"doses": [third]})).status == 202
        new_uvci = await current_uvci(db, person["national_id"], doses=3)

        verdict = await (await stack.client.post("/v1/certificates/verify", json={"hc1": old_hc1})).json()
        assert verdict["valid"] is False and verdict["stage"] == "revocation"
        _, body = await get(stack, f"/v1/certificates/{uvci}")
        old = json.loads(body)
        assert old["status"] == "revoked" and old["superseded_by"] == new_uvci and old["revoked_at"]

        revocations = await (await stack.client.get("/v1/revocations")).json()
        assert revocations["algorithm"] == "SHA-256, first 16 bytes of the UVCI"
        assert [h["hash"] for h in revocations["hashes"]] == [uvci_hash(uvci)]
        # `+` unescaped in a query string reads as a space: both spellings of the offset work
        for since in ("?since=2000-01-01T00:00:00+07:00", "?since=2000-01-01T00:00:00%2B07:00"):
            assert len((await (await stack.client.get(f"/v1/revocations{since}")).json())["hashes"]) == 1
        assert (await (await stack.client.get("/v1/revocations?since=2999-01-01T00:00:00Z")).json())["hashes"] == []
        assert (await stack.client.get("/v1/revocations?since=yesterday")).status == 400


@pytest.mark.parametrize("hc1", ["garbage", "HC1:NOT+BASE45~", "HC1:" + "A" * 300])
async def test_verify_answers_a_verdict_for_garbage(settings, hc1):
    async with running_stack(settings, workers=0) as stack:
        response = await stack.client.post("/v1/certificates/verify", json={"hc1": hc1})
        verdict = await response.json()
        assert response.status == 200 and verdict["valid"] is False and verdict["stage"]


@pytest.mark.parametrize("body", [{}, {"hc1": ""}, {"hc1": 42}, {"hc1": "HC1:" + "A" * 9000}])
async def test_a_bad_verify_body_is_422(settings, body):
    async with running_stack(settings, workers=0) as stack:
        response = await stack.client.post("/v1/certificates/verify", json=body)
        assert response.status == 422 and (await response.json())["error"].startswith("hc1:")


@pytest.mark.parametrize("accept, fmt", [
    (None, "json"),
    ("*/*", "json"),
    ("image/png", "png"),
    ("image/*", "svg"),
    ("image/png;q=0.5, image/svg+xml;q=0.4", "png"),
    ("application/json;q=0, image/*;q=0.2", "svg"),
    ("image/*;q=0.1, image/png", "png"),
    ("text/html", "json"),
    ("image/png;q=oops", "json"),
])
def test_negotiated_format(accept, fmt):
    assert negotiated_format(accept) == fmt


async def test_the_trust_list_follows_the_keys_folder(settings, signing_key):
    async with running_stack(settings, workers=0) as stack:
        listed = await (await stack.client.get("/v1/trust-list")).json()
        assert [c["kid_hex"] for c in listed["certificates"]] == [signing_key.kid.hex()]
        added = KeyStore(settings.signing_keys_dir).create()  # a rotation: the older key stays trusted
        relisted = await (await stack.client.get("/v1/trust-list")).json()
        assert [c["kid_hex"] for c in relisted["certificates"]] == [
            *(c["kid_hex"] for c in listed["certificates"]), added.kid.hex()]
