"""Certificate lookups that cannot be guessed, and UVCIs that are no bearer secret (issue 16, items 1 and 2).

Covers: past 10 wrong birth dates for one national ID, from as many addresses, a lookup of that ID needs a
one-time code, correct birth date or not; the code goes to the phone a site recorded and lets the person in
(once); an unknown ID past its limit is answered byte for byte alike, and nothing is sent for it; the
per-address limit counts an IPv6 /64 as one client; X-Forwarded-For is believed only from a trusted proxy
(the right-most address that is not one). A UVCI alone answers the status and what the DCC states, no record
ids, sites or successor; the lookup's signed link answers the whole view and the QR image, an expired, a
tampered or another certificate's link is refused. The server secret is made once, 0600.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import stat
from io import BytesIO

import PIL.Image
import pytest
import zxingcpp

from ingest.app import INGEST
from ingest.certificates import CERTIFICATES
from ingest.clients import client_of, limit_key, trusted_networks
from monitoring import metrics
from tests.conftest import wait_until
from tests.factory import dose
from tests.stack import running_stack
from vaxline.dcc.keys import KeyStore
from vaxline.dcc.trust import TrustList
from vaxline.dcc.verify import verify
from vaxline.links import CertificateLinks, server_secret
from vaxline.streams import drained

VN = dt.timezone(dt.timedelta(hours=7))
PROXY = "127.0.0.1"  # the test client's peer: trusted where a test says so


@pytest.fixture
def signing_key(settings):
    return KeyStore(settings.signing_keys_dir).create()


async def persisted(stack, db, doses: list[dict]) -> None:
    """Post the doses and wait until they are persisted and handed off (no certifier: the lookup issues)."""
    _, token = await stack.site()
    assert (await stack.post(token, {"doses": doses})).status == 202
    await wait_until(lambda: db.fetchval("SELECT count(*) = $1 FROM doses", len(doses)), message="persisted")
    redis, settings = stack.client.app[INGEST].redis, stack.settings
    async def all_acked() -> bool:
        return all([await drained(redis, stream, settings.group) for stream in settings.streams])
    await wait_until(all_acked, message="acked")


async def lookup(stack, national_id: str, birth_date: str, *, client: str | None = None, **fields):
    headers = {"X-Forwarded-For": client} if client else {}
    response = await stack.client.post("/v1/certificates/lookup", headers=headers,
                                       json={"national_id": national_id, "birth_date": birth_date, **fields})
    return response, await response.read()


def outbox(settings) -> list[dict]:
    path = settings.data_dir / "otp-outbox.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def lookups(stack, result: str) -> float:
    registry = stack.client.app[INGEST].registry
    return registry.get_sample_value(metrics.CERTIFICATE_LOOKUPS, {"result": result}) or 0.0


# -- 1. guesses per national ID --------------------------------------------------------------------------------

async def test_past_ten_wrong_birth_dates_from_any_addresses_only_the_code_sent_to_the_phone_on_record_lets_in(
        make_settings, db, signing_key):
    settings = make_settings(trusted_proxies=PROXY, lookup_rate_limit=1, lookup_rate_window=3600)
    person = dose(41, phone="0987654321", administered_at="2021-08-14T09:00:00+07:00")
    nid, birth = person["national_id"], person["birth_date"]
    unknown = "079090999999"
    async with running_stack(settings) as stack:
        await persisted(stack, db, [person])
        answers = []
        for n in range(11):  # one lookup per address: the per-address limit never speaks
            response, body = await lookup(stack, nid, f"1901-01-{n + 1:02d}", client=f"198.51.100.{n + 1}")
            answers.append((response.status, body))
        assert [status for status, _ in answers[:10]] == [404] * 10
        status, code_needed = answers[10]
        assert status == 403 and json.loads(code_needed)["error"].startswith("code:")
        assert nid.encode() not in code_needed

        response, body = await lookup(stack, nid, birth, client="198.51.100.12")  # the right birth date, too late
        assert (response.status, body) == (403, code_needed)
        sent = await wait_until(lambda: [m for m in outbox(settings) if m["phone"] == "0987654321"],
                                message="a code to the phone on record")
        assert len(sent) == 1  # one code while it lives, however many lookups ask
        code = sent[0]["code"]

        wrong = f"{(int(code) + 1) % 1_000_000:06d}"
        response, body = await lookup(stack, nid, birth, client="198.51.100.13", code=wrong)
        assert (response.status, body) == (403, code_needed)
        response, body = await lookup(stack, nid, birth, client="198.51.100.14", code=code)
        assert response.status == 200, body
        found = json.loads(body)
        assert found["hc1"].startswith("HC1:") and found["birth_date"] == birth
        response, _ = await lookup(stack, nid, birth, client="198.51.100.15", code=code)
        assert response.status == 403  # a code works once

        # An unknown ID past its limit: the same answer, byte for byte, and no code goes anywhere.
        before = len(outbox(settings))
        for n in range(11):
            response, body = await lookup(stack, unknown, f"1990-01-{n + 1:02d}", client=f"203.0.113.{n + 1}")
        assert (response.status, body) == (403, code_needed)
        assert len(outbox(settings)) == before
        assert lookups(stack, "code_required") >= 4

        # Redis holds no national ID in clear.
        keys = [k.decode() async for k in stack.client.app[INGEST].redis.scan_iter(match=f"{settings.stream_prefix}:*")]
        assert keys and not [k for k in keys if nid in k or unknown in k]


async def test_parallel_wrong_guesses_cannot_pass_the_limit_together(make_settings, db):
    settings = make_settings(lookup_rate_limit=1000, lookup_floor=0.0)
    async with running_stack(settings, workers=0) as stack:
        answers = await asyncio.gather(*(lookup(stack, "079090999998", f"1990-02-{n + 1:02d}") for n in range(25)))
        assert sorted(response.status for response, _ in answers) == [403] * 15 + [404] * 10


async def test_a_person_without_a_phone_on_record_gets_the_same_answer_and_no_code(make_settings, db, signing_key):
    settings = make_settings(lookup_rate_limit=1000)
    person = dose(42, phone=None)
    async with running_stack(settings) as stack:
        await persisted(stack, db, [person])
        for n in range(10):
            assert (await lookup(stack, person["national_id"], f"1901-02-{n + 1:02d}"))[0].status == 404
        response, body = await lookup(stack, person["national_id"], person["birth_date"])
        assert response.status == 403 and json.loads(body)["error"].startswith("code:")
        assert outbox(settings) == []


async def test_a_right_birth_date_is_not_counted_as_a_guess(make_settings, db, signing_key):
    settings = make_settings(lookup_rate_limit=1000, lookup_guess_limit=2)
    person = dose(43)
    async with running_stack(settings) as stack:
        await persisted(stack, db, [person])
        for _ in range(5):
            assert (await lookup(stack, person["national_id"], person["birth_date"]))[0].status == 200
        assert (await lookup(stack, person["national_id"], "1901-01-01"))[0].status == 404


# -- 1. who the client is ---------------------------------------------------------------------------------------

async def test_ipv6_clients_in_one_64_share_the_per_address_limit(make_settings):
    settings = make_settings(trusted_proxies=PROXY, lookup_rate_limit=2, lookup_rate_window=3600)
    async with running_stack(settings, workers=0) as stack:
        statuses = [(await lookup(stack, "079090999996", "1990-01-10", client=address))[0].status
                    for address in ("2001:db8:1:2::1", "2001:db8:1:2:ffff::9", "2001:db8:1:2:abcd:1:2:3")]
        assert statuses == [404, 404, 429]
        response, _ = await lookup(stack, "079090999996", "1990-01-10", client="2001:db8:1:3::1")
        assert response.status == 404  # the next /64 is another client


async def test_x_forwarded_for_is_believed_only_from_a_trusted_proxy(make_settings):
    untrusted = make_settings(trusted_proxies="10.0.0.0/8", lookup_rate_limit=1, lookup_rate_window=3600)
    async with running_stack(untrusted, workers=0) as stack:
        first, _ = await lookup(stack, "079090999995", "1990-01-10", client="198.51.100.1")
        second, _ = await lookup(stack, "079090999995", "1990-01-10", client="198.51.100.2")
        assert (first.status, second.status) == (404, 429)  # one peer, whatever it writes

    trusted = make_settings(trusted_proxies=f"10.0.0.0/8, {PROXY}", lookup_rate_limit=1, lookup_rate_window=3600)
    async with running_stack(trusted, workers=0) as stack:
        statuses = [(await lookup(stack, "079090999995", "1990-01-10", client=chain))[0].status for chain in (
            "198.51.100.1", "198.51.100.2", "203.0.113.5, 198.51.100.3, 10.1.2.3",
            "203.0.113.6, 198.51.100.3")]  # the client wrote the left part: the same client as before
        assert statuses == [404, 404, 404, 429]


def test_the_client_is_the_right_most_address_that_is_not_a_trusted_proxy():
    networks = trusted_networks("10.0.0.0/8, 192.0.2.1, 2001:db8:ffff::/48")
    assert client_of("10.0.0.5", ["203.0.113.9, 198.51.100.7"], networks) == "198.51.100.7"
    assert client_of("10.0.0.5", ["203.0.113.9", "198.51.100.7, 192.0.2.1"], networks) == "198.51.100.7"
    assert client_of("2001:db8:ffff::1", ["2001:db8:1::5"], networks) == "2001:db8:1::5"
    assert client_of("198.51.100.1", ["203.0.113.9"], networks) == "198.51.100.1"  # not a proxy of ours
    assert client_of("10.0.0.5", [], networks) == "10.0.0.5"
    assert client_of("10.0.0.5", ["10.0.0.1, 192.0.2.1"], networks) == "10.0.0.1"
    assert client_of(None, ["203.0.113.9"], networks) == "unknown"
    with pytest.raises(ValueError, match="VAXLINE_TRUSTED_PROXIES"):
        trusted_networks("10.0.0.0/8, nonsense")


def test_a_limit_counts_an_ipv6_client_by_its_64():
    assert limit_key("2001:db8:1:2:3:4:5:6") == limit_key("2001:db8:1:2::1") == "2001:db8:1:2::/64"
    assert limit_key("2001:db8:1:3::1") != limit_key("2001:db8:1:2::1")
    assert limit_key("::ffff:198.51.100.7") == limit_key("198.51.100.7") == "198.51.100.7"
    assert limit_key("fe80::1%eth0") == "fe80::/64"


# -- 2. a UVCI alone -------------------------------------------------------------------------------------------

async def test_a_uvci_alone_answers_what_the_qr_states_and_the_signed_link_the_rest(settings, db, signing_key):
    person = dose(44, administered_at="2021-08-14T09:00:00+07:00")
    async with running_stack(settings) as stack:
        await persisted(stack, db, [person])
        response, body = await lookup(stack, person["national_id"], person["birth_date"])
        found = json.loads(body)
        uvci, link = found["uvci"], found["link"]
        assert link.startswith(f"/v1/certificates/{uvci}?") and "token=" in link and "expires=" in link
        expires_at = dt.datetime.fromisoformat(found["link_expires_at"])
        assert 0 < (expires_at - dt.datetime.now(dt.UTC)).total_seconds() <= settings.certificate_link_ttl

        response = await stack.client.get(f"/v1/certificates/{uvci}")
        summary = await response.json()
        assert response.status == 200 and response.headers["Cache-Control"] == "no-store"
        assert set(summary) == {"uvci", "status", "full_name", "birth_date", "vaccination"}
        assert (summary["uvci"], summary["status"]) == (uvci, "current")
        assert (summary["full_name"], summary["birth_date"]) == (person["full_name"], person["birth_date"])
        [entry] = verify(found["hc1"], TrustList.from_der([])).payload["v"]
        assert summary["vaccination"] == entry
        text = json.dumps(summary)
        for secret in (person["record_id"], "S-001", "superseded_by", "hc1", "HC1:", "flags", "lot"):
            assert secret not in text
        for fmt in ("png", "svg"):
            response = await stack.client.get(f"/v1/certificates/{uvci}?format={fmt}")
            assert response.status == 403 and "link" in (await response.json())["error"]

        full = await (await stack.client.get(link)).json()
        assert full["doses"][0]["record_id"] == person["record_id"] and full["hc1"] == found["hc1"]
        png = await (await stack.client.get(f"{link}&format=png")).read()
        assert zxingcpp.read_barcode(PIL.Image.open(BytesIO(png))).text == found["hc1"]

        links = stack.client.app[CERTIFICATES].links
        expired = CertificateLinks(server_secret(settings), ttl=-1).query(uvci)[0]
        forged = CertificateLinks(b"not the server's secret at all!!", ttl=300).query(uvci)[0]
        other = links.query("URN:UVCI:01:VN:" + "B" * 32)[0]
        query = link.partition("?")[2]
        later = query.replace("expires=", "expires=9")  # a later expiry, same token
        flipped = query[:-1] + ("A" if query[-1] != "A" else "B")
        for bad in (expired, forged, other, later, flipped, "token=x", "expires=1"):
            for fmt in ("json", "png"):
                response = await stack.client.get(f"/v1/certificates/{uvci}?{bad}&format={fmt}")
                assert response.status == 403, (bad, fmt)
        assert "expired" in (await (await stack.client.get(f"/v1/certificates/{uvci}?{expired}")).json())["error"]


async def test_a_superseded_certificate_by_its_uvci_leads_nowhere(settings, db, signing_key):
    first = dose(45, administered_at="2021-08-14T09:00:00+07:00")
    async with running_stack(settings) as stack:
        await persisted(stack, db, [first])
        one = json.loads((await lookup(stack, first["national_id"], first["birth_date"]))[1])
        second = dose(45, record_id="R-second", dose_number=2, administered_at="2021-11-01T09:00:00+07:00")
        _, token = await stack.site("S-002")
        assert (await stack.post(token, {"doses": [second]})).status == 202
        await wait_until(lambda: db.fetchval("SELECT count(*) = 2 FROM doses"), message="persisted")
        two = json.loads((await lookup(stack, first["national_id"], first["birth_date"]))[1])
        assert two["uvci"] != one["uvci"]
        response = await stack.client.get(f"/v1/certificates/{one['uvci']}")
        body = await response.text()
        assert json.loads(body)["status"] == "superseded" and two["uvci"] not in body
        full = await (await stack.client.get(one["link"])).json()  # the person's own link still has it all
        assert (full["status"], full["superseded_by"]) == ("revoked", two["uvci"])


def test_the_server_secret_is_made_once_and_kept_private(settings):
    secret = server_secret(settings)
    path = settings.data_dir / "server-secret"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600 and len(secret) == 32
    assert server_secret(settings) == secret
    assert [p.name for p in settings.data_dir.iterdir() if p.name.startswith(".server-secret")] == []
    links = CertificateLinks(secret, ttl=60, clock=lambda: 1000.0)
    token, expires = links.issue("URN:UVCI:01:VN:" + "A" * 32)
    assert expires == 1060 and links.check("URN:UVCI:01:VN:" + "A" * 32, token, str(expires)) is None
    late = CertificateLinks(secret, ttl=60, clock=lambda: 1061.0)
    assert late.check("URN:UVCI:01:VN:" + "A" * 32, token, str(expires)) == "expired"
    assert links.check("URN:UVCI:01:VN:" + "A" * 32, token, "1e9") == "invalid"
