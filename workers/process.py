"""Entry point of one worker or certifier process (uvloop; SIGTERM/SIGINT stop it cleanly)."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import signal

import uvloop

from monitoring import processes
from vaxline.config import Settings
from vaxline.lifecycle import stop_on_signals

from .certify import run_certifier
from .pipeline import run_worker
from .notify import run_notifier
from .review import run_reviewer

log = logging.getLogger(__name__)


def _dump_tasks() -> None:
    """SIGUSR1: log where every task is waiting (for a worker that seems stuck)."""
    for task in asyncio.all_tasks():
        stream = io.StringIO()
        task.print_stack(file=stream)
        log.warning("task %s:\n%s", task.get_name(), stream.getvalue())


def run_process(settings: Settings, consumer: str, role: str = "persist") -> None:
    """role "persist" drains the dose shards; "certify" issues certificates from the handoffs; "review"
    keeps review flags and registry statuses current.

    Certifiers run at a lower CPU priority (VAXLINE_CERTIFY_NICE): where they share cores with the
    persisting workers, persisting keeps its pace and signing takes what is left, catching up after.
    Reviewers run lower still (VAXLINE_REVIEW_NICE): a certificate has a 2-second SLO, a review flag has
    none, and at an equal priority the two split the cores a busy day leaves them. "notify" sends citizens'
    SMS from the notifications outbox (VAXLINE_NOTIFY_NICE, as low as the reviewers).
    """
    nice = {"certify": settings.certify_nice, "review": settings.review_nice, "notify": settings.notify_nice}.get(role, 0)
    if nice:
        os.nice(nice)
    processes.start(role)
    uvloop.run(_main(settings, consumer, role))


async def _main(settings: Settings, consumer: str, role: str) -> None:
    stop = stop_on_signals()
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, _dump_tasks)
    run = {"certify": run_certifier, "review": run_reviewer, "notify": run_notifier}.get(role, run_worker)
    await run(settings, consumer=consumer, stop=stop)
