"""The `vaxline` command line.

    vaxline run                       everything, in the foreground (embedded Postgres/Redis by default)
    vaxline migrate                   apply schema migrations (idempotent)
    vaxline serve [--host --port --processes]
    vaxline work [--processes --certifiers --reviewers]
    vaxline sites add --code --name --province [--kind]
    vaxline sites import FILE.csv | token CODE | activate CODE | deactivate CODE
    vaxline registry import FILE.csv      population-registry extract, then reconcile persons against it
    vaxline tokens operator | provinces token N    read-only tokens beyond one site
    vaxline review [--site | --province] [--flag] [--out]   the review list as CSV
    vaxline reconcile [--from --to --site] [--json]        every acknowledged dose accounted for
    vaxline import FILE --site CODE [--resume] [--no-wait] | --template OUT.xlsx   back-entry from CSV/XLSX
    vaxline corrections [--site | --province] [--status] [--out]   citizen correction requests as CSV
    vaxline keys init|rotate|list         signing keys and their signer certificates (DSC)
    vaxline verify [--dsc ...] [--clock] [--json] HC1_OR_DASH
    vaxline loadtest sessions|day|overload [...]   Locust capacity proof: thresholds, reconciliation, report

The commands that read or write the deployment use DATABASE_URL and REDIS_URL; when
those are unset and `vaxline run` is running on its embedded services in the
same data folder, they use those.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import socket
import sys
import time
from pathlib import Path

from .config import Settings
from .dcc.keys import KeyStore, NoSigningKey
from .valuesets import SITE_KINDS

log = logging.getLogger("vaxline")

DEMO_SITE = {"code": "DEMO-001", "name": "Trạm Y tế Phường Demo", "province": 1, "kind": "fixed"}


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    from monitoring.logs import configure

    configure(logging.WARNING if args.command in ("sites", "status", "keys", "verify", "tokens", "provinces",
                                                  "review", "reconcile", "registry", "corrections", "import", "loadtest") else None)
    try:
        return args.func(args) or 0
    except ConfigError as e:
        print(f"vaxline: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vaxline", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("VAXLINE_DATA_DIR", ".vaxline")),
                        help="local data folder (embedded services, metrics); default .vaxline")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="start everything in the foreground")
    run.add_argument("--host", default="127.0.0.1")
    run.add_argument("--port", type=int, default=8080)
    run.add_argument("--ingest-processes", type=int, default=2)
    run.add_argument("--workers", type=int, default=2)
    run.add_argument("--certifiers", type=int, default=1)
    run.add_argument("--reviewers", type=int, default=1)
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

    sites = commands.add_parser("sites", help="the site registry").add_subparsers(dest="sites_command", required=True)
    add = sites.add_parser("add", help="register a site; prints its bearer token as the last line")
    add.add_argument("--code", required=True)
    add.add_argument("--name", required=True)
    add.add_argument("--province", type=int, required=True,
                     help="official province code, e.g. 1 for Hà Nội (the 63 of vaxline/provinces.csv)")
    add.add_argument("--kind", choices=SITE_KINDS, default="fixed")
    add.set_defaults(func=cmd_sites_add)
    load = sites.add_parser("import", help="register or update sites from a CSV file"
                            " (code,name,province,district,kind[,parent]); tokens are left as they are")
    load.add_argument("file", metavar="FILE.csv", help="the registry file, UTF-8 with a header row; - reads stdin")
    load.set_defaults(func=cmd_sites_import)
    token = sites.add_parser("token", help="issue or rotate a site's bearer token; prints it as the last line")
    token.add_argument("code")
    token.set_defaults(func=cmd_sites_token)
    for command, active, what in (("activate", True, "accept a deactivated site's token again"),
                                  ("deactivate", False, "refuse a site's token; its doses and statistics stay")):
        switch = sites.add_parser(command, help=what)
        switch.add_argument("code")
        switch.set_defaults(func=cmd_sites_active, active=active)
    keys = commands.add_parser("keys", help="certificate signing keys").add_subparsers(dest="keys_command",
                                                                                   required=True)
    keys.add_parser("init", help="create a signing key and its DSC unless one exists").set_defaults(func=cmd_keys_init)
    keys.add_parser("rotate", help="add a new signing key; older ones stay in the trust list"
                    ).set_defaults(func=cmd_keys_rotate)
    keys.add_parser("list", help="the trust list: kid, expiry, whether the private key is here"
                    ).set_defaults(func=cmd_keys_list)

    verify = commands.add_parser(
        "verify", help="verify an HC1 certificate offline; exit 0 valid, 1 not valid, 2 usage error")
    verify.add_argument("hc1", metavar="HC1_OR_DASH", help="the HC1: text, or - to read it from standard input")
    verify.add_argument("--dsc", action="append", metavar="FILE_OR_BASE64_DER",
                        help="a trusted signer certificate (repeatable); default: this deployment's trust list")
    verify.add_argument("--clock", metavar="RFC3339", help="verify as of this time instead of now")
    verify.add_argument("--revocations", metavar="FILE",
                        help="revoked UVCI hashes as GET /v1/revocations serves them; without --dsc the"
                             " deployment's own list is read from its database when it is reachable")
    verify.add_argument("--json", action="store_true", help="print the verdict as JSON")
    verify.set_defaults(func=cmd_verify)

    tokens = commands.add_parser("tokens", help="read-only tokens beyond one site"
                                 ).add_subparsers(dest="tokens_command", required=True)
    tokens.add_parser("operator", help="issue the national operator's token (the old one stops working);"
                      " printed as the last line").set_defaults(func=cmd_tokens_operator)
    provinces = commands.add_parser("provinces", help="provinces and their tokens"
                                    ).add_subparsers(dest="provinces_command", required=True)
    province_token = provinces.add_parser("token", help="issue a province's read-only token (the old one stops"
                                          " working); printed as the last line")
    province_token.add_argument("province", type=int, metavar="N", help="official province code, e.g. 79")
    province_token.set_defaults(func=cmd_provinces_token)

    review = commands.add_parser("review", help="the review list as CSV: records a site should look at")
    review_scope = review.add_mutually_exclusive_group()
    review_scope.add_argument("--site", metavar="CODE", help="one site's records")
    review_scope.add_argument("--province", type=int, metavar="N", help="one province's sites' records")
    review.add_argument("--flag", help="one kind of flag only (probable_duplicate, name_mismatch, ...)")
    review.add_argument("--out", type=Path, metavar="FILE.csv", help="write here instead of standard output")
    review.set_defaults(func=cmd_review)

    corrections = commands.add_parser("corrections", help="citizen correction requests, as CSV (oldest first)")
    corrections_scope = corrections.add_mutually_exclusive_group()
    corrections_scope.add_argument("--site", metavar="CODE", help="the requests routed to one site")
    corrections_scope.add_argument("--province", type=int, metavar="N", help="one province's requests")
    corrections.add_argument("--status", choices=["pending_otp", "submitted", "approved", "deferred", "rejected"],
                             help="default: every confirmed request")
    corrections.add_argument("--out", type=Path, metavar="FILE.csv", help="write here instead of standard output")
    corrections.set_defaults(func=cmd_corrections)

    reconcile = commands.add_parser(
        "reconcile", help="account for every acknowledged dose per site and day; exit 1 if any is unexplained")
    reconcile.add_argument("--from", dest="first", type=_date, default=None, metavar="YYYY-MM-DD")
    reconcile.add_argument("--to", dest="last", type=_date, default=None, metavar="YYYY-MM-DD")
    reconcile.add_argument("--site", metavar="CODE", help="one site only")
    reconcile.add_argument("--json", action="store_true", help="print the whole report as JSON")
    reconcile.set_defaults(func=cmd_reconcile)

    registry = commands.add_parser("registry", help="the national population registry"
                                   ).add_subparsers(dest="registry_command", required=True)
    registry_import = registry.add_parser(
        "import", help="import an extract (CSV) and reconcile persons against it; exit 1 if rows were rejected")
    registry_import.add_argument("file", type=Path, metavar="FILE.csv",
                                 help="header national_id,full_name,birth_date,sex")
    registry_import.set_defaults(func=cmd_registry_import)

    back_entry = commands.add_parser(
        "import", help="back-entry: import a site's doses from a CSV or XLSX file through the validation and"
        " stream of POST /v1/doses; exit 1 if rows were rejected (see FILE.errors.csv/.xlsx)")
    back_entry.add_argument("file", nargs="?", type=Path, metavar="FILE", help="CSV or XLSX, the template's columns")
    back_entry.add_argument("--site", metavar="CODE", help="the site that gave these doses (direct import)")
    back_entry.add_argument("--url", help="import over HTTP instead: POST /v1/doses of ingest at URL"
                            " (e.g. http://127.0.0.1:8080), with --token")
    back_entry.add_argument("--token", default=os.environ.get("VAXLINE_SITE_TOKEN"),
                            help="with --url: the site's bearer token (default $VAXLINE_SITE_TOKEN)")
    back_entry.add_argument("--resume", action="store_true",
                            help="go on after the last row an interrupted import of this file had sent")
    back_entry.add_argument("--no-wait", dest="wait", action="store_false",
                            help="do not wait for the receipts (new and duplicate counts)")
    back_entry.add_argument("--wait-timeout", type=float, default=30.0, metavar="SECONDS",
                            help="stop waiting for receipts once none came for this long (default 30)")
    back_entry.add_argument("--template", type=Path, metavar="OUT.xlsx",
                            help="write the back-entry template (XLSX; CSV for a .csv name) and exit")
    back_entry.add_argument("--batch-size", type=int, default=1000, help=argparse.SUPPRESS)
    back_entry.set_defaults(func=cmd_import)

    from loadtests.runner import add_arguments as loadtest_arguments

    loadtest_arguments(commands)
    return parser


class ConfigError(Exception):
    pass


def _urls_file(data_dir: Path) -> Path:
    return data_dir / "urls.json"


def settings_for(args) -> Settings:
    """Settings from the environment, falling back to a running `vaxline run`'s embedded services."""
    settings = Settings.from_env(data_dir=args.data_dir)
    if settings.database_url and settings.redis_url:
        return settings
    urls_file = _urls_file(args.data_dir)
    if urls_file.exists():
        urls = json.loads(urls_file.read_text())
        return Settings.from_env(data_dir=args.data_dir, database_url=settings.database_url or urls["database_url"],
                                 redis_url=settings.redis_url or urls["redis_url"])
    raise ConfigError("DATABASE_URL and REDIS_URL must be set (postgresql://... and redis://...),"
                      " or `vaxline run` must be running on its embedded services in --data-dir")


