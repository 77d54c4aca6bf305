"""The portal's lookup page against the JSON lookup: ingest CPU per request, both measured in the same run.

    python -m benchmarks.portal_costs [--people 300] [--rounds 3] [--concurrency 8]

A stack (embedded Postgres and Redis in a temporary folder, one ingest process, a persisting worker and a
certifier) holds `--people` certified people. Then, in alternating rounds so that a noisy neighbour
slows both alike, every person is looked up through `POST /v1/certificates/lookup` (JSON) and through
the page as a browser uses it: `GET /` (the form and its CSRF cookie), then `POST /` (the form post,
answered with the certificate page). Ingest's CPU is read from /proc (user + system) around each round.

Printed: CPU per request of the form post and of the form's GET, each against the JSON lookup's (target:
at most 2x), and the pair (one lookup through the page) against it. The QR image is not in either figure:
the page shows it with `<img>` from the API's own QR route, which a JSON client fetches just the same.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import os
import re
import secrets
import shutil
import signal
import sys
import tempfile
import urllib.request
from pathlib import Path

import aiohttp

from benchmarks.e2e import batch_body, bench_sites, dose_fields
from benchmarks.unit_costs import Meter, _line, cpu_seconds
from deploy.stack import Stack
from deploy.waits import wait_certified, wait_persisted

_csrf = re.compile(rb'name="csrf" value="([^"]+)"')
FIRST = 7_000_000  # record numbers of this benchmark's people (benchmarks.e2e.dose_fields)


def people(count: int) -> list[tuple[str, str]]:
    """(national_id, birth_date) of the benchmark's people."""
    return [(fields[1], fields[3].isoformat()) for fields in map(dose_fields, range(FIRST, FIRST + count))]


async def json_lookups(base: str, who: list[tuple[str, str]], concurrency: int) -> None:
    async with aiohttp.ClientSession(base) as session:
        async def one(national_id: str, birth_date: str) -> None:
            async with session.post("/v1/certificates/lookup",
                                    json={"national_id": national_id, "birth_date": birth_date}) as response:
                assert response.status == 200, response.status
                await response.read()
        await _bounded([one(*person) for person in who], concurrency)


async def page_lookups(base: str, who: list[tuple[str, str]], concurrency: int, step: str) -> None:
    """`step` "get": GET / only; "post": the form post only (its GET done before, outside the meter)."""
    async with aiohttp.ClientSession(base, cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        async with session.get("/") as response:
            token = _csrf.search(await response.read()).group(1).decode()

        async def one(national_id: str, birth_date: str) -> None:
            if step == "get":
                async with session.get("/") as response:
                    assert response.status == 200, response.status
                    await response.read()
                return
            async with session.post("/", data={"csrf": token, "national_id": national_id,
                                               "birth_date": birth_date}) as response:
                body = await response.read()
                assert response.status == 200 and b'id="qr"' in body, response.status
        await _bounded([one(*person) for person in who], concurrency)


async def _bounded(calls: list, concurrency: int) -> None:
    gate = asyncio.Semaphore(concurrency)

    async def run(call):
        async with gate:
            await call
    await asyncio.gather(*(run(call) for call in calls))


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.portal_costs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--people", type=int, default=300, help="certified people, each looked up once a round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--port", type=int, default=18400)
    return parser.parse_args()


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # the stack stops in `finally`
    args = _arguments()
    os.environ.setdefault("VAXLINE_LOG_LEVEL", "WARNING")
    folder = Path(tempfile.mkdtemp(prefix="vaxline-portal-costs-"))
    # Removed at exit, after pgserver's own exit hook (registered later, run first) stopped Postgres in it.
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    stack = Stack(folder, database=f"vaxline_portal_{secrets.token_hex(3)}")
    base = f"http://127.0.0.1:{args.port}"
    try:
        settings = stack.start(stream_prefix=f"portal{secrets.token_hex(3)}", lookup_rate_limit=1_000_000_000,
                               lookup_floor=0.0)
        [token] = stack.add_sites(bench_sites(1))
        stack.start_ingest(hosts="127.0.0.1", port=args.port, processes=1)
        stack.wait_ready([f"{base}/readyz"])
        request = urllib.request.Request(f"{base}/v1/doses", data=batch_body(FIRST, args.people), method="POST",
                                         headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        urllib.request.urlopen(request).read()
        stack.ensure_signing_key()
        stack.start_workers(name="bench-portal", processes=1, certifiers=1, reviewers=0, notifiers=0)
        asyncio.run(wait_persisted(settings, args.people, timeout=120))
        asyncio.run(wait_certified(settings, timeout=120))
        pid = next(p for name, p in stack.pids.items() if name.startswith("ingest-"))
        who = people(args.people)
        spent = {"json": 0.0, "get": 0.0, "post": 0.0}
        for _ in range(args.rounds):
            for name, run in (("json", lambda: json_lookups(base, who, args.concurrency)),
                              ("get", lambda: page_lookups(base, who, args.concurrency, "get")),
                              ("post", lambda: page_lookups(base, who, args.concurrency, "post"))):
                meter = Meter(ingest=lambda: cpu_seconds(pid)).start()
                asyncio.run(run())
                spent[name] += meter.stop()["ingest"]
    finally:
        stack.stop()
    n = args.people * args.rounds
    json_cost, get_cost, post_cost = (spent[k] / n for k in ("json", "get", "post"))
    print(f"\nvaxline portal costs ({os.cpu_count()} cores; ingest CPU from /proc, user + system;"
          f" {n:,} lookups each way)")
    print(_line("POST / (the form post) per request", post_cost, json_cost, "<= 2x"))
    print(_line("GET / (the form) per request", get_cost, json_cost, "<= 2x"))
    print(_line("a lookup through the page (GET + POST)", get_cost + post_cost, json_cost, "(two requests)"))
    print("    reference: POST /v1/certificates/lookup, the same people, the same run")


if __name__ == "__main__":
    sys.exit(main())
