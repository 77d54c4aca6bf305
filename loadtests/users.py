"""Locust users of vaxline: vaccination desks, citizens, back-entry clerks.

Imported by the suites (`sessions.py`, `day.py`, `overload.py`), which add a
load shape each. Every option is a Locust command-line option (also settable
as LOCUST_VX_... in the environment and in the web UI), so `locust -f
loadtests/sessions.py` runs the same users that `vaxline loadtest` drives.

What a user checks is what its person would: a desk's 202 must say every dose
was accepted and carry a batch id; a citizen's lookup must find the
certificate of someone vaccinated a while ago and must not find one for a
wrong birth date. A desk whose post is refused with 503 waits the
`Retry-After` and posts the same records again, so nothing it was told is
accepted, nor anything it still holds, is lost. Each process appends the
batches that got their 202 to `<acks>/acks-<pid>.tsv` (site code, record-id
prefix, first sequence number, count): the reconciliation reads them back.
"""

from __future__ import annotations

import bisect
import collections
import datetime as dt
import functools
import gc
import itertools
import json
import math
import os
import random
import re
import time
import urllib.request
from pathlib import Path

import gevent
import locust.argument_parser
import locust.runners
import msgspec
from locust import FastHttpUser, between, events, task

from . import people

DOSES = "POST /v1/doses"
# Locust's master takes a worker for lost after 3 s without a heartbeat and gives its users to the others,
# while the "lost" worker keeps running them: on two cores saturated on purpose, 42,000 sessions became
# 70,000. A worker that is merely busy is given a minute.
locust.runners.HEARTBEAT_LIVENESS = 60
# A worker handling the master's spawn message (one a second while users start) tells its custom options
# from Locust's own by calling argument_parser.default_args_dict() once per option: a whole argument parser
# built and parsed about 60 times a message, 6 ms each (locust 2.47, WorkerRunner.handle_message). py-spy:
# 91% of a worker's samples during the ramp of 100,000 desks, each of 8 workers at 18% of a core with a few
# hundred users; the 42,000-desk ramp paid it on 4 workers. Locust's defaults do not change within a
# process: built once here.
locust.argument_parser.default_args_dict = functools.cache(locust.argument_parser.default_args_dict)
RETRY_FOR = 120.0  # seconds a desk keeps trying one batch
LOOKUP_AFTER = 10.0  # a citizen looks up a certificate at least this long after the 202 (its SLO is 2 s)
# The batches' JSON, as compact UTF-8. json.dumps was 6% of a Locust worker's samples in a day (py-spy), 2.5 us a
# dose; msgspec (the server's own library) 0.2 us. Locust shares the two cores with the stack it measures.
_JSON = msgspec.json.Encoder()
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never through a proxy
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')  # the portal's form token (ingest/portal/rendering.py)


@events.init_command_line_parser.add_listener
def _options(parser) -> None:
    group = parser.add_argument_group("vaxline")
    group.add_argument("--vx-sites", default="", env_var="LOCUST_VX_SITES",
                       help="JSON file of the sites to post as: [{\"code\", \"token\"}] (vaxline loadtest prepare)")
    group.add_argument("--vx-destinations", default="", env_var="LOCUST_VX_DESTINATIONS",
                       help="comma-separated base URLs the users spread over (default: --host)")
    group.add_argument("--vx-acks", default="", env_var="LOCUST_VX_ACKS",
                       help="folder to record every acknowledged batch in, for the reconciliation")
    group.add_argument("--vx-phases", default="", env_var="LOCUST_VX_PHASES",
                       help="file the shape appends its phases to (JSON lines)")
    group.add_argument("--vx-seed", type=int, default=0, env_var="LOCUST_VX_SEED")
    group.add_argument("--vx-desks", type=int, default=100, env_var="LOCUST_VX_DESKS", help="SiteDesk users")
    group.add_argument("--vx-citizens", type=int, default=10, env_var="LOCUST_VX_CITIZENS", help="CitizenLookup users")
    group.add_argument("--vx-clerks", type=int, default=2, env_var="LOCUST_VX_CLERKS", help="BackEntry users")
    group.add_argument("--vx-spawn-rate", type=float, default=50, env_var="LOCUST_VX_SPAWN_RATE")
    group.add_argument("--vx-hold", type=float, default=600, env_var="LOCUST_VX_HOLD", help="sessions: seconds held")
    group.add_argument("--vx-think", default="120,270", env_var="LOCUST_VX_THINK",
                       help="sessions: a desk's seconds between posts, min,max (below the server's keep-alive)")
    group.add_argument("--vx-doses", type=int, default=100_000, env_var="LOCUST_VX_DOSES",
                       help="day/overload: doses to post in all")
    group.add_argument("--vx-within", type=float, default=600, env_var="LOCUST_VX_WITHIN",
                       help="day/overload: seconds to post them in")
    group.add_argument("--vx-backentry-share", type=float, default=0.5, env_var="LOCUST_VX_BACKENTRY_SHARE",
                       help="day/overload: share of the doses back-entered in 1,000-dose batches")
    group.add_argument("--vx-start-at", type=float, default=0, env_var="LOCUST_VX_START_AT",
                       help="day/overload: epoch at which the day begins (default: when a process's first user asks)")
    group.add_argument("--vx-expect-503", action="store_true", env_var="LOCUST_VX_EXPECT_503",
                       help="overload: a 503 with Retry-After is the expected answer, not a failure")


