"""What a run ran on: the versions of what it measures, and the machine, kept in summary.json.

On a shared virtual machine the same code has given a day's certificate p99 of 9.5 s and of 296 s
(docs/load-tests.md), and a new virtual environment may bring other versions of the libraries that do the
work (cryptography signs, asyncpg and redis-py talk, uvloop and aiohttp serve). Two runs' figures compare
only beside what each ran on: these versions, the servers', the processor, and the load the machine
carried when the run began (what the hypervisor took during it is a figure: sampling.outside_percent).
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
from pathlib import Path

# The distributions whose speed the figures depend on: the stack's hot paths and the load generator's.
PACKAGES = ("aiohttp", "uvloop", "msgspec", "redis", "hiredis", "asyncpg", "cryptography", "cbor2", "prometheus-client",
            "locust", "gevent", "geventhttpclient")


def describe(*, postgres: str, redis: str, cpuinfo: Path = Path("/proc/cpuinfo")) -> dict[str, str]:
    """The run's environment, one flat mapping (the report shows it as a table): `postgres` and `redis` are
    the versions the servers of the run reported."""
    described = {
        "python": platform.python_version(),
        "Postgres": postgres,
        "Redis": redis,
        "processor": processor(cpuinfo),
        "cores": str(os.cpu_count()),
        "kernel": platform.release(),
        "load average at the start (1, 5, 15 min)": ", ".join(f"{v:.2f}" for v in os.getloadavg()),
    }
    return described | {package: version(package) for package in PACKAGES}


def version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def processor(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The first processor's model name, as the kernel reports it; `platform.machine()` where it does not."""
    try:
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                return value.strip()
    except OSError:
        pass
    return platform.machine()
