"""Schemathesis against the running service, with the published document (openapi.json's generator).

Every operation gets the document's examples, a bounded number of valid requests and of invalid ones
(seeded: CI sees the same requests every run), with a token for each security scheme it accepts; then the
document's links are followed from valid requests (a posted batch to its receipt, a correction to the record,
a filed request to its confirmation, its new code and the citizen's view). Every answer must be free of 5xx,
carry problem details (with `error`) when it is a 4xx, and conform to the document (status, media type, headers, body).

Covers: schemathesis against the running service with the document: every operation's examples, 40 valid and
25 invalid requests (seeded, with a token for each scheme it accepts, dates as desks send them half the time
so doses and claims get past validation), then 15 valid requests per operation with links, each followed to
its target (batch to receipt, correction to record, filed request to confirmation, new code and citizen's
view): no 5xx, every 4xx with problem details (`application/problem+json`, `error` beside `detail`), every answer conforming to the document (status, media
type, headers, schema). Rate limits are raised for it (429 stays documented). About 20-30 s;
`VAXLINE_FUZZ_SEED=N` explores other requests. Beside it, what the fuzzer found, as plain regressions: a NUL
character or an out-of-range number or time in a path or query is a 4xx with the `error` body, never a 503
(a value Postgres refuses, class 22, is a 400 wherever it comes from), and a malformed multipart or a NUL in
a correction request is a 400 or a 422.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import traceback

import hypothesis
import msgspec
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from ingest import openapi
from storage import tokens
from tests.conftest import wait_until
from tests.stack import running_stack
from vaxline.sequence import VIETNAM

# schemathesis imports its OpenAPI modules when a schema is first loaded, and the fuzzer loads it in a
# thread. Python 3.11 compiles modules (and pytest rewrites them) with interpreter-wide AST state, and a
# compile in that thread beside one in the main thread once failed with "SystemError: AST constructor
# recursion depth mismatch": load them here, at collection, in the main thread.
schemathesis.openapi.from_dict(openapi.document())

POSITIVE_EXAMPLES = 40  # per operation: enough to walk every parameter, well under a minute for the whole file
NEGATIVE_EXAMPLES = 25
LINKED_EXAMPLES = 15  # per operation with links: the source, then each link's target
SEED = int(os.environ.get("VAXLINE_FUZZ_SEED", "20210814"))  # another seed explores other requests


def error_body(ctx, response, case) -> bool | None:
    """Every 4xx answers RFC 9457 problem details, its own status in `status`, with a human-readable `detail`
    and the same words in `error`."""
    if 400 <= response.status_code < 500:
        assert response.headers.get("content-type", [""])[0].startswith("application/problem+json"), \
            f"a {response.status_code} without a problem details body"
        body = response.json()
        assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"], \
            f"a {response.status_code} without an `error`: {response.text[:200]}"
        assert body["detail"] == body["error"] and body["status"] == response.status_code, response.text[:200]
        assert body["type"] == "about:blank" or body["type"].startswith("https://vaxline.example/problems/")
    return None


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance, error_body]


# Dates as a desk would send them half of the time (a birth date since 1900, a dose since 2021, none in the future),
# so that valid doses and claims get past validation to the pipeline; any date the other half.
REALISTIC_FORMATS = {
    "date": st.dates(dt.date(1900, 1, 1), dt.date(2021, 1, 1)).map(dt.date.isoformat)
    | st.dates().map(dt.date.isoformat),
    "date-time": st.datetimes(dt.datetime(2021, 1, 2), dt.datetime(2025, 12, 31), timezones=st.just(VIETNAM))
    .map(dt.datetime.isoformat) | st.datetimes(timezones=st.just(dt.timezone.utc)).map(dt.datetime.isoformat),
}


for _name, _strategy in REALISTIC_FORMATS.items():  # for this module: only it generates requests
    schemathesis.openapi.format(_name, _strategy)


@schemathesis.serializer("application/msgpack", "application/x-msgpack")
def msgpack_body(ctx, value) -> bytes:
    return msgspec.msgpack.encode(_msgpackable(value))


def _msgpackable(value):
    """msgpack holds integers of 64 bits: a larger one (an invalid request's) goes as its digits, invalid still."""
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**64:
        return str(value)
    if isinstance(value, dict):
        return {key: _msgpackable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_msgpackable(item) for item in value]
    return value


class Fuzzer:
    """Runs in a thread: schemathesis speaks `requests`, while the stack answers on the test's event loop."""

    def __init__(self, base_url: str, credentials: dict[str, str]):
        self.base_url = base_url.rstrip("/")
        self.credentials = credentials  # security scheme -> token
        self.schema = schemathesis.openapi.from_dict(openapi.document())
        self.session = requests.Session()
        self.failures: list[str] = []
        self.requests = 0
        self.linked = 0  # targets reached through a link

    def headers_for(self, scheme: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.credentials[scheme]}"} if scheme else {}

    def schemes_of(self, operation) -> list[str]:
        """Each security requirement's scheme ("" for none), so every kind of caller is tried."""
        requirements = operation.definition.raw.get("security") or [{}]
        return [next(iter(requirement), "") for requirement in requirements]

    def call(self, case, scheme: str):
        self.requests += 1
        response = case.call(base_url=self.base_url, session=self.session, headers=self.headers_for(scheme),
                             timeout=30)
        case.validate_response(response, checks=CHECKS, headers=self.headers_for(scheme))
        return response

    def explore(self, label: str, strategy, schemes: list[str], max_examples: int) -> None:
        @hypothesis.settings(max_examples=max_examples, database=None, deadline=None,
                             phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        @hypothesis.seed(SEED)
        @hypothesis.given(case=strategy, scheme=st.sampled_from(schemes))
        def run(case, scheme):
            self.call(case, scheme)

        try:
            run()
        except (Exception, BaseExceptionGroup) as e:  # noqa: BLE001: every operation is fuzzed, all failures reported
            self.failures.append(f"{label}: {_short(e)}")

    def fuzz_operations(self) -> None:
        for result in self.schema.get_all_operations():
            operation = result.ok()
            schemes = self.schemes_of(operation)
            for n, strategy in enumerate(operation.get_strategies_from_examples()):
                self.explore(f"{operation.label} [example {n}]", strategy, schemes, 1)
            self.explore(f"{operation.label} [valid]", operation.as_strategy(), schemes, POSITIVE_EXAMPLES)
            if operation.definition.raw.get("parameters") or operation.body:  # else there is nothing to break
                self.explore(f"{operation.label} [invalid]",
                             operation.as_strategy(generation_mode=schemathesis.GenerationMode.NEGATIVE), schemes,
                             NEGATIVE_EXAMPLES)

    def follow_links(self) -> None:
        """Every link of the document: a valid source request (its examples first), then the target, given what
        the link carries from the source's request and answer (a posted batch's id to its receipt, ...)."""
        document = self.schema.raw_schema
        by_id = {op["operationId"]: (path, method) for path, item in document["paths"].items()
                 for method, op in item.items()}
        for path, item in document["paths"].items():
            for method, definition in item.items():
                links = [(int(status), link) for status, response in definition["responses"].items()
                         for link in response.get("links", {}).values()]
                if links:
                    source = self.schema[path][method]
                    strategy = st.one_of(*source.get_strategies_from_examples(), source.as_strategy())
                    self.explore_links(source, strategy, links, by_id)

    def explore_links(self, source, strategy, links, by_id) -> None:
        @hypothesis.settings(max_examples=LINKED_EXAMPLES, database=None, deadline=None,
                             phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        @hypothesis.seed(SEED)
        @hypothesis.given(case=strategy, scheme=st.sampled_from(self.schemes_of(source)), data=st.data())
        def run(case, scheme, data):
            # Every target is drawn whatever the source answers: what Hypothesis draws must not depend on the server.
            targets = [(status, link, self.schema[by_id[link["operationId"]][0]][by_id[link["operationId"]][1]])
                       for status, link in links]
            followed = [data.draw(target.as_strategy()) for _, _, target in targets]
            response = self.call(case, scheme)
            for (status, link, target), follow in zip(targets, followed):
                values = {name: _resolve(expression, case, response) for name, expression in link["parameters"].items()}
                if response.status_code != status or None in values.values():  # e.g. a 202 enqueuing nothing
                    continue
                for name, value in values.items():
                    where, _, key = name.rpartition(".")
                    if where == "query":
                        follow.query = {**(follow.query or {}), key: value}
                    else:
                        follow.path_parameters = {**(follow.path_parameters or {}), key: value}
                self.call(follow, self.schemes_of(target)[0])
                self.linked += 1

        try:
            run()
        except (Exception, BaseExceptionGroup) as e:  # noqa: BLE001
            self.failures.append(f"{source.label} [links]: {_short(e)}")


def _short(error: BaseException) -> str:
    return "".join(traceback.format_exception_only(error)).strip()[:3000]


def _resolve(expression: str, case, response):
    """An OpenAPI runtime expression of the two kinds the document uses: `$request.body#/...`, `$response.body#/...`."""
    where, _, pointer = expression.partition("#")
    value = case.body if where == "$request.body" else response.json()
    for key in pointer.strip("/").split("/"):
        if isinstance(value, list) and key.isdigit() and int(key) < len(value):
            value = value[int(key)]
        elif isinstance(value, dict) and key in value:
            value = value[key]
        else:
            return None
    return value


@pytest.fixture
def quiet_http_client():
    """urllib3 logs every request line at DEBUG, national IDs in paths included: not in our logs."""
    logger = logging.getLogger("urllib3")
    level = logger.level
    logger.setLevel(logging.WARNING)
    yield
    logger.setLevel(level)


async def test_the_service_survives_fuzzing_within_its_contract(make_settings, db, quiet_http_client):
    # Limits high enough that the fuzzer reaches the handlers, not only their 429 (documented all the same).
    settings = make_settings(lookup_floor=0.0, lookup_rate_limit=1_000_000, correction_rate_limit=1_000_000)
    async with running_stack(settings) as stack:
        _, site = await stack.site("A-SITE", province=1)
        credentials = {"siteToken": site, "provinceToken": await tokens.issue(db, tokens.PROVINCE, 1),
                       "operatorToken": await tokens.issue(db, tokens.OPERATOR, 0)}
        # The document's examples name this dose: with it persisted they reach real records, not only 404s.
        posted = await stack.post(site, {"doses": [openapi.DOSE_EXAMPLE]})
        batch_id = (await posted.json())["batch_id"]
        await wait_until(lambda: db.fetchval("SELECT true FROM batches WHERE batch_id = $1", batch_id),
                         message="the example dose persisted")
        fuzzer = Fuzzer(str(stack.client.make_url("")), credentials)
        await asyncio.to_thread(fuzzer.fuzz_operations)
        await asyncio.to_thread(fuzzer.follow_links)
    assert fuzzer.requests > 500
    assert not fuzzer.failures, f"{len(fuzzer.failures)} failing:\n\n" + "\n\n".join(fuzzer.failures)


# What the fuzzer found, kept as plain regressions: values Postgres cannot take (a NUL character, a number or a
# time out of its range) and bodies aiohttp cannot parse are the client's error, never a 503 or a 500.
HOSTILE_VALUES = [
    ("GET", "/v1/doses/%00", "siteToken"),
    ("DELETE", "/v1/doses/%00", "siteToken"),
    ("GET", "/v1/certificates/%00", ""),
    ("GET", "/v1/corrections/%00", ""),
    ("GET", "/v1/corrections/%00/audit", "operatorToken"),
    ("GET", "/v1/corrections/CR-AAAAAAAAAAAAAAAAAAAAAAAAAAAA/evidence/99999999999", "operatorToken"),
    ("POST", "/v1/corrections/%00/code", ""),
    ("GET", "/v1/stats?site=%00", "operatorToken"),
    ("GET", "/v1/stats?province=99999", "operatorToken"),
    ("GET", "/v1/stats?province=%C2%B2", "operatorToken"),  # "²": a digit to str.isdigit(), not to int()
    ("GET", "/v1/review?offset=99999999999999999999", "operatorToken"),
    ("GET", "/v1/corrections?offset=13659181955460517888", "operatorToken"),
    ("GET", "/v1/revocations?since=0001-01-01T00:00:00%2B01:00", ""),
    ("GET", "/v1/revocations?since=9999-12-31T23:59:59-01:00", ""),
]


async def _answers(stack, db, requests: list[tuple[str, str, str]]) -> list[tuple[str, int, dict]]:
    _, site = await stack.site("H-001")
    tokens_by_scheme = {"siteToken": site, "operatorToken": await tokens.issue(db, tokens.OPERATOR, 0)}
    answers = []
    for method, path, scheme in requests:
        token = tokens_by_scheme.get(scheme)
        response = await stack.client.request(method, path,
                                              headers={"Authorization": f"Bearer {token}"} if token else {})
        answers.append((f"{method} {path}", response.status, await response.json()))
    return answers


async def test_a_value_postgres_cannot_take_is_the_clients_error(settings, db):
    async with running_stack(settings, workers=0) as stack:
        answers = await _answers(stack, db, HOSTILE_VALUES)
    assert [(request, status) for request, status, body in answers if not 400 <= status < 500 or not body["error"]] \
        == []


async def test_a_batch_id_postgres_cannot_take_is_the_clients_error(settings, db):
    async with running_stack(settings, workers=0) as stack:
        [(_, status, _)] = await _answers(stack, db, [("GET", "/v1/batches/%00", "siteToken")])
    assert status == 404


async def test_a_malformed_correction_request_is_the_clients_error(settings):
    async with running_stack(settings, workers=0) as stack:
        for body in (b"not multipart at all",
                     b"--zz\r\nX\x16: y\r\n\r\nvalue\r\n--zz--\r\n",  # a part header aiohttp refuses
                     b'--zz\r\nContent-Disposition: form-data; name="request"\r\n\r\n{}'):  # no closing boundary
            response = await stack.client.post("/v1/corrections", data=body,
                                               headers={"Content-Type": "multipart/form-data; boundary=zz"})
            assert response.status == 400 and "multipart" in (await response.json())["error"], body
        response = await stack.client.post("/v1/corrections", json={**openapi.CORRECTION_EXAMPLE, "note": "a\x00b"})
        assert response.status == 422
        assert (await response.json())["error"] == "note: must not contain NUL characters"
