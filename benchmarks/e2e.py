"""End-to-end throughput: HTTP in, Postgres out, certificates signed, beside the raw COPY ceiling.

    python -m benchmarks.e2e [--doses 1000000] [--clients 4] [--batch 1000] [--rate DOSES_PER_S] [--redis-cluster]

Starts the stack (the servers in DATABASE_URL/REDIS_URL, or the embedded
default in a temporary folder, Redis with appendfsync always unless
--appendfsync says otherwise), posts N doses over HTTP from several client
processes, waits until every one is persisted and on its person's current
certificate, and prints doses/s end to end, certificates/s, the latency
from the 202 to the certificate being retrievable (p50, p99) and each
process's peak memory. In the same run it measures the ceiling: psql `COPY`
of the same rows into a fresh copy of the doses table, two connections at
once.

Without --rate the clients post as fast as the stack accepts (throughput;
certification then trails persisting, which never waits for it). With
--rate they post at that pace, the way the 202-to-certificate latency is
meant to be read: at a load the stack sustains.

With --redis-cluster the same run is made twice: on the standalone Redis
above, then on a Redis Cluster of Debian's redis-server on loopback (3
masters, 3 replicas, appendfsync always on each, every 202 after a WAIT for
its master's replica), started by deploy/rediscluster.py as the tests start
theirs; it prints both doses/s side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import math
import multiprocessing
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg

from deploy import rediscluster
from deploy.embedded import psql_binary
from deploy.stack import Stack, reconcile
from deploy.waits import wait_certified, wait_persisted, wait_reviewed
from vaxline.config import Settings
from vaxline.provinces import PROVINCES

VIETNAM = dt.timezone(dt.timedelta(hours=7))
FAMILY = ["Nguyễn", "Trần", "Lê", "Phạm", "Hoàng", "Phan", "Vũ", "Đặng"]
GIVEN = ["Thị Ánh", "Văn Hùng", "Ngọc Lan", "Minh Dũng", "Thị Hoa", "Hữu Nam"]
VACCINES = ["EU/1/21/1529", "EU/1/20/1528", "EU/1/20/1507", "BBIBP-CorV"]
START = dt.datetime(2021, 7, 1, 7, 0, tzinfo=VIETNAM)


ID_PERIOD = math.lcm(96, 60, 2, 1_000_000)  # 3,000,000: provinces, birth years, sexes, serials


def dose_fields(n: int) -> tuple:
    """The n-th synthetic dose, as the 11 fields a site would send."""
    year = 1940 + n % 60
    female = n % 2
    # Province, year, sex and serial alone repeat every ID_PERIOD; each further period moves the province by
    # one, so an ID is never given twice below 96 periods (two benchmarks' ranges, 1,000,000 and 4,000,000,
    # once made the same persons).
    province = 1 + (n % 96 + n // ID_PERIOD) % 96
    national_id = f"{province:03d}{(0 if year < 2000 else 2) + female}{year % 100:02d}{n % 1_000_000:06d}"
    return (
        f"B-{n:08d}", national_id, f"{FAMILY[n % 8]} {GIVEN[n % 6]}", dt.date(year, 1 + n % 12, 1 + n % 28),
        "F" if female else "M", f"09{n % 100_000_000:08d}", VACCINES[n % 4], f"LOT{n % 997}", 1,
        START + dt.timedelta(seconds=17 * n),
    )


def batch_body(start: int, count: int) -> bytes:
    import msgspec

    keys = ("record_id", "national_id", "full_name", "birth_date", "sex", "phone", "vaccine", "lot",
            "dose_number", "administered_at")
    return msgspec.json.encode({"doses": [dict(zip(keys, dose_fields(n))) for n in range(start, start + count)]})


# -- clients ------------------------------------------------------------------

def client_process(url: str, token: str, ranges: list[tuple[int, int]], concurrency: int, rate: float, ready, go,
                   results) -> None:
    """One client process: builds its request bodies first, so the clock measures vaxline, not the client."""
    import resource

    import uvloop

    bodies = [batch_body(start, count) for start, count in ranges]
    ready.release()
    go.wait()
    accepted, retried = uvloop.run(_client(url, token, bodies, concurrency, [count for _, count in ranges], rate))
    results.put((accepted, retried, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))


async def _client(url: str, token: str, bodies: list[bytes], concurrency: int, counts: list[int],
                  rate: float) -> tuple[int, int]:
    """Post every body; with a rate (doses/s for this client), each at its scheduled time."""
    import aiohttp

    accepted = retried = 0
    started = time.monotonic()
    schedule = [started + sum(counts[:i]) / rate for i in range(len(counts))] if rate else [started] * len(counts)
    queue = list(zip(bodies, schedule))[::-1]
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        async def lane():
            nonlocal accepted, retried
            while queue:
                body, due = queue.pop()
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                while True:
                    async with session.post(url, data=body, headers=headers) as response:
                        if response.status == 202:
                            accepted += (await response.json())["accepted"]
                            break
                        if response.status != 503:
                            raise RuntimeError(f"{response.status}: {await response.text()}")
                        retried += 1
                        await asyncio.sleep(float(response.headers.get("Retry-After", "1")) / 10)

        await asyncio.gather(*(lane() for _ in range(concurrency)))
    return accepted, retried


def collect(results, clients, timeout: float = 3600):
    """The next client's outcome; fails fast when a client died without one."""
    import queue

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return results.get(timeout=1)
        except queue.Empty:
            if any(c.exitcode not in (None, 0) for c in clients):
                raise RuntimeError("a client process failed; see its traceback above") from None
    raise TimeoutError("clients did not finish in time")


