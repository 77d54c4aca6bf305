"""The certificate pages: `/`, the lookup, and `/verify`, the verifier's page.

Both answer through the API's own code (ingest.certificates): the lookup is admitted by the same per-address
limiter before its form is read, counted per national ID, asks for the same one-time code past the guess
limit and is held to the same floor (`looked_up`); the verifier judges with the same trust list and
revocations (`verdict_of`). A page mirrors the API's status (200, 403, 404, 422, 429 with Retry-After,
503), so a miss answers one page, byte for byte, for an unknown ID and for a wrong birth date.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Mapping

import msgspec
from aiohttp import web

from .. import certificates
from ..certificates import CERTIFICATES, MAX_HC1, LookupRequest
from ..http import ApiError
from .rendering import CsrfRefused, field_errors, lang_of, render, small_form
from .texts import TEXTS, VACCINE_NAMES

_lookup = msgspec.json.Decoder(LookupRequest)
LOOKUP_FIELDS = ("national_id", "birth_date", "code")


def problem(request: web.Request, error: ApiError, *, not_found: str = "miss") -> dict:
    """What a page says for an error of the API's code: a message in the page's language, the fields a 422
    names, and the headers to keep (Retry-After)."""
    t = TEXTS[lang_of(request)]
    retry_after = (error.headers or {}).get("Retry-After")
    match error.status:
        case 403 if isinstance(error, CsrfRefused):
            message = t["csrf"]
        case 403:
            message = t["code_needed"]
        case 404:
            message = t[not_found]
        case 422 | 400 | 413 | 415:
            return {"message": t["invalid"], "errors": field_errors(error), "headers": {}}
        case 429:
            message = t["rate_limited"].format(seconds=retry_after or 60)
        case _:
            message = t["unavailable"]
    return {"message": message, "errors": [], "headers": {"Retry-After": retry_after} if retry_after else {}}


# GET / and POST /

async def get_lookup(request: web.Request) -> web.Response:
    return render(request, "lookup.html", form={}, code_needed=False)


async def post_lookup(request: web.Request) -> web.Response:
    started = time.monotonic()
    form: dict[str, str] = {}
    try:
        await certificates.admit_lookup(request)  # as the API: per address, before the body is read
        form = await small_form(request)
        query = certificates.decoded(msgspec.json.encode(_lookup_fields(form)), _lookup, LookupRequest)
        record = await certificates.looked_up(request, query, started)
    except ApiError as e:
        said = problem(request, e)
        code_needed = bool(form.get("code")) or (e.status == 403 and not isinstance(e, CsrfRefused))
        form = {name: form.get(name, "") for name in ("national_id", "birth_date")}  # never the code back
        return render(request, "lookup.html", status=e.status, headers=said["headers"], form=form,
                      code_needed=code_needed, said=said)
    return render(request, "certificate.html", certificate=certificate_view(record, request))


def _lookup_fields(form: Mapping[str, str]) -> dict[str, str]:
    """The API's lookup body from the form: trimmed, an empty code left out."""
    return {name: form[name].strip() for name in LOOKUP_FIELDS if form.get(name, "").strip()}


def certificate_view(record: Mapping, request: web.Request) -> dict:
    """What the certificate page shows: name, birth date, the counted doses in order, the QR's signed link."""
    doses = msgspec.json.decode(record["doses"]) if isinstance(record["doses"], (str, bytes)) else record["doses"]
    counted = sorted((d for d in doses if d.get("counted", True)), key=lambda d: (d["dn"], d["date"]))
    query, _ = request.app[CERTIFICATES].links.query(record["uvci"])
    return {
        "full_name": record["full_name"], "birth_date": record["birth_date"], "status": record["status"],
        "expires_at": _date(record["expires_at"]), "hc1": record["hc1"], "uvci": record["uvci"],
        "link": f"/v1/certificates/{record['uvci']}?{query}",
        "doses": [{**d, "vaccine_name": VACCINE_NAMES.get(d["vaccine"], d["vaccine"])} for d in counted],
    }


def _date(value) -> dt.date | None:
    return value.date() if isinstance(value, dt.datetime) else value


# GET /verify and POST /verify

async def get_verify(request: web.Request) -> web.Response:
    return render(request, "verify.html", hc1="", result=None)


async def post_verify(request: web.Request) -> web.Response:
    hc1 = ""
    try:
        form = await small_form(request)
        hc1 = form.get("hc1", "").strip()
        if not hc1 or len(hc1) > MAX_HC1:
            raise ApiError(422, f"hc1: must be a string of 1-{MAX_HC1} characters")
        verdict = await certificates.verdict_of(request, hc1)
    except ApiError as e:
        said = problem(request, e)
        return render(request, "verify.html", status=e.status, headers=said["headers"], hc1=hc1, result=None,
                      said=said)
    return render(request, "verify.html", hc1=hc1, result=verdict_view(verdict))


def verdict_view(verdict) -> dict:
    """The verdict as the page shows it: valid or not, why not, and what the certificate states."""
    payload = verdict.payload or {}
    name = payload.get("nam") if isinstance(payload.get("nam"), dict) else {}
    entries = payload.get("v") if isinstance(payload.get("v"), list) else []
    doses = [{"dn": v.get("dn"), "sd": v.get("sd"), "date": v.get("dt"), "lot": None,
              "vaccine_name": VACCINE_NAMES.get(v.get("mp"), v.get("mp"))} for v in entries if isinstance(v, dict)]
    return {
        "valid": verdict.valid, "stage": verdict.stage, "reason": verdict.reason,
        # Vietnamese order, family name first, as the lookup shows it
        "full_name": " ".join(part for part in (name.get("fn"), name.get("gn")) if isinstance(part, str)),
        "birth_date": payload.get("dob"), "doses": doses,
    }
