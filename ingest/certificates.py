"""The certificate routes of ingest: read, look up, verify, and what verifiers download.

    GET  /v1/certificates/{uvci}     what the QR states; with a lookup's signed link, the whole certificate
                                     as JSON, or its QR code (SVG/PNG)
    POST /v1/certificates/lookup     the current certificate of a national ID + birth date (+ a code)
    POST /v1/certificates/verify     the verdict on an HC1 string (200 whether valid or not)
    GET  /v1/trust-list              the signer certificates (DSCs) this deployment trusts

(GET /v1/revocations, what verifiers download beside the trust list, is ingest.revocations.)

No route needs a site token. A UVCI is printed in every QR, so it is no
secret: by UVCI alone a certificate answers only what its QR states (the
status and the DCC's name, birth date and vaccination entry); the whole
view (doses, sites, record ids, the successor) and the QR image need the
short-lived signed link that a lookup hands out (vaxline.links). A lookup
needs the birth date as well as the national ID, answers a wrong birth date
exactly as an unknown person (same body, same status, at least
`lookup_floor` seconds either way), is rate-limited per client address (an
IPv6 /64; ingest.clients) and, past `lookup_guess_limit` wrong birth dates
per national ID from any addresses, needs a one-time code sent to a phone
on record (ingest.lookup_guard). Redis counts both, and failing Redis
fails the lookup closed. Neither a national ID nor a UVCI reaches a log
line or a metric label.

A lookup never waits for a certifier: it reads the person's history with
their current certificate (one statement), and when the certificate does
not state that history (a certifier backlog, or none issued yet) it issues
it then, through storage.issuing, as a certifier would (one signing, the
same compare-and-swap), so the certifier that comes later finds nothing to
do. Without a signing key here (a deployment that signs elsewhere) it
answers what is stored; a key folder or key open to other users is no
missing key: the lookup, the verifier and the trust list answer 500
"misconfigured" (ingest.http) until the chmod, and the log names it. A
certificate never changes, so its QR image is rendered once per process
and kept (`QrImages`, bounded in bytes).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import dataclasses
import datetime as dt
import io
import math
import re
import time
from collections.abc import Mapping
from typing import Annotated, Any

import asyncpg
import msgspec
import redis.asyncio as aioredis
import segno
from aiohttp import web
from redis.exceptions import RedisError

from monitoring import metrics
from storage import certificates as store
from storage import issuing
from vaxline.config import Settings
from vaxline.dcc.keys import KeyStore, PublicKey
from vaxline.dcc.trust import TrustList, uvci_hash
from vaxline.dcc.verify import Verdict, verify
from vaxline.doses import FIELD_RULES, NationalId, field_errors
from vaxline.links import CertificateLinks, server_secret

from .clients import client_address, limit_key
from .http import INGEST, ApiError, Ingest, json_response
from .lookup_guard import LookupGuard

MAX_HC1 = 8192  # a QR code holds at most 4296 alphanumeric characters; twice that is not a DCC
QR_SCALE, QR_BORDER = 4, 4  # pixels per module; the quiet zone of 4 modules the QR standard asks for
FORMATS = {"json": "application/json", "svg": "image/svg+xml", "png": "image/png"}  # server preference order
NOT_FOUND = "no current certificate for this national ID and birth date"
CODE_NEEDED = ("code: too many wrong birth dates for this national ID: a one-time code is needed. One is sent to"
               " the phone a vaccination site recorded for the person, if there is one; give it as `code`")
NO_TRUST = TrustList.from_der([])  # decoding an hc1 we stored needs no signature check
NO_STORE = {"Cache-Control": "no-store"}  # personal data: no cache on the way may keep it
QR_CACHE_BYTES = 16 << 20  # per ingest process: about 8,000 PNGs (2 KB) or 1,200 SVGs (14 KB)
_uvci = re.compile(r"URN:UVCI:01:VN:[A-Z2-7]{32}")  # vaxline.dcc.issue.new_uvci


class LookupRequest(msgspec.Struct, forbid_unknown_fields=True):
    national_id: NationalId
    birth_date: dt.date
    code: Annotated[str, msgspec.Meta(pattern=r"^[0-9]{6}$")] | None = None  # past the guess limit


class VerifyRequest(msgspec.Struct, forbid_unknown_fields=True):
    hc1: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_HC1)]


class CertificateView(msgspec.Struct):
    uvci: str
    full_name: str
    birth_date: dt.date
    doses: msgspec.Raw
    status: str
    issued_at: dt.datetime
    expires_at: dt.datetime
    revoked_at: dt.datetime | None
    superseded_by: str | None
    hc1: str


class LookupAnswer(CertificateView):
    """The whole view, and a link to it (and to its QR image, with `&format=`) valid a few minutes."""

    link: str
    link_expires_at: dt.datetime


class CertificateSummary(msgspec.Struct):
    """What a UVCI alone is answered: no more than the QR states."""

    uvci: str
    status: str  # current, superseded or revoked
    full_name: str
    birth_date: dt.date
    vaccination: dict | None  # the DCC's `v` entry, as signed


RULES = {**FIELD_RULES, "birth_date": "must be a date YYYY-MM-DD", "hc1": f"must be a string of 1-{MAX_HC1} characters",
         "code": "must be the 6-digit code sent to the phone"}


class RateLimited(Exception):
    """Over the lookup limit for this window; retry after `retry_after` seconds."""

    def __init__(self, retry_after: int):
        super().__init__(f"too many lookups; retry after {retry_after} s")
        self.retry_after = retry_after


class LookupLimiter:
    """A fixed window per client address in Redis, so every ingest process counts against one limit."""

    def __init__(self, redis: aioredis.Redis, settings: Settings, *, clock=time.time, name: str = "lookup",
                 limit: int | None = None, window: float | None = None):
        """Certificate lookups by default; `name`, `limit` and `window` make another limiter (correction requests)."""
        self._redis = redis
        self._prefix = f"{settings.stream_prefix}:{name}"
        self._limit = limit if limit is not None else settings.lookup_rate_limit
        self._window = window if window is not None else settings.lookup_rate_window
        self._clock = clock  # wall time: every process must agree on the window number

    async def admit(self, address: str) -> None:
        """Count one lookup of this client (an IPv6 address counts as its /64); raises RateLimited past the
        limit, RedisError when Redis fails."""
        now = self._clock()
        window = int(now // self._window)
        key = f"{self._prefix}:{limit_key(address)}:{window}"
        async with self._redis.pipeline(transaction=True) as pipe:  # never a counter without its expiry
            pipe.incr(key)
            pipe.expire(key, math.ceil(self._window) + 1)
            count, _ = await pipe.execute()
        if count > self._limit:
            raise RateLimited(max(1, math.ceil((window + 1) * self._window - now)))


@dataclasses.dataclass(frozen=True)
class TrustSnapshot:
    version: tuple  # KeyStore.version()
    keys: list[PublicKey]
    trust: TrustList
    stale_after: dt.datetime | None  # the earliest DSC expiry: the list changes then too


class TrustedKeys:
    """The deployment's trust list, reloaded when the keys folder changes or a DSC expires."""

    def __init__(self, keys: KeyStore, *, clock=lambda: dt.datetime.now(dt.UTC)):
        self._keys = keys
        self._clock = clock
        self._snapshot: TrustSnapshot | None = None

    def current(self) -> TrustSnapshot:
        version, now = self._keys.version(), self._clock()
        snapshot = self._snapshot
        if snapshot is None or snapshot.version != version or (snapshot.stale_after and now >= snapshot.stale_after):
            keys = self._keys.public_keys(now=now)
            snapshot = TrustSnapshot(version, keys, TrustList.from_der(k.der for k in keys),
                                     min((k.not_after for k in keys), default=None))
            self._snapshot = snapshot
        return snapshot


