"""The published contract: openapi.json is the generator's output, names every route and only those, and every
answer of a real session through every operation conforms to it.

Covers: `openapi.json` is the generator's output; the document names every route `app.router` registers and
only those; it is a valid OpenAPI 3.1 document whose examples satisfy their schemas, and its Dose schema
states the validator's rules; a real session through every operation (doses, receipts, corrections,
certificates as JSON/SVG/PNG, lookup and verify, statistics and review as JSON and CSV, reconciliation, a
correction request from filing with an image to approval) answers each with a documented status, media type
and body, and every operation succeeds at least once; `GET /openapi.json` serves the generated document.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import urllib.parse
from pathlib import Path

import jsonschema_rs
import msgspec
import pytest
import requests
import schemathesis
from PIL import Image
from schemathesis.specs.openapi.definitions import (
    OPENAPI_31,  # the OpenAPI 3.1 meta-schema schemathesis ships
)

from ingest import openapi
from ingest.app import Ingest, build_app
from storage import tokens
from tests.conftest import wait_until
from tests.factory import dose
from tests.stack import running_stack
from vaxline.config import Settings

ROOT = Path(__file__).resolve().parent.parent
REGENERATE = "regenerate it: python -m ingest.openapi > openapi.json"


def test_the_repository_copy_is_the_generators_output():
    kept = (ROOT / "openapi.json").read_text(encoding="utf-8")
    assert kept == openapi.text(), f"openapi.json is stale: {REGENERATE}"


def routes_of(app) -> set[tuple[str, str]]:
    """(METHOD, path template) of every route; HEAD only where aiohttp did not add it beside a GET. The portal's
    pages (routes named `portal.*`, ingest/portal) are HTML for people, not API operations."""
    routes = {(route.method, route.resource.canonical) for route in app.router.routes()
              if not (route.name or "").startswith("portal.")}
    return {(method, path) for method, path in routes if method != "HEAD" or ("GET", path) not in routes}


def test_the_document_names_every_route_and_only_those(tmp_path):
    settings = Settings(database_url="postgresql://unused", redis_url="redis://unused", data_dir=tmp_path,
                        otp_sender="dev")
    # build_app only registers routes and stores what it is given: no service is reached.
    app = build_app(Ingest(settings=settings, pool=None, redis=None, auth=None, enqueuer=None, validator=None))
    documented = {(method.upper(), path) for path, item in openapi.document()["paths"].items() for method in item}
    registered = routes_of(app)
    assert registered - documented == set(), f"routes missing from the document ({REGENERATE} after adding them" \
                                             " to ingest/openapi.py OPERATIONS)"
    assert documented - registered == set(), "the document names routes the app does not register"


def test_the_document_is_openapi_3_1_with_security_on_every_operation():
    document = openapi.document()
    assert document["openapi"] == "3.1.0"
    errors = [f"{'/'.join(map(str, e.instance_path))}: {e.message[:200]}"
              for e in jsonschema_rs.validator_for(OPENAPI_31).iter_errors(document)]
    assert errors == [], "not a valid OpenAPI 3.1 document"
    schemes = set(document["components"]["securitySchemes"])
    assert schemes == {"siteToken", "provinceToken", "operatorToken"}
    for path, item in document["paths"].items():
        for method, operation in item.items():
            named = {name for requirement in operation["security"] for name in requirement}
            assert named <= schemes, (method, path)
            if named:  # a route that takes a token answers 401 with the error body
                assert "401" in operation["responses"], (method, path)
            for status, response in operation["responses"].items():
                if int(status) >= 400 and path != "/readyz":
                    assert response["content"] == {"application/problem+json": {
                        "schema": {"$ref": "#/components/schemas/Problem"}}}, (method, path, status)


def _validator(document: dict, schema: dict):
    return jsonschema_rs.validator_for({**schema, "components": document["components"]}, validate_formats=True)


def test_every_example_satisfies_its_schema():
    document = openapi.document()
    checked = 0
    for path, item in document["paths"].items():
        for method, operation in item.items():
            for parameter in operation.get("parameters", []):
                if "example" in parameter:
                    _validator(document, parameter["schema"]).validate(parameter["example"])
                    checked += 1
            media = [*operation.get("requestBody", {}).get("content", {}).values(),
                     *(m for r in operation["responses"].values() for m in r.get("content", {}).values())]
            for content in media:
                if "example" in content:
                    _validator(document, content["schema"]).validate(content["example"])
                    checked += 1
    for name, schema in document["components"]["schemas"].items():
        for example in schema.get("examples", []):
            _validator(document, {"$ref": f"#/components/schemas/{name}"}).validate(example)
            checked += 1
    assert checked >= 20


def test_the_dose_schema_states_the_validators_rules():
    dose_schema = openapi.document()["components"]["schemas"]["Dose"]
    properties = dose_schema["properties"]
    assert properties["national_id"]["pattern"] == r"^(?:[0-9]{12}|[0-9]{9}|[A-Z][0-9]{7,8})$"
    assert properties["phone"]["anyOf"][0]["pattern"] == r"^\+?[0-9]{8,15}$"
    assert (properties["record_id"]["minLength"], properties["record_id"]["maxLength"]) == (1, 64)
    assert properties["dose_number"]["minimum"] == 1 and properties["dose_number"]["maximum"] == 9
    assert "EU/1/21/1529" in properties["vaccine"]["enum"]
    assert dose_schema["additionalProperties"] is False
    for name in ("record_id", "full_name", "lot"):  # check_dose: printable
        assert properties[name]["pattern"] == openapi.PRINTABLE_PATTERN
    assert "2021-01-01" in properties["administered_at"]["description"]
    assert "1900-01-01" in properties["birth_date"]["description"]


# -- a real session through every operation, each answer checked against the document ---------------------------

class Contract:
    """Calls the running stack over HTTP and checks each answer against the document: a documented status, a
    documented media type, a body that satisfies the schema (schemathesis's own validation)."""

    def __init__(self, base_url: str, document: dict):
        self.base_url = base_url.rstrip("/")
        self.document = document
        self.schema = schemathesis.openapi.from_dict(document)
        self.session = requests.Session()
        self.seen: set[tuple[str, str, int]] = set()

    async def call(self, method: str, template: str, *, token: str | None = None, path: dict | None = None,
                   **kwargs) -> requests.Response:
        url = self.base_url + template.format(**{k: urllib.parse.quote(str(v), safe="")
                                                  for k, v in (path or {}).items()})
        headers = kwargs.pop("headers", {})
        if token:
            headers["Authorization"] = f"Bearer {token}"
        response = await asyncio.to_thread(self.session.request, method, url, headers=headers, timeout=30, **kwargs)
        self.check(method, template, response)
        return response

    def check(self, method: str, template: str, response: requests.Response) -> None:
        operation = self.document["paths"][template][method.lower()]
        status = str(response.status_code)
        assert status in operation["responses"], f"{method} {template}: undocumented {status}: {response.text[:300]}"
        content = operation["responses"][status].get("content", {})
        media_type = response.headers.get("Content-Type", "").split(";")[0]
        assert media_type in content, f"{method} {template} {status}: undocumented {media_type}"
        if response.status_code >= 400:
            assert media_type == "application/problem+json"
            problem = response.json()
            assert isinstance(problem.get("error"), str) and problem["detail"] == problem["error"]
            assert problem["status"] == response.status_code
        self.schema[template][method].validate_response(response)
        self.seen.add((method, template, response.status_code))

    def operations_answered_2xx(self) -> set[tuple[str, str]]:
        return {(method, path) for method, path, status in self.seen if status < 300}


def picture() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32, 32), (20, 120, 200)).save(out, format="PNG")
    return out.getvalue()


