"""The stream entry: one accepted batch, as ingest appends it and workers read it.

One entry per batch, not per dose (DESIGN: batches on the stream are six
times cheaper). The entry is msgpack, positional (`array_like`), so field
names are not repeated for every dose. The batch id is derived from where
the entry sits (shard and stream ID): it exists only once XADD has returned,
so a 202 can never name a batch that is not in the stream, and a redelivered
entry keeps its id, which is what makes receipts idempotent.
"""

from __future__ import annotations

import datetime as dt
import re
import typing
from collections import defaultdict
from collections.abc import Mapping

import msgspec

from .doses import Dose
from .sequence import VIETNAM

ENTRY_FIELD = b"b"

DOSE_FIELDS: tuple[str, ...] = tuple(f.name for f in msgspec.structs.fields(Dose))


def _bare(annotation):
    """The type without its constraints: entries were validated once, at ingest."""
    return typing.get_args(annotation)[0] if typing.get_origin(annotation) is typing.Annotated else annotation


# A dose inside an entry is a tuple in the order of DOSE_FIELDS, decoded
# straight into the shape a COPY row needs, without re-checking patterns.
PackedDose = tuple[tuple(_bare(f.type) for f in msgspec.structs.fields(Dose))]  # type: ignore[misc]


REPLACE = "replace"
WITHDRAW = "withdraw"


class Correction(msgspec.Struct, array_like=True):
    """A site's change to one of its persisted records: the record's new fields, or its withdrawal.

    It travels the same stream as the batches, so it is durable before its 202 and applied by the
    same workers; its version is its place in the site's shard (see storage.corrections)."""

    op: str  # REPLACE or WITHDRAW
    record_id: str
    dose: PackedDose | None  # the new fields (REPLACE); None for WITHDRAW
    changed_by: str  # who asked: "site:<code>"


class BatchEntry(msgspec.Struct, array_like=True):
    site_id: int
    received_at: float  # epoch seconds of the 202, for freshness
    doses: list[PackedDose]
    # An entry is either a batch of new doses or one correction; older entries end before this field.
    corrections: list[Correction] = []


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(BatchEntry)


def encode_entry(*, site_id: int, received_at: float, doses: list[Dose]) -> bytes:
    packed = [msgspec.structs.astuple(dose) for dose in doses]
    return _encoder.encode((site_id, received_at, packed))


def encode_correction(*, site_id: int, received_at: float, op: str, record_id: str, dose: Dose | None,
                      changed_by: str) -> bytes:
    packed = msgspec.structs.astuple(dose) if dose is not None else None
    return _encoder.encode((site_id, received_at, [], [(op, record_id, packed, changed_by)]))


_ADMINISTERED_AT = DOSE_FIELDS.index("administered_at")


def decode_entry(payload: bytes) -> BatchEntry:
    """Raises msgspec.DecodeError for an entry that can never be persisted."""
    return _decoder.decode(payload)


def decoded(payload: bytes | None) -> BatchEntry | None:
    """The batch in a payload; None when there is none to read (the workers dead-letter such an entry,
    with the decoder's error)."""
    try:
        return decode_entry(payload) if payload is not None else None
    except msgspec.DecodeError:
        return None


def entry_of(fields: Mapping[bytes, bytes]) -> BatchEntry | None:
    """The batch in one stream entry's fields (as XRANGE and XREADGROUP return them), or None."""
    return decoded(fields.get(ENTRY_FIELD))


def doses_by_day(doses: list) -> dict[dt.date, int]:
    """How many of an entry's (packed) doses were administered on each day, in Vietnam."""
    days: dict[dt.date, int] = defaultdict(int)
    for dose in doses:
        days[dose[_ADMINISTERED_AT].astimezone(VIETNAM).date()] += 1
    return days


def version_of(entry_id: str) -> str:
    """A stream entry id as text that sorts like the id: the order of a site's corrections."""
    ms, _, seq = entry_id.partition("-")
    return f"{int(ms):020d}-{int(seq or 0):020d}"


def batch_id(shard: int, entry_id: str) -> str:
    return f"{shard}-{entry_id}"


_batch_id = re.compile(r"([0-9]{1,4})-([0-9]{1,19})-([0-9]{1,19})")


def parse_batch_id(value: str) -> tuple[int, str] | None:
    """(shard, stream entry id), or None when the text is not a batch id Redis could hold."""
    match = _batch_id.fullmatch(value)
    if not match or int(match[2]) >= 2**64 or int(match[3]) >= 2**64:
        return None
    return int(match[1]), f"{match[2]}-{match[3]}"
