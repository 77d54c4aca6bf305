"""What one load-test run does: the plan, built from the command line and each shape's defaults."""

from __future__ import annotations

import argparse
import dataclasses


@dataclasses.dataclass(frozen=True)
class Plan:
    """What one run does; built from the command line by `plan_from_args`."""

    shape: str  # sessions | day | overload
    desks: int
    citizens: int
    clerks: int
    spawn_rate: float
    hold: float = 0.0  # sessions
    think: str = "120,270"  # sessions
    doses: int = 0  # day, overload
    within: float = 0.0  # day, overload
    backentry_share: float = 0.5
    ingest: int = 4
    destinations: int = 4
    locust_processes: int = 4
    workers: int = 2
    certifiers: int = 2
    reviewers: int = 1
    shards: int = 4
    port: int = 18080
    sites: int = 500
    sample_every: float = 5.0
    max_backlog_entries: int = 50_000
    # overload: doses that benchmarks.e2e posts after the run, in the same run, to measure the rate the stack
    # sustains, which goodput is held to (0: not measured, and no goodput threshold)
    sustained_doses: int = 0
    seed: int = 1
    ingest_p99_limit: float = 0.25  # Locust's p99 of POST /v1/doses
    server_p99_limit: float = 0.1  # the server's own, from its histogram (0.1 s is a bucket bound)
    certified_p99_limit: float = 2.0
    ingest_memory_limit_mib: float = 300.0

    @property
    def paced(self) -> bool:
        return self.shape in ("day", "overload")

    @property
    def addresses(self) -> list[str]:
        return [f"127.0.0.{i + 1}" for i in range(self.destinations)]


SHAPE_DEFAULTS = {
    # 42,000 desks over 4 ingest processes, 4 destinations and 4 Locust workers: about 10,500 connections
    # each, under the 20,000 open files a process may have and the 28,232 ports of a destination.
    # 100 new sessions a second saturated both cores here (each opens a connection and its desk begins
    # posting): the ramp then left requests queued well into the hold. 50 a second is a 14-minute ramp.
    "sessions": dict(desks=42_000, citizens=20, clerks=2, spawn_rate=50, hold=600, sites=1_000),
    # A busy day's desks post every few seconds: a thousand of them carry the desks' share of the day.
    "day": dict(desks=1_000, citizens=20, clerks=8, spawn_rate=100, doses=5_000_000, within=1_800, ingest=2,
                destinations=2, locust_processes=2, sites=500),
    # Certificates trail the doses past capacity (by design: doses are never refused for them), so no
    # citizens here: a lookup 10 s after the 202 would fail for a reason the run means to cause.
    "overload": dict(desks=200, citizens=0, clerks=16, spawn_rate=100, within=60, ingest=2, destinations=2,
                     locust_processes=2, sites=200, backentry_share=0.9, max_backlog_entries=50,
                     sustained_doses=300_000),
}


def duration(text: str) -> float:
    """Seconds from `90`, `90s`, `10m` or `1h`."""
    units = {"s": 1, "m": 60, "h": 3600}
    try:
        if text[-1:] in units:
            return float(text[:-1]) * units[text[-1]]
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (90s, 10m, 1h)") from None


def plan_from_args(args) -> Plan:
    values = dict(SHAPE_DEFAULTS[args.loadtest_command])
    names = {f.name for f in dataclasses.fields(Plan)}
    values.update({k: v for k, v in vars(args).items() if k in names and v is not None})
    if args.loadtest_command == "overload" and getattr(args, "doses", None) is None:
        values["doses"] = int(args.rate * values["within"])
    # Locust spreads each kind of user evenly over its processes, and each process posts an equal part of
    # that kind's doses: so each kind comes in a multiple of the processes.
    processes = max(1, values.get("locust_processes", Plan.locust_processes))
    for kind in ("desks", "clerks"):
        values[kind] = -(-values[kind] // processes) * processes
    if not values["clerks"]:
        values["backentry_share"] = 0.0
    return Plan(shape=args.loadtest_command, **{k: v for k, v in values.items() if k != "shape"})
