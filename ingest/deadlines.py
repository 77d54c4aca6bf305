"""Client deadlines: a request's headers and its body must arrive in time.

aiohttp has no deadline for reading a request: its keep-alive timer (300 s here, so that desks' idle
connections stay held: DESIGN.md) is all that ends a connection on which a client trickles its headers
a byte at a time, and nothing ends one that trickles its body. Thousands of such clients would hold
the process's connections (20,000 open files at most) and each its buffered part of a request. So
ingest keeps two deadlines of its own (`Settings.client_timeout`, `Settings.client_min_rate`):

- headers: a request's headers must be complete `client_timeout` seconds after the connection opened,
  or after the first byte that followed the previous answer; else the connection is closed (there is
  no request yet to answer);
- body: it must have arrived `client_timeout` seconds after the headers, plus one second for every
  `client_min_rate` bytes received (as Apache's mod_reqtimeout MinRate), so a large upload on a slow
  but honest link goes through and a trickle does not; else the read raises ClientTooSlow, the client
  gets a 408 and the connection is closed.

A connection that sends nothing after an answer is idle, not slow: only aiohttp's keep-alive timeout
applies to it. The header deadline needs every byte a connection receives, which only the protocol
sees, so `ClientSite` puts a thin protocol in front of aiohttp's; the body deadline is a middleware and
applies under any server (the tests' TestServer included).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp import web

from monitoring import metrics

from .http import problem_response


class ClientTooSlow(asyncio.TimeoutError):
    """The body did not arrive in time. A TimeoutError, so that aiohttp, draining what is left of the
    body after the 408, stops at once instead of logging an unhandled exception."""


class ClientDeadlines:
    def __init__(self, *, timeout: float, min_rate: float):
        self.timeout = timeout
        self.min_rate = min_rate
        self._watched: dict[object, _Watched] = {}  # aiohttp's protocol -> our watch over its connection
        # The serving loop, once (ClientSite's): asyncio.get_running_loop() costs a getpid() system call
        # each time on Python 3.11. None under a server that is no ClientSite (the tests' TestServer).
        self.loop: asyncio.AbstractEventLoop | None = None

    def protocol_factory(self, server: web.Server) -> Callable[[], asyncio.Protocol]:
        """What the listening socket builds for each connection: aiohttp's protocol, watched."""
        self.loop = asyncio.get_running_loop()
        return lambda: _Watched(server(), self)

    @web.middleware
    async def middleware(self, request: web.Request, handler) -> web.StreamResponse:
        watched = self._watched.get(request.protocol)
        if watched is not None:
            watched.request_started(request.content)
        # A body that came whole with its headers (a desk's batch, usually) has nothing left to be late.
        content = request.content
        body = _BodyDeadline(content, self) if request.body_exists and not content.is_eof() else None
        try:
            return await handler(request)
        except ClientTooSlow as e:
            response = problem_response(408, str(e))
            response.force_close()
            return response
        finally:
            if body is not None:
                body.cancel()
            if watched is not None:
                watched.request_done()


CLIENT_DEADLINES = web.AppKey("client_deadlines", ClientDeadlines)


class _BodyDeadline:
    """Fails the body's reads once it is late: `timeout` after the headers, plus 1 s per `min_rate` bytes."""

    def __init__(self, content, deadlines: ClientDeadlines):
        self.content = content
        self.deadlines = deadlines
        self.loop = deadlines.loop or asyncio.get_running_loop()
        self.started = self.loop.time()
        self.timer = self.loop.call_at(self.started + deadlines.timeout, self._check)

    def _check(self) -> None:
        content = self.content
        if content.is_eof():
            return
        due = self.started + self.deadlines.timeout + content.total_bytes / self.deadlines.min_rate
        if self.loop.time() < due:
            self.timer = self.loop.call_at(due, self._check)
            return
        metrics.client_timeouts.labels(phase="body").inc()
        content.set_exception(ClientTooSlow(
            f"the body did not arrive in time ({content.total_bytes} bytes in"
            f" {self.loop.time() - self.started:.0f} s); the connection is closed"))

    def cancel(self) -> None:
        self.timer.cancel()


class _Watched(asyncio.Protocol):
    """aiohttp's protocol for one connection, behind a watch on how long its next request's headers take."""

    def __init__(self, protocol: asyncio.Protocol, deadlines: ClientDeadlines):
        self.protocol = protocol
        self.deadlines = deadlines
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.in_request = False
        self.body = None  # the request in progress's body stream
        self.bytes_after_body = False

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.deadlines._watched[self.protocol] = self
        self.protocol.connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if not self.in_request:
            if self.timer is None:  # the first byte of a request: its headers are due
                self._arm()
        elif self.body is not None and self.body.is_eof():  # pipelined: the next request has begun
            self.bytes_after_body = True
        self.protocol.data_received(data)

    def eof_received(self):
        return self.protocol.eof_received()

    def connection_lost(self, exc) -> None:
        self._disarm()
        self.deadlines._watched.pop(self.protocol, None)
        self.protocol.connection_lost(exc)

    def pause_writing(self) -> None:
        self.protocol.pause_writing()

    def resume_writing(self) -> None:
        self.protocol.resume_writing()

    def request_started(self, body) -> None:
        """The headers are in (aiohttp is handling the request): the header deadline is met."""
        self._disarm()
        self.in_request = True
        self.body = body
        self.bytes_after_body = False

    def request_done(self) -> None:
        self.in_request = False
        self.body = None
        if self.bytes_after_body:
            self._arm()

    def _arm(self) -> None:
        self._disarm()
        self.timer = self.deadlines.loop.call_later(self.deadlines.timeout, self._expired)

    def _disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _expired(self) -> None:
        self.timer = None
        if self.in_request or self.transport is None or self.transport.is_closing():
            return
        metrics.client_timeouts.labels(phase="headers").inc()
        self.transport.close()


class ClientSite(web.BaseSite):
    """A TCP site (SO_REUSEPORT) whose connections are under `deadlines`."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, *, deadlines: ClientDeadlines,
                 backlog: int = 4096):
        super().__init__(runner, backlog=backlog)
        self._host = host
        self._port = port
        self._deadlines = deadlines

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    @property
    def port(self) -> int:
        """The bound port (the one asked for, or the one the kernel chose for 0)."""
        return self._server.sockets[0].getsockname()[1] if self._server else self._port

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None, "the runner is set up first"
        self._server = await asyncio.get_running_loop().create_server(
            self._deadlines.protocol_factory(server), self._host, self._port, backlog=self._backlog,
            reuse_port=True)


def install(app: web.Application, *, timeout: float, min_rate: float) -> ClientDeadlines:
    """Add the body deadline to the app's middlewares (innermost), and keep the deadlines for the site."""
    deadlines = ClientDeadlines(timeout=timeout, min_rate=min_rate)
    app.middlewares.append(deadlines.middleware)
    app[CLIENT_DEADLINES] = deadlines
    return deadlines
