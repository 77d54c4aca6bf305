"""Private files (signing keys, the server secret) and the folders that hold them: refused when another user
could read them, or replace them, as ssh refuses a private key that others may open.

    refuse_loose(path, forbidden=0o077, fix="600")   LooseMode unless no bit of `forbidden` is set

LooseMode names the path, its mode and the chmod that fixes it. It is not an OSError on purpose: callers
wait out I/O failures (a 503 and a retry, a certifier's backoff), and waiting cannot fix a mode; it is a
misconfiguration that must reach the operator as what it is.
"""

from __future__ import annotations

import logging
import shlex
import stat
import time
from pathlib import Path

OWNER_ONLY = 0o077  # a private file or folder: no bit for the group or others
OTHERS_WRITE = 0o022  # a folder holding a private file: nobody else may add, rename or replace files in it


class LooseMode(Exception):
    """A private file, or the folder holding one, open to other users than its owner: refused, not loaded."""

    def __init__(self, path: Path, mode: int, *, problem: str, fix: str):
        super().__init__(f"{path} has mode {mode:04o}, {problem}: run `chmod {fix} {shlex.quote(str(path))}`")
        self.path, self.mode, self.fix = Path(path), mode, fix


def refuse_loose(path: Path, *, forbidden: int = OWNER_ONLY, fix: str = "600", problem: str | None = None,
                 error: type[LooseMode] | None = None) -> None:
    """Raise LooseMode (or `error`, built alike) when `path`'s mode has a bit of `forbidden`."""
    mode = stat.S_IMODE(Path(path).stat().st_mode)
    if mode & forbidden:
        problem = problem or f"open to other users than its owner; it must be {int(fix, 8):04o}"
        raise (error or LooseMode)(Path(path), mode, problem=problem, fix=fix)


class Reminder:
    """Logs a refusal when it is new, then again at most every `every` seconds while it lasts: loud enough
    that the operator sees it whenever they look at the log, without a line per request."""

    def __init__(self, log: logging.Logger, *, every: float = 60.0, clock=time.monotonic):
        self._log, self._every, self._clock = log, every, clock
        self._said, self._at = "", float("-inf")

    def __call__(self, error: LooseMode, context: str) -> None:
        now = self._clock()
        if str(error) != self._said or now - self._at >= self._every:
            self._log.error("%s: %s", context, error)
            self._said, self._at = str(error), now
