"""Stopping the enqueuer never hangs: its backlog poller ends even when a Redis command in flight swallows
the cancellation (redis-py's asyncio client can), which once left `vaxline import` waiting for ever at its
exit (about one run in ten of tests/test_import.py's memory test)."""

from __future__ import annotations

import asyncio

from vaxline.enqueue import Enqueuer


async def test_stop_returns_although_a_refresh_swallows_the_cancellation(settings, redis):
    enqueuer = Enqueuer(redis, settings, poll_interval=0.05)
    await enqueuer.start()
    in_refresh = asyncio.Event()

    async def swallowing_refresh() -> None:  # what a redis-py command that eats CancelledError looks like
        in_refresh.set()
        try:
            await asyncio.sleep(0.5)
        except asyncio.CancelledError:
            pass

    enqueuer._refresh = swallowing_refresh
    await asyncio.wait_for(in_refresh.wait(), 5)
    await asyncio.wait_for(enqueuer.stop(), 10)  # before the fix: waited for ever
    assert enqueuer._poller.done()