# -- the day's pace -------------------------------------------------------------

def day_profile(x: float) -> float:
    """Relative dose rate at fraction x of a vaccination day: a morning and a (lower) afternoon peak."""
    return 0.45 + math.exp(-((x - 0.27) / 0.1) ** 2 / 2) + 0.75 * math.exp(-((x - 0.7) / 0.11) ** 2 / 2)


def flat_profile(x: float) -> float:
    return 1.0


class Pace:
    """The cumulative share of a run's doses due by each moment: F(0) = 0, F(within) = 1."""

    STEPS = 600

    def __init__(self, profile, within: float) -> None:
        self.within = within
        rates = [profile((i + 0.5) / self.STEPS) for i in range(self.STEPS)]
        total = sum(rates)
        self.cumulative = [0.0, *itertools.accumulate(r / total for r in rates)]

    def due(self, elapsed: float) -> float:
        if elapsed <= 0:
            return 0.0
        if elapsed >= self.within:
            return 1.0
        position = elapsed / self.within * self.STEPS
        i = int(position)
        return self.cumulative[i] + (self.cumulative[i + 1] - self.cumulative[i]) * (position - i)

    def when(self, share: float) -> float:
        """The elapsed seconds at which `share` of the doses is due."""
        if share <= 0:
            return 0.0
        if share >= 1:
            return self.within
        i = max(0, bisect.bisect_left(self.cumulative, share) - 1)
        step = self.cumulative[i + 1] - self.cumulative[i]
        return (i + (share - self.cumulative[i]) / max(step, 1e-12)) * self.within / self.STEPS


class Budget:
    """One process's doses of the run, handed out as reservations along the pace: a user reserves its next
    batch and learns when it is due, so the process posts at the pace whatever its users' batch sizes."""

    def __init__(self, doses: int, pace: Pace, start_at: float) -> None:
        self.doses, self.pace, self.start_at, self.reserved = doses, pace, start_at, 0

    def reserve(self, wanted: int) -> tuple[int, float] | None:
        """(doses reserved, epoch at which they are due), or None once the day's doses are all handed out."""
        n = min(wanted, self.doses - self.reserved)
        if n <= 0:
            return None
        self.reserved += n
        return n, self.start_at + self.pace.when(self.reserved / self.doses)


def share_of(total: int, parts: int, index: int) -> int:
    return total // parts + (1 if index < total % parts else 0)


# -- per-process state ----------------------------------------------------------