# -- measurement helpers ----------------------------------------------------------

def peak_rss_mib(pid: int) -> float:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


async def copy_ceiling(database_url: str, doses: int, folder: Path) -> float:
    """psql COPY of the same rows into a fresh copy of `doses`, two connections at once."""
    conn = await asyncpg.connect(database_url)
    await conn.execute("DROP TABLE IF EXISTS doses_ceiling")
    await conn.execute("CREATE TABLE doses_ceiling (LIKE doses INCLUDING DEFAULTS) PARTITION BY RANGE (administered_at)")
    await conn.execute("CREATE TABLE doses_ceiling_default PARTITION OF doses_ceiling DEFAULT")
    for (name,) in await conn.fetch(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'doses'::regclass AND c.relname <> 'doses_default'"):
        bound = await conn.fetchval("SELECT pg_get_expr(relpartbound, oid) FROM pg_class WHERE relname = $1", name)
        await conn.execute(f"CREATE TABLE {name}_ceiling PARTITION OF doses_ceiling {bound}")
    await conn.execute("CREATE INDEX ON doses_ceiling (national_id, administered_at)")
    await conn.close()

    files = []
    half = doses // 2
    for part, (start, count) in enumerate([(0, half), (half, doses - half)]):
        path = folder / f"ceiling-{part}.csv"
        with path.open("w") as out:
            for n in range(start, start + count):
                f = dose_fields(n)
                out.write(f"1,{f[0]},{f[1]},{f[2]},{f[3]},{f[4]},{f[5]},{f[6]},{f[7]},{f[8]},{f[9].isoformat()},"
                          f"ceiling,{f[9].isoformat()}\n")
        files.append(path)
    columns = ("site_id, record_id, national_id, full_name, birth_date, sex, phone, vaccine, lot, dose_number,"
               " administered_at, batch_id, received_at")
    started = time.perf_counter()
    copies = [subprocess.Popen([psql_binary(), database_url, "-q", "-c",
                                f"\\copy doses_ceiling ({columns}) FROM '{path}' CSV"]) for path in files]
    for copy in copies:
        if copy.wait() != 0:
            raise RuntimeError("psql COPY failed")
    elapsed = time.perf_counter() - started
    conn = await asyncpg.connect(database_url)
    copied = await conn.fetchval("SELECT count(*) FROM doses_ceiling")
    await conn.execute("DROP TABLE doses_ceiling")
    await conn.close()
    if copied != doses:
        raise RuntimeError(f"the ceiling COPY stored {copied} of {doses} rows")
    return doses / elapsed


# -- the run --------------------------------------------------------------------

def bench_sites(count: int) -> list[dict]:
    provinces = sorted(PROVINCES)
    return [{"code": f"BENCH-{i:03d}", "name": f"Bench site {i}", "province": provinces[i % len(provinces)],
             "kind": "fixed"} for i in range(count)]


async def reconciled(settings: Settings) -> tuple[dict, float]:
    """`vaxline reconcile` over the whole run: (its totals and unexplained count, seconds it took)."""
    started = time.perf_counter()
    report = await reconcile(settings, first=dt.date(2021, 1, 1), last=dt.date.today())
    return report, time.perf_counter() - started


async def certificate_figures(settings: Settings) -> tuple[int, int, float, float, float, float]:
    """(issued, revoked, first and last certificate's epoch, p50 and p99 of 202 -> certificate, seconds)."""
    conn = await asyncpg.connect(settings.database_url)
    try:
        row = await conn.fetchrow(
            "SELECT count(*) AS issued, count(*) FILTER (WHERE status = 'revoked') AS revoked,"
            " extract(epoch FROM min(certified_at)) AS first, extract(epoch FROM max(certified_at)) AS last,"
            " percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP"
            "   (ORDER BY extract(epoch FROM certified_at - received_at)) AS latency"
            " FROM certificates")
    finally:
        await conn.close()
    return row["issued"], row["revoked"], float(row["first"]), float(row["last"]), *row["latency"]


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.e2e", description=__doc__.split("\n\n")[0])
    parser.add_argument("--doses", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=4, help="client processes")
    parser.add_argument("--concurrency", type=int, default=2, help="requests in flight per client process")
    parser.add_argument("--ingest", type=int, default=2, help="ingest processes")
    parser.add_argument("--workers", type=int, default=2, help="persisting worker processes")
    parser.add_argument("--certifiers", type=int, default=2, help="certifier processes")
    parser.add_argument("--reviewers", type=int, default=1, help="reviewer processes (review flags, registry status)")
    parser.add_argument("--rate", type=float, default=0.0,
                        help="post at this many doses/s in all (default: as fast as accepted)")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--appendfsync", default="always", choices=["always", "everysec"],
                        help="embedded Redis only")
    parser.add_argument("--port", type=int, default=18080)
    parser.add_argument("--redis-cluster", action="store_true",
                        help="also run on a 3+3 Redis Cluster on loopback and print both doses/s")
    return parser.parse_args()


