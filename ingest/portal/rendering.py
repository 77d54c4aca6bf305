"""How a portal page is answered: Jinja2 templates from the package, the language, the CSRF token, the
security headers, the static files, and the small forms' bodies.

CSRF: a random nonce in a cookie (`vx_csrf`: HttpOnly, SameSite=Strict, set with the first page) and, in
every form, a token that is HMAC(server secret, nonce) (vaxline.links.keyed_digest). A post counts only
when its token matches its own cookie: another site can make a browser send the cookie, but cannot read
the page that holds the token. The token is the same for every page of one browser, so two answers that
must not differ (a miss for an unknown ID and for a wrong birth date) do not.

The Content-Security-Policy allows scripts, styles, images and forms from this origin only: no inline
script (the page's JavaScript is /static/portal.js), no other site, no frame around the pages.
"""

from __future__ import annotations

import dataclasses
import hmac
import re
import secrets
from pathlib import Path
from urllib.parse import parse_qsl

import jinja2
from aiohttp import web

from vaxline.links import keyed_digest

from ..http import ApiError
from .texts import LANGS, TEXTS

HERE = Path(__file__).resolve().parent
COOKIE = "vx_csrf"
_nonce_shape = re.compile(r"[A-Za-z0-9_-]{24}")
FORM_LIMIT = 16 * 1024  # the lookup, verify, code and status forms: an HC1 is at most 8 KiB
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; media-src 'self' blob:;"
       " connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",  # a certificate's signed link must not travel in a Referer
    "Cache-Control": "no-store",  # personal data: no cache on the way may keep a page
    "Permissions-Policy": "camera=(self), microphone=(), geolocation=()",
}
STATIC_TYPES = {".css": "text/css", ".js": "text/javascript", ".svg": "image/svg+xml"}


@dataclasses.dataclass(frozen=True)
class Portal:
    templates: jinja2.Environment
    secret: bytes  # the server secret: CSRF tokens
    static: dict[str, tuple[bytes, str]]  # name: (bytes, content type), read once at start-up


PORTAL = web.AppKey("portal", Portal)


def portal(secret: bytes) -> Portal:
    templates = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                                   trim_blocks=True, lstrip_blocks=True, auto_reload=False)
    static = {path.name: (path.read_bytes(), STATIC_TYPES[path.suffix])
              for path in (HERE / "static").iterdir() if path.suffix in STATIC_TYPES}
    return Portal(templates, secret, static)


class CsrfRefused(ApiError):
    """A form whose token is not the one this browser's cookie was given (403)."""


def lang_of(request: web.Request) -> str:
    lang = request.query.get("lang")
    return lang if lang in LANGS else "vi"


def _nonce(request: web.Request) -> tuple[str, bool]:
    """The browser's CSRF nonce, and whether it is new (to be set as the cookie)."""
    nonce = request.cookies.get(COOKIE, "")
    if _nonce_shape.fullmatch(nonce):
        return nonce, False
    return secrets.token_urlsafe(18), True


def csrf_token(secret: bytes, nonce: str) -> str:
    return keyed_digest(secret, "portal-csrf", nonce)[:40]


def check_csrf(request: web.Request, token: str | None) -> None:
    """403 unless `token` is the one the pages gave this browser's cookie."""
    nonce = request.cookies.get(COOKIE, "")
    expected = csrf_token(request.app[PORTAL].secret, nonce)
    if not _nonce_shape.fullmatch(nonce) or not hmac.compare_digest(expected, token or ""):
        raise CsrfRefused(403, "csrf: the form's token does not match this browser's cookie")


def render(request: web.Request, template: str, *, status: int = 200, headers: dict | None = None,
           **context) -> web.Response:
    """The page, in the request's language, with a CSRF token for its forms and the security headers."""
    state = request.app[PORTAL]
    lang = lang_of(request)
    nonce, new = _nonce(request)
    other = "en" if lang == "vi" else "vi"
    html = state.templates.get_template(template).render(
        t=TEXTS[lang], lang=lang, csrf=csrf_token(state.secret, nonce), q="" if lang == "vi" else "?lang=en",
        other_lang=other, other_href=f"{request.path}?lang={other}", **context)
    response = web.Response(text=html, status=status, content_type="text/html", charset="utf-8",
                            headers={**PAGE_HEADERS, **(headers or {})})
    if new:
        response.set_cookie(COOKIE, nonce, httponly=True, samesite="Strict", secure=request.secure, path="/")
    return response


async def small_form(request: web.Request) -> dict[str, str]:
    """An urlencoded form of at most FORM_LIMIT bytes (413 past it, 415 for another type), its CSRF token
    checked; each field's first value."""
    if request.content_type != "application/x-www-form-urlencoded":
        raise ApiError(415, f"unsupported content type {request.content_type!r}; send the page's form")
    if request.content_length is None or request.content_length > FORM_LIMIT:
        raise ApiError(413, f"a form of at most {FORM_LIMIT // 1024} KiB, with its Content-Length")
    body = await request.content.read(FORM_LIMIT + 1)
    fields: dict[str, str] = {}
    for name, value in parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True):
        fields.setdefault(name, value)
    check_csrf(request, fields.get("csrf"))
    return fields


def field_errors(error: ApiError) -> list[tuple[str, str]]:
    """A 422's `field: reason; ...` as (field, reason) pairs, for the page to show beside its labels."""
    pairs = []
    for part in str(error).split("; "):
        field, sep, reason = part.partition(": ")
        pairs.append((field, reason) if sep else ("", part))
    return pairs


async def get_static(request: web.Request) -> web.Response:
    found = request.app[PORTAL].static.get(request.match_info["name"])
    if found is None:
        raise ApiError(404, "no such file")
    body, content_type = found
    return web.Response(body=body, content_type=content_type,
                        headers={"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"})
