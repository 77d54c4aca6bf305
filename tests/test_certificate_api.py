"""The certificate routes of ingest, end to end: doses posted, persisted and certified by the stack,
then read as JSON and QR, looked up, verified, and listed for verifiers (trust list, revocations).

Covers: the certificate JSON, SVG and PNG through the lookup's signed link (the PNG decoded back to the same
`HC1:` with zxing-cpp), content negotiation; lookup found / wrong birth date / unknown ID (byte-identical 404s, both held to the floor), the
rate limit (429 with `Retry-After`) and its failing closed (503); verify valid, superseded (`revocation`)
and garbage; trust list and revocations; no UVCI or national ID in metrics.

A lookup never waits for a certifier (stacks without certifiers): it issues the certificate of persisted
doses (verified with vaxline.dcc.verify), a certifier started afterwards finds nothing to do; a later dose
makes the next lookup supersede it, a second record of a counted dose only updates the view; without a
signing key it answers what is stored; the races both ways (a certifier that read before the lookup
stored; a lookup that read before a certifier stored) and at once leave one certificate per person. A QR
image is rendered once per certificate and format, and the image cache keeps within its bytes.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import time
from io import BytesIO

import PIL.Image
import pytest
import redis.asyncio as aioredis
import zxingcpp

from ingest import certificates as certificate_routes
from ingest.app import INGEST
from ingest.certificates import CERTIFICATES, QrImages, negotiated_format, qr_image
from monitoring import metrics
from storage import certificates as store
from storage import issuing
from tests.conftest import wait_until
from tests.factory import dose
from tests.stack import running_stack
from vaxline.dcc.keys import KeyStore
from vaxline.dcc.trust import TrustList, uvci_hash
from vaxline.dcc.verify import verify
from vaxline.streams import drained
from workers.certify import Certifier

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
        link = (await looked_up(stack, person))["link"]
        response, body = await get(stack, link)
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

        response, png = await get(stack, link, headers={"Accept": "image/png"})
        assert response.status == 200 and response.content_type == "image/png"
        assert response.headers["Cache-Control"] == "no-store"
        assert zxingcpp.read_barcode(PIL.Image.open(BytesIO(png))).text == hc1

        response, svg = await get(stack, link, headers={"Accept": "text/html;q=0.9, image/svg+xml, */*;q=0.1"})
        assert response.status == 200 and response.content_type == "image/svg+xml"
        assert b"<svg" in svg

        response, queried = await get(stack, f"{link}&format=png",
                                      headers={"Accept": "application/json"})  # the query wins
        assert response.content_type == "image/png" and queried == png

        response, body = await get(stack, f"{link}&format=gif")
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
    settings = make_settings()
    async with running_stack(settings, certifiers=1) as stack:
        person, uvci = await certified(stack, db)
        found = await looked_up(stack, person)
        old_hc1, old_link = found["hc1"], found["link"]
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
        _, body = await get(stack, old_link)
        old = json.loads(body)
        assert old["status"] == "revoked" and old["superseded_by"] == new_uvci and old["revoked_at"]
        _, body = await get(stack, f"/v1/certificates/{uvci}")  # the UVCI alone: no trail to the next one
        assert json.loads(body)["status"] == "superseded" and new_uvci not in body.decode()

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


# A lookup never waits for a certifier: these stacks run no certifier unless a test starts one.

def issued(stack) -> float:
    return stack.client.app[INGEST].registry.get_sample_value(metrics.CERTIFICATES_ISSUED) or 0.0


def unchanged(stack) -> float:
    return stack.client.app[INGEST].registry.get_sample_value(metrics.CERTIFICATES_UNCHANGED) or 0.0


async def persisted(stack, db, token: str, doses: list[dict]) -> None:
    """Post the doses and wait until they are persisted and handed off to the (absent) certifiers."""
    expected = await db.fetchval("SELECT count(*) FROM doses") + len(doses)
    assert (await stack.post(token, {"doses": doses})).status == 202
    await wait_until(lambda: db.fetchval("SELECT count(*) = $1 FROM doses", expected), message="persisted")
    redis, settings = stack.client.app[INGEST].redis, stack.settings
    await wait_until(lambda: all_drained(redis, settings.streams, settings.group), message="handed off and acked")


async def all_drained(redis, streams, group) -> bool:
    return all([await drained(redis, stream, group) for stream in streams])


async def certificates_of(db, national_id: str) -> list:
    return await db.fetch("SELECT uvci, status, superseded_by, doses, received_at FROM certificates"
                          " WHERE national_id = $1 ORDER BY certified_at", national_id)


async def looked_up(stack, person: dict) -> dict:
    response, body, _ = await timed_lookup(stack, person["national_id"], person["birth_date"])
    assert response.status == 200, body
    return json.loads(body)


def verified(hc1: str, settings) -> dict:
    keys = KeyStore(settings.signing_keys_dir).public_keys()
    verdict = verify(hc1, TrustList.from_der(k.der for k in keys))
    assert verdict.valid, verdict.reason
    return verdict.payload


async def test_a_lookup_issues_the_certificate_no_certifier_has_made_and_the_certifier_then_has_nothing_to_do(
        settings, db, signing_key):
    async with running_stack(settings) as stack:
        _, token = await stack.site()
        first = dose(21, administered_at=at("2021-08-14"))
        second = dose(21, record_id="R-second", dose_number=2, administered_at=at("2021-11-01"))
        await persisted(stack, db, token, [first, second])
        assert await certificates_of(db, first["national_id"]) == []  # no certifier runs
        before = issued(stack)

        certificate = await looked_up(stack, first)
        assert [(d["dn"], d["record_id"]) for d in certificate["doses"]] == [(1, first["record_id"]), (2, "R-second")]
        [v] = verified(certificate["hc1"], settings)["v"]
        assert (v["ci"], v["dn"], v["sd"], v["dt"]) == (certificate["uvci"], 2, 2, "2021-11-01")
        [stored] = await certificates_of(db, first["national_id"])
        assert (stored["uvci"], stored["status"]) == (certificate["uvci"], "current")
        assert stored["received_at"] == await db.fetchval("SELECT min(received_at) FROM doses")  # freshness from the 202
        assert issued(stack) - before == 1
        again = await looked_up(stack, first)  # up to date now: answered as stored, nothing signed
        def unlinked(answer):  # a new link at every lookup
            return {k: v for k, v in answer.items() if k not in ("link", "link_expires_at")}
        assert unlinked(again) == unlinked(certificate) and issued(stack) - before == 1

        idle = unchanged(stack)
        stack.start_worker("test-certifier-0", certify=True)
        redis = stack.client.app[INGEST].redis
        await wait_until(lambda: drained(redis, settings.certify_stream, settings.certify_group),
                         message="the certifier handled the handoff")
        assert unchanged(stack) - idle == 1 and issued(stack) - before == 1
        assert [c["uvci"] for c in await certificates_of(db, first["national_id"])] == [certificate["uvci"]]


async def test_a_dose_persisted_later_makes_the_next_lookup_reissue_and_supersede(settings, db, signing_key):
    async with running_stack(settings) as stack:
        _, token = await stack.site()
        first = dose(22, administered_at=at("2021-08-14"))
        await persisted(stack, db, token, [first])
        one = await looked_up(stack, first)
        assert [d["dn"] for d in one["doses"]] == [1]

        second = dose(22, record_id="R-second", dose_number=2, administered_at=at("2021-11-01"))
        await persisted(stack, db, token, [second])
        two = await looked_up(stack, first)
        assert two["uvci"] != one["uvci"] and [d["dn"] for d in two["doses"]] == [1, 2]
        assert verified(two["hc1"], settings)["v"][0]["dn"] == 2
        old, new = await certificates_of(db, first["national_id"])
        assert (old["uvci"], old["status"], old["superseded_by"]) == (one["uvci"], "revoked", two["uvci"])
        assert (new["uvci"], new["status"]) == (two["uvci"], "current")
        assert new["received_at"] == await db.fetchval(  # the 202 of the dose it was waiting for
            "SELECT received_at FROM doses WHERE record_id = 'R-second'")

        # The same dose entered again by another site on the same day: the view alone, the QR stays valid.
        _, district = await stack.site("DIST-1")
        await persisted(stack, db, district, [dict(second, record_id="R-district", administered_at=at("2021-11-01"))])
        three = await looked_up(stack, first)
        assert (three["uvci"], three["hc1"]) == (two["uvci"], two["hc1"])
        assert [(d["dn"], d["counted"]) for d in three["doses"]] == [(1, True), (2, True), (2, False)]
        assert len(await certificates_of(db, first["national_id"])) == 2


async def test_without_a_signing_key_a_lookup_answers_what_is_stored(settings, db):
    async with running_stack(settings) as stack:
        _, token = await stack.site()
        person = dose(23)
        await persisted(stack, db, token, [person])
        response, body, elapsed = await timed_lookup(stack, person["national_id"], person["birth_date"])
        _, unknown, _ = await timed_lookup(stack, "079090999999", person["birth_date"])
        assert response.status == 404 and body == unknown and elapsed >= settings.lookup_floor
        assert await db.fetchval("SELECT count(*) FROM certificates") == 0


async def test_an_issuing_lookup_still_answers_a_wrong_birth_date_as_an_unknown_person(settings, db, signing_key):
    async with running_stack(settings) as stack:
        _, token = await stack.site()
        person = dose(24)
        await persisted(stack, db, token, [person])
        wrong_birth = await timed_lookup(stack, person["national_id"], "1901-01-01")
        unknown = await timed_lookup(stack, "079090999999", person["birth_date"])
        for response, _, elapsed in (wrong_birth, unknown):
            assert response.status == 404 and elapsed >= settings.lookup_floor
        assert wrong_birth[1] == unknown[1]
        assert await db.fetchval("SELECT count(*) FROM certificates") == 0  # nothing issued for a wrong birth date


async def test_a_certifier_that_read_before_the_lookup_stored_finds_nothing_left_to_do(settings, db, signing_key):
    """The race one way: the certifier read the history, the lookup issued, then the certifier stores."""
    async with running_stack(settings) as stack:
        _, token = await stack.site()
        person = dose(25)
        await persisted(stack, db, token, [person])
        read_before = await store.people(db, [person["national_id"]])
        certificate = await looked_up(stack, person)
        outcome = issuing.Outcome()
        pool = stack.client.app[INGEST].pool
        await issuing.certify(pool, issuing.Signing(KeyStore(settings.signing_keys_dir)),
                              {person["national_id"]: time.time()}, outcome, metrics=metrics, people=read_before)
        assert (outcome.issued, outcome.revoked, outcome.unchanged) == (0, 0, 1)  # lost, re-read, nothing to do
        [stored] = await certificates_of(db, person["national_id"])
        assert (stored["uvci"], stored["status"]) == (certificate["uvci"], "current")


async def test_a_lookup_that_read_before_a_certifier_stored_answers_the_certifiers_certificate(
        settings, db, signing_key, monkeypatch):
    """The race the other way, over an existing certificate: the lookup read the history, a certifier
    superseded the certificate, then the lookup stores; its swap fails, it re-reads and signs nothing."""
    async with running_stack(settings) as stack:
        _, token = await stack.site()
        first = dose(26, administered_at=at("2021-08-14"))
        await persisted(stack, db, token, [first])
        one = await looked_up(stack, first)
        await persisted(stack, db, token, [dose(26, record_id="R-second", dose_number=2,
                                                administered_at=at("2021-11-01"))])
        pool = stack.client.app[INGEST].pool
        certifier = Certifier(pool, KeyStore(settings.signing_keys_dir))
        read = store.lookup

        async def certifier_in_between(conn, national_id, birth_date):
            found = await read(conn, national_id, birth_date)
            assert (await certifier.certify({national_id: time.time()})).issued == 1
            return found

        monkeypatch.setattr(store, "lookup", certifier_in_between)
        before = issued(stack)
        two = await looked_up(stack, first)
        assert issued(stack) - before == 1  # the certifier's; the lookup's swap lost and it signed nothing more
        old, new = await certificates_of(db, first["national_id"])
        assert (old["uvci"], old["status"], old["superseded_by"]) == (one["uvci"], "revoked", two["uvci"])
        assert (new["uvci"], new["status"]) == (two["uvci"], "current") and len(two["doses"]) == 2


async def test_lookups_and_a_certifier_at_once_leave_one_certificate_per_person(settings, db, signing_key):
    async with running_stack(settings) as stack:
        _, token = await stack.site()
        people = [dose(n) for n in range(30, 40)]
        await persisted(stack, db, token, people)
        certifier = Certifier(stack.client.app[INGEST].pool, KeyStore(settings.signing_keys_dir))
        *answers, _ = await asyncio.gather(*(looked_up(stack, p) for p in people),
                                           certifier.certify({p["national_id"]: time.time() for p in people}))
        rows = await db.fetch("SELECT national_id, uvci, status FROM certificates")
        assert sorted(r["national_id"] for r in rows) == sorted(p["national_id"] for p in people)  # one each
        assert {r["status"] for r in rows} == {"current"}
        assert {a["uvci"] for a in answers} == {r["uvci"] for r in rows}


# A certificate's QR image is rendered once.

async def test_a_qr_image_is_rendered_once_per_certificate_and_format(settings, db, signing_key, monkeypatch):
    renders = []

    def counted(hc1, fmt):
        renders.append(fmt)
        return qr_image(hc1, fmt)

    monkeypatch.setattr(certificate_routes, "qr_image", counted)
    async with running_stack(settings) as stack:
        _, token = await stack.site()
        person = dose(27)
        await persisted(stack, db, token, [person])
        link = (await looked_up(stack, person))["link"]
        _, png = await get(stack, f"{link}&format=png")
        response, again = await get(stack, link, headers={"Accept": "image/png"})
        assert response.status == 200 and response.content_type == "image/png" and again == png
        assert response.headers["Cache-Control"] == "no-store"
        assert renders == ["png"]
        _, svg = await get(stack, f"{link}&format=svg")
        _, svg_again = await get(stack, f"{link}&format=svg")
        assert svg == svg_again and b"<svg" in svg and renders == ["png", "svg"]
        unknown = "URN:UVCI:01:VN:" + "A" * 32
        query = stack.client.app[CERTIFICATES].links.query(unknown)[0]
        response, _ = await get(stack, f"/v1/certificates/{unknown}?{query}&format=png")
        assert response.status == 404 and renders == ["png", "svg"]  # an unknown UVCI is neither rendered nor kept
        assert len(stack.client.app[CERTIFICATES].qr_images) == 2


def test_the_qr_cache_keeps_within_its_bytes_dropping_the_least_recently_used():
    images = QrImages(max_bytes=10)
    images.put("A", "png", b"aaaa")
    images.put("B", "png", b"bbbb")
    assert images.get("A", "png") == b"aaaa"  # A is now the most recently used
    images.put("C", "png", b"cccc")
    assert (images.get("A", "png"), images.get("B", "png"), images.get("C", "png")) == (b"aaaa", None, b"cccc")
    assert (len(images), images.size) == (2, 8)
    images.put("D", "svg", b"d" * 11)  # larger than the whole bound: not kept, nothing dropped for it
    assert (images.get("D", "svg"), len(images), images.size) == (None, 2, 8)
    for n in range(100):
        images.put(f"U{n}", "png", b"xyz")
        assert images.size <= images.max_bytes
    assert images.size == 9 and len(images) == 3
