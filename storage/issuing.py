"""Issuing: a person's certificate built from their persisted history, signed and stored under the
compare-and-swap of storage.certificates.

Shared by the two issuers, so both decide and write alike:

    certifiers (workers/certify.py)     the persons of the certify stream, a chunk at a time
    the lookup (ingest/certificates.py) one citizen whose certificate is behind their history

    people = store.people(...)          # history and current certificate, one snapshot
    build(person, ...)                  # new certificate | view update | nothing, by fingerprints (pure)
    store.issue / store.update_views    # compare-and-swap; the losers are read and built again

Whoever comes second to a person finds the fingerprints matching and does nothing, so the lookup that
issued a certificate leaves the certifier nothing to sign, and two issuers racing end with one current
certificate (the partial unique index) that states the whole history. Signing happens outside any
transaction and no connection is held while signing. The metrics are
injected (`Meters`, monitoring.metrics in production): storage sits beside
monitoring, not above it.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import logging
import time
from typing import Protocol

import asyncpg
import msgspec
from prometheus_client import Counter, Histogram

from vaxline.dcc.issue import Signer, expiry, new_uvci
from vaxline.dcc.keys import KeyPermissions, KeyStore, NoSigningKey
from vaxline.dcc.payload import statement
from vaxline.filemodes import Reminder

from . import ACQUIRE_TIMEOUT
from . import certificates as store

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Outcome:
    issued: int = 0
    revoked: int = 0
    updated: int = 0  # views updated in place
    unchanged: int = 0


class Meters(Protocol):
    """What issuing counts in: monitoring.metrics has each of these."""

    certificates_issued: Counter
    certificates_revoked: Counter
    certificates_updated: Counter
    certify_failures: Counter  # labelled by error
    certify_duration: Histogram
    freshness: Histogram  # labelled by stage


class Signing:
    """The newest key's signer, reloaded when the keys folder changes (a rotation needs no restart).

    A key folder or key open to other users (KeyPermissions) is refused, not taken for a missing key: it
    is raised to every caller, logged with its path, mode and chmod when met and again every minute while
    it lasts, and the chmod that fixes it changes the folder's version, so signing resumes by itself."""

    def __init__(self, keys: KeyStore):
        self._keys = keys
        self._version: tuple | None = None
        self._signer: Signer | None = None
        self._missing = ""  # why there is no signer, for this version of the folder
        self._refused: KeyPermissions | None = None
        self._remind = Reminder(log)  # this signer's own: a certifier's line each minute, whatever ingest logs

    def signer(self) -> Signer:
        """Raises NoSigningKey when no key here may sign (a deployment that signs elsewhere), KeyPermissions
        when the folder or a key is open to other users."""
        version = self._keys.version()
        if version != self._version:
            self._load()
            self._version = version
        if self._refused is not None:
            self._remind(self._refused, "signing keys refused, nothing is signed until the chmod")
            raise self._refused.with_traceback(None)  # the same error each time, without growing its traceback
        if self._signer is None:
            raise NoSigningKey(self._missing)
        return self._signer

    def available(self) -> Signer | None:
        """The signer, or None without a key that may sign; KeyPermissions is raised, never None."""
        try:
            return self.signer()
        except NoSigningKey:
            return None

    def _load(self) -> None:
        self._signer, self._refused = None, None
        try:
            self._signer = Signer(self._keys.signing_key())
        except NoSigningKey as e:
            self._missing = str(e)
            return
        except KeyPermissions as e:  # before PermissionError's clause, were it ever one again
            self._refused = e
            return
        except PermissionError:  # the private half is another user's: this process does not sign
            self._missing = f"the signing key in {self._keys.directory} is not readable by this process's user"
            return
        # As the EU trust lists write a kid: base64 (a hex kid may look like a run of ID digits).
        log.info("signing with key kid=%s", base64.b64encode(self._signer.key.kid).decode())