def last_code(settings, request_id: str) -> str:
    lines = (settings.data_dir / "otp-outbox.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if json.loads(line)["request_id"] == request_id][-1]["code"]


async def test_every_operation_answers_as_documented(make_settings, db):
    settings = make_settings(lookup_floor=0.0)
    person = dose(7001, administered_at="2021-07-01T09:00:00+07:00", record_prefix="OA")
    second = {**dose(7001, record_prefix="OB", administered_at="2021-08-01T09:00:00+07:00")}
    other = dose(7002, record_prefix="OC")
    async with running_stack(settings, certifiers=1, reviewers=1) as stack:
        api = Contract(str(stack.client.make_url("")), openapi.document())
        _, site = await stack.site("OA-001", province=1)
        province = await tokens.issue(db, tokens.PROVINCE, 1)
        operator = await tokens.issue(db, tokens.OPERATOR, 0)

        for path in ("/healthz", "/readyz", "/metrics", "/docs"):
            await api.call("GET", path)
        for asset in ("redoc.standalone.js", "logo-mini.svg", "index.html"):  # the last one is not served: 404
            await api.call("GET", "/docs/assets/{asset}", path={"asset": asset})
        served = await api.call("GET", "/openapi.json")
        assert served.json() == openapi.document()

        posted = await api.call("POST", "/v1/doses", token=site,
                                json={"doses": [person, {**other, "national_id": "12"}]})
        assert posted.status_code == 202 and posted.json()["accepted"] == 1
        packed = await api.call("POST", "/v1/doses", token=site,
                                data=msgspec.msgpack.encode({"doses": [second, other]}),
                                headers={"Content-Type": "application/msgpack"})
        for batch_id in (posted.json()["batch_id"], packed.json()["batch_id"]):
            await wait_until(lambda: _persisted(api, site, batch_id), message="a persisted receipt")

        nid = person["national_id"]
        await api.call("GET", "/v1/persons/{national_id}/doses", token=site, path={"national_id": nid})
        await api.call("GET", "/v1/persons/{national_id}/doses", token=province, path={"national_id": nid})  # 403
        await api.call("GET", "/v1/persons/{national_id}", token=operator, path={"national_id": nid})

        uvci = await wait_until(lambda: db.fetchval(
            "SELECT uvci FROM certificates WHERE national_id = $1 AND status = 'current'"
            " AND jsonb_array_length(doses) = 2", nid), message="a certificate with two doses")
        summary = await api.call("GET", "/v1/certificates/{uvci}", path={"uvci": uvci})
        assert summary.json()["status"] == "current" and "hc1" not in summary.json()
        await api.call("GET", "/v1/certificates/{uvci}", path={"uvci": uvci}, params={"format": "png"})  # 403
        found = await api.call("POST", "/v1/certificates/lookup", json={"national_id": nid,
                                                                         "birth_date": person["birth_date"]})
        assert found.json()["uvci"] == uvci
        link = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(found.json()["link"]).query))
        certificate = await api.call("GET", "/v1/certificates/{uvci}", path={"uvci": uvci}, params=link)
        for fmt in ("svg", "png"):
            await api.call("GET", "/v1/certificates/{uvci}", path={"uvci": uvci}, params={**link, "format": fmt})
        await api.call("POST", "/v1/certificates/lookup", json={"national_id": nid, "birth_date": "1900-01-01"})
        verdict = await api.call("POST", "/v1/certificates/verify", json={"hc1": certificate.json()["hc1"]})
        assert verdict.json()["valid"] is True
        await api.call("GET", "/v1/trust-list")
        await api.call("GET", "/v1/revocations", params={"since": "2021-01-01T00:00:00Z"})

        replaced = await api.call("PUT", "/v1/doses/{record_id}", token=site, path={"record_id": second["record_id"]},
                                  json={**second, "lot": "ABV5301"})
        withdrawn = await api.call("DELETE", "/v1/doses/{record_id}", token=site,
                                   path={"record_id": other["record_id"]})
        for batch_id in (replaced.json()["batch_id"], withdrawn.json()["batch_id"]):
            await wait_until(lambda: _persisted(api, site, batch_id), message="a persisted correction")
        history = await api.call("GET", "/v1/doses/{record_id}", token=site, path={"record_id": second["record_id"]})
        assert [v["op"] for v in history.json()["versions"]] == ["insert", "replace"]
        gone = await api.call("GET", "/v1/doses/{record_id}", token=site, path={"record_id": other["record_id"]})
        assert gone.json()["status"] == "withdrawn"
        again = await api.call("DELETE", "/v1/doses/{record_id}", token=site, path={"record_id": other["record_id"]})
        assert again.status_code == 409

        await wait_until(lambda: db.fetchval("SELECT NOT EXISTS (SELECT 1 FROM persons WHERE review_due)"),
                         message="the reviewers to catch up")
        for token, params in ((site, {}), (province, {"group_by": "site,day"}),
                              (operator, {"group_by": "province,site,product,dose,day", "format": "csv"})):
            await api.call("GET", "/v1/stats", token=token, params=params)
        await api.call("GET", "/v1/review", token=operator, params={"limit": 10})
        await api.call("GET", "/v1/review", token=province, headers={"Accept": "text/csv"})
        await api.call("GET", "/v1/reconciliation", token=operator)
        await api.call("GET", "/v1/reconciliation", token=operator, params={"format": "csv"})

        claim = {"national_id": nid, "full_name": person["full_name"], "birth_date": person["birth_date"],
                 "phone": "0987654321", "kind": "missing_dose",
                 "dose": {"date": "2021-09-01", "site": "OA-001", "vaccine": "EU/1/21/1529", "lot": "ABV5302",
                          "dose_number": 3}}
        filed = await api.call("POST", "/v1/corrections", files=[
            ("request", (None, json.dumps(claim), "application/json")),
            ("evidence", ("phieu.png", picture(), "image/png"))])
        request_id = filed.json()["request_id"]
        pending = await api.call("POST", "/v1/corrections", json={**claim, "kind": "wrong_personal_details"})
        await api.call("POST", "/v1/corrections/{request_id}/code", path={"request_id": pending.json()["request_id"]})
        await api.call("POST", "/v1/corrections/{request_id}/confirm", path={"request_id": request_id},
                       json={"code": last_code(settings, request_id)})
        await api.call("GET", "/v1/corrections/{request_id}", path={"request_id": request_id},
                       params={"birth_date": person["birth_date"]})
        await api.call("GET", "/v1/corrections/{request_id}", token=site, path={"request_id": request_id})
        await api.call("GET", "/v1/corrections/{request_id}/evidence/{n}", token=province,
                       path={"request_id": request_id, "n": 1})
        await api.call("GET", "/v1/corrections", token=site)
        decided = await api.call("POST", "/v1/corrections/{request_id}/decision", token=site,
                                 path={"request_id": request_id},
                                 json={"decision": "approve", "message": "Đã bổ sung."})
        assert decided.json()["applied"][0]["op"] == "insert", decided.text
        audit = await api.call("GET", "/v1/corrections/{request_id}/audit", token=operator,
                               path={"request_id": request_id})
        assert [e["action"] for e in audit.json()["entries"]][-1] == "applied:insert"

    documented = {(method.upper(), path) for path, item in api.document["paths"].items() for method in item}
    assert documented - api.operations_answered_2xx() == set(), "operations this session never saw succeed"


async def _persisted(api: Contract, token: str, batch_id: str) -> bool:
    receipt = await api.call("GET", "/v1/batches/{batch_id}", token=token, path={"batch_id": batch_id})
    return receipt.json()["status"] == "persisted"


@pytest.fixture(autouse=True)
def quiet_http_client_logs():
    """urllib3 logs each request line at DEBUG, paths with national IDs included: keep it out of the logs."""
    logger = logging.getLogger("urllib3")
    level = logger.level
    logger.setLevel(logging.WARNING)
    yield
    logger.setLevel(level)