def start_clients(args, tokens: list[str]):
    """The client processes, each with its share of the doses, built and waiting for `go`."""
    per_client = args.doses // args.clients
    spawn = multiprocessing.get_context("spawn")
    results, ready, go = spawn.Queue(), spawn.Semaphore(0), spawn.Event()
    clients = []
    for c in range(args.clients):
        first = c * per_client
        ranges = [(s, min(args.batch, first + per_client - s)) for s in range(first, first + per_client, args.batch)]
        clients.append(spawn.Process(target=client_process, args=(
            f"http://127.0.0.1:{args.port}/v1/doses", tokens[c], ranges, args.concurrency, args.rate / args.clients,
            ready, go, results)))
        clients[-1].start()
    return clients, results, ready, go


def measure(args, stack: Stack, tokens: list[str]) -> dict:
    """Post every dose, wait for each stage; the figures, timed from the first post."""
    settings = stack.settings
    clients, results, ready, go = start_clients(args, tokens)
    stack.wait_ready([f"http://127.0.0.1:{args.port}/readyz"])
    for _ in clients:
        if not ready.acquire(timeout=600):
            raise RuntimeError("a client process did not get ready")
    started = time.perf_counter()
    go.set()
    outcomes = [collect(results, clients) for _ in clients]
    posted = time.perf_counter() - started
    for c in clients:
        c.join()
    accepted = sum(a for a, _, _ in outcomes)
    asyncio.run(wait_persisted(settings, accepted, timeout=3600))
    persisted = time.perf_counter() - started
    if args.certifiers:  # --certifiers 0 measures persisting alone
        asyncio.run(wait_certified(settings, timeout=3600))
    elapsed = time.perf_counter() - started
    if args.reviewers:
        asyncio.run(wait_reviewed(settings, timeout=3600))
    reviewed = time.perf_counter() - started
    certified = asyncio.run(certificate_figures(settings)) if args.certifiers else None
    peaks = {label: peak_rss_mib(pid) for label, pid in stack.pids.items()}
    stack.supervisor.stop()
    report, reconcile_seconds = asyncio.run(reconciled(settings))
    return dict(outcomes=outcomes, accepted=accepted, posted=posted, persisted=persisted, elapsed=elapsed,
                reviewed=reviewed, certified=certified, peaks=peaks, report=report,
                reconcile_seconds=reconcile_seconds,
                ceiling=asyncio.run(copy_ceiling(settings.database_url, args.doses, stack.folder)))