def build(person: store.Person, signer: Signer, issued_at: dt.datetime, expires_at: dt.datetime,
          received_at: float) -> store.NewCertificate | store.ViewUpdate | None:
    """A new certificate when what the DCC states changed; the view alone when only it changed (a second
    record of a dose already counted: the QR in the citizen's hands stays valid); else None."""
    stated = statement(person.full_name, person.birth_date, person.history)
    dcc = stated.dcc("")  # hashed without its UVCI, then numbered and signed: built once
    fingerprint, view = stated.fingerprint(dcc), stated.view_fingerprint()
    if fingerprint == person.current_fingerprint:
        if view == person.current_view_fingerprint:
            return None
        return store.ViewUpdate(person.national_id, person.current_uvci, person.current_view_fingerprint, view,
                                msgspec.json.encode(stated.doses).decode())
    uvci = new_uvci()
    dcc["v"][0]["ci"] = uvci
    return store.NewCertificate(
        uvci, person.national_id, person.current_uvci, person.current_view_fingerprint, fingerprint, view,
        person.full_name, person.birth_date,
        msgspec.json.encode(stated.doses).decode(), signer.sign(dcc, issued_at, expires_at),
        dt.datetime.fromtimestamp(received_at, dt.UTC))


def behind(person: store.Person) -> bool:
    """Whether the person's current certificate (DCC or view) does not state their history: the check
    `build` starts with, without signing. True when the statement cannot be built, so that `certify`
    meets the failure and counts it."""
    try:
        stated = statement(person.full_name, person.birth_date, person.history)
        return (stated.fingerprint(), stated.view_fingerprint()) != (
            person.current_fingerprint, person.current_view_fingerprint)
    except Exception:  # a bug for this person's data: `certify` meets it again, and counts and logs it
        return True


async def certify(pool: asyncpg.Pool, signing: Signing, todo: dict[str, float], outcome: Outcome, *,
                  metrics: Meters, people: list[store.Person] | None = None) -> None:
    """Bring the certificates of these persons (national id -> earliest 202, epoch seconds) up to date:
    read, build, sign, store, and again for whoever lost a race, until none is left.

    `people`, when given, is their history as the caller just read it (one snapshot with their current
    certificate), used for the first round instead of reading it again."""
    while todo:
        started = time.perf_counter()
        signer = signing.signer()
        if people is None:
            people = await _read(pool, todo, outcome, metrics)
        issued_at = dt.datetime.now(dt.UTC).replace(microsecond=0)  # the CWT counts whole seconds
        expires_at = expiry(issued_at)
        new, views = _changes(people, signer, issued_at, expires_at, todo, outcome, metrics)
        async with pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
            written, revoked = await store.issue(conn, new, kid=signer.key.kid, issued_at=issued_at,
                                                 expires_at=expires_at)
            updated = await store.update_views(conn, views) if views else set()
        now, certified = time.time(), metrics.freshness.labels(stage="certified")
        for nid in written | updated:
            certified.observe(max(0.0, now - todo[nid]))
        outcome.issued += len(written)
        outcome.revoked += revoked
        outcome.updated += len(updated)
        metrics.certificates_issued.inc(len(written))
        metrics.certificates_revoked.inc(revoked)
        metrics.certificates_updated.inc(len(updated))
        metrics.certify_duration.observe(time.perf_counter() - started)
        # Whoever lost a race with another issuer is built again from a fresh read.
        todo = {c.national_id: todo[c.national_id] for c in [*new, *views]
                if c.national_id not in written and c.national_id not in updated}
        people = None


async def _read(pool: asyncpg.Pool, todo: dict[str, float], outcome: Outcome, metrics: Meters) -> list[store.Person]:
    """The persons' histories; revokes the certificate of whoever has no dose left (every record withdrawn,
    or moved to another person)."""
    async with pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
        people = await store.people(conn, list(todo))
        found = {p.national_id for p in people}
        if gone := [nid for nid in todo if nid not in found]:
            orphaned = await store.revoke_without_doses(conn, gone)
            outcome.revoked += orphaned
            metrics.certificates_revoked.inc(orphaned)
    return people


def _changes(people: list[store.Person], signer: Signer, issued_at: dt.datetime, expires_at: dt.datetime,
             todo: dict[str, float], outcome: Outcome, metrics: Meters
             ) -> tuple[list[store.NewCertificate], list[store.ViewUpdate]]:
    """What to store for each person: new certificates (signed here) and view updates."""
    new: list[store.NewCertificate] = []
    views: list[store.ViewUpdate] = []
    for person in people:
        try:
            change = build(person, signer, issued_at, expires_at, todo[person.national_id])
        except Exception as e:  # a bug for this person's data: the others still get theirs
            metrics.certify_failures.labels(error=type(e).__name__).inc()
            log.error("building a certificate failed (%s); the person keeps the previous one", type(e).__name__)
            continue
        if change is None:
            outcome.unchanged += 1
        elif isinstance(change, store.ViewUpdate):
            views.append(change)
        else:
            new.append(change)
    return new, views
