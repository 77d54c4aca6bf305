"""Certificates: the histories they are built from, and issuing/revoking them.

Issuing is a compare-and-swap per person, so certifiers need no lock:
revoke the certificate the new one was built against (only if it is still
current and its view unchanged), then insert the new one as current. A person whose current
certificate changed in between (another certifier was faster) is not written
and is handed back, to be rebuilt from a fresh read of the history. The
partial unique index keeps one current certificate per person whatever
happens. Building and signing what is written here is storage.issuing, for
the certifiers and for a lookup that finds a certificate behind its history.
Each certificate written tells its holder: a notification is written in the
same transaction (storage.notifications), so none stored goes untold.
"""

from __future__ import annotations

import datetime as dt

import asyncpg
import msgspec

from vaxline.sequence import HistoryDose

from . import notifications
from .locking import locked_rows

# Person first, then their doses: a LATERAL join keeps the index plan however large `doses` grows, and
# the person's range of administration times prunes the monthly partitions at run time, so each person
# costs a probe into the one or few partitions that hold their doses, not one into every month since 2021.
# OFFSET 0 keeps the planner from pulling the subquery up into a join it may then hash: with statistics
# behind a fast-growing table (never analyzed yet, or 10% behind), the custom plans of a prepared
# statement's first five runs hashed every dose and person, 147 ms for 1,000 persons against 8 ms.
# Shared with the reviewer's read (storage.review), which keeps persons with no dose left (`keep_persons`).
def doses_lateral(columns: str, *, keep_persons: bool = False) -> str:
    """The doses of `p` (the enclosing query's person) as `d`, with these columns of `doses d`."""
    join, on = ("LEFT JOIN LATERAL", " ON true") if keep_persons else ("CROSS JOIN LATERAL", "")
    return f"""
{join} (
    SELECT {columns}
    FROM doses d
    WHERE d.national_id = p.national_id
      AND d.administered_at BETWEEN p.first_administered_at AND p.last_administered_at
    OFFSET 0
) d{on}
"""


# The current certificate comes in the same statement, hence the same snapshot: whatever it states was
# read from a history that this one contains, which is what makes replacing it safe.
_DOSES = doses_lateral(
    "d.site_id, d.record_id, d.vaccine, d.lot, d.dose_number, d.administered_at, d.counted, d.received_at")

# The site codes are joined once for the whole chunk, outside the loop over its persons (the OFFSET 0 closing h
# keeps the planner from moving the join back in). Inside it, the planner, which expects a row from every
# monthly partition, joined each person's doses to the whole sites table again: a scan and a hash of every
# site per person. With 500 sites, a 1,000-person chunk cost Postgres 43-48 us a person that way and 12-14 us
# this way (docs/benchmarks.md, 2026-12-07, night).
_HISTORY = """
SELECT h.national_id, h.full_name, h.birth_date, h.current_uvci, h.current_fingerprint, h.current_view_fingerprint,
       s.code AS site, h.record_id, h.vaccine, h.lot, h.dose_number, h.administered_at, h.counted
FROM (
    SELECT p.national_id, p.full_name, p.birth_date, c.uvci AS current_uvci, c.fingerprint AS current_fingerprint,
           c.view_fingerprint AS current_view_fingerprint, d.site_id, d.record_id, d.vaccine, d.lot, d.dose_number,
           d.administered_at, d.counted
    FROM unnest($1::text[]) AS i(national_id)
    JOIN persons p ON p.national_id = i.national_id
    LEFT JOIN certificates c ON c.national_id = p.national_id AND c.status = 'current'
    """ + _DOSES + """
    OFFSET 0
) h
JOIN sites s ON s.site_id = h.site_id
"""

_COLUMNS = "uvci, national_id, status, full_name, birth_date, doses, hc1, issued_at, expires_at, revoked_at, superseded_by"

# A citizen's lookup: one person by national ID and birth date, with their history and the whole current
# certificate, from one snapshot, so whether the certificate is behind the history costs no second query.
# (Unknown ID and wrong birth date alike: one primary-key probe, no row.) The ID comes through unnest, as in
# _HISTORY: `p.national_id = $1` would let the planner carry the constant to `doses` and probe every monthly
# partition's index instead of the person's range. received_at, each dose's 202, is for when the lookup has
# to issue: the certificate's freshness counts from the earliest 202 it states first.
_LOOKUP = f"""
SELECT p.national_id, p.full_name, p.birth_date, c.uvci AS current_uvci, c.fingerprint AS current_fingerprint,
       c.view_fingerprint AS current_view_fingerprint,
       {", ".join(f"c.{column} AS c_{column}" for column in _COLUMNS.split(", "))},
       s.code AS site, d.record_id, d.vaccine, d.lot, d.dose_number, d.administered_at, d.counted, d.received_at
FROM unnest(ARRAY[$1::text]) AS i(national_id)
JOIN persons p ON p.national_id = i.national_id AND p.birth_date = $2
LEFT JOIN certificates c ON c.national_id = p.national_id AND c.status = 'current'
{_DOSES}
JOIN sites s ON s.site_id = d.site_id"""

