"""`/docs`: the API reference, rendered by Redoc from `/openapi.json`, with no CDN.

    GET /docs                       a small page of ours: <redoc spec-url="/openapi.json"> and one script
    GET /docs/assets/{asset}        Redoc's standalone bundle, as the `openapi-ui-bundles` package installs it

The page loads nothing from another origin: the script is read from the installed package (once per
process, then kept in memory), and the page has no inline script, so its Content-Security-Policy allows
scripts from this origin only. Redoc writes its styles into <style> elements at run time (styled-components)
and runs its search in a worker made from a blob: URL, which the policy allows for this page alone.
"""

from __future__ import annotations

import functools
import hashlib

import openapi_ui_bundles.redoc
from aiohttp import web

from .http import ApiError

# The assets a page may ask for, and their media types: nothing else of the package's folder is served.
ASSETS = {"redoc.standalone.js": "text/javascript", "logo-mini.svg": "image/svg+xml"}

CONTENT_SECURITY_POLICY = "; ".join((
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self' 'unsafe-inline'",  # Redoc's run-time <style> elements (no script runs from them)
    "img-src 'self' data:",
    "font-src 'self' data:",
    "connect-src 'self'",  # /openapi.json
    "worker-src 'self' blob:",  # Redoc's search index
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
))

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>vaxline API</title>
<link rel="icon" href="/docs/assets/logo-mini.svg" type="image/svg+xml">
</head>
<body>
<redoc spec-url="/openapi.json" hide-hostname="true"></redoc>
<script src="/docs/assets/redoc.standalone.js"></script>
</body>
</html>
"""

_HEADERS = {"Content-Security-Policy": CONTENT_SECURITY_POLICY, "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer"}


async def get_docs(request: web.Request) -> web.Response:
    return web.Response(text=PAGE, content_type="text/html", headers={**_HEADERS, "Cache-Control": "no-cache"})


async def get_asset(request: web.Request) -> web.Response:
    name = request.match_info["asset"]
    if name not in ASSETS:
        raise ApiError(404, f"asset: no such file: the page uses {', '.join(sorted(ASSETS))}")
    body, etag = _asset(name)
    headers = {**_HEADERS, "ETag": etag, "Cache-Control": "public, max-age=86400"}
    if etag in request.headers.get("If-None-Match", ""):  # a reader's next visit: 900 KB not sent again
        return web.Response(status=304, headers=headers)
    return web.Response(body=body, content_type=ASSETS[name], headers=headers)


@functools.cache
def _asset(name: str) -> tuple[bytes, str]:
    """The file as the installed package holds it, and its ETag (a new release of the package changes both)."""
    body = (openapi_ui_bundles.redoc.static_path / name).read_bytes()
    return body, '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def register(app: web.Application) -> None:
    app.router.add_get("/docs", get_docs)
    app.router.add_get("/docs/assets/{asset}", get_asset)
