"""Notifying citizens by SMS: a pluggable notifier, plugged as the OTP sender is (vaxline.otp).

    class SmsGateway:                       # VAXLINE_NOTIFIER=mypackage.sms:SmsGateway
        def __init__(self, settings): ...
        async def send(self, *, phone: str, text: str, link: str, notification_id: str) -> None: ...

`send` returns once the gateway took the message and raises if it did not: the notifier retries later,
with a backoff (workers/notify.py). Delivery is at least once, so a gateway that can should drop a second
message with the same `notification_id` (stable across retries of one notification).

A message carries a link and never the data: `text` (Vietnamese, as the portal opens) says what happened and
gives `link`, the portal's lookup page (`<public_base_url>/`) for a certificate issued or updated, or the
request's page (`<public_base_url>/corrections/{id}`) for a decided correction request; both ask for the birth
date before they show anything. A gateway may write its own text from `link`.

`VAXLINE_NOTIFIER=dev` (set by `vaxline run` and the embedded stacks) chooses DevelopmentNotifier: it sends
nothing and appends each message, with the phone, to <data_dir>/notify-outbox.jsonl (0600: it holds phones),
which a developer or a test reads. Its log line names the notification, never the phone.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import logging
import os
import time
from typing import Protocol

import msgspec

from .config import Settings

log = logging.getLogger(__name__)

DEVELOPMENT = "dev"
OUTBOX = "notify-outbox.jsonl"


class NoNotifier(Exception):
    """No notifier is configured, or it cannot build absolute links."""


class Notifier(Protocol):
    async def send(self, *, phone: str, text: str, link: str, notification_id: str) -> None: ...


@dataclasses.dataclass(frozen=True, slots=True)
class Message:
    text: str
    link: str


_TEXTS = {
    ("certificate", "issued"): "vaxline: Chứng nhận tiêm chủng của bạn đã được cấp. Xem tại {link}",
    ("certificate", "updated"): "vaxline: Chứng nhận tiêm chủng của bạn đã được cập nhật. Xem tại {link}",
    ("correction", "approved"): "vaxline: Yêu cầu chỉnh sửa của bạn đã có kết quả. Xem tại {link}",
    ("correction", "rejected"): "vaxline: Yêu cầu chỉnh sửa của bạn đã có kết quả. Xem tại {link}",
}


def message(*, kind: str, event: str, subject: str, base_url: str) -> Message:
    """The SMS for a notification (pure): the link to the portal page that tells the rest. A decision's text
    does not say which it was: a family may share the phone, and the page asks for the birth date."""
    base = base_url.rstrip("/")
    link = f"{base}/corrections/{subject}" if kind == "correction" else f"{base}/"
    return Message(_TEXTS[(kind, event)].format(link=link), link)


class DevelopmentNotifier:
    """Appends each message to the outbox, returning once its line is written. The messages a round sends
    together (workers/notify.py sends a round's at once) are written together: one thread hop and one
    append for the lot, so that a load test's notifier does not cost more than the gateway it stands for."""

    def __init__(self, settings: Settings):
        self.outbox = settings.data_dir / OUTBOX
        self._pending: list[str] = []
        self._written: asyncio.Future | None = None  # of the lines in _pending
        self._writing: set[asyncio.Task] = set()  # held: the loop keeps only weak references to tasks

    async def send(self, *, phone: str, text: str, link: str, notification_id: str) -> None:
        # debug: a load test tells thousands a second (the outbox is what a developer reads)
        log.debug("development notifier: notification %s written to the outbox (no SMS is sent)", notification_id)
        # msgspec, not json.dumps (9.5% of a draining notifier's samples under py-spy); both write UTF-8 as is.
        self._pending.append(msgspec.json.encode({"notification_id": notification_id, "phone": phone, "text": text,
                                                  "link": link, "at": time.time()}).decode() + "\n")
        if self._written is None:
            self._written = asyncio.get_running_loop().create_future()
            asyncio.get_running_loop().call_soon(self._flush)  # after every send of this turn of the loop
        await asyncio.shield(self._written)

    def _flush(self) -> None:
        lines, written = self._pending, self._written
        self._pending, self._written = [], None

        def done(task: asyncio.Task) -> None:
            self._writing.discard(task)
            if task.exception() is not None:
                written.set_exception(task.exception())
            else:
                written.set_result(None)

        task = asyncio.ensure_future(asyncio.to_thread(self._append, "".join(lines)))
        self._writing.add(task)
        task.add_done_callback(done)

    def _append(self, text: str) -> None:
        self.outbox.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.outbox, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)  # phones
        os.fchmod(fd, 0o600)  # an outbox made under a lax umask is closed too
        with os.fdopen(fd, "a", encoding="utf-8") as outbox:
            outbox.write(text)


def notifier(settings: Settings) -> Notifier:
    """The configured notifier (`module:Class`, built with the settings), or the development one (`dev`);
    NoNotifier when none is configured, or a real one has no public base URL to make links with."""
    if not settings.notifier:
        raise NoNotifier("no notifier is configured: set VAXLINE_NOTIFIER=module:Class (the SMS gateway that"
                         " tells citizens of their certificates and decisions), or VAXLINE_NOTIFIER=dev for"
                         f" development only (messages go to <data-dir>/{OUTBOX}, and no SMS is sent)")
    if settings.notifier == DEVELOPMENT:
        return DevelopmentNotifier(settings)
    if not settings.public_base_url.startswith(("https://", "http://")):
        raise NoNotifier("VAXLINE_PUBLIC_BASE_URL must be the portal's absolute address (https://...): an SMS"
                         " link cannot be relative")
    module, _, name = settings.notifier.partition(":")
    try:
        plugged = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as e:
        raise NoNotifier(f"VAXLINE_NOTIFIER={settings.notifier}: no such class ({type(e).__name__}); it names"
                         " package.module:Class") from None
    return plugged(settings)
