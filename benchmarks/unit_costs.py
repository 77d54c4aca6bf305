"""Unit costs, each printed beside a reference measured in the same run (CPU seconds, from /proc).

    python -m benchmarks.unit_costs [--idle 4000] [--posts 6000] [--rounds 3] [--doses 60000] [--e2e-doses 300000]

1. ingest CPU per desk POST (1-5 doses) with --idle keep-alive sessions open, against a null
   aiohttp+uvloop server holding the same sessions and answering the same posts, the two in turn for
   --rounds rounds; the round with the median ratio is the figure (target: at most 2x);
2. persisting CPU (worker and Postgres) per dose in 1-10-dose batches, against 1,000-dose batches at the
   same doses/s (target: at most 3x);
3. a certificate's CPU (certifier and Postgres), one certifier draining a backlog alone, against a bare
   loop that encodes and signs the same payloads: CBOR, ES256, deflate, base45, run before and after the
   drain, the mean of both (target: at most 1.5x);
4. end to end (`benchmarks.e2e`, 1,000-dose batches) against the raw COPY ceiling (target: at least 0.19), twice:
   persisting alone (no certifier or reviewer), and with every certificate signed too;
5. a certificate's QR image served again, against its first rendering (target: nothing).

Beside them, without a reference or target, what one SMS notification costs (notifier and Postgres): the
certificates' outbox drained by one development notifier after the certificate figure, which runs with no
notifier, so that each unit's Postgres CPU is its own.

The stack is the embedded default in a temporary folder (or DATABASE_URL/REDIS_URL), started by
deploy.stack. CPU is read from /proc (user + system, a process's reaped children included), so the
figures are CPU per unit, not wall time: a noisy neighbour slows both sides of a ratio alike.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import multiprocessing
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg

from benchmarks.e2e import batch_body, bench_sites, dose_fields
from deploy.stack import Stack
from deploy.waits import wait_certified, wait_persisted
from vaxline.config import Settings

TICK = os.sysconf("SC_CLK_TCK")
_spawn = multiprocessing.get_context("spawn")


# -- CPU of processes ------------------------------------------------------------------------------

def cpu_seconds(pid: int, *, children: bool = False) -> float:
    """User + system CPU of a live process; with `children`, also that of its children it has reaped."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
    return (utime + stime + ((cutime + cstime) if children else 0)) / TICK


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == pid:
                found.append(int(entry.name))
    return found


def postgres_cpu(postmaster: int) -> float:
    """The whole server's CPU: the postmaster, its live backends and workers, and those that exited."""
    return cpu_seconds(postmaster, children=True) + sum(cpu_seconds(child) for child in children_of(postmaster))


async def postmaster_of(settings: Settings) -> int:
    conn = await asyncpg.connect(settings.database_url)
    try:
        folder = await conn.fetchval("SELECT setting FROM pg_settings WHERE name = 'data_directory'")
    finally:
        await conn.close()
    return int((Path(folder) / "postmaster.pid").read_text().split()[0])


class Meter:
    """CPU seconds of named processes between `start()` and `stop()`."""

    def __init__(self, **readers) -> None:
        self.readers = readers
        self.spent: dict[str, float] = {}

    def start(self) -> "Meter":
        self._before = {name: read() for name, read in self.readers.items()}
        return self

    def stop(self) -> dict[str, float]:
        self.spent = {name: read() - self._before[name] for name, read in self.readers.items()}
        return self.spent


# -- clients ---------------------------------------------------------------------------------------

def desk_bodies(first: int, posts: int, sizes: tuple[int, int], seed: int) -> list[bytes]:
    """`posts` request bodies of `sizes` doses each (inclusive range), records numbered from `first` (below
    about 9,000,000: benchmarks.e2e.dose_fields spaces doses 17 s apart from July 2021, and a dose in the
    future is refused)."""
    rng, bodies, n = random.Random(seed), [], first
    for _ in range(posts):
        count = rng.randint(*sizes)
        bodies.append(batch_body(n, count))
        n += count
    return bodies


def client_main(port: int, token: str, idle: int, bodies: list[bytes], rate: float, opened, go, done) -> None:
    import uvloop

    uvloop.run(_client(port, token, idle, bodies, rate, opened, go, done))