# The compare-and-swap (still current, its view unchanged) is read from the locked rows (storage.locking): as a
# condition of the scan, `status = 'current'` let the planner read the whole of certificates_current for a
# handful of UVCIs. In a 4-minute day one revocation of 12 certificates took 165 ms that way (100,483 index
# entries); the statement averaged 196 us a certificate over the day against 32 us in a run whose statistics
# happened to be fresh. The rows are locked in national ID order, as the insert below takes its arbiter's.
def _locked(columns: str, rows: str) -> str:
    return locked_rows("certificates", key="uvci", state="t.status, t.view_fingerprint", order="t.national_id",
                       rows=rows, columns=columns)


_REVOKE = _locked("i.new, i.old_view", "unnest($1::text[], $2::text[], $3::bytea[]) AS i(uvci, new, old_view)") + """
UPDATE certificates c SET status = 'revoked', revoked_at = clock_timestamp(), superseded_by = l.new
FROM l WHERE c.uvci = l.uvci AND l.status = 'current' AND l.view_fingerprint = l.old_view
RETURNING c.national_id
"""

# The race it settles is two issuers inserting a first certificate for one person: the person's current
# certificate is the only arbiter. (With none named, every unique index is one, and each row would first probe
# the primary key for its UVCI too: 160 random bits, which never collide.)
_INSERT = """
INSERT INTO certificates (uvci, national_id, status, fingerprint, view_fingerprint, full_name, birth_date, doses,
                          kid, hc1, issued_at, expires_at, received_at)
SELECT i.uvci, i.national_id, 'current', i.fingerprint, i.view_fingerprint, i.full_name, i.birth_date,
       i.doses::jsonb, $9, i.hc1, $10, $11, i.received_at
FROM unnest($1::text[], $2::text[], $3::bytea[], $4::bytea[], $5::text[], $6::date[], $7::text[], $8::text[],
            $12::timestamptz[])
     AS i(uvci, national_id, fingerprint, view_fingerprint, full_name, birth_date, doses, hc1, received_at)
ON CONFLICT (national_id) WHERE status = 'current' DO NOTHING
RETURNING national_id
"""

_UPDATE_VIEW = _locked("i.old, i.new, i.doses",
                       "unnest($1::text[], $2::bytea[], $3::bytea[], $4::text[]) AS i(uvci, old, new, doses)") + """
UPDATE certificates c SET doses = l.doses::jsonb, view_fingerprint = l.new
FROM l WHERE c.uvci = l.uvci AND l.status = 'current' AND l.view_fingerprint = l.old
RETURNING c.national_id
"""

# Structs, as vaxline.sequence's doses: a frozen dataclass costs a certifier microseconds a certificate to build.
class Person(msgspec.Struct, frozen=True):
    national_id: str
    full_name: str
    birth_date: dt.date
    history: list[HistoryDose]
    current_uvci: str | None = None
    current_fingerprint: bytes | None = None
    current_view_fingerprint: bytes | None = None


class NewCertificate(msgspec.Struct, frozen=True):
    uvci: str
    national_id: str
    previous_uvci: str | None
    previous_view_fingerprint: bytes | None  # the superseded one must still say exactly this, too
    fingerprint: bytes
    view_fingerprint: bytes
    full_name: str
    birth_date: dt.date
    doses_json: str
    hc1: str
    received_at: dt.datetime | None


async def people(conn: asyncpg.Connection, national_ids: list[str]) -> list[Person]:
    """Each person's details, persisted doses and current certificate, from one snapshot."""
    return [_person(rows) for rows in _by_person(await conn.fetch(_HISTORY, national_ids))]


def _by_person(rows: list[asyncpg.Record]) -> list[list[asyncpg.Record]]:
    """Rows of person + dose, grouped by person."""
    grouped: dict[str, list[asyncpg.Record]] = {}
    for r in rows:
        grouped.setdefault(r["national_id"], []).append(r)
    return list(grouped.values())


