"""The capacity proof's own correctness: the people it generates, its pace, its thresholds, its
reconciliation, and a small run of each suite through `vaxline loadtest` against the real stack.

The small runs (a few hundred users, tens of thousands of doses, about a minute each) keep the runner,
the Locust suites, the thresholds and the reconciliation working; the full-size figures are in
docs/load-tests.md, measured by the same command.

Covers: a small run of each suite through `vaxline loadtest` on the real stack (150 desk sessions held 20 s,
20,000 doses within 40 s, an overload at 10,000 doses/s for 20 s against a bound of 2 entries a shard): exit
code 0, every threshold, a zero reconciliation gap, 503s with `Retry-After` answered and every dose still
in, the reports written; the generated people (CCCD digits agreeing with province, century, sex and birth
year, never repeated; households sharing a phone; wrong birth dates; second doses after their interval); the
day's pace (every dose reserved once, a morning and an afternoon peak, `when` inverting `due`); the plans'
defaults within the open-file and port limits; thresholds over synthetic metrics (too few sessions, a gap or
an abandoned dose fail the run); the reconciliation finding a lost and an uncertified dose and a record
acknowledged twice.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from loadtests import acks
from loadtests.people import (
    NationalIds,
    due_for_second_dose,
    household,
    wrong_birth_date,
)
from loadtests.plan import Plan, duration, plan_from_args
from loadtests.runner import parser
from loadtests.sampling import Sample
from loadtests.thresholds import summarize
from monitoring import metrics
from monitoring.status import Snapshot
from storage.sites import add_site
from tests.conftest import ROOT

TODAY = dt.date(2026, 12, 4)


# -- people --------------------------------------------------------------------

def test_national_ids_state_province_century_sex_and_year_and_never_repeat():
    from vaxline.provinces import PROVINCES

    rng, ids = random.Random(1), NationalIds(lane=3)
    seen = set()
    for _ in range(20_000):
        for person in household(rng, TODAY, ids):
            nid, born = person.national_id, person.birth_date
            assert len(nid) == 12 and nid.isdigit()
            assert int(nid[:3]) in PROVINCES
            assert int(nid[3]) == (born.year - 1900) // 100 * 2 + (person.sex == "F")
            assert nid[4:6] == f"{born.year % 100:02d}"
            assert nid not in seen
            seen.add(nid)
    assert len(seen) > 40_000


def test_a_household_shares_one_phone_and_each_member_is_a_person_of_their_own():
    rng, ids = random.Random(2), NationalIds(lane=0)
    families = [household(rng, TODAY, ids) for _ in range(500)]
    assert all(len({p.phone for p in family}) == 1 for family in families)
    assert any(len(family) >= 4 for family in families)
    assert all(len({p.national_id for p in family}) == len(family) for family in families)
    assert all(12 <= (TODAY - p.birth_date).days // 365 < 81 for family in families for p in family)


def test_a_wrong_birth_date_is_wrong_and_a_second_dose_waits_for_its_interval():
    rng, ids = random.Random(3), NationalIds(lane=0)
    person = household(rng, TODAY, ids)[0]
    assert wrong_birth_date(rng, person) != person.birth_date.isoformat()
    person.doses, person.last_vaccine = 1, "EU/1/20/1528"  # Comirnaty: 21 days
    person.last_day = TODAY - dt.timedelta(days=20)
    assert not due_for_second_dose(person, TODAY)
    person.last_day = TODAY - dt.timedelta(days=21)
    assert due_for_second_dose(person, TODAY)
    person.doses = 2
    assert not due_for_second_dose(person, TODAY)


# -- pace ------------------------------------------------------------------------

def _users():
    # loadtests.users imports Locust, which patches the standard library with gevent: only in a child.
    code = """
import json, sys
from loadtests.users import Budget, Pace, day_profile, share_of
pace = Pace(day_profile, 1800)
budget = Budget(100_000, pace, start_at=1000.0)
grants = []
while (grant := budget.reserve(7)) is not None:
    grants.append(grant)
print(json.dumps({
    "due": [pace.due(t) for t in range(0, 1801, 60)],
    "roundtrip": [abs(pace.when(pace.due(t)) - t) for t in range(1, 1800, 37)],
    "peak": max(b - a for a, b in zip(pace.cumulative, pace.cumulative[1:])) * pace.STEPS,
    "granted": sum(n for n, _ in grants), "times": [at for _, at in grants],
    "shares": [share_of(1_000_003, 4, i) for i in range(4)],
}))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_the_day_paces_every_dose_once_with_a_morning_and_an_afternoon_peak():
    found = _users()
    due = found["due"]
    assert due[0] == 0 and due[-1] == 1 and due == sorted(due)
    assert max(found["roundtrip"]) < 0.5  # when() inverts due()
    assert 1.3 < found["peak"] < 2.0  # peaks above the day's average, but no spike
    rates = [b - a for a, b in zip(due, due[1:])]
    morning, midday, afternoon = max(rates[:12]), min(rates[12:18]), max(rates[18:24])
    assert morning > midday and afternoon > midday
    assert found["granted"] == 100_000  # every dose reserved exactly once, then no more
    assert found["times"] == sorted(found["times"]) and 1000 <= found["times"][0] and found["times"][-1] == 2800
    assert sum(found["shares"]) == 1_000_003 and max(found["shares"]) - min(found["shares"]) <= 1


