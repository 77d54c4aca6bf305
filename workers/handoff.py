"""Handoff: the persons of a persisted group, appended to the certify stream.

Persisting and signing are separate consumer groups, so signing never slows
persisting (DESIGN: a certificate costs as much CPU as its COPY). One entry
per persisted group: each person once, with the earliest 202 that touched
them, for the 202-to-certificate freshness. Handing off twice is harmless:
a certifier reissues only when the history says something new.
"""

from __future__ import annotations

import msgspec
import redis.asyncio as aioredis

from vaxline.config import Settings
from vaxline.entries import DOSE_FIELDS, ENTRY_FIELD

from .rows import DecodedEntry

_NATIONAL_ID = DOSE_FIELDS.index("national_id")


class Handoff(msgspec.Struct, array_like=True):
    national_ids: list[str]
    received_at: list[float]  # epoch seconds of the earliest 202 per person


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Handoff)


def persons(group: list[DecodedEntry]) -> dict[str, float]:
    earliest: dict[str, float] = {}
    for decoded in group:
        received_at = decoded.batch.received_at
        for dose in decoded.batch.doses:
            nid = dose[_NATIONAL_ID]
            if earliest.get(nid, received_at) >= received_at:
                earliest[nid] = received_at
    return earliest


def encode(earliest: dict[str, float]) -> bytes:
    return _encoder.encode(Handoff(list(earliest), list(earliest.values())))


def decode(payload: bytes) -> dict[str, float]:
    handoff = _decoder.decode(payload)
    return dict(zip(handoff.national_ids, handoff.received_at, strict=True))


async def send(redis: aioredis.Redis, settings: Settings, group: list[DecodedEntry],
               corrected: dict[str, float] | None = None) -> None:
    """Hand off the persons of the group's doses and those whose records a correction changed (a
    correction may move a dose away from someone, whose certificate then changes too)."""
    earliest = persons(group)
    for nid, received_at in (corrected or {}).items():
        earliest[nid] = min(received_at, earliest.get(nid, received_at))
    if earliest:
        await redis.xadd(settings.certify_stream, {ENTRY_FIELD: encode(earliest)})
