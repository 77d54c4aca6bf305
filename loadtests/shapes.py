"""Load shapes: how many users run when, and the phases a report marks.

Each shape writes its phases (JSON lines: phase name, epoch) to --vx-phases,
so the runner can read the server's metrics over exactly the hold or the day,
and resets Locust's statistics when the measured phase begins: a ramp of
tens of thousands of connections is not what the percentiles are about.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from locust import LoadTestShape

log = logging.getLogger(__name__)


class PhasedShape(LoadTestShape):
    abstract = True

    def __init__(self) -> None:
        super().__init__()
        self.phase, self.since = "", time.time()

    @property
    def options(self):
        return self.runner.environment.parsed_options

    def fixed_users(self) -> int:
        return self.options.vx_citizens + self.options.vx_clerks

    def enter(self, phase: str, *, at: float | None = None, reset: bool = False, record: bool = False) -> None:
        """`reset`: the measured phase begins (Locust's statistics start again); `record`: it ends, and its
        statistics go with the phase's line (`measured_stats`)."""
        self.phase, self.since = phase, at or time.time()
        log.info("load shape: %s", phase)
        if reset:
            self.runner.stats.reset_all()
        line = {"phase": phase, "at": self.since, "users": self.runner.user_count}
        if record:
            line["stats"] = measured_stats(self.runner.stats)
        if self.options.vx_phases:
            with Path(self.options.vx_phases).open("a") as out:
                out.write(json.dumps(line) + "\n")


def measured_stats(stats) -> dict[str, dict]:
    """Locust's statistics since their reset, by request name, as its CSV names the columns: the measured
    phase's own percentiles. Locust's history CSV gives, per request name, only those of its last 10 seconds
    (`get_current_response_time_percentile`), and its final CSV counts the ramp-down too. On the master they
    stand as the workers last reported them (every 3 s)."""
    found = {}
    for entry in [*stats.entries.values(), stats.total]:
        if entry.num_requests:
            found[entry.name] = {
                "Request Count": entry.num_requests, "Failure Count": entry.num_failures,
                **{label: round(entry.get_response_time_percentile(q)) for label, q in
                   (("50%", 0.5), ("95%", 0.95), ("99%", 0.99))},
            }
    return found


class SessionsShape(PhasedShape):
    """Ramp gently to --vx-desks desk sessions (beside the fixed citizens and clerks), let them settle,
    hold them --vx-hold seconds, ramp down."""

    # Locust counts a user as running once it is spawned, before its session is open: the last desks of
    # a ramp, and whatever the ramp left queued, are given this long before the measured hold begins.
    SETTLE = 30.0

    def tick(self):
        o = self.options
        target = o.vx_desks + self.fixed_users()
        if not self.phase:
            self.enter("ramp")
        if self.phase == "ramp":
            # The hold begins once Locust runs every user (each has opened its session in on_start), or,
            # should spawning fall behind, after twice the planned ramp: the report then shows it.
            planned = target / o.vx_spawn_rate
            if self.runner.user_count >= target or time.time() - self.since > 2 * planned + 60:
                self.enter("settle")
            return target, o.vx_spawn_rate
        if self.phase == "settle":
            if time.time() - self.since >= self.SETTLE:
                self.enter("hold start", reset=True)
            return target, o.vx_spawn_rate
        if self.phase == "hold start":
            if time.time() - self.since >= o.vx_hold:
                self.enter("hold end", record=True)
            return target, o.vx_spawn_rate
        if self.runner.user_count > 0 and time.time() - self.since < target / (4 * o.vx_spawn_rate) + 60:
            return 0, 4 * o.vx_spawn_rate
        return None


class PacedShape(PhasedShape):
    """--vx-doses doses within --vx-within seconds from --vx-start-at, at the pace the suite chose
    (users.pace): the desks and clerks run throughout and take their doses from a budget that follows
    it. The run ends once no dose has been posted for QUIET seconds after the day (every user has posted
    its share, retries included), or LONGEST after it at the latest."""

    QUIET = 10.0
    LONGEST = 900.0

    def posts(self) -> int:
        return sum(entry.num_requests for (name, _), entry in self.runner.stats.entries.items()
                   if name.startswith("POST /v1/doses"))

    def tick(self):
        o = self.options
        target = o.vx_desks + self.fixed_users()
        if not self.phase:
            self.enter("ramp")
            self.start_at = o.vx_start_at or time.time()
        now = time.time()
        if self.phase == "ramp" and now >= self.start_at:
            self.enter("day start", at=self.start_at, reset=True)
        if self.phase == "day start" and now >= self.start_at + o.vx_within:
            self.enter("day end", at=self.start_at + o.vx_within, record=True)
        if self.phase == "day end":
            posts = self.posts()
            if posts != getattr(self, "_posts", None):
                self._posts, self._quiet_since = posts, now
            if now - self._quiet_since >= self.QUIET or now - self.since >= self.LONGEST:
                return None
        return target, o.vx_spawn_rate