def _person(rows: list[asyncpg.Record]) -> Person:
    first = rows[0]
    history = [HistoryDose(r["site"], r["record_id"], r["vaccine"], r["lot"], r["dose_number"], r["administered_at"],
                           r["counted"]) for r in rows]
    return Person(first["national_id"], first["full_name"], first["birth_date"], history, first["current_uvci"],
                  first["current_fingerprint"], first["current_view_fingerprint"])


class Lookup(msgspec.Struct, frozen=True):
    """A citizen's lookup: the person as the certifiers read them, and the current certificate as served."""

    person: Person
    certificate: dict | None  # the columns of by_uvci; None when the person has no certificate yet
    received: dict[tuple[str, str], dt.datetime]  # each dose's 202, by (site code, record id)

    def due_since(self) -> float:
        """When a certificate stating the history was first due (epoch seconds): the earliest 202 of a dose
        the current certificate does not list, or the latest 202 of all when it lists each record (one of
        them was corrected since)."""
        listed = set()
        if self.certificate is not None:
            doses = self.certificate["doses"]  # jsonb as its text, unless a codec is set
            listed = {(d["site"], d["record_id"]) for d in (msgspec.json.decode(doses) if isinstance(doses, str)
                                                            else doses)}
        unlisted = [at for key, at in self.received.items() if key not in listed]
        return (min(unlisted) if unlisted else max(self.received.values())).timestamp()


async def lookup(conn: asyncpg.Connection, national_id: str, birth_date: dt.date) -> Lookup | None:
    """The person with this national ID and birth date, with their persisted history and their current
    certificate, from one snapshot; None for an unknown ID, a wrong birth date, or a person with no dose left."""
    rows = await conn.fetch(_LOOKUP, national_id, birth_date)
    if not rows:
        return None
    first = rows[0]
    certificate = {column: first[f"c_{column}"] for column in _COLUMNS.split(", ")} if first["c_uvci"] else None
    return Lookup(_person(rows), certificate, {(r["site"], r["record_id"]): r["received_at"] for r in rows})


async def issue(conn: asyncpg.Connection, certificates: list[NewCertificate], *, kid: bytes,
                issued_at: dt.datetime, expires_at: dt.datetime) -> tuple[set[str], int]:
    """Write new certificates, revoking what each supersedes: (national ids written, certificates revoked).

    The ones not written lost a race and must be rebuilt from a fresh read.
    """
    certificates = sorted(certificates, key=lambda c: c.national_id)  # two certifiers lock rows alike
    async with conn.transaction():
        superseding = [c for c in certificates if c.previous_uvci is not None]
        revoked = {r["national_id"] for r in await conn.fetch(
            _REVOKE, [c.previous_uvci for c in superseding], [c.uvci for c in superseding],
            [c.previous_view_fingerprint for c in superseding])}
        todo = [c for c in certificates if c.previous_uvci is None or c.national_id in revoked]
        written = {r["national_id"] for r in await conn.fetch(
            _INSERT,
            [c.uvci for c in todo], [c.national_id for c in todo], [c.fingerprint for c in todo],
            [c.view_fingerprint for c in todo], [c.full_name for c in todo], [c.birth_date for c in todo],
            [c.doses_json for c in todo], [c.hc1 for c in todo], kid, issued_at, expires_at,
            [c.received_at for c in todo],
        )}
        if revoked - written:  # a revoked certificate must have its successor: never leave a person without one
            raise RuntimeError(f"{len(revoked - written)} superseding certificates were not written")
        # Their holders are told in this transaction, so no stored certificate goes untold (storage.notifications).
        await notifications.certificates_stored(conn, [(c.national_id, c.uvci, c.previous_uvci is not None)
                                                       for c in todo if c.national_id in written])
    return written, len(revoked)


class ViewUpdate(msgspec.Struct, frozen=True):
    """The current certificate's view, when what its DCC states is unchanged."""

    national_id: str
    uvci: str
    old_view_fingerprint: bytes | None
    view_fingerprint: bytes
    doses_json: str


async def update_views(conn: asyncpg.Connection, updates: list[ViewUpdate]) -> set[str]:
    """Update views in place, each only if unchanged since it was read; the national ids written."""
    updates = sorted(updates, key=lambda u: u.national_id)
    rows = await conn.fetch(_UPDATE_VIEW, [u.uvci for u in updates], [u.old_view_fingerprint for u in updates],
                            [u.view_fingerprint for u in updates], [u.doses_json for u in updates])
    return {r["national_id"] for r in rows}


