"""Handoff: the persons of a persisted group, appended to the certify stream.

Persisting and signing are separate consumer groups, so signing never slows
persisting (DESIGN: a certificate costs as much CPU as its COPY). One entry
per persisted group: each person once, with the earliest 202 that touched
them, for the 202-to-certificate freshness. Handing off twice is harmless:
a certifier reissues only when the history says something new.

A person the persist transaction created, with one dose, has that dose for their whole history: the
handoff carries it (`FirstDose`, in a field of its own that older readers ignore), and the certifier
signs it without reading the history back. Storing it checks that nothing touched the person since
(review_seq still 0: storage.issuing); if anything did, the person is read and built as any other.
"""

from __future__ import annotations

import datetime as dt

import msgspec
import redis.asyncio as aioredis

from vaxline.config import Settings
from storage.doses import STAGING_COLUMNS
from vaxline.entries import DOSE_FIELDS, ENTRY_FIELD, FIRST_DOSES_FIELD

from .rows import DecodedEntry

_NATIONAL_ID = DOSE_FIELDS.index("national_id")


class Handoff(msgspec.Struct, array_like=True):
    national_ids: list[str]
    received_at: list[float]  # epoch seconds of the earliest 202 per person


class FirstDose(msgspec.Struct, array_like=True):
    """A person created by a persist transaction with this one dose: their whole history."""

    national_id: str
    full_name: str
    birth_date: dt.date
    site_id: int
    record_id: str
    vaccine: str
    lot: str
    dose_number: int
    administered_at: dt.datetime


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Handoff)
_first_decoder = msgspec.msgpack.Decoder(list[FirstDose])
_ROW = {name: STAGING_COLUMNS.index(name) for name in FirstDose.__struct_fields__}


def persons(group: list[DecodedEntry]) -> dict[str, float]:
    earliest: dict[str, float] = {}
    for decoded in group:
        received_at = decoded.batch.received_at
        for dose in decoded.batch.doses:
            nid = dose[_NATIONAL_ID]
            if earliest.get(nid, received_at) >= received_at:
                earliest[nid] = received_at
    return earliest


def first_doses(rows: list[tuple], created: frozenset[str]) -> list[FirstDose]:
    """The created persons with a single row among the persisted `rows` (COPY rows, storage.doses)."""
    if not created:
        return []
    mine: dict[str, tuple | None] = {}
    nid_at = _ROW["national_id"]
    for row in rows:
        nid = row[nid_at]
        if nid in created:
            mine[nid] = row if nid not in mine else None  # two records of a new person: read as any other
    return [FirstDose(*(row[i] for i in _ROW.values())) for row in mine.values() if row is not None]


def decode_first_doses(payload: bytes | None) -> list[FirstDose]:
    return _first_decoder.decode(payload) if payload else []


def encode(earliest: dict[str, float]) -> bytes:
    return _encoder.encode(Handoff(list(earliest), list(earliest.values())))


def decode(payload: bytes) -> dict[str, float]:
    handoff = _decoder.decode(payload)
    return dict(zip(handoff.national_ids, handoff.received_at, strict=True))


async def send(redis: aioredis.Redis, settings: Settings, group: list[DecodedEntry],
               corrected: dict[str, float] | None = None, first: list[FirstDose] | None = None) -> None:
    """Hand off the persons of the group's doses and those whose records a correction changed (a
    correction may move a dose away from someone, whose certificate then changes too), with the whole
    history of those the group created with one dose (`first`)."""
    earliest = persons(group)
    for nid, received_at in (corrected or {}).items():
        earliest[nid] = min(received_at, earliest.get(nid, received_at))
    if earliest:
        fields = {ENTRY_FIELD: encode(earliest)}
        if first:
            fields[FIRST_DOSES_FIELD] = _encoder.encode(first)
        await redis.xadd(settings.certify_stream, fields)
