"""One pipelined Redis connection for the hot path: commands written as they come, replies read in order.

Every 202 waits for one XADD script, and redis-py's asyncio client spends 90-130 us of CPU on each
command whatever it is (a PING included: its pool, its timeouts, its parser's Python side), which on
this machine was half of what a desk's POST cost ingest. Redis answers the commands of one connection in
the order they came, so a connection that many requests share needs no more than a queue of futures:
each command is written at once (no lock, no round-trip wait), hiredis (a dependency already) parses
whatever arrives, and each reply resolves the oldest future. With appendfsync always, Redis writes and
fsyncs the AOF once per loop for everything it read, so the requests in flight share their fsync too.

Only what the hot path needs: `call(*args)` and `evalsha` with the script loaded again after a Redis
restart. Errors are redis-py's (ConnectionError, TimeoutError, ResponseError, all RedisErrors), so the
callers' handling is the same. A command that times out closes the connection, failing every command
queued behind it (their replies could no longer be matched), and the next call connects again.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
from urllib.parse import unquote, urlsplit

import hiredis
from redis.exceptions import ConnectionError, NoScriptError, ResponseError, TimeoutError


def _encode(args: tuple) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.reader = hiredis.Reader()
        self.waiting: collections.deque[asyncio.Future] = collections.deque()
        self.transport: asyncio.Transport | None = None
        self.lost: Exception | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            future = self.waiting.popleft()
            if future.done():  # its caller gave up (the connection is being closed)
                continue
            if isinstance(reply, hiredis.ReplyError):
                text = str(reply)
                future.set_exception(NoScriptError(text) if text.startswith("NOSCRIPT") else ResponseError(text))
            else:
                future.set_result(reply)

    def connection_lost(self, exc) -> None:
        self.lost = ConnectionError(f"Redis closed the connection ({exc or 'EOF'})")
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(self.lost)


class RedisPipe:
    """A shared, pipelined connection to `url` (redis://[:password@]host:port/db or unix:///path?db=N)."""

    def __init__(self, url: str, *, timeout: float = 10.0) -> None:
        self.url = urlsplit(url)
        self.timeout = timeout
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Lock | None = None
        self._scripts: dict[str, bytes] = {}

    @staticmethod
    def supports(url: str) -> bool:
        return urlsplit(url).scheme in ("redis", "unix")

    async def call(self, *args) -> object:
        protocol = await self._connected()
        future = asyncio.get_running_loop().create_future()
        protocol.waiting.append(future)
        protocol.transport.write(_encode(args))
        try:
            async with asyncio.timeout(self.timeout):
                return await future
        except asyncio.TimeoutError:
            protocol.transport.close()  # the replies behind this one could not be matched any more
            raise TimeoutError(f"Redis did not answer within {self.timeout:g} s") from None

    async def evalsha(self, script: str, keys: list, args: list) -> object:
        sha = self._scripts.get(script)
        if sha is None:
            sha = self._scripts[script] = hashlib.sha1(script.encode()).hexdigest().encode()
        try:
            return await self.call(b"EVALSHA", sha, len(keys), *keys, *args)
        except NoScriptError:  # a restarted (or failed-over) Redis has not seen it: load it, then again
            await self.call(b"SCRIPT", b"LOAD", script)
            return await self.call(b"EVALSHA", sha, len(keys), *keys, *args)

    async def close(self) -> None:
        if self._protocol and self._protocol.transport:
            self._protocol.transport.close()
        self._protocol = None

    async def _connected(self) -> _Protocol:
        protocol = self._protocol
        if protocol is not None and protocol.lost is None and not protocol.transport.is_closing():
            return protocol
        self._connecting = self._connecting or asyncio.Lock()
        async with self._connecting:  # one connection for everyone waiting, not one each
            if self._protocol is protocol:
                self._protocol = await self._connect()
            return self._protocol

    async def _connect(self) -> _Protocol:
        loop, url = asyncio.get_running_loop(), self.url
        try:
            async with asyncio.timeout(5):
                if url.scheme == "unix":
                    _, protocol = await loop.create_unix_connection(_Protocol, url.path)
                else:
                    _, protocol = await loop.create_connection(_Protocol, url.hostname or "127.0.0.1",
                                                               url.port or 6379)
        except (OSError, asyncio.TimeoutError) as e:
            raise ConnectionError(f"cannot connect to Redis: {type(e).__name__}") from None
        try:
            if url.password:
                await self._setup(protocol, b"AUTH", *([unquote(url.username)] if url.username else []),
                                  unquote(url.password))
            if db := _database(url):
                await self._setup(protocol, b"SELECT", db)
        except BaseException:
            protocol.transport.close()
            raise
        return protocol

    async def _setup(self, protocol: _Protocol, *args) -> None:
        future = asyncio.get_running_loop().create_future()
        protocol.waiting.append(future)
        protocol.transport.write(_encode(args))
        try:
            async with asyncio.timeout(5):
                await future
        except asyncio.TimeoutError:
            raise TimeoutError("Redis did not answer the connection's set-up") from None


def _database(url) -> int:
    if url.scheme == "unix":
        for part in url.query.split("&"):
            name, _, value = part.partition("=")
            if name == "db" and value:
                return int(value)
        return 0
    return int(url.path.strip("/") or 0)