async def _client(port: int, token: str, idle: int, bodies: list[bytes], rate: float, opened, go, done) -> None:
    """Open `idle` keep-alive sessions (one GET each, then silence), then post `bodies` at `rate` per second
    over 32 connections of their own; `done` is set once every post was answered 202."""
    import aiohttp

    sessions = []
    for start in range(0, idle, 500):
        sessions += await asyncio.gather(*(_idle_session(port) for _ in range(start, min(idle, start + 500))))
    opened.set()
    await asyncio.to_thread(go.wait)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    url, started, queue = f"http://127.0.0.1:{port}/v1/doses", time.monotonic(), list(enumerate(bodies))[::-1]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=32)) as client:
        async def lane() -> None:
            while queue:
                i, body = queue.pop()
                await asyncio.sleep(max(0.0, started + i / rate - time.monotonic()))
                while True:
                    async with client.post(url, data=body, headers=headers) as response:
                        await response.read()
                        if response.status == 202:
                            break
                        if response.status != 503:
                            raise RuntimeError(f"POST answered {response.status}")
                        await asyncio.sleep(0.05)

        await asyncio.gather(*(lane() for _ in range(32)))
    done.set()
    for writer in sessions:
        writer.close()


async def _idle_session(port: int):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: bench\r\n\r\n")
    await reader.readuntil(b"\r\n\r\n")
    await reader.read(64)  # the small body (a session's first exchange: a keep-alive answer)
    return writer


def drive(port: int, token: str, idle: int, bodies: list[bytes], rate: float, meter: Meter) -> dict[str, float]:
    """Run one client against `port`; the meter runs while the posts do (the idle sessions already open)."""
    opened, go, done = _spawn.Event(), _spawn.Event(), _spawn.Event()
    client = _spawn.Process(target=client_main, args=(port, token, idle, bodies, rate, opened, go, done))
    client.start()
    try:
        if not opened.wait(300):
            raise RuntimeError("the client did not open its idle sessions")
        meter.start()
        go.set()
        if not done.wait(900):
            raise RuntimeError("the client did not finish posting")
        return meter.stop()
    finally:
        client.join(30)
        if client.is_alive():
            client.kill()


def null_server(port: int, keepalive: float) -> None:
    """The reference: aiohttp + uvloop answering POST /v1/doses with a fixed 202, nothing else."""
    import uvloop
    from aiohttp import web

    body = b'{"batch_id":"0-0-0","accepted":1,"rejected":[]}'

    async def post(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=body, status=202, content_type="application/json")

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(body=b'{"status":"ok"}', content_type="application/json")

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/v1/doses", post)
        app.router.add_get("/healthz", healthz)
        runner = web.AppRunner(app, keepalive_timeout=keepalive, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, backlog=4096).start()
        await asyncio.Event().wait()

    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    uvloop.run(main())


def wait_port(port: int, timeout: float = 30) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port}")


# -- the measurements ------------------------------------------------------------------------------

def ingest_per_post(args, stack: Stack, token: str) -> list[tuple[float, float]]:
    """(ingest CPU per POST, the null server's) of each round, each with --idle sessions open, in seconds.

    The two sides take turns, --rounds times: a machine whose speed drifts over the minutes of a run (a
    neighbour, the host's clock) then weighs on both alike, and the rounds' spread shows how much it did."""
    pid = next(p for name, p in stack.pids.items() if name.startswith("ingest-"))
    null = _spawn.Process(target=null_server, args=(args.port + 1, stack.settings.keepalive_timeout))
    null.start()
    rounds = []
    try:
        wait_port(args.port + 1)
        for turn in range(args.rounds):
            bodies = desk_bodies(1_000_000 + turn * 100_000, args.posts, (1, 5), seed=1 + turn)
            spent = drive(args.port, token, args.idle, bodies, args.rate, Meter(ingest=lambda: cpu_seconds(pid)))
            reference = drive(args.port + 1, token, args.idle, bodies, args.rate,
                              Meter(null=lambda: cpu_seconds(null.pid)))
            rounds.append((spent["ingest"] / args.posts, reference["null"] / args.posts))
    finally:
        null.terminate()
        null.join(10)
    return rounds


