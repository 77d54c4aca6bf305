"""`vaxline sites ...`, `vaxline tokens operator`, `vaxline provinces token N`: who may post and read."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from vaxline.valuesets import SITE_KINDS

from .common import ConfigError, on_database, settings_for


def add_parsers(commands) -> None:
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


async def _add_site(settings, **site) -> tuple:
    from storage.sites import add_site

    return await on_database(settings, lambda conn: add_site(conn, **site))


def cmd_sites_add(args) -> int:
    from vaxline.provinces import province_code

    try:
        province_code(args.province)
    except ValueError as e:
        raise ConfigError(f"sites add --province: {e}") from None
    site, token = asyncio.run(_add_site(settings_for(args.data_dir), code=args.code, name=args.name,
                                        province=args.province, kind=args.kind))
    print(f"site {site.code} (id {site.site_id}, province {site.province}) registered; its bearer token:")
    print(token)
    return 0


async def _import_sites(conn, lines):
    from storage.sites import import_sites, registered_codes

    from vaxline.siteimport import parse_sites

    registry = parse_sites(lines, registered=await registered_codes(conn))
    return registry, await import_sites(conn, registry.sites, parents=registry.has_parents)


def cmd_sites_import(args) -> int:
    import io

    from vaxline.siteimport import SiteFileError

    settings = settings_for(args.data_dir)
    try:
        text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text(encoding="utf-8-sig")
        registry, counts = asyncio.run(on_database(settings, _import_sites, io.StringIO(text, newline="")))
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

    issued = asyncio.run(on_database(settings_for(args.data_dir), rotate_token, args.code))
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

    changed = asyncio.run(on_database(settings_for(args.data_dir), set_active, args.code, args.active))
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


def cmd_tokens_operator(args) -> int:
    from storage import tokens

    token = asyncio.run(on_database(settings_for(args.data_dir), tokens.issue, tokens.OPERATOR, 0))
    print("operator token (national statistics, review list and reconciliation; read-only):")
    print(token)
    return 0


def cmd_provinces_token(args) -> int:
    from storage import tokens

    from vaxline.provinces import PROVINCES

    if args.province not in PROVINCES:
        raise ConfigError(f"{args.province} is not an official province code (1 Hà Nội ... 96 Cà Mau)")
    token = asyncio.run(on_database(settings_for(args.data_dir), tokens.issue, tokens.PROVINCE, args.province))
    print(f"province {args.province} ({PROVINCES[args.province]}) token (its statistics, review list and"
          " corrections queue; read-only):")
    print(token)
    return 0