class QrImages:
    """Rendered QR images by (UVCI, format), the least recently used dropped past `max_bytes`.

    A certificate never changes (its hc1 is fixed per UVCI, and no certificate is ever deleted), so an
    image once rendered is right for ever; only memory bounds how many are kept. Used on the event loop
    only: no lock."""

    def __init__(self, *, max_bytes: int = QR_CACHE_BYTES):
        self.max_bytes = max_bytes
        self.size = 0  # bytes held
        self._images: collections.OrderedDict[tuple[str, str], bytes] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._images)

    def get(self, uvci: str, fmt: str) -> bytes | None:
        image = self._images.get((uvci, fmt))
        if image is not None:
            self._images.move_to_end((uvci, fmt))
        return image

    def put(self, uvci: str, fmt: str, image: bytes) -> None:
        if len(image) > self.max_bytes or (uvci, fmt) in self._images:
            return
        self._images[(uvci, fmt)] = image
        self.size += len(image)
        while self.size > self.max_bytes:
            _, dropped = self._images.popitem(last=False)
            self.size -= len(dropped)


@dataclasses.dataclass(frozen=True)
class Certificates:
    limiter: LookupLimiter
    guard: LookupGuard  # wrong birth dates per national ID, and the code past them
    links: CertificateLinks
    trusted: TrustedKeys
    signing: issuing.Signing  # for a lookup that finds a certificate behind its history
    qr_images: QrImages
    lookup_floor: float