# -- migrate, sites ---------------------------------------------------------

async def _with_database(settings: Settings, operation, *args):
    """`operation(conn, *args)` on a connection of its own to the deployment's database."""
    import asyncpg

    conn = await asyncpg.connect(settings.database_url)
    try:
        return await operation(conn, *args)
    finally:
        await conn.close()


async def _migrate(settings: Settings) -> list[str]:
    from storage.migrate import migrate

    return await _with_database(settings, migrate)


def cmd_migrate(args) -> int:
    applied = asyncio.run(_migrate(settings_for(args)))
    print(f"applied {len(applied)} migration(s)" + (f": {', '.join(applied)}" if applied else "; schema up to date"))
    return 0


async def _add_site(settings: Settings, **site) -> tuple:
    from storage.sites import add_site

    return await _with_database(settings, lambda conn: add_site(conn, **site))


def cmd_sites_add(args) -> int:
    from .provinces import province_code

    try:
        province_code(args.province)
    except ValueError as e:
        raise ConfigError(f"sites add --province: {e}") from None
    site, token = asyncio.run(_add_site(settings_for(args), code=args.code, name=args.name,
                                        province=args.province, kind=args.kind))
    print(f"site {site.code} (id {site.site_id}, province {site.province}) registered; its bearer token:")
    print(token)
    return 0


