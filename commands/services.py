"""`vaxline run`, `migrate`, `serve`, `work`, `status`: the deployment's processes."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import sys
import urllib.error
import urllib.request
from pathlib import Path

from deploy.keys import KeyRotation
from deploy.local import announce, withdraw
from deploy.sdnotify import Notifier
from deploy.stack import Stack, on_database
from vaxline import otp
from vaxline.config import Settings
from vaxline.dcc.keys import KeyStore, NoSigningKey
from vaxline.filemodes import LooseMode

from .common import ConfigError, settings_for

log = logging.getLogger("vaxline")

DEMO_SITE = {"code": "DEMO-001", "name": "Trạm Y tế Phường Demo", "province": 1, "kind": "fixed"}


def add_parsers(commands) -> None:
    run = commands.add_parser("run", help="start everything in the foreground")
    run.add_argument("--host", default="127.0.0.1")
    run.add_argument("--port", type=int, default=8080)
    run.add_argument("--ingest-processes", type=int, default=2)
    run.add_argument("--workers", type=int, default=2)
    run.add_argument("--certifiers", type=int, default=1)
    run.add_argument("--reviewers", type=int, default=1)
    run.add_argument("--notifiers", type=int, default=1, help="notifier processes (citizens' SMS; development outbox)")
    run.set_defaults(func=cmd_run)

    migrate = commands.add_parser("migrate", help="apply schema migrations")
    migrate.set_defaults(func=cmd_migrate)

    serve = commands.add_parser("serve", help="run the ingest HTTP processes")
    serve.add_argument("--host", default="0.0.0.0")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--processes", type=int, default=2)
    serve.set_defaults(func=cmd_serve)

    work = commands.add_parser("work", help="run the stream worker processes")
    work.add_argument("--processes", type=int, default=2, help="persisting workers")
    work.add_argument("--certifiers", type=int, default=1, help="certifier processes (0: certify elsewhere)")
    work.add_argument("--reviewers", type=int, default=1, help="reviewer processes (0: review elsewhere)")
    work.add_argument("--notifiers", type=int, default=1,
                      help="notifier processes, when VAXLINE_NOTIFIER is set (0: notify elsewhere)")
    work.add_argument("--name", default=socket.gethostname(),
                      help="consumer name prefix; keep it stable so a restarted worker reads its own pending list")
    work.add_argument("--metrics-host", default="0.0.0.0")
    work.add_argument("--metrics-port", type=int, default=9465, help="/metrics of the workers; 0 turns it off")
    work.set_defaults(func=cmd_work)

    status = commands.add_parser("status", help="throughput, backlog, freshness and dead letters of a deployment")
    status.add_argument("--url", action="append", dest="urls", metavar="METRICS_URL",
                        help="a /metrics endpoint to read (repeat for ingest and workers);"
                             " default http://127.0.0.1:8080/metrics")
    status.add_argument("--watch", nargs="?", type=float, const=2.0, metavar="SECONDS",
                        help="refresh every SECONDS (default 2) until Ctrl-C")
    status.set_defaults(func=cmd_status)


async def _migrate(settings: Settings) -> list[str]:
    from storage.migrate import migrate

    return await on_database(settings, migrate)


def cmd_migrate(args) -> int:
    applied = asyncio.run(_migrate(settings_for(args.data_dir)))
    print(f"applied {len(applied)} migration(s)" + (f": {', '.join(applied)}" if applied else "; schema up to date"))
    return 0


def _metrics_dir(args, role: str) -> Path:
    return args.data_dir / "metrics" / role


def _check_ingest(settings: Settings) -> None:
    """What ingest would refuse to start with, refused before any process starts (exit 2, named): a
    malformed VAXLINE_TRUSTED_PROXIES or server secret, a key folder, key or server secret open to others."""
    from ingest.server import startup_checks

    try:
        startup_checks(settings)
    except (ValueError, LooseMode) as e:
        raise ConfigError(str(e)) from None


def cmd_serve(args) -> int:
    settings = settings_for(args.data_dir)
    try:  # before any process starts: a deployment without an SMS gateway must say so, not log codes
        otp.sender(settings)
    except otp.NoOtpSender as e:
        raise ConfigError(str(e)) from None
    _check_ingest(settings)
    stack = Stack(args.data_dir)
    stack.attach(settings, metrics_dir=_metrics_dir(args, "serve"))
    stack.start_ingest(hosts=args.host, port=args.port, processes=args.processes)
    stack.supervise(tick=_systemd(lambda: _answers(f"{_local_url(args)}/readyz")))  # READY=1 once ready
    return 0


def cmd_work(args) -> int:
    stack = Stack(args.data_dir)
    stack.attach(settings_for(args.data_dir), metrics_dir=_metrics_dir(args, "work"))
    if args.metrics_port:
        from prometheus_client import start_http_server

        from monitoring.exposition import registry

        start_http_server(args.metrics_port, addr=args.metrics_host, registry=registry())
    rotation = None
    if args.certifiers:
        keys = KeyStore(stack.settings.signing_keys_dir)
        try:  # a certifier that met a folder open to others later logs it and waits for the chmod
            keys.signing_key()  # the first key is the operator's (`vaxline keys init`); the next ones are ours
        except (NoSigningKey, LooseMode) as e:
            raise ConfigError(str(e)) from None
        rotation = KeyRotation(keys)  # as `vaxline run`: a month before the newest key stops signing
        rotation.rotate()
    stack.start_workers(name=args.name, processes=args.processes, certifiers=args.certifiers,
                        reviewers=args.reviewers, notifiers=args.notifiers)
    started = len(stack.supervisor.children)  # the notifiers only when VAXLINE_NOTIFIER names one
    if not started:  # a unit of its own for notifiers, on a host without VAXLINE_NOTIFIER: not a silent no-op
        raise ConfigError("nothing to run: no workers, certifiers or reviewers asked, and no notifier "
                          "(set VAXLINE_NOTIFIER, and VAXLINE_PUBLIC_BASE_URL for a real one)")
    # READY=1 once every consumer started has Postgres and Redis (its `running` gauge is up).
    stack.supervise(tick=_both(_systemd(lambda: _consumers_running() >= started), rotation))
    return 0


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _consumers_running() -> float:
    from monitoring import names
    from monitoring.exposition import registry

    running = registry()
    return sum(running.get_sample_value(name) or 0.0
               for name in (names.WORKERS_RUNNING, names.CERTIFIERS_RUNNING, names.REVIEWERS_RUNNING,
                            names.NOTIFIERS_RUNNING))


def _systemd(ready):
    """A supervisor tick for a unit of Type=notify: READY=1 the first time `ready()` holds (asked each tick
    until then), then watchdog pings; does nothing outside systemd."""
    notifier, state = Notifier(), {"ready": not os.environ.get("NOTIFY_SOCKET")}

    def tick() -> None:
        if not state["ready"] and ready():
            state["ready"] = True
            notifier.ready("serving")
        notifier.tick()

    return tick


def cmd_status(args) -> int:
    from monitoring import status

    urls = args.urls or ["http://127.0.0.1:8080/metrics"]
    try:
        if args.watch:
            status.watch(urls, every=args.watch)
        else:
            print(status.once(urls))
    except status.Unreachable as e:
        print(f"vaxline status: {e}", file=sys.stderr)
        return 1
    return 0


def cmd_run(args) -> int:
    """Everything in the foreground: the embedded services unless DATABASE_URL/REDIS_URL name others."""
    # Not group-writable even under a umask of 002: it holds the server secret (vaxline.links).
    args.data_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
    _check_ingest(Settings.from_env(data_dir=args.data_dir))  # before Postgres, Redis or a process starts
    stack = Stack(args.data_dir)
    try:
        settings = stack.start(metrics_dir=_metrics_dir(args, "run"))
        log.info("migrations applied: %s", ", ".join(stack.migrated) or "none pending")
        [token] = stack.add_sites([DEMO_SITE])
        announce(settings)
        stack.start_ingest(hosts=args.host, port=args.port, processes=args.ingest_processes)
        rotation = KeyRotation(KeyStore(settings.signing_keys_dir))  # the first key, then a month ahead
        rotation.rotate()  # logs the key it made
        stack.start_workers(name=f"{socket.gethostname()}-run", processes=args.workers,
                            certifiers=args.certifiers, reviewers=args.reviewers, notifiers=args.notifiers)
        _wait_ready(args, stack)
        _print_banner(args, DEMO_SITE["code"], token)
        stack.supervise(tick=_both(_status_printer(), rotation, _systemd(lambda: True)))
    finally:
        stack.stop()
        withdraw(args.data_dir)
    log.info("stopped; nothing acknowledged is lost (unfinished batches resume on the next start)")
    return 0


def _local_url(args) -> str:
    host = args.host.split(",")[0].strip()  # several addresses: any one answers
    host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return f"http://{host}:{args.port}"


def _wait_ready(args, stack, timeout: float = 60) -> None:
    """Wait for ingest, so the banner's curl works when it is shown."""
    try:
        stack.wait_ready([f"{_local_url(args)}/readyz"], timeout=timeout)
    except TimeoutError as e:
        raise ConfigError(f"ingest did not become ready on port {args.port}: {e}") from e


