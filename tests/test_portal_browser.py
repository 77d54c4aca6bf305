"""The citizen portal in a real browser: Debian's headless chromium, driven by Selenium through chromium-driver,
against the in-process stack (ingest on a test server, a persisting worker and a certifier; real Postgres
and Redis). scripts/setup.sh installs both packages as root; without them the tests skip, and fail with CI=1.

Covers: a lookup typed and sent from the keyboard, whose QR, cut from a screenshot of the page and decoded
with zxing-cpp, is the API's own `hc1` for the person, beside their name and their doses in order; /verify
with a valid HC1 (data-valid="true", the holder's name and birth date) and a tampered one
(data-valid="false" and a reason); a correction request end to end: the form (the dose fields hidden by
the page's script for a kind that needs none, shown again), an evidence image, the code step with the code
taken from the development OTP outbox, the request id `CR-...`, the link to `/corrections/{id}`, the
status after the birth date, and the site's message once it decided; every field of every page labelled,
`<html lang>` in Vietnamese and, through the toggle, English, the lookup form reached with Tab; and no
page scrolls sideways on a 390 px phone (document.documentElement.scrollWidth <= 390), the certificate page
included.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import shutil

import PIL.Image
import pytest
import zxingcpp
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select, WebDriverWait

from tests.stack import running_stack
from tests.test_portal import vaccinated
from vaxline.dcc.keys import KeyStore

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
PAGES = ("/", "/verify", "/corrections/new")
WAIT = 20  # seconds for a page to show what it should


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and DRIVER):
        message = "chromium and chromium-driver are missing: scripts/setup.sh installs them (as root)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    # Selenium logs every command's body at DEBUG (the typed national IDs among them), urllib3 every WebDriver
    # URL (whose element ids may hold 9 digits in a row): the session's log scan would rightly refuse both.
    quiet = {name: logging.getLogger(name) for name in ("selenium", "urllib3")}
    levels = {name: logger.level for name, logger in quiet.items()}
    for logger in quiet.values():
        logger.setLevel(logging.WARNING)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1000,1400", "--lang=vi", "--no-first-run", "--disable-extensions"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(DRIVER))
    driver.set_page_load_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()
        for name, logger in quiet.items():
            logger.setLevel(levels[name])


@pytest.fixture
async def stack(settings, browser):
    KeyStore(settings.signing_keys_dir).ensure()
    async with running_stack(settings, certifiers=1) as stack:
        await asyncio.to_thread(browser.delete_all_cookies)
        yield stack


def url(stack, path: str) -> str:
    return str(stack.client.make_url(path))


async def in_browser(function, *args, **kwargs):
    """Run a blocking Selenium step in a thread: the test server answers on this loop meanwhile."""
    return await asyncio.to_thread(function, *args, **kwargs)


def _wait(driver, condition, message: str):
    return WebDriverWait(driver, WAIT).until(lambda d: condition(d), message)


def _set_date(driver, element_id: str, value: str) -> None:
    """A date input's value (its typed form depends on the browser's locale)."""
    driver.execute_script("document.getElementById(arguments[0]).value = arguments[1]", element_id, value)


def _look_up(driver, address: str, national_id: str, birth_date: str) -> None:
    driver.get(address)
    field = driver.find_element(By.ID, "national_id")
    field.send_keys(national_id)
    _set_date(driver, "birth_date", birth_date)
    field.send_keys(Keys.ENTER)  # sent from the keyboard
    _wait(driver, lambda d: d.execute_script(
        "const qr = document.getElementById('qr'); return qr && qr.complete && qr.naturalWidth > 0"),
        "the certificate page with its QR loaded")


def _qr_text(driver) -> tuple[str, dict]:
    png = driver.find_element(By.ID, "qr").screenshot_as_png
    found = zxingcpp.read_barcodes(PIL.Image.open(io.BytesIO(png)))
    page = {"name": driver.find_element(By.ID, "full-name").text,
            "doses": [li.text for li in driver.find_elements(By.CSS_SELECTOR, "#doses li")]}
    return (found[0].text if found else ""), page


async def test_the_lookups_qr_is_the_apis_hc1(stack, db, browser):
    person, _ = await vaccinated(stack, db)
    api = await stack.client.post("/v1/certificates/lookup", json={"national_id": person["national_id"],
                                                                    "birth_date": person["birth_date"]})
    assert api.status == 200
    hc1 = (await api.json())["hc1"]
    await in_browser(_look_up, browser, url(stack, "/"), person["national_id"], person["birth_date"])
    decoded, page = await in_browser(_qr_text, browser)
    assert decoded == hc1
    assert page["name"] == person["full_name"]
    assert [text.splitlines()[0] for text in page["doses"]] == ["Mũi 1/2", "Mũi 2/2"]
    assert "2021-08-14" in page["doses"][0] and "2021-11-01" in page["doses"][1]


def _verify(driver, address: str, hc1: str) -> dict:
    driver.get(address)
    driver.execute_script("document.getElementById('hc1').value = arguments[0]", hc1)
    driver.find_element(By.CSS_SELECTOR, "#verify-form button[type=submit]").click()
    result = _wait(driver, lambda d: d.find_elements(By.ID, "result"), "a verdict")[0]
    texts = {name: d[0].text for name in ("holder", "holder-birth-date", "reason")
             if (d := driver.find_elements(By.ID, name))}
    return {"valid": result.get_attribute("data-valid"), **texts}


async def test_verify_a_valid_and_a_tampered_hc1(stack, db, browser):
    person, _ = await vaccinated(stack, db)
    hc1 = await db.fetchval("SELECT hc1 FROM certificates WHERE national_id = $1 AND status = 'current'",
                            person["national_id"])
    valid = await in_browser(_verify, browser, url(stack, "/verify?lang=en"), hc1)
    assert valid["valid"] == "true"
    assert valid["holder"] == person["full_name"] and valid["holder-birth-date"] == person["birth_date"]
    tampered = hc1[:80] + ("A" if hc1[80] != "A" else "B") + hc1[81:]
    invalid = await in_browser(_verify, browser, url(stack, "/verify?lang=en"), tampered)
    assert invalid["valid"] == "false" and invalid["reason"].strip()


def _file_request(driver, address: str, person: dict, picture: str) -> str:
    """Fill and send the correction form from the keyboard; the code step's request id."""
    driver.get(address)
    kind = Select(driver.find_element(By.ID, "kind"))
    kind.select_by_value("wrong_personal_details")
    assert not driver.find_element(By.ID, "dose-fields").is_displayed()  # the script: no dose for this kind
    kind.select_by_value("missing_dose")
    assert driver.find_element(By.ID, "dose-fields").is_displayed()
    for field, value in (("national_id", person["national_id"]), ("full_name", person["full_name"]),
                         ("phone", "0987654321"), ("dose.site", "S-001"), ("dose.lot", "ABV5300"),
                         ("dose.dose_number", "3"), ("note", "mũi 3 chưa có trên chứng nhận")):
        driver.find_element(By.ID, field).send_keys(value)
    _set_date(driver, "birth_date", person["birth_date"])
    _set_date(driver, "dose.date", "2022-03-01")
    Select(driver.find_element(By.ID, "dose.vaccine")).select_by_value("EU/1/21/1529")
    driver.find_element(By.ID, "evidence").send_keys(picture)
    driver.find_element(By.CSS_SELECTOR, "#correction-form button[type=submit]").click()
    form = _wait(driver, lambda d: d.find_elements(By.ID, "code-form"), "the code step")[0]
    return form.get_attribute("action").split("/corrections/")[1].split("/")[0]


