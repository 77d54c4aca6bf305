"""Authorization across sites and roles: every endpoint that takes a token, table-driven.

The world: sites A-001 and A2-001 in province 1, site B-079 in province 79, each with persisted and
flagged records (and one record id, SHARED-1, that both A-001 and B-079 use); a queued batch of B; three
citizen correction requests: routed to A-001, to B-079, and to province 79's own queue. The principals:
the three sites, the tokens of provinces 1 and 79, the operator, no token and an unknown token.

For every route of the app that takes a token (checked against app.router, so a new route cannot be
forgotten), each principal gets exactly the documented status, and every 200 shows rows of the
principal's own scope only: a site never reads or changes another site's data, a province token never
leaves its province, read-only tokens never write. The one documented exception: a person's history
(`/v1/persons/...`) is readable with a site's token or the operator's, because a desk needs it to give
the next dose; a province token gets 403 there.

Covers: every route that takes a token (from the app's router) with sites of two provinces, both provinces'
tokens, the operator's, no token and an unknown one: the exact status for each, and every 200 within the
caller's scope (a site never reads or changes another site's records, receipts, statistics, review list or
correction requests; a province token never leaves its province; read-only tokens never write; a person's
history: sites and the operator only, a province token gets 403); a body cannot name another site; token
lookups send Postgres only the 32-byte SHA-256 digest, on unique indexes.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable

import asyncpg

from ingest.auth import SiteAuth
from storage import tokens
from tests.conftest import wait_until
from tests.factory import dose
from tests.stack import running_stack
from tests.test_citizen import claim, file, last_code, picture
from vaxline.tokens import token_hash

A, A2, B = "A-001", "A2-001", "B-079"
SITE_A, SITE_A2, SITE_B = "site A-001", "site A2-001", "site B-079"
PROVINCE_1, PROVINCE_79, OPERATOR = "province 1", "province 79", "operator"
NO_TOKEN, UNKNOWN = "no token", "unknown token"
PRINCIPALS = [SITE_A, SITE_A2, SITE_B, PROVINCE_1, PROVINCE_79, OPERATOR, NO_TOKEN, UNKNOWN]
SCOPE = {SITE_A: {A}, SITE_A2: {A2}, SITE_B: {B}, PROVINCE_1: {A, A2}, PROVINCE_79: {B}, OPERATOR: {A, A2, B}}
TOKENLESS = {NO_TOKEN: 401, UNKNOWN: 401}
READ_ONLY = {PROVINCE_1: 403, PROVINCE_79: 403, OPERATOR: 403}


@dataclasses.dataclass
class World:
    stack: object
    tokens: dict[str, str | None]
    ids: dict[str, str]  # names used in paths -> values (batch ids, national ids, request ids)
    people: tuple = ()  # whom the correction requests are about

    def headers(self, principal: str) -> dict:
        token = self.tokens[principal]
        return {"Authorization": f"Bearer {token}"} if token else {}


@dataclasses.dataclass
class Case:
    method: str
    path: str  # a route's template with {names} filled from World.ids, or a literal
    expected: dict[str, int]
    body: dict | None = None
    seen: Callable[[dict], set[str]] | None = None  # the site codes a 200's body shows: must be in scope
    exact: bool = False  # ... and all of the scope (the world has rows for every site)
    route: str = ""  # the route template it exercises, if the path is not one

    def __post_init__(self):
        self.route = self.route or self.path.split("?")[0]


def sites_of(key: str, field: str = "site") -> Callable[[dict], set[str]]:
    return lambda body: {row[field] for row in body[key]}


def everyone(status: int) -> dict[str, int]:
    return {p: status for p in PRINCIPALS if p not in TOKENLESS} | TOKENLESS


CASES = [
    # Doses: sites only; read-only tokens never write.
    Case("POST", "/v1/doses", {SITE_A: 202, SITE_A2: 202, SITE_B: 202, **READ_ONLY, **TOKENLESS},
         body={"doses": [dose(900, record_prefix="NEW")]}),
    Case("GET", "/v1/batches/{batch_a}", {SITE_A: 200, SITE_A2: 404, SITE_B: 404, **READ_ONLY, **TOKENLESS},
         route="/v1/batches/{batch_id}"),
    Case("GET", "/v1/batches/{batch_b}", {SITE_A: 404, SITE_A2: 404, SITE_B: 200, **READ_ONLY, **TOKENLESS},
         route="/v1/batches/{batch_id}"),
    Case("GET", "/v1/doses/A-0000001", {SITE_A: 200, SITE_A2: 403, SITE_B: 403, **READ_ONLY, **TOKENLESS},
         seen=lambda body: {body["site"]}, route="/v1/doses/{record_id}"),
    Case("GET", "/v1/doses/SHARED-1", {SITE_A: 200, SITE_A2: 403, SITE_B: 200, **READ_ONLY, **TOKENLESS},
         seen=lambda body: {body["site"], {"LOTA": A, "LOTB": B}[body["dose"]["lot"]]}, route="/v1/doses/{record_id}"),
    Case("PUT", "/v1/doses/A-0000001", {SITE_A: 202, SITE_A2: 403, SITE_B: 403, **READ_ONLY, **TOKENLESS},
         body=dose(1, record_prefix="A", lot="LOTA-FIXED"), route="/v1/doses/{record_id}"),
    Case("DELETE", "/v1/doses/A-0000004", {SITE_A: 202, SITE_A2: 403, SITE_B: 403, **READ_ONLY, **TOKENLESS},
         route="/v1/doses/{record_id}"),
    # A person's history: sites (a desk needs a person's earlier doses, wherever given) and the operator;
    # never a province token, which stays in its province.
    Case("GET", "/v1/persons/{person_b}/doses", everyone(200) | {PROVINCE_1: 403, PROVINCE_79: 403},
         route="/v1/persons/{national_id}/doses"),
    Case("GET", "/v1/persons/{person_b}", everyone(200) | {PROVINCE_1: 403, PROVINCE_79: 403},
         route="/v1/persons/{national_id}"),
    # Statistics and the review list: each token its scope; naming another scope is a 403.
    Case("GET", "/v1/stats?group_by=site", everyone(200), seen=sites_of("rows"), exact=True),
    Case("GET", "/v1/stats?site=B-079", {SITE_A: 403, SITE_A2: 403, SITE_B: 200, PROVINCE_1: 403, PROVINCE_79: 200,
                                          OPERATOR: 200, **TOKENLESS}),
    Case("GET", "/v1/stats?province=79&group_by=site", {SITE_A: 403, SITE_A2: 403, SITE_B: 200, PROVINCE_1: 403,
                                                         PROVINCE_79: 200, OPERATOR: 200, **TOKENLESS},
         seen=sites_of("rows")),
    Case("GET", "/v1/stats?province=1&site=B-079", {SITE_A: 403, SITE_A2: 403, SITE_B: 403, PROVINCE_1: 403,
                                                     PROVINCE_79: 403, OPERATOR: 200, **TOKENLESS}),
    Case("GET", "/v1/review", everyone(200), seen=sites_of("items"), exact=True),
    Case("GET", "/v1/review?site=A-001", {SITE_A: 200, SITE_A2: 403, SITE_B: 403, PROVINCE_1: 200, PROVINCE_79: 403,
                                           OPERATOR: 200, **TOKENLESS}, seen=sites_of("items")),
    Case("GET", "/v1/review?province=1", {SITE_A: 200, SITE_A2: 200, SITE_B: 403, PROVINCE_1: 200, PROVINCE_79: 403,
                                           OPERATOR: 200, **TOKENLESS}, seen=sites_of("items")),
    Case("GET", "/v1/reconciliation", {SITE_A: 403, SITE_A2: 403, SITE_B: 403, PROVINCE_1: 403, PROVINCE_79: 403,
                                        OPERATOR: 200, **TOKENLESS}),
    Case("GET", "/v1/reconciliation?site=A-001", {SITE_A: 403, SITE_A2: 403, SITE_B: 403, PROVINCE_1: 403,
                                                   PROVINCE_79: 403, OPERATOR: 200, **TOKENLESS}),
    # Citizen correction requests: the queue, a request, its evidence and audit log, deciding.
    Case("GET", "/v1/corrections", everyone(200), seen=sites_of("requests", "request_id"), exact=True),
    Case("GET", "/v1/corrections?site=A-001", {SITE_A: 200, SITE_A2: 403, SITE_B: 403, PROVINCE_1: 200,
                                                PROVINCE_79: 403, OPERATOR: 200, **TOKENLESS},
         seen=sites_of("requests", "request_id")),
    Case("GET", "/v1/corrections?province=79", {SITE_A: 403, SITE_A2: 403, SITE_B: 200, PROVINCE_1: 403,
                                                 PROVINCE_79: 200, OPERATOR: 200, **TOKENLESS},
         seen=sites_of("requests", "request_id")),
    Case("GET", "/v1/corrections/{cr_a}", {SITE_A: 200, SITE_A2: 403, SITE_B: 403, PROVINCE_1: 200, PROVINCE_79: 403,
                                            OPERATOR: 200, NO_TOKEN: 400, UNKNOWN: 401},
         seen=lambda body: {body["request_id"]}, route="/v1/corrections/{request_id}"),
    Case("GET", "/v1/corrections/{cr_p79}", {SITE_A: 403, SITE_A2: 403, SITE_B: 403, PROVINCE_1: 403,
                                              PROVINCE_79: 200, OPERATOR: 200, NO_TOKEN: 400, UNKNOWN: 401},
         seen=lambda body: {body["request_id"]}, route="/v1/corrections/{request_id}"),
    Case("GET", "/v1/corrections/{cr_b}/evidence/1", {SITE_A: 403, SITE_A2: 403, SITE_B: 200, PROVINCE_1: 403,
                                                       PROVINCE_79: 200, OPERATOR: 200, **TOKENLESS},
         route="/v1/corrections/{request_id}/evidence/{n}"),
    Case("GET", "/v1/corrections/{cr_b}/audit", {SITE_A: 403, SITE_A2: 403, SITE_B: 200, PROVINCE_1: 403,
                                                  PROVINCE_79: 200, OPERATOR: 200, **TOKENLESS},
         seen=lambda body: {body["request_id"]}, route="/v1/corrections/{request_id}/audit"),
    Case("POST", "/v1/corrections/{cr_a}/decision", {SITE_A: 200, SITE_A2: 403, SITE_B: 403, PROVINCE_1: 403,
                                                      PROVINCE_79: 403, OPERATOR: 200, **TOKENLESS},
         body={"decision": "defer", "message": "Đang xác minh."}, route="/v1/corrections/{request_id}/decision"),
    Case("POST", "/v1/corrections/{cr_p79}/decision", {SITE_A: 403, SITE_A2: 403, SITE_B: 403, PROVINCE_1: 403,
                                                        PROVINCE_79: 403, OPERATOR: 200, **TOKENLESS},
         body={"decision": "defer", "message": "Đang xác minh."}, route="/v1/corrections/{request_id}/decision"),
]

# Routes that take no token (citizens, verifiers, probes, the portal), and the citizen's own view of a request.
PUBLIC = {
    ("POST", "/v1/corrections"), ("POST", "/v1/corrections/{request_id}/confirm"),
    ("POST", "/v1/corrections/{request_id}/code"), ("POST", "/v1/certificates/lookup"),
    ("POST", "/v1/certificates/verify"), ("GET", "/v1/certificates/{uvci}"), ("GET", "/v1/trust-list"),
    ("GET", "/v1/revocations"), ("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics"), ("GET", "/openapi.json"),
    ("GET", "/docs"), ("GET", "/docs/assets/{asset}"),
    # The citizen portal: pages over the public routes above, no token anywhere.
    ("GET", "/"), ("POST", "/"), ("GET", "/verify"), ("POST", "/verify"), ("GET", "/static/{name}"),
    ("GET", "/corrections/new"), ("POST", "/corrections/new"), ("GET", "/corrections/{request_id}"),
    ("POST", "/corrections/{request_id}"), ("POST", "/corrections/{request_id}/code"),
    ("POST", "/corrections/{request_id}/confirm"),
}


def scope_of_ids(world: World, principal: str, case: Case) -> set[str]:
    """What a 200 may show: site codes, or (for correction requests) the ids routed within the scope."""
    if "corrections" not in case.path:
        return SCOPE[principal]
    routed = {world.ids["cr_a"]: {A}, world.ids["cr_b"]: {B}, world.ids["cr_p79"]: {"province 79"}}
    reach = SCOPE[principal] | ({"province 79"} if principal in (PROVINCE_79, OPERATOR) else set())
    return {request_id for request_id, where in routed.items() if where & reach}


async def build_world(stack, db, settings) -> World:
    (a_id, a_token), (_, a2_token), (b_id, b_token) = [
        await stack.site(code, province) for code, province in ((A, 1), (A2, 1), (B, 79))]
    world = World(stack, {
        SITE_A: a_token, SITE_A2: a2_token, SITE_B: b_token,
        PROVINCE_1: await tokens.issue(db, tokens.PROVINCE, 1), PROVINCE_79: await tokens.issue(db, tokens.PROVINCE, 79),
        OPERATOR: await tokens.issue(db, tokens.OPERATOR, 0), NO_TOKEN: None, UNKNOWN: "vx_" + "A" * 43,
    }, {})
    # Each site: a clean record, a flagged one (dose 3 with no earlier dose), SHARED-1 with its own lot.
    posted = {
        A: [dose(1, record_prefix="A"), dose(2, record_prefix="A", dose_number=3), dose(3, record_id="SHARED-1",
            lot="LOTA"), dose(4, record_prefix="A")],
        A2: [dose(11, record_prefix="A2"), dose(12, record_prefix="A2", dose_number=3)],
        B: [dose(21, record_prefix="B"), dose(22, record_prefix="B", dose_number=3), dose(23, record_id="SHARED-1",
            lot="LOTB")],
    }
    for code, token in ((A, a_token), (A2, a2_token), (B, b_token)):
        response = await stack.post(token, {"doses": posted[code]})
        assert response.status == 202
        world.ids[{A: "batch_a", A2: "batch_a2", B: "batch_b"}[code]] = (await response.json())["batch_id"]
    world.ids["person_b"] = posted[B][0]["national_id"]
    world.people = (posted[A][0], posted[B][0], posted[B][1])
    return world


async def file_requests(world: World, settings) -> None:
    """Correction requests, once the people's records (and so their phones) are persisted: to A-001, to B-079
    (with an image), and to province 79's queue (a mobile team)."""
    stack, (person_a, person_b, other_b) = world.stack, world.people
    when = {"date": "2021-09-01", "vaccine": "EU/1/21/1529", "lot": "ABV5300", "dose_number": 2}
    for name, body, images in (
            ("cr_a", claim(person_a, site=A, **when), ()),
            ("cr_b", claim(person_b, site=B, **when), [("anh.png", picture("PNG"), "image/png")]),
            ("cr_p79", claim(other_b, place="Đội tiêm lưu động số 3", province=79, **when), ())):
        response = await file(stack, body, images)
        assert response.status == 202, await response.text()
        request_id = (await response.json())["request_id"]
        confirmed = await stack.client.post(f"/v1/corrections/{request_id}/confirm",
                                            json={"code": last_code(settings, request_id)})
        assert confirmed.status == 200
        world.ids[name] = request_id