class Process:
    """What the users of one Locust process share: sites, destinations, vaccinated people, acks, budgets."""

    def __init__(self, environment) -> None:
        options = environment.parsed_options
        self.options = options
        runner = environment.runner
        self.index = getattr(runner, "worker_index", 0) if runner is not None else 0
        self.processes = _processes(options)
        self.rng = random.Random(options.vx_seed * 1000 + self.index)
        # Record ids are per site: the tag keeps two runs (seeds) and two processes apart.
        self.tag = f"L{options.vx_seed % 1000:03d}{self.index:02d}"
        self.sites = json.loads(Path(options.vx_sites).read_text()) if options.vx_sites else []
        if not self.sites:
            raise RuntimeError("no sites: pass --vx-sites FILE (vaxline loadtest prepare writes one)")
        self.destinations = [d for d in options.vx_destinations.split(",") if d] or [environment.host]
        # Bounded: enough people to look up and to bring back, without a collector walking millions of them.
        self.vaccinated: collections.deque = collections.deque(maxlen=20_000)  # (acked_at, Person)
        self.second_due: collections.deque = collections.deque(maxlen=50_000)  # Person with an earlier first dose
        self.users = itertools.count()
        self._acks = self._failures = None
        self.started = self.acked = self.in_flight = 0  # doses
        if options.vx_acks:
            Path(options.vx_acks).mkdir(parents=True, exist_ok=True)
            self._acks = open(Path(options.vx_acks) / f"acks-{os.getpid()}.tsv", "a", buffering=1 << 16)
        self.budgets: dict[str, Budget] = {}
        self.ids = people.NationalIds(self.index)

    def acknowledged(self, site: str, prefix: str, first: int, count: int) -> None:
        if self._acks:
            self._acks.write(f"{site}\t{prefix}\t{first}\t{count}\n")

    def failed(self, what: str) -> None:
        """A failed request, whenever it happens (Locust's own statistics restart at the measured phase)."""
        if self._failures is None and self.options.vx_acks:
            self._failures = open(Path(self.options.vx_acks) / f"failures-{os.getpid()}.tsv", "a", buffering=1)
        if self._failures:
            self._failures.write(f"{time.time():.3f}\t{' '.join(what.split())[:300]}\n")

    def interrupted(self, began: float, count: int, name: str, stopped: BaseException, outcome: str) -> None:
        """A post broken off before its answer: Locust killed its user mid-request, or something raised;
        `outcome`: whether it was answered when posted again. The runner lists them."""
        if self.options.vx_acks:
            with (Path(self.options.vx_acks) / f"interrupted-{os.getpid()}.tsv").open("a") as out:
                out.write(f"{began:.3f}\t{time.time():.3f}\t{count}\t{name}\t{type(stopped).__name__}\t{outcome}\n")

    def flush(self) -> None:
        """Acknowledgements to disk, and how many doses were posted and acknowledged (a batch started and
        never acknowledged was abandoned by its client: a stop that came before its 202)."""
        if self._acks:
            self._acks.flush()
            counts = {"started": self.started, "acknowledged": self.acked, "in_flight": self.in_flight}
            (Path(self.options.vx_acks) / f"counts-{os.getpid()}.json").write_text(json.dumps(counts))

    def budget(self, kind: str) -> Budget | None:
        """This process's budget of the run's doses for a kind of user (desk or clerk), made once; None
        when the suite has no pace (sessions: desks post at their own think time)."""
        profile = PACE["profile"]
        if profile is None:
            return None
        if kind not in self.budgets:
            o = self.options
            # Locust gives each worker process an equal number of each kind of user (the runner makes the
            # counts multiples of the processes), so each process takes an equal part of that kind's doses.
            clerk_doses = round(o.vx_doses * o.vx_backentry_share) if o.vx_clerks else 0
            doses = share_of(clerk_doses if kind == "clerk" else o.vx_doses - clerk_doses, self.processes, self.index)
            self.budgets[kind] = Budget(doses, Pace(profile, o.vx_within), o.vx_start_at or time.time())
        return self.budgets[kind]


def _processes(options) -> int:
    """How many Locust processes share the run: --processes (-1: one per core), or this one alone."""
    count = getattr(options, "processes", None) or 1
    return (os.cpu_count() or 1) if count == -1 else max(1, count)


_process: Process | None = None


def process(environment) -> Process:
    global _process
    if _process is None:
        _process = Process(environment)
    return _process


@events.request.add_listener
def _record_failure(request_type, name, exception=None, **_) -> None:
    if exception is not None and _process is not None:
        _process.failed(f"{request_type} {name}: {exception}")


@events.spawning_complete.add_listener
def _freeze(**_) -> None:
    # Tens of thousands of users and their sessions live for the whole run: take them out of the garbage
    # collector's walks, whose pauses would otherwise show up as every user's latency at once.
    gc.freeze()


@events.test_stop.add_listener
def _flush(environment, **_) -> None:
    if _process is not None:
        _process.flush()


@events.quitting.add_listener
def _close(environment, **_) -> None:
    if _process is not None:
        _process.flush()


# -- users ------------------------------------------------------------------------

