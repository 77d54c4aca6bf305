"""A fault-injecting TCP proxy between vaxline and one backing service (Postgres or Redis).

As asyncpg's own test suite does for Postgres (tests/test_adversity.py), the tests put this proxy
in front of a real service and switch faults on and off while traffic flows:

    proxy = await FaultProxy(target).start()        # target: "/path/to/socket" or ("host", port)
    url = proxy.postgres_url(database_url)          # vaxline talks to the service through the proxy
    proxy.faults(drop=0.01, reset=0.01, delay=0.02) # per forwarded chunk: close, RST, hold up to 20 ms
    cutting = asyncio.create_task(proxy.cut_at_random())  # every connection ended now and then
    proxy.refuse()                                  # the service is unreachable: every connection reset
    proxy.hold()                                    # nothing forwarded (a partition), until open()
    proxy.open()                                    # connections forwarded again, faults as set
    proxy.calm()                                    # no faults, connections forwarded again

Faults draw from one seeded RNG, so a failing run can be replayed. `stats` counts what was done.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import random
import socket
import struct
from urllib.parse import parse_qs, urlsplit, urlunsplit

OPEN, REFUSE, HOLD = "open", "refuse", "hold"
CHUNK = 64 * 1024


class FaultProxy:
    def __init__(self, target: str | tuple[str, int], *, seed: int = 0):
        self.target = target
        self.rng = random.Random(seed)
        self.drop = 0.0  # probability, per chunk, of closing both sides (FIN)
        self.reset = 0.0  # probability, per chunk, of resetting both sides (RST)
        self.delay = 0.0  # each chunk is held up to this many seconds
        self.mode = OPEN
        self.stats: collections.Counter[str] = collections.Counter()
        self._links: set[_Link] = set()
        self._opened = asyncio.Event()
        self._opened.set()
        self._traps: list[Trap] = []
        self._server: asyncio.Server | None = None

    async def start(self) -> "FaultProxy":
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def close(self) -> None:
        self.cut_all()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    # -- what vaxline is given -------------------------------------------------------------------

    def postgres_url(self, url: str) -> str:
        """`url` (a TCP or Unix-socket Postgres URL) rewritten to reach the same database through the proxy."""
        parts = urlsplit(url)
        user = parts.username or "postgres"
        auth = f"{user}:{parts.password}@" if parts.password else f"{user}@"
        return urlunsplit(("postgresql", f"{auth}127.0.0.1:{self.port}", parts.path, "", ""))

    def redis_url(self, url: str) -> str:
        """`url` (redis:// or unix://) rewritten to reach the same Redis database through the proxy."""
        parts = urlsplit(url)
        db = parts.path.strip("/") if parts.scheme != "unix" else parse_qs(parts.query).get("db", [""])[0]
        return f"redis://127.0.0.1:{self.port}/{db or 0}"

    # -- switching faults ------------------------------------------------------------------------

    def faults(self, *, drop: float = 0.0, reset: float = 0.0, delay: float = 0.0) -> None:
        self.drop, self.reset, self.delay = drop, reset, delay

    def calm(self) -> None:
        """No more faults; held connections go through."""
        self.faults()
        self.open()

    def open(self) -> None:
        """Connections are forwarded again (whatever faults are set still apply)."""
        self.mode = OPEN
        self._opened.set()

    def refuse(self) -> None:
        """The service is unreachable: open connections are reset, new ones reset at once."""
        self.mode = REFUSE
        self._opened.set()  # held connections are refused too
        self.cut_all()

    def hold(self) -> None:
        """A partition that drops packets: nothing gets through, in either direction, on open connections or
        new ones (accepted, never answered), until `open` or `calm`; then what was held is delivered."""
        self.mode = HOLD
        self._opened.clear()

    def trap(self, marker: bytes) -> "Trap":
        """Hold the next chunk sent to the service that contains `marker` (e.g. the start of a COPY's data)
        until the test releases it: the test can restart the service while that request is half sent."""
        trap = Trap(marker)
        self._traps.append(trap)
        return trap

    def cut_all(self, *, rst: bool = True) -> None:
        """End every open connection now (RST, or FIN with rst=False)."""
        for link in list(self._links):
            link.end(rst=rst)

    async def cut_at_random(self, *, every: tuple[float, float] = (0.2, 0.8)) -> None:
        """Until cancelled: at random intervals, end every open connection (RST or FIN at random), so
        that faults land in the middle of whatever is in flight however little traffic there is."""
        while True:
            await asyncio.sleep(self.rng.uniform(*every))
            if self._links:
                self.stats["cut"] += len(self._links)
                self.cut_all(rst=self.rng.random() < 0.5)

    # -- forwarding ------------------------------------------------------------------------------

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.stats["accepted"] += 1
        if self.mode == HOLD:
            self.stats["held"] += 1
            await self._opened.wait()
        if self.mode == REFUSE:
            self.stats["refused"] += 1
            _reset(client_writer)
            return
        try:
            if isinstance(self.target, str):
                server_reader, server_writer = await asyncio.open_unix_connection(self.target)
            else:
                server_reader, server_writer = await asyncio.open_connection(*self.target)
        except OSError:
            self.stats["target_unreachable"] += 1
            _reset(client_writer)
            return
        link = _Link(self, client_writer, server_writer)
        self._links.add(link)
        try:
            await asyncio.gather(link.pump(client_reader, server_writer), link.pump(server_reader, client_writer))
        finally:
            link.end(rst=False)
            self._links.discard(link)

    async def _spring_traps(self, chunk: bytes) -> None:
        for trap in [t for t in self._traps if t.marker in chunk]:
            self._traps.remove(trap)
            self.stats["trapped"] += 1
            trap.sprung.set()
            await trap.released.wait()

    def _fault(self) -> str | None:
        """What happens to the next chunk: None (forwarded), "reset" or "drop"."""
        if not (self.reset or self.drop):
            return None
        r = self.rng.random()
        if r < self.reset:
            return "reset"
        if r < self.reset + self.drop:
            return "drop"
        return None


class Trap:
    """A chunk held on its way to the service: `sprung` is set when it is caught, `release()` lets it go on."""

    def __init__(self, marker: bytes):
        self.marker = marker
        self.sprung = asyncio.Event()
        self.released = asyncio.Event()

    def release(self) -> None:
        self.released.set()


class _Link:
    """One proxied connection: the client's side and the service's side."""

    def __init__(self, proxy: FaultProxy, client: asyncio.StreamWriter, server: asyncio.StreamWriter):
        self.proxy = proxy
        self.writers = (client, server)
        self.ended = False

    async def pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        proxy = self.proxy
        try:
            while not self.ended and (chunk := await reader.read(CHUNK)):
                if writer is self.writers[1]:
                    await proxy._spring_traps(chunk)
                if proxy.delay:
                    await asyncio.sleep(proxy.rng.uniform(0, proxy.delay))
                await proxy._opened.wait()  # held: nothing gets through until the partition heals
                fault = proxy._fault()
                if fault is not None:
                    proxy.stats[fault] += 1
                    self.end(rst=fault == "reset")
                    return
                if self.ended:
                    return
                writer.write(chunk)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self.end(rst=False)

    def end(self, *, rst: bool) -> None:
        if self.ended:
            return
        self.ended = True
        for writer in self.writers:
            if rst:
                _reset(writer)
            else:
                writer.close()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST (SO_LINGER 0), as a crashed host or a middlebox does; a Unix socket just closes."""
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