async def call(world: World, case: Case, principal: str):
    path = case.path.format(**world.ids)
    response = await world.stack.client.request(case.method, path, json=case.body, headers=world.headers(principal))
    body = await response.json() if response.content_type == "application/json" else None
    return response.status, body


async def test_every_endpoint_that_takes_a_token_keeps_each_principal_in_its_scope(settings, db):
    async with running_stack(settings, workers=0, reviewers=1) as stack:
        world = await build_world(stack, db, settings)

        # A batch still queued in the stream: only its site sees it.
        for principal, status in {SITE_A: 404, SITE_B: 200, PROVINCE_79: 403}.items():
            response = await stack.client.get(f"/v1/batches/{world.ids['batch_b']}", headers=world.headers(principal))
            assert response.status == status, principal
            if status == 200:
                assert (await response.json())["status"] == "queued"

        stack.start_worker("authz-0")
        await wait_until(lambda: db.fetchval("SELECT count(*) = 3 FROM batches"), message="persisted")
        await file_requests(world, settings)
        await wait_until(lambda: db.fetchval("SELECT count(DISTINCT site_id) = 3 FROM review_flags"),
                         message="each site's flagged record reviewed")

        routes = {(r.method, r.resource.canonical) for r in stack.client.app.router.routes() if r.resource}
        covered = {(case.method, case.route) for case in CASES}
        uncovered = routes - PUBLIC - {("HEAD", path) for _, path in routes} - covered
        assert not uncovered, f"routes with no case here (add their expectations to CASES): {sorted(uncovered)}"

        wrong = []
        for case in CASES:
            # The owner goes last: its write (a withdrawal) must not decide what the others get.
            for principal in sorted(PRINCIPALS, key=lambda p: case.expected[p] in (200, 202)):
                status, body = await call(world, case, principal)
                if status != case.expected[principal]:
                    wrong.append(f"{case.method} {case.path} as {principal}: {status}, expected "
                                 f"{case.expected[principal]}: {body}")
                elif status == 200 and case.seen is not None:
                    seen, allowed = case.seen(body), scope_of_ids(world, principal, case)
                    if not seen <= allowed or case.exact and seen != allowed:
                        wrong.append(f"{case.method} {case.path} as {principal} showed {sorted(seen)}, "
                                     f"its scope is {sorted(allowed)}")
        assert not wrong, "\n".join(wrong)

        # The citizen's view of a request (no token, with the birth date) shows its progress, no personal data.
        citizen = await stack.client.get(f"/v1/corrections/{world.ids['cr_a']}",
                                         params={"birth_date": dose(1)["birth_date"]})
        assert citizen.status == 200
        assert set(await citizen.json()) == {"request_id", "status", "kind", "message", "created_at", "submitted_at",
                                             "decided_at"}