class SessionUser(FastHttpUser):
    """A user with one keep-alive connection (its session) to one of the destinations, opened at start."""

    abstract = True
    concurrency = 1  # one connection: a desk's (or a citizen's app's) session
    network_timeout = 60.0
    connection_timeout = 30.0

    def __init__(self, environment) -> None:
        self.shared = process(environment)
        self.number = next(self.shared.users)
        # Spreading the sessions over the destinations keeps each (address, port) under the 28,232
        # loopback ports the kernel has per destination.
        self.host = self.shared.destinations[self.number % len(self.shared.destinations)]
        super().__init__(environment)
        self.rng = random.Random(self.shared.rng.random())

    def on_start(self) -> None:
        # Opening the desk's (or the citizen's) app: the session exists from here on, not from the first post.
        self.client.get("/healthz", name="open session")


class PostingUser(SessionUser):
    """A user that posts dose batches as one site."""

    abstract = True

    def __init__(self, environment) -> None:
        super().__init__(environment)
        n = self.number
        site = self.shared.sites[(n * 7919 + self.shared.index) % len(self.shared.sites)]
        self.site, self.token = site["code"], site["token"]
        self.prefix, self.sequence = f"{self.shared.tag}-{n:05d}-", 0
        self.headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        self.reservation: tuple[int, float] | None = None

    def paced_budget(self) -> Budget | None:
        return None

    def batch_size(self) -> int:
        raise NotImplementedError

    def next_batch(self) -> int:
        """How many doses to post now; 0 when this user is pacing (its reservation is made or not yet due)."""
        budget = self.paced_budget()
        if budget is None:
            return self.batch_size()
        if self.reservation is None:
            self.reservation = budget.reserve(self.batch_size())
            return 0
        if self.reservation[1] > time.time():
            return 0
        (n, _), self.reservation = self.reservation, None
        return n

    def paced_wait(self) -> float | None:
        """Seconds to the reserved batch (5 s idling once the day is handed out); None when not paced."""
        if self.paced_budget() is None:
            return None
        if self.reservation is None:
            return 0.0 if self.paced_budget().reserved < self.paced_budget().doses else 5.0
        return max(0.0, self.reservation[1] - time.time())

    def post(self, doses: list[dict], persons: list[people.Person]) -> bool:
        """Post one batch until it gets its 202, then record it; whether it did.

        A 503 is waited out for its Retry-After, a lost connection or a 5xx for a few seconds, and the
        same records are posted again (at worst they are stored as duplicates of themselves), for up to
        RETRY_FOR: a desk does not throw away what it has entered. Each failed attempt is a failure. A user
        stopped mid-post asks once more before it stops (`_posted_again`)."""
        first = self.sequence - len(doses) + 1
        body = _JSON.encode({"doses": doses})
        self.shared.started += len(doses)
        self.shared.in_flight += len(doses)
        name, deadline, began, stopping = DOSES, time.monotonic() + RETRY_FOR, time.time(), None
        try:
            try:
                while True:
                    answer, pause = self._attempt(body, name, len(doses))
                    if answer is not None or pause is None or time.monotonic() > deadline:
                        break
                    name = f"{DOSES} (retry)"
                    gevent.sleep(pause)
            except gevent.GreenletExit as stop:
                # Locust stopped this user mid-post. gevent throws a kill into a greenlet at its next switch,
                # and a user whose wait ended in between has begun a post by then. A desk does not walk away
                # from a batch it sent: it asks once more (the records make a repeat idempotent), then stops.
                stopping, answer = stop, self._posted_again(body)
                self.shared.interrupted(began, len(doses), name, stop,
                                        "answered when posted again" if answer else "abandoned")
        except BaseException as stopped:
            self.shared.interrupted(began, len(doses), name, stopped, "abandoned")
            raise
        finally:
            self.shared.in_flight -= len(doses)
        if stopping is not None:
            if answer is not None:
                self._record(answer, persons, first, len(doses))
            raise stopping
        if answer is None:
            return False
        rejected = self._record(answer, persons, first, len(doses))
        if self.rng.random() < 0.05:
            self.client.get(f"/v1/batches/{answer['batch_id']}", headers=self.headers, name="/v1/batches/[id]")
        return not rejected

    def _record(self, answer: dict, persons: list[people.Person], first: int, count: int) -> set:
        """Record a 202: its accepted doses acknowledged, its persons vaccinated; the rejected indexes."""
        self.shared.acked += answer["accepted"]
        rejected = {r.get("index") for r in answer.get("rejected") or []}
        if rejected:
            for i in range(count):
                if i not in rejected:
                    self.shared.acknowledged(self.site, self.prefix, first + i, 1)
        else:
            self.shared.acknowledged(self.site, self.prefix, first, count)
        now = time.time()
        self.shared.vaccinated.extend((now, p) for p in persons)
        return rejected

    def _posted_again(self, body: bytes) -> dict | None:
        """The 202 of a batch whose post a stop broke off, asked for once more outside Locust's statistics,
        on a connection of its own: the user's one connection may still hold the broken exchange. A failure
        is recorded as one."""
        request = urllib.request.Request(f"{self.host}/v1/doses", data=body, headers=self.headers, method="POST")
        try:
            with _DIRECT.open(request, timeout=30) as response:
                answer = json.loads(response.read())
                if response.status == 202 and answer.get("batch_id"):
                    return answer
                self.shared.failed(f"POST {DOSES} (again, after a stop): {response.status}")
        except Exception as e:  # an answer other than 2xx, or none
            self.shared.failed(f"POST {DOSES} (again, after a stop): {e}")
        return None

    def _attempt(self, body: bytes, name: str, count: int) -> tuple[dict | None, float | None]:
        """(the 202's body, None), or (None, seconds to wait before posting again), or (None, None): give up."""
        with self.client.post("/v1/doses", data=body, headers=self.headers, name=name,
                              catch_response=True) as response:
            status = response.status_code
            if status == 503 and response.headers.get("Retry-After"):
                retry_after = float(response.headers["Retry-After"])
                if self.shared.options.vx_expect_503:
                    response.request_meta["name"] = f"{DOSES} (503 Retry-After)"
                    response.success()
                else:
                    response.failure(f"503, Retry-After {retry_after:g}")
                return None, retry_after * self.rng.uniform(0.5, 1.0)
            if status == 202:
                answer = response.json()
                if answer.get("accepted") != count or answer.get("rejected") or not answer.get("batch_id"):
                    response.failure(f"not every dose accepted: {str(answer.get('rejected'))[:200]}")
                return answer, None
            response.failure(f"{status}: {(response.text or '')[:200]}")
            return None, (self.rng.uniform(1, 5) if status == 0 or status >= 500 else None)

    def next_record(self) -> str:
        self.sequence += 1
        return f"{self.prefix}{self.sequence:06d}"


