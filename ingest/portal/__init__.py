"""The citizen portal: server-rendered pages on ingest's own origin, beside the API (whose paths do not change).

    GET/POST /                       certificate lookup (national ID, birth date, the code past the guess limit)
    GET/POST /verify                 a verifier's page: an HC1 judged with the trust list and revocations
    GET/POST /corrections/new        a correction request, then its code step
    POST     /corrections/{id}/confirm, /corrections/{id}/code
    GET/POST /corrections/{id}       the citizen's view of a request, given the birth date
    GET      /static/{name}          the pages' stylesheet and script, from this package

Pages are Jinja2 templates (`templates/`), Vietnamese by default and English with `?lang=en`
(`texts.py`); each answers through the API's own code, so the API's rate limits and lookup rules hold
(`pages.py`, `corrections.py`). Headers, CSRF and forms: `rendering.py`. The routes are named `portal.*`:
they are pages, not API operations, and openapi.json leaves them out.
"""

from __future__ import annotations

from aiohttp import web

from vaxline.links import server_secret

from ..http import INGEST
from . import corrections, pages
from .rendering import PORTAL, get_static, portal


def register(app: web.Application) -> None:
    """Mount the pages; after ingest.certificates and ingest.citizen, whose state they use."""
    app[PORTAL] = portal(server_secret(app[INGEST].settings))
    route = app.router
    route.add_get("/", pages.get_lookup, name="portal.lookup")
    route.add_post("/", pages.post_lookup, name="portal.lookup_post")
    route.add_get("/verify", pages.get_verify, name="portal.verify")
    route.add_post("/verify", pages.post_verify, name="portal.verify_post")
    route.add_get("/corrections/new", corrections.get_new, name="portal.correction")
    route.add_post("/corrections/new", corrections.post_new, name="portal.correction_post")
    route.add_post("/corrections/{request_id}/confirm", corrections.post_confirm, name="portal.confirm")
    route.add_post("/corrections/{request_id}/code", corrections.post_code, name="portal.code")
    route.add_get("/corrections/{request_id}", corrections.get_status, name="portal.status")
    route.add_post("/corrections/{request_id}", corrections.post_status, name="portal.status_post")
    route.add_get("/static/{name}", get_static, name="portal.static")
