"""The revocation feed: GET /v1/revocations, what verifiers download to refuse superseded certificates.

    GET /v1/revocations[?after=N | ?since=RFC3339]

Hashes of revoked UVCIs as the EU gateway distributes them (hash type UCI), by revocation number:
each revocation is numbered when its transaction commits, in commit order
(storage/migrations/0007_revocation_feed.sql), a page holds at most REVOCATIONS_PAGE of them, and
`next` names the page that follows (`?after=` the last number listed). Continuing from `next` never
misses a revocation: once a number is visible, no smaller one can become visible later (a rolled-back
one is a gap that never fills), so a page lists every number visible now, without waiting. `since`
stays for the clients of the time-based feed.

No token: the list is public, as the gateway's is. Each answer has a strong ETag (a digest of its
body) and answers If-None-Match with 304; a full page never changes, so it is cacheable for a day
(immutable), and the last page for REVOCATIONS_MAX_AGE seconds: verifiers and proxies can keep it,
and a poll that finds nothing new costs a 304 without a body. A call costs a range scan of at most one
page (and an index probe for `since`), whatever the size of the list.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib

import msgspec
from aiohttp import web

from storage import certificates as store

from .http import INGEST, ApiError

REVOCATION_ALGORITHM = "SHA-256, first 16 bytes of the UVCI"
REVOCATIONS_PAGE = 10_000  # one answer's bound: about 700 KB of JSON; the list of a national deployment is millions
REVOCATIONS_MAX_AGE = 60  # seconds the last page may be kept: how late a verifier may learn of a revocation
IMMUTABLE = "public, max-age=86400, immutable"  # a full page: no number can join it or leave it, ever
MAX_SEQ = 2**63 - 1  # bigint


class Revocation(msgspec.Struct):
    hash: str
    revoked_at: dt.datetime
    seq: int


class RevocationPage(msgspec.Struct):
    hashes: list[Revocation]
    algorithm: str
    complete: bool  # false: a full page; follow `next` at once
    next: str  # this feed from after the last revocation listed: follow it now (incomplete) or at the next poll


_encoder = msgspec.json.Encoder()


def register(app: web.Application) -> None:
    app.router.add_get("/v1/revocations", get_revocations)


async def get_revocations(request: web.Request) -> web.Response:
    after, since = _cursor(request.query)
    # The read replica when there is one: it replays commits in order, so its feed is a prefix of the primary's.
    async with request.app[INGEST].read_pool.acquire() as conn:
        rows, last = await store.revocations(conn, after=after, since=since, limit=REVOCATIONS_PAGE)
    complete = len(rows) < REVOCATIONS_PAGE
    page = RevocationPage([Revocation(row["hash"], row["revoked_at"], row["seq"]) for row in rows],
                          REVOCATION_ALGORITHM, complete, f"/v1/revocations?after={last}")
    body = _encoder.encode(page)
    headers = {"ETag": etag_of(body),
               "Cache-Control": IMMUTABLE if since is None and not complete else f"public, max-age={REVOCATIONS_MAX_AGE}"}
    if matches(request.headers.get("If-None-Match"), headers["ETag"]):
        return web.Response(status=304, headers=headers)
    return web.Response(body=body, content_type="application/json", headers=headers)


def _cursor(query) -> tuple[int, dt.datetime | None]:
    """(after, since) of the query; 400 for both, or either malformed."""
    after, since = query.get("after"), query.get("since")
    if after is not None and since is not None:
        raise ApiError(400, "give after or since, not both: after (the `next` of the last answer) is exact")
    if after is None:
        return 0, parse_rfc3339(since) if since is not None else None
    if not (after.isascii() and after.isdigit()) or int(after) > MAX_SEQ:
        raise ApiError(400, "after must be a revocation number: a whole number from 0, as `next` gives it")
    return int(after), None


def etag_of(body: bytes) -> str:
    """A strong validator: the digest of the very bytes sent."""
    return '"' + base64.urlsafe_b64encode(hashlib.sha256(body).digest()[:18]).decode() + '"'


def matches(if_none_match: str | None, etag: str) -> bool:
    """Whether If-None-Match names this ETag (RFC 9110 13.1.2: weak comparison, `*` matches any)."""
    if not if_none_match:
        return False
    tags = [tag.strip() for tag in if_none_match.split(",")]
    return "*" in tags or any(tag.removeprefix("W/") == etag for tag in tags)


def parse_rfc3339(text: str) -> dt.datetime:
    """An RFC 3339 date-time with its offset; 400 otherwise."""
    try:
        at = dt.datetime.fromisoformat(text)
    except ValueError:
        try:  # an unescaped `+07:00` arrives as ` 07:00` (a query string's `+` is a space)
            at = dt.datetime.fromisoformat(text.replace(" ", "+"))
        except ValueError:
            at = None
    if at is None or at.tzinfo is None:
        raise ApiError(400, "since must be an RFC 3339 date-time with a UTC offset, e.g. 2021-10-01T00:00:00Z")
    try:
        at.astimezone(dt.UTC)  # 0001-01-01T00:00+01:00 is no time in UTC, nor in Postgres
    except OverflowError:
        raise ApiError(400, "since is out of range: years 1 to 9999 in UTC") from None
    return at