def _confirm(driver, code: str) -> str:
    field = driver.find_element(By.ID, "code")
    field.send_keys(code)
    field.send_keys(Keys.ENTER)
    return _wait(driver, lambda d: d.find_elements(By.ID, "request-id"), "the request id")[0].text


def _status(driver, birth_date: str, *, follow: bool) -> dict:
    if follow:
        driver.find_element(By.ID, "follow").click()
    else:
        driver.get(driver.current_url)  # a GET: the birth date form again (a refresh would post again)
    _wait(driver, lambda d: d.find_elements(By.ID, "status-form"), "the birth date form")
    _set_date(driver, "birth_date", birth_date)
    driver.find_element(By.CSS_SELECTOR, "#status-form button[type=submit]").click()
    view = _wait(driver, lambda d: d.find_elements(By.ID, "request-view"), "the request's status")[0]
    return {"status": view.get_attribute("data-status"), "url": driver.current_url,
            "message": driver.find_element(By.ID, "request-message").text}


async def test_a_correction_request_from_the_form_to_the_sites_answer(stack, db, browser, tmp_path):
    person, site_token = await vaccinated(stack, db)
    picture = tmp_path / "giay-chung-nhan.png"
    PIL.Image.new("RGB", (64, 64), (200, 30, 30)).save(picture)
    request_id = await in_browser(_file_request, browser, url(stack, "/corrections/new"), person, str(picture))
    outbox = [json.loads(line) for line in (stack.settings.data_dir / "otp-outbox.jsonl").read_text().splitlines()]
    code = [entry["code"] for entry in outbox if entry["request_id"] == request_id][-1]
    shown = await in_browser(_confirm, browser, code)
    assert shown == request_id and shown.startswith("CR-")
    seen = await in_browser(_status, browser, person["birth_date"], follow=True)
    assert seen["status"] == "submitted" and seen["url"].split("?")[0].endswith(f"/corrections/{request_id}")
    assert await db.fetchval("SELECT count(*) FROM correction_evidence WHERE request_id = $1", request_id) == 1
    decided = await stack.client.post(f"/v1/corrections/{request_id}/decision",
                                      headers={"Authorization": f"Bearer {site_token}"},
                                      json={"decision": "reject", "message": "Không có mũi 3 trong sổ của trạm"})
    assert decided.status == 200, await decided.text()
    seen = await in_browser(_status, browser, person["birth_date"], follow=False)
    assert seen == {**seen, "status": "rejected", "message": "Không có mũi 3 trong sổ của trạm"}


