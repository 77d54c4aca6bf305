"""The citizen portal's pages without a browser: the handlers behind `/`, `/verify` and `/corrections/...` on the
in-process stack (real Postgres and Redis).

Covers: every page answers HTML with a Content-Security-Policy (scripts from this origin only), no-store and
nosniff, `<html lang="vi">` by default and `lang="en"` with `?lang=en` and a toggle link to the other; the
stylesheet and script come from the package, and no page, style or script names another origin; both
languages have the same texts; a form posted without the CSRF cookie, or with another browser's token, is
refused (403) and nothing is looked up; a lookup finds the name, the doses in order and a QR link that
serves the SVG; a miss answers the same status and, but for the typed values, the same bytes for an
unknown ID and for a wrong birth date; past the guess limit the page asks for the code, which the right
birth date alone does not replace and the code from the OTP outbox unlocks; the lookup page shares the API's per-address limit (429 with
Retry-After, counted with the JSON lookups); /verify judges a valid and a tampered HC1; a correction filed
through the form (fields as the API names them) reaches the code step, with the API's field errors shown
when the form is wrong.
"""

from __future__ import annotations

import datetime as dt
import json
import re

import pytest

from ingest.portal.texts import EN, VI
from tests.conftest import wait_until
from tests.factory import dose
from tests.stack import running_stack
from vaxline.dcc.keys import KeyStore

VN = dt.timezone(dt.timedelta(hours=7))
PAGES = ("/", "/verify", "/corrections/new")
_csrf = re.compile(r'name="csrf" value="([^"]+)"')


def at(day: str) -> str:
    return dt.datetime.fromisoformat(day).replace(hour=9, tzinfo=VN).isoformat()


async def vaccinated(stack, db, n: int = 1) -> tuple[dict, str]:
    """Person n with two doses, persisted and certified (the certificate states both); and the token of the
    site that vaccinated them."""
    _, token = await stack.site()
    first = dose(n, administered_at=at("2021-08-14"))
    second = dose(n, record_id=f"R-second-{n}", dose_number=2, administered_at=at("2021-11-01"))
    assert (await stack.post(token, {"doses": [first, second]})).status == 202

    async def certified():
        row = await db.fetchrow("SELECT doses FROM certificates WHERE national_id = $1 AND status = 'current'",
                                first["national_id"])
        return row is not None and len(json.loads(row["doses"])) == 2
    await wait_until(certified, message="a certificate of two doses")
    return first, token


async def token_of(client, path: str = "/") -> str:
    """GET the page (which sets the CSRF cookie) and return its forms' token."""
    response = await client.get(path)
    assert response.status == 200
    return _csrf.search(await response.text()).group(1)


@pytest.fixture
async def stack(settings):
    KeyStore(settings.signing_keys_dir).ensure()
    async with running_stack(settings, certifiers=1) as stack:
        yield stack


async def test_pages_are_html_with_a_csp_in_vietnamese_and_english(stack):
    for path in PAGES:
        for query, lang, other in (("", "vi", "en"), ("?lang=en", "en", "vi"), ("?lang=xx", "vi", "en")):
            response = await stack.client.get(path + query)
            html = await response.text()
            assert response.status == 200, path
            assert response.content_type == "text/html"
            csp = response.headers["Content-Security-Policy"]
            assert "script-src 'self'" in csp and "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
            assert "unsafe-inline" not in csp
            assert response.headers["Cache-Control"] == "no-store"
            assert response.headers["X-Content-Type-Options"] == "nosniff"
            assert f'<html lang="{lang}">' in html
            assert f'href="{path}?lang={other}"' in html  # the toggle
            assert "<script>" not in html and " on" + "click=" not in html  # no inline script for the CSP to allow
            assert not re.search(r"(src|href)=\"(https?:)?//", html), "an asset from another origin"
    assert VI["lookup_title"] in await (await stack.client.get("/")).text()
    assert EN["lookup_title"] in await (await stack.client.get("/?lang=en")).text()


async def test_static_assets_come_from_the_package(stack):
    for name, content_type in (("portal.css", "text/css"), ("portal.js", "text/javascript")):
        response = await stack.client.get(f"/static/{name}")
        assert response.status == 200 and response.content_type == content_type
        assert not re.search(r"url\(|@import|https?://", await response.text()), f"{name} fetches from elsewhere"
    assert (await stack.client.get("/static/nothing.js")).status == 404


def test_both_languages_say_everything():
    assert set(VI) == set(EN)
    assert [key for key in VI if not VI[key].strip() or not EN[key].strip()] == []


async def test_a_form_without_its_csrf_token_is_refused(stack, db):
    person, _ = await vaccinated(stack, db)
    form = {"national_id": person["national_id"], "birth_date": person["birth_date"]}
    # No cookie at all (a fresh client has none until a page sets it).
    response = await stack.client.post("/", data={**form, "csrf": "x" * 40})
    assert response.status == 403 and VI["csrf"] in await response.text()
    # The cookie now set, but another browser's token.
    response = await stack.client.post("/", data={**form, "csrf": "0" * 40})
    assert response.status == 403
    response = await stack.client.post("/verify", data={"hc1": "HC1:x", "csrf": "0" * 40})
    assert response.status == 403
    # The page's own token works.
    token = await token_of(stack.client)
    response = await stack.client.post("/", data={**form, "csrf": token})
    assert response.status == 200 and person["full_name"] in await response.text()


