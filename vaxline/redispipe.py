"""One pipelined Redis connection for the hot path: a loop turn's commands in one write, replies read in order.

Every 202 waits for one XADD script, and redis-py's asyncio client spends 90-130 us of CPU on each
command whatever it is (a PING included: its pool, its timeouts, its parser's Python side), which on
this machine was half of what a desk's POST cost ingest. Redis answers the commands of one connection in
the order they came, so a connection that many requests share needs no more than a queue of futures:
the commands of one turn of the event loop go out in one write (no lock, no round-trip wait, one send
for all the requests in flight), hiredis (a dependency already) parses whatever arrives, and each reply
resolves the oldest future. With appendfsync always, Redis writes and fsyncs the AOF once per loop for
everything it read, so the requests in flight share their fsync too.

Only what the hot path needs: `call(*args)` and `evalsha` with the script loaded again after a Redis
restart, optionally followed by a WAIT for replicas (`replicas=`). WAIT answers for every write its connection
made before it, so the requests in flight share one: a request whose write a WAIT written after it covers
awaits that one, and the next WAIT goes out only when the last one was written before the write it must cover
(a group commit, as the fsync is). A WAIT only counts on the connection that wrote: one lost in between fails
the request (ConnectionError), never confirms it. TLS (rediss://) as redis-py reads the URL: ssl_ca_certs,
ssl_certfile, ssl_keyfile, ssl_cert_reqs=none. Errors are redis-py's (ConnectionError, TimeoutError, ResponseError, all RedisErrors), so the
callers' handling is the same. A command that times out closes the connection, failing every command
queued behind it (their replies could no longer be matched), and the next call connects again. One timer a
connection watches for that, not one a command, and the connection keeps its loop: on Python 3.11 an
asyncio.timeout and each asyncio.get_running_loop() cost a getpid() system call, 8% of ingest's CPU a POST.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import hashlib
import ssl
from urllib.parse import parse_qs, unquote, urlsplit

import hiredis
from redis.exceptions import ConnectionError, NoScriptError, ResponseError, TimeoutError


def _encode(args: tuple) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class _Protocol(asyncio.Protocol):
    def __init__(self, timeout: float) -> None:
        # The loop, once: asyncio.get_running_loop() costs a getpid() system call each time on Python 3.11.
        self.loop = asyncio.get_running_loop()
        self.timeout = timeout
        self.reader = hiredis.Reader()
        self.waiting: collections.deque[asyncio.Future] = collections.deque()
        self.written_at: collections.deque[float] = collections.deque()  # beside `waiting`: when each was written
        self.watchdog: asyncio.TimerHandle | None = None
        self.transport: asyncio.Transport | None = None
        self.lost: Exception | None = None
        self.sent = 0  # commands written, counted from 1: what a WAIT written after one covers
        self.unsent: list[bytes] = []  # written by _write in this turn of the loop, sent at its end
        self.last_wait: tuple[int, int, asyncio.Task] | None = None  # (its index, replicas, the WAIT)

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.watchdog = self.loop.call_later(self.timeout / 10, self._watch)

    def expect(self, count: int) -> list[asyncio.Future]:
        """Futures for the replies of `count` commands about to be written, oldest first."""
        futures = [self.loop.create_future() for _ in range(count)]
        self.waiting.extend(futures)
        self.written_at.extend([self.loop.time()] * count)
        return futures

    def _watch(self) -> None:
        """One timer per connection, not one per command: when the oldest command has waited `timeout`,
        every command waiting fails with TimeoutError and the connection is closed (the replies behind
        the late one could no longer be matched)."""
        if self.lost is not None or self.transport is None or self.transport.is_closing():
            return
        if self.written_at and self.loop.time() - self.written_at[0] >= self.timeout:
            self._fail(TimeoutError(f"Redis did not answer within {self.timeout:g} s"))
            self.transport.close()
            return
        self.watchdog = self.loop.call_later(self.timeout / 10, self._watch)

    def _fail(self, error: Exception) -> None:
        self.lost = error
        self.written_at.clear()
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(error)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            future = self.waiting.popleft()
            self.written_at.popleft()
            if future.done():  # its caller gave up (the connection is being closed)
                continue
            if isinstance(reply, hiredis.ReplyError):
                text = str(reply)
                future.set_exception(NoScriptError(text) if text.startswith("NOSCRIPT") else ResponseError(text))
            else:
                future.set_result(reply)

    def flush(self) -> None:
        if self.unsent and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(self.unsent))
        self.unsent.clear()

    def connection_lost(self, exc) -> None:
        if self.watchdog is not None:
            self.watchdog.cancel()
        if self.lost is None:
            self._fail(ConnectionError(f"Redis closed the connection ({exc or 'EOF'})"))


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
        return urlsplit(url).scheme in ("redis", "rediss", "unix")

    async def call(self, *args) -> object:
        """One command's reply; it goes out with whatever else this turn of the loop writes (`_write`)."""
        protocol = await self._connected()
        return await self._reply(self._write(protocol, args))

    def _write(self, protocol: _Protocol, *commands: tuple) -> list[asyncio.Future]:
        """Write `commands` together (nothing of another request comes between them); their futures. The
        bytes go out with everything else written in this turn of the event loop: one send for all the
        requests in flight (a send on TCP costs more than the rest of a write with its WAIT)."""
        encoded = [_encode(args) for args in commands]  # first: one that cannot be encoded queues no future
        futures = protocol.expect(len(commands))
        if not protocol.unsent:
            protocol.loop.call_soon(protocol.flush)
        protocol.unsent.extend(encoded)
        protocol.sent += len(commands)
        return futures

    @staticmethod
    async def _reply(futures: list[asyncio.Future]) -> object:
        """The last command's reply (the ones before it, ASKING, are read and dropped); TimeoutError after the
        connection's `timeout` (_Protocol._watch: no timer per command)."""
        for future in futures[:-1]:
            await future
        return await futures[-1]

    async def evalsha(self, script: str, keys: list, args: list, *, asking: bool = False) -> object:
        """The script's reply; `asking`: sent after ASKING (a Redis Cluster slot being migrated)."""
        reply, _, _ = await self._evalsha(script, keys, args, asking)
        return reply

    async def evalsha_waited(self, script: str, keys: list, args: list, *, replicas: int, wait_timeout: float,
                             asking: bool = False) -> tuple[object, int]:
        """(the script's reply, how many replicas confirmed it: WAIT `replicas`, shared as described above)."""
        reply, protocol, written = await self._evalsha(script, keys, args, asking)
        return reply, await self._replicated(protocol, written, replicas, wait_timeout)

    async def _evalsha(self, script: str, keys: list, args: list, asking: bool) -> tuple[object, _Protocol, int]:
        sha = self._scripts.get(script)
        if sha is None:
            sha = self._scripts[script] = hashlib.sha1(script.encode()).hexdigest().encode()
        commands = [(b"ASKING",)] if asking else []
        commands.append((b"EVALSHA", sha, len(keys), *keys, *args))
        protocol = await self._connected()
        futures = self._write(protocol, *commands)
        written = protocol.sent  # the index of this write: a WAIT written after it covers it
        try:
            return await self._reply(futures), protocol, written
        except NoScriptError:  # a restarted (or failed-over) Redis has not seen it: load it, then again
            await self.call(b"SCRIPT", b"LOAD", script)
            protocol = await self._connected()
            futures = self._write(protocol, *commands)
            written = protocol.sent
            return await self._reply(futures), protocol, written

    async def _replicated(self, protocol: _Protocol, written: int, replicas: int, wait_timeout: float) -> int:
        """How many replicas have the write with index `written` on `protocol` (WAIT, shared: see above)."""
        if protocol is not self._protocol or protocol.lost is not None or protocol.transport.is_closing():
            raise ConnectionError("the connection was lost before the write's replication was confirmed")
        pending = protocol.last_wait
        if pending is None or pending[0] <= written or pending[1] != replicas:
            command = (b"WAIT", replicas, max(1, round(wait_timeout * 1000)))
            task = asyncio.ensure_future(self._reply(self._write(protocol, command)))
            pending = protocol.last_wait = (protocol.sent, replicas, task)
        return await asyncio.shield(pending[2])

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
        protocol_factory = functools.partial(_Protocol, self.timeout)
        try:
            async with asyncio.timeout(5):
                if url.scheme == "unix":
                    _, protocol = await loop.create_unix_connection(protocol_factory, url.path)
                else:
                    tls = _tls(url) if url.scheme == "rediss" else None
                    _, protocol = await loop.create_connection(
                        protocol_factory, url.hostname or "127.0.0.1", url.port or 6379, ssl=tls,
                        server_hostname=(url.hostname or "127.0.0.1") if tls else None)
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
        [future] = protocol.expect(1)
        protocol.transport.write(_encode(args))
        try:
            async with asyncio.timeout(5):
                await future
        except asyncio.TimeoutError:
            raise TimeoutError("Redis did not answer the connection's set-up") from None


def _tls(url) -> ssl.SSLContext:
    """The TLS context of a rediss:// URL, from the query options redis-py reads too."""
    options = {name: values[-1] for name, values in parse_qs(url.query).items()}
    context = ssl.create_default_context(cafile=options.get("ssl_ca_certs"))
    if options.get("ssl_certfile"):
        context.load_cert_chain(options["ssl_certfile"], options.get("ssl_keyfile"))
    if options.get("ssl_cert_reqs", "required").lower() in ("none", "cert_none"):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif options.get("ssl_check_hostname", "true").lower() in ("false", "no", "0"):
        context.check_hostname = False
    return context


def _database(url) -> int:
    if url.scheme == "unix":
        for part in url.query.split("&"):
            name, _, value = part.partition("=")
            if name == "db" and value:
                return int(value)
        return 0
    return int(url.path.strip("/") or 0)