# -- command line and thresholds ---------------------------------------------------------

def test_durations_and_the_plans_defaults():
    assert duration("10m") == 600 and duration("90s") == 90 and duration("1h") == 3600 and duration("45") == 45
    with pytest.raises(argparse.ArgumentTypeError):
        duration("ten minutes")
    plan = plan_from_args(parser().parse_args(["sessions"]))
    assert (plan.desks, plan.hold, plan.ingest, plan.locust_processes, plan.destinations) == (42_000, 600, 4, 4, 4)
    # 42,000 connections per side spread under the 20,000 open files of a process and 28,232 ports a destination
    assert plan.desks / plan.ingest < 20_000 and plan.desks / plan.locust_processes < 20_000
    assert plan.desks / plan.destinations < 28_232
    day = plan_from_args(parser().parse_args(["day", "--within", "30m"]))
    assert (day.doses, day.within) == (5_000_000, 1800)
    overload = plan_from_args(parser().parse_args(["overload", "--rate", "1000", "--within", "2m"]))
    assert overload.doses == 120_000


def _snapshot(*, connections: float, requests: float, fast: float, certified: float, within: float) -> Snapshot:
    return Snapshot(0.0, {metrics.OPEN_CONNECTIONS: connections, metrics.HTTP_REQUESTS: requests},
                    {}, {"certified": {2.0: within, float("inf"): certified}},
                    {"/v1/doses": {0.25: fast, float("inf"): requests}})


def _summary(plan: Plan, **reconciliation) -> dict:
    samples = [Sample(100.0, _snapshot(connections=500, requests=0, fast=0, certified=0, within=0), {"i": 80}, 30),
               Sample(110.0, _snapshot(connections=480, requests=500, fast=500, certified=900, within=899), {}, 30),
               Sample(200.0, _snapshot(connections=500, requests=1000, fast=995, certified=1000, within=995), {}, 30)]
    checked = {"acknowledged": 1000, "missing": 0, "persisted_unacknowledged": 0, "gap": 0,
               "abandoned_by_clients": 0} | reconciliation
    stats = {"POST /v1/doses": {"99%": "120", "50%": "4"}, "Aggregated": {"Failure Count": "0", "Request Count": "9"}}
    return summarize(plan, dt.datetime.now(dt.timezone.utc), 90.0, samples, {"hold start": 100.0, "hold end": 200.0},
                     stats, [], checked, 0, {"ingest-0": 120.0}, 0, 1.0)


def _verdicts(summary: dict) -> dict[str, bool]:
    return {t["name"]: t["passed"] for t in summary["thresholds"]}


def test_thresholds_read_the_servers_figures_over_the_hold_and_fail_what_misses():
    plan = Plan(shape="sessions", desks=480, citizens=0, clerks=0, spawn_rate=10, hold=100, sample_every=5)
    summary = _summary(plan)
    assert summary["passed"], summary["thresholds"]
    assert summary["figures"]["ingest within 250 ms, server"].startswith("99.500%")
    # More desks than the server ever held at once: that threshold, and so the run, fails.
    strict = _summary(Plan(shape="sessions", desks=481, citizens=0, clerks=0, spawn_rate=10, hold=100))
    assert not strict["passed"] and not _verdicts(strict)["sessions held (server's open connections, min over the hold)"]
    assert _verdicts(summary)["202 -> certificate p99 (server)"]  # 99.5% within 2 s
    lost = _summary(plan, gap=1, missing=1)
    assert not lost["passed"]
    assert not _verdicts(lost)["reconciliation gap (acknowledged, not stored once and certified)"]
    abandoned = _summary(plan, abandoned_by_clients=3)
    assert not _verdicts(abandoned)["doses a client started posting and never got a 202 for"]


# -- the reconciliation against Postgres ---------------------------------------------------