async def _import_sites(conn, lines):
    from storage.sites import import_sites, registered_codes

    from .siteimport import parse_sites

    registry = parse_sites(lines, registered=await registered_codes(conn))
    return registry, await import_sites(conn, registry.sites, parents=registry.has_parents)


def cmd_sites_import(args) -> int:
    import io

    from .siteimport import SiteFileError

    settings = settings_for(args)
    try:
        text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text(encoding="utf-8-sig")
        registry, counts = asyncio.run(_with_database(settings, _import_sites, io.StringIO(text, newline="")))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{args.file}: not UTF-8 text (byte {e.start}: {e.reason})") from None
    except (OSError, SiteFileError) as e:
        raise ConfigError(f"{args.file}: {e}") from None
    for rejection in registry.rejected:
        print("\n".join(rejection.messages()), file=sys.stderr)
    print(f"{registry.rows} rows: {counts.added} added, {counts.updated} updated, {counts.unchanged} unchanged,"
          f" {len(registry.rejected)} rejected")
    return 1 if registry.rejected else 0


def cmd_sites_token(args) -> int:
    from storage.sites import rotate_token

    issued = asyncio.run(_with_database(settings_for(args), rotate_token, args.code))
    if issued is None:
        print(f"vaxline sites token: no site with code {args.code!r}", file=sys.stderr)
        return 1
    site, active, token = issued
    if not active:
        print(f"vaxline sites token: site {site.code} is deactivated: this token is refused until"
              f" `vaxline sites activate {site.code}`", file=sys.stderr)
    print(f"site {site.code} (id {site.site_id}, province {site.province}): new bearer token; the previous one"
          " no longer works (ingest may still accept it for up to 30 s, its cache):")
    print(token)
    return 0


