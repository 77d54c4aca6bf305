"""Hostile clients: raw sockets against a real ingest server (ingest.server.serve, as `vaxline serve` runs it).

A client that trickles a request's headers or its body is cut off at the deadline
(`client_timeout`, 1 s here), while an idle keep-alive connection is held; hundreds of such clients do
not keep a desk from its 202; a Content-Length over the limit is refused from the headers alone, and a
chunked body is cut off at the limit, never read whole.

Covers: raw sockets against a real ingest server (in-process, and `python -m ingest` on uvloop): headers
trickled a byte at a time are cut off at the deadline, a connection that never sends a request too, while an
idle keep-alive connection is held past it; a trickled body gets 408 and the connection closes, while a slow
but steady upload passes; 300 stalled clients leave a desk's 202 under a second and are all cut; a
`Content-Length` over the limit gets 413 with no body sent; a chunked body is refused once past the limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time

import aiohttp
import asyncpg
import pytest

from ingest.server import serve
from monitoring import metrics
from storage.sites import add_site
from tests.conftest import reaped, spawn, wait_until
from tests.factory import batch

TIMEOUT = 1.0  # client_timeout for these tests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
async def site(make_settings):
    """(settings with a 1 s client deadline, a site's token)."""
    settings = make_settings(client_timeout=TIMEOUT, client_min_rate=1000)
    conn = await asyncpg.connect(settings.database_url)
    try:
        _, token = await add_site(conn, code="H-001", name="Site H-001", province=1, kind="fixed")
    finally:
        await conn.close()
    return settings, token


@pytest.fixture
async def server(site):
    """(settings, port, a site's token) of an ingest server running in this process."""
    settings, token = site
    port, stop = free_port(), asyncio.Event()
    serving = asyncio.create_task(serve(settings, host="127.0.0.1", port=port, stop=stop))
    await wait_until(lambda: listening(port), timeout=15, message="ingest listening")
    yield settings, port, token
    stop.set()
    await asyncio.wait_for(serving, 30)


async def listening(port: int) -> bool:
    with contextlib.suppress(OSError):
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.close()
        return True
    return False


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def closed_after(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, trickle: bytes,
                       every: float = 0.2, limit: float = 10.0) -> tuple[float, bytes]:
    """Send `trickle` one byte every `every` seconds until the server closes the connection; (seconds it
    took, what the server answered)."""
    started = time.monotonic()
    answer = b""
    for i in range(len(trickle)):
        try:
            writer.write(trickle[i:i + 1])
            await writer.drain()
        except (ConnectionError, OSError):
            break
        with contextlib.suppress(asyncio.TimeoutError):
            chunk = await asyncio.wait_for(reader.read(65536), every)
            answer += chunk
            if not chunk:  # EOF: the server closed
                break
        assert time.monotonic() - started < limit, "still open: never cut off"
    else:
        raise AssertionError("ran out of bytes to trickle")
    with contextlib.suppress(ConnectionError, asyncio.TimeoutError):  # whatever else the server sent
        answer += await asyncio.wait_for(reader.read(), 1)
    writer.close()
    return time.monotonic() - started, answer


def headers(port: int, token: str, *, length: int | None = None, chunked: bool = False,
            path: str = "/v1/doses") -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", f"Authorization: Bearer {token}",
             "Content-Type: application/json"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def timeouts(phase: str) -> float:
    """vaxline_client_timeouts_total{phase} in this process."""
    return metrics.client_timeouts.labels(phase=phase)._value.get()


async def test_headers_trickled_a_byte_at_a_time_are_cut_off_at_the_deadline(server):
    settings, port, token = server
    before = timeouts("headers")
    reader, writer = await connect(port)
    took, answer = await closed_after(reader, writer, trickle=headers(port, token, length=2) * 10)
    assert TIMEOUT - 0.1 <= took < TIMEOUT + 1.5, took  # the deadline, not the keep-alive timeout (300 s)
    assert answer == b""  # there is no request yet to answer: the connection is closed
    assert timeouts("headers") == before + 1


async def test_a_connection_that_sends_nothing_is_closed_at_the_deadline_but_an_idle_keepalive_one_is_held(server):
    settings, port, token = server
    silent = await connect(port)
    started = time.monotonic()
    assert await asyncio.wait_for(silent[0].read(), TIMEOUT + 2) == b""  # never sent a request: closed
    assert time.monotonic() - started >= TIMEOUT - 0.1

    reader, writer = await connect(port)  # a desk: a request, a think time longer than the deadline, another
    for think in (TIMEOUT * 2.5, 0):
        writer.write(f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        await writer.drain()
        status = await reader.readline()
        assert status.startswith(b"HTTP/1.1 200"), status
        length = 0
        while (line := await reader.readline()) != b"\r\n":
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        await reader.readexactly(length)
        await asyncio.sleep(think)  # idle, not slow: held (keep-alive is 300 s)
    writer.close()


async def test_a_body_trickled_a_byte_at_a_time_gets_408_and_the_connection_is_closed(server):
    settings, port, token = server
    body = json.dumps(batch(0, 3)).encode()
    before = timeouts("body")
    reader, writer = await connect(port)
    writer.write(headers(port, token, length=len(body)))
    took, answer = await closed_after(reader, writer, trickle=body)
    assert TIMEOUT - 0.1 <= took < TIMEOUT + 1.5, took
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"Connection: close" in answer and b'"error"' in answer
    assert timeouts("body") == before + 1


async def test_a_slow_but_steady_upload_is_not_cut_off(server):
    """The body deadline grows with what arrives (1 s per client_min_rate bytes): an honest slow link passes."""
    settings, port, token = server
    body = json.dumps(batch(0, 20)).encode()  # about 6 KB at 3 KB/s: twice the bare deadline
    reader, writer = await connect(port)
    writer.write(headers(port, token, length=len(body)))
    started = time.monotonic()
    for i in range(0, len(body), 300):
        writer.write(body[i:i + 300])
        await writer.drain()
        await asyncio.sleep(0.1)
    assert time.monotonic() - started > TIMEOUT * 1.5
    status = await asyncio.wait_for(reader.readline(), 5)
    assert status.startswith(b"HTTP/1.1 202"), status
    writer.close()


async def test_hundreds_of_slow_clients_do_not_keep_a_desk_from_its_202(server):
    settings, port, token = server
    body = json.dumps(batch(0, 3)).encode()
    slow = []
    for n in range(300):
        reader, writer = await connect(port)
        if n % 2:  # half stall in their headers, half in their body
            writer.write(headers(port, token, length=len(body))[:40])
        else:
            writer.write(headers(port, token, length=len(body)) + body[:10])
        slow.append((reader, writer))
    await asyncio.sleep(0.2)
    async with aiohttp.ClientSession() as session:
        started = time.monotonic()
        async with session.post(f"http://127.0.0.1:{port}/v1/doses", json=batch(100, 50),
                                headers={"Authorization": f"Bearer {token}"}) as response:
            assert response.status == 202
        assert time.monotonic() - started < TIMEOUT  # answered while every slow client still held its connection
    # And every slow client is cut off at the deadline: none of their connections is left.
    answers = await asyncio.gather(*(asyncio.wait_for(reader.read(), TIMEOUT + 3) for reader, _ in slow))
    assert sum(a == b"" for a in answers) == 150  # stalled in the headers: closed
    assert sum(a.startswith(b"HTTP/1.1 408") for a in answers) == 150  # stalled in the body: 408, closed
    for _, writer in slow:
        writer.close()


async def test_a_content_length_over_the_limit_gets_413_from_the_headers_alone(server):
    settings, port, token = server
    reader, writer = await connect(port)
    writer.write(headers(port, token, length=100 * settings.max_body_bytes))  # and not one byte of body
    await writer.drain()
    status = await asyncio.wait_for(reader.readline(), 5)
    assert status.startswith(b"HTTP/1.1 413"), status
    writer.close()


async def test_a_chunked_body_is_cut_off_at_the_limit_not_read_whole(server):
    settings, port, token = server
    reader, writer = await connect(port)
    writer.write(headers(port, token, chunked=True))
    chunk = b"x" * 65536
    sent, answer = 0, b""
    total = 64 * settings.max_body_bytes
    while sent < total:
        try:
            writer.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            await asyncio.wait_for(writer.drain(), 1)
        except (ConnectionError, asyncio.TimeoutError):
            break
        sent += len(chunk)
        with contextlib.suppress(asyncio.TimeoutError):
            answer += await asyncio.wait_for(reader.read(65536), 0.001)
        if answer:
            break
    if not answer:
        answer = await asyncio.wait_for(reader.read(65536), 5)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert sent < total // 4, sent  # refused once past the limit, not read to the end (loopback buffers aside)
    writer.close()


async def test_under_uvloop_in_its_own_process_slow_headers_are_cut_and_a_desk_still_gets_its_202(site):
    """The same deadline in `python -m ingest` (uvloop, as deployed): the protocol in front of aiohttp's
    sees every byte there too."""
    settings, token = site
    port = free_port()
    with reaped([spawn("ingest", settings, "--port", str(port))]):
        await wait_until(lambda: listening(port), timeout=30, message="python -m ingest listening")
        reader, writer = await connect(port)
        took, answer = await closed_after(reader, writer, trickle=headers(port, token, length=2) * 10)
        assert TIMEOUT - 0.1 <= took < TIMEOUT + 1.5 and answer == b"", (took, answer)
        async with aiohttp.ClientSession() as session:
            async with session.post(f"http://127.0.0.1:{port}/v1/doses", json=batch(0, 5),
                                    headers={"Authorization": f"Bearer {token}"}) as response:
                assert response.status == 202
