"""`/docs` and the error contract: the API reference with no CDN, and RFC 9457 problem details.

Covers: GET /docs answers 200 HTML with a Content-Security-Policy that allows scripts from this origin only,
names no external URL, and every file it loads answers 200 from this server, byte for byte the installed
package's, and an asset asked again with its ETag is a 304; an asset not on the list (a traversal included) is a 404 in problem details; in headless Chromium
the page renders the document's operations from /openapi.json, and nothing from another origin is fetched: the one
request Redoc makes elsewhere (Redocly's logo, from its CDN) is blocked by the policy, and nothing else is
(skipped without chromium, a failure in CI); errors of every origin (a route's ApiError, aiohttp's 404
and 405, a 413, a backing service down) answer `application/problem+json` with `type`, `title`, `status`,
`detail` and the `error` that existing clients read, `about:blank` with the status's phrase or a documented
problem type.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil

import openapi_ui_bundles.redoc
import pytest

from ingest.apidocs import ASSETS
from ingest.http import INGEST
from tests.stack import running_stack

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
REDOCLY_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"
ADDRESSES = re.compile(r"""(?:src|href|spec-url)\s*=\s*["']([^"']*)["']""")


async def test_docs_and_its_assets_come_from_this_server(settings):
    async with running_stack(settings, workers=0) as stack:
        page = await stack.client.get("/docs")
        html = await page.text()
        loaded = {}
        for address in ADDRESSES.findall(html):
            answer = await stack.client.get(address)
            loaded[address] = (answer.status, await answer.read())
        script = await stack.client.get("/docs/assets/redoc.standalone.js")
        again = await stack.client.get("/docs/assets/redoc.standalone.js",
                                       headers={"If-None-Match": script.headers["ETag"]})
        missing = await stack.client.get("/docs/assets/index.html")  # in the package's folder, not on the list
        traversal = await stack.client.get("/docs/assets/..%2F..%2F__init__.py")
        missing_body = await missing.json()
    assert page.status == 200 and page.content_type == "text/html"
    policy = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "default-src 'none'" in policy and "unsafe-eval" not in policy
    assert "http:" not in html and "https:" not in html and "//" not in html.replace("<!DOCTYPE html>", "")
    assert "<script>" not in html  # no inline script: the policy allows none
    assert set(loaded) == {"/openapi.json", "/docs/assets/redoc.standalone.js", "/docs/assets/logo-mini.svg"}
    assert all(status == 200 for status, _ in loaded.values()), {a: s for a, (s, _) in loaded.items()}
    for name in ASSETS:
        assert loaded[f"/docs/assets/{name}"][1] == (openapi_ui_bundles.redoc.static_path / name).read_bytes()
    assert again.status == 304 and not await again.read() and again.headers["ETag"] == script.headers["ETag"]
    assert missing.status == 404 and missing.content_type == "application/problem+json"
    assert missing_body["status"] == 404 and missing_body["error"] == missing_body["detail"]
    assert traversal.status == 404


def _browse(url: str) -> tuple[str, list[dict], list[dict]]:
    """The page's text once Redoc rendered it, the browser's console entries, and its DevTools network events."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    # Selenium logs every answer at debug, the page's text included: the document's examples carry a phone number
    # that the session's scan of the logs would (rightly) call personal data.
    for name in ("selenium", "urllib3"):
        logging.getLogger(name).setLevel(logging.INFO)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.get(url)
        WebDriverWait(driver, 60).until(
            lambda d: "Post a batch of administered doses" in d.find_element("tag name", "body").text)
        text = driver.find_element("tag name", "body").text
        console = driver.get_log("browser")
        return text, console, [json.loads(entry["message"])["message"] for entry in driver.get_log("performance")]
    finally:
        driver.quit()


@pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER) and not os.environ.get("CI"),
                    reason="needs Debian's chromium and chromium-driver (scripts/setup.sh installs them)")
async def test_docs_renders_in_a_browser_under_its_policy(settings):
    async with running_stack(settings, workers=0) as stack:
        base = str(stack.client.make_url("/")).rstrip("/")
        text, console, events = await asyncio.to_thread(_browse, base + "/docs")
    assert "Look up" in text or "lookup" in text.lower()  # more than the first operation: the whole document
    violations = [entry["message"] for entry in console if "Content Security Policy" in entry["message"]]
    # Redoc's sidebar credits Redocly with a logo from its CDN, whatever the options: the policy blocks it (and Redoc
    # then drops the image), so nothing is fetched from another origin. Nothing else may be blocked.
    assert all(REDOCLY_LOGO in v for v in violations), violations
    requests = {e["params"]["requestId"]: e["params"]["request"]["url"] for e in events
                if e["method"] == "Network.requestWillBeSent"}
    blocked = {e["params"]["requestId"]: e["params"].get("blockedReason") for e in events
               if e["method"] == "Network.loadingFailed"}
    answered = [e["params"]["response"]["url"] for e in events if e["method"] == "Network.responseReceived"]
    elsewhere = {rid: url for rid, url in requests.items() if not url.startswith((base, "data:", "blob:"))}
    assert all(blocked.get(rid) == "csp" for rid in elsewhere), (elsewhere, blocked)
    assert [url for url in answered if not url.startswith((base, "data:", "blob:"))] == []
    assert base + "/openapi.json" in answered and base + "/docs/assets/redoc.standalone.js" in answered


async def test_every_error_is_problem_details(settings):
    async with running_stack(settings, workers=0) as stack:
        answers = {
            "ApiError": await stack.client.get("/v1/batches/x", headers={"Authorization": "Bearer nope"}),
            "unknown path": await stack.client.get("/v1/nowhere"),
            "wrong method": await stack.client.delete("/v1/doses"),
            "too large": await stack.client.post("/v1/certificates/lookup", data=b"x" * (settings.max_body_bytes + 1),
                                                 headers={"Content-Type": "application/json"}),
        }
        bodies = {name: await answer.json() for name, answer in answers.items()}
    for name, answer in answers.items():
        body = bodies[name]
        assert answer.content_type == "application/problem+json", name
        assert set(body) >= {"type", "title", "status", "detail", "error"} and body["status"] == answer.status, body
        assert body["type"] == "about:blank" and body["detail"] == body["error"] and body["detail"], body
    assert [answers[n].status for n in answers] == [401, 404, 405, 413]
    assert bodies["ApiError"]["title"] == "Unauthorized" and answers["ApiError"].headers["WWW-Authenticate"] == "Bearer"
    assert bodies["wrong method"]["title"] == "Method Not Allowed" and "Allow" in answers["wrong method"].headers


async def test_a_backing_service_down_is_a_typed_problem(make_settings):
    settings = make_settings()
    async with running_stack(settings, workers=0) as stack:
        _, token = await stack.site()
        await stack.client.server.app[INGEST].pool.close()  # Postgres is gone for this process: any read is a 503
        answer = await stack.client.get("/v1/batches/x", headers={"Authorization": f"Bearer {token}"})
        body = await answer.json()
    assert answer.status == 503 and answer.content_type == "application/problem+json"
    assert body["type"] == "https://vaxline.example/problems/unavailable" and answer.headers["Retry-After"] == "5"
    assert body["detail"] == body["error"] == "a backing service is unavailable; retry later"