def cmd_sites_active(args) -> int:
    from storage.sites import set_active

    changed = asyncio.run(_with_database(settings_for(args), set_active, args.code, args.active))
    if changed is None:
        print(f"vaxline sites {args.sites_command}: no site with code {args.code!r}", file=sys.stderr)
        return 1
    if not changed:
        print(f"site {args.code} is {'active' if args.active else 'deactivated'} already")
    elif args.active:
        print(f"site {args.code} activated: its token is accepted again (within 30 s: ingest caches answers)")
    else:
        print(f"site {args.code} deactivated: ingest refuses its token within 30 s (it caches answers that long);"
              " its doses and statistics stay")
    return 0


# -- serve, work ------------------------------------------------------------

def _metrics_dir(args, role: str) -> None:
    from monitoring.exposition import ENV, prepare_multiprocess_dir

    if not os.environ.get(ENV):
        prepare_multiprocess_dir(args.data_dir / "metrics" / role)


def _process_exited(pid: int) -> None:
    from monitoring.exposition import process_exited

    process_exited(pid)


def start_ingest(supervisor, settings: Settings, *, host: str, port: int, processes: int) -> None:
    from ingest.server import run_process

    for i in range(processes):
        supervisor.add(f"ingest-{i}", run_process, settings, host, port)


def start_workers(supervisor, settings: Settings, *, name: str, processes: int, certifiers: int,
                  reviewers: int = 1) -> None:
    from workers.process import run_process

    for i in range(processes):
        supervisor.add(f"worker-{i}", run_process, settings, f"{name}-{i}")
    for i in range(certifiers):
        supervisor.add(f"certifier-{i}", run_process, settings, f"{name}-certifier-{i}", "certify")
    for i in range(reviewers):
        supervisor.add(f"reviewer-{i}", run_process, settings, f"{name}-reviewer-{i}", "review")


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _supervise(supervisor, *, every: float = 1.0, tick=None) -> None:
    """Keep children alive until Ctrl-C or SIGTERM, then stop them cleanly."""
    import signal

    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)  # even when started with SIGINT ignored (`cmd &` in a script)
    try:
        while True:
            time.sleep(every)
            supervisor.poll()
            if tick:
                tick()
    except KeyboardInterrupt:
        log.info("stopping: workers finish and acknowledge the groups in hand")
    finally:
        supervisor.stop()


def cmd_serve(args) -> int:
    from .procs import Supervisor

    settings = settings_for(args)
    _metrics_dir(args, "serve")
    supervisor = Supervisor(on_exit=_process_exited)
    start_ingest(supervisor, settings, host=args.host, port=args.port, processes=args.processes)
    _supervise(supervisor)
    return 0


