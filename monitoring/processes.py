"""Each process's own resources, per process: resident memory, CPU, open files against their limit.

prometheus-client's process collector describes only the process that serves /metrics, and its
multiprocess mode drops it altogether; so every vaxline process samples itself (a daemon thread, every few
seconds, reading /proc/self) into gauges labelled by its role and pid, which the multiprocess exposition
then shows side by side. Open files matter most: each client connection is a descriptor, and for 42,000
desk sessions the open-files limit (20,000 a process on the load-test machine) is what binds first: four
ingest processes hold about 10,500 each, two would not fit. The units in deploy/systemd set LimitNOFILE.

`start(role)` also sets `vaxline_build_info{version, python}`.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import resource
import threading
from importlib import metadata

from . import metrics

SAMPLE_EVERY = 5.0
_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclasses.dataclass(frozen=True)
class Usage:
    resident_bytes: int
    cpu_seconds: float
    open_fds: int
    max_fds: int


def usage() -> Usage:
    """This process's resources now, from /proc/self (Linux)."""
    with open("/proc/self/stat", "rb") as f:
        # The command name, field 2, may hold spaces and parentheses: the fields after it follow the last ")".
        fields = f.read().rsplit(b")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5), counted from state (3)
    with open("/proc/self/statm", "rb") as f:
        resident_pages = int(f.read().split()[1])
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return Usage(resident_pages * _PAGE, (utime + stime) / _TICKS, len(os.listdir("/proc/self/fd")), soft)


def version() -> str:
    try:
        return metadata.version("vaxline")
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


class Sampler:
    """Writes this process's usage into the gauges; the CPU counter grows by what was used since last time."""

    def __init__(self, role: str):
        self.role = role
        self._cpu = 0.0

    def sample(self) -> Usage:
        """In multiprocess mode the exposition labels each gauge with the process's pid; the counter carries
        its own (the exposition sums counters over processes)."""
        now = usage()
        metrics.process_resident_memory.labels(role=self.role).set(now.resident_bytes)
        metrics.process_open_fds.labels(role=self.role).set(now.open_fds)
        metrics.process_max_fds.labels(role=self.role).set(now.max_fds)
        if now.cpu_seconds > self._cpu:
            metrics.process_cpu.labels(role=self.role, pid=str(os.getpid())).inc(now.cpu_seconds - self._cpu)
            self._cpu = now.cpu_seconds
        return now


def start(role: str, *, every: float = SAMPLE_EVERY) -> threading.Event:
    """Sample this process every `every` seconds from now on, and export the build; set the event to stop."""
    metrics.build_info.labels(version=version(), python=platform.python_version()).set(1)
    sampler, stop = Sampler(role), threading.Event()
    sampler.sample()  # at once: a scrape right after the start sees the process

    def loop() -> None:
        while not stop.wait(every):
            try:
                sampler.sample()
            except OSError:  # /proc unreadable for a moment: the next round tries again
                continue

    threading.Thread(target=loop, name=f"{role}-usage", daemon=True).start()
    return stop
