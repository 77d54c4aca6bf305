"""The `vaxline` command line (`python -m commands` is the same).

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
    vaxline deadletters list | replay BATCH_ID... | --all | --certify   dead letters and failed handoffs, re-driven
    vaxline keys init|rotate|list         signing keys and their signer certificates (DSC)
    vaxline verify [--dsc ...] [--clock] [--json] HC1_OR_DASH
    vaxline loadtest sessions|day|overload [...]   Locust capacity proof: thresholds, reconciliation, report

The commands that read or write the deployment use DATABASE_URL and REDIS_URL; when
those are unset and `vaxline run` is running on its embedded services in the
same data folder, they use those.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from monitoring.logs import configure
from vaxline.dcc.keys import KeyPermissions

from . import deadletters, imports, keys, loadtest, records, services, sites
from .common import ConfigError

# Commands that print their own output: only warnings and errors are logged beside it.
_QUIET = ("sites", "status", "keys", "verify", "tokens", "provinces", "review", "reconcile", "registry",
          "corrections", "import", "loadtest", "deadletters")


def main(argv: list[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    configure(logging.WARNING if args.command in _QUIET else None)
    try:
        return args.func(args) or 0
    except (ConfigError, KeyPermissions) as e:  # a key folder open to others: a usage error, with its chmod
        print(f"vaxline: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _parse(argv: list[str]) -> argparse.Namespace:
    """The command's arguments; `vaxline loadtest` hands everything after its name on as it is (its own
    options included, `--help` first among them), so it is split off before parsing."""
    if "loadtest" in argv:
        at = argv.index("loadtest")
        head = parser().parse_args(argv[: at + 1])
        if head.command == "loadtest":  # not a value of another command's option
            head.arguments = argv[at + 1:]
            return head
    return parser().parse_args(argv)


class _Parser(argparse.ArgumentParser):
    """Every command and subcommand takes the global options too, after its name as well as before it
    (`vaxline run --data-dir X` and `vaxline --data-dir X run` are the same)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.add_help:  # not `vaxline loadtest`, which hands its arguments on as they are
            self.add_argument("--data-dir", type=Path, default=argparse.SUPPRESS,
                              help="local data folder (embedded services, metrics); default .vaxline,"
                                   " or $VAXLINE_DATA_DIR")


def parser() -> argparse.ArgumentParser:
    top = _Parser(prog="vaxline", description=__doc__.split("\n\n")[0])
    top.set_defaults(data_dir=Path(os.environ.get("VAXLINE_DATA_DIR", ".vaxline")))
    commands = top.add_subparsers(dest="command", required=True)
    for group in (services, sites, keys, records, imports, deadletters, loadtest):
        group.add_parsers(commands)
    return top


if __name__ == "__main__":
    sys.exit(main())
