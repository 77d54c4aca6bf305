"""Notifiers: the processes that send citizens' SMS from the notifications outbox.

    due = storage.notifications.claim(...)     # up to notify_batch, leased (FOR UPDATE SKIP LOCKED)
    notifier.send(...)                         # outside any transaction, concurrently, each bounded in time
    sent / failed(retry_in=backoff(attempts))  # done; or due again later, never dropped

They poll Postgres, as the reviewers do: a notification is written in the transaction of the certificate or
decision it tells of, so none can be missed, and several notifiers share the work without waiting on each
other. Nothing on the persist path or the issuers' path waits for them or for the gateway: an SMS gateway
that is down only grows the backlog (vaxline_notifications_backlog), and each notification is tried again
after a backoff that doubles up to notify_backoff_max, for as long as it takes. While persisting or
certifying is behind, they stand aside (workers/standaside.py): an SMS may trail a peak. Logs name a notification by
its number, never by a phone or a national ID.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import logging
import random
import time

import asyncpg

from monitoring import metrics
from storage import ACQUIRE_TIMEOUT
from storage import notifications as store
from vaxline import notify
from vaxline.config import Settings

from .loop import count_into, count_pause, error_kind, gauge_every, run_consumer, sleep_unless
from .standaside import StandAside

log = logging.getLogger(__name__)

PURGE_EVERY = 600.0  # seconds between two purges of sent notifications past their retention


async def run_notifier(settings: Settings, *, consumer: str, stop: asyncio.Event,
                       notifier: notify.Notifier | None = None) -> None:
    """Send due notifications until `stop` is set, surviving Postgres and gateway outages. `notifier`: the
    configured one unless given (NoNotifier when none is configured)."""
    sender = notifier if notifier is not None else notify.notifier(settings)
    await run_consumer(
        settings, stop, name=f"notifier {consumer}", running=metrics.notifiers_running,
        drain=lambda redis, pool: _drain(pool, settings, sender, stop,
                                         StandAside(redis, settings, stop, role="notify")),
        housekeeping=lambda redis, pool: _housekeeping(pool, settings, stop))


async def _drain(pool: asyncpg.Pool, settings: Settings, sender: notify.Notifier, stop: asyncio.Event,
                 aside: StandAside) -> None:
    while not stop.is_set():
        await aside.wait()  # while persisting or certifying is behind (workers/standaside.py)
        try:
            handled = await send_due(pool, settings, sender)
        except Exception as e:  # Postgres unreachable or failing over: what was claimed is sent again after its lease
            log.warning("notifier round failed (%s); retrying", error_kind(e))
            await sleep_unless(stop, 1.0)
            continue
        if handled < settings.notify_batch:  # caught up: look again shortly
            await sleep_unless(stop, settings.notify_interval)


async def send_due(pool: asyncpg.Pool, settings: Settings, sender: notify.Notifier) -> int:
    """One round: claim due notifications, send them, record how each went; how many were claimed."""
    async with pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
        due = await store.claim(conn, limit=settings.notify_batch, lease=settings.notify_lease)
    if not due:
        return 0
    results = await _sent_within(sender, due, settings)
    done: list[tuple[store.Notification, str]] = []
    retries: list[tuple[store.Notification, float]] = []
    tally: collections.Counter[tuple[str, str]] = collections.Counter()  # (kind, outcome): the metrics, once a round
    for notification, result in zip(due, results):
        if isinstance(result, BaseException):
            wait = backoff(notification.attempts, base=settings.notify_backoff, cap=settings.notify_backoff_max)
            retries.append((notification, wait))
            tally[notification.kind, "failed"] += 1
        else:
            done.append((notification, result))
            tally[notification.kind, result] += 1
    counters = {"sent": metrics.notifications_sent, "no_phone": metrics.notifications_skipped,
                "failed": metrics.notifications_failed}
    for (kind, outcome), count in tally.items():
        counters[outcome].labels(kind=kind).inc(count)
    async with pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:  # two statements a round, whatever its size
        await store.sent(conn, done)
        await store.failed(conn, retries)
    if retries:  # one line a round, however many failed: an outage would otherwise flood the log
        errors = sorted({type(r).__name__ for r in results if isinstance(r, BaseException)})
        log.warning("%d of %d notifications failed (%s; notification %d at attempt %d); retried after a backoff",
                    len(retries), len(due), ", ".join(errors), retries[0][0].id, retries[0][0].attempts)
    return len(due)


async def _sent_within(sender: notify.Notifier, due: list[store.Notification], settings: Settings
                       ) -> list[str | BaseException]:
    """Each notification's outcome (`sent`, `no_phone`) or exception, sent concurrently. A gateway call may not
    outlast half the lease, so no other notifier takes a row still being sent: one deadline for the round,
    since its calls start together, and a call still running at it is cancelled and counts as a TimeoutError
    (one timer a round, where a timeout a call cost a twentieth of the notifier's CPU)."""
    tasks = [asyncio.ensure_future(_send(sender, n, settings)) for n in due]
    try:
        await asyncio.wait(tasks, timeout=settings.notify_lease / 2)
    finally:  # this round cancelled (the notifier stopping), or its deadline passed: no call outlives it
        late = [task for task in tasks if not task.done()]
        for task in late:
            task.cancel()
        if late:
            await asyncio.wait(late)
    return [TimeoutError(f"the gateway took more than {settings.notify_lease / 2:g} s") if task.cancelled()
            else task.exception() or task.result() for task in tasks]


async def _send(sender: notify.Notifier, notification: store.Notification, settings: Settings) -> str:
    if notification.phone is None:
        return "no_phone"
    text = notify.message(kind=notification.kind, event=notification.event, subject=notification.subject,
                          base_url=settings.public_base_url)
    await sender.send(phone=notification.phone, text=text.text, link=text.link,
                      notification_id=notification_id(notification))
    return "sent"


def notification_id(notification: store.Notification) -> str:
    """Stable across the retries of one notification (a gateway may drop what it took already); a certificate
    that replaced the one a row told of makes a new id. The subject is hashed: a gateway keeps no UVCI."""
    return f"N{notification.id}-{hashlib.sha256(notification.subject.encode()).hexdigest()[:12]}"


def backoff(attempts: int, *, base: float, cap: float) -> float:
    """Seconds before the next attempt after `attempts` failed ones: doubling from `base` up to `cap`, jittered
    down by up to a half so a gateway that comes back is not met by every notification at once."""
    return min(cap, base * 2 ** max(0, attempts - 1)) * random.uniform(0.5, 1.0)


async def _housekeeping(pool: asyncpg.Pool, settings: Settings, stop: asyncio.Event) -> None:
    """Report the backlog every few seconds (less often when counting it is slow, workers.loop.count_pause)
    and forget old sent notifications, until `stop`."""
    purged_at = 0.0
    every = gauge_every(settings)
    while not stop.is_set():
        took = 0.0
        try:
            async with pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
                took = await count_into(metrics.notifications_backlog, store.backlog(conn))
                if time.monotonic() - purged_at > PURGE_EVERY:
                    await store.purge(conn, older_than=settings.notify_retention)
                    purged_at = time.monotonic()
        except Exception as e:  # retried on the next round
            log.warning("notifier housekeeping failed: %s", error_kind(e))
        await sleep_unless(stop, count_pause(took, every))