def _print_banner(args, site_code: str, token: str) -> None:
    url = _local_url(args)
    body = json.dumps({"doses": [{
        "record_id": "DEMO-0001", "national_id": "001099012345", "full_name": "Nguyễn Thị Ánh",
        "birth_date": "1990-04-02", "sex": "F", "phone": "0912345678", "vaccine": "EU/1/21/1529",
        "lot": "ABV5300", "dose_number": 1, "administered_at": "2021-08-14T09:30:00+07:00",
    }]}, ensure_ascii=False)
    print(f"""
vaxline is running at {url}
demo site {site_code}, bearer token (new at every start):
{token}

post a batch:
curl -s -X POST {url}/v1/doses -H 'Authorization: Bearer {token}' -H 'Content-Type: application/json' -d '{body}'

read it back:
curl -s {url}/v1/persons/001099012345/doses -H 'Authorization: Bearer {token}'

look up the certificate issued a moment later (its "hc1" is the QR text; GET {url}<its "link">&format=png is the QR):
curl -s -X POST {url}/v1/certificates/lookup -H 'Content-Type: application/json' -d '{{"national_id": "001099012345", "birth_date": "1990-04-02"}}'

verify it offline:
vaxline --data-dir {args.data_dir} verify 'HC1:...'

Ctrl-C stops everything cleanly.
""", flush=True)


def _both(*ticks):
    def tick() -> None:
        for each in ticks:
            if each is not None:
                each()

    return tick


def _status_printer():
    from monitoring.exposition import registry
    from monitoring.status import Snapshot, status_line

    interactive = sys.stdout.isatty()
    state = {"before": Snapshot.from_families(registry().collect()), "printed": 0.0}

    def tick() -> None:
        after = Snapshot.from_families(registry().collect())
        line = status_line(state["before"], after)
        state["before"] = after
        if interactive:
            print(f"\r\033[K{line}", end="", flush=True)
        elif after.at - state["printed"] >= 10:
            print(line, flush=True)
            state["printed"] = after.at

    return tick
