"""Process supervision: start ingest and worker processes, restart the fallen.

Children are started with the `spawn` method (no event loop or connection
is inherited) and get their own SIGINT/SIGTERM handling: on stop the
supervisor signals them and waits, so workers finish and acknowledge the
group in hand. A child that dies unasked is restarted after a pause.
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import multiprocessing
import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable

log = logging.getLogger(__name__)
PR_SET_PDEATHSIG = 1
_spawn = multiprocessing.get_context("spawn")


@dataclasses.dataclass
class Child:
    name: str
    target: Callable
    args: tuple
    process: multiprocessing.Process | None = None
    restarts: int = 0

    def start(self) -> None:
        self.process = _spawn.Process(target=_child_main, args=(self.target, self.args), name=self.name, daemon=False)
        self.process.start()


def _child_main(target: Callable, args: tuple) -> None:
    _stop_with_parent()
    from monitoring.logs import configure

    configure()
    target(*args)


def _stop_with_parent() -> None:
    """Ask Linux for a SIGTERM when the supervisor dies, even by SIGKILL: no orphans keep the port or
    keep consuming. The child then stops as it would on Ctrl-C (workers acknowledge what they committed)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: children outlive a killed supervisor
        return
    if os.getppid() == 1:  # the supervisor died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


class Supervisor:
    def __init__(self, *, on_exit: Callable[[int], None] = lambda pid: None) -> None:
        self.children: list[Child] = []
        self._on_exit = on_exit
        self._stopping = False

    def add(self, name: str, target: Callable, *args) -> Child:
        child = Child(name, target, args)
        self.children.append(child)
        child.start()
        return child

    def pids(self) -> dict[str, int]:
        return {c.name: c.process.pid for c in self.children if c.process and c.process.pid}

    def poll(self) -> None:
        """Restart children that exited without being asked to."""
        if self._stopping:
            return
        for child in self.children:
            if child.process is not None and not child.process.is_alive():
                log.warning("%s exited with %s; restarting", child.name, child.process.exitcode)
                self._on_exit(child.process.pid)
                child.restarts += 1
                time.sleep(min(0.2 * child.restarts, 2.0))
                child.start()

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM every child and wait; idempotent."""
        self._stopping = True
        for child in self.children:
            if child.process is not None and child.process.is_alive():
                os.kill(child.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in self.children:
            if child.process is not None:
                child.process.join(max(0.1, deadline - time.monotonic()))
                if child.process.is_alive():
                    log.error("%s did not stop in %.0fs; killing it", child.name, timeout)
                    child.process.kill()
                    child.process.join()


def wait_ready(url: str, *, timeout: float = 60, while_waiting: Callable[[], None] = lambda: None) -> None:
    """Poll `url` (an ingest's /readyz) until it answers 200; TimeoutError past `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not become ready within {timeout:.0f}s")
        while_waiting()
        time.sleep(0.1)