CERTIFICATES = web.AppKey("certificates", Certificates)


def register(app: web.Application, settings: Settings, redis: aioredis.Redis) -> None:
    keys = KeyStore(settings.signing_keys_dir)
    secret = server_secret(settings)
    app[CERTIFICATES] = Certificates(LookupLimiter(redis, settings), LookupGuard(redis, settings, secret=secret),
                                     CertificateLinks(secret, ttl=settings.certificate_link_ttl),
                                     TrustedKeys(keys), issuing.Signing(keys), QrImages(), settings.lookup_floor)
    # The fixed paths before /v1/certificates/{uvci}, which would match them too.
    app.router.add_post("/v1/certificates/lookup", post_lookup)
    app.router.add_post("/v1/certificates/verify", post_verify)
    app.router.add_get("/v1/certificates/{uvci}", get_certificate)
    app.router.add_get("/v1/trust-list", get_trust_list)


# GET /v1/certificates/{uvci}

async def get_certificate(request: web.Request) -> web.Response:
    fmt = requested_format(request.query.get("format"), request.headers.get("Accept"))
    uvci = request.match_info["uvci"]
    if not _uvci.fullmatch(uvci):  # not one of ours: not found, without asking Postgres (which refuses a NUL)
        raise ApiError(404, "no certificate with this UVCI")
    linked = signed_link(request.app[CERTIFICATES].links, uvci, request.query)
    if not linked and fmt != "json":
        raise ApiError(403, "the QR image needs the link a lookup hands out (?expires=...&token=...)")
    images = request.app[CERTIFICATES].qr_images
    image = images.get(uvci, fmt) if fmt != "json" else None
    if image is None:
        record = await _by_uvci(request.app[INGEST], uvci)
        if record is None:
            raise ApiError(404, "no certificate with this UVCI")
        if fmt == "json":
            response = certificate_response(record) if linked else summary_response(record)
            response.headers["Vary"] = "Accept"
            return response
        # 30-40 ms of pure Python, once per image: in a thread, the loop keeps answering doses between GIL switches
        image = await asyncio.to_thread(qr_image, record["hc1"], fmt)
        images.put(uvci, fmt, image)
    return web.Response(body=image, content_type=FORMATS[fmt], headers={**NO_STORE, "Vary": "Accept"})


