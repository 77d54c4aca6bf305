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
another certifier is simply rebuilt from a fresh read.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime as dt
import logging
import time

import asyncpg
import msgspec

from monitoring import metrics
from storage import certificates as store
from storage import ACQUIRE_TIMEOUT
from storage.errors import POISON
from vaxline.config import Settings
from vaxline.dcc.issue import Signer, expiry, new_uvci
from vaxline.dcc.keys import KeyStore
from vaxline.dcc.payload import statement
from vaxline.streams import ensure_groups

from . import handoff
from .consume import ShardReader, StreamEntry
from .loop import error_kind, retrying, run_consumer, sleep_unless
from .trim import trim_stream

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Outcome:
    issued: int = 0
    revoked: int = 0
    updated: int = 0  # views updated in place
    unchanged: int = 0


class Certifier:
    def __init__(self, pool: asyncpg.Pool, keys: KeyStore, *, chunk: int = 1000):
        self._pool = pool
        self._keys = keys
        self._chunk = chunk  # persons signed, then stored, at a time: certificates appear as they are made
        self._signer: Signer | None = None
        self._keys_version: int | None = None

    def signer(self) -> Signer:
        """The newest key's signer, reloaded when a key is added (rotation needs no restart)."""
        version = self._keys.version()
        if self._signer is None or version != self._keys_version:
            self._signer = Signer(self._keys.signing_key())
            self._keys_version = version
            # As the EU trust lists write a kid: base64 (a hex kid may look like a run of ID digits).
            log.info("signing with key kid=%s", base64.b64encode(self._signer.key.kid).decode())
        return self._signer

    async def certify(self, persons: dict[str, float]) -> Outcome:
        """Bring the certificates of these persons (national id -> earliest 202) up to date."""
        outcome = Outcome()
        ids = list(persons)
        for start in range(0, len(ids), self._chunk):
            await self._certify({nid: persons[nid] for nid in ids[start:start + self._chunk]}, outcome)
        metrics.certificates_unchanged.inc(outcome.unchanged)
        return outcome

    async def _certify(self, todo: dict[str, float], outcome: Outcome) -> None:
        while todo:
            started = time.perf_counter()
            signer = self.signer()
            async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
                people = await store.people(conn, list(todo))
                # Persons with no dose left (withdrawn, or moved to another person): no certificate either.
                found = {p.national_id for p in people}
                if gone := [nid for nid in todo if nid not in found]:
                    orphaned = await store.revoke_without_doses(conn, gone)
                    outcome.revoked += orphaned
                    metrics.certificates_revoked.inc(orphaned)
            issued_at = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)  # the CWT counts whole seconds
            expires_at = expiry(issued_at)
            new: list[store.NewCertificate] = []
            views: list[store.ViewUpdate] = []
            for person in people:
                try:
                    change = self._build(person, signer, issued_at, expires_at, todo[person.national_id])
                except Exception as e:  # a bug for this person's data: the others still get theirs
                    metrics.certify_failures.labels(error=type(e).__name__).inc()
                    log.error("building a certificate failed (%s); the person keeps the previous one",
                              type(e).__name__)
                    continue
                if change is None:
                    outcome.unchanged += 1
                elif isinstance(change, store.ViewUpdate):
                    views.append(change)
                else:
                    new.append(change)
            async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
                written, revoked = await store.issue(conn, new, kid=signer.key.kid, issued_at=issued_at,
                                                     expires_at=expires_at)
                updated = await store.update_views(conn, views) if views else set()
            now = time.time()
            for nid in written | updated:
                metrics.freshness.labels(stage="certified").observe(max(0.0, now - todo[nid]))
            outcome.issued += len(written)
            outcome.revoked += revoked
            outcome.updated += len(updated)
            metrics.certificates_issued.inc(len(written))
            metrics.certificates_revoked.inc(revoked)
            metrics.certificates_updated.inc(len(updated))
            metrics.certify_duration.observe(time.perf_counter() - started)
            # Whoever lost a race with another certifier is built again from a fresh read.
            todo = {c.national_id: todo[c.national_id] for c in [*new, *views]
                    if c.national_id not in written and c.national_id not in updated}

    @staticmethod
    def _build(person: store.Person, signer: Signer, issued_at: dt.datetime, expires_at: dt.datetime,
               received_at: float) -> store.NewCertificate | store.ViewUpdate | None:
        """A new certificate when what the DCC states changed; the view alone when only it changed (a second
        record of a dose already counted: the QR in the citizen's hands stays valid); else None."""
        stated = statement(person.full_name, person.birth_date, person.history)
        fingerprint, view = stated.fingerprint(), stated.view_fingerprint()
        if fingerprint == person.current_fingerprint:
            if view == person.current_view_fingerprint:
                return None
            return store.ViewUpdate(person.national_id, person.current_uvci, person.current_view_fingerprint, view,
                                    msgspec.json.encode(stated.doses).decode())
        uvci = new_uvci()
        return store.NewCertificate(
            uvci, person.national_id, person.current_uvci, person.current_view_fingerprint, fingerprint, view,
            person.full_name, person.birth_date,
            msgspec.json.encode(stated.doses).decode(), signer.sign(stated.dcc(uvci), issued_at, expires_at),
            dt.datetime.fromtimestamp(received_at, dt.timezone.utc))


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
            # A bug, not the data's fault (the doses passed validation and are persisted): log it and move
            # on. The persons keep their previous certificate until their next persisted dose hands them off again.
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
    """Trim the certify stream below what the group still needs; report its backlog; until `stop`."""
    while not stop.is_set():
        try:
            _, state = await trim_stream(redis, settings.certify_stream, settings.certify_group)
            metrics.certify_backlog.set(state.length)
        except Exception as e:  # retried on the next round
            log.warning("certify housekeeping failed: %s", type(e).__name__)
        await sleep_unless(stop, settings.trim_interval)
