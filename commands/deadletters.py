"""`vaxline deadletters list | replay`: dead letters and failed certify handoffs, re-driven once fixed.

    vaxline deadletters list [--all] [--json]
    vaxline deadletters replay BATCH_ID... | --all     dead letters, appended to their shard again
    vaxline deadletters replay --certify               failed handoffs, handed to the certifiers again

A dead letter's payload goes back through the enqueue path (vaxline.enqueue.Enqueuer.replay: its shard,
backpressure, not counted as accepted twice); its doses are keyed by site and record id, so whatever of
it persisted before counts as duplicates, and a second replay appends nothing. A correction is not
replayed (it would be applied over any later correction of its record: the site sends it again), nor an
undecodable payload (the payload is the cause). Exit 0: every one asked for is replayed (now or before);
1: something could not be replayed; 2: a usage error (an unknown batch id, nothing named).
"""

from __future__ import annotations

import asyncio
import json

from deploy.stack import on_database
from storage import deadletters as store
from vaxline.config import Settings
from vaxline.enqueue import Enqueuer, Overloaded
from vaxline.entries import ENTRY_FIELD, parse_batch_id
from vaxline.streams import connect_redis

from .common import ConfigError, settings_for

ACTOR = "operator:vaxline deadletters"


def add_parsers(commands) -> None:
    group = commands.add_parser("deadletters", help="list dead letters and failed certify handoffs; replay them")
    actions = group.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="dead letters and failed handoffs not replayed yet (--all: every one)")
    listing.add_argument("--all", action="store_true", help="replayed ones too")
    listing.add_argument("--json", action="store_true", help="print them as JSON")
    listing.set_defaults(func=cmd_list)
    replay = actions.add_parser("replay", help="append dead letters to their shard again, once their cause is"
                                " fixed; exit 1 if one could not be")
    replay.add_argument("batch_ids", nargs="*", metavar="BATCH_ID", help="the dead letters to replay")
    replay.add_argument("--all", action="store_true", help="every dead letter not replayed yet")
    replay.add_argument("--certify", action="store_true",
                        help="hand every failed certify handoff not replayed yet to the certifiers again")
    replay.set_defaults(func=cmd_replay)


# -- list ----------------------------------------------------------------------------------------------------

def _letter_json(letter: store.DeadLetter) -> dict:
    return {"batch_id": letter.batch_id, "site": letter.site, "doses": letter.doses, "deliveries": letter.deliveries,
            "dead_at": letter.dead_at.isoformat(), "error": _cause(letter.error), "state": _state(letter),
            "replayed_as": letter.replayed_as,
            "replayed_at": letter.replayed_at.isoformat() if letter.replayed_at else None}


def _cause(error: str) -> str:
    """The error's first line: Postgres's DETAIL after it quotes the failing row, a person's data (the whole
    text stays in the table, for whoever may read it there)."""
    return error.split("\n", 1)[0][:300]


def _state(letter: store.DeadLetter) -> str:
    if letter.replayed_at is not None:
        return "replayed"
    return "undecodable" if not letter.decodable else "correction" if letter.correction else "waiting"


def _handoff_json(handoff: store.FailedHandoff) -> dict:
    return {"handoff_id": handoff.handoff_id, "persons": handoff.persons, "error": _cause(handoff.error),
            "failed_at": handoff.failed_at.isoformat(),
            "replayed_at": handoff.replayed_at.isoformat() if handoff.replayed_at else None}


async def _listing(conn, every: bool) -> tuple[list[store.DeadLetter], list[store.FailedHandoff]]:
    return await store.dead_letters(conn, replayed=every), await store.failed_handoffs(conn, replayed=every)