def median_round(rounds: list[tuple[float, float]]) -> tuple[float, float]:
    """The round whose ratio is the median (the middle one; of an even count, the lower middle)."""
    ordered = sorted(rounds, key=lambda r: r[0] / r[1] if r[1] else float("inf"))
    return ordered[(len(ordered) - 1) // 2]


def persist_per_dose(args, stack: Stack, token: str, postmaster: int, sizes: tuple[int, int], first: int
                     ) -> tuple[float, float, float]:
    """(worker CPU, Postgres CPU, doses) per dose persisted, posting batches of `sizes` doses at --dose-rate."""
    workers = [p for name, p in stack.pids.items() if name.startswith("worker-")]
    count = max(1, args.doses // ((sizes[0] + sizes[1]) // 2))
    bodies = desk_bodies(first, count, sizes, seed=sizes[1])
    already = asyncio.run(_accepted_so_far(stack.settings))
    meter = Meter(worker=lambda: sum(cpu_seconds(p) for p in workers), postgres=lambda: postgres_cpu(postmaster))
    rate = args.dose_rate / ((sizes[0] + sizes[1]) / 2)  # requests/s for the same doses/s
    drive(args.port, token, 0, bodies, rate, meter.start())  # the meter runs on until every dose is in
    doses = asyncio.run(_accepted_so_far(stack.settings)) - already
    asyncio.run(wait_persisted(stack.settings, already + doses, timeout=900, every=0.5))
    spent = meter.stop()
    return spent["worker"] / doses, spent["postgres"] / doses, doses


def certificate_cost(stack: Stack, postmaster: int) -> tuple[float, float, int]:
    """(certifier CPU, Postgres CPU) per certificate and how many: one certifier draining the backlog alone."""
    stack.ensure_signing_key()
    meter = Meter(postgres=lambda: postgres_cpu(postmaster)).start()
    before = asyncio.run(_issued(stack.settings))
    stack.start_workers(name="bench-cert", processes=0, certifiers=1, reviewers=0, notifiers=0)
    certifier = stack.pids["certifier-0"]
    asyncio.run(wait_certified(stack.settings, timeout=1800))
    spent = meter.stop()
    certifier_cpu = cpu_seconds(certifier)  # the whole process: start-up is a few ms beside the drain
    issued = asyncio.run(_issued(stack.settings)) - before
    return certifier_cpu / issued, spent["postgres"] / issued, issued


def notification_cost(stack: Stack, postmaster: int) -> tuple[float, float, int]:
    """(notifier CPU, Postgres CPU) per notification sent and how many: one development notifier draining
    the outbox the certificates left (a different unit of work from the certificate: an SMS each)."""
    meter = Meter(postgres=lambda: postgres_cpu(postmaster)).start()
    before = asyncio.run(_sent(stack.settings))
    stack.start_workers(name="bench-notify", processes=0, certifiers=0, reviewers=0, notifiers=1)
    notifier = stack.pids["notifier-0"]
    asyncio.run(_wait_sent(stack.settings, timeout=1800))
    spent = meter.stop()
    sent = asyncio.run(_sent(stack.settings)) - before
    return cpu_seconds(notifier) / sent, spent["postgres"] / sent, sent


async def _sent(settings: Settings) -> int:
    conn = await asyncpg.connect(settings.database_url)
    try:
        return await conn.fetchval("SELECT count(*) FROM notifications WHERE sent_at IS NOT NULL")
    finally:
        await conn.close()


async def _wait_sent(settings: Settings, timeout: float) -> None:
    conn = await asyncpg.connect(settings.database_url)
    try:
        deadline = time.monotonic() + timeout
        while await conn.fetchval("SELECT count(*) FROM notifications WHERE sent_at IS NULL"):
            if time.monotonic() > deadline:
                raise TimeoutError("the notifier did not drain the outbox in time")
            await asyncio.sleep(0.5)
    finally:
        await conn.close()


async def _issued(settings: Settings) -> int:
    conn = await asyncpg.connect(settings.database_url)
    try:
        return await conn.fetchval("SELECT count(*) FROM certificates")
    finally:
        await conn.close()


def bare_signing(settings: Settings, count: int = 20_000) -> float:
    """CPU per certificate of the bare loop: the same kind of payloads encoded and signed, nothing else."""
    from vaxline.dcc.issue import Signer, expiry, new_uvci
    from vaxline.dcc.keys import KeyStore
    from vaxline.dcc.payload import statement
    from vaxline.sequence import HistoryDose

    signer = Signer(KeyStore(settings.signing_keys_dir).signing_key())
    payloads = []
    for n in range(count):
        f = dose_fields(n)
        stated = statement(f[2], f[3], [HistoryDose("BENCH-000", f[0], f[6], f[7], f[8], f[9], True)])
        payloads.append(stated.dcc(new_uvci()))
    issued_at = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    expires_at = expiry(issued_at)
    started = time.process_time()
    for dcc in payloads:
        signer.sign(dcc, issued_at, expires_at)
    return (time.process_time() - started) / count


def qr_costs(args, stack: Stack, count: int = 20) -> tuple[float, float]:
    """(ingest CPU per QR image served again, per first rendering), over `count` certificates."""
    import urllib.request

    from vaxline.links import CertificateLinks, server_secret

    pid = next(p for name, p in stack.pids.items() if name.startswith("ingest-"))
    links = CertificateLinks(server_secret(stack.settings), ttl=600)  # as the lookup hands them out
    uvcis = asyncio.run(_some_uvcis(stack.settings, count))
    spent = []
    for _ in range(2):
        meter = Meter(ingest=lambda: cpu_seconds(pid)).start()
        for uvci in uvcis:
            url = f"http://127.0.0.1:{args.port}/v1/certificates/{uvci}?{links.query(uvci)[0]}&format=png"
            with urllib.request.urlopen(url) as r:
                r.read()
        spent.append(meter.stop()["ingest"] / len(uvcis))
    return spent[1], spent[0]


async def _some_uvcis(settings: Settings, count: int) -> list[str]:
    conn = await asyncpg.connect(settings.database_url)
    try:
        return [r["uvci"] for r in await conn.fetch(
            "SELECT uvci FROM certificates WHERE status = 'current' ORDER BY uvci LIMIT $1", count)]
    finally:
        await conn.close()


def e2e_ratio(args, *, certify: bool = True) -> tuple[str, float | None]:
    """`python -m benchmarks.e2e --doses N`: its end-to-end line and its ratio to the COPY ceiling; without
    `certify`, with no certifier or reviewer (`--certifiers 0 --reviewers 0`): persisting alone."""
    alone = [] if certify else ["--certifiers", "0", "--reviewers", "0"]
    done = subprocess.run([sys.executable, "-m", "benchmarks.e2e", "--doses", str(args.e2e_doses),
                           "--port", str(args.port + 10), *alone], capture_output=True, text=True, timeout=3600,
                          cwd=Path(__file__).resolve().parent.parent)
    lines = done.stdout.splitlines()
    found = next((line for line in lines if "end to end / ceiling" in line), "")
    ratio = re.search(r"(\d+)%", found)
    summary = next((line.strip() for line in lines if line.strip().startswith("end to end:")), done.stderr[-300:])
    ceiling = next((line.strip().split(":", 1)[1].split("(")[0].strip()
                    for line in lines if line.strip().startswith("ceiling, psql COPY")), "?")
    return f"{summary}; ceiling {ceiling}", int(ratio.group(1)) / 100 if ratio else None


# -- the run ---------------------------------------------------------------------------------------

def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.unit_costs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--idle", type=int, default=4000, help="idle keep-alive sessions held during the posts")
    parser.add_argument("--posts", type=int, default=6000, help="desk POSTs of 1-5 doses, each round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the ingest figure, the two sides in turn")
    parser.add_argument("--rate", type=float, default=300.0, help="desk POSTs per second")
    parser.add_argument("--doses", type=int, default=60_000, help="doses posted for each persisting figure")
    parser.add_argument("--dose-rate", type=float, default=2600.0, help="doses/s for the persisting figures")
    parser.add_argument("--e2e-doses", type=int, default=300_000, help="0 skips the end-to-end figure")
    parser.add_argument("--port", type=int, default=18300)
    parser.add_argument("--only", choices=["ingest", "persist", "certificate"],
                        help="one figure only (the ones after it in the list need the ones before)")
    args = parser.parse_args()
    # Each round's records start 100,000 apart within the ingest figure's 1,000,000 (tests/test_benchmark_people).
    if not 1 <= args.rounds <= 10:
        parser.error("--rounds: from 1 to 10")
    if args.posts * 5 > 100_000:
        parser.error("--posts: at most 20,000 (a round's records must stay within its 100,000)")
    return args


def _line(name: str, value: float, reference: float, target: str, unit: str = "us") -> str:
    scale = 1e6 if unit == "us" else 1e3
    ratio = value / reference if reference else float("inf")
    return (f"  {name:<44} {value * scale:9.1f} {unit}   reference {reference * scale:9.1f} {unit}"
            f"   ratio {ratio:5.2f}  (target {target})")


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    args = _arguments()
    os.environ.setdefault("VAXLINE_LOG_LEVEL", "WARNING")
    folder = Path(tempfile.mkdtemp(prefix="vaxline-unit-costs-"))
    stack = Stack(folder, database=f"vaxline_units_{secrets.token_hex(3)}")
    lines = []
    try:
        settings = stack.start(stream_prefix=f"units{secrets.token_hex(3)}", max_backlog_entries=1_000_000,
                               lookup_rate_limit=1_000_000_000)
        [token] = stack.add_sites(bench_sites(1))
        postmaster = asyncio.run(postmaster_of(settings))
        stack.start_ingest(hosts="127.0.0.1", port=args.port, processes=1)
        stack.wait_ready([f"http://127.0.0.1:{args.port}/readyz"])
        rounds = ingest_per_post(args, stack, token)
        ingest, null = median_round(rounds)
        lines.append(_line(f"ingest CPU per desk POST ({args.idle:,} idle sessions)", ingest, null, "<= 2x",))
        lines.append(f"    the median of {len(rounds)} rounds, each side in turn; each round's ratio: "
                     + ", ".join(f"{i / n:.2f}" if n else "inf" for i, n in rounds))
        if args.only == "ingest":
            return print("\n".join(lines))
        stack.start_workers(name="bench-units", processes=1, certifiers=0, reviewers=0, notifiers=0)
        asyncio.run(wait_persisted(settings, asyncio.run(_accepted_so_far(settings)), timeout=600))
        small = persist_per_dose(args, stack, token, postmaster, (1, 10), first=2_000_000)
        large = persist_per_dose(args, stack, token, postmaster, (1000, 1000), first=4_000_000)
        lines.append(_line("persisting CPU per dose (worker + Postgres)", sum(small[:2]), sum(large[:2]), "<= 3x"))
        lines.append(f"    1-10-dose batches: worker {small[0] * 1e6:.1f} us + Postgres {small[1] * 1e6:.1f} us;"
                     f" 1,000-dose batches: worker {large[0] * 1e6:.1f} us + Postgres {large[1] * 1e6:.1f} us")
        if args.only == "persist":
            return print("\n".join(lines))
        stack.ensure_signing_key()
        bare_before = bare_signing(settings)  # the bare loop before and after the drain, the mean of both
        certifier, postgres, issued = certificate_cost(stack, postmaster)
        bare_after = bare_signing(settings)
        bare = (bare_before + bare_after) / 2
        lines.append(_line("certificate CPU (certifier + Postgres)", certifier + postgres, bare, "<= 1.5x"))
        lines.append(f"    {issued:,} certificates: certifier {certifier * 1e6:.1f} us + Postgres"
                     f" {postgres * 1e6:.1f} us; reference: a bare encode-and-sign loop, {bare_before * 1e6:.1f} us"
                     f" before the drain and {bare_after * 1e6:.1f} us after")
        notifier, postgres, sent = notification_cost(stack, postmaster)
        lines.append(f"  {'notification (notifier + Postgres), no target':<44} {(notifier + postgres) * 1e6:9.1f} us"
                     f"   {sent:,} sent: notifier {notifier * 1e6:.1f} us + Postgres {postgres * 1e6:.1f} us")
        again, first = qr_costs(args, stack)
        lines.append(_line("QR image (PNG) served again", again, first, "nothing", unit="ms"))
    finally:
        stack.stop()
        shutil.rmtree(folder, ignore_errors=True)
    if args.e2e_doses:
        # Twice: persisting alone (docs/benchmarks.md's persisting runs: 41,733 doses/s against a 416,921 ceiling,
        # 0.10), and with every certificate signed too, which signing bounds far below either ceiling.
        for label, certify in (("end to end / raw COPY ceiling, persisted", False),
                               ("end to end / raw COPY ceiling, and certified", True)):
            summary, ratio = e2e_ratio(args, certify=certify)
            lines.append(f"  {label:<44} {ratio if ratio is not None else float('nan'):9.2f}"
                         f"      reference 1.00 (the ceiling)      (target >= 0.19)\n    {summary}")
    print(f"\nvaxline unit costs ({os.cpu_count()} cores; CPU from /proc, user + system)")
    print("\n".join(lines))


async def _accepted_so_far(settings: Settings) -> int:
    """Doses the ingest figure left in the stream (the persisting figures start once they are in)."""
    from vaxline.streams import connect_redis, read_ingest_counts

    redis = connect_redis(settings)
    try:
        counts = await read_ingest_counts(redis, settings)
    finally:
        await redis.aclose()
    return sum(counts.accepted.values())


if __name__ == "__main__":
    sys.exit(main())