async def revoke_without_doses(conn: asyncpg.Connection, national_ids: list[str]) -> int:
    """Revoke the current certificate of each of these persons who no longer has any dose (every record
    withdrawn or moved to another person by a correction); how many were revoked."""
    rows = await conn.fetch(
        "UPDATE certificates c SET status = 'revoked', revoked_at = clock_timestamp()"
        " WHERE c.national_id = ANY($1::text[]) AND c.status = 'current'"
        " AND NOT EXISTS (SELECT 1 FROM doses d WHERE d.national_id = c.national_id) RETURNING c.national_id",
        national_ids)
    return len(rows)


async def by_uvci(conn: asyncpg.Connection, uvci: str) -> asyncpg.Record | None:
    return await conn.fetchrow(f"SELECT {_COLUMNS} FROM certificates WHERE uvci = $1", uvci)


async def current_for(conn: asyncpg.Connection, national_id: str, birth_date: dt.date) -> asyncpg.Record | None:
    """The current certificate of the person with this national ID and birth date.

    One index probe whatever the answer, so an unknown ID and a wrong birth date cost the same.
    """
    return await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM certificates WHERE national_id = $1 AND status = 'current' AND birth_date = $2",
        national_id, birth_date)


async def phones_on_record(conn: asyncpg.Connection, national_id: str, *, limit: int = 3) -> list[str]:
    """The phones sites recorded for this person, the most recently recorded first, at most `limit`
    (none for an unknown ID). Only what a site wrote down counts: never a phone a citizen typed into a
    request. The person's range of administration times keeps the probe to their partitions."""
    rows = await conn.fetch(
        "SELECT d.phone FROM unnest(ARRAY[$1::text]) AS i(national_id)"
        " JOIN persons p ON p.national_id = i.national_id"
        " JOIN doses d ON d.national_id = p.national_id"
        "  AND d.administered_at BETWEEN p.first_administered_at AND p.last_administered_at"
        " WHERE d.phone IS NOT NULL GROUP BY d.phone ORDER BY max(d.administered_at) DESC LIMIT $2",
        national_id, limit)
    return [r["phone"] for r in rows]


async def is_revoked(conn: asyncpg.Connection, uvci: str) -> bool:
    return bool(await conn.fetchval("SELECT status = 'revoked' FROM certificates WHERE uvci = $1", uvci))


# The feed, by revocation number. Numbers are drawn at the revoking commit, in commit order
# (storage/migrations/0007_revocation_feed.sql), so every number a reader will ever see below the largest
# it sees now is visible to it already: a page ends wherever the numbers visible now end.
_FEED = """
SELECT seq, encode(substring(sha256(convert_to(uvci, 'UTF8')) FROM 1 FOR 16), 'hex') AS hash, revoked_at
FROM revocations WHERE seq > $1 ORDER BY seq LIMIT $2
"""

# `since`, for clients of the time-based feed: the number to start after, from the first revocation numbered
# at or after `since` (less the margin). Every revocation made after `since` was numbered after it, in
# commit order, so its number is larger; none visible now, the clients continue after the largest number.
# The margin covers the server's clock stepped back by up to that much; the client gets its few again, which
# a set of hashes absorbs.
_SINCE = """
SELECT coalesce((SELECT seq - 1 FROM revocations WHERE numbered_at >= $1::timestamptz - $2::interval
                 ORDER BY numbered_at LIMIT 1),
                (SELECT max(seq) FROM revocations), 0)
"""

SINCE_MARGIN = dt.timedelta(seconds=1)


async def revocations(conn: asyncpg.Connection, *, limit: int, after: int = 0,
                      since: dt.datetime | None = None) -> tuple[list[asyncpg.Record], int]:
    """Revoked certificates as the EU gateway lists them (the first 16 bytes of SHA-256 of the UVCI, hex),
    with their number (`seq`) and revoked_at, by number, at most `limit`, numbered after `after` (or from
    `since`). Returns (rows, the number to continue after): a client that continues there never misses a
    revocation, as none can become visible below it later. Numbers of rolled-back transactions are gaps.

    One range scan of the primary key, at most `limit` rows, whatever the size of the list (with `since`,
    one index probe before it)."""
    if since is not None:
        after = await conn.fetchval(_SINCE, since, SINCE_MARGIN)
    rows = await conn.fetch(_FEED, after, limit)
    return rows, rows[-1]["seq"] if rows else after
