"""Certify: the certifier processes, a consumer group of their own on the certify stream.

    handoffs = reader.read(...)              # persons of persisted groups (workers.handoff)
    certifier.certify(persons)               # read histories, sign what changed, store, revoke
    reader.ack(handoffs)                     # after the COMMIT

Each person is signed at most once per group however many of their doses
it holds, and not at all when their certificate's DCC already states what
their history says (a redelivered batch; a second record of a dose already
counted only updates the certificate's view): fingerprints decide.
Signing happens outside any transaction; the write is a compare-and-swap
per person (storage.certificates.issue), and a person who lost a race with
another certifier is simply rebuilt from a fresh read. Reading, building and
storing live in storage.issuing, shared with the citizen's lookup, which
issues a certificate that is behind its history at once: the certifier that
reaches that person later finds nothing to do. A chunk that fails on an error
of the data is kept in failed_handoffs, to be handed on again by `vaxline
deadletters replay --certify` once the cause is fixed.
"""

from __future__ import annotations

import asyncio
import logging
import time

import asyncpg
import msgspec

from monitoring import metrics
from storage import ACQUIRE_TIMEOUT, deadletters, issuing
from storage.errors import POISON
from storage.issuing import Outcome, Signing
from vaxline.config import Settings
from vaxline.dcc.keys import KeyStore
from vaxline.filemodes import LooseMode
from vaxline.streams import ensure_groups

from . import handoff
from .consume import ShardReader, StreamEntry
from .loop import error_kind, retrying, run_consumer, sleep_unless
from .trim import trim_stream

log = logging.getLogger(__name__)


class Certifier:
    """The certify stream's side of storage.issuing: the persons of a gathered round, a chunk at a time."""

    def __init__(self, pool: asyncpg.Pool, keys: KeyStore, *, chunk: int = 1000):
        self._pool = pool
        self._signing = Signing(keys)
        self._chunk = chunk  # persons signed, then stored, at a time: certificates appear as they are made

    async def certify(self, persons: dict[str, float]) -> Outcome:
        """Bring the certificates of these persons (national id -> earliest 202) up to date. A chunk that
        fails on an error of the data is kept in failed_handoffs (`vaxline deadletters replay --certify`
        hands it on again once the cause is fixed) and the other chunks go on."""
        outcome = Outcome()
        ids = list(persons)
        for start in range(0, len(ids), self._chunk):
            chunk = {nid: persons[nid] for nid in ids[start:start + self._chunk]}
            try:
                await issuing.certify(self._pool, self._signing, chunk, outcome, metrics=metrics)
            except POISON as e:
                await self._failed(chunk, e)
        metrics.certificates_unchanged.inc(outcome.unchanged)
        return outcome

    async def _failed(self, chunk: dict[str, float], error: Exception) -> None:
        """A bug, not the doses' fault (they passed validation and are persisted): the persons keep their
        previous certificate, and their handoff is kept to be re-driven. A system failure while keeping it
        is retried with the whole round (certifying again what was done is a no-op by fingerprints)."""
        async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
            handoff_id = await deadletters.record_failed_handoff(
                conn, payload=handoff.encode(chunk), persons=len(chunk), error=f"{type(error).__name__}: {error}")
        metrics.failed_handoffs.inc(len(chunk))
        log.error("certifying %d persons failed (%s); their handoff is kept as failed handoff %d",
                  len(chunk), error_kind(error), handoff_id)


async def run_certifier(settings: Settings, *, consumer: str, stop: asyncio.Event) -> None:
    """Certify handoffs until `stop` is set, surviving Redis and Postgres outages."""
    keys = KeyStore(settings.signing_keys_dir)
    await run_consumer(
        settings, stop, name=f"certifier {consumer}", running=metrics.certifiers_running,
        drain=lambda redis, pool: _drain(redis, Certifier(pool, keys, chunk=settings.certify_max_persons),
                                         settings, consumer, stop),
        housekeeping=lambda redis, pool: _housekeeping(redis, settings, stop))


async def _drain(redis, certifier: Certifier, settings: Settings, consumer: str, stop: asyncio.Event) -> None:
    await ensure_groups(redis, settings)
    reader = ShardReader(redis, settings, consumer, streams=[settings.certify_stream], group=settings.certify_group)
    while not stop.is_set():
        entries, persons = await _gather(reader, settings, stop)
        if not entries:
            continue
        try:
            if persons:
                await retrying(stop, certifier.certify, persons, retries=metrics.certify_retries)
        except POISON as e:
            # Keeping a failed chunk failed on the data too (Certifier._failed): nothing left to keep it in.
            # The persons keep their previous certificate until their next persisted dose hands them off again.
            log.error("certifying %d persons failed (%s); their handoff is dropped", len(persons),
                      error_kind(e))
        await reader.ack(entries)


async def _gather(reader: ShardReader, settings: Settings, stop: asyncio.Event
                  ) -> tuple[list[StreamEntry], dict[str, float]]:
    """Handoffs up to certify_max_persons (one persisted group may hand off more), or whatever came
    within certify_max_wait of the first."""
    entries: list[StreamEntry] = []
    persons: dict[str, float] = {}
    deadline = None
    while len(persons) < settings.certify_max_persons and not stop.is_set():
        remaining = 0.2 if deadline is None else deadline - time.monotonic()
        if remaining <= 0:
            break
        for entry in await reader.read(block_ms=max(1, int(remaining * 1000)), count=1):
            entries.append(entry)
            if entry.payload is None:
                continue  # trimmed away: nothing to decode, acknowledged with the rest
            try:
                for nid, received_at in handoff.decode(entry.payload).items():
                    persons[nid] = min(received_at, persons.get(nid, received_at))
            except msgspec.DecodeError:
                log.error("undecodable handoff %s acknowledged", entry.entry_id)
        if entries and deadline is None:
            deadline = time.monotonic() + settings.certify_max_wait
    return entries, persons


async def _housekeeping(redis, settings: Settings, stop: asyncio.Event) -> None:
    """Trim the certify stream below what the group still needs; report its backlog and, every minute, the
    signing key's remaining validity; until `stop`."""
    keys, validity_read = KeyStore(settings.signing_keys_dir), None
    while not stop.is_set():
        try:
            _, state = await trim_stream(redis, settings.certify_stream, settings.certify_group)
            metrics.certify_backlog.set(state.length)
        except Exception as e:  # retried on the next round
            log.warning("certify housekeeping failed: %s", type(e).__name__)
        if validity_read is None or time.monotonic() - validity_read >= KEY_VALIDITY_EVERY:
            validity_read = time.monotonic()
            export_key_validity(keys)
        await sleep_unless(stop, settings.trim_interval)


KEY_VALIDITY_EVERY = 60.0


def export_key_validity(keys: KeyStore) -> None:
    """vaxline_signing_key_validity_seconds: 0 when no key can sign (or the folder is refused: nothing signs)."""
    try:
        metrics.signing_key_validity.labels(role="certify").set(keys.signing_validity())
    except (OSError, LooseMode, ValueError) as e:
        log.warning("signing key validity unreadable: %s", type(e).__name__)
        metrics.signing_key_validity.labels(role="certify").set(0)
