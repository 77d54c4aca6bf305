"""Rows: the pure transform from decoded stream entries to COPY rows.

A row is (site_id, *the dose's fields in DOSE_FIELDS order, batch_id,
received_at): storage.doses.STAGING_COLUMNS names them in that order.

No I/O here. A gathered group may hold the same record twice (a batch
posted again before the first was persisted): only the first occurrence
becomes a row, and each batch's receipt counts the rest as duplicates, which
the database's key table then completes for records persisted earlier. The
same entry delivered twice into one group counts once.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

import msgspec

from storage.doses import BatchCount
from vaxline.entries import DOSE_FIELDS, BatchEntry, batch_id, decode_entry
from vaxline.sequence import VIETNAM

from .consume import StreamEntry


@dataclasses.dataclass(frozen=True, slots=True)
class DecodedEntry:
    entry: StreamEntry
    batch_id: str
    batch: BatchEntry

    @property
    def dose_count(self) -> int:
        return len(self.batch.doses)


class PoisonEntry(Exception):
    """An entry that can never be persisted as it is (arroyo's InvalidMessage)."""

    def __init__(self, entry: StreamEntry, reason: str):
        super().__init__(reason)
        self.entry = entry


_ADMINISTERED_AT = DOSE_FIELDS.index("administered_at")


def decode(entry: StreamEntry) -> DecodedEntry:
    if entry.payload is None:
        raise PoisonEntry(entry, "the entry's data is gone from the stream")
    try:
        batch = decode_entry(entry.payload)
    except msgspec.DecodeError as e:
        raise PoisonEntry(entry, f"undecodable entry: {e}") from e
    return DecodedEntry(entry, batch_id(entry.shard, entry.entry_id), batch)


def to_rows(entries: list[DecodedEntry]) -> tuple[list[tuple], list[BatchCount]]:
    """COPY rows (first occurrence of each (site, record_id)) and per-batch counts (with doses per day).

    Entries that carry corrections, not doses, are left to storage.corrections."""
    rows: list[tuple] = []
    counts: list[BatchCount] = []
    seen: set[tuple[int, str]] = set()
    batches: set[str] = set()
    for decoded in entries:
        if decoded.batch_id in batches or decoded.batch.corrections:  # twice into one group; or a correction
            continue
        batches.add(decoded.batch_id)
        site_id = decoded.batch.site_id
        received_at = dt.datetime.fromtimestamp(decoded.batch.received_at, dt.timezone.utc)
        days: dict[dt.date, int] = {}
        for dose in decoded.batch.doses:
            day = dose[_ADMINISTERED_AT].astimezone(VIETNAM).date()
            days[day] = days.get(day, 0) + 1
            key = (site_id, dose[0])  # dose[0] is the record_id
            if key in seen:
                continue
            seen.add(key)
            rows.append((site_id, *dose, decoded.batch_id, received_at))
        counts.append(BatchCount(decoded.batch_id, site_id, decoded.dose_count, received_at, tuple(days.items())))
    return rows, counts
