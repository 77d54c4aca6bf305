"""Sending one-time codes: a pluggable sender.

    class SmsGateway:                       # VAXLINE_OTP_SENDER=mypackage.sms:SmsGateway
        def __init__(self, settings): ...
        async def send(self, *, phone: str, code: str, request_id: str) -> None: ...

There is no default: a deployment names its sender, and without one ingest refuses to start
(NoOtpSender; `vaxline serve` exits 2 before starting anything). `VAXLINE_OTP_SENDER=dev`, which
`vaxline run` (the demo) and the embedded stacks set, chooses DevelopmentSender: it sends nothing, writes
the code to the log (with the request id, never the phone number: logs carry no personal data) and
appends it, with the phone, to <data_dir>/otp-outbox.jsonl (mode 0600: it holds phones and live codes),
which a developer or a test reads.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import os
import time
from typing import Protocol

from .config import Settings

log = logging.getLogger(__name__)

DEVELOPMENT = "dev"  # VAXLINE_OTP_SENDER=dev: the development sender, chosen explicitly


class NoOtpSender(Exception):
    """No sender is configured: codes would go nowhere, or to a development outbox nobody meant to keep."""

    def __init__(self) -> None:
        super().__init__(
            "no OTP sender is configured: set VAXLINE_OTP_SENDER=module:Class (the SMS gateway that sends"
            " one-time codes), or VAXLINE_OTP_SENDER=dev for development only (codes go to the log and to"
            " <data-dir>/otp-outbox.jsonl, and no SMS is sent)")


class OtpSender(Protocol):
    async def send(self, *, phone: str, code: str, request_id: str) -> None: ...


class DevelopmentSender:
    def __init__(self, settings: Settings):
        self.outbox = settings.data_dir / "otp-outbox.jsonl"

    async def send(self, *, phone: str, code: str, request_id: str) -> None:
        log.warning("development OTP sender: code %s for correction request %s (no SMS is sent)", code, request_id)
        line = json.dumps({"request_id": request_id, "phone": phone, "code": code, "at": time.time()}) + "\n"
        await asyncio.to_thread(self._append, line)

    def _append(self, line: str) -> None:
        self.outbox.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.outbox, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)  # phones and live codes
        os.fchmod(fd, 0o600)  # an outbox written before this release, or under a lax umask, is closed too
        with os.fdopen(fd, "a", encoding="utf-8") as outbox:
            outbox.write(line)


def sender(settings: Settings) -> OtpSender:
    """The configured sender (`module:Class`, built with the settings), or the development one when it is
    asked for by name (`dev`); NoOtpSender when none is configured."""
    if not settings.otp_sender:
        raise NoOtpSender()
    if settings.otp_sender == DEVELOPMENT:
        return DevelopmentSender(settings)
    module, _, name = settings.otp_sender.partition(":")
    return getattr(importlib.import_module(module), name)(settings)