async def _by_uvci(ingest: Ingest, uvci: str) -> Mapping | None:
    """The certificate, from the read replica; one it does not know yet is asked of the primary: a lookup may
    have issued it there a moment ago, and its link must work at once."""
    async with ingest.read_pool.acquire() as conn:
        record = await store.by_uvci(conn, uvci)
    if record is None and ingest.read_pool is not ingest.pool:
        async with ingest.pool.acquire() as conn:
            record = await store.by_uvci(conn, uvci)
    return record


def signed_link(links: CertificateLinks, uvci: str, query: Mapping[str, str]) -> bool:
    """Whether the request carries a valid link to this certificate; 403 for an expired or a false one."""
    token, expires = query.get("token"), query.get("expires")
    if token is None and expires is None:
        return False
    match links.check(uvci, token or "", expires or ""):
        case None:
            return True
        case "expired":
            raise ApiError(403, "this certificate link expired: look the certificate up again for a new one")
        case _:
            raise ApiError(403, "this certificate link is not valid")


def requested_format(query: str | None, accept: str | None) -> str:
    """json, svg or png: `?format=` wins over the Accept header."""
    if query is not None:
        if query not in FORMATS:
            raise ApiError(400, f"format must be one of {', '.join(FORMATS)}")
        return query
    return negotiated_format(accept)


def negotiated_format(accept: str | None) -> str:
    """The format the Accept header prefers: highest q, then the most specific range, then ours.

    JSON when the header is absent or allows none of them (a browser's `text/html` gets the JSON).
    """
    ranges = [_media_range(part) for part in (accept or "").split(",") if part.strip()]
    best, best_rank = "json", (0.0, -1)
    for fmt, media_type in FORMATS.items():
        matches = [(specificity, q) for pattern, q in ranges if (specificity := _match(pattern, media_type)) >= 0]
        if not matches:
            continue
        specificity, q = max(matches)  # the most specific range that matches decides the q
        if q > 0 and (q, specificity) > best_rank:
            best, best_rank = fmt, (q, specificity)
    return best


def _media_range(part: str) -> tuple[str, float]:
    media_type, *params = (p.strip() for p in part.split(";"))
    q = 1.0
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "q":
            try:
                q = min(1.0, max(0.0, float(value)))
            except ValueError:
                q = 0.0  # a q we cannot read is taken as "not acceptable", never as the best
    return media_type.lower(), q


def _match(pattern: str, media_type: str) -> int:
    """How specifically `pattern` matches: 2 exactly, 1 `type/*`, 0 `*/*`, -1 not at all."""
    if pattern == media_type:
        return 2
    if pattern == "*/*":
        return 0
    if pattern.endswith("/*") and media_type.startswith(pattern[:-1]):
        return 1
    return -1


def qr_image(hc1: str, fmt: str) -> bytes:
    qr = segno.make_qr(hc1, error="q", mode="alphanumeric", boost_error=False)
    out = io.BytesIO()
    qr.save(out, kind=fmt, scale=QR_SCALE, border=QR_BORDER)
    return out.getvalue()


def _view(record: Mapping) -> dict:
    doses = record["doses"]  # asyncpg hands jsonb over as its text unless a codec is set: passed through as is
    return {
        "uvci": record["uvci"], "full_name": record["full_name"], "birth_date": record["birth_date"],
        "doses": msgspec.Raw(doses.encode() if isinstance(doses, str) else msgspec.json.encode(doses)),
        "status": record["status"], "issued_at": record["issued_at"], "expires_at": record["expires_at"],
        "revoked_at": record["revoked_at"], "superseded_by": record["superseded_by"], "hc1": record["hc1"],
    }


def certificate_response(record: Mapping) -> web.Response:
    return json_response(CertificateView(**_view(record)), headers=NO_STORE)


def lookup_response(record: Mapping, links: CertificateLinks) -> web.Response:
    query, expires = links.query(record["uvci"])
    return json_response(LookupAnswer(**_view(record), link=f"/v1/certificates/{record['uvci']}?{query}",
                                      link_expires_at=dt.datetime.fromtimestamp(expires, dt.UTC)), headers=NO_STORE)


