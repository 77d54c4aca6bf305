"""A person's first record ever travels with the certify handoff (workers.handoff.FirstDose) and is signed without
reading their history back (storage.issuing), against real Postgres and Redis: the persist transaction names
the persons it created; the handoff carries those with one dose, and only those; the certificate is what a
read would have built; a person touched between the persist and the certifier (another dose, a correction)
gets the certificate of the history in the database; a lookup that issued first leaves nothing to do."""

from __future__ import annotations

import asyncio
import datetime as dt
import json

import asyncpg
import pytest

from monitoring import metrics
from storage import certificates as store
from storage import issuing
from storage.doses import STAGING_COLUMNS
from tests.factory import dose
from tests.stack import running_stack
from vaxline.dcc.keys import KeyStore
from vaxline.dcc.payload import statement
from vaxline.streams import ensure_groups
from workers import certify, handoff
from workers.certify import Certifier
from workers.consume import ShardReader

VN = dt.timezone(dt.timedelta(hours=7))


def at(day: str) -> str:
    return dt.datetime.fromisoformat(day).replace(hour=9, tzinfo=VN).isoformat()


@pytest.fixture
def reads(monkeypatch) -> list[list[str]]:
    """The national ids of every history read (storage.certificates.people), in order."""
    seen: list[list[str]] = []
    people = store.people

    async def counted(conn, national_ids):
        seen.append(list(national_ids))
        return await people(conn, national_ids)

    monkeypatch.setattr(store, "people", counted)
    return seen


async def handed_off(settings, redis, stop: asyncio.Event | None = None):
    """Everything handed off so far, as a certifier gathers it: (entries, persons, first doses)."""
    await ensure_groups(redis, settings)
    reader = ShardReader(redis, settings, "test-certifier", streams=[settings.certify_stream],
                         group=settings.certify_group)
    try:
        return await certify._gather(reader, settings, stop or asyncio.Event())
    finally:
        reader.close()


async def persisted(db, national_id: str, doses: int = 1) -> None:
    deadline = asyncio.get_running_loop().time() + 30
    while await db.fetchval("SELECT count(*) FROM doses WHERE national_id = $1", national_id) < doses:
        assert asyncio.get_running_loop().time() < deadline, "dose not persisted"
        await asyncio.sleep(0.05)


async def certifier(settings) -> tuple[Certifier, asyncpg.Pool]:
    pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=2)
    return Certifier(pool, KeyStore(settings.signing_keys_dir)), pool


async def test_a_first_dose_is_certified_from_the_handoff_as_a_read_would_have(settings, db, redis, reads):
    KeyStore(settings.signing_keys_dir).ensure()
    new, returning = dose(1), dose(2, administered_at=at("2021-08-01"))
    again = dose(2, record_id="R-2nd", dose_number=2, administered_at=at("2021-09-01"))
    twice = [dose(3, administered_at=at("2021-08-01")),
             dose(3, record_id="R-3b", dose_number=2, administered_at=at("2021-09-01"))]
    async with running_stack(settings) as stack:
        _, token = await stack.site()
        assert (await stack.post(token, {"doses": [returning]})).status == 202
        await persisted(db, returning["national_id"])
        _, _, first = await handed_off(settings, redis)
        assert set(first) == {returning["national_id"]}
        assert (await stack.post(token, {"doses": [new, again, *twice]})).status == 202
        await persisted(db, twice[0]["national_id"], doses=2)
        await persisted(db, again["national_id"], doses=2)
    entries, persons, first = await handed_off(settings, redis)
    # The new person with one dose, not the one back for a second dose nor the new one with two records.
    assert set(persons) == {new["national_id"], returning["national_id"], twice[0]["national_id"]}
    assert set(first) == {new["national_id"]}
    assert (first[new["national_id"]].record_id, first[new["national_id"]].lot) == (new["record_id"], new["lot"])

    signer, pool = await certifier(settings)
    try:
        outcome = await signer.certify(persons, first)
    finally:
        await pool.close()
    assert outcome.issued == 3
    assert [nid for read in reads for nid in read if nid == new["national_id"]] == []
    row = await db.fetchrow("SELECT * FROM certificates WHERE national_id = $1 AND status = 'current'",
                            new["national_id"])
    [person] = await store.people(db, [new["national_id"]])
    stated = statement(person.full_name, person.birth_date, person.history)
    assert (bytes(row["fingerprint"]), bytes(row["view_fingerprint"])) == (stated.fingerprint(),
                                                                           stated.view_fingerprint())
    assert json.loads(row["doses"])[0]["site"] == "S-001"
    assert await db.fetchval("SELECT count(*) FROM notifications WHERE national_id = $1", new["national_id"]) == 1


