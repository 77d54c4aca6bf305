"""Wrong birth dates per national ID, and the one-time code that lets the person in past them.

A CCCD number states the birth year, so a known national ID falls to about 365 guesses of the birth date,
from as many addresses as an attacker has. So guesses are counted per national ID, whatever the address:
each lookup counts as a wrong guess until it finds the certificate (then it is taken back), in one Redis
counter per ID and `lookup_guess_window` (24 h from the first guess). Counting before the lookup, not
after, is what keeps parallel guesses from all slipping under the limit.

Past `lookup_guess_limit` (10), a lookup of that ID needs a one-time code (`code`): the answer says so,
and a code goes to the phones a site recorded for the person (storage.certificates.phones_on_record),
through the deployment's OTP sender. An unknown ID gets the same answer (nothing is sent: there is no
phone). A code lives `otp_ttl`; while one lives no other is sent, at most `otp_max_sends` go out per ID
and window, and `otp_max_attempts` wrong codes burn it: 15 guesses of 10^6 a day. The right code is
consumed by the lookup it lets through. A determined attacker can spend a person's codes for the day;
the person then needs a site (the price of a limit that no number of addresses lifts).

Redis holds only keyed digests (HMAC under the server secret) of the ID and of the code: neither is
readable there, and neither reaches a log line or a metric label.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import string
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis

from vaxline import otp
from vaxline.citizen import new_code
from vaxline.config import Settings
from vaxline.links import keyed_digest

log = logging.getLogger(__name__)

# KEYS: counter. Takes back one guess, unless the window ended meanwhile (no counter without its expiry).
_TAKE_BACK = "if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('DECR', KEYS[1]) end return 0"

# KEYS: code, sends. ARGV: digest, ttl, max sends, window. 1 when a new code is to be sent.
_RESERVE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local sends = tonumber(redis.call('GET', KEYS[2]) or '0')
if sends >= tonumber(ARGV[3]) then return 0 end
redis.call('HSET', KEYS[1], 'digest', ARGV[1], 'attempts', 0)
redis.call('EXPIRE', KEYS[1], ARGV[2])
if redis.call('INCR', KEYS[2]) == 1 then redis.call('EXPIRE', KEYS[2], ARGV[4]) end
return 1
"""

# KEYS: code. ARGV: digest, max attempts. 1 when right (and consumed); a wrong one counts, and burns the
# code at the last attempt.
_REDEEM = """
local stored = redis.call('HGET', KEYS[1], 'digest')
if not stored then return 0 end
if stored == ARGV[1] then redis.call('DEL', KEYS[1]) return 1 end
if redis.call('HINCRBY', KEYS[1], 'attempts', 1) >= tonumber(ARGV[2]) then redis.call('DEL', KEYS[1]) end
return 0
"""


def new_challenge_id() -> str:
    """What the sender is told the code is for: `LK-` and 28 capital letters (never reads as an ID)."""
    return "LK-" + "".join(secrets.choice(string.ascii_uppercase) for _ in range(28))


class LookupGuard:
    """Counts guesses per national ID in Redis and hands out and checks the codes past the limit."""

    def __init__(self, redis: aioredis.Redis, settings: Settings, *, secret: bytes):
        self._redis = redis
        self._settings = settings
        self._prefix = f"{settings.stream_prefix}:lookup-id"
        self._secret = secret
        self._sender: otp.OtpSender | None = None  # built on the first code: a deployment may never need one
        self._sending: set[asyncio.Task] = set()
        self._scripts: dict[str, object] = {}  # EVALSHA, loaded by Redis on first use

    def _script(self, source: str):
        if source not in self._scripts:
            self._scripts[source] = self._redis.register_script(source)
        return self._scripts[source]

    def _keys(self, national_id: str) -> tuple[str, str, str]:
        """(guesses, code, sends): one hash tag, so a Redis Cluster keeps them on one node for the scripts."""
        tag = f"{self._prefix}:{{{keyed_digest(self._secret, 'lookup-id', national_id)[:32]}}}"
        return f"{tag}:guesses", f"{tag}:code", f"{tag}:sends"

    def _code_digest(self, national_id: str, code: str) -> str:
        return keyed_digest(self._secret, "lookup-code", f"{national_id}:{code}")

    async def guess(self, national_id: str) -> bool:
        """Count this lookup as a wrong guess; False when it is past the limit (a code is needed)."""
        guesses, _, _ = self._keys(national_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(guesses, 0, ex=math.ceil(self._settings.lookup_guess_window), nx=True)
            pipe.incr(guesses)
            _, count = await pipe.execute()
        return count <= self._settings.lookup_guess_limit

    async def found(self, national_id: str) -> None:
        """The lookup found the certificate: it was no wrong guess."""
        guesses, _, _ = self._keys(national_id)
        await self._script(_TAKE_BACK)(keys=[guesses])

    async def redeem(self, national_id: str, code: str) -> bool:
        """Whether `code` is the live code of this ID (consumed if so)."""
        _, code_key, _ = self._keys(national_id)
        digest = self._code_digest(national_id, code)
        return bool(await self._script(_REDEEM)(keys=[code_key], args=[digest, self._settings.otp_max_attempts]))

    async def challenge(self, national_id: str, phones: Callable[[], Awaitable[list[str]]], *,
                        wait: float) -> bool:
        """Send a new code to the phones on record, unless one is live or the sends are spent; whether one
        went out. The sending is waited for at most `wait` seconds (then it goes on in the background),
        so a slow gateway does not tell by the answer's time that the ID has a phone."""
        _, code_key, sends_key = self._keys(national_id)
        code = new_code()
        settings = self._settings
        reserved = await self._script(_RESERVE)(keys=[code_key, sends_key], args=[
            self._code_digest(national_id, code), math.ceil(settings.otp_ttl), settings.otp_max_sends,
            math.ceil(settings.lookup_guess_window)])
        if not reserved:
            return False
        numbers = await phones()
        if not numbers:
            return False
        task = asyncio.create_task(self._send(numbers, code))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)
        await asyncio.wait({task}, timeout=max(0.0, wait))
        return True

    async def _send(self, phones: list[str], code: str) -> None:
        challenge_id = new_challenge_id()
        try:
            if self._sender is None:
                self._sender = otp.sender(self._settings)
            for phone in phones:
                await self._sender.send(phone=phone, code=code, request_id=challenge_id)
        except Exception as e:  # noqa: BLE001 (a gateway may raise anything): it must not fail the lookup
            log.warning("a lookup code was not sent: %s", type(e).__name__, extra={"request_id": challenge_id})