def cmd_list(args) -> int:
    letters, handoffs = asyncio.run(on_database(settings_for(args.data_dir), _listing, args.all))
    if args.json:
        print(json.dumps({"dead_letters": [_letter_json(x) for x in letters],
                          "failed_handoffs": [_handoff_json(h) for h in handoffs]}, ensure_ascii=False))
        return 0
    print(f"{len(letters)} dead letters, {len(handoffs)} failed certify handoffs")
    for x in letters:
        state = f"replayed as {x.replayed_as}" if x.replayed_as else _state(x)
        print(f"  {x.batch_id}  site {x.site or '-'}  {x.doses} doses  {x.deliveries} deliveries"
              f"  {x.dead_at:%Y-%m-%d %H:%M:%S}  {state}  {_cause(x.error)}")
    for h in handoffs:
        state = "replayed" if h.replayed_at else "waiting"
        print(f"  handoff {h.handoff_id}  {h.persons} persons  {h.failed_at:%Y-%m-%d %H:%M:%S}  {state}"
              f"  {_cause(h.error)}")
    return 0


# -- replay --------------------------------------------------------------------------------------------------

def cmd_replay(args) -> int:
    if args.batch_ids and args.all:
        raise ConfigError("replay BATCH_ID ... or --all, not both")
    if not (args.batch_ids or args.all or args.certify):
        raise ConfigError("name the dead letters to replay (BATCH_ID ...), or --all; --certify for failed handoffs")
    for text in args.batch_ids:
        if parse_batch_id(text) is None:
            raise ConfigError(f"{text!r} is not a batch id (shard-milliseconds-sequence)")
    settings = settings_for(args.data_dir)
    return asyncio.run(_replay(settings, args))


async def _replay(settings: Settings, args) -> int:
    redis = connect_redis(settings)
    try:
        return await on_database(settings, _replay_all, redis, settings, args)
    finally:
        await redis.aclose()


async def _replay_all(conn, redis, settings: Settings, args) -> int:
    failed = 0
    if args.batch_ids or args.all:
        letters = await store.dead_letters(conn, batch_ids=args.batch_ids or None, replayed=bool(args.batch_ids))
        missing = sorted(set(args.batch_ids) - {x.batch_id for x in letters})
        if missing:
            raise ConfigError(f"no dead letter {', '.join(missing)}")
        enqueuer = Enqueuer(redis, settings)
        await enqueuer.start()  # its backlog readings: a replay is refused past the stream's bounds, as a batch is
        try:
            for letter in letters:
                failed += not await _replay_letter(conn, enqueuer, letter)
        finally:
            await enqueuer.stop()
    if args.certify:
        for handoff in await store.failed_handoffs(conn, replayed=False):
            await redis.xadd(settings.certify_stream, {ENTRY_FIELD: handoff.payload})
            await store.mark_handoff_replayed(conn, handoff, actor=ACTOR)
            print(f"handed {handoff.persons} persons of failed handoff {handoff.handoff_id} to the certifiers again")
    return 1 if failed else 0


async def _replay_letter(conn, enqueuer: Enqueuer, letter: store.DeadLetter) -> bool:
    """Replay one dead letter; False when it cannot be (said why)."""
    if letter.replayed_at is not None:
        print(f"{letter.batch_id}: replayed already, as {letter.replayed_as}")
        return True
    if not letter.decodable:
        print(f"{letter.batch_id}: not replayed: its payload cannot be decoded (the payload itself is the cause)")
        return False
    if letter.correction:
        print(f"{letter.batch_id}: not replayed: a correction would be applied over any later correction of its"
              " record; the site sends it again")
        return False
    try:
        replayed_as = await enqueuer.replay(shard=letter.shard, payload=letter.payload, dead_batch_id=letter.batch_id)
    except Overloaded as e:
        print(f"{letter.batch_id}: not replayed now: {e}; try again in {e.retry_after} s")
        return False
    await store.mark_replayed(conn, letter, replayed_as, actor=ACTOR)
    print(f"{letter.batch_id}: replayed as {replayed_as} ({letter.doses} doses)")
    return True
