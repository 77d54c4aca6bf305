"""Sending one-time codes: a pluggable sender.

    class SmsGateway:                       # VAXLINE_OTP_SENDER=mypackage.sms:SmsGateway
        def __init__(self, settings): ...
        async def send(self, *, phone: str, code: str, request_id: str) -> None: ...

The default, DevelopmentSender, sends nothing: it writes the code to the log (with the request id, never
the phone number: logs carry no personal data) and appends it, with the phone, to
<data_dir>/otp-outbox.jsonl, which a developer or a test reads.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import time
from typing import Protocol

from .config import Settings

log = logging.getLogger(__name__)


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
        with self.outbox.open("a", encoding="utf-8") as outbox:
            outbox.write(line)


def sender(settings: Settings) -> OtpSender:
    """The configured sender (`module:Class`, built with the settings), or the development one."""
    if not settings.otp_sender:
        return DevelopmentSender(settings)
    module, _, name = settings.otp_sender.partition(":")
    return getattr(importlib.import_module(module), name)(settings)