async def test_the_acknowledgement_check_finds_a_lost_and_an_uncertified_dose(db, tmp_path):
    site, _ = await add_site(db, code="LT-001-00001", name="Trạm thử", province=1, kind="fixed")
    at = dt.datetime(2026, 12, 1, 9, tzinfo=dt.timezone.utc)
    for n, nid in ((1, "001190000001"), (2, "001190000002")):
        record = f"LTP-{n:06d}"
        await db.execute(
            "INSERT INTO doses (site_id, record_id, national_id, full_name, birth_date, vaccine, lot, dose_number,"
            " administered_at, batch_id, received_at) VALUES ($1, $2, $3, 'X', '1990-01-01', 'EU/1/21/1529',"
            " 'L1', 1, $4, 'b', $4)", site.site_id, record, nid, at)
    await db.execute(
        "INSERT INTO certificates (uvci, national_id, status, fingerprint, view_fingerprint, full_name, birth_date,"
        " doses, kid, hc1, issued_at, expires_at) VALUES ('URN:UVCI:01:VN:T', '001190000001', 'current', '', '',"
        " 'X', '1990-01-01', $1, '', 'HC1:', now(), now())",
        json.dumps([{"site": "LT-001-00001", "record_id": "LTP-000001"}]))
    folder = tmp_path / "acks"
    folder.mkdir()
    # Records 1-3 acknowledged: 1 stored and certified, 2 stored but on no certificate, 3 never stored.
    (folder / "acks-1.tsv").write_text("LT-001-00001\tLTP-\t1\t3\n")
    checked = await acks.check(db, folder)
    assert checked["acknowledged"] == 3 and checked["missing"] == 1 and checked["not_certified"] == 1
    assert checked["stored_twice"] == 0 and checked["gap"] == 2
    (folder / "acks-2.tsv").write_text("LT-001-00001\tLTP-\t1\t1\n")  # the same record acknowledged twice
    assert (await acks.check(db, folder))["acknowledged_twice"] == 1


# -- small runs of each suite ----------------------------------------------------------------

SMALL = {
    "sessions": ["--users", "150", "--hold", "20s", "--think", "5,15", "--citizens", "4", "--clerks", "1",
                 "--spawn-rate", "50", "--locust-processes", "2", "--ingest", "2", "--destinations", "2"],
    "day": ["--doses", "20000", "--within", "40s", "--desks", "100", "--citizens", "4", "--clerks", "2",
            "--spawn-rate", "100"],
    # A backlog bound of two entries a shard makes the overload certain even on a fast machine, and few
    # enough doses that the certifiers catch up within seconds.
    "overload": ["--rate", "10000", "--within", "20s", "--desks", "20", "--clerks", "8", "--max-backlog-entries", "2"],
}


@pytest.fixture
def loadtest(services, tmp_path):
    pg_url, redis_url = services[0], services[1]

    def run(shape: str) -> tuple[int, dict, Path]:
        env = os.environ | {"DATABASE_URL": pg_url, "REDIS_URL": redis_url}
        command = [sys.executable, "-m", "commands", "loadtest", shape, *SMALL[shape], "--sites", "10",
                   "--sample-every", "2", "--port", str(18500 + list(SMALL).index(shape)), "--out", str(tmp_path)]
        with (tmp_path / f"{shape}.log").open("w") as log:  # read by the personal-data check of the whole run
            exit_code = subprocess.run(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                       timeout=600).returncode
        folder = next(tmp_path.glob(f"{shape}-*"))
        return exit_code, json.loads((folder / "summary.json").read_text()), folder

    return run


def _explain(summary: dict) -> str:
    return json.dumps([summary["thresholds"], summary["failures"][:5]], ensure_ascii=False)


def test_a_small_sessions_run_holds_its_sessions_and_reconciles(loadtest):
    exit_code, summary, folder = loadtest("sessions")
    assert exit_code == 0 and summary["passed"], _explain(summary)
    verdicts = _verdicts(summary)
    assert verdicts["sessions held (server's open connections, min over the hold)"]
    assert summary["reconciliation"]["gap"] == 0 and summary["reconciliation"]["acknowledged"] > 0
    assert summary["phases"]["hold end"] - summary["phases"]["hold start"] >= 20
    assert (folder / "report.html").exists() and (folder / "locust.html").exists()
    assert "Open connections" in (folder / "report.html").read_text()


def test_a_small_day_posts_every_dose_within_its_time_and_reconciles(loadtest):
    exit_code, summary, folder = loadtest("day")
    assert exit_code == 0 and summary["passed"], _explain(summary)
    assert summary["reconciliation"]["acknowledged"] == 20_000
    assert summary["reconciliation"]["gap"] == 0 and summary["reconciliation"]["vaxline_reconcile_unexplained"] == 0
    assert summary["figures"]["doses acknowledged (202)"] == 20_000


def test_a_small_overload_is_refused_with_retry_after_and_still_gets_everything_in(loadtest):
    exit_code, summary, folder = loadtest("overload")
    assert exit_code == 0 and summary["passed"], _explain(summary)
    verdicts = _verdicts(summary)
    assert verdicts["503 with Retry-After under overload"]
    assert summary["reconciliation"]["gap"] == 0 and summary["reconciliation"]["abandoned_by_clients"] == 0
    assert summary["locust"].get("POST /v1/doses (503 Retry-After)", {}).get("Request Count", "0") != "0"