def print_figures(args, stack: Stack, f: dict) -> None:
    accepted, elapsed, certified = f["accepted"], f["elapsed"], f["certified"]
    print(f"\nvaxline end-to-end benchmark ({os.cpu_count()} cores; Redis appendfsync "
          f"{args.appendfsync if stack.embedded_redis else 'as configured'}; {args.ingest} ingest,"
          f" {args.workers} workers, {args.certifiers} certifiers, {args.reviewers} reviewers,"
          f" {args.shards} shards; {args.clients} client processes x {args.concurrency} in flight,"
          f" {args.batch}-dose batches" + (f", paced at {args.rate:,.0f} doses/s)" if args.rate else ")"))
    print(f"  doses accepted (202):        {accepted:,} ({sum(r for _, r, _ in f['outcomes'])} requests retried"
          " after 503)")
    print(f"  HTTP posting finished after: {f['posted']:.1f} s ({accepted / f['posted']:,.0f} doses/s accepted)")
    print(f"  all persisted after:         {f['persisted']:.1f} s ({accepted / f['persisted']:,.0f} doses/s persisted)")
    what = "persisted and certified" if certified else "persisted"
    if certified:
        print(f"  all certified after:         {elapsed:.1f} s")
    print(f"  end to end:                  {accepted / elapsed:,.0f} doses/s ({what})")
    if certified:
        issued, revoked, first_cert, last_cert, latency_p50, latency_p99 = certified
        print(f"  certificates:                {issued:,} signed ({revoked:,} superseded), "
              f"{issued / max(1e-9, last_cert - first_cert):,.0f} certificates/s from first to last")
        print(f"  202 -> certificate:          p50 {latency_p50:.2f} s, p99 {latency_p99:.2f} s"
              + ("" if args.rate else " (at saturation: includes the certify backlog)"))
    if args.reviewers:
        print(f"  all reviewed after:          {f['reviewed']:.1f} s (review flags and registry status)")
    report = f["report"]
    totals = report["totals"]
    print(f"  reconciliation:              {report['unexplained']} unexplained ({totals['accepted']:,} accepted,"
          f" {totals['present']:,} present, {totals['counted']:,} counted, {totals['certified']:,} certified,"
          f" {totals['pending_certification']:,} awaiting certification; took {f['reconcile_seconds']:.1f} s)")
    print(f"  ceiling, psql COPY x2:       {f['ceiling']:,.0f} doses/s (same rows, fresh copy of the table)")
    print(f"  end to end / ceiling:        {accepted / elapsed / f['ceiling']:.0%}")
    print(f"  5,000,000 doses would take:  {5_000_000 / (accepted / elapsed) / 60:.1f} min ({what})")
    print("  peak memory (VmHWM):")
    for label, mib in sorted(f["peaks"].items()):
        print(f"    {label:<24} {mib:8.0f} MiB")
    print(f"    {'clients (each)':<24} {max(m for _, _, m in f['outcomes']):8.0f} MiB")


def run(args, folder: Path) -> dict:
    """One stack on the Redis of REDIS_URL (or the embedded one), measured and printed; its figures."""
    stack = Stack(folder, database=f"vaxline_bench_{secrets.token_hex(3)}", appendfsync=args.appendfsync)
    try:
        stack.start(shards=args.shards, stream_prefix=f"bench{secrets.token_hex(3)}", max_backlog_entries=10_000)
        tokens = stack.add_sites(bench_sites(args.clients))
        stack.start_ingest(hosts="127.0.0.1", port=args.port, processes=args.ingest)
        if args.certifiers:
            stack.ensure_signing_key()
        stack.start_workers(name="bench", processes=args.workers, certifiers=args.certifiers,
                            reviewers=args.reviewers)
        figures = measure(args, stack, tokens)
        print_figures(args, stack, figures)
        return figures
    finally:
        stack.stop()


def on_cluster(args, folder: Path) -> dict:
    """The same run on a Redis Cluster started here (deploy/rediscluster.py, as the tests start theirs)."""
    with rediscluster.LocalCluster(folder / "redis-cluster") as cluster:
        previous = os.environ.get("REDIS_URL")
        os.environ["REDIS_URL"] = cluster.url  # the stack and every process it starts take it from there
        try:
            print(f"\nRedis Cluster: {cluster.masters} masters, {cluster.replicas} replica each, appendfsync always,"
                  " each 202 after WAIT for the replica")
            return run(args, folder)
        finally:
            if previous is None:
                os.environ.pop("REDIS_URL", None)
            else:
                os.environ["REDIS_URL"] = previous


def print_comparison(standalone: dict, cluster: dict) -> None:
    print("\nsame run, doses/s        Redis Cluster   standalone Redis   cluster / standalone")
    for label, key in (("accepted (202)", "posted"), ("persisted", "persisted"), ("end to end", "elapsed")):
        on_cluster, alone = cluster["accepted"] / cluster[key], standalone["accepted"] / standalone[key]
        print(f"  {label:<22} {on_cluster:>13,.0f} {alone:>18,.0f} {on_cluster / alone:>21.0%}")


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the clean-up below
    args = _arguments()
    if args.redis_cluster and (why := rediscluster.available()):
        sys.exit(f"--redis-cluster: {why}")
    folder = Path(tempfile.mkdtemp(prefix="vaxline-bench-"))
    try:
        standalone = run(args, folder)
        if args.redis_cluster:
            cluster = on_cluster(args, folder)
            print_comparison(standalone, cluster)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