async def test_a_lookup_shows_the_name_the_doses_in_order_and_the_qr(stack, db):
    person, _ = await vaccinated(stack, db)
    token = await token_of(stack.client, "/?lang=en")
    response = await stack.client.post("/?lang=en", data={"national_id": person["national_id"],
                                                          "birth_date": person["birth_date"], "csrf": token})
    html = await response.text()
    assert response.status == 200 and '<html lang="en">' in html
    assert person["full_name"] in html
    assert html.index("Dose 1/2") < html.index("Dose 2/2")
    assert html.index("2021-08-14") < html.index("2021-11-01")
    src = re.search(r'id="qr" src="([^"]+)"', html).group(1).replace("&amp;", "&")
    image = await stack.client.get(src)
    assert image.status == 200 and image.content_type == "image/svg+xml"
    png = re.search(r'id="download-png" href="([^"]+)"', html).group(1).replace("&amp;", "&")
    assert (await stack.client.get(png)).content_type == "image/png"


async def test_a_miss_says_the_same_for_an_unknown_id_and_a_wrong_birth_date(stack, db):
    person, _ = await vaccinated(stack, db)
    token = await token_of(stack.client)
    unknown = {"national_id": "079090999999", "birth_date": "1990-02-03", "csrf": token}
    wrong = {"national_id": person["national_id"], "birth_date": "1990-02-03", "csrf": token}
    answers = []
    for form in (unknown, wrong):
        response = await stack.client.post("/", data=form)
        answers.append((response.status, (await response.text()).replace(form["national_id"], "ID")))
    assert answers[0][0] == answers[1][0] == 404
    assert VI["miss"] in answers[0][1]
    assert answers[0] == answers[1]


async def test_the_page_shares_the_apis_per_address_limit(make_settings):
    settings = make_settings(lookup_rate_limit=2, lookup_rate_window=3600)  # no window ends mid-test
    async with running_stack(settings) as stack:
        token = await token_of(stack.client)
        form = {"national_id": "079090999999", "birth_date": "1990-02-03", "csrf": token}
        assert (await stack.client.post("/", data=form)).status == 404
        api = await stack.client.post("/v1/certificates/lookup", json={k: form[k] for k in ("national_id", "birth_date")})
        assert api.status == 404
        response = await stack.client.post("/", data=form)
        assert response.status == 429 and int(response.headers["Retry-After"]) >= 1
        assert "CCCD" in await response.text()  # the form again, to retry


async def test_verify_judges_a_valid_and_a_tampered_hc1(stack, db):
    person, _ = await vaccinated(stack, db)
    hc1 = await db.fetchval("SELECT hc1 FROM certificates WHERE national_id = $1 AND status = 'current'",
                            person["national_id"])
    token = await token_of(stack.client, "/verify")
    html = await (await stack.client.post("/verify", data={"hc1": hc1, "csrf": token})).text()
    assert 'data-valid="true"' in html and person["birth_date"] in html
    tampered = hc1[:60] + ("A" if hc1[60] != "A" else "B") + hc1[61:]
    html = await (await stack.client.post("/verify", data={"hc1": tampered, "csrf": token})).text()
    assert 'data-valid="false"' in html and 'id="reason"' in html


async def test_a_correction_form_reaches_the_code_step_or_names_its_wrong_fields(stack, db):
    person, _ = await vaccinated(stack, db)
    token = await token_of(stack.client, "/corrections/new")
    fields = {"csrf": token, "national_id": person["national_id"], "full_name": person["full_name"],
              "birth_date": person["birth_date"], "phone": "0987654321", "kind": "missing_dose",
              "dose.date": "2022-03-01", "dose.site": "S-001", "dose.vaccine": "EU/1/21/1529", "dose.dose_number": "3",
              "note": "mũi 3"}
    wrong = {**fields, "dose.site": "", "phone": "12"}
    response = await stack.client.post("/corrections/new", data=_multipart(wrong))
    html = await response.text()
    assert response.status == 422 and "<code>phone</code>" in html and "<code>dose.site</code>" not in html
    response = await stack.client.post("/corrections/new", data=_multipart(fields))
    html = await response.text()
    assert response.status == 200 and 'id="code-form"' in html
    request_id = re.search(r'action="/corrections/(CR-[A-Z]{28})/confirm"', html).group(1)
    assert await db.fetchval("SELECT kind FROM correction_requests WHERE request_id = $1", request_id) == "missing_dose"


def _multipart(fields: dict):
    import aiohttp

    form = aiohttp.FormData()
    for name, value in fields.items():
        form.add_field(name, value)
    form.add_field("evidence", b"", filename="", content_type="application/octet-stream")  # as a browser sends none
    return form


async def test_past_the_guess_limit_the_page_asks_for_the_code_sent_to_the_phone(make_settings, db):
    settings = make_settings(lookup_guess_limit=1)
    KeyStore(settings.signing_keys_dir).ensure()
    async with running_stack(settings, certifiers=1) as stack:
        person, _ = await vaccinated(stack, db)
        token = await token_of(stack.client, "/?lang=en")
        wrong = {"national_id": person["national_id"], "birth_date": "1990-02-03", "csrf": token}
        assert (await stack.client.post("/?lang=en", data=wrong)).status == 404
        response = await stack.client.post("/?lang=en", data=wrong)
        html = await response.text()
        assert response.status == 403 and EN["code_needed"] in html and 'name="code"' in html

        async def sent():
            outbox = settings.data_dir / "otp-outbox.jsonl"
            lines = outbox.read_text().splitlines() if outbox.exists() else []
            return [json.loads(line)["code"] for line in lines if json.loads(line)["request_id"].startswith("LK-")]
        [code] = await wait_until(sent, message="the lookup's code in the outbox")
        right = {**wrong, "birth_date": person["birth_date"]}
        assert (await stack.client.post("/?lang=en", data=right)).status == 403  # the right date alone: no
        response = await stack.client.post("/?lang=en", data={**right, "code": code})
        assert response.status == 200 and person["full_name"] in await response.text()
