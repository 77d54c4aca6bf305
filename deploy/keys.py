"""Signing-key rotation by the processes that supervise certifiers (`vaxline run`, `vaxline work`).

A key signs during the first year of its two-year DSC (vaxline.dcc.keys). The supervisor checks at start
and every hour after, and adds a key while the newest one still signs for ROTATE_AHEAD (a month): the
certifiers and ingest pick the new key up by the folder's version, without a restart, and the old key stays
in the trust list. A rotation that fails (a full disk, a folder open to others) is logged and tried again
next hour; the certifiers' vaxline_signing_key_validity_seconds and its alert say when time runs short.
"""

from __future__ import annotations

import base64

import logging
import time

from vaxline.dcc.keys import ROTATE_AHEAD, KeyStore, PublicKey
from vaxline.filemodes import LooseMode

log = logging.getLogger("vaxline")


class KeyRotation:
    """Call it as often as you like (a supervisor's tick): it looks at the keys every `every` seconds."""

    def __init__(self, keys: KeyStore, *, every: float = 3600.0, clock=time.monotonic):
        self.keys = keys
        self.every = every
        self._clock = clock
        self._checked: float | None = None

    def rotate(self) -> PublicKey | None:
        """A new key when the newest signs for less than ROTATE_AHEAD (or none signs); else None."""
        self._checked = self._clock()
        try:
            created = self.keys.ensure(ahead=ROTATE_AHEAD)
        except (OSError, LooseMode, ValueError) as e:  # tried again at the next check
            log.error("signing key rotation in %s failed: %s: %s", self.keys.directory, type(e).__name__, e)
            return None
        if created:  # the first key, or the next one a month before the newest stops signing
            # The kid in base64, as the EU trust lists and the certifiers' log write it: in hex it may begin with
            # a run of digits that reads as an ID to a scan of the logs for personal data.
            log.warning("created a signing key (kid %s) in %s, its DSC valid until %s (`vaxline keys list`)",
                        base64.b64encode(created.kid).decode(), self.keys.directory, f"{created.not_after:%Y-%m-%d}")
        return created

    def __call__(self) -> None:
        if self._checked is None or self._clock() - self._checked >= self.every:
            self.rotate()