async def test_a_site_can_never_move_another_sites_records_through_a_body(settings, db):
    """The site of a batch or correction is the token's; a body that names another site (a `site` field)
    is refused as an unknown field, and a correction of another site's record id only ever touches the
    caller's own record of that id."""
    async with running_stack(settings, workers=1) as stack:
        (a_id, a_token), (b_id, b_token) = await stack.site(A, 1), await stack.site(B, 79)
        response = await stack.post(a_token, {"doses": [dose(1, record_prefix="X")], "site": B})
        assert response.status == 400
        response = await stack.post(a_token, {"doses": [dose(1, record_prefix="X") | {"site_id": b_id}]})
        assert (await response.json())["accepted"] == 0
        assert (await stack.post(b_token, {"doses": [dose(2, record_id="SHARED-1", lot="LOTB")]})).status == 202
        assert (await stack.post(a_token, {"doses": [dose(3, record_id="SHARED-1", lot="LOTA")]})).status == 202
        await wait_until(lambda: db.fetchval("SELECT count(*) = 2 FROM doses"), message="persisted")
        put = await stack.client.put("/v1/doses/SHARED-1", json=dose(3, record_id="SHARED-1", lot="LOTA2"),
                                     headers={"Authorization": f"Bearer {a_token}"})
        assert put.status == 202
        await wait_until(lambda: db.fetchval("SELECT count(*) = 1 FROM doses WHERE lot = 'LOTA2'"),
                         message="the correction applied")
    rows = {r["site_id"]: r["lot"] for r in await db.fetch("SELECT site_id, lot FROM doses")}
    assert rows == {a_id: "LOTA2", b_id: "LOTB"}