def summary_response(record: Mapping) -> web.Response:
    payload = verify(record["hc1"], NO_TRUST).payload or {}
    status = "superseded" if record["status"] == "revoked" and record["superseded_by"] else record["status"]
    return json_response(CertificateSummary(
        uvci=record["uvci"], status=status, full_name=record["full_name"], birth_date=record["birth_date"],
        vaccination=(payload.get("v") or [None])[0]), headers=NO_STORE)


# POST /v1/certificates/lookup

async def post_lookup(request: web.Request) -> web.Response:
    started = time.monotonic()
    await admit_lookup(request)
    query = await decoded_body(request, _lookup_decoder, LookupRequest)
    return lookup_response(await looked_up(request, query, started), request.app[CERTIFICATES].links)


async def admit_lookup(request: web.Request) -> None:
    """Count one lookup of the client's address (before its body is read); ApiError 429 past the limit."""
    await _admit(request.app[CERTIFICATES].limiter, client_address(request))


async def looked_up(request: web.Request, query: LookupRequest, started: float) -> Mapping:
    """The current certificate for `query`, under the lookup's rules (guesses per national ID, the code past
    them); ApiError 403, 404 or 503 otherwise. Found or not, it returns no sooner than `lookup_floor` seconds
    after `started`. The JSON lookup and the portal's page both answer through it."""
    certificates = request.app[CERTIFICATES]
    deadline = started + certificates.lookup_floor
    try:
        answer = await _guarded_lookup(request.app[INGEST], certificates, query, deadline)
    except (TimeoutError, RedisError, OSError) as e:  # fail closed: no count per national ID, no lookup
        raise ApiError(503, "the lookup limiter is unavailable; retry later", headers={"Retry-After": "5"}) from e
    # Every answer is found, then held to the floor: neither body nor timing tells a wrong birth date from an
    # unknown person, nor (past the guess limit) a person with a phone on record from an unknown ID.
    await asyncio.sleep(max(0.0, deadline - time.monotonic()))
    if isinstance(answer, ApiError):
        raise answer
    return answer


async def _guarded_lookup(ingest: Ingest, certificates: Certificates, query: LookupRequest,
                          deadline: float) -> Mapping | ApiError:
    """Counted as a wrong guess of this national ID until found; past the limit, only with the right code."""
    guard, national_id = certificates.guard, query.national_id
    certificates.signing.available()  # a refused key folder (KeyPermissions: a 500) before a guess is counted
    if not await guard.guess(national_id) and not (query.code and await guard.redeem(national_id, query.code)):
        async def phones() -> list[str]:
            async with ingest.read_pool.acquire() as conn:
                return await store.phones_on_record(conn, national_id)
        await guard.challenge(national_id, phones, wait=deadline - time.monotonic())
        metrics.certificate_lookups.labels(result="code_required").inc()
        return ApiError(403, CODE_NEEDED)
    record = await current_certificate(ingest.pool, certificates.signing, query, read_pool=ingest.read_pool)
    metrics.certificate_lookups.labels(result="found" if record else "not_found").inc()
    if record is None:
        return ApiError(404, NOT_FOUND)
    await guard.found(national_id)
    return record


async def current_certificate(pool: asyncpg.Pool, signing: issuing.Signing, query: LookupRequest, *,
                              read_pool: asyncpg.Pool | None = None) -> Mapping | None:
    """The person's current certificate, stating every persisted dose: issued now when the stored one is
    behind their history and a key here may sign; else what is stored.

    Read from `read_pool` (a hot standby) when given; a certificate that is behind is issued on the primary
    (`pool`) from the primary's own fresh read of the history, and read back from there (its own write)."""
    read_pool = read_pool or pool
    if signing.available() is None:  # a deployment that certifies elsewhere
        async with read_pool.acquire() as conn:
            return await store.current_for(conn, query.national_id, query.birth_date)
    async with read_pool.acquire() as conn:
        found = await store.lookup(conn, query.national_id, query.birth_date)
    if found is None:
        return None
    if not issuing.behind(found.person):  # the common case: no second query, no signing
        return found.certificate
    # No connection held while signing; a lost race is rebuilt from a fresh read, as a certifier does. The
    # standby's snapshot may trail the primary's: issuing reads the history again there.
    await issuing.certify(pool, signing, {query.national_id: found.due_since()}, issuing.Outcome(),
                          metrics=metrics, people=[found.person] if read_pool is pool else None)
    async with pool.acquire() as conn:
        return await store.current_for(conn, query.national_id, query.birth_date)


