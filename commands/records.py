"""`vaxline review`, `vaxline corrections`, `vaxline reconcile`: what sites and operators read back."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path


from .common import PAGE, date_arg, every_page, on_database, settings_for, site_id_of, write_csv


def add_parsers(commands) -> None:
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
    reconcile.add_argument("--from", dest="first", type=date_arg, default=None, metavar="YYYY-MM-DD")
    reconcile.add_argument("--to", dest="last", type=date_arg, default=None, metavar="YYYY-MM-DD")
    reconcile.add_argument("--site", metavar="CODE", help="one site only")
    reconcile.add_argument("--json", action="store_true", help="print the whole report as JSON")
    reconcile.set_defaults(func=cmd_reconcile)


async def _review_rows(conn, args) -> list[dict]:
    from storage import review

    site_id = await site_id_of(conn, args.site)
    return await every_page(lambda offset: review.review_list(
        conn, review.ReviewQuery(site_id, args.province, args.flag, PAGE, offset)))


def cmd_review(args) -> int:
    from storage.review import REVIEW_COLUMNS

    rows = asyncio.run(on_database(settings_for(args.data_dir), _review_rows, args))
    write_csv(args.out, REVIEW_COLUMNS, rows)
    if args.out:
        print(f"{len(rows)} flagged records written to {args.out}", file=sys.stderr)
    return 0


CORRECTION_COLUMNS = ("request_id", "status", "kind", "site", "province", "national_id", "full_name", "birth_date",
                      "claimed", "note", "message", "decided_by", "decided_at", "submitted_at")


async def _correction_rows(conn, args) -> list[dict]:
    from storage import citizen

    site_id = await site_id_of(conn, args.site)
    return await every_page(lambda offset: citizen.listing(conn, site_id=site_id, province=args.province,
                                                            status=args.status, limit=PAGE, offset=offset))


def cmd_corrections(args) -> int:
    rows = asyncio.run(on_database(settings_for(args.data_dir), _correction_rows, args))
    write_csv(args.out, CORRECTION_COLUMNS, rows)
    if args.out:
        print(f"{len(rows)} correction requests written to {args.out}", file=sys.stderr)
    return 0


def cmd_reconcile(args) -> int:
    import datetime as dt

    from deploy.stack import reconcile

    settings = settings_for(args.data_dir)
    site_id = asyncio.run(on_database(settings, site_id_of, args.site))
    report = asyncio.run(reconcile(settings, first=args.first or dt.date(2021, 1, 1),
                                   last=args.last or dt.date.today() + dt.timedelta(days=1), site_id=site_id))
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
