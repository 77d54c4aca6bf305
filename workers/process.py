"""Entry point of one worker process (uvloop; SIGTERM/SIGINT stop it cleanly)."""

from __future__ import annotations

import asyncio
import signal

import uvloop

from vaxline.config import Settings

from .pipeline import run_worker


def run_process(settings: Settings, consumer: str) -> None:
    uvloop.run(_main(settings, consumer))


async def _main(settings: Settings, consumer: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await run_worker(settings, consumer=consumer, stop=stop)
