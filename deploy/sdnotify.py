"""systemd's service notifications (sd_notify), for units of Type=notify: READY=1 once the service
serves, WATCHDOG=1 while its supervisor loop turns, STOPPING=1 when it stops.

The protocol is one datagram on the unix socket NOTIFY_SOCKET names (a leading "@" is the abstract
namespace); without NOTIFY_SOCKET (not under systemd, or another Type) every call does nothing. A
WatchdogSec= in the unit sets WATCHDOG_USEC: `Notifier.tick` pings at most every half of it, so a
supervisor stuck for the whole period is killed and restarted by systemd.
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger(__name__)


def notify(message: str, *, environ=os.environ) -> bool:
    """Send `message` ("READY=1", "WATCHDOG=1", "STATUS=...") to systemd; False when not asked for any."""
    address = environ.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as e:  # systemd gone or the socket unreachable: nothing a service can do about it
        log.warning("sd_notify failed: %s", type(e).__name__)
        return False
    return True


class Notifier:
    """READY once, then watchdog pings from the supervisor's loop (`tick`), half the watchdog period apart."""

    def __init__(self, *, environ=os.environ, clock=time.monotonic):
        self._environ = environ
        self._clock = clock
        usec = environ.get("WATCHDOG_USEC", "")
        pid = environ.get("WATCHDOG_PID", "")
        ours = not pid or pid == str(os.getpid())
        self.every = int(usec) / 2e6 if usec.isdigit() and ours else None
        self._pinged = clock()

    def ready(self, status: str = "") -> bool:
        return notify("READY=1" + (f"\nSTATUS={status}" if status else ""), environ=self._environ)

    def stopping(self) -> bool:
        return notify("STOPPING=1", environ=self._environ)

    def tick(self) -> None:
        if self.every is not None and self._clock() - self._pinged >= self.every:
            notify("WATCHDOG=1", environ=self._environ)
            self._pinged = self._clock()
