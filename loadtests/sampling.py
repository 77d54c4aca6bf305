"""The server's own metrics, sampled through the run; memory and CPU of its processes; the report's series."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import time
from pathlib import Path

from monitoring import names
from monitoring.status import Snapshot, Unreachable, quantile, scrape
from storage import APPLICATION

MiB = 1024 * 1024
# A process's role from the start of its name in Stack.pids (or the runner's own "locust"): the report's
# CPU plot has one line per role, in this order.
ROLES = (("ingest", "ingest-"), ("workers", "worker-"), ("certifiers", "certifier-"), ("reviewers", "reviewer-"),
         ("notifiers", "notifier-"), ("Postgres", "postgres"), ("Redis", "redis"), ("Locust", "locust"))
# Postgres' share split by whom each backend serves: the role its application_name names (storage.session_settings:
# "vaxline certifier c1"), autovacuum's workers, and `other` (the postmaster and its background processes, backends
# that ended between two samples, anyone else's), in this order.
SERVED = (("workers", "worker"), ("certifiers", "certifier"), ("reviewers", "reviewer"), ("notifiers", "notifier"),
          ("ingest", "ingest"), ("autovacuum", None), ("other", None))
_BACKENDS = "SELECT pid, application_name, backend_type FROM pg_stat_activity"


# -- sampling the server ----------------------------------------------------------

@dataclasses.dataclass
class Sample:
    at: float  # epoch
    snapshot: Snapshot
    ingest_rss_mib: dict[str, float]
    redis_memory_mib: float | None
    cpu_seconds: dict[str, float] = dataclasses.field(default_factory=dict)  # role -> CPU seconds so far
    machine: dict[str, float] = dataclasses.field(default_factory=dict)  # machine_cpu_seconds(): busy, steal
    # Postgres' backends: pid -> (whom it serves, of SERVED; its own CPU seconds so far). Empty when unread.
    backends: dict[int, tuple[str, float]] = dataclasses.field(default_factory=dict)


class Sampler(threading.Thread):
    """Reads ingest's /metrics, the ingest processes' memory, Redis's, and the CPU time of every process role
    (and of each Postgres backend, by whom it serves) every `every` seconds."""

    def __init__(self, url: str, stack, every: float) -> None:
        super().__init__(daemon=True, name="sampler")
        self.url, self.stack, self.every = url, stack, every
        self.samples: list[Sample] = []
        self.watched: dict[str, int] = {}  # processes beside the stack's (Locust), by name
        self.postgres: Backends | None = None  # opened by the thread; kept for a last sample after stop()
        self._done = threading.Event()

    def watch(self, name: str, pid: int) -> None:
        """Count `pid` and its children under the role `name` begins with, from the next sample on."""
        self.watched = {**self.watched, name: pid}  # a new dict: the sampler thread may be reading the old

    def run(self) -> None:
        import redis

        client = redis.Redis.from_url(self.stack.settings.redis_url, socket_timeout=5)
        postmaster = next((pid for name, pid in self.stack.pids.items() if role_of(name) == "Postgres"), None)
        self.postgres = Backends(self.stack.settings.database_url, postmaster)
        while not self._done.is_set():
            self.sample_once(client)
            self._done.wait(self.every)
        client.close()

    def sample_once(self, client) -> None:
        try:
            snapshot = scrape([self.url])
        except Unreachable:
            return
        memory = None
        with contextlib.suppress(Exception):
            memory = client.info("memory")["used_memory"] / MiB
        rss = {name: rss_mib(pid, "VmRSS") for name, pid in self.stack.ingest_pids().items()}
        cpu = role_cpu_seconds({**self.stack.pids, **self.watched})
        backends = self.postgres.read() if self.postgres is not None else {}
        self.samples.append(Sample(time.time(), snapshot, rss, memory, cpu, machine_cpu_seconds(), backends))

    def stop(self) -> None:
        self._done.set()
        self.join(timeout=30)

    def close(self) -> None:
        """After stop() and any last sample: the connection to Postgres."""
        if self.postgres is not None and not self.is_alive():
            self.postgres.close()
            self.postgres = None


class Backends:
    """Postgres' backends and whom each serves, read from pg_stat_activity through a connection of the sampler's
    own (its thread's event loop), and their CPU from /proc: only for the stack's own Postgres (`postmaster`, whose
    children the backends are; None, a server elsewhere, reads nothing). Any failure reads as no backends: the
    split is a figure, not a check."""

    def __init__(self, url: str, postmaster: int | None) -> None:
        import asyncio

        self._url = url
        self._postmaster = postmaster
        self._loop = asyncio.new_event_loop()
        self._conn = None

    def read(self) -> dict[int, tuple[str, float]]:
        if self._postmaster is None:
            return {}
        try:
            return self._loop.run_until_complete(self._read())
        except Exception:  # Postgres restarting or gone: nothing this time, a new connection next time
            self._conn = None
            return {}

    async def _read(self) -> dict[int, tuple[str, float]]:
        import asyncpg

        if self._conn is None or self._conn.is_closed():
            self._conn = await asyncpg.connect(self._url, timeout=5,
                                               server_settings={"application_name": "vaxline loadtest sampler"})
        found = {}
        children_now = set(children(self._postmaster))  # a pid of pg_stat_activity that is not, is no backend of ours
        for row in await self._conn.fetch(_BACKENDS, timeout=5):
            if row["pid"] in children_now and (seconds := cpu_seconds(row["pid"], reaped_children=False)) is not None:
                found[row["pid"]] = (served_by(row["application_name"], row["backend_type"]), seconds)
        return found

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._loop.run_until_complete(self._conn.close(timeout=5))
        self._loop.close()


def served_by(application_name: str | None, backend_type: str | None) -> str:
    """Whom a backend serves, of SERVED: the role its application_name names, autovacuum, or other."""
    if backend_type == "autovacuum worker":
        return "autovacuum"
    words = (application_name or "").split()
    if len(words) >= 2 and words[0] == APPLICATION:
        return next((served for served, role in SERVED if role == words[1]), "other")
    return "other"


def rss_mib(pid: int, field: str) -> float:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    return 0.0


# -- CPU per process role -------------------------------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
CHILDREN_FILES = Path(f"/proc/self/task/{os.getpid()}/children").exists()  # CONFIG_PROC_CHILDREN


def cpu_seconds(pid: int, *, reaped_children: bool = True) -> float | None:
    """utime + stime of `pid` from /proc/<pid>/stat, in seconds, with (by default) cutime + cstime: the time of
    its children that exited and that it waited for, so that a Postgres backend which ends leaves its CPU in
    the postmaster's count instead of dropping out of the role's total. None when the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # the name in parentheses may hold spaces
    used = fields[11:15] if reaped_children else fields[11:13]  # utime stime [cutime cstime]
    return sum(int(ticks) for ticks in used) / CLOCK_TICKS


def children(pid: int) -> list[int]:
    """The live children of `pid`, from /proc/<pid>/task/*/children (or the ppid of every process, where the
    kernel does not offer that file); none when `pid` is gone."""
    if not CHILDREN_FILES:
        return [child for child, parent in _parents() if parent == pid]
    found: list[int] = []
    with contextlib.suppress(OSError):  # the process, or one of its threads, ended meanwhile
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                found += map(int, (task / "children").read_text().split())
    return found


def _parents() -> list[tuple[int, int]]:
    """(pid, ppid) of every process."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            text = stat.read_text()
            found.append((int(stat.parent.name), int(text[text.rindex(")") + 2:].split()[1])))
    return found


def descendants(pid: int) -> set[int]:
    """Every live process below `pid`: Postgres's backends, Locust's workers."""
    found, todo = set(), [pid]
    while todo:
        for child in children(todo.pop()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def role_of(name: str) -> str | None:
    return next((role for role, prefix in ROLES if name.startswith(prefix)), None)


def role_cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds so far of each role, summed over its processes and every child found below them (each
    process counted once); a role none of whose processes could be read is left out."""
    totals: dict[str, float] = {}
    counted: set[int] = set()
    for name, root in pids.items():
        if (role := role_of(name)) is None:
            continue
        for pid in sorted({root} | descendants(root)):
            if pid not in counted and (seconds := cpu_seconds(pid)) is not None:
                counted.add(pid)
                totals[role] = totals.get(role, 0.0) + seconds
    return totals


def cpu_percent(before: Sample, after: Sample) -> dict[str, float]:
    """Each role's CPU between two samples, in % of one core (a restarted process starts its count again:
    a negative difference reads as 0)."""
    seconds = max(after.at - before.at, 1e-9)
    return {role: max(0.0, after.cpu_seconds[role] - before.cpu_seconds[role]) / seconds * 100
            for role, _ in ROLES if role in before.cpu_seconds and role in after.cpu_seconds}


def postgres_percent(before: Sample, after: Sample) -> dict[str, float]:
    """Postgres' CPU between two samples split by whom its backends serve (SERVED), in % of one core: each
    backend counts its CPU since the first sample (all of it when it began in between, as autovacuum's workers
    do), and `other` is what remains of Postgres' whole share (its background processes, and backends that
    ended in between). Empty without both samples' backends and Postgres' share."""
    postgres = cpu_percent(before, after).get("Postgres")
    if postgres is None or not before.backends or not after.backends:
        return {}
    seconds = max(after.at - before.at, 1e-9)
    split = {served: 0.0 for served, _ in SERVED}
    for pid, (served, used) in after.backends.items():
        earlier = before.backends[pid][1] if pid in before.backends else 0.0
        split[served] += max(0.0, used - earlier) / seconds * 100
    split["other"] += max(0.0, postgres - sum(split.values()))
    return split


def machine_cpu_seconds(stat: Path = Path("/proc/stat")) -> dict[str, float]:
    """The whole machine's CPU seconds so far, summed over its cores: `busy` (user, nice, system, irq, softirq;
    a guest's time is counted in user) and `steal` (what the hypervisor gave to other virtual machines while
    this one wanted to run). Empty when unreadable."""
    try:
        ticks = [int(v) for v in stat.read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return {}
    user, nice, system, _idle, _iowait, irq, softirq, steal = (ticks + [0] * 8)[:8]
    return {"busy": (user + nice + system + irq + softirq) / CLOCK_TICKS, "steal": steal / CLOCK_TICKS}


def outside_percent(before: Sample, after: Sample, *, roles: float | None = None) -> dict[str, float]:
    """What the roles do not account for between two samples, in % of one core: `other`, the machine's busy
    CPU beyond every role's (other processes on this machine), and `steal`, the time the hypervisor ran other
    virtual machines instead of this one. On a shared machine these say whether a slow run was the code's
    doing. `roles`: their total in % when the caller counted it (else read from the two samples). Empty without
    the machine's readings."""
    if not before.machine or not after.machine:
        return {}
    seconds = max(after.at - before.at, 1e-9)
    roles = sum(cpu_percent(before, after).values()) if roles is None else roles
    busy = max(0.0, after.machine["busy"] - before.machine["busy"]) / seconds * 100
    steal = max(0.0, after.machine["steal"] - before.machine["steal"]) / seconds * 100
    return {"other": max(0.0, busy - roles), "steal": steal}


def cpu_key(role: str) -> str:
    """The series' key of a role's CPU: cpu_ingest_pct, cpu_postgres_pct ..."""
    return f"cpu_{role.lower()}_pct"


def postgres_key(served: str) -> str:
    """The series' key of Postgres' CPU for whom its backends serve: cpu_postgres_for_certifiers_pct ..."""
    return f"cpu_postgres_for_{served}_pct"


# -- the report's series ------------------------------------------------------------

def series(samples: list[Sample], t0: float) -> list[dict]:
    """The samples as the report's rows: rates and percentiles over each interval."""
    rows = []
    for before, after in zip(samples, samples[1:]):
        b, a = before.snapshot, after.snapshot
        seconds = max(after.at - before.at, 1e-9)

        def rate(name: str) -> float:
            return max(0.0, a.value(name) - b.value(name)) / seconds

        rows.append({
            "t": round(after.at - t0, 1),
            "accepted_per_s": rate(names.DOSES_ACCEPTED),
            "persisted_per_s": max(0.0, a.persisted() - b.persisted()) / seconds,
            "certified_per_s": rate(names.CERTIFICATES_ISSUED),
            "requests_per_s": rate(names.HTTP_REQUESTS),
            "rejected_503_per_s": rate(names.BACKPRESSURE_REJECTIONS),
            "connections": a.value(names.OPEN_CONNECTIONS),
            "backlog": a.value(names.STREAM_BACKLOG),
            "certify_backlog": a.value(names.CERTIFY_BACKLOG),
            "freshness_persisted_p99": quantile_between(b.freshness, a.freshness, "persisted"),
            "freshness_certified_p99": quantile_between(b.freshness, a.freshness, "certified"),
            "ingest_p99": quantile_between(b.latency, a.latency, "/v1/doses"),
            "ingest_rss_mib_max": max(after.ingest_rss_mib.values(), default=None),
            "redis_memory_mib": after.redis_memory_mib,
        } | {cpu_key(role): percent for role, percent in
             (cpu_percent(before, after) | outside_percent(before, after)).items()}
          | {postgres_key(served): percent for served, percent in postgres_percent(before, after).items()})
    return rows


def quantile_between(before: dict, after: dict, key: str, q: float = 0.99) -> float | None:
    """q over the observations between two readings only (None when there were none)."""
    b, a = before.get(key, {}), after.get(key, {})
    if not a or max(a.values()) - max(b.values(), default=0.0) <= 0:
        return None
    return quantile(q, b, a)


def share_within(before: dict, after: dict, key: str, limit: float) -> tuple[float, float]:
    """(observations between the readings, the share of them at or under `limit`, a bucket bound)."""
    b, a = before.get(key, {}), after.get(key, {})
    total = a.get(float("inf"), 0.0) - b.get(float("inf"), 0.0)
    under = a.get(limit, 0.0) - b.get(limit, 0.0)
    return total, (under / total if total else 1.0)