_UNLABELLED = """
return [...document.querySelectorAll('input, select, textarea')]
  .filter((e) => e.type !== 'hidden')
  .filter((e) => { const l = e.id && document.querySelector(`label[for="${CSS.escape(e.id)}"]`);
                   return !(l && l.textContent.trim()); })
  .map((e) => e.name || e.id || e.outerHTML);
"""


def _labels_and_lang(driver, base: str) -> list:
    seen = []
    for path in PAGES:
        driver.get(base + path)
        seen.append((path, driver.find_element(By.TAG_NAME, "html").get_attribute("lang"),
                     driver.execute_script(_UNLABELLED)))
        driver.find_element(By.ID, "lang-toggle").click()
        _wait(driver, lambda d: d.find_element(By.TAG_NAME, "html").get_attribute("lang") == "en", "English")
        seen.append((path + "?lang=en", "en", driver.execute_script(_UNLABELLED)))
    return seen


def _tab_order(driver, address: str, presses: int = 12) -> list[str]:
    driver.get(address)
    body = driver.find_element(By.TAG_NAME, "body")
    order = []
    for _ in range(presses):
        body = driver.switch_to.active_element
        body.send_keys(Keys.TAB)
        active = driver.switch_to.active_element
        order.append(active.get_attribute("id") or active.get_attribute("type") or active.tag_name)
    return order


async def test_every_field_is_labelled_in_both_languages_and_reached_with_tab(stack, browser):
    seen = await in_browser(_labels_and_lang, browser, url(stack, ""))
    assert [(path, lang) for path, lang, _ in seen] == [
        (p, lang) for path in PAGES for p, lang in ((path, "vi"), (path + "?lang=en", "en"))]
    assert {path: unlabelled for path, _, unlabelled in seen if unlabelled} == {}
    order = await in_browser(_tab_order, browser, url(stack, "/"))
    assert "national_id" in order and "birth_date" in order and "submit" in order
    assert order.index("national_id") < order.index("birth_date") < order.index("submit")


def _widths(driver, base: str, person: dict, hc1: str) -> dict[str, int]:
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": 390, "height": 844, "deviceScaleFactor": 3, "mobile": True})
    widths = {}
    try:
        for path in PAGES:
            driver.get(base + path)
            widths[path] = driver.execute_script("return document.documentElement.scrollWidth")
        _look_up(driver, base + "/?lang=en", person["national_id"], person["birth_date"])
        driver.execute_script("document.querySelector('details').open = true")  # the long HC1 text shown
        widths["certificate"] = driver.execute_script("return document.documentElement.scrollWidth")
        _verify(driver, base + "/verify", hc1)
        widths["verdict"] = driver.execute_script("return document.documentElement.scrollWidth")
        widths["viewport"] = driver.execute_script("return window.innerWidth")
    finally:
        with contextlib.suppress(Exception):
            driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    return widths


async def test_no_page_scrolls_sideways_on_a_390_px_phone(stack, db, browser):
    person, _ = await vaccinated(stack, db)
    hc1 = await db.fetchval("SELECT hc1 FROM certificates WHERE national_id = $1 AND status = 'current'",
                            person["national_id"])
    widths = await in_browser(_widths, browser, url(stack, ""), person, hc1)
    assert widths.pop("viewport") == 390
    assert {page: width for page, width in widths.items() if width > 390} == {}
    assert len(widths) == len(PAGES) + 2