class SiteDesk(PostingUser):
    """A vaccination desk: small batches as people are vaccinated, a post every few minutes."""

    weight = 100

    def __init__(self, environment) -> None:
        super().__init__(environment)
        self.household: list[people.Person] = []
        lo, hi = (float(v) for v in self.shared.options.vx_think.split(","))
        self.think = (lo, hi)
        self.first_wait: float | None = self.rng.uniform(0, hi)  # desks do not all post in the same second

    def paced_budget(self) -> Budget | None:
        return self.shared.budget("desk")

    def batch_size(self) -> int:
        # A busy day's desks (paced) post fuller batches than a desk at its ordinary pace.
        return self.rng.randint(1, 10) if self.paced_budget() else people.desk_batch_size(self.rng)

    def wait_time(self) -> float:
        paced = self.paced_wait()
        if paced is not None:
            return paced
        if self.first_wait is not None:
            wait, self.first_wait = self.first_wait, None
            return wait
        return self.rng.uniform(*self.think)

    @task
    def vaccinate(self) -> None:
        wanted = self.next_batch()
        if not wanted:
            return
        now = dt.datetime.now(people.VIETNAM) - dt.timedelta(seconds=30)
        today = now.date()
        doses, persons = [], []
        for _ in range(wanted):
            person = self._next_person(today)
            doses.append(people.dose(self.rng, person, self.next_record(), now))
            persons.append(person)
        self.post(doses, persons)

    def _next_person(self, today: dt.date) -> people.Person:
        """Someone back for their second dose now and then; otherwise the next of a household."""
        due = self.shared.second_due
        if due and self.rng.random() < 0.3 and people.due_for_second_dose(due[0], today):
            return due.popleft()
        if not self.household:
            self.household = people.household(self.rng, today, self.shared.ids)
        return self.household.pop()


class BackEntry(PostingUser):
    """A clerk back-entering paper records of the 2021 campaign, 1,000 doses a batch."""

    fixed_count = 0  # set by the suite from --vx-clerks

    def paced_budget(self) -> Budget | None:
        return self.shared.budget("clerk")

    def batch_size(self) -> int:
        return 1000

    def wait_time(self) -> float:
        paced = self.paced_wait()
        return self.rng.uniform(20, 40) if paced is None else paced

    @task
    def back_enter(self) -> None:
        wanted = self.next_batch()
        doses, persons = [], []
        while len(doses) < wanted:
            for person in people.household(self.rng, people.BACK_ENTRY_FROM, self.shared.ids)[: wanted - len(doses)]:
                doses.append(people.dose(self.rng, person, self.next_record(), people.back_entry_time(self.rng)))
                persons.append(person)
        if doses and self.post(doses, persons):
            self.shared.second_due.extend(persons)