def cmd_work(args) -> int:
    from .procs import Supervisor

    settings = settings_for(args)
    _metrics_dir(args, "work")
    if args.metrics_port:
        from prometheus_client import start_http_server

        from monitoring.exposition import registry

        start_http_server(args.metrics_port, addr=args.metrics_host, registry=registry())
    supervisor = Supervisor(on_exit=_process_exited)
    if args.certifiers:
        try:
            KeyStore(settings.signing_keys_dir).signing_key()
        except NoSigningKey as e:
            raise ConfigError(str(e)) from None
    start_workers(supervisor, settings, name=args.name, processes=args.processes, certifiers=args.certifiers,
                  reviewers=args.reviewers)
    _supervise(supervisor)
    return 0


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


# -- keys, verify ----------------------------------------------------------

def _keys(args) -> KeyStore:
    return KeyStore(Settings.from_env(data_dir=args.data_dir).signing_keys_dir)


def cmd_keys_init(args) -> int:
    keys = _keys(args)
    created = keys.ensure()
    if created:
        print(f"created signing key {created.kid.hex()} in {keys.directory} (DSC valid until {created.not_after:%Y-%m-%d})")
    else:
        print(f"a signing key exists in {keys.directory}; `vaxline keys rotate` adds a new one")
    return 0


def cmd_keys_rotate(args) -> int:
    keys = _keys(args)
    created = keys.create()
    print(f"created signing key {created.kid.hex()}; certifiers sign with it from their next group,"
          f" and the {len(keys.public_keys()) - 1} older key(s) stay in the trust list")
    return 0


def cmd_keys_list(args) -> int:
    import datetime as dt

    keys = _keys(args)
    for public in keys.public_keys(include_expired=True):
        private = (keys.directory / f"{public.kid.hex()}.key").exists()
        signs_until = public.not_after - dt.timedelta(days=366)  # a certificate it signs lasts 12 months
        print(f"{public.kid.hex()}  valid until {public.not_after:%Y-%m-%d}  "
              + (f"signing key here, signs until {signs_until:%Y-%m-%d}" if private else "public only"))
    return 0


