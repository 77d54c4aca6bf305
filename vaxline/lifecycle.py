"""How a child process is asked to stop: SIGTERM or SIGINT sets an event in its running loop.

The supervisor (deploy/supervisor.py) signals its children; ingest and the workers wait on this event,
finish the group in hand and acknowledge it.
"""

from __future__ import annotations

import asyncio
import signal


def stop_on_signals() -> asyncio.Event:
    """An event that SIGTERM and SIGINT set, in the running loop: how a child is asked to stop cleanly."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop
