"""Idempotency, identity and partitions: what the persist transaction promises.

Covers: the same batch three times is one row per record with receipts saying `duplicates`; record ids are
per site; five people sharing one phone are five persons; partitions (ahead, default, month boundaries in
UTC+7); migrations twice.
"""

import datetime as dt

import msgspec

from storage import partitions
from storage.migrate import migrate
from tests.conftest import wait_until
from tests.factory import batch, dose
from tests.stack import running_stack
from vaxline.doses import Dose
from vaxline.entries import DOSE_FIELDS, BatchEntry
from workers.consume import StreamEntry
from workers.rows import DecodedEntry, to_rows


async def all_persisted(db, count):
    return await db.fetchval("SELECT count(*) FROM batches") == count


async def test_the_same_batch_posted_three_times_persists_once(settings, db):
    async with running_stack(settings) as stack:
        _, token = await stack.site()
        ids = []
        for _ in range(3):
            response = await stack.post(token, batch(0, 20))
            ids.append((await response.json())["batch_id"])
        await wait_until(lambda: all_persisted(db, 3), message="three receipts")
        receipts = []
        for batch_id in ids:
            response = await stack.client.get(f"/v1/batches/{batch_id}", headers={"Authorization": f"Bearer {token}"})
            receipts.append(await response.json())
    assert [(r["inserted"], r["duplicates"]) for r in receipts] == [(20, 0), (0, 20), (0, 20)]
    assert all(r["inserted"] + r["duplicates"] == r["accepted"] for r in receipts)
    assert await db.fetchval("SELECT count(*) FROM doses") == 20
    assert await db.fetchval("SELECT count(*) FROM dose_keys") == 20


async def test_record_ids_are_per_site(settings, db):
    async with running_stack(settings) as stack:
        _, token_a = await stack.site("A")
        _, token_b = await stack.site("B")
        await stack.post(token_a, batch(0, 5))
        await stack.post(token_b, batch(0, 5))
        await wait_until(lambda: all_persisted(db, 2), message="two receipts")
    assert await db.fetchval("SELECT count(*) FROM doses") == 10


async def test_a_family_sharing_one_phone_is_five_persons(settings, db):
    family = {"doses": [dose(n, phone="0987654321") for n in range(5)]}
    async with running_stack(settings) as stack:
        _, token = await stack.site()
        await stack.post(token, family)
        await wait_until(lambda: all_persisted(db, 1), message="receipt")
    rows = await db.fetch("SELECT national_id, phone FROM persons ORDER BY national_id")
    assert len(rows) == 5 and {r["phone"] for r in rows} == {"0987654321"}
    assert len({r["national_id"] for r in rows}) == 5


def test_a_group_with_a_record_twice_keeps_the_first_and_counts_the_rest():
    def decoded(entry_id, doses):
        packed = [tuple(msgspec.convert(d, Dose).__getattribute__(f) for f in DOSE_FIELDS) for d in doses]
        return DecodedEntry(StreamEntry(0, entry_id, b""), f"0-{entry_id}", BatchEntry(7, 1.7e9, packed))

    first = decoded("1-0", [dose(1), dose(2)])
    again = decoded("2-0", [dose(2), dose(3)])
    rows, counts = to_rows([first, again, first])
    assert [r[1] for r in rows] == ["R-0000001", "R-0000002", "R-0000003"]
    assert [r[-2] for r in rows] == ["0-1-0", "0-1-0", "0-2-0"]
    assert [c.accepted for c in counts] == [2, 2]


def test_months_cover_the_range_inclusively():
    months = partitions.months(dt.date(2021, 11, 15), dt.date(2022, 2, 1))
    assert months == [dt.date(2021, 11, 1), dt.date(2021, 12, 1), dt.date(2022, 1, 1), dt.date(2022, 2, 1)]


async def test_partitions_run_ahead_and_rows_leave_the_default_when_their_month_arrives(settings, db):
    today = dt.datetime.now(partitions.VIETNAM).date()
    far = today.replace(day=1)
    for _ in range(partitions.AHEAD_MONTHS + 2):
        far = partitions.next_month(far)
    assert await db.fetchval("SELECT to_regclass($1)", partitions.partition_name(partitions.next_month(today))) is not None
    # A dose in a month with no partition yet lands in the default partition ...
    when = partitions.month_start(far) + dt.timedelta(days=3)
    await db.execute(
        "INSERT INTO doses (site_id, record_id, national_id, full_name, birth_date, vaccine, lot, dose_number,"
        " administered_at, batch_id, received_at) VALUES (1, 'r', '001099012345', 'A', '1990-01-01', 'x', 'l', 1,"
        " $1, 'b', now())", when)
    assert await db.fetchval("SELECT count(*) FROM doses_default") == 1
    # ... and moves to its own partition when that month is created.
    created = await partitions.ensure_partitions(db, today=far)
    assert partitions.partition_name(far) in created
    assert await db.fetchval("SELECT count(*) FROM doses_default") == 0
    assert await db.fetchval(f"SELECT count(*) FROM {partitions.partition_name(far)}") == 1


async def test_partitions_follow_vietnam_month_boundaries(db):
    async def partition_of(when: str) -> str:
        return await db.fetchval(
            "INSERT INTO doses (site_id, record_id, national_id, full_name, birth_date, vaccine, lot, dose_number,"
            " administered_at, batch_id, received_at) VALUES (1, $1, '001099012345', 'A', '1990-01-01', 'x', 'l', 1,"
            " $2, 'b', now()) RETURNING tableoid::regclass::text", when, dt.datetime.fromisoformat(when))

    # Both instants are on 31 August in UTC; the second is already September in Vietnam.
    assert await partition_of("2021-08-31T23:30:00+07:00") == "doses_2021_08"
    assert await partition_of("2021-09-01T00:30:00+07:00") == "doses_2021_09"


async def test_migrate_twice_changes_nothing(db):
    assert await migrate(db) == []
    assert await db.fetchval("SELECT count(*) FROM schema_migrations") >= 1


async def test_a_back_entered_older_record_does_not_overwrite_newer_person_details(settings, db):
    async with running_stack(settings) as stack:
        _, token = await stack.site()
        await stack.post(token, {"doses": [dose(1, full_name="Lê Thị Mai", administered_at="2021-10-01T08:00:00+07:00")]})
        await wait_until(lambda: all_persisted(db, 1), message="first receipt")
        await stack.post(token, {"doses": [dose(1, record_id="OLD-1", full_name="Le Thi Mai (old paper)",
                                                phone=None, administered_at="2021-07-01T08:00:00+07:00")]})
        await wait_until(lambda: all_persisted(db, 2), message="second receipt")
        await stack.post(token, {"doses": [dose(1, record_id="NEW-1", full_name="Lê Thị Mai",
                                                administered_at="2022-01-05T08:00:00+07:00")]})
        await wait_until(lambda: all_persisted(db, 3), message="third receipt")
    person = await db.fetchrow("SELECT full_name, phone, first_administered_at, last_administered_at FROM persons")
    assert person["full_name"] == "Lê Thị Mai" and person["phone"] == "0912345678"
    # The range of administration times spans every dose, older and newer: certifiers read only these months.
    assert person["first_administered_at"].isoformat() == "2021-07-01T01:00:00+00:00"
    assert person["last_administered_at"].isoformat() == "2022-01-05T01:00:00+00:00"
    assert await db.fetchval("SELECT count(*) FROM doses") == 3