async def _admit(limiter: LookupLimiter, address: str) -> None:
    try:
        await limiter.admit(address)
    except RateLimited as e:
        metrics.certificate_lookups.labels(result="rate_limited").inc()
        raise ApiError(429, str(e), headers={"Retry-After": str(e.retry_after)}) from e
    except (TimeoutError, RedisError, OSError) as e:  # fail closed: no limit, no lookup
        raise ApiError(503, "the lookup rate limiter is unavailable; retry later",
                       headers={"Retry-After": "5"}) from e


_lookup_decoder = msgspec.json.Decoder(LookupRequest)
_verify_decoder = msgspec.json.Decoder(VerifyRequest)
_object_decoder = msgspec.json.Decoder(dict[str, Any])


async def decoded_body(request: web.Request, decoder: msgspec.json.Decoder, struct: type[msgspec.Struct]):
    """The JSON body as `struct`; 415, 400 (not a JSON object) or 422 naming every wrong field."""
    if request.content_type != "application/json":
        raise ApiError(415, f"unsupported content type {request.content_type!r}; send application/json")
    return decoded(await request.read(), decoder, struct)


def decoded(body: bytes, decoder: msgspec.json.Decoder, struct: type[msgspec.Struct]):
    """JSON `body` as `struct`; ApiError 400 (not a JSON object) or 422 naming every wrong field."""
    try:
        return decoder.decode(body)
    except msgspec.ValidationError:
        pass
    except msgspec.DecodeError as e:
        raise ApiError(400, f"malformed body: {e}") from e
    try:
        fields = _object_decoder.decode(body)
    except msgspec.DecodeError as e:
        raise ApiError(400, "malformed body: expected a JSON object") from e
    errors = field_errors(fields, struct, RULES)
    raise ApiError(422, "; ".join(f"{e.field}: {e.reason}" for e in errors) or "invalid body")


# POST /v1/certificates/verify

async def post_verify(request: web.Request) -> web.Response:
    """The verdict, as a verifier app would reach it offline with this deployment's lists."""
    body = await decoded_body(request, _verify_decoder, VerifyRequest)
    return json_response((await verdict_of(request, body.hc1)).to_json())


async def verdict_of(request: web.Request, hc1: str) -> Verdict:
    """`hc1` judged against this deployment's trust list and revocations (the API's verifier and the portal's)."""
    trust = request.app[CERTIFICATES].trusted.current().trust
    verdict = verify(hc1, trust)
    uvci = verdict.uvci
    if uvci is not None and _uvci.fullmatch(uvci):  # only our UVCIs can be in our revocations
        async with request.app[INGEST].read_pool.acquire() as conn:
            revoked = await store.is_revoked(conn, uvci)
        if revoked:  # rare: judge again with the revocation known, so every stage is reported in one verdict
            verdict = verify(hc1, trust, revoked={uvci_hash(uvci)})
    return verdict


# GET /v1/trust-list

async def get_trust_list(request: web.Request) -> web.Response:
    keys = request.app[CERTIFICATES].trusted.current().keys
    return json_response({"certificates": [{
        "kid": base64.b64encode(key.kid).decode(),
        "kid_hex": key.kid.hex(),
        "certificate": base64.b64encode(key.der).decode(),
        "not_after": key.not_after,
    } for key in keys]})
