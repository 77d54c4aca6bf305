"""The correction request pages: `/corrections/new`, its code step, and `/corrections/{id}`, the citizen's view.

    GET  /corrections/new                 the form: the API's fields (national_id, full_name, birth_date, phone,
                                          kind, note, dose.* when the kind needs a dose) and evidence images
    POST /corrections/new                 multipart: filed as POST /v1/corrections files it -> the code step
    POST /corrections/{id}/confirm        `code` -> the request id and the link to follow it
    POST /corrections/{id}/code           a new code
    GET  /corrections/{id}                the birth date form; POST: the status and the site's message

Every step is the API's own (ingest.citizen: file_request, confirm_request, new_request_code, citizen_view):
the same limits per address, per person and per phone, the same routing and rooms, the same code, the
same answers whether or not a phone is on record. The form's fields come before its images (the page
orders them so), and they are checked, with the CSRF token, before any image is read.
"""

from __future__ import annotations

import msgspec
from aiohttp import web

from vaxline.citizen import KINDS
from vaxline.provinces import PROVINCES
from vaxline.valuesets import VACCINE_PRODUCTS

from .. import citizen
from ..http import ApiError
from .pages import problem
from .rendering import check_csrf, lang_of, render, small_form
from .texts import TEXTS, VACCINE_NAMES

PERSON_FIELDS = ("national_id", "full_name", "birth_date", "phone", "kind", "note")
DOSE_FIELDS = ("date", "site", "place", "province", "vaccine", "lot", "dose_number", "record_id")
NUMBERS = ("province", "dose_number")
FIELD_LIMIT = 8 * 1024  # a text field of the form (the API's note is at most 2,000 characters)
CHOICES = {"kinds": KINDS, "provinces": sorted(PROVINCES.items()),
           "vaccines": [(code, VACCINE_NAMES.get(code, code)) for code in VACCINE_PRODUCTS]}


def request_body(fields: dict[str, str]) -> bytes:
    """The API's JSON body from the form: empty fields left out, `dose.*` gathered into `dose`, numbers as
    numbers when they are (else as typed, for the API's validation to name)."""
    body: dict = {name: fields[name].strip() for name in PERSON_FIELDS
                  if name != "note" and fields.get(name, "").strip()}
    if fields.get("note"):
        body["note"] = fields["note"]
    dose = {}
    for name in DOSE_FIELDS:
        value = fields.get(f"dose.{name}", "").strip()
        if value:
            dose[name] = int(value) if name in NUMBERS and value.isascii() and value.isdigit() else value
    if dose:
        body["dose"] = dose
    return msgspec.json.encode(body)


def _form_reader(fields: dict[str, str]):
    """A `parts(request, checked)` for citizen.file_request that reads the page's multipart form into `fields`
    and checks the CSRF token and the request before the first image is read."""
    async def filed(request: web.Request, checked):
        check_csrf(request, fields.get("csrf"))
        return await checked(request_body(fields))

    async def parts(request: web.Request, checked):
        if request.content_type != "multipart/form-data":
            raise ApiError(415, f"unsupported content type {request.content_type!r}; send the page's form")
        if request.content_length and request.content_length > citizen._multipart_limit():
            raise ApiError(413, f"body of {request.content_length} bytes: too large")
        reader = await request.multipart()
        filing, images = None, []
        while (part := await reader.next()) is not None:
            if part.name == "evidence":
                filing = filing or await filed(request, checked)
                if not part.filename:  # a file field left empty: the browser sends a nameless, empty part
                    await part.release()
                    continue
                await citizen.evidence_image(part, images)
            elif filing is None and part.name not in fields:
                fields[part.name] = (await citizen.read_part(part, FIELD_LIMIT, part.name)).decode("utf-8", "replace")
            else:
                raise ApiError(422, f"{part.name}: a field after the evidence images, or twice")
        return filing or await filed(request, checked), images

    return parts


async def get_new(request: web.Request) -> web.Response:
    return render(request, "correction_new.html", form={"kind": "missing_dose"}, **CHOICES)


async def post_new(request: web.Request) -> web.Response:
    fields: dict[str, str] = {}
    try:
        filed = await citizen.file_request(request, _form_reader(fields))
    except ApiError as e:
        said = problem(request, e)
        fields.pop("csrf", None)
        return render(request, "correction_new.html", status=e.status, headers=said["headers"], form=fields,
                      said=said, **CHOICES)
    return render(request, "correction_code.html", request_id=filed["request_id"],
                  expires=filed["code_expires_at"][:16].replace("T", " ") + " UTC")


async def post_confirm(request: web.Request) -> web.Response:
    request_id = request.match_info["request_id"]
    try:
        form = await small_form(request)
        await citizen.confirm_request(request, msgspec.json.encode({"code": form.get("code", "").strip()}))
    except ApiError as e:
        said = problem(request, e, not_found="no_request")
        said["message"] = _code_problem(request, e) or said["message"]
        if e.status == 409:  # confirmed already: the request goes on
            return render(request, "correction_done.html", request_id=request_id, said=said)
        return render(request, "correction_code.html", status=e.status, headers=said["headers"],
                      request_id=request_id, said=said, expires=None)
    return render(request, "correction_done.html", request_id=request_id)


def _code_problem(request: web.Request, error: ApiError) -> str | None:
    key = {422: "wrong_code", 429: "locked", 410: "expired", 409: "used"}.get(error.status)
    if error.status == 422 and not str(error).startswith("code: wrong"):
        return None  # the field's own rule (six digits): shown as the API words it
    return TEXTS[lang_of(request)][key] if key else None


async def post_code(request: web.Request) -> web.Response:
    request_id = request.match_info["request_id"]
    try:
        await small_form(request)
        answer = await citizen.new_request_code(request)
    except ApiError as e:
        said = problem(request, e, not_found="no_request")
        if e.status in (409, 429):
            said["message"] = TEXTS[lang_of(request)]["used" if e.status == 409 else "exhausted"]
        return render(request, "correction_code.html", status=e.status, headers=said["headers"],
                      request_id=request_id, said=said, expires=None)
    return render(request, "correction_code.html", request_id=request_id, resent=True,
                  expires=answer["code_expires_at"][:16].replace("T", " ") + " UTC")


async def get_status(request: web.Request) -> web.Response:
    return render(request, "correction_status.html", request_id=request.match_info["request_id"], view=None)


async def post_status(request: web.Request) -> web.Response:
    request_id = request.match_info["request_id"]
    try:
        form = await small_form(request)
        citizen._request_id(request, citizen.CITIZEN_UNKNOWN)  # 404 for what cannot be an id, as the API
        view = await citizen.citizen_view(request, request_id, form.get("birth_date", "").strip())
    except ApiError as e:
        said = problem(request, e, not_found="status_unknown")
        return render(request, "correction_status.html", status=e.status, headers=said["headers"],
                      request_id=request_id, view=None, said=said)
    return render(request, "correction_status.html", request_id=request_id, view=view)