class CitizenLookup(SessionUser):
    """A citizen looking up their certificate, through the API or the portal's page, sometimes with a mistyped
    birth date, and downloading its QR."""

    fixed_count = 0  # set by the suite from --vx-citizens
    wait_time = between(3, 10)

    @task
    def look_up(self) -> None:
        person = self._someone_vaccinated_a_while_ago()
        if person is None:
            return
        wrong = self.rng.random() < 0.15
        body = {"national_id": person.national_id,
                "birth_date": people.wrong_birth_date(self.rng, person) if wrong else person.birth_date.isoformat()}
        name = "/v1/certificates/lookup (wrong birth date)" if wrong else "/v1/certificates/lookup"
        with self.client.post("/v1/certificates/lookup", json=body, name=name, catch_response=True) as response:
            if wrong:
                if response.status_code == 404:
                    response.success()
                else:
                    response.failure(f"a wrong birth date answered {response.status_code}")
                return
            if response.status_code != 200 or not response.json().get("hc1", "").startswith("HC1:"):
                response.failure(f"no certificate {LOOKUP_AFTER:.0f} s after the 202: {response.status_code}")
                return
            link = response.json()["link"]  # the QR image needs the lookup's signed link: a UVCI alone is no secret
        if self.rng.random() < 0.3:
            self.client.get(f"{link}&format=png", name="/v1/certificates/[uvci]?format=png")

    @task
    def look_up_on_the_page(self) -> None:
        """The portal's lookup as a browser does it: GET / (the form, its CSRF cookie and token), then the form
        post, answered with the certificate page (or the one miss page for a wrong birth date)."""
        person = self._someone_vaccinated_a_while_ago()
        if person is None:
            return
        with self.client.get("/", name="GET / (lookup page)", catch_response=True) as response:
            token = _CSRF.search(response.text or "")
            if response.status_code != 200 or token is None:
                response.failure(f"the lookup page answered {response.status_code} without its form")
                return
        wrong = self.rng.random() < 0.15
        form = {"csrf": token.group(1), "national_id": person.national_id,
                "birth_date": people.wrong_birth_date(self.rng, person) if wrong else person.birth_date.isoformat()}
        name = "POST / (lookup page, wrong birth date)" if wrong else "POST / (lookup page)"
        with self.client.post("/", data=form, name=name, catch_response=True) as response:
            if wrong:
                if response.status_code == 404:
                    response.success()  # the miss page: what a wrong birth date must get
                else:
                    response.failure(f"a wrong birth date answered {response.status_code}")
            elif response.status_code != 200 or 'id="qr"' not in (response.text or ""):
                response.failure(f"no certificate page {LOOKUP_AFTER:.0f} s after the 202: {response.status_code}")

    def _someone_vaccinated_a_while_ago(self) -> people.Person | None:
        """A random person acknowledged at least LOOKUP_AFTER ago (the deque is in acknowledgement order)."""
        vaccinated, cutoff = self.shared.vaccinated, time.time() - LOOKUP_AFTER
        if not vaccinated:
            return None
        i = self.rng.randrange(len(vaccinated))
        while i and vaccinated[i][0] > cutoff:
            i //= 2
        acked_at, person = vaccinated[i]
        return person if acked_at <= cutoff else None


# The suite sets the pace of its run: none (desks at their own think time), "day" or "flat".
PACES = {"day": day_profile, "flat": flat_profile}
PACE = {"profile": None}


def pace(name: str | None) -> None:
    PACE["profile"] = PACES[name] if name else None


@events.init.add_listener
def _user_counts(environment, **_) -> None:
    """Citizens and clerks come in fixed numbers; none at all when the count is 0."""
    options = environment.parsed_options
    if options is None:
        return
    for user_class, count in ((CitizenLookup, options.vx_citizens), (BackEntry, options.vx_clerks)):
        user_class.fixed_count = count
        if count == 0 and user_class in environment.user_classes:
            environment.user_classes.remove(user_class)
            environment.user_classes_by_name.pop(user_class.__name__, None)