async def test_a_person_touched_after_the_handoff_gets_the_history_in_the_database(settings, db, redis, reads):
    KeyStore(settings.signing_keys_dir).ensure()
    first_dose = dose(4, administered_at=at("2021-08-01"))
    second_dose = dose(4, record_id="R-2nd", dose_number=2, administered_at=at("2021-09-01"))
    async with running_stack(settings) as stack:
        _, token = await stack.site()
        assert (await stack.post(token, {"doses": [first_dose]})).status == 202
        await persisted(db, first_dose["national_id"])
        _, persons, first = await handed_off(settings, redis)
        assert set(first) == {first_dose["national_id"]}
        # Another dose is persisted before the certifier gets to the first handoff.
        assert (await stack.post(token, {"doses": [second_dose]})).status == 202
        await persisted(db, first_dose["national_id"], doses=2)
    signer, pool = await certifier(settings)
    try:
        outcome = await signer.certify(persons, first)  # the stale handoff: one dose, review_seq 0
    finally:
        await pool.close()
    assert outcome.issued == 1
    assert [first_dose["national_id"]] in reads  # built again from a read
    row = await db.fetchrow("SELECT * FROM certificates WHERE national_id = $1 AND status = 'current'",
                            first_dose["national_id"])
    assert [d["record_id"] for d in json.loads(row["doses"])] == [first_dose["record_id"], "R-2nd"]
    assert await db.fetchval("SELECT count(*) FROM certificates WHERE national_id = $1",
                             first_dose["national_id"]) == 1


async def test_a_certificate_a_lookup_issued_first_leaves_the_handoff_nothing_to_do(settings, db, redis, reads):
    KeyStore(settings.signing_keys_dir).ensure()
    new = dose(5)
    async with running_stack(settings) as stack:
        _, token = await stack.site()
        assert (await stack.post(token, {"doses": [new]})).status == 202
        await persisted(db, new["national_id"])
    _, persons, first = await handed_off(settings, redis)
    pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=2)
    try:  # as a citizen's lookup does: issued from a read, before any certifier
        await issuing.certify(pool, issuing.Signing(KeyStore(settings.signing_keys_dir)),
                              {new["national_id"]: 0.0}, issuing.Outcome(), metrics=metrics)
        signer = Certifier(pool, KeyStore(settings.signing_keys_dir))
        outcome = await signer.certify(persons, first)
    finally:
        await pool.close()
    assert (outcome.issued, outcome.unchanged) == (0, 1)
    assert await db.fetchval("SELECT count(*) FROM certificates WHERE national_id = $1", new["national_id"]) == 1


def test_first_doses_are_only_of_created_persons_with_one_row():
    values = {"site_id": 7, "record_id": "R-1", "national_id": "012345678901", "full_name": "Nguyễn Văn A",
              "birth_date": dt.date(1980, 1, 1), "vaccine": "EU/1/21/1529", "lot": "L1", "dose_number": 1,
              "administered_at": dt.datetime(2021, 8, 1, 2, tzinfo=dt.UTC), "sex": "M", "phone": None,
              "batch_id": "0-1-0", "received_at": dt.datetime(2021, 8, 1, 3, tzinfo=dt.UTC)}
    row = tuple(values[c] for c in STAGING_COLUMNS)
    other = tuple({**values, "record_id": "R-2"}[c] for c in STAGING_COLUMNS)
    [first] = handoff.first_doses([row], frozenset({"012345678901"}))
    assert (first.site_id, first.record_id, first.national_id, first.dose_number) == (7, "R-1", "012345678901", 1)
    assert handoff.first_doses([row, other], frozenset({"012345678901"})) == []  # two records: read
    assert handoff.first_doses([row], frozenset()) == []  # not created here: read