def cmd_verify(args) -> int:
    import datetime as dt

    from .dcc.trust import TrustList, load_dsc, uvci_hash
    from .dcc.verify import verify

    try:
        hc1 = sys.stdin.read() if args.hc1 == "-" else args.hc1
        clock = dt.datetime.fromisoformat(re.sub(r"[zZ]$", "+00:00", args.clock)) if args.clock else None
        if clock and clock.tzinfo is None:
            raise ValueError("--clock needs a UTC offset, e.g. 2021-08-14T09:30:00Z")
        # Expired DSCs too: the verifier judges each at the clock, which may be in the past.
        ders = ([load_dsc(dsc) for dsc in args.dsc] if args.dsc
                else [k.der for k in _keys(args).public_keys(include_expired=True)])
        revoked = _revocations_file(args.revocations) if args.revocations else set()
    except (ValueError, OSError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        print(f"vaxline verify: {e}", file=sys.stderr)
        return 2
    if not ders:
        print("vaxline verify: no trust list: pass --dsc, or run `vaxline keys init`", file=sys.stderr)
        return 2
    trust = TrustList.from_der(ders)
    verdict = verify(hc1.strip(), trust, clock=clock, revoked=revoked)
    if not args.dsc and not args.revocations and verdict.uvci and _deployment_revoked(args, verdict.uvci):
        verdict = verify(hc1.strip(), trust, clock=clock, revoked={uvci_hash(verdict.uvci)})
    if args.json:
        print(json.dumps(verdict.to_json(), ensure_ascii=False))
    elif verdict.valid:
        print(f"valid: signed by kid {verdict.kid}")
    else:
        print(f"not valid: {verdict.stage}: {verdict.reason}")
    return 0 if verdict.valid else 1


def _revocations_file(path: str) -> set[str]:
    """The hashes of a file as GET /v1/revocations serves it (or a plain JSON list of hashes)."""
    body = json.loads(Path(path).read_text())
    entries = body.get("hashes") if isinstance(body, dict) else body
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected {{\"hashes\": [...]}} or a list of hashes")
    hashes = {e.get("hash") if isinstance(e, dict) else e for e in entries}
    if not all(isinstance(h, str) for h in hashes):
        raise ValueError(f"{path}: every entry must be a hash or {{\"hash\": ...}}")
    return hashes


def _deployment_revoked(args, uvci: str) -> bool:
    """Whether this deployment revoked the certificate; False when its database is not reachable
    (verification is offline by design: the revocation check is then skipped, as a verifier app does
    between downloads of the list)."""
    import asyncpg

    from storage.certificates import is_revoked

    try:
        settings = settings_for(args)
    except ConfigError:
        return False

    async def check() -> bool:
        conn = await asyncpg.connect(settings.database_url, timeout=5)
        try:
            return await is_revoked(conn, uvci)
        finally:
            await conn.close()

    try:
        return asyncio.run(check())
    except Exception:  # unreachable, refused, misconfigured: judged offline, like any verifier
        return False


# -- registry ---------------------------------------------------------------

def cmd_registry_import(args) -> int:
    """Import a population-registry extract, streamed, and reconcile persons against it.

    Each rejected row is reported as `line N: field: reason` (the first 100 rows; never a value:
    they are personal data); the good rows import anyway. A national ID repeated in the file: the
    later row wins. Exit 0, 1 when rows were rejected, 2 when the file is not an extract.
    """
    import datetime as dt

    import asyncpg
    from tqdm import tqdm

    from storage import registry as store

    from . import registry

    # Only Postgres is needed: DATABASE_URL alone will do.
    database_url = Settings.from_env(data_dir=args.data_dir).database_url or settings_for(args).database_url
    shown_rows, started = 100, time.monotonic()
    try:
        extract = args.file.open("rb")
        rows = registry.read_extract(extract, today=dt.datetime.now(dt.timezone(dt.timedelta(hours=7))).date())
    except (OSError, registry.ExtractError) as e:
        print(f"vaxline registry import: {args.file}: {getattr(e, 'strerror', None) or e}", file=sys.stderr)
        return 2
    bar = tqdm(total=args.file.stat().st_size, unit="B", unit_scale=True, unit_divisor=1024, desc="registry",
               file=sys.stderr, disable=None)
    total = store.ImportCounts()

    def on_chunk(chunk, counts):
        for line, errors in chunk.rejected[:max(0, shown_rows - total.rejected)]:
            for error in errors:
                tqdm.write(f"line {line}: {error.field}: {error.reason}", file=sys.stderr)
        total.add(counts)
        bar.set_postfix_str(f"{total.rows:,} rows, {total.rows / (time.monotonic() - started):,.0f} rows/s",
                            refresh=False)
        bar.update(chunk.position - bar.n)

    async def run():
        conn = await asyncpg.connect(database_url)
        try:
            await store.import_extract(conn, registry.chunks(rows, store.CHUNK_ROWS, position=extract.tell),
                                       on_chunk=on_chunk)
            return await store.status_counts(conn)
        finally:
            await conn.close()

    try:
        with extract, bar:
            statuses = asyncio.run(run())
    except store.ImportRunning as e:
        print(f"vaxline registry import: {e}", file=sys.stderr)
        return 2
    if total.rejected > shown_rows:
        print(f"... and {total.rejected - shown_rows:,} more rejected rows", file=sys.stderr)
    print(f"{total.rows} rows: {total.added} added, {total.updated} updated, {total.unchanged} unchanged,"
          f" {total.rejected} rejected; {sum(statuses.values())} persons reconciled: "
          + ", ".join(f"{status} {count}" for status, count in statuses.items()))
    return 1 if total.rejected else 0


# -- import (back-entry) ----------------------------------------------------

def cmd_import(args) -> int:
    """Import a site's back-entry file (ingest/backentry.py). Exit 0 when every row was accepted, 1 when
    some were rejected (the others are imported; the rejected ones are in FILE.errors.*), 2 on a usage
    error: unknown site, unreadable file, unknown or missing columns."""
    from tqdm import tqdm

    from ingest import backentry

    if args.template:
        backentry.write_template(args.template)
        print(f"template written to {args.template}")
        return 0
    problem = ("FILE is needed (or --template OUT.xlsx)" if args.file is None
               else "--site CODE is needed (or --url URL --token TOKEN)" if not args.url and not args.site
               else "--url needs --token (or VAXLINE_SITE_TOKEN)" if args.url and not args.token
               else "--batch-size must be 1-1000" if not 1 <= args.batch_size <= 1000 else None)
    if problem:
        print(f"vaxline import: {problem}", file=sys.stderr)
        return 2

    def waiting(reason: str, seconds: float) -> None:
        tqdm.write(f"vaxline import: {reason}; retrying in {seconds:g} s", file=sys.stderr)

    sender = (backentry.HttpSender(args.url, args.token, on_wait=waiting) if args.url
              else backentry.StreamSender(settings_for(args), args.site, on_wait=waiting))

    async def run():
        async with sender:
            return await backentry.import_file(args.file, sender, resume=args.resume, wait=args.wait,
                                               wait_timeout=args.wait_timeout, batch_doses=args.batch_size)

    try:
        summary = asyncio.run(run())
    except backentry.UsageError as e:
        print(f"vaxline import: {args.file}: {e}", file=sys.stderr)
        return 2
    print("\n".join(summary.lines()))
    return 1 if summary.rejected or summary.failed else 0


# -- tokens, review, reconcile ----------------------------------------------

def _date(text: str):
    import datetime as dt

    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from None


def cmd_tokens_operator(args) -> int:
    from storage import tokens

    token = asyncio.run(_with_database(settings_for(args), tokens.issue, tokens.OPERATOR, 0))
    print("operator token (national statistics, review list and reconciliation; read-only):")
    print(token)
    return 0


def cmd_provinces_token(args) -> int:
    from storage import tokens

    from .provinces import PROVINCES

    if args.province not in PROVINCES:
        raise ConfigError(f"{args.province} is not an official province code (1 Hà Nội ... 96 Cà Mau)")
    token = asyncio.run(_with_database(settings_for(args), tokens.issue, tokens.PROVINCE, args.province))
    print(f"province {args.province} ({PROVINCES[args.province]}) token (its statistics, review list and"
          " corrections queue; read-only):")
    print(token)
    return 0


async def _review_rows(conn, args) -> list[dict]:
    from storage import review

    site_id = await _site_id(conn, args.site)
    return await _every_page(lambda offset: review.review_list(
        conn, review.ReviewQuery(site_id, args.province, args.flag, _PAGE, offset)))


_PAGE = 10_000


async def _site_id(conn, code: str | None) -> int | None:
    """The site id of a --site code (None without one); a usage error for an unknown code."""
    if code is None:
        return None
    site_id = await conn.fetchval("SELECT site_id FROM sites WHERE code = $1", code)
    if site_id is None:
        raise ConfigError(f"no site {code!r}")
    return site_id


async def _every_page(page_at) -> list[dict]:
    """Every row of a listing read _PAGE rows at a time: `page_at(offset)` answers (rows, total)."""
    rows: list[dict] = []
    while True:
        page, _ = await page_at(len(rows))
        rows.extend(dict(r) for r in page)
        if len(page) < _PAGE:
            return rows


def cmd_review(args) -> int:
    from storage.review import REVIEW_COLUMNS

    rows = asyncio.run(_with_database(settings_for(args), _review_rows, args))
    _write_csv(args.out, REVIEW_COLUMNS, rows)
    if args.out:
        print(f"{len(rows)} flagged records written to {args.out}", file=sys.stderr)
    return 0


CORRECTION_COLUMNS = ("request_id", "status", "kind", "site", "province", "national_id", "full_name", "birth_date",
                      "claimed", "note", "message", "decided_by", "decided_at", "submitted_at")


async def _correction_rows(conn, args) -> list[dict]:
    from storage import citizen

    site_id = await _site_id(conn, args.site)
    return await _every_page(lambda offset: citizen.listing(conn, site_id=site_id, province=args.province,
                                                            status=args.status, limit=_PAGE, offset=offset))


def cmd_corrections(args) -> int:
    rows = asyncio.run(_with_database(settings_for(args), _correction_rows, args))
    _write_csv(args.out, CORRECTION_COLUMNS, rows)
    if args.out:
        print(f"{len(rows)} correction requests written to {args.out}", file=sys.stderr)
    return 0


def _write_csv(path: Path | None, columns, rows: list[dict]) -> None:
    import csv

    out = path.open("w", newline="", encoding="utf-8") if path else sys.stdout
    try:
        writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    finally:
        if path:
            out.close()


async def _reconcile(conn, settings: Settings, args) -> dict:
    import datetime as dt

    from storage.reconcile import reconcile

    from .streams import connect_redis

    site_id = await _site_id(conn, args.site)
    redis = connect_redis(settings)
    try:
        return await reconcile(conn, redis, settings, first=args.first or dt.date(2021, 1, 1),
                               last=args.last or dt.date.today() + dt.timedelta(days=1), site_id=site_id)
    finally:
        await redis.aclose()


def cmd_reconcile(args) -> int:
    settings = settings_for(args)
    report = asyncio.run(_with_database(settings, _reconcile, settings, args))
    if args.json:
        print(json.dumps(report, ensure_ascii=False))
    else:
        totals = report["totals"]
        print(f"{len(report['rows'])} site-days: {totals['accepted']} doses accepted, {totals['received']} received"
              f" ({totals['resubmitted']} resubmitted), {totals['present']} present, {totals['counted']} counted"
              f" ({totals['duplicates']} probable duplicates), {totals['certified']} certified,"
              f" {totals['pending']} pending, {totals['pending_certification']} awaiting certification,"
              f" {totals['dead_lettered']} dead-lettered, {totals['withdrawn']} withdrawn;"
              f" unexplained: {report['unexplained']}")
        for row in report["rows"]:
            if row["unexplained"]:
                print(f"  {row['site']} {row['day']}: {row['explanation']}")
    return 1 if report["unexplained"] else 0


# -- run --------------------------------------------------------------------

def cmd_run(args) -> int:
    from . import embedded
    from .procs import Supervisor

    data_dir: Path = args.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    settings = Settings.from_env(data_dir=data_dir)
    redis_server = None
    if not settings.database_url:
        embedded.silence_pgserver_warnings()
        _pg, url = embedded.start_postgres(data_dir / "postgres")
        settings = Settings.from_env(data_dir=data_dir, database_url=url, redis_url=settings.redis_url)
    if not settings.redis_url:
        redis_server = embedded.EmbeddedRedis(data_dir / "redis").start()
        settings = Settings.from_env(data_dir=data_dir, database_url=settings.database_url, redis_url=redis_server.url)
    supervisor = Supervisor(on_exit=_process_exited)
    try:
        applied = asyncio.run(_migrate(settings))
        log.info("migrations applied: %s", ", ".join(applied) or "none pending")
        site, token = asyncio.run(_add_site(settings, **DEMO_SITE))
        _metrics_dir(args, "run")
        _urls_file(data_dir).write_text(json.dumps({"database_url": settings.database_url,
                                                    "redis_url": settings.redis_url}))
        start_ingest(supervisor, settings, host=args.host, port=args.port, processes=args.ingest_processes)
        if KeyStore(settings.signing_keys_dir).ensure():  # the first start, or the newest key's last year
            log.warning("created a signing key in %s (`vaxline keys list` shows it)", settings.signing_keys_dir)
        start_workers(supervisor, settings, name=f"{socket.gethostname()}-run", processes=args.workers,
                      certifiers=args.certifiers, reviewers=args.reviewers)
        _wait_ready(args, supervisor)
        _print_banner(args, site.code, token)
        _supervise(supervisor, tick=_status_printer())
    finally:
        supervisor.stop()
        _urls_file(data_dir).unlink(missing_ok=True)
        if redis_server:
            redis_server.stop()
    log.info("stopped; nothing acknowledged is lost (unfinished batches resume on the next start)")
    return 0


def _local_url(args) -> str:
    host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    return f"http://{host}:{args.port}"


def _wait_ready(args, supervisor, timeout: float = 60) -> None:
    """Wait for ingest, so the banner's curl works when it is shown."""
    from .procs import wait_ready

    try:
        wait_ready(f"{_local_url(args)}/readyz", timeout=timeout, while_waiting=supervisor.poll)
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

look up the certificate issued a moment later (its "hc1" is the QR text; GET {url}/v1/certificates/<uvci>?format=png is the QR):
curl -s -X POST {url}/v1/certificates/lookup -H 'Content-Type: application/json' -d '{{"national_id": "001099012345", "birth_date": "1990-04-02"}}'

verify it offline:
vaxline --data-dir {args.data_dir} verify 'HC1:...'

Ctrl-C stops everything cleanly.
""", flush=True)


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


if __name__ == "__main__":
    sys.exit(main())
