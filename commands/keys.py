"""`vaxline keys init|rotate|list` and `vaxline verify`: signing keys, and checking a certificate offline."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from vaxline.config import Settings
from vaxline.dcc.keys import KeyStore

from .common import ConfigError, settings_for


def add_parsers(commands) -> None:
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
    verify.add_argument("--clock", metavar="RFC3339",
                        help="verify as of this time instead of now; without an offset it is UTC, as the EU test"
                             " data's VALIDATIONCLOCK (2021-10-01T00:15:17)")
    verify.add_argument("--revocations", metavar="FILE",
                        help="revoked UVCI hashes as GET /v1/revocations serves them; without --dsc the"
                             " deployment's own list is read from its database when it is reachable")
    verify.add_argument("--json", action="store_true", help="print the verdict as JSON")
    verify.set_defaults(func=cmd_verify)


def keys_of(args) -> KeyStore:
    return KeyStore(Settings.from_env(data_dir=args.data_dir).signing_keys_dir)


def cmd_keys_init(args) -> int:
    keys = keys_of(args)
    created = keys.ensure()
    if created:
        print(f"created signing key {created.kid.hex()} in {keys.directory} (DSC valid until {created.not_after:%Y-%m-%d})")
    else:
        print(f"a signing key exists in {keys.directory}; `vaxline keys rotate` adds a new one")
    return 0


def cmd_keys_rotate(args) -> int:
    keys = keys_of(args)
    created = keys.create()
    print(f"created signing key {created.kid.hex()}; certifiers sign with it from their next group,"
          f" and the {len(keys.public_keys()) - 1} older key(s) stay in the trust list")
    return 0


def cmd_keys_list(args) -> int:
    import datetime as dt

    keys = keys_of(args)
    for public in keys.public_keys(include_expired=True):
        private = (keys.directory / f"{public.kid.hex()}.key").exists()
        signs_until = public.not_after - dt.timedelta(days=366)  # a certificate it signs lasts 12 months
        print(f"{public.kid.hex()}  valid until {public.not_after:%Y-%m-%d}  "
              + (f"signing key here, signs until {signs_until:%Y-%m-%d}" if private else "public only"))
    return 0


def cmd_verify(args) -> int:
    from vaxline.dcc.trust import TrustList, load_dsc, uvci_hash
    from vaxline.dcc.verify import parse_clock, verify

    try:
        hc1 = sys.stdin.read() if args.hc1 == "-" else args.hc1
        clock = parse_clock(args.clock) if args.clock else None
        # Expired DSCs too: the verifier judges each at the clock, which may be in the past.
        ders = ([load_dsc(dsc) for dsc in args.dsc] if args.dsc
                else [k.der for k in keys_of(args).public_keys(include_expired=True)])
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
        settings = settings_for(args.data_dir)
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