class RecordingConnection:
    """An asyncpg connection that records every query and its arguments."""

    def __init__(self, conn: asyncpg.Connection, calls: list):
        self._conn = conn
        self._calls = calls

    async def fetchrow(self, query, *args):
        self._calls.append((query, args))
        return await self._conn.fetchrow(query, *args)


class RecordingPool:
    def __init__(self, conn: RecordingConnection):
        self._conn = conn

    def acquire(self):
        conn = self._conn

        class Acquired:
            async def __aenter__(self):
                return conn

            async def __aexit__(self, *exc):
                return False

        return Acquired()


async def test_tokens_are_looked_up_by_their_sha256_digest_never_compared_as_text(settings, db):
    """The secret never reaches a comparison: ingest hashes the presented token and asks Postgres for the
    row whose unique, indexed `token_hash` equals that digest. A wrong token, however long a prefix it
    shares with a real one, has an unrelated digest; what a B-tree probe's timing could tell is about the
    digest of the attacker's own guess, never about a stored token (256 random bits, SHA-256: no preimage)."""
    from storage.sites import add_site

    _, site_token = await add_site(db, code=A, name="Site A", province=1, kind="fixed")
    province_token = await tokens.issue(db, tokens.PROVINCE, 1)
    operator_token = await tokens.issue(db, tokens.OPERATOR, 0)
    near_miss = site_token[:-1] + ("A" if site_token[-1] != "A" else "B")
    calls: list = []
    auth = SiteAuth(RecordingPool(RecordingConnection(db, calls)), ttl=0)
    presented = {site_token: "site", province_token: "province", operator_token: "operator", near_miss: None,
                 "vx_" + "0" * 43: None}
    for token, role in presented.items():
        principal = await auth.principal(f"Bearer {token}")
        assert (principal.role if principal else None) == role
    for query, args in calls:
        assert "token_hash = $1" in query
        assert len(args) == 1 and isinstance(args[0], bytes) and len(args[0]) == 32
        assert args[0] in {hashlib.sha256(t.encode()).digest() for t in presented}
        assert not any(token in query for token in presented)
    assert {args[0] for _, args in calls} == {token_hash(t) for t in presented}
    # Both lookups are index probes on a unique digest.
    for table in ("sites", "tokens"):
        indexed = await db.fetchval("SELECT count(*) FROM pg_indexes WHERE tablename = $1 AND indexdef LIKE"
                                    " '%UNIQUE%(token_hash)%'", table)
        assert indexed == 1, table
