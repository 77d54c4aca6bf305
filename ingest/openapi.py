"""The OpenAPI 3.1 document of the HTTP API, generated from the msgspec types the handlers decode and answer.

    python -m ingest.openapi > openapi.json

Request bodies are the Structs the handlers decode (vaxline.doses, vaxline.citizen, ingest.certificates);
answers are the Structs of ingest.schemas. msgspec turns their types into JSON Schema
(`msgspec.json.schema_components`): patterns, enums, lengths and bounds come from the same annotations that
validate. The rules a type cannot state (vaxline.doses.check_dose: printable text, date ranges) are added
in `ingest/operations.py` (`DOSE_RULES`, beside every operation), so that a client, or a fuzzer, can build a dose that passes. Every path and method
ingest registers is here, and nothing else: tests/test_openapi.py compares the document with `app.router`
and the copy kept in the repository (`openapi.json`) with this generator; tests/test_fuzz.py fuzzes the
running service with it. GET /openapi.json serves it.
"""

from __future__ import annotations

import copy
import functools
import json
import sys
from typing import Any

import msgspec
from aiohttp import web

from vaxline.citizen import Confirmation, Decision, RequestBody
from vaxline.doses import DoseBatch

from . import schemas
from .certificates import LookupRequest, VerifyRequest
from .http import PROBLEM_JSON, problem
from .operations import (  # noqa: F401 (the examples and the pattern, read by the tests from here)
    _RETRY_AFTER,
    API_VERSION,
    CLAIM_RULES,
    CORRECTION_EXAMPLE,
    DOSE_EXAMPLE,
    DOSE_RULES,
    HEADERS,
    MAX_BATCH_DOSES,
    OPENAPI_VERSION,
    OPERATIONS,
    PRINTABLE_PATTERN,
    REF,
    SECURITY_SCHEMES,
    Answer,
    Operation,
    _ref,
)

# -- the document ----------------------------------------------------------------------------------------------

def _schema_of(body) -> dict:
    if isinstance(body, tuple):
        return {"oneOf": [_ref(t.__name__) for t in body]}
    return _ref(body.__name__)


def _response(answer: Answer) -> dict:
    content = {}
    if answer.body is not None:
        content["application/json"] = {"schema": _schema_of(answer.body)}
        if answer.example is not None:
            content["application/json"]["example"] = answer.example
    for media, schema in answer.media:
        content[media] = {"schema": schema}
    response: dict[str, Any] = {"description": answer.description, "content": content}
    if answer.headers:
        response["headers"] = {name: {"$ref": f"#/components/headers/{name}"} for name in answer.headers}
    if answer.links:
        response["links"] = {name: {"operationId": target, "parameters": parameters}
                             for name, target, parameters in answer.links}
    return response


def _error(status: int, when: str) -> dict:
    response: dict[str, Any] = {"description": when, "content": {PROBLEM_JSON: {"schema": _ref("Problem")}}}
    headers = {"WWW-Authenticate": {"$ref": "#/components/headers/WWW-Authenticate"}} if status == 401 else {}
    if status in _RETRY_AFTER:
        headers["Retry-After"] = {"$ref": "#/components/headers/Retry-After"}
    if headers:
        response["headers"] = headers
    return response


def _operation(op: Operation) -> dict:
    out: dict[str, Any] = {"operationId": op.operation_id, "summary": op.summary, "tags": [op.tag]}
    if op.description:
        out["description"] = op.description
    out["security"] = [{name: []} if name else {} for name in op.auth]
    if op.parameters:
        out["parameters"] = list(op.parameters)
    if op.body is not None:
        out["requestBody"] = op.body
    responses = {str(status): _response(answer) for status, answer in op.answers.items()}
    responses.update({str(status): _error(status, when) for status, when in op.errors.items()})
    out["responses"] = dict(sorted(responses.items()))
    return out


def _components() -> dict[str, Any]:
    requests = (DoseBatch, LookupRequest, VerifyRequest, RequestBody, Confirmation, Decision)
    _, components = msgspec.json.schema_components((*requests, *schemas.RESPONSES), ref_template=REF)
    dose = components["Dose"]
    for name, rules in DOSE_RULES.items():
        dose["properties"][name].update(rules)
    dose["examples"] = [DOSE_EXAMPLE]
    correction = copy.deepcopy(dose)  # PUT /v1/doses/{record_id}: the path names the record
    correction.update(title="DoseCorrection", description="A record's new fields: a dose whose `record_id` may be"
                      " left out (if present, it must equal the path's).")
    correction["required"] = [name for name in dose["required"] if name != "record_id"]
    components["DoseCorrection"] = correction
    components["DoseBatch"]["properties"]["doses"]["maxItems"] = MAX_BATCH_DOSES
    components["RequestBody"]["allOf"] = CLAIM_RULES
    components["Problem"]["examples"] = [problem(401, "missing or unknown bearer token")]
    return _ecma_patterns(dict(sorted(components.items())))


def _ecma_patterns(schema):
    """Python's `\\Z` (vaxline.doses._whole) is what `$` means in JSON Schema (ECMA-262): the end of the string."""
    if isinstance(schema, dict):
        return {key: value.removesuffix(r"\Z") + "$"
                if key == "pattern" and isinstance(value, str) and value.endswith(r"\Z") else _ecma_patterns(value)
                for key, value in schema.items()}
    if isinstance(schema, list):
        return [_ecma_patterns(item) for item in schema]
    return schema


def document() -> dict[str, Any]:
    """The OpenAPI document, as a dict."""
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method] = _operation(op)
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "vaxline",
            "version": API_VERSION,
            "description": "The ingestion core of a national vaccination platform: sites post doses, citizens"
                           " look up, verify and correct their certificates. Every error answers RFC 9457 problem"
                           " details (`application/problem+json`: `type`, `title`, `status`, `detail`), with"
                           " `error`, the same words as `detail`, for existing clients"
                           " (docs/api.md#errors-and-limits). Any endpoint that reads Postgres or Redis answers 503"
                           " with `Retry-After` when they"
                           " fail under it. aiohttp answers HEAD beside every GET (not listed), and problem"
                           " details with 404 or 405 for an unknown path or method. An integer is written as one"
                           " (`2`, not `2.0`, which JSON Schema would also call an integer). `/docs` shows this"
                           " document (Redoc, served from the installed package).",
        },
        "tags": [{"name": name} for name in dict.fromkeys(op.tag for op in OPERATIONS)],
        "paths": paths,
        "components": {
            "schemas": _components(),
            "securitySchemes": SECURITY_SCHEMES,
            "headers": HEADERS,
        },
    }


@functools.cache
def text() -> str:
    """The document as the repository keeps it (`openapi.json`)."""
    return json.dumps(document(), indent=2, ensure_ascii=False) + "\n"


async def get_openapi(request: web.Request) -> web.Response:
    return web.Response(text=text(), content_type="application/json")


if __name__ == "__main__":
    sys.stdout.buffer.write(text().encode())
